"""Dropout: values, mask statistics and reproducibility, mask regenerated in the backward, the
offset contract shared with the fused linear epilogue, layouts, in-place, NaN/Inf, errors and
torch.compile."""

import inspect

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from helpers import tolerance
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

import fastalex.functional
import fastalex.layers
from fastalex.kernels import dropout as kernels
from fastalex.kernels.dropout import (
    _launch,
    _memory_dims,
    dropout_backward,
    dropout_forward,
    dropout_forward_,
)
from fastalex.kernels.philox import dropout_keep
from fastalex.ops.dropout import dropout

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _nonzero_randn(*shape, dtype=torch.float32, device="cpu"):
    """Random values with no zeros, so that 'y != 0' identifies the kept units."""
    x = torch.randn(shape, dtype=torch.float32, device=device)
    x = torch.where(x.abs() < 0.05, torch.full_like(x, 0.5), x)
    return x.to(dtype)


def _scaled(x, p):
    """torch's kept value: x * (1 / (1 - p)) in fp32 (fp64 for fp64), rounded once."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = torch.tensor(1.0 / (1.0 - p) if p < 1 else 0.0, dtype=acc, device=x.device)
    return (x.to(acc) * scale).to(x.dtype)


def _assert_kept_values(actual, expected, device):
    """Kept values are exact, except bf16 in the interpreter: its fp32->bf16 conversion
    truncates where a GPU rounds to nearest (one bf16 ulp, within tolerance(bf16))."""
    if actual.dtype == torch.bfloat16 and device == "cpu":
        torch.testing.assert_close(actual, expected, **tolerance(torch.bfloat16))
    else:
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def _fixed_seed(device, value=0x5EED_1234_ABCD):
    return torch.tensor([value], dtype=torch.int64, device=device)


@triton.jit
def _epilogue_keep_kernel(seed_ptr, keep_ptr, M, N, p, BM: tl.constexpr, BN: tl.constexpr):
    """The fused linear epilogue's mask for a contiguous [M, N] output: offset m * N + n."""
    m = tl.program_id(0) * BM + tl.arange(0, BM)[:, None]
    n = tl.program_id(1) * BN + tl.arange(0, BN)[None, :]
    keep = dropout_keep(tl.load(seed_ptr), m * N + n, p)
    tl.store(keep_ptr + m * N + n, keep.to(tl.int8), mask=(m < M) & (n < N))


@triton.jit
def _range_keep_kernel(seed_ptr, keep_ptr, start, n, p, BLOCK: tl.constexpr):
    """The mask at int64 offsets start .. start + n - 1."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = dropout_keep(tl.load(seed_ptr), start + i.to(tl.int64), p)
    tl.store(keep_ptr + i, keep.to(tl.int8), mask=i < n)


# --- values and statistics ---------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kept_fraction_and_values(device, dtype, p):
    x = _nonzero_randn(96, 80, dtype=dtype, device=device)
    y = dropout(x, p)
    assert y.shape == x.shape and y.dtype == dtype and y.stride() == x.stride()
    kept = y != 0
    n = x.numel()
    # 5 standard deviations of a binomial fraction: a false failure is ~1 in 3 million
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * ((p * (1 - p) / n) ** 0.5)
    _assert_kept_values(y[kept], _scaled(x, p)[kept], device)


def test_mask_matches_linear_epilogue_contract(device):
    """dropout_forward on a contiguous [M, N] tensor drops exactly the units for which
    dropout_keep(seed, m * N + n, p) is False: the fused linear+ReLU+dropout relies on it."""
    M, N, p = 37, 53, 0.5
    seed = _fixed_seed(device)
    x = _nonzero_randn(M, N, device=device)
    y = dropout_forward(x, seed, p)
    keep = torch.empty(M, N, dtype=torch.int8, device=device)
    _epilogue_keep_kernel[(triton.cdiv(M, 16), triton.cdiv(N, 16))](seed, keep, M, N, p,
                                                                     BM=16, BN=16)
    assert torch.equal(y != 0, keep.bool())
    # and the backward launcher regenerates it from the same seed
    dx = dropout_backward(torch.ones_like(x), seed, p)
    assert torch.equal(dx != 0, keep.bool())


def test_reproducible_with_manual_seed_and_consecutive_calls_differ(device):
    x = _nonzero_randn(64, 64, device=device)
    torch.manual_seed(7)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(7)
    c = dropout(x, 0.5)
    assert torch.equal(a, c)
    assert not torch.equal(a != 0, b != 0)


def test_int32_and_int64_offsets_give_the_same_mask(device):
    """The launcher switches to 64-bit indices by numel alone; the mask must not change."""
    seed = _fixed_seed(device)
    for x in (_nonzero_randn(3, 1000, device=device),
              _nonzero_randn(2, 5, 6, 7, device=device).to(memory_format=torch.channels_last)):
        dims = _memory_dims(x)
        out32, out64 = torch.empty_like(x), torch.empty_like(x)
        _launch(x, out32, seed, 0.5, dims, int64=False)
        _launch(x, out64, seed, 0.5, dims, int64=True)
        assert torch.equal(out32, out64)
        assert torch.equal(out32, dropout_forward(x.contiguous(), seed, 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (2^31-element tensors)")
def test_more_than_2_pow_31_elements():
    n, p, tail = 2**31 + 3000, 0.5, 2**16
    seed = _fixed_seed("cuda")
    x = torch.ones(n, dtype=torch.float16, device="cuda")
    y = dropout_forward(x, seed, p)
    for start in (0, 2**31 - tail // 2, n - tail):
        keep = torch.empty(tail, dtype=torch.int8, device="cuda")
        _range_keep_kernel[(triton.cdiv(tail, 1024),)](seed, keep, start, tail, p, BLOCK=1024)
        window = y[start:start + tail]
        assert torch.equal(window != 0, keep.bool())
        assert torch.all((window == 0) | (window == 2))
    dx = dropout_backward(x, seed, p)
    assert torch.equal(dx[-tail:], y[-tail:])
    del dx
    dropout_forward_(x, seed, p)
    assert torch.equal(x[-tail:], y[-tail:])


# --- backward ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_regenerates_the_forward_mask(device, dtype):
    p = 0.4
    x = _nonzero_randn(33, 47, dtype=dtype, device=device).requires_grad_()
    y = dropout(x, p)
    dy = _nonzero_randn(33, 47, dtype=dtype, device=device)
    (dx,) = torch.autograd.grad(y, x, dy)
    kept = y.detach() != 0
    assert torch.equal(dx != 0, kept)
    _assert_kept_values(dx[kept], _scaled(dy, p)[kept], device)


def test_gradcheck_fp64(device):
    x = torch.randn(3, 7, dtype=torch.float64, device=device, requires_grad=True)

    def reseeded(inplace):
        def f(t):
            torch.manual_seed(1234)  # the same mask at every evaluation
            return dropout(t * 1.0, 0.3, True, inplace)
        return f

    assert torch.autograd.gradcheck(reseeded(False), (x,))
    assert torch.autograd.gradcheck(reseeded(True), (x,))


# --- special values of p and training ------------------------------------------------------------

def test_eval_and_p0_return_the_input(device):
    x = _nonzero_randn(5, 6, device=device)
    state = torch.get_rng_state()
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.5, False, True) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(torch.get_rng_state(), state)  # no seed drawn


# numpy, running the interpreter, warns when Inf * 0 (the unused scale at p=1) gives NaN
INTERPRETER_NAN_WARNING = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")


@INTERPRETER_NAN_WARNING
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_p1_gives_exact_zeros_and_zero_grads(device, dtype):
    x = _nonzero_randn(9, 11, dtype=dtype, device=device)
    x[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x.requires_grad_()
    y = dropout(x, 1.0)
    assert torch.equal(y, torch.zeros_like(y))
    dy = _nonzero_randn(9, 11, dtype=dtype, device=device)
    dy[1, 1] = float("nan")
    (dx,) = torch.autograd.grad(y, x, dy)
    assert torch.equal(dx, torch.zeros_like(dx))


@INTERPRETER_NAN_WARNING
def test_nan_and_inf_inputs(device):
    """Kept NaN/Inf scale (stay NaN/Inf), dropped ones give exactly 0; same for gradients."""
    p, shape = 0.5, (40, 30)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e38, -3.0])
    x = special[torch.randint(0, 5, shape)].to(device)
    torch.manual_seed(11)
    kept = dropout(torch.ones(shape, device=device), p) != 0
    torch.manual_seed(11)
    leaf = x.clone().requires_grad_()
    y = dropout(leaf, p)
    assert torch.all(y[~kept] == 0)
    _assert_kept_values(y[kept], _scaled(x, p)[kept], device)  # 1e38 * 2 -> inf, as torch
    dy = x.flip(0)
    (dx,) = torch.autograd.grad(y, leaf, dy)
    assert torch.all(dx[~kept] == 0)
    _assert_kept_values(dx[kept], _scaled(dy, p)[kept], device)


# --- layouts, dims, empty ------------------------------------------------------------------------

# name: (shape of a leaf, the view or copy of it that dropout gets)
LAYOUTS = {
    "0d": ((1,), lambda t: t.reshape(())),
    "1d": ((1001,), lambda t: t * 1.0),
    "3d": ((3, 17, 19), lambda t: t * 1.0),
    "channels-last": ((2, 5, 6, 7), lambda t: t.to(memory_format=torch.channels_last)),
    "channels-last-3d": ((2, 3, 4, 5, 6), lambda t: t.to(memory_format=torch.channels_last_3d)),
    "transposed": ((30, 41), lambda t: t.t()),
    "permuted-6d": ((2, 3, 2, 3, 2, 3), lambda t: t.permute(5, 3, 1, 4, 2, 0)),
    "sliced": ((20, 50), lambda t: t[1:, ::3]),
    "expanded": ((1, 31), lambda t: t.expand(9, 31)),
    "size-1-dims": ((4, 1, 9), lambda t: t.transpose(0, 2)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_share_the_logical_mask(device, layout):
    """The mask follows the logical (row-major) index: any layout of the same values gets the
    same output as the contiguous copy; dense layouts are kept, others come back contiguous."""
    p = 0.5
    shape, view = LAYOUTS[layout]
    leaf = _nonzero_randn(*shape, device=device).requires_grad_()
    x = view(leaf)
    torch.manual_seed(3)
    expected = dropout(x.detach().contiguous(), p)
    torch.manual_seed(3)
    y = dropout(x, p)
    assert torch.equal(y, expected)
    if layout in ("sliced", "expanded", "permuted-6d"):  # not dense, or 5+ memory dims
        assert y.is_contiguous()
    else:
        assert y.stride() == x.stride()
    # the gradient arrives contiguous whatever the forward's layout: same mask
    dy = _nonzero_randn(*x.shape, device=device)
    (dleaf,) = torch.autograd.grad(y, leaf, dy)
    reference_leaf = leaf.detach().requires_grad_()
    (expected_dleaf,) = torch.autograd.grad(
        view(reference_leaf), reference_leaf, torch.where(expected != 0, dy * 2, 0.0))
    assert torch.equal(dleaf, expected_dleaf)


def test_backward_with_channels_last_gradient(device):
    p = 0.5
    x = _nonzero_randn(2, 5, 6, 7, device=device).requires_grad_()
    y = dropout(x, p)
    dy = _nonzero_randn(2, 5, 6, 7, device=device).to(memory_format=torch.channels_last)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert torch.equal(dx, torch.where(y != 0, dy * 2, torch.zeros_like(dy)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty(device, dtype):
    x = torch.randn(0, 7, dtype=dtype, device=device, requires_grad=True)
    y = dropout(x, 0.5)
    assert y.shape == (0, 7)
    y.sum().backward()
    assert x.grad.shape == (0, 7)
    seed = _fixed_seed(device)
    assert dropout_forward(x.detach(), seed, 0.5).shape == (0, 7)
    assert dropout_backward(x.detach(), seed, 0.5).shape == (0, 7)
    dropout_forward_(x.detach(), seed, 0.5)


# --- in place ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "channels-last", "sliced"])
def test_inplace_writes_into_the_input(device, layout):
    p = 0.3
    base = _nonzero_randn(4, 6, 5, 8, device=device)
    if layout == "channels-last":
        base = base.to(memory_format=torch.channels_last)
    untouched = base.clone()
    leaf = base.requires_grad_()
    x = leaf * 1.0  # non-leaf: in-place dropout on it is allowed, as in torch
    target = x[:, :, 1::2] if layout == "sliced" else x
    torch.manual_seed(5)
    expected = dropout(target.detach().contiguous(), p)
    torch.manual_seed(5)
    version, ptr, strides = target._version, target.data_ptr(), target.stride()
    y = dropout(target, p, True, True)
    assert y is target and y.data_ptr() == ptr and y.stride() == strides
    assert y._version > version
    assert torch.equal(target.detach(), expected)
    if layout == "sliced":  # the rows in between are untouched
        assert torch.equal(x.detach()[:, :, ::2], untouched[:, :, ::2])
    dy = _nonzero_randn(*x.shape, device=device)
    (dleaf,) = torch.autograd.grad(x, leaf, dy)
    kept_grad = torch.where(expected != 0, _scaled(dy[:, :, 1::2] if layout == "sliced" else dy, p),
                            torch.zeros_like(expected))
    if layout == "sliced":
        assert torch.equal(dleaf[:, :, 1::2], kept_grad)
        assert torch.equal(dleaf[:, :, ::2], dy[:, :, ::2])
    else:
        assert torch.equal(dleaf, kept_grad)


@pytest.mark.parametrize("view", [False, True], ids=["leaf", "view-of-leaf"])
def test_inplace_on_a_leaf_requiring_grad_raises_before_writing(device, view):
    leaf = _nonzero_randn(4, 4, device=device).requires_grad_()
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable"):
        dropout(leaf[1:] if view else leaf, 0.5, True, True)
    assert torch.equal(leaf.detach(), before)


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(p=-0.1), ValueError, "p"),
        (dict(p=1.5), ValueError, "p"),
        (dict(p=float("nan")), ValueError, "p"),
        (dict(p="0.5"), TypeError, "p"),
        (dict(p=None), TypeError, "p"),
        (dict(p=True), TypeError, "p"),
        (dict(training="yes"), TypeError, "training"),
        (dict(inplace=1), TypeError, "inplace"),
        (dict(input=[1.0, 2.0]), TypeError, "input"),
        (dict(input=torch.ones(3, dtype=torch.int64)), TypeError, "input"),
        (dict(input=torch.ones(3, dtype=torch.complex64)), TypeError, "input"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_errors_name_the_argument(device, kwargs, error, name):
    args = dict(input=torch.randn(4, 4, device=device), p=0.5, training=True, inplace=False)
    args.update(kwargs)
    state = torch.get_rng_state()
    with pytest.raises(error, match=rf"\b{name}\b"):
        dropout(args["input"], args["p"], args["training"], args["inplace"])
    assert torch.equal(torch.get_rng_state(), state)  # raised before drawing a seed


# --- torch.compile -------------------------------------------------------------------------------

@pytest.mark.parametrize("inplace", [False, True], ids=["out-of-place", "inplace"])
def test_compile_fullgraph(device, inplace):
    backend = "aot_eager" if device == "cpu" else "inductor"
    p = 0.5

    def f(x):
        return dropout(torch.sin(x) + 2.0, p, True, inplace) * 3.0

    compiled = torch.compile(f, fullgraph=True, backend=backend)
    x = torch.randn(24, 40, device=device, requires_grad=True)
    y = compiled(x)
    kept = y.detach() != 0
    assert 0.3 < kept.float().mean().item() < 0.7
    ref = (torch.sin(x) + 2.0) * 2.0 * 3.0
    torch.testing.assert_close(y[kept], ref.detach()[kept])
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    expected = torch.where(kept, torch.cos(x.detach()) * 6.0, torch.zeros_like(dx))
    torch.testing.assert_close(dx, expected)
    # eval mode through the same compiled code path is the identity
    g = torch.compile(lambda t: dropout(t, p, False, inplace), fullgraph=True, backend=backend)
    assert torch.equal(g(x.detach()), x.detach())


# --- drop-in: signatures, the layer --------------------------------------------------------------

def _parameters(f):
    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]


def test_signatures_are_torchs():
    assert _parameters(fastalex.functional.dropout) == _parameters(F.dropout)
    assert _parameters(fastalex.layers.Dropout) == _parameters(nn.Dropout)


def test_layer_is_a_drop_in(device):
    ours, ref = fastalex.layers.Dropout(0.3, False), nn.Dropout(0.3, False)
    assert isinstance(ours, nn.Dropout)
    assert repr(ours) == repr(ref) and (ours.p, ours.inplace) == (ref.p, ref.inplace)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    assert repr(fastalex.layers.Dropout()) == repr(nn.Dropout())
    x = _nonzero_randn(40, 50, device=device)
    y = ours(x)
    kept = y != 0
    assert 0.5 < kept.float().mean().item() < 0.9
    _assert_kept_values(y[kept], _scaled(x, 0.3)[kept], device)
    assert ours.eval()(x) is x  # eval: the identity, as torch's
    inplace = fastalex.layers.Dropout(0.5, inplace=True)
    target = x.clone()
    assert inplace(target) is target


@pytest.mark.parametrize(
    "kwargs, error",
    [(dict(p=1.5), ValueError), (dict(p=-0.1), ValueError), (dict(p="0.5"), TypeError),
     (dict(inplace=1), TypeError)],
)
def test_layer_refuses_bad_arguments_at_construction(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        fastalex.layers.Dropout(**kwargs)


# --- the launch configuration ---------------------------------------------------------------------

# one layout per number of memory dims the kernel maps back to logical indices (1 to 4), each
# with more than one BLOCK of elements and a partial last block
CONFIG_LAYOUTS = {
    1: ((3, 1001), lambda t: t),
    2: ((41, 53), lambda t: t.t()),
    3: ((2, 5, 13, 11), lambda t: t.to(memory_format=torch.channels_last)),
    4: ((5, 6, 7, 8), lambda t: t.permute(1, 3, 0, 2)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("ndim", list(CONFIG_LAYOUTS))
def test_every_config(device, ndim, dtype):
    """The kernel's one launch configuration, in each memory-dims mode: forward and backward
    drop exactly the units whose logical index Philox rejects."""
    shape, view = CONFIG_LAYOUTS[ndim]
    x = view(_nonzero_randn(*shape, dtype=dtype, device=device))
    assert len(_memory_dims(x)) == ndim and x.numel() % kernels.BLOCK != 0
    assert x.numel() > kernels.BLOCK
    seed, p = _fixed_seed(device), 0.5
    keep = torch.empty(x.numel(), dtype=torch.int8, device=device)
    _range_keep_kernel[(triton.cdiv(x.numel(), 1024),)](seed, keep, 0, x.numel(), p, BLOCK=1024)
    keep = keep.bool().view(x.shape)  # logical (row-major) order
    expected = torch.where(keep, _scaled(x, p), torch.zeros_like(x))
    y = dropout_forward(x, seed, p)
    assert y.stride() == x.stride()
    _assert_kept_values(y, expected, device)
    dy = _nonzero_randn(*x.shape, dtype=dtype, device=device)
    _assert_kept_values(dropout_backward(dy, seed, p),
                        torch.where(keep, _scaled(dy, p), torch.zeros_like(dy)), device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_alexnet_shapes(device, dtype):
    """fc6/fc7's dropout at batch 128: p = 0.5 on 128 x 4096."""
    if device != "cuda":
        pytest.skip("needs CUDA (full AlexNet shapes)")
    x = _nonzero_randn(128, 4096, dtype=dtype, device=device).requires_grad_()
    y = dropout(x, 0.5)
    kept = y.detach() != 0
    assert abs(kept.float().mean().item() - 0.5) < 5 * (0.25 / x.numel()) ** 0.5
    _assert_kept_values(y.detach()[kept], _scaled(x.detach(), 0.5)[kept], device)
    dy = _nonzero_randn(128, 4096, dtype=dtype, device=device)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert torch.equal(dx != 0, kept)


# --- randomized ----------------------------------------------------------------------------------

_VIEWS = {
    "contiguous": lambda t: t,
    "transposed": lambda t: t.transpose(0, -1),
    "channels-last": lambda t: t.to(memory_format=torch.channels_last) if t.dim() == 4 else t,
    "sliced": lambda t: t[..., ::2],
    "expanded": lambda t: t[:1].expand(t.shape),
}


@st.composite
def _dropout_cases(draw):
    """A dropout call torch accepts: a 0-D to 4-D input in some layout and dtype, any p in
    [0, 1] (the endpoints often), training on or off, in place or not."""
    shape = draw(st.lists(st.integers(1, 9), min_size=0, max_size=4))
    if shape and draw(st.integers(0, 9)) == 0:
        shape[0] = 0  # an empty tensor, now and then
    shape = tuple(shape)
    view = draw(st.sampled_from(list(_VIEWS))) if len(shape) else "contiguous"
    p = draw(st.sampled_from([0.0, 1.0, 0.5]) | st.floats(0.0, 1.0))
    inplace = draw(st.booleans()) and view != "expanded"
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    training = draw(st.sampled_from([True, True, True, False]))
    return shape, view, p, training, inplace, dtype, draw(st.integers(0, 2**31))


@settings(max_examples=100)
@given(case=_dropout_cases())
def test_random_arguments(device, case):
    """Identity where torch's dropout is one; otherwise every unit is either dropped (0, in the
    gradient too) or scaled exactly as torch scales it, the mask is the one of the logical
    index whatever the layout, and the kept fraction is within 6 sigma of 1 - p."""
    shape, view, p, training, inplace, dtype, seed = case
    leaf = _nonzero_randn(*shape, dtype=dtype, device=device).requires_grad_()
    x = _VIEWS[view](leaf * 1.0)
    before = x.detach().clone()
    torch.manual_seed(seed)
    y = dropout(x, p, training, inplace)
    if inplace:
        assert y is x
    if not training or p == 0.0 or x.numel() == 0:
        event("identity")
        assert y is x and torch.equal(y.detach(), before)
    else:
        event(f"masked, {view}")
        _check_masked(leaf, _VIEWS[view], y, before, p, seed, device)


def _check_masked(leaf, view, y, before, p, seed, device):
    """``y = dropout(view(leaf * 1.0))`` (``before``: its input's values) drew the mask of the
    input's logical indices for ``seed``, scaled the kept units as torch does, and its gradient
    (taken at the leaf: an in-place dropout overwrote its input) uses the same mask."""
    torch.manual_seed(seed)
    assert torch.equal(y.detach(), dropout(before.contiguous(), p))
    kept = y.detach() != 0
    _assert_kept_values(y.detach()[kept], _scaled(before, p)[kept], device)
    if y.numel() >= 100:
        sigma = (p * (1 - p) / y.numel()) ** 0.5
        assert abs(kept.float().mean().item() - (1 - p)) <= 6 * sigma + 1e-12
    dy = _nonzero_randn(*y.shape, dtype=y.dtype, device=device)
    (dleaf,) = torch.autograd.grad(y, leaf, dy)
    reference = leaf.detach().requires_grad_()
    masked = torch.where(kept, _scaled(dy, p), torch.zeros_like(dy))
    (expected,) = torch.autograd.grad(view(reference * 1.0), reference, masked)
    _assert_kept_values(dleaf, expected, device)
