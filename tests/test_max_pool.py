"""Parity of fastalex's max_pool2d with torch.nn.functional.max_pool2d, forward and backward.

The reference runs torch's own max_pool2d on the CPU in float64 on the same values: the max is
exact, so outputs must be equal, and since the values are identical the reference picks the same
arg-max (ties, NaN) as the dtype under test would.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
import triton
from helpers import config_id, tolerance
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fastalex.functional
import fastalex.layers
from fastalex.kernels import max_pool as kernels
from fastalex.kernels._runtime import pinned_configs
from fastalex.kernels.max_pool import index_dtype, max_pool2d_forward
from fastalex.ops.max_pool import _output_size, max_pool2d

# (shape, kernel_size, stride, padding, dilation, ceil_mode)
CASES = {
    "alexnet-3s2": ((2, 3, 11, 11), 3, 2, 0, 1, False),
    "pad-ceil": ((2, 3, 10, 9), 3, 2, 1, 1, True),
    "pairs-dilated": ((1, 4, 9, 12), (2, 3), (1, 2), (1, 0), (2, 1), True),
    "stride-default": ((2, 2, 8, 7), 2, None, 0, 1, False),
    "dilated-strided": ((1, 3, 12, 11), 3, 2, 1, (2, 3), False),
    # ceil_mode drops the last window here: it would start in the right padding.
    "ceil-drop": ((1, 2, 5, 5), 3, 3, 1, 1, True),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _layout(x: torch.Tensor, layout: str, device) -> torch.Tensor:
    """The same values on ``device`` in another memory layout (built there: ``.to(device)``
    would make a non-dense tensor dense)."""
    x = x.to(device)
    n, c, h, w = x.shape
    if layout == "nchw":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # no dense layout at all: permuted and sliced
        base = torch.empty(n, h, c, 2 * w, dtype=x.dtype, device=device)
        return base.permute(0, 2, 1, 3)[..., ::2].copy_(x)
    if layout == "expanded":  # batch stride 0: the first image broadcast over the batch
        return x[:1].expand(x.shape)
    if layout == "cl-strided":  # channels-last-like strides, not contiguous
        base = torch.empty(n, h, w + 1, c, dtype=x.dtype, device=device)
        return base.permute(0, 3, 1, 2)[..., 1:].copy_(x)
    raise AssertionError(layout)


def _check(x, args, grad_fn=None, indices=False):
    """Forward and backward of fastalex on ``x`` against torch in float64 on the same values;
    output and gradient memory formats against torch's on ``x`` itself; with ``indices``, the
    int64 indices too (values and strides), exactly. Returns (y, dx)."""
    dtype = x.dtype
    x_ours = x.detach().requires_grad_()
    y = max_pool2d(x_ours, *args, return_indices=indices)
    x_ref = x.detach().cpu().double().requires_grad_()
    y_ref = F.max_pool2d(x_ref, *args)
    if indices:
        y, index = y
        index_ref = F.max_pool2d(x.detach().cpu(), *args, return_indices=True)[1]
        assert index.dtype == torch.int64 and index.stride() == index_ref.stride()
        assert torch.equal(index.cpu(), index_ref)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y.cpu(), y_ref.to(dtype), rtol=0, atol=0, equal_nan=True)
    x_torch = x.detach().cpu().requires_grad_()
    y_torch = F.max_pool2d(x_torch, *args)
    assert y.stride() == y_torch.stride()

    # dy in the dtype under test; the reference sums the same values exactly in float64.
    if grad_fn is None:
        dy = torch.randn(y.shape, dtype=dtype, device=x.device)
    else:
        dy = grad_fn(y.shape, dtype, x.device)
    (dx,) = torch.autograd.grad(y, x_ours, dy)
    dy = dy.cpu()
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, dy.double())
    torch.testing.assert_close(dx.cpu(), dx_ref.to(dtype), **tolerance(dtype))
    (dx_torch,) = torch.autograd.grad(y_torch, x_torch, dy)
    assert dx.stride() == dx_torch.stride()
    if dtype in (torch.float32, torch.float64):  # torch's own kernel, same dtype, same order
        torch.testing.assert_close(dx.cpu(), dx_torch, **tolerance(dtype))
    return y, dx


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "cl-strided"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_torch(device, case, layout):
    shape, *args = case
    x = _layout(torch.randn(shape), layout, device)
    _check(x, args, indices=layout in ("strided", "cl-strided"))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(device, dtype, layout):
    x = _layout(torch.randn(2, 5, 9, 10).to(dtype), layout, device)
    _check(x, (3, 2, 1, 1, True))


@pytest.mark.parametrize("case", ["alexnet-3s2", "pad-ceil"])
def test_3d_input(device, case):
    shape, *args = CASES[case]
    x = torch.randn(shape[1:], device=device)
    y, _ = _check(x, args, indices=case == "pad-ceil")
    assert y.dim() == 3 and y.is_contiguous()


@pytest.mark.parametrize("values", ["relu", "small-ints", "constant"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ties_go_where_torch_sends_them(device, values, layout, dtype):
    """Windows with equal maxima (after ReLU: all zeros) send the gradient to the first one."""
    torch.manual_seed(1)
    shape = (2, 3, 9, 11)
    x = {
        "relu": torch.relu(torch.randn(shape)),
        "small-ints": torch.randint(0, 3, shape).float(),
        "constant": torch.full(shape, 0.5),
    }[values].to(dtype)
    x = _layout(x, layout, device)
    _check(x, (3, 2, 1, 1, True), indices=True)
    _check(x, (2, 1, 1, 2, False))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_nan_and_inf(device, layout, dtype):
    """NaN beats numbers and the last NaN of a window wins; inf as any number; a window of -inf
    points at its first element inside the input (with padding in front of it too)."""
    x = torch.randn(2, 3, 9, 10)
    flat = x.view(-1)
    picks = torch.randperm(flat.numel())
    flat[picks[:40]] = float("nan")
    flat[picks[40:70]] = float("inf")
    flat[picks[70:100]] = float("-inf")
    x[0, 0, :4, :4] = float("-inf")  # whole windows of -inf
    x[1, 1, :3, :3] = float("nan")  # whole windows of NaN
    x[1, 2, 4:7, 4:7] = float("inf")  # ties of +inf
    x = _layout(x.to(dtype), layout, device)
    for args, indices in [((3, 2, 0, 1, False), True), ((3, 2, 1, 1, True), False),
                          ((3, 1, 1, 1, False), True)]:
        _check(x, args, indices=indices)


def test_large_magnitudes(device):
    x = torch.randn(2, 3, 9, 9) * 1e30
    _check(x.to(device), (3, 2, 1, 1, False))
    x16 = (torch.rand(2, 3, 9, 9) * 2 - 1) * 6e4
    _check(x16.half().to(device), (3, 2, 0, 1, True))


def test_large_window_uses_int16_arg_and_loops(device):
    """Windows over 127 elements need int16 arg-maxes; over 128 taps the kernels loop instead
    of unrolling."""
    x = torch.randn(1, 2, 15, 16, device=device)
    _check(x, ((12, 11), 1, (6, 5), 1, False))
    _check(x.contiguous(memory_format=torch.channels_last), (12, 12, 0, 1, True))
    _, arg, _ = max_pool2d_forward(x, [12, 11], [1, 1], [6, 5], [1, 1], 16, 17, False, True,
                                   False)
    assert arg.dtype == torch.int16


def test_index_dtype_is_compact(device):
    assert index_dtype(9) == torch.int8 and index_dtype(127) == torch.int8
    assert index_dtype(128) == torch.int16 and index_dtype(32767) == torch.int16
    assert index_dtype(32768) == torch.int32
    x = torch.randn(2, 3, 7, 7, device=device)
    y, arg, index = max_pool2d_forward(x, [3, 3], [2, 2], [0, 0], [1, 1], 3, 3, False, True,
                                       False)
    assert arg.dtype == torch.int8 and arg.shape == y.shape
    assert arg.min() >= 0 and arg.max() <= 8
    assert index.numel() == 0  # no int64 indices unless asked for
    _, none, _ = max_pool2d_forward(x, [3, 3], [2, 2], [0, 0], [1, 1], 3, 3, False, False,
                                    False)
    assert none.numel() == 0  # inference stores no arg-max


def test_forward_saves_no_input(device, monkeypatch):
    """Training saves only the int8 arg-max; inference does not even write it, and the int64
    indices are written only for return_indices."""
    import fastalex.ops.max_pool as op

    x = torch.randn(2, 3, 9, 9, device=device, requires_grad=True)
    y = max_pool2d(x, 3, 2)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0].dtype == torch.int8 and saved[0].shape == y.shape

    calls = []  # (with_arg, with_index) of each launch
    forward = op._forward
    monkeypatch.setattr(op, "_forward",
                        lambda *args: calls.append(args[-2:]) or forward(*args))
    with torch.no_grad():
        assert max_pool2d(x, 3, 2).grad_fn is None
        max_pool2d(x, 3, 2, return_indices=True)
    max_pool2d(x.detach(), 3, 2)
    max_pool2d(x, 3, 2, return_indices=True)
    assert calls == [(False, False), (False, True), (False, False), (True, True)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_empty_batch(device, layout):
    x = _layout(torch.randn(0, 3, 9, 9), layout, device).requires_grad_()
    y = max_pool2d(x, 3, 2)
    assert y.shape == (0, 3, 4, 4)
    assert y.stride() == F.max_pool2d(x.detach().cpu(), 3, 2).stride()
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_unusual_grad_strides(device):
    """dy may be expanded (stride 0: y.sum()) or transposed."""
    x = torch.randn(2, 3, 9, 9, device=device)
    _check(x, (3, 2, 0, 1, False),
           grad_fn=lambda s, dtype, dev: torch.full((), 0.7, dtype=dtype, device=dev).expand(s))
    _check(x, (3, 2, 0, 1, False),
           grad_fn=lambda s, dtype, dev: torch.randn(s[::-1], dtype=dtype, device=dev)
           .permute(3, 2, 1, 0))


def test_gradcheck_float64(device):
    # fast_mode: a few random projections of the Jacobian instead of one column per element
    # (the interpreter runs a launch in tens of milliseconds).
    x = torch.randn(1, 2, 7, 8, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: max_pool2d(t, 3, 2, 1, 1, True), (x,),
                                    fast_mode=True)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: max_pool2d(t, (2, 3), 1, 1, (1, 2)), (xc,),
                                    fast_mode=True)


def test_torch_compile_fullgraph(device):
    backend = "inductor" if device == "cuda" else "aot_eager"
    torch._dynamo.reset()

    def f(t):
        return max_pool2d(torch.relu(t), 3, 2, 1, 1, True) * 2

    compiled = torch.compile(f, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 9, 10, device=device).contiguous(memory_format=torch.channels_last)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y1, y2 = compiled(x1), f(x2)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    dy = torch.randn_like(y1)
    y1.backward(dy)
    y2.backward(dy)
    torch.testing.assert_close(x1.grad, x2.grad, **tolerance(torch.float32))


@pytest.mark.parametrize(
    "x, kwargs, error, name",
    [
        (torch.randn(9, 9), {}, ValueError, "input"),
        (torch.randn(1, 1, 1, 9, 9), {}, ValueError, "input"),
        (torch.randint(0, 5, (1, 2, 9, 9)), {}, TypeError, "input"),
        (torch.randn(1, 2, 9, 9, dtype=torch.complex64), {}, TypeError, "input"),
        ([[1.0]], {}, TypeError, "input"),
        (torch.randn(1, 0, 9, 9), {}, ValueError, "input"),
        (torch.randn(1, 2, 9, 9), {"kernel_size": 0}, ValueError, "kernel_size"),
        (torch.randn(1, 2, 9, 9), {"kernel_size": (3, 3, 3)}, ValueError, "kernel_size"),
        (torch.randn(1, 2, 9, 9), {"kernel_size": 2.5}, TypeError, "kernel_size"),
        (torch.randn(1, 2, 9, 9), {"stride": 0}, ValueError, "stride"),
        (torch.randn(1, 2, 9, 9), {"stride": (2, -1)}, ValueError, "stride"),
        (torch.randn(1, 2, 9, 9), {"dilation": 0}, ValueError, "dilation"),
        (torch.randn(1, 2, 9, 9), {"padding": -1}, ValueError, "padding"),
        (torch.randn(1, 2, 9, 9), {"padding": 2}, ValueError, "padding"),
        (torch.randn(1, 2, 9, 9), {"padding": (0, 2)}, ValueError, "padding"),
        (torch.randn(1, 2, 9, 9), {"ceil_mode": 1}, TypeError, "ceil_mode"),
        (torch.randn(1, 2, 2, 9), {}, ValueError, "kernel_size"),
        (torch.randn(1, 2, 9, 9), {"kernel_size": 3, "dilation": 5}, ValueError, "input"),
    ],
)
def test_bad_arguments_raise_before_any_kernel(x, kwargs, error, name):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(error, match=name):
        max_pool2d(x, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a 4.3 GB tensor)")
def test_offsets_past_int32(device):
    """More than 2^31 input elements: offsets must be computed in int64."""
    if device != "cuda":
        pytest.skip("needs CUDA (a 4.3 GB tensor)")
    x = torch.randn(8, 64, 2050, 2048, device=device, dtype=torch.float16, requires_grad=True)
    assert x.numel() > 2**31
    y = max_pool2d(x, 3, 2)
    tail = x[-1:].detach().requires_grad_()
    y_ref = F.max_pool2d(tail, 3, 2)
    torch.testing.assert_close(y[-1:], y_ref, rtol=0, atol=0)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    (dx_ref,) = torch.autograd.grad(y_ref, tail, dy[-1:])
    torch.testing.assert_close(dx[-1:], dx_ref, **tolerance(torch.float16))


# ---------------------------------------------------------------------------------------------
# return_indices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_indices_feed_max_unpool(device, layout):
    """torch.nn.MaxUnpool2d takes fastalex's indices and gives what it gives for torch's."""
    x = _layout(torch.randn(2, 3, 9, 10), layout, device)
    pool = fastalex.layers.MaxPool2d(3, 2, 1, return_indices=True)
    y, index = pool(x)
    y_ref, index_ref = nn.MaxPool2d(3, 2, 1, return_indices=True)(x.cpu())
    unpool = nn.MaxUnpool2d(3, 2, 1)
    torch.testing.assert_close(unpool(y, index, output_size=x.shape[-2:]).cpu(),
                               unpool(y_ref, index_ref, output_size=x.shape[-2:]),
                               rtol=0, atol=0)


def test_indices_of_a_window_outside_the_input(device):
    """A dilated window can miss the input entirely: y is -inf and the index is torch's (its
    first tap moved inside by whole dilation steps, past the plane here)."""
    x = torch.randn(1, 2, 1, 1, device=device)
    y, index = max_pool2d(x, 2, 2, 1, 3, True, True)
    y_ref, index_ref = F.max_pool2d(x.cpu(), 2, 2, 1, 3, True, True)
    assert torch.equal(index.cpu(), index_ref) and index_ref.flatten().tolist() == [4, 4]
    assert torch.equal(y.cpu(), y_ref) and torch.isneginf(y).all()


def test_indices_without_grad_and_under_compile(device):
    backend = "inductor" if device == "cuda" else "aot_eager"
    torch._dynamo.reset()
    x = torch.randn(2, 3, 9, 10, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y, index = max_pool2d(x, 3, 2, 1, 1, True, True)
    y_ref, index_ref = F.max_pool2d(x.cpu(), 3, 2, 1, 1, True, True)
    assert torch.equal(index.cpu(), index_ref) and torch.equal(y.cpu(), y_ref)

    def f(t):
        out, idx = max_pool2d(t * 2, 3, 2, 1, 1, True, True)
        return out, idx

    xc = x.clone().requires_grad_()
    yc, ic = torch.compile(f, backend=backend, fullgraph=True)(xc)
    assert torch.equal(ic.cpu(), index_ref) and torch.equal(yc.detach().cpu(), 2 * y_ref)
    yc.backward(torch.ones_like(yc))
    xe = x.clone().requires_grad_()
    f(xe)[0].backward(torch.ones_like(yc))
    torch.testing.assert_close(xc.grad, xe.grad, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# drop-in: signatures, the layer, errors at construction
# ---------------------------------------------------------------------------------------------
def _parameters(f):
    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]


def test_signatures_are_torchs():
    assert _parameters(fastalex.functional.max_pool2d) == _parameters(F.max_pool2d_with_indices)
    assert _parameters(fastalex.layers.MaxPool2d) == _parameters(nn.MaxPool2d)


def test_layer_is_a_drop_in(device):
    args = dict(kernel_size=3, stride=2, padding=1, dilation=1, return_indices=False,
                ceil_mode=True)
    ours, ref = fastalex.layers.MaxPool2d(**args), nn.MaxPool2d(**args)
    assert isinstance(ours, nn.MaxPool2d)
    assert repr(ours) == repr(ref) and ours.state_dict().keys() == ref.state_dict().keys()
    for name in args:
        assert getattr(ours, name) == getattr(ref, name)
    assert fastalex.layers.MaxPool2d(3).stride == nn.MaxPool2d(3).stride == 3
    x = torch.randn(2, 3, 9, 10, device=device)
    torch.testing.assert_close(ours(x).cpu(), ref(x.cpu()), rtol=0, atol=0)
    positional = fastalex.layers.MaxPool2d(3, 2, 1, 1, True, True)  # torch's positional order
    assert positional.return_indices and positional.ceil_mode
    y, index = positional(x)
    assert torch.equal(index.cpu(), nn.MaxPool2d(3, 2, 1, 1, True, True)(x.cpu())[1])


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(kernel_size=0), ValueError, "kernel_size"),
        (dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size"),
        (dict(kernel_size=2.5), TypeError, "kernel_size"),
        (dict(stride=0), ValueError, "stride"),
        (dict(padding=2), ValueError, "padding"),
        (dict(padding=-1), ValueError, "padding"),
        (dict(dilation=0), ValueError, "dilation"),
        (dict(ceil_mode=1), TypeError, "ceil_mode"),
        (dict(return_indices="yes"), TypeError, "return_indices"),
    ],
)
def test_layer_refuses_bad_arguments_at_construction(kwargs, error, name):
    with pytest.raises(error, match=name):
        fastalex.layers.MaxPool2d(**{"kernel_size": 3, **kwargs})


# ---------------------------------------------------------------------------------------------
# every configuration the autotuners can pick
# ---------------------------------------------------------------------------------------------
def _pickable():
    """(configuration, BLOCK_Q) pairs: each configuration at the widest column block >= 4
    (a width below it leaves a remainder) at which it fits, and the fallback chosen when no
    tile fits (1-wide columns)."""
    pairs = []
    for config in kernels._CONFIGS:
        widths = [q for q in (4, 8, 16, 32, 64, 128)
                  if config in kernels.fitting(kernels._CONFIGS, q)]
        pairs.append((config, widths[-1]))
    pairs.append((kernels.fitting(kernels._CONFIGS, 1)[0], 1))
    return pairs


def test_untuned_choice_fits_the_column_block(device, monkeypatch):
    """Without autotuning a launch runs the first configuration that fits its columns (the
    largest tile on 4 warps), not one entry for every shape."""
    launched = []
    run = kernels._fwd.fn.run
    monkeypatch.setattr(kernels, "AUTOTUNE", False)
    monkeypatch.setattr(kernels._fwd.fn, "run",
                        lambda *a, **kw: launched.append(kw["BLOCK_R"]) or run(*a, **kw))
    for channels, block_r in ((96, 8), (20, 32), (3, 256)):  # 128, 32 and 4 columns
        x = torch.randn(1, channels, 5, 5, device=device)
        max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2)
        assert launched[-1] == block_r
        assert kernels.fitting(kernels._CONFIGS, triton.next_power_of_2(channels))[0] \
            .kwargs["BLOCK_R"] == block_r


def _config_shape(layout, block_r, block_q):
    """An input whose tiles leave remainders in both dims for both kernels: an odd row count
    above BLOCK_R, and a column count just under BLOCK_Q (or 136 = 128 + 8 columns, where the
    column block is capped at 128). The pool is 3x3/1 with padding 1: output size = input
    size, so the forward and the backward tile the same rows and columns."""
    cols = 136 if block_q == 128 else max(block_q - 1, 1)
    if layout == "nchw":  # rows c * h, columns w
        return (1, 3, (block_r // 3 + 1) | 1, cols)
    side = 1  # channels-last: rows h * w, columns c
    while side * side <= block_r:
        side += 2
    return (1, cols, side, side)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("config, block_q", _pickable(),
                         ids=[f"{config_id(c)}-Q{q}" for c, q in _pickable()])
def test_every_config(device, config, block_q, layout, dtype):
    """Forward (with and without the arg-max and indices) and backward in one configuration."""
    shape, args = _config_shape(layout, config.kwargs["BLOCK_R"], block_q), (3, 1, 1)
    x = _layout(torch.randn(shape).to(dtype), layout, device)
    with pinned_configs(kernels._fwd, [config]), pinned_configs(kernels._bwd, [config]):
        _check(x, args, indices=True)
        with torch.no_grad():
            y = max_pool2d(x, *args)
    assert torch.equal(y.cpu(), F.max_pool2d(x.cpu(), *args))


@pytest.mark.parametrize("autotuned", [False, True], ids=["first-config", "autotuned"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(128, 96, 55, 55), (128, 256, 27, 27), (128, 256, 13, 13)],
                         ids=["pool1", "pool2", "pool5"])
def test_alexnet_shapes(device, shape, layout, autotuned, monkeypatch):
    """AlexNet's three pools at batch 128 in bf16, in the untuned choice and in the one the
    autotuners pick, against torch in float64 on the GPU."""
    if device != "cuda":
        pytest.skip("needs CUDA (full AlexNet shapes)")
    monkeypatch.setattr(kernels, "AUTOTUNE", autotuned)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.relu(torch.randn(shape, device=device)).to(torch.bfloat16)
    x = x.contiguous(memory_format=fmt).requires_grad_()
    configs = kernels._CONFIGS  # and an empty cache of choices: a fresh one for this test
    with pinned_configs(kernels._fwd, configs), pinned_configs(kernels._bwd, configs):
        y = max_pool2d(x, 3, 2)
        dy = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, x, dy)
    x_ref = x.detach().double().requires_grad_()
    y_ref = F.max_pool2d(x_ref, 3, 2)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, dy.double())
    assert torch.equal(y, y_ref.to(y.dtype))
    torch.testing.assert_close(dx, dx_ref.to(dx.dtype), **tolerance(torch.bfloat16))


# ---------------------------------------------------------------------------------------------
# randomized parity
# ---------------------------------------------------------------------------------------------
@st.composite
def _pool_cases(draw):
    """A pooling call torch accepts: window, stride (or None), padding up to half the window,
    dilation, ceil_mode, return_indices; a small input fitting it; a layout and a dtype."""
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    pad = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    ceil_mode, return_indices = draw(st.booleans()), draw(st.booleans())
    size = [max(1, d * (kk - 1) + 1 - 2 * p) + draw(st.integers(0, 6))
            for kk, p, d in zip(k, pad, dil)]
    s = stride or k
    if min(_output_size(n, kk, ss, p, d, ceil_mode)
           for n, kk, ss, p, d in zip(size, k, s, pad, dil)) < 1:
        size = [n + 2 for n in size]  # ceil_mode can drop the only window: widen
    shape = (draw(st.integers(0, 2)), draw(st.integers(1, 5)), *size)
    layout = draw(st.sampled_from(["nchw", "channels_last", "strided", "cl-strided",
                                   "expanded"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.float64]))
    values = draw(st.sampled_from(["normal", "ties", "nan"]))
    unbatched = draw(st.booleans())
    return shape, (k, stride, pad, dil, ceil_mode), return_indices, layout, dtype, values, \
        unbatched, draw(st.integers(0, 2**31))


@settings(max_examples=100)
@given(case=_pool_cases())
def test_random_arguments_match_torch(device, case):
    shape, args, return_indices, layout, dtype, values, unbatched, seed = case
    torch.manual_seed(seed)
    x = torch.randn(shape)
    if values == "ties":
        x = x.round()
    elif values == "nan":
        x = torch.where(torch.rand(shape) < 0.1, float("nan"), x)
    x = _layout(x.to(dtype), layout, device)
    if unbatched and shape[0] > 0:
        x = x[0]  # a 3-D view with the 4-D layout's strides
    _check(x, args, indices=return_indices)
