"""Drop-in parity of the convolution API with torch's: ``fastalex.functional.conv2d`` /
``conv2d_relu`` against ``F.conv2d``, ``fastalex.layers.Conv2d`` / ``Conv2dReLU`` against
``nn.Conv2d`` — signatures, attributes, state_dict, every padding and padding mode, dilation,
tensors of any strides, errors at construction, the PyTorch path's dtypes, and a randomized
parity test over all of it."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from conv_helpers import CL, conv_grads, torch_conv
from helpers import tolerance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fastalex import layers as L
from fastalex.backend import reference_ops
from fastalex.functional import conv2d, conv2d_relu


def _parameters(signature):
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def _documented_signature(fn):
    """The signature a builtin documents on its first docstring line (``F.conv2d`` has no
    introspectable one): ``conv2d(input, weight, bias=None, ...) -> Tensor``."""
    line = fn.__doc__.strip().splitlines()[0]
    params = line[line.index("(") + 1:line.rindex(")")]
    namespace = {}
    exec(f"def documented({params}): pass", namespace)
    return inspect.signature(namespace["documented"])


@pytest.mark.parametrize("fn", [conv2d, conv2d_relu])
def test_functional_signature_is_torchs(fn):
    assert _parameters(inspect.signature(fn)) == _parameters(_documented_signature(F.conv2d))


@pytest.mark.parametrize("layer", [L.Conv2d, L.Conv2dReLU])
def test_layer_signature_is_torchs(layer):
    assert _parameters(inspect.signature(layer)) == _parameters(inspect.signature(nn.Conv2d))


_LAYER_ARGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
         dilation=(1, 2), groups=2, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=4, padding="same", dilation=1),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding="valid", padding_mode="reflect"),
    dict(in_channels=2, out_channels=2, kernel_size=(2, 3), padding="same",
         padding_mode="circular"),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding=2, padding_mode="replicate",
         dtype=torch.float64),
]
_ATTRIBUTES = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
               "groups", "padding_mode", "transposed", "output_padding",
               "_reversed_padding_repeated_twice"]


@pytest.mark.parametrize("layer", [L.Conv2d, L.Conv2dReLU])
@pytest.mark.parametrize("kwargs", _LAYER_ARGS)
def test_layer_attributes_and_state_dict_are_torchs(layer, kwargs):
    ours, theirs = layer(**kwargs), nn.Conv2d(**kwargs)
    for name in _ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]
    state = theirs.state_dict()
    assert {k: (v.shape, v.dtype) for k, v in ours.state_dict().items()} == \
        {k: (v.shape, v.dtype) for k, v in state.items()}
    ours.load_state_dict(state)
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in state.items())


def test_positional_arguments_are_torchs_order():
    ours = L.Conv2d(4, 4, 3, 1, 0, 2)  # the sixth positional argument is dilation
    assert ours.dilation == (2, 2) and ours.groups == 1
    explicit = L.Conv2dReLU(4, 6, 3, 1, 0, 1, 2, True, "zeros", None, None)
    assert explicit.groups == 2 and explicit.bias is not None


_BAD_LAYERS = [
    ("padding", dict(padding="same", stride=2)),  # as torch: stride 1 only
    ("padding", dict(padding="full")),
    ("padding", dict(padding=-1)),
    ("padding_mode", dict(padding_mode="mirror")),
    ("stride", dict(stride=0)),
    ("dilation", dict(dilation=(1, 0))),
    ("kernel_size", dict(kernel_size=0)),
    ("in_channels", dict(in_channels=0)),
    ("out_channels", dict(out_channels=0)),
    ("groups", dict(groups=0)),
    ("groups", dict(groups=3)),  # divides neither 4 inputs nor 6 outputs
    ("dtype", dict(dtype=torch.complex64)),
    ("dtype", dict(dtype=torch.int32)),
]


@pytest.mark.parametrize("layer", [L.Conv2d, L.Conv2dReLU])
@pytest.mark.parametrize("name, override", _BAD_LAYERS)
def test_layer_refuses_at_construction(layer, name, override):
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=3)
    kwargs.update(override)
    with pytest.raises(ValueError, match=name):
        layer(**kwargs)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding, dilation", [(1, 1), ((2, 1), (1, 2)), ("same", 2),
                                               ("same", 1)], ids=["p1", "p2x1-d1x2", "same-d2",
                                                                  "same-even"])
def test_layer_matches_torch(device, padding_mode, padding, dilation, relu):
    kernel = 2 if (padding, dilation) == ("same", 1) else 3  # an even kernel pads asymmetrically
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=kernel, padding=padding,
                  dilation=dilation, groups=2, padding_mode=padding_mode, dtype=torch.float64)
    theirs = nn.Conv2d(**kwargs)
    ours = (L.Conv2dReLU if relu else L.Conv2d)(**kwargs)
    ours.load_state_dict(theirs.state_dict())
    ours.to(device)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    x_ours = x.to(device).requires_grad_()
    x_ref = x.clone().requires_grad_()
    y, y_ref = ours(x_ours), theirs(x_ref)
    y_ref = F.relu(y_ref) if relu else y_ref
    dy = torch.randn_like(y_ref)
    got = torch.autograd.grad(y, (x_ours, ours.weight, ours.bias), dy.to(device))
    want = torch.autograd.grad(y_ref, (x_ref, theirs.weight, theirs.bias), dy)
    torch.testing.assert_close(y.cpu(), y_ref, **tolerance(torch.float64))
    for g, r in zip(got, want):
        torch.testing.assert_close(g.cpu(), r, **tolerance(torch.float64))


def test_explicit_defaults_are_accepted(device):
    x, w = torch.randn(1, 4, 6, 6, device=device), torch.randn(4, 2, 3, 3, device=device)
    want = F.conv2d(x.cpu(), w.cpu(), None, 1, 0, 1, 2)
    torch.testing.assert_close(conv2d(x, w, None, 1, 0, 1, 2).cpu(), want,
                               **tolerance(torch.float32))
    torch.testing.assert_close(conv2d(x, w, None, (1,), [0, 0], (1, 1), 2).cpu(), want,
                               **tolerance(torch.float32))


def _strided_bias(b):
    """``b``'s values as every other element of a NaN-filled buffer (a slice of a larger
    parameter, as ``bias=b[::2]``)."""
    base = torch.full((2 * b.numel(),), float("nan"), dtype=b.dtype, device=b.device)
    base[::2] = b
    return base[::2]


_STRIDED = {
    "bias-slice": dict(b=_strided_bias),
    "bias-expanded": dict(b=lambda b: b[:1].expand(b.shape)),
    "weight-expanded": dict(w=lambda w: w[:1].expand(w.shape)),
    "weight-permuted": dict(w=lambda w: w.transpose(0, 1).contiguous().transpose(0, 1)),
    "input-expanded": dict(x=lambda x: x[:1].expand(x.shape)),
    "input-channels-last-sliced": dict(
        x=lambda x: torch.cat([x, x], 3).contiguous(memory_format=CL)[..., ::2]),
    "input-zero-batch": dict(x=lambda x: x[:0]),
}


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", list(_STRIDED))
def test_any_strides(device, case, relu):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 7, 6, generator=g, dtype=torch.float64).to(device)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(6, generator=g, dtype=torch.float64).to(device)
    layout = _STRIDED[case]
    x, w, b = (layout.get(k, lambda t: t)(t) for k, t in (("x", x), ("w", w), ("b", b)))
    kwargs = dict(stride=1, padding=1, dilation=(1, 2), groups=2)
    dy = torch.randn(F.conv2d(x.to("meta"), w.to("meta"), None, **kwargs).shape,
                     dtype=torch.float64)
    # leaves are the tensors as passed, strides included; the reference gets dense copies
    got = conv_grads(conv2d_relu if relu else conv2d, x, w, b, kwargs, dy.to(device))
    dense = [t.detach().cpu().clone() for t in (x, w, b)]
    want = conv_grads(torch_conv(relu), *dense, kwargs, dy)
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, want):
        assert not a.isnan().any(), name
        torch.testing.assert_close(a.cpu(), r, **tolerance(torch.float64), msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32,
                                   torch.float64])
def test_pytorch_path_keeps_the_dtype(dtype):
    """Without Triton (CPU, no interpreter) the op is torch's own, in the caller's dtype."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64)
    w = torch.randn(6, 2, 2, 3, generator=g, dtype=torch.float64) / 3
    b = torch.randn(6, generator=g, dtype=torch.float64)
    args = [t.to(dtype).requires_grad_() for t in (x, w, b)]
    with reference_ops():
        y = conv2d_relu(*args, padding="same", dilation=(2, 1), groups=2)
    assert y.dtype == dtype
    grads = torch.autograd.grad(y, args, torch.ones_like(y))
    assert all(gr.dtype == dtype for gr in grads)
    ref = F.relu(F.conv2d(*(t.detach().double() for t in args), padding="same",
                          dilation=(2, 1), groups=2))
    tol = tolerance(dtype, atol=tolerance(dtype)["rtol"] * 10)  # torch's own low-precision sums
    torch.testing.assert_close(y.double(), ref, **tol)


# ---- randomized parity ------------------------------------------------------------------------

_X_LAYOUTS = {
    "contiguous": lambda t: t.contiguous(),
    "channels-last": lambda t: t.contiguous(memory_format=CL) if t.dim() == 4 else
    t.permute(1, 2, 0).contiguous().permute(2, 0, 1),
    "sliced": lambda t: torch.cat([t, t], dim=-1)[..., ::2],
    "expanded": lambda t: t[:1].expand(t.shape),
}
_W_LAYOUTS = {
    "contiguous": lambda t: t,
    "channels-last": lambda t: t.contiguous(memory_format=CL),
    "transposed": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
    "expanded": lambda t: t[:1].expand(t.shape),
}
_B_LAYOUTS = {
    "none": lambda t: None,
    "contiguous": lambda t: t,
    "slice": _strided_bias,
    "expanded": lambda t: t[:1].expand(t.shape),
}


@st.composite
def _convolutions(draw):
    groups = draw(st.sampled_from([1, 2]))
    cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["same", "valid", "int", "pair"]))
    stride = (1, 1) if kind == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = {"same": st.just("same"), "valid": st.just("valid"), "int": st.integers(0, 2),
               "pair": st.tuples(st.integers(0, 2), st.integers(0, 2))}[kind]
    padding = draw(padding)
    pad = {"valid": (0, 0), "same": (0, 0)}.get(padding, padding)
    pad = (pad, pad) if isinstance(pad, int) else pad
    spans = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    h = draw(st.integers(max(1, spans[0] - 2 * pad[0]), spans[0] + 4))
    w = draw(st.integers(max(1, spans[1] - 2 * pad[1]), spans[1] + 4))
    batch = draw(st.sampled_from([None, 0, 1, 2]))  # None: unbatched [C, H, W]
    return dict(
        shape=(groups * cin_g, h, w) if batch is None else (batch, groups * cin_g, h, w),
        weight_shape=(groups * cout_g, cin_g, kh, kw),
        kwargs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.float16])),
        x_layout=draw(st.sampled_from(sorted(_X_LAYOUTS))),
        w_layout=draw(st.sampled_from(sorted(_W_LAYOUTS))),
        b_layout=draw(st.sampled_from(sorted(_B_LAYOUTS))),
        relu=draw(st.booleans()),
        input_grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_convolutions())
def test_randomized_parity(device, case):
    g = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["shape"], generator=g, dtype=torch.float64)
    w = torch.randn(case["weight_shape"], generator=g, dtype=torch.float64) / 2
    b = torch.randn(case["weight_shape"][0], generator=g, dtype=torch.float64)
    dtype = case["dtype"]
    x = _X_LAYOUTS[case["x_layout"]](x.to(device, dtype))
    w = _W_LAYOUTS[case["w_layout"]](w.to(device, dtype))
    b = _B_LAYOUTS[case["b_layout"]](b.to(device, dtype))
    kwargs = case["kwargs"]
    out = F.conv2d(x.to("meta"), w.to("meta"), None, **kwargs)
    dy = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device, dtype)
    got = conv_grads(conv2d_relu if case["relu"] else conv2d, x, w, b, kwargs, dy,
                     case["input_grad"])
    dense = [None if t is None else t.detach().cpu().double() for t in (x, w, b)]
    want = conv_grads(torch_conv(case["relu"]), *dense, kwargs, dy.cpu().double(),
                      case["input_grad"])
    for name, a, r in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, want):
        if r is None:
            assert a is None, name
            continue
        assert a.dtype == dtype and a.shape == r.shape, name
        torch.testing.assert_close(a.cpu(), r.to(dtype), **tolerance(dtype), msg=name)
