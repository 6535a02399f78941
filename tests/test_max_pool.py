"""Parity of fastalex's max_pool2d with torch.nn.functional.max_pool2d, forward and backward.

The reference runs torch's own max_pool2d on the CPU in float64 on the same values: the max is
exact, so outputs must be equal, and since the values are identical the reference picks the same
arg-max (ties, NaN) as the dtype under test would.
"""

import pytest
import torch
import torch.nn.functional as F

from fastalex.kernels.max_pool import index_dtype, max_pool2d_forward
from fastalex.ops.max_pool import max_pool2d
from helpers import tolerance

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
    if layout == "cl-strided":  # channels-last-like strides, not contiguous
        base = torch.empty(n, h, w + 1, c, dtype=x.dtype, device=device)
        return base.permute(0, 3, 1, 2)[..., 1:].copy_(x)
    raise AssertionError(layout)


def _check(x, args, grad_fn=None):
    """Forward and backward of fastalex on ``x`` against torch in float64 on the same values;
    output and gradient memory formats against torch's on ``x`` itself. Returns (y, dx)."""
    dtype = x.dtype
    x_ours = x.detach().requires_grad_()
    y = max_pool2d(x_ours, *args)
    x_ref = x.detach().cpu().double().requires_grad_()
    y_ref = F.max_pool2d(x_ref, *args)
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
    _check(x, args)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(device, dtype, layout):
    x = _layout(torch.randn(2, 5, 9, 10).to(dtype), layout, device)
    _check(x, (3, 2, 1, 1, True))


@pytest.mark.parametrize("case", ["alexnet-3s2", "pad-ceil"])
def test_3d_input(device, case):
    shape, *args = CASES[case]
    x = torch.randn(shape[1:], device=device)
    y, _ = _check(x, args)
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
    for args in [(3, 2, 1, 1, True), (2, 1, 1, 2, False)]:
        _check(x, args)


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
    for args in [(3, 2, 0, 1, False), (3, 2, 1, 1, True), (3, 1, 1, 1, False)]:
        _check(x, args)


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
    _, arg = max_pool2d_forward(x, [12, 11], [1, 1], [6, 5], [1, 1], 16, 17, False, True)
    assert arg.dtype == torch.int16


def test_index_dtype_is_compact(device):
    assert index_dtype(9) == torch.int8 and index_dtype(127) == torch.int8
    assert index_dtype(128) == torch.int16 and index_dtype(32767) == torch.int16
    assert index_dtype(32768) == torch.int32
    x = torch.randn(2, 3, 7, 7, device=device)
    y, arg = max_pool2d_forward(x, [3, 3], [2, 2], [0, 0], [1, 1], 3, 3, False, True)
    assert arg.dtype == torch.int8 and arg.shape == y.shape
    assert arg.min() >= 0 and arg.max() <= 8
    _, none = max_pool2d_forward(x, [3, 3], [2, 2], [0, 0], [1, 1], 3, 3, False, False)
    assert none.numel() == 0  # inference stores no arg-max


def test_forward_saves_no_input(device, monkeypatch):
    """Training saves only the int8 arg-max; inference does not even write it."""
    import fastalex.ops.max_pool as op

    x = torch.randn(2, 3, 9, 9, device=device, requires_grad=True)
    y = max_pool2d(x, 3, 2)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0].dtype == torch.int8 and saved[0].shape == y.shape

    calls = []
    forward = op._forward
    monkeypatch.setattr(op, "_forward", lambda *args: calls.append(args[-1]) or forward(*args))
    with torch.no_grad():
        assert max_pool2d(x, 3, 2).grad_fn is None
    max_pool2d(x.detach(), 3, 2)
    assert calls == [False, False]


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


def test_module_matches_torch(device):
    try:
        from fastalex.layers import MaxPool2d
    except ImportError as e:  # layers imports every op; some land in other issues
        if "max_pool" in str(e):
            raise
        pytest.skip(f"needs the other fastalex ops that fastalex.layers imports: {e}")
    m = MaxPool2d(3, 2, padding=1, ceil_mode=True)
    ref = torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
    x = torch.randn(2, 3, 9, 10, device=device)
    torch.testing.assert_close(m(x), ref(x.cpu()).to(device), rtol=0, atol=0)
    with pytest.raises(ValueError, match="return_indices"):
        MaxPool2d(3, return_indices=True)


def test_reference_path_without_triton(monkeypatch):
    """Where Triton does not run, the op is torch's own (same validation first)."""
    import fastalex.ops.max_pool as op

    monkeypatch.setattr(op, "uses_triton", lambda t: False)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(op.max_pool2d(x, 3, 2, 1, 1, True),
                               F.max_pool2d(x, 3, 2, 1, 1, True), rtol=0, atol=0)
    with pytest.raises(ValueError, match="padding"):
        op.max_pool2d(x, 3, 2, 2)


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
