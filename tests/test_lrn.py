"""LRN (fastalex.functional.lrn, fastalex.layers.LRN) against torch's local_response_norm.

References run in float64 on the same values; outputs come NaN-poisoned (conftest), so an
element a kernel misses fails. Shapes are tiny: on a CPU the kernels run in Triton's
interpreter. Where a test does not vary them on purpose, the channel count is 40 (32 channels
per thread in the NCHW order, two groups) and the window 5, so that on a GPU the tests share
compiled kernels: each other size, channel count under 32, dtype, layout or pow mode is a
Triton compile of about a second.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from helpers import config_id, tolerance
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fastalex.functional
import fastalex.layers
from fastalex.kernels import lrn as kernels
from fastalex.kernels._runtime import pinned_configs
from fastalex.ops.lrn import lrn

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
ALEXNET = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)  # the paper's constants, torch convention


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` (same values) in one of the layouts the kernels must handle."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[x.dim()]
        return x.contiguous(memory_format=fmt)
    if layout == "channel_slice":  # flattenable, not dense: every other channel of a bigger one
        big = torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype,
                          device=x.device)
        big[:, ::2] = x
        return big[:, ::2]
    if layout == "spatial_transposed":  # dense but the spatial dims do not flatten to one stride
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "expanded":  # batch stride 0: one image broadcast over the batch
        return x[:1].expand(x.shape)
    if layout == "batch_minor":  # batch stride 1: folds nothing, odd strides everywhere
        return x.permute(*range(1, x.dim()), 0).contiguous().permute(-1, *range(x.dim() - 1))
    raise ValueError(layout)


def _run(x, dy, size, alpha, beta, k):
    """(y, dx) from fastalex and (y, dx) from torch in float64 on the same values."""
    xk = x.detach().clone().requires_grad_()
    y = lrn(xk, size, alpha, beta, k)
    y.backward(dy)
    # contiguous: torch's own 5-D path views the squares and fails on some strided layouts
    xr = x.detach().double().contiguous().requires_grad_()
    ref = F.local_response_norm(xr, size, alpha, beta, k)
    ref.backward(dy.double())
    return y, xk.grad, ref, xr.grad


def _check(x, size, alpha=1e-2, beta=0.75, k=1.0, dy=None, **tol):
    dy = torch.randn(x.shape, dtype=x.dtype, device=x.device) if dy is None else dy
    y, dx, ref, dref = _run(x, dy, size, alpha, beta, k)
    tol = tolerance(x.dtype, **tol)
    torch.testing.assert_close(y, ref.to(x.dtype), equal_nan=True, **tol)
    torch.testing.assert_close(dx, dref.to(x.dtype), equal_nan=True, **tol)
    return y, dx


# shape, size, layout: both row orders (channel stride 1 or not), channel groups that split C
# (V = 32 in NCHW; 16 bytes of channels in channels-last), partial row blocks, 3-D and 5-D
CASES = [
    ((2, 40, 3, 5), 5, "contiguous"),
    ((2, 40, 3, 5), 5, "channels_last"),
    ((3, 40, 17), 5, "contiguous"),
    ((2, 40, 3, 2, 2), 5, "channels_last"),
    ((2, 40, 4, 3), 5, "channel_slice"),
    ((2, 40, 4, 3), 5, "spatial_transposed"),
]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shape,size,layout", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_parity(device, dtype, shape, size, layout):
    x = _layout(torch.randn(shape, device=device).to(dtype) * 3, layout)
    y, dx = _check(x, size, alpha=1e-2, beta=0.75, k=1.0)
    if layout in ("contiguous", "channels_last"):  # a dense input's strides are kept
        assert y.stride() == x.stride()


@pytest.mark.parametrize(
    "size,channels,layout",
    [(1, 6, "contiguous"), (2, 6, "channels_last"), (3, 6, "contiguous"), (4, 6, "channels_last"),
     (6, 37, "channels_last"), (8, 37, "contiguous"), (7, 3, "channels_last"),
     (12, 5, "contiguous"), (40, 5, "channels_last")],
)
def test_window_sizes(device, size, channels, layout):
    """Odd, even, 1, and larger than C (the window then covers every channel)."""
    x = _layout(torch.randn(2, channels, 3, 5, device=device) * 2, layout)
    _check(x, size, alpha=0.3, beta=0.75, k=1.0)


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.3, 0.0, 1.0, 2.0, -0.5])
def test_betas(device, beta):
    """Each pow path: beta = 0.75 (rsqrt), generic, zero, odd and even integers, negative."""
    x = torch.randn(2, 40, 4, 3, device=device) * 2
    _check(x, 5, alpha=0.1, beta=beta, k=1.5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's sqrt of a negative
def test_negative_normaliser(device):
    """k < 0: torch.pow's NaN for a fractional beta and a signed value for an integer one.
    Magnitudes 0.1 or 3 keep d = k + alpha/5 * (sum of 5 squares) at -0.495 or at least 0.4
    (x 1 +- 1%): near d = 0, d^-beta is too ill-conditioned for an fp32-vs-fp64 comparison."""
    mag = torch.where(torch.rand(2, 40, 3, 3, device=device) < 0.5, 0.1, 3.0)
    x = mag * torch.randn_like(mag).sign() * (1 + 0.01 * torch.randn_like(mag))
    for beta in (0.75, 0.6, 1.0, 2.0, 3.0):
        y, _ = _check(x, 5, alpha=0.5, beta=beta, k=-0.5)
        assert y.isnan().any() != float(beta).is_integer()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_alexnet_constants(device, layout):
    x = _layout(torch.relu(torch.randn(2, 40, 5, 5, device=device) * 20), layout)
    _check(x, **ALEXNET)


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e4), (torch.float16, 3e4),
                                         (torch.bfloat16, 1e5)])
def test_large_magnitudes(device, dtype, scale):
    """Squares far beyond fp16's range (and 1e8-scale in fp32) must not matter: the sums
    accumulate in fp32. The reference is float64."""
    x = (torch.randn(2, 40, 4, 3, device=device) * scale).clamp(-6e4, 6e4).to(dtype)
    assert x.isfinite().all()
    _check(x, 5, alpha=1e-4, beta=0.75, k=1.0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's inf * 0 in the interpreter
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_inf(device, value, layout):
    """NaN and +-Inf propagate as in torch: same NaN, Inf and finite results (torch defines
    both directions: x / inf = 0 for the neighbours, inf / inf = NaN for the element)."""
    x = torch.randn(2, 40, 3, 2, device=device)
    x[0, 4, 1, 1] = value
    x[1, 0, 0, 0] = value
    x = _layout(x, layout)
    y, dx = _check(x, 5, alpha=1e-2)
    assert y.isnan().any() and dx.isnan().any()


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3, 3), (2, 3, 0), (0, 5, 2, 2, 2)])
def test_empty(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    y = lrn(x, 3)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("shape", [(4, 40, 1, 1), (1, 40, 3, 3), (5, 40, 1)])
def test_unit_dims(device, shape):
    """A 1-element spatial dim or batch (the batch then folds into the rows)."""
    for layout in ("contiguous", "channels_last") if len(shape) == 4 else ("contiguous",):
        _check(_layout(torch.randn(shape, device=device), layout), 5)


def test_mixed_layouts(device):
    """x channels-last with a contiguous gradient, and the reverse."""
    x = torch.randn(2, 40, 3, 4, device=device)
    dy = torch.randn_like(x)
    _check(x.contiguous(memory_format=torch.channels_last), 5, dy=dy.contiguous())
    _check(x.contiguous(), 5, dy=dy.contiguous(memory_format=torch.channels_last))
    _check(_layout(x, "batch_minor"), 5, dy=dy)
    # a gradient of stride 0 everywhere, as from y.sum()
    _check(x, 5, dy=torch.ones(1, device=device).expand(x.shape))
    # an input broadcast over channels (channel stride 0): forward only, autograd would copy it
    xb = torch.randn(2, 1, 3, 4, device=device).expand(2, 40, 3, 4)
    ref = F.local_response_norm(xb.double(), 5, 1e-2, 0.75, 1.0)
    torch.testing.assert_close(lrn(xb, 5, 1e-2, 0.75, 1.0), ref.float())


def test_gradcheck(device):
    # fast_mode: a few random projections of the Jacobian instead of one column per element
    # (the interpreter runs a launch in tens of milliseconds)
    x = torch.randn(2, 7, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lrn(t, 4, 0.3, 0.75, 1.0), (x,), fast_mode=True)
    xc = torch.randn(2, 6, 2, 2, dtype=torch.float64, device=device)
    xc = xc.contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: lrn(t, 3, 0.5, 1.3, 0.5), (xc,), fast_mode=True)


def test_double_backward_refused(device):
    """The fused backward is not itself differentiable: say so rather than return zeros."""
    x = torch.randn(2, 40, 3, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(lrn(x, 5).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_compile_fullgraph(device):
    torch._dynamo.reset()
    backend = "inductor" if device == "cuda" else "aot_eager"

    def f(t):
        return lrn(t * 2.0, 5, 1e-2, 0.75, 1.0).sum(dim=1)

    x = torch.randn(2, 40, 3, 3, device=device)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    yc = torch.compile(f, fullgraph=True, backend=backend)(xc)
    ye = f(xe)
    dy = torch.randn_like(ye)
    yc.backward(dy)
    ye.backward(dy)
    torch.testing.assert_close(yc, ye)
    torch.testing.assert_close(xc.grad, xe.grad)


# ---------------------------------------------------------------------------------------------
# argument errors: raised before any kernel runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,error,name",
    [
        (([[1.0]], 3), TypeError, "input"),
        ((torch.ones(2, 3, 4, dtype=torch.int64), 3), TypeError, "input"),
        ((torch.ones(2, 3, 4, dtype=torch.complex64), 3), TypeError, "input"),
        ((torch.ones(2, 3), 3), ValueError, "input"),
        ((torch.ones(2, 3, 4), 0), ValueError, "size"),
        ((torch.ones(2, 3, 4), 2.0), TypeError, "size"),
        ((torch.ones(2, 3, 4), True), TypeError, "size"),
        ((torch.ones(2, 3, 4), 3, float("nan")), ValueError, "alpha"),
        ((torch.ones(2, 3, 4), 3, 1e-4, float("inf")), ValueError, "beta"),
        ((torch.ones(2, 3, 4), 3, 1e-4, 0.75, float("-inf")), ValueError, "k"),
        ((torch.ones(2, 3, 4), 3, "1e-4"), TypeError, "alpha"),
    ],
)
def test_errors(args, error, name):
    with pytest.raises(error, match=name):
        lrn(*args)


# ---------------------------------------------------------------------------------------------
# the drop-in layer
# ---------------------------------------------------------------------------------------------
def _parameters(f):
    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]


def test_signatures_are_torchs():
    for ours in (fastalex.functional.lrn, fastalex.functional.local_response_norm):
        assert _parameters(ours) == _parameters(F.local_response_norm)
    for ours in (fastalex.layers.LRN, fastalex.layers.LocalResponseNorm):
        assert _parameters(ours) == _parameters(nn.LocalResponseNorm)


def test_layer_is_a_drop_in():
    from fastalex.layers import LRN

    ours, ref = LRN(5, alpha=5e-4, beta=0.75, k=2.0), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    assert isinstance(ours, nn.LocalResponseNorm)
    assert (ours.size, ours.alpha, ours.beta, ours.k) == (ref.size, ref.alpha, ref.beta, ref.k)
    assert repr(ours) == repr(ref)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    default = LRN(3)
    assert (default.alpha, default.beta, default.k) == (1e-4, 0.75, 1.0)
    explicit = LRN(3, 0.0001, 0.75, 1.0)  # torch's defaults, passed positionally
    assert repr(explicit) == repr(nn.LocalResponseNorm(3, 0.0001, 0.75, 1.0))


@pytest.mark.parametrize(
    "args, error, name",
    [
        ((0,), ValueError, "size"),
        ((2.0,), TypeError, "size"),
        ((3, float("nan")), ValueError, "alpha"),
        ((3, 1e-4, float("inf")), ValueError, "beta"),
        ((3, 1e-4, 0.75, "1"), TypeError, "k"),
    ],
)
def test_layer_refuses_bad_arguments_at_construction(args, error, name):
    from fastalex.layers import LRN

    with pytest.raises(error, match=name):
        LRN(*args)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_layer_results(device, layout):
    from fastalex.layers import LRN

    x = _layout(torch.relu(torch.randn(2, 40, 4, 5, device=device)) * 10, layout)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yr = LRN(**ALEXNET)(xo), nn.LocalResponseNorm(**ALEXNET)(xr)
    dy = torch.randn_like(yr)
    yo.backward(dy)
    yr.backward(dy)
    torch.testing.assert_close(yo, yr, **tolerance(torch.float32))
    torch.testing.assert_close(xo.grad, xr.grad, **tolerance(torch.float32))


def test_layer_in_a_model(device):
    """Swapping nn.LocalResponseNorm for LRN in a small CNN changes nothing (within fp32
    rounding): outputs, every parameter's gradient, and one SGD step."""
    from fastalex.layers import LRN

    def model(norm):
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), norm(**ALEXNET), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3), nn.ReLU(), norm(3, 1e-3, 0.75, 1.0), nn.Flatten(),
            nn.Linear(12 * 2 * 2, 4),
        ).to(device=device, memory_format=torch.channels_last)

    ours, ref = model(LRN), model(nn.LocalResponseNorm)
    assert any(isinstance(m, LRN) for m in ours)
    x = torch.randn(3, 3, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.tensor([0, 1, 3], device=device)
    for net in (ours, ref):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss = F.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
    for po, pr in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(po.grad, pr.grad, **tolerance(torch.float32))
        torch.testing.assert_close(po, pr, **tolerance(torch.float32))
    torch.testing.assert_close(ours(x), ref(x), **tolerance(torch.float32))


# ---------------------------------------------------------------------------------------------
# full size (CUDA only: minutes in the interpreter)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("autotuned", [False, True], ids=["first-config", "autotuned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(128, 96, 55, 55), (128, 256, 27, 27)], ids=str)
def test_alexnet_shapes(device, dtype, layout, shape, autotuned):
    """Both LRN layers at batch 128, in the first configuration and in the one the autotuners
    pick."""
    if device != "cuda":
        pytest.skip("needs CUDA (full AlexNet shapes)")
    x = _layout(torch.relu(torch.randn(shape, device=device) * 30).to(dtype), layout)
    configs = kernels._CONFIGS if autotuned else kernels._CONFIGS[:1]
    with pinned_configs(kernels._lrn_fwd_kernel, configs), \
            pinned_configs(kernels._lrn_bwd_kernel, configs):
        _check(x, **ALEXNET)


def test_int32_overflow(device):
    """More than 2^31 elements: every offset that can pass 2^31 is int64."""
    if device != "cuda":
        pytest.skip("needs CUDA (2^31 elements)")
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs CUDA with 40 GiB")
    n = 2**31 // (96 * 55 * 55) + 2
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.empty(n, 96, 55, 55, device=device, dtype=torch.bfloat16, memory_format=fmt)
        x[-2:].normal_()
        y = lrn(x, **ALEXNET)
        ref = F.local_response_norm(x[-2:].double(), **ALEXNET)
        torch.testing.assert_close(y[-2:], ref.to(x.dtype), **tolerance(x.dtype))
        del x, y


# ---------------------------------------------------------------------------------------------
# every configuration the autotuners can pick
# ---------------------------------------------------------------------------------------------
def _pickable():
    """(configuration, channels_last) pairs: every configuration the prune keeps in each row
    order."""
    return [(config, channels_last) for channels_last in (False, True)
            for config in kernels._prune(kernels._CONFIGS, {}, CHANNELS_LAST=channels_last)]


def _config_input(config, channels_last, dtype, device):
    """An input whose tiles leave remainders in every dim: a channel count that is not a
    multiple of the row width V (32 channels, or 16 bytes channels-last) and a row count
    above BLOCK_R that is not a multiple of it."""
    block_r = config.kwargs["BLOCK_R"]
    if not channels_last:  # rows: spatial positions of one image (C * S apart: no folding)
        return torch.randn(2, 40, block_r + 3, device=device).to(dtype) * 3
    v = 16 // dtype.itemsize
    groups = 3
    side = 1  # rows: 2 images x side^2 positions x 3 channel groups (odd x 6, folded)
    while 6 * side * side <= block_r:
        side += 2
    x = torch.randn(2, groups * v - 2, side, side, device=device).to(dtype) * 3
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("config, channels_last", _pickable(),
                         ids=[f"{config_id(c)}-{'cl' if cl else 'nchw'}" for c, cl in _pickable()])
def test_every_config(device, config, channels_last, dtype):
    x = _config_input(config, channels_last, dtype, device)
    with pinned_configs(kernels._lrn_fwd_kernel, [config]), \
            pinned_configs(kernels._lrn_bwd_kernel, [config]):
        _check(x, **ALEXNET)


# ---------------------------------------------------------------------------------------------
# randomized parity
# ---------------------------------------------------------------------------------------------
_LAYOUTS = ["contiguous", "channels_last", "channel_slice", "spatial_transposed", "batch_minor",
            "expanded"]


@st.composite
def _lrn_cases(draw):
    """An LRN call torch accepts: a 3-D to 5-D input, any window size (also wider than C), a
    layout, a dtype, and constants that keep the normaliser positive (k > 0, alpha > 0)."""
    dims = draw(st.integers(3, 5))
    c = draw(st.integers(1, 40))
    spatial = [draw(st.integers(1, 4)) for _ in range(dims - 2)]
    shape = (draw(st.integers(0, 2)), c, *spatial)
    layouts = [name for name in _LAYOUTS if name != "channels_last" or dims > 3]
    layout = draw(st.sampled_from(layouts))
    if layout == "spatial_transposed" and dims == 3:
        layout = "contiguous"
    size = draw(st.integers(1, c + 2))
    alpha = draw(st.floats(1e-4, 0.5))
    beta = draw(st.sampled_from([0.75, 0.0, 1.0, 2.0]) | st.floats(0.05, 2.0))
    k = draw(st.floats(0.5, 3.0))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    return shape, layout, dtype, size, alpha, beta, k, draw(st.integers(0, 2**31))


@settings(max_examples=100)
@given(case=_lrn_cases())
def test_random_arguments_match_torch(device, case):
    shape, layout, dtype, size, alpha, beta, k, seed = case
    torch.manual_seed(seed)
    x = _layout(torch.randn(shape, device=device).to(dtype) * 2, layout)
    _check(x, size, alpha=alpha, beta=beta, k=k)
