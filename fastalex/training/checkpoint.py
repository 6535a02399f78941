"""Training checkpoints: written atomically, restored exactly.

``checkpoint.pt`` (after every epoch) holds everything a run needs to continue bit for bit;
``model_best.pt`` the weights and metadata only. Both load with ``torch.load(weights_only=True)``:
RNG states that are not tensors (Python's, NumPy's) are stored as tensors and plain tuples. The
keys are listed in docs/training.md.
"""

import random
from pathlib import Path

import numpy as np
import torch

from fastalex.training import atomic

CHECKPOINT = "checkpoint.pt"
BEST = "model_best.pt"


def save(state: dict, path) -> Path:
    """Write ``state`` to ``path`` atomically: a run killed at any moment leaves the previous
    file or the new one, never a torn one."""
    return atomic.save_atomic(state, path)


def load(path, map_location="cpu") -> dict:
    """Load a checkpoint written by this module (tensors and plain Python data only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def remove_stale_temporaries(directory, extra_names=()) -> None:
    """Delete the temporary files killed writers of checkpoints (and of ``extra_names``) left
    in ``directory``."""
    atomic.remove_stale_temporaries(directory, (CHECKPOINT, BEST, *extra_names))


def rng_state(sampler_generator: torch.Generator | None = None) -> dict:
    """Every random number generator a training run draws from."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # NumPy's state holds an ndarray, which weights_only loading refuses: store it as a tensor
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if sampler_generator is not None:
        state["sampler"] = sampler_generator.get_state()
    return state


def set_rng_state(state: dict, sampler_generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # A run resumed on fewer GPUs restores the generators it has.
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if sampler_generator is not None and "sampler" in state:
        sampler_generator.set_state(state["sampler"])
