"""Helpers shared by the convolution tests (import as ``from conv_helpers import ...``)."""

import contextlib

import torch
import torch.nn.functional as F
from helpers import tolerance

from fastalex.kernels._runtime import pinned_configs
from fastalex.ops.conv import conv2d, conv2d_relu

CL = torch.channels_last


def conv_inputs(n, c, h, w, cout, k, groups, *, bias=True, seed=0):
    """fp64 CPU tensors: x ~ N(0, 1), w ~ N(0, 1/K) so outputs are O(1) whatever K is."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(cout, c // groups, kh, kw, generator=g, dtype=torch.float64)
    wt /= (kh * kw * c // groups) ** 0.5
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    return x, wt, b


def conv_grads(fn, x, w, b, conv_kwargs, dy, input_grad=True):
    """(y, dx, dw, db) of ``fn(x, w, b, **conv_kwargs)``; dx is None when x needs no gradient."""
    x = x.detach().requires_grad_(input_grad)
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = fn(x, w, b, **conv_kwargs)
    leaves = [t for t in (x, w, b) if t is not None and t.requires_grad]
    got = dict(zip([id(t) for t in leaves], torch.autograd.grad(y, leaves, dy)))
    return y, got.get(id(x)), got[id(w)], got.get(id(b)) if b is not None else None


def torch_conv(relu):
    """F.conv2d (+ F.relu) with fastalex's keyword arguments."""
    def ref(x, w, b, **kwargs):
        y = F.conv2d(x, w, b, **kwargs)
        return F.relu(y) if relu else y

    return ref


def conv_reference(relu, x, w, b, conv_kwargs, dy, input_grad=True):
    """F.conv2d (+ F.relu) in float64 on the CPU, on the same values as the kernels saw."""
    def f64(t):
        return None if t is None else t.detach().to("cpu", torch.float64)

    return conv_grads(torch_conv(relu), f64(x), f64(w), f64(b), conv_kwargs, f64(dy), input_grad)


def check_conv(device, dtype, n, c, h, w, cout, k, stride=1, padding=0, groups=1, dilation=1,
               *, relu=True, bias=True, input_grad=True, x_layout=None, w_layout=None,
               b_layout=None, scale=1.0, tol=None):
    """Forward and every gradient of fastalex's conv against torch's in fp64; returns ours."""
    x, wt, b = conv_inputs(n, c, h, w, cout, k, groups, bias=bias)
    x = (x * scale).to(device, dtype)
    wt, b = wt.to(device, dtype), (b.to(device, dtype) if b is not None else None)
    if x_layout is not None:
        x = x_layout(x)
    if w_layout is not None:
        wt = w_layout(wt)
    if b_layout is not None and b is not None:
        b = b_layout(b)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out_shape = F.conv2d(x.to("meta"), wt.to("meta"), None, **kwargs).shape
    dy = torch.randn(out_shape, dtype=torch.float64).to(device, dtype)
    got = conv_grads(conv2d_relu if relu else conv2d, x, wt, b, kwargs, dy, input_grad)
    want = conv_reference(relu, x, wt, b, kwargs, dy, input_grad)
    tol = tol or tolerance(dtype)
    for name, g, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, want):
        if r is None:
            assert g is None, name
            continue
        assert g.dtype == dtype and g.shape == r.shape, name
        torch.testing.assert_close(g.cpu(), r.to(dtype), **tol, equal_nan=True, msg=name)
    y = got[0]
    assert y.is_contiguous(memory_format=CL) or y.numel() == 0
    return got


@contextlib.contextmanager
def tuner_configs(configs_by_tuner: dict):
    """Each Triton autotuner in ``configs_by_tuner`` choosing among its given configurations
    inside the block (kernels._runtime.pinned_configs for each)."""
    with contextlib.ExitStack() as stack:
        for tuner, configs in configs_by_tuner.items():
            stack.enter_context(pinned_configs(tuner, configs))
        yield
