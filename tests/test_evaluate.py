"""fastalex.training.evaluate: scoring a checkpoint, centre crop and 10-crop, from the files
the checkpoint names."""

import json

import pytest

import fastalex
from fastalex.training import evaluate
from fastalex.training.startup import UsageError
from train_helpers import TINY, evaluate_in_process, main_in_process, rows, tiny_data  # noqa: F401


def test_evaluate_a_checkpoint(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "1", "--output-dir", out]) == 0
    capsys.readouterr()
    code = evaluate_in_process([out / "model_best.pt", "-j", "0", "--no-progress",
                                "--device", "cpu", "--json", tmp_path / "eval.json"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "centre crop: top-1 error" in printed and "10-crop: top-1 error" in printed
    scores = [line for line in printed.splitlines() if "crop: top-1" in line]
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["center"]["images"] == 20 and result["ten_crop"]["images"] == 20
    # The centre crop on a checkpoint scores what the training run's validation scored.
    assert result["center"]["top1_error"] == pytest.approx(rows(out)[0]["val_top1_error"])
    for crops in ("center", "ten_crop"):
        assert 0 <= result[crops]["top5_error"] <= result[crops]["top1_error"] <= 1

    # train --evaluate runs the same scoring (centre crop, plus 10-crop with --ten-crop)
    assert main_in_process(["--evaluate", "--resume", out / "checkpoint.pt", "--ten-crop",
                            "-j", "0", "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "centre crop: top-1 error" in printed and "10-crop: top-1 error" in printed
    # ... and the same numbers (checkpoint.pt and model_best.pt hold the one epoch's weights)
    assert [line for line in printed.splitlines() if "crop: top-1" in line] == scores


def test_errors_are_one_line(tiny_data, tmp_path, capsys):
    assert evaluate_in_process([tmp_path / "missing.pt", "--device", "cpu"]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert evaluate_in_process([tmp_path / "junk.pt", "--device", "cpu"]) == 2
    assert "not a fastalex checkpoint" in capsys.readouterr().err
    assert evaluate_in_process([tmp_path / "junk.pt", "-b", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_other_classes_are_refused(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "1", "--output-dir", out]) == 0
    other = tmp_path / "other"
    (other / "val" / "cat").mkdir(parents=True)
    (other / "val" / "cat" / "1.jpg").write_bytes(next(tiny_data.rglob("*.jpg")).read_bytes())
    with pytest.raises(UsageError, match="classes differ"):  # other/ has no train/: not needed
        evaluate.evaluate_checkpoint(out / "model_best.pt", data=other, device="cpu",
                                     workers=0, progress=False)
    with fastalex.reference_ops():  # the interpreter would take minutes
        result = evaluate.evaluate_checkpoint(out / "model_best.pt", data=tiny_data,
                                              ten_crop=False, device="cpu", workers=0,
                                              progress=False)
    assert set(result) == {"checkpoint", "epoch", "conv1", "center"} and result["epoch"] == 1
    assert json.loads(json.dumps(result)) == result


def test_a_convnet4_checkpoint_is_scored_and_its_figures_refused(tiny_data, tmp_path, capsys):
    out = tmp_path / "cnn"
    assert main_in_process(["--data", tiny_data, "--model", "convnet4", "--image-size", "32",
                            "--crop", "32", "-b", "8", "-j", "0", "--no-progress", "--device",
                            "cpu", "--epochs", "1", "--output-dir", out]) == 0
    printed = capsys.readouterr()
    assert "figures not written" not in printed.err  # a CNN run writes only its curves
    assert not (out / "neighbours.png").exists() and (out / "curves.png").exists()
    code = evaluate_in_process([out / "model_best.pt", "-j", "0", "--no-progress", "--device",
                                "cpu", "--json", tmp_path / "eval.json"])
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["center"]["top1_error"] == pytest.approx(rows(out)[0]["val_top1_error"])
    code = evaluate_in_process([out / "model_best.pt", "--figures", "--device", "cpu"])
    assert code == 2
    assert "four-layer CNN" in capsys.readouterr().err
