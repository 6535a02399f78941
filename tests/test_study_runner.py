"""fastalex.training.study end to end on a tiny dataset: every (arm, seed) trained through
train.run in its own directory, the learning-rate grid, 10-crop scoring of the baseline's
checkpoints, REPORT.md; a rerun skips finished runs and resumes a killed one."""

import json

import pytest
import torch

from fastalex.training import checkpoint, metrics, options, train
from fastalex.training.startup import UsageError
from fastalex.training.study import claims, measures, report, runner
from train_helpers import tiny_data  # noqa: F401 (fixture)

TINY_BUDGET = runner.Budget(alexnet_epochs=1, convnet4_epochs=1)


def _base(data) -> dict:
    # The in-process runs stay on the CPU with the plain torch.nn build (the kernels have
    # their own tests; the interpreter would take minutes).
    return dict(data=str(data), device="cpu", impl="torch", image_size=70, crop=67,
                batch_size=8, workers=0)


class Counter:
    n = 0

    def update(self):
        self.n += 1


@pytest.fixture(scope="module")
def study(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    selected = claims.select(["relu-vs-tanh", "lrn", "ten-crop"])
    bar = Counter()
    s = runner.Study(out, seeds=2, budget=TINY_BUDGET, base=_base(tiny_data), bar=bar)
    runs = s.run(selected)
    return dict(out=out, claims=selected, study=s, runs=runs, bar=bar)


def test_every_arm_and_seed_ran_in_its_directory(study):
    runs, out = study["runs"], study["out"]
    assert set(runs) == {"convnet4-relu", "convnet4-tanh", "baseline", "no-lrn"}
    # The grid at seed 0 + 1 more seed per activation, 2 seeds per AlexNet arm.
    runs_trained = 2 * (len(claims.CONVNET4_LRS) + 1) + 2 * 2
    assert len(study["study"].trained) == runs_trained
    # ... and the 10-crop scoring of the baseline's 2 checkpoints.
    assert study["bar"].n == study["study"].planned(study["claims"]) == runs_trained + 2
    for arm, arm_runs in runs.items():
        assert sorted(arm_runs["results"]) == [0, 1]
        for seed, result in arm_runs["results"].items():
            d = runner.run_dir(out, result["label"], seed)
            for name in (runner.RESULT, metrics.METRICS, checkpoint.CHECKPOINT,
                         checkpoint.BEST):
                assert (d / name).is_file(), (d, name)
            assert result["seed"] == seed and result["args"]["seed"] == seed
            assert len(result["history"]) == 1 == result["epochs_done"]
            assert metrics.read_jsonl(d / metrics.METRICS) == result["history"]
    # Only the arm's factor differs between the AlexNet arms.
    base = runs["baseline"]["results"][0]["args"]
    no_lrn = runs["no-lrn"]["results"][0]["args"]
    assert {k for k in base if base[k] != no_lrn[k]} == {"lrn", "output_dir"}
    assert no_lrn["lrn"] is False and base["model"] == "alexnet"


def test_the_grid_picks_the_fastest_lr_for_the_other_seeds(study):
    for activation in ("relu", "tanh"):
        arm = study["runs"][f"convnet4-{activation}"]
        assert [p["lr"] for p, _ in arm["grid"]] == list(claims.CONVNET4_LRS)
        best = min(arm["grid"], key=lambda pr: measures.selection_key("steps_to_25", pr[1]))
        assert arm["point"] == best[0]
        assert arm["results"][0] is best[1]
        assert arm["results"][1]["args"]["lr"] == best[0]["lr"]
        args = arm["results"][1]["args"]
        assert (args["model"], args["activation"], args["optimizer"], args["wd"],
                args["dropout"], args["crop_flip"], args["pca_std"]) == (
            "convnet4", activation, "sgd", 0.0, 0.0, False, 0.0)


def test_ten_crop_scores_the_baseline_checkpoints(study):
    for seed, result in study["runs"]["baseline"]["results"].items():
        saved = json.loads((runner.run_dir(study["out"], "baseline", seed)
                            / runner.TEN_CROP).read_text())
        assert result["ten_crop"] == saved
        assert saved["epoch"] == 1
        for key in ("center", "ten_crop"):
            assert saved[key]["images"] == 20  # the tiny validation split
        # The centre crop is the run's own last validation.
        assert saved["center"]["top1_error"] == pytest.approx(
            result["history"][-1]["val_top1_error"])


def test_report_rows_and_plots(study):
    path = report.write_report(study["out"], study["claims"], study["runs"], header="tiny")
    text = path.read_text()
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert [line.split(" | ")[0] for line in table] == [
        "| `relu-vs-tanh`", "| `relu-vs-tanh`", "| `lrn`", "| `ten-crop`"]
    for line in table:
        assert line.rstrip().endswith("| 2 |")  # seeds
    for name in ("relu-vs-tanh", "lrn", "ten-crop"):
        png = study["out"] / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name}.png)" in text


def test_a_rerun_trains_nothing(study, tiny_data, monkeypatch):
    out = study["out"]
    ckpt = runner.run_dir(out, "no-lrn", 1) / checkpoint.CHECKPOINT
    before = ckpt.stat().st_mtime_ns
    monkeypatch.chdir(out.parent)  # the same directory, named relatively this time
    again = runner.Study(out.name, seeds=2, budget=TINY_BUDGET, base=_base(tiny_data))
    runs = again.run(study["claims"])
    assert again.trained == []
    assert ckpt.stat().st_mtime_ns == before
    assert runs["no-lrn"]["results"][1]["history"] == \
        study["runs"]["no-lrn"]["results"][1]["history"]
    assert runs["convnet4-tanh"]["point"] == study["runs"]["convnet4-tanh"]["point"]


def test_other_settings_in_the_same_directory_are_refused(study, tiny_data):
    other = runner.Study(study["out"], seeds=1, budget=runner.Budget(2, 1),
                         base=_base(tiny_data))
    with pytest.raises(UsageError, match="other settings.*--output-dir"):
        other.run(claims.select(["lrn"]))


def test_a_killed_run_is_resumed_from_its_checkpoint(tiny_data, tmp_path):
    budget = runner.Budget(alexnet_epochs=2, convnet4_epochs=1)
    s = runner.Study(tmp_path, seeds=1, budget=budget, base=_base(tiny_data))
    arm = claims.select(["lrn"])[0].arms[1]
    d = runner.run_dir(tmp_path, "no-lrn", 0)
    # A run killed after its first epoch: a checkpoint, no result file.
    train.run(options.resolve([], **s.overrides(arm, {}, 0), output_dir=str(d), stop_after=1))
    assert not (d / runner.RESULT).exists()
    state = checkpoint.load(d / checkpoint.CHECKPOINT)
    assert state["epoch"] == 1
    # Mark the checkpoint's first epoch: a resumed run keeps it, a restarted one would not.
    state["history"][0]["train_loss"] = 1234.5
    torch.save(state, d / checkpoint.CHECKPOINT)
    runs = s.run(claims.select(["lrn"]))
    assert s.trained == ["baseline-seed0", "no-lrn-seed0"]
    history = runs["no-lrn"]["results"][0]["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0]["train_loss"] == 1234.5
    assert history[1]["step"] == 2 * history[0]["step"]
