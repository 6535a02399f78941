"""Helpers of the training-application tests (import as ``from train_helpers import ...``):
a tiny generated dataset, runs of the CLIs in this process and their metrics."""

import os
from pathlib import Path

import pytest

import fastalex
from fastalex.training import evaluate, metrics, train
from fastalex.training.data.builtin import ensure_builtin_dataset

# The in-process runs stay on the CPU even on a CUDA machine: exact resume is a CPU promise
# (cuDNN's autotuned convolutions are not bit-reproducible).
TINY = ["--image-size", "70", "--crop", "67", "-b", "8", "-j", "0", "--no-progress",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """10 classes, 4 training and 2 validation images each, 72 px."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    return ensure_builtin_dataset(root, image_size=72, train_per_class=4, val_per_class=2,
                                  progress=False, workers=1)


def main_in_process(args) -> int:
    """``python -m fastalex.train ARGS`` in this process, on the PyTorch reference ops (the
    kernels have their own tests; the interpreter would take minutes)."""
    with fastalex.reference_ops():
        return train.main([str(a) for a in args])


def evaluate_in_process(args) -> int:
    with fastalex.reference_ops():
        return evaluate.main([str(a) for a in args])


def rows(output_dir: Path) -> list[dict]:
    return metrics.read_jsonl(output_dir / metrics.METRICS)


def subprocess_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env
