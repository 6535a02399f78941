"""LRN, max-pool and dropout inside a CUDA graph: forward and backward are captured once and
replayed; the replay matches eager bitwise, every replay draws a fresh dropout mask, and
torch.manual_seed before a replay reproduces it. Needs CUDA (nothing here can run elsewhere);
the CPU side of the seeds is tested in test_rng.py and test_dropout.py."""

import pytest
import torch

from fastalex.functional import dropout, lrn, max_pool2d

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ALEXNET_LRN = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)


def _lrn(x):
    return lrn(x, **ALEXNET_LRN)


def _pool(x):
    return max_pool2d(x, 3, 2)


def _pool_indices(x):
    y, index = max_pool2d(x, 3, 2, return_indices=True)
    return y + 0 * index.to(y.dtype)  # the indices are computed inside the graph too


def _dropout(x):
    return dropout(x, 0.5)


def _dropout_inplace(x):
    return dropout(x * 1.0, 0.5, True, True)


def _all(x):
    return dropout(_pool(_lrn(x)), 0.5)


OPS = {"lrn": _lrn, "max_pool": _pool, "max_pool_indices": _pool_indices, "dropout": _dropout,
       "dropout_inplace": _dropout_inplace, "lrn_pool_dropout": _all}
RANDOM = {"dropout", "dropout_inplace", "lrn_pool_dropout"}


def _graphed_step(op, x, dy):
    """(graph, outputs) of a captured forward + backward of ``op`` on the static ``x``, after a
    warm-up on a side stream (compiles the kernels, as torch.cuda.graph requires)."""

    def step():
        y = op(x)
        (dx,) = torch.autograd.grad(y, x, dy)
        return y.detach(), dx

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs, step


def _replay(graph, outputs):
    graph.replay()
    torch.cuda.synchronize()
    return [t.clone() for t in outputs]


@pytest.mark.parametrize("op", list(OPS))
def test_replay_matches_eager(op):
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 40, 13, 13, device="cuda") * 10)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y_shape = OPS[op](x.detach()).shape
    dy = torch.randn(y_shape, device="cuda")
    graph, outputs, step = _graphed_step(OPS[op], x, dy)

    torch.manual_seed(7)
    y1, dx1 = _replay(graph, outputs)
    torch.manual_seed(7)
    torch.cuda.set_sync_debug_mode("error")  # an op that waits for the device raises here
    try:
        y_eager, dx_eager = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(y1, y_eager) and torch.equal(dx1, dx_eager)

    y2, dx2 = _replay(graph, outputs)
    if op in RANDOM:
        assert not torch.equal(y1 != 0, y2 != 0)  # a fresh mask on every replay
    else:
        assert torch.equal(y1, y2) and torch.equal(dx1, dx2)
    torch.manual_seed(7)
    y3, dx3 = _replay(graph, outputs)
    assert torch.equal(y3, y1) and torch.equal(dx3, dx1)  # manual_seed reproduces a replay


def test_dropout_masks_of_replays_are_independent():
    """Over several replays the masks differ pairwise and each keeps about half the units; the
    backward of each replay uses that replay's mask."""
    x = torch.ones(64, 4096, device="cuda", requires_grad=True)
    dy = torch.ones(64, 4096, device="cuda")
    graph, outputs, _ = _graphed_step(_dropout, x, dy)
    masks = []
    for _ in range(4):
        y, dx = _replay(graph, outputs)
        assert torch.equal(dx, y)  # x = dy = 1: both are 2 where kept, 0 where dropped
        masks.append(y != 0)
        assert abs(masks[-1].float().mean().item() - 0.5) < 0.01
    for i in range(len(masks)):
        for j in range(i):
            assert not torch.equal(masks[i], masks[j])
