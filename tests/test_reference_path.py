"""The plain PyTorch path of every fastalex layer and function (what runs on a CPU without
the interpreter, on other devices, and inside fastalex.reference_ops()), on the CPU in every
dtype fastalex accepts: it must run where torch lacks a kernel for the dtype, return the
caller's dtype, and give torch's values (computed here in float64 on the same inputs and
parameters), forward and backward. No Triton kernel may run on this path."""

import pytest
import torch
import torch.nn.functional as F
from helpers import tolerance

import fastalex
import fastalex.functional as FF
import fastalex.layers as L
from fastalex.ops import dropout as dropout_op
from fastalex.ops import lrn as lrn_op
from fastalex.ops import max_pool as max_pool_op

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(autouse=True)
def _reference_only(monkeypatch):
    """Inside reference_ops, with the kernels of LRN, max-pool and dropout made to fail."""

    def no_kernel(*args):
        raise AssertionError("a Triton kernel ran on the reference path")

    for op in (lrn_op, max_pool_op, dropout_op):
        monkeypatch.setattr(op, "_forward", no_kernel)
        monkeypatch.setattr(op, "_backward", no_kernel)
    with fastalex.reference_ops():
        yield


def _compare(ours, reference, inputs, dtype):
    """Run ``ours`` on ``inputs`` (tensors of ``dtype``, requiring grad) and ``reference`` on
    float64 copies; outputs and every input's gradient must have ``dtype`` and match."""
    ours_in = [t.detach().to(dtype).requires_grad_() for t in inputs]
    ref_in = [t.detach().to(dtype).double().requires_grad_() for t in ours_in]
    y, y_ref = ours(*ours_in), reference(*ref_in)
    assert y.dtype == dtype
    tol = tolerance(dtype, atol=1e-2) if dtype in (torch.float16, torch.bfloat16) \
        else tolerance(dtype)
    torch.testing.assert_close(y, y_ref.to(dtype), **tol)
    dy = torch.randn(y.shape, dtype=torch.float64).to(dtype)  # both sides see the same dy
    grads = torch.autograd.grad(y, ours_in, dy)
    grads_ref = torch.autograd.grad(y_ref, ref_in, dy.double())
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == dtype
        torch.testing.assert_close(g, g_ref.to(dtype), **tol)


LRN_ARGS = (5, 5e-4, 0.75, 2.0)


def _lrn_layer(x):
    return L.LRN(*LRN_ARGS)(x)


def _lrn_layer_long_name(x):
    return L.LocalResponseNorm(*LRN_ARGS)(x)


def _lrn_fn(x):
    return FF.lrn(x, *LRN_ARGS)


def _lrn_fn_long_name(x):
    return FF.local_response_norm(x, *LRN_ARGS)


def _lrn_torch(x):
    return F.local_response_norm(x, *LRN_ARGS)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ours", [_lrn_layer, _lrn_layer_long_name, _lrn_fn, _lrn_fn_long_name])
@pytest.mark.parametrize("shape", [(2, 8, 5, 5), (2, 8, 7), (1, 8, 2, 3, 3)], ids=str)
def test_lrn(ours, shape, dtype):
    x = torch.relu(torch.randn(shape)) * 10
    _compare(ours, _lrn_torch, [x], dtype)


def test_lrn_5d_layout_torch_cannot_view():
    """torch's own 5-D LRN fails on this layout (it views the squares); the reference path
    runs it on a contiguous copy."""
    x = torch.randn(1, 4, 2, 3, 3).transpose(-1, -2)
    with pytest.raises(RuntimeError):
        F.local_response_norm(x, 3)
    torch.testing.assert_close(FF.lrn(x, 3), F.local_response_norm(x.contiguous(), 3))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_layer", [True, False], ids=["layer", "functional"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_pool(use_layer, layout, dtype):
    args = (3, 2, 1, 1, True)  # kernel, stride, padding, dilation, ceil_mode
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 3, 9, 10).contiguous(memory_format=fmt)

    def ours(t):
        if use_layer:
            return L.MaxPool2d(*args[:4], ceil_mode=args[4])(t)
        return FF.max_pool2d(t, *args)

    _compare(ours, lambda t: F.max_pool2d(t, *args), [x], dtype)
    xt = x.to(dtype)
    pool = L.MaxPool2d(*args[:4], return_indices=True, ceil_mode=True) if use_layer else None
    y, index = pool(xt) if use_layer else FF.max_pool2d(xt, *args, return_indices=True)
    y_ref, index_ref = F.max_pool2d(xt.double(), *args, return_indices=True)
    assert y.dtype == dtype and y.stride() == y_ref.stride()
    assert torch.equal(index, index_ref) and torch.equal(y, y_ref.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_layer", [True, False], ids=["layer", "functional"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out-of-place", "inplace"])
def test_dropout(use_layer, inplace, dtype):
    """Random values: each unit is 0 or scaled by exactly 2 (p = 0.5), in the caller's dtype,
    and the gradient drops the same units; eval mode is the identity."""
    x = torch.randn(64, 50).to(dtype)
    x = torch.where(x.abs() < 0.05, torch.full_like(x, 0.5), x)
    leaf = x.clone().requires_grad_()
    layer = L.Dropout(0.5, inplace)
    t = leaf * 1.0
    y = layer(t) if use_layer else FF.dropout(t, 0.5, True, inplace)
    assert y.dtype == dtype and (y is t) == inplace
    kept = y.detach() != 0
    assert 0.35 < kept.float().mean().item() < 0.65
    assert torch.equal(y.detach()[kept], (x * 2)[kept])
    dy = torch.randn(64, 50).to(dtype)
    (dx,) = torch.autograd.grad(y, leaf, dy)
    assert dx.dtype == dtype
    assert torch.equal(dx, torch.where(kept, dy * 2, torch.zeros_like(dy)))
    assert layer.eval()(x) is x and FF.dropout(x, 0.5, False) is x
    torch.manual_seed(3)
    a = FF.dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, FF.dropout(x, 0.5))  # the seed comes from torch's generator


# Conv2d, Conv2dReLU, Linear, LinearReLU: built in float64 and converted to the dtype under test;
# the reference is torch's module on a float64 copy of the converted parameters.
def _module_case(make, reference_fn, x_shape, dtype):
    torch.manual_seed(0)
    module = make().to(torch.float64)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).double())  # values the dtype under test holds exactly
    ours = module.to(dtype)
    params = [p for p in ours.parameters()]
    x = torch.randn(x_shape)

    def run(t, *ps):
        return ours(t)

    def reference(t, *ps):
        return reference_fn(t, *[p.detach().double() for p in params])

    _compare(run, reference, [x], dtype)
    return ours


def _conv_relu(x, w, b):
    return F.relu(F.conv2d(x, w, b, 1, 1, 1, 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["Conv2d", "Conv2dReLU", "Linear", "LinearReLU"])
def test_gemm_layers(name, dtype):
    if name.startswith("Conv"):
        def make():
            return getattr(L, name)(4, 6, 3, stride=1, padding=1, groups=2)

        def reference(x, w, b):
            y = F.conv2d(x, w, b, 1, 1, 1, 2)
            return F.relu(y) if name == "Conv2dReLU" else y

        module = _module_case(make, reference, (2, 4, 5, 5), dtype)
    else:
        def make():
            return getattr(L, name)(12, 7)

        def reference(x, w, b):
            y = F.linear(x, w, b)
            return F.relu(y) if name == "LinearReLU" else y

        module = _module_case(make, reference, (3, 12), dtype)
    assert all(p.dtype == dtype for p in module.parameters())


def _gemm_function_cases():
    for name in ("conv2d", "conv2d_relu", "linear", "linear_relu"):
        for dtype in DTYPES:
            yield pytest.param(name, dtype, id=f"{name}-{dtype}")


@pytest.mark.parametrize("name, dtype", list(_gemm_function_cases()))
def test_gemm_functions(name, dtype):
    torch.manual_seed(0)
    if name.startswith("conv"):
        inputs = [torch.randn(2, 4, 5, 5), torch.randn(6, 2, 3, 3), torch.randn(6)]

        def ours(x, w, b):
            return getattr(FF, name)(x, w, b, stride=1, padding=1, groups=2)

        def reference(x, w, b):
            y = F.conv2d(x, w, b, 1, 1, 1, 2)
            return F.relu(y) if name == "conv2d_relu" else y
    else:
        inputs = [torch.randn(3, 12), torch.randn(7, 12), torch.randn(7)]

        def ours(x, w, b):
            return getattr(FF, name)(x, w, b)

        def reference(x, w, b):
            y = F.linear(x, w, b)
            return F.relu(y) if name == "linear_relu" else y
    _compare(ours, reference, inputs, dtype)


def test_cpu_without_interpreter_takes_this_path(monkeypatch):
    """A CPU tensor takes the reference when the interpreter is off, not only inside
    reference_ops (the fixture's patched kernels would fail otherwise)."""
    monkeypatch.setattr(fastalex.backend, "_forced_reference", False)
    monkeypatch.setattr(fastalex.backend, "INTERPRET", False)
    x = torch.randn(2, 8, 5, 5, dtype=torch.bfloat16)
    torch.testing.assert_close(FF.lrn(x, 5), F.local_response_norm(x.float(), 5).bfloat16())
    torch.testing.assert_close(FF.max_pool2d(x, 3, 2), F.max_pool2d(x, 3, 2))
    assert FF.dropout(x, 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="padding"):  # the same checks run first
        FF.max_pool2d(x, 3, 2, 2)
