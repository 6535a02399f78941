"""Dropout seeds (fastalex.ops._rng): drawn from torch's generator for the tensor's device, as a
device tensor, so manual_seed reproduces them, consecutive draws differ, and drawing one never
waits for the device. Capture under CUDA graphs is tested in test_cuda_graph.py."""

import pytest
import torch

from fastalex.ops._rng import philox_seed


def test_seed_is_a_device_tensor(device):
    seed = philox_seed(torch.device(device))
    assert seed.shape == (1,) and seed.dtype == torch.int64
    assert seed.device.type == device
    assert 0 <= int(seed) < 2**62


def test_seed_comes_from_torchs_generator(device):
    """The seed is the draw torch's own generator makes next (torch.manual_seed seeds the CPU
    and every CUDA generator): the same call on torch's side after the same manual_seed gives
    the same number, and drawing it advances the generator."""
    torch.manual_seed(1234)
    ours = philox_seed(torch.device(device))
    torch.manual_seed(1234)
    theirs = torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)
    assert torch.equal(ours, theirs)
    torch.manual_seed(1234)
    philox_seed(torch.device(device))
    after_one = torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)
    assert not torch.equal(after_one, theirs)


def test_manual_seed_reproduces_and_draws_differ(device):
    torch.manual_seed(7)
    first = [philox_seed(torch.device(device)) for _ in range(3)]
    torch.manual_seed(7)
    again = [philox_seed(torch.device(device)) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len({int(s) for s in first}) == 3


def test_cpu_seed_uses_the_cpu_generator_only():
    """A CPU seed moves the CPU generator's state and nothing else (a CUDA seed, tested on
    CUDA, moves that device's generator)."""
    state = torch.get_rng_state()
    philox_seed(torch.device("cpu"))
    assert not torch.equal(torch.get_rng_state(), state)


def test_drawing_a_cuda_seed_does_not_synchronize(device):
    if device != "cuda":
        pytest.skip("needs CUDA (host-device synchronisation)")
    philox_seed(torch.device(device))  # warm up the generator
    torch.cuda.set_sync_debug_mode("error")
    try:
        philox_seed(torch.device(device))
    finally:
        torch.cuda.set_sync_debug_mode("default")
