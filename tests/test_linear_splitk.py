"""The split-K protocol of the linear GEMM: programs of a tile store fp32 partials, the last to
arrive (an int32 counter per tile) sums them in a fixed order and runs the epilogue.

Under the interpreter: whatever a previous launch left in the workspace (counters at any value,
as after an aborted launch; stale partials and keep flags) does not change the result, the
counters are left at zero for a relaunch on the same workspace, and a partial that really holds
-inf is summed, not taken for a dropped unit. On CUDA: fc6/fc7/fc8 at batch 128 hundreds of
times, also on two streams at once, bitwise repeatable; CUDA-graph capture and replay."""

import pytest
import torch
import torch.nn.functional as F
from helpers import tolerance

from fastalex.kernels import linear as K
from fastalex.kernels._runtime import INTERPRET
from fastalex.kernels.dropout import dropout_forward
from fastalex.ops._rng import philox_seed
from fastalex.ops.linear import linear, linear_relu

CUDA = torch.cuda.is_available() and not INTERPRET
# One tile of the default fp32 forward configuration (128 x 128 x 32) split 4 ways.
M, KIN, N = 5, 1100, 37


def _split(dtype=torch.float32):
    cfg = K.GEMMS[("fwd", K.operand_class(dtype))].configs[0].kwargs
    return K.split_for(M, N, KIN, cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"],
                       dtype.itemsize, 132, False)


def _inputs(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, KIN, generator=g)
    w = torch.randn(N, KIN, generator=g) / KIN**0.5
    b = torch.randn(N, generator=g)
    return x.to(device), w.to(device), b.to(device)


class _Workspaces:
    """Records every split-K workspace the launcher allocates, after filling it with ``fill``
    (a callable on the int8 buffer): the state a previous launch may have left."""

    def __init__(self, monkeypatch, fill):
        self.buffers = []
        real = K.new_empty

        def new_empty(shape, *, dtype, device, **kw):
            out = real(shape, dtype=dtype, device=device, **kw)
            if dtype == torch.int8:
                fill(out)
                self.buffers.append(out)
            return out

        monkeypatch.setattr(K, "new_empty", new_empty)


def _fill_counters(value):
    def fill(buf):
        buf.view(torch.int32).fill_(value)  # counters, partials and flags alike
    return fill


@pytest.mark.parametrize("stale", [1, -1, 3, 2**31 - 1], ids=lambda v: f"counters={v}")
def test_stale_counters_do_not_change_the_result(device, monkeypatch, stale):
    """Counters at SPLIT_K - 1 would make the first arrival think it is last (it would sum
    partials not yet written); any other value would leave no program last. The launcher clears
    them on the launch's stream, so neither happens."""
    assert _split() == 4  # so 3 is 'SPLIT_K - 1'
    spy = _Workspaces(monkeypatch, _fill_counters(stale))
    x, w, b = _inputs(device)
    torch.manual_seed(3)
    y = linear_relu(x, w, b, p=0.5, training=True)
    assert spy.buffers, "the launch did not split K"
    torch.manual_seed(3)
    keep = dropout_forward(torch.ones(M, N, device=device), philox_seed(torch.device(device)),
                           0.5) != 0
    want = torch.where(keep, F.relu(F.linear(x.double(), w.double(), b.double())) * 2, 0.0)
    torch.testing.assert_close(y.double(), want, **tolerance(torch.float32))


def test_counters_are_left_at_zero(device, monkeypatch):
    """The last program of each tile clears its counter: a relaunch on the same workspace (the
    autotuner's benchmark repeats a launch with the same arguments) starts from zero too."""
    spy = _Workspaces(monkeypatch, _fill_counters(0))
    x, w, b = _inputs(device)
    linear(x, w, b)
    (buf,) = spy.buffers
    tiles = 1  # one 128 x 128 tile
    assert torch.equal(buf.view(torch.int32)[:tiles].cpu(), torch.zeros(tiles, dtype=torch.int32))


def test_repeated_launches_are_bitwise_equal(device):
    x, w, b = _inputs(device)
    first = linear(x, w, b)
    for _ in range(3):
        assert torch.equal(linear(x, w, b), first)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_minus_inf_partial_is_a_value_not_a_drop(device, dtype):
    """Row 0 sums -inf in the first split's share of K and +inf in the last's: its pre-activation
    is NaN, and a kept unit stays NaN (torch's relu and dropout); row 1 sums -inf alone: -inf
    without ReLU. Dropped units are 0, as fastalex's dropout gives."""
    split = _split(dtype)
    assert split > 1
    x, w, b = _inputs(device)
    x, w, b = x.to(dtype), w.abs().to(dtype), b.to(dtype)  # w > 0: the infinities keep signs
    x[0, 0], x[0, KIN - 1] = float("-inf"), float("inf")
    x[1, 0] = float("-inf")
    torch.manual_seed(5)
    y = linear_relu(x, w, b, p=0.5, training=True)
    torch.manual_seed(5)
    keep = dropout_forward(torch.ones(M, N, device=device), philox_seed(torch.device(device)),
                           0.5) != 0
    h = F.linear(x.double(), w.double(), b.double())
    want = torch.where(keep, F.relu(h) * 2, 0.0)
    assert torch.isnan(want[0][keep[0]]).all() and keep[0].any()
    torch.testing.assert_close(y.double(), want.to(dtype).double(), **tolerance(dtype),
                               equal_nan=True)
    plain = linear(x, w, b)
    assert torch.equal(plain[1].cpu(), torch.full((N,), float("-inf"), dtype=dtype))


# ---- CUDA: concurrency, repeatability, graphs ---------------------------------------------------

FC = {"fc6": (9216, 4096, True), "fc7": (4096, 4096, True), "fc8": (4096, 1000, False)}


def _fc_inputs(layer, dtype, seed):
    k, n, relu = FC[layer]
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(128, k, device="cuda", generator=g).relu_().to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=g) * k**-0.5).to(dtype)
    b = torch.randn(n, device="cuda", generator=g).to(dtype)
    dy = torch.randn(128, n, device="cuda", generator=g).to(dtype)
    return x, w, b, dy, relu


def _step(x, w, b, dy, relu):
    """Forward and the three gradients (p=0: the same bits every time)."""
    xx, ww, bb = (t.detach().requires_grad_() for t in (x, w, b))
    y = linear_relu(xx, ww, bb) if relu else linear(xx, ww, bb)
    return [y.detach(), *torch.autograd.grad(y, (xx, ww, bb), dy)]


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_stress_bitwise_repeatable(dtype):
    """fc6, fc7 and fc8 forward and backward 200 times each, in turn: every result bitwise equal
    to the first (the partials are summed in a fixed order whoever arrives last)."""
    cases = {layer: _fc_inputs(layer, dtype, seed=i) for i, layer in enumerate(FC)}
    first = {layer: _step(*args) for layer, args in cases.items()}
    for _ in range(200):
        for layer, args in cases.items():
            for got, want in zip(_step(*args), first[layer]):
                assert torch.equal(got, want), layer


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_two_streams_concurrently():
    """The same products launched on two streams at once, 100 rounds: each stream's results are
    bitwise those of a lone launch (no workspace or counter is shared between launches)."""
    cases = [_fc_inputs(layer, torch.bfloat16, seed=i) for i, layer in enumerate(FC)]
    want = [_step(*args) for args in cases]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    torch.cuda.synchronize()
    results = [[], []]
    for _ in range(100):
        for s, stream in enumerate(streams):
            with torch.cuda.stream(stream):
                results[s].append([_step(*args) for args in cases])
    torch.cuda.synchronize()
    for per_stream in results:
        for round_ in per_stream:
            for got, ref in zip(round_, want):
                assert all(torch.equal(g, r) for g, r in zip(got, ref))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graph_capture_and_replay():
    """fc6 (split-K, ReLU, dropout) and fc8 (split-K) forward and backward captured once and
    replayed on new inputs: each replay equals eager launches on the same inputs (bitwise where
    no dropout; with dropout, a fresh mask per replay, and kept units match eager ReLU x 2)."""
    x6, w6, b6, dy6, _ = _fc_inputs("fc6", torch.bfloat16, seed=1)
    x8, w8, b8, dy8, _ = _fc_inputs("fc8", torch.bfloat16, seed=2)
    w6.requires_grad_(), b6.requires_grad_(), w8.requires_grad_(), b8.requires_grad_()
    static_x6, static_x8 = x6.clone().requires_grad_(), x8.clone().requires_grad_()

    def step():
        y6 = linear_relu(static_x6, w6, b6, p=0.5, training=True)
        y8 = linear(static_x8, w8, b8)
        g6 = torch.autograd.grad(y6, (static_x6, w6, b6), dy6)
        g8 = torch.autograd.grad(y8, (static_x8, w8, b8), dy8)
        return [y6, y8, *g6, *g8]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up: compile and tune before capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    masks = []
    for seed in range(3):
        new6, _, _, _, _ = _fc_inputs("fc6", torch.bfloat16, seed=10 + seed)
        new8, _, _, _, _ = _fc_inputs("fc8", torch.bfloat16, seed=20 + seed)
        with torch.no_grad():
            static_x6.copy_(new6)
            static_x8.copy_(new8)
        graph.replay()
        torch.cuda.synchronize()
        eager8 = _step(new8, w8.detach(), b8.detach(), dy8, False)
        for got, want in zip([out[1], *out[5:]], eager8):
            assert torch.equal(got, want)
        eager6 = linear_relu(new6, w6.detach(), b6.detach())
        kept = out[0] != 0
        torch.testing.assert_close(out[0][kept], (eager6 * 2)[kept],
                                   **tolerance(torch.bfloat16))
        masks.append(kept.clone())
    assert not torch.equal(masks[0], masks[1])  # each replay draws a fresh seed
