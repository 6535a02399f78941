"""fastalex.training.train: training runs through the command line, on a tiny generated dataset.

Runs in this process call ``fastalex.training.train.main`` inside ``fastalex.reference_ops()``
(the kernels have their own tests; the interpreter would take minutes); one run goes through
``python -m fastalex.train`` in a subprocess without TRITON_INTERPRET, exactly as a user runs it
(on a CPU that is the PyTorch reference path too).
"""

import os
import subprocess
import sys

import pytest
import torch

import fastalex
from fastalex.training import builders, checkpoint, options, train
from train_helpers import TINY, main_in_process, rows, subprocess_env, tiny_data  # noqa: F401

CUDA = torch.cuda.is_available()
TIMING = ("images_per_s", "train_seconds", "seconds")
ROW_KEYS = {"epoch", "train_loss", "val_top1_error", "val_top5_error", "lr", "images_per_s",
            "seconds"}


def test_cli_run_on_the_builtin_dataset(tmp_path):
    """`python -m fastalex.train` with the built-in data (tiny override), as a user runs it: on
    the default device (the Triton kernels on a CUDA machine)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastalex.train", "--epochs", "2", "--output-dir", str(out),
           "--builtin-image-size", "72", "--builtin-train-per-class", "4",
           "--builtin-val-per-class", "2", "--image-size", "70", "--crop", "67", "-b", "8",
           "-j", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=subprocess_env(FASTALEX_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    device = "cuda" if CUDA else "cpu"
    kernels = "Triton kernels (GPU)" if CUDA else "PyTorch reference ops"
    for start in (f"device: {device}", f"kernels: {device}", kernels, "dataset: ",
                  "model: AlexNet (fastalex) ", f"recipe: builtin-{device}"):
        assert start in proc.stdout, proc.stdout
    assert "10 classes; train 40 images, val 20" in proc.stdout
    assert "it/s" in proc.stderr or "batch/s" in proc.stderr or "s/batch" in proc.stderr  # tqdm

    history = rows(out)
    assert [r["epoch"] for r in history] == [1, 2]
    for r in history:
        assert ROW_KEYS <= set(r)
        assert 0.0 <= r["val_top1_error"] <= 1.0 and 0.0 <= r["val_top5_error"] <= 1.0
        assert r["val_top5_error"] <= r["val_top1_error"]
        assert r["images_per_s"] > 0 and r["seconds"] > 0 and r["train_loss"] > 0
    for png in ("curves.png", "conv1_kernels.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    state = checkpoint.load(out / "checkpoint.pt")  # weights_only: tensors and plain data
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "args",
            "history", "stats", "classes", "model_config"} <= set(state)
    assert state["epoch"] == 2 and state["step"] == 10  # 40 images / batch 8, twice
    assert {"python", "numpy", "torch", "cuda", "sampler"} <= set(state["rng"][0])
    assert state["args"]["data"] is None and state["model_config"]["image_size"] == 67
    best = checkpoint.load(out / "model_best.pt")
    assert best["epoch"] in (1, 2) and "optimizer" not in best
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_exact_resume(tiny_data, tmp_path):
    """Two epochs straight == one epoch, then --resume, then the second epoch (on a CPU)."""
    common = ["--data", tiny_data, *TINY, "--optimizer", "adam", "--lr", "1e-4",
              "--lr-schedule", "cosine", "--warmup-epochs", "0.5", "--seed", "3"]
    assert main_in_process([*common, "--epochs", "2", "--output-dir", tmp_path / "a"]) == 0
    assert main_in_process([*common, "--epochs", "2", "--stop-after", "1",
                            "--output-dir", tmp_path / "b"]) == 0
    assert len(rows(tmp_path / "b")) == 1
    # A resumed run takes the checkpoint's flags (epochs, lr schedule, seed, ...).
    assert main_in_process(["--resume", tmp_path / "b" / "checkpoint.pt", "--device", "cpu",
                            "--output-dir", tmp_path / "b", "-j", "0", "--no-progress"]) == 0

    def strip(history):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in history]

    straight, resumed = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert len(straight) == len(resumed) == 2
    assert strip(straight) == strip(resumed)
    a = checkpoint.load(tmp_path / "a" / "checkpoint.pt")
    b = checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["step"] == b["step"] == 10


@pytest.mark.parametrize("args,message", [
    (["--data", "/no/such/dir"], "no such directory"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--crop", "60", "--image-size", "70"], "--crop must be >= 67"),
    (["--crop", "80", "--image-size", "70"], "must not exceed --image-size"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--evaluate"], "--evaluate needs --resume"),
    (["--resume", "/no/such/checkpoint.pt"], "no such file"),
    (["--cuda-graph"], "--cuda-graph needs a CUDA device, got --device cpu"),
    (["--compile-mode", "max-autotune"], "--compile-mode max-autotune needs --compile"),
])
def test_errors_are_one_clear_line(args, message, capsys):
    assert main_in_process([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_missing_split_is_a_data_error(tmp_path, capsys):
    (tmp_path / "train" / "a").mkdir(parents=True)
    assert main_in_process(["--data", tmp_path, *TINY]) == 2
    err = capsys.readouterr().err
    assert "no images" in err and str(tmp_path) in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert main_in_process(["--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_missing_data_in_a_subprocess_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastalex.train", "--data", tmp_path / "none"],
                          capture_output=True, text=True, timeout=120, env=subprocess_env(),
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert os.listdir(tmp_path) == []  # no output directory made for a failed start
    assert proc.stderr.startswith("python -m fastalex.train: error: --data")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["--epochs", "many"], ["--amp", "fp8"], ["--bogus"]])
def test_bad_flags_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(args)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_gpu_decode_option(tiny_data, tmp_path, capsys):
    """--gpu-decode: the workers read files, the training process decodes and transforms them
    on the training device (the CPU here; nvJPEG on a CUDA device)."""
    out = tmp_path / "run"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "1", "--gpu-decode",
                            "--output-dir", out]) == 0
    assert "JPEG decoding and training transform on cpu" in capsys.readouterr().out
    (row,) = rows(out)
    assert row["train_loss"] > 0 and 0.0 <= row["val_top1_error"] <= 1.0
    assert checkpoint.load(out / "checkpoint.pt")["step"] == 5  # 40 images / batch 8


def test_a_run_is_a_function_of_its_configuration(tiny_data, tmp_path):
    """options.resolve + train.run, as a study runs many trainings: the summary it returns is
    the metrics file, the overrides beat the command line."""
    config = options.resolve(["--data", str(tiny_data), *TINY, "--epochs", "3"],
                             epochs=1, output_dir=str(tmp_path / "run"), lr_schedule="constant")
    with fastalex.reference_ops():
        summary = train.run(config)
    assert summary["output_dir"] == tmp_path / "run" and summary["epochs_done"] == 1
    assert summary["history"] == rows(tmp_path / "run")
    assert summary["best"]["epoch"] == 1
    assert summary["history"][0]["lr"] == 0.01  # the paper recipe's, kept by a constant schedule
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt")["args"]["epochs"] == 1


def test_resume_refuses_a_changed_schedule(tiny_data, tmp_path, capsys):
    """The cosine schedule spans the run's --epochs: a resumed run that asks for more epochs
    (or another lr, or another schedule) would follow another curve, so it stops with one line
    naming the cause. The paper's plateau schedule has no end: its run may grow."""
    out = tmp_path / "cosine"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "2", "--stop-after", "1",
                            "--lr-schedule", "cosine", "--output-dir", out]) == 0
    capsys.readouterr()
    for extra, cause in ((["--epochs", "3"], "T_max"), (["--lr", "1e-3"], "base_lrs"),
                         (["--lr-schedule", "constant"], "another kind")):
        assert main_in_process(["--resume", out / "checkpoint.pt", *TINY, *extra]) == 2
        err = capsys.readouterr().err
        assert "learning-rate schedule" in err and cause in err and "Traceback" not in err
    assert len(rows(out)) == 1  # nothing was trained, nothing rewritten

    out = tmp_path / "plateau"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "1", "--output-dir", out]) == 0
    assert main_in_process(["--resume", out / "checkpoint.pt", *TINY, "--epochs", "2"]) == 0
    assert [r["epoch"] for r in rows(out)] == [1, 2]


def _poison_training_forward(monkeypatch, at_call: int):
    """The built model's output turns NaN at its ``at_call``-th training forward (1-based)."""
    build = builders.build_model
    calls = []

    def build_model(*args, **kwargs):
        model = build(*args, **kwargs)

        def hook(module, inputs, output):
            if module.training:
                calls.append(1)
                if len(calls) == at_call:
                    return output * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(builders, "build_model", build_model)


def test_a_non_finite_loss_stops_the_run_keeping_the_last_checkpoint(tiny_data, tmp_path,
                                                                     capsys, monkeypatch):
    """A NaN loss at the 7th step (epoch 2 of batch 8 on 40 images): exit 1 with one line naming
    epoch 2 and step 7; epoch 1's checkpoint and metrics stay as written."""
    _poison_training_forward(monkeypatch, at_call=7)
    out = tmp_path / "run"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "3",
                            "--output-dir", out]) == 1
    err = capsys.readouterr().err
    line = (f"python -m fastalex.train: error: non-finite training loss (NaN or Inf) at epoch "
            f"2, step 7: the run stopped; {out / 'checkpoint.pt'} (epoch 1) is the last good "
            "checkpoint\n")
    assert err.endswith(line) and "Traceback" not in err
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [r["epoch"] for r in rows(out)] == [1]


def test_compile_mode_reaches_torch_compile(tiny_data, tmp_path, monkeypatch, capsys):
    """--compile --compile-mode M: the model goes through torch.compile(mode=M) and trains (on
    the CPU with the cheap aot_eager backend; Inductor's C++ build would take minutes)."""
    calls = []
    real = torch.compile

    def compile_(model, **kwargs):
        calls.append(kwargs)
        return real(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_)
    out = tmp_path / "run"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "1", "--compile",
                            "--compile-mode", "max-autotune", "--output-dir", out]) == 0
    assert calls == [{"mode": "max-autotune"}]
    assert "torch.compile mode max-autotune" in capsys.readouterr().out
    (row,) = rows(out)
    assert row["train_loss"] > 0 and checkpoint.load(out / "checkpoint.pt")["step"] == 5


def test_each_unreadable_file_is_one_clean_line(tiny_data, tmp_path, capsys):
    """A corrupt training image: one line naming it on stderr per pass over it (the statistics
    pass and the epoch), no Python source line under it, and the run goes on."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    bad = sorted((data / "train").rglob("*.jpg"))[5]
    bad.write_bytes(b"not an image")
    out = tmp_path / "run"
    assert main_in_process(["--data", data, *TINY, "--epochs", "1", "--output-dir", out]) == 0
    err = capsys.readouterr().err.splitlines()
    named = [line for line in err if str(bad) in line]
    assert named and all(line.startswith(f"warning: skipping unreadable image {bad}: ")
                         for line in named), err
    assert not [line for line in err if "warn" in line.lower() and line not in named], err
    assert checkpoint.load(out / "checkpoint.pt")["step"] == 5  # 39 images, batch 8


# --- CUDA: --cuda-graph end to end (fastalex's Triton kernels, no reference ops) ---------------

GPU_RUN = [*TINY[:-2], "--device", "cuda", "--optimizer", "sgd", "--lr", "0.01",
           "--lr-schedule", "cosine", "--warmup-epochs", "0.5", "--seed", "5"]
needs_cuda = pytest.mark.skipif(not (CUDA and not fastalex.backend.INTERPRET),
                                reason="needs CUDA")


def _final_weights(out):
    return checkpoint.load(out / "checkpoint.pt")["model"]


@needs_cuda
def test_cuda_graph_run_equals_the_eager_run(tiny_data, tmp_path, capsys):
    """Two epochs, dropout on, a per-step cosine schedule: the graphed run's metrics and weights
    are the eager run's (the graph reads the lr as a float32 tensor: a rounding apart)."""
    for name, extra in (("eager", []), ("graph", ["--cuda-graph"])):
        assert train.main([str(a) for a in ["--data", tiny_data, *GPU_RUN, "--epochs", "2",
                                            *extra, "--output-dir", tmp_path / name]]) == 0
    assert "each step replayed as one CUDA graph" in capsys.readouterr().out
    eager, graph = rows(tmp_path / "eager"), rows(tmp_path / "graph")
    for a, b in zip(eager, graph, strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
        assert (a["step"], a["val_top1_error"]) == (b["step"], b["val_top1_error"])
    a, b = _final_weights(tmp_path / "eager"), _final_weights(tmp_path / "graph")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


@needs_cuda
def test_cuda_graph_drops_the_short_batch_and_resumes_exactly(tiny_data, tmp_path):
    """Batch 12 of 40 images: 3 graphed steps per epoch (the short 4th batch dropped, the
    schedule sized for 3); two epochs straight == one epoch, --resume, the second (the resumed
    run captures its graph anew and keeps --cuda-graph from the checkpoint)."""
    common = ["--data", tiny_data, *GPU_RUN, "-b", "12", "--epochs", "2", "--cuda-graph"]
    assert train.main([str(a) for a in [*common, "--output-dir", tmp_path / "a"]]) == 0
    assert train.main([str(a) for a in [*common, "--stop-after", "1",
                                        "--output-dir", tmp_path / "b"]]) == 0
    assert train.main([str(a) for a in ["--resume", tmp_path / "b" / "checkpoint.pt",
                                        "--device", "cuda", "-j", "0", "--no-progress"]]) == 0
    straight, resumed = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["step"] for r in straight] == [3, 6]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in straight] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in resumed]
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    state = checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert state["args"]["cuda_graph"] is True
    assert not isinstance(state["optimizer"]["param_groups"][0]["lr"], torch.Tensor)


def test_cuda_graph_loaders_drop_the_short_batch(tiny_data):
    """--cuda-graph: the training loader drops the last short batch (one shape for the graph)
    and the per-step schedule is sized for the batches it gives; validation keeps every image."""
    from pathlib import Path

    from fastalex.training.distributed import DistInfo

    args = options.resolve(["--data", str(tiny_data), *TINY, "-b", "12", "--lr-schedule",
                            "cosine", "--epochs", "2"])
    lengths = {}
    for graph in (False, True):
        args.cuda_graph = graph
        data_dir, image_stats = builders.locate_data(args, DistInfo(), Path(tiny_data))
        train_set, val_set = builders.build_datasets(args, data_dir, image_stats)
        train_loader, val_loader, _ = builders.make_loaders(
            args, DistInfo(), train_set, val_set, torch.device("cpu"), torch.Generator())
        model = torch.nn.Linear(2, 2)
        scheduler = builders.build_scheduler(args, torch.optim.SGD(model.parameters(), lr=0.1),
                                             len(train_loader))
        lengths[graph] = (len(train_loader), scheduler._schedulers[1].T_max,
                          sum(len(y) for _, y in val_loader))
    assert lengths == {False: (4, 8, 20), True: (3, 6, 20)}  # 40 images, 2 epochs
