"""Drop-in: ``fastalex.functional.linear`` has ``torch.nn.functional.linear``'s signature and
``fastalex.layers.Linear`` ``torch.nn.Linear``'s (``linear_relu`` / ``LinearReLU`` extend them);
every tensor argument may have any strides (transposed, sliced with NaN in the gaps, expanded,
zero-size) and gives torch's values, forward and backward; a randomized parity test draws
shapes, strides, dtypes and arguments; the PyTorch path returns the caller's dtype."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from helpers import tolerance
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fastalex import functional, layers
from fastalex.backend import reference_ops
from fastalex.ops._checks import FLOAT_DTYPES
from fastalex.ops.linear import linear, linear_relu

# --- signatures ----------------------------------------------------------------------------------


def _documented_signature(fn) -> inspect.Signature:
    """A builtin's signature from the first line of its docstring: ``name(args) -> Tensor``."""
    line = fn.__doc__.strip().splitlines()[0]
    params = line[line.index("(") + 1:line.rindex(")")]
    return inspect.signature(eval(f"lambda {params}: None"))  # noqa: S307 (torch's own text)


def test_functional_linear_has_torchs_signature():
    assert inspect.signature(functional.linear) == _documented_signature(F.linear)
    assert str(inspect.signature(functional.linear)) == "(input, weight, bias=None)"


def test_linear_relu_extends_it():
    params = list(inspect.signature(functional.linear_relu).parameters.values())
    assert params[:3] == list(_documented_signature(F.linear).parameters.values())
    assert [(p.name, p.default) for p in params[3:]] == [("p", 0.0), ("training", False)]


def test_layer_linear_has_torchs_signature():
    assert inspect.signature(layers.Linear) == inspect.signature(nn.Linear)


def test_layer_linear_relu_extends_it_with_keyword_only_p():
    ours = list(inspect.signature(layers.LinearReLU).parameters.values())
    theirs = list(inspect.signature(nn.Linear).parameters.values())
    assert [(p.name, p.default, p.kind) for p in ours[:-1]] == \
        [(p.name, p.default, p.kind) for p in theirs]
    assert (ours[-1].name, ours[-1].default, ours[-1].kind) == \
        ("p", 0.0, inspect.Parameter.KEYWORD_ONLY)


@pytest.mark.parametrize("cls", [layers.Linear, layers.LinearReLU])
def test_layers_take_torchs_arguments_positionally_and_explicitly(cls):
    positional = cls(6, 3, False, "cpu", torch.float64)
    ref = nn.Linear(6, 3, False, "cpu", torch.float64)
    assert positional.bias is None and positional.weight.dtype == torch.float64
    assert positional.state_dict().keys() == ref.state_dict().keys()
    explicit = cls(in_features=6, out_features=3, bias=True, device=None, dtype=None)
    assert explicit.state_dict().keys() == nn.Linear(6, 3).state_dict().keys()
    assert (explicit.in_features, explicit.out_features) == (6, 3)


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", True])
def test_linear_relu_rejects_p_at_construction(p):
    with pytest.raises(ValueError, match=r"\bp\b"):
        layers.LinearReLU(4, 3, p=p)


# --- any strides ---------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")


def _leaf(shape, layout, dtype, device, g):
    """(leaf, view): ``view(leaf)`` has ``shape`` in ``layout``; gradients reach the leaf.

    sliced: every other element of a twice-as-wide tensor whose gaps hold NaN, so a kernel that
    ignores a stride reads NaN. expanded: dim 0 broadcast from one row (stride 0)."""
    shape = tuple(shape)
    if layout == "expanded" and len(shape) >= 1:
        leaf = torch.randn((1, *shape[1:]), generator=g, dtype=torch.float64)
        return leaf.to(device, dtype).requires_grad_(), lambda t: t.expand(shape)
    if layout == "sliced" and len(shape) >= 1:
        wide = torch.full((*shape[:-1], 2 * shape[-1]), float("nan"), dtype=torch.float64)
        wide[..., ::2] = torch.randn(shape, generator=g, dtype=torch.float64)
        return wide.to(device, dtype).requires_grad_(), lambda t: t[..., ::2]
    if layout == "transposed" and len(shape) >= 2:
        flipped = torch.randn((*shape[:-2], shape[-1], shape[-2]), generator=g,
                              dtype=torch.float64)
        return flipped.to(device, dtype).requires_grad_(), lambda t: t.transpose(-1, -2)
    leaf = torch.randn(shape, generator=g, dtype=torch.float64)
    return leaf.to(device, dtype).requires_grad_(), lambda t: t


def _parity(device, dtype, batch, k, n, layouts, *, bias=True, relu=False, dy_layout="contiguous",
            seed=0):
    """fastalex against float64 torch, forward and the gradients of every leaf."""
    g = torch.Generator().manual_seed(seed)
    x_leaf, x_view = _leaf((*batch, k), layouts[0], dtype, device, g)
    w_leaf, w_view = _leaf((n, k), layouts[1], dtype, device, g)
    leaves, views = [x_leaf, w_leaf], [x_view, w_view]
    if bias:
        b_leaf, b_view = _leaf((n,), layouts[2], dtype, device, g)
        leaves.append(b_leaf)
        views.append(b_view)
    with torch.no_grad():  # the weight scaled so that outputs stay O(1) in fp16
        w_leaf.mul_(max(k, 1) ** -0.5)
    dy_leaf, dy_view = _leaf((*batch, n), dy_layout, dtype, device, g)
    dy = dy_view(dy_leaf.detach())

    def run(fn, tensors, dy):
        args = [view(t) for view, t in zip(views, tensors)]
        y = fn(*args) if len(args) == 3 else fn(*args, None)
        return y, torch.autograd.grad(y, tensors, dy, allow_unused=True)

    ours = linear_relu if relu else linear
    theirs = (lambda x, w, b: F.relu(F.linear(x, w, b))) if relu else F.linear
    y, grads = run(ours, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y_ref, grads_ref = run(theirs, ref_leaves, dy.double())
    tol = tolerance(dtype, **({"rtol": 2e-3, "atol": 2e-3} if dtype == torch.float16 else {}))
    assert y.dtype == dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y.double(), y_ref.to(dtype).double(), **tol)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.double(), want.to(dtype).double(), **tol)


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "linear_relu"])
def test_strided_bias_is_read_with_its_stride(device, relu):
    """bias = b[::2] of a larger parameter whose gaps hold NaN: no NaN may reach the output."""
    _parity(device, torch.float32, (5,), 12, 7, ("contiguous", "contiguous", "sliced"),
            relu=relu)


@pytest.mark.parametrize("argument", ["input", "weight", "bias", "grad"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_strides(device, argument, layout):
    layouts = ["contiguous"] * 3
    dy_layout = "contiguous"
    if argument == "grad":
        dy_layout = layout
    else:
        layouts[("input", "weight", "bias").index(argument)] = layout
    for relu in (False, True):
        _parity(device, torch.float32, (6,), 20, 9, layouts, relu=relu, dy_layout=dy_layout)


@pytest.mark.parametrize("shape", [(), (1,)], ids=str)
def test_broadcast_bias(device, shape):
    """A bias of shape () or (1,) broadcasts over the outputs, as in F.linear; its gradient is
    the sum over every output."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, generator=g).to(device)
    w = torch.randn(3, 6, generator=g).to(device)
    b = torch.randn(shape, generator=g).to(device).requires_grad_()
    y = linear_relu(x, w, b)
    (db,) = torch.autograd.grad(y.sum(), b)
    bb = b.detach().requires_grad_()
    y_ref = F.relu(F.linear(x, w, bb))
    (db_ref,) = torch.autograd.grad(y_ref.sum(), bb)
    torch.testing.assert_close(y, y_ref, **tolerance(torch.float32))
    torch.testing.assert_close(db, db_ref, **tolerance(torch.float32))
    assert db.shape == shape


@pytest.mark.parametrize("batch, k, n", [((0,), 8, 5), ((3, 0), 8, 5), ((4,), 0, 5),
                                         ((2, 3), 6, 1)], ids=str)
def test_zero_size_and_batched(device, batch, k, n):
    _parity(device, torch.float32, batch, k, n, ("sliced", "transposed", "sliced"), relu=True)


@pytest.mark.parametrize("layout", ["permuted-batch", "channels-last"])
def test_batched_inputs_that_no_view_flattens(device, layout):
    """A 3-D input with permuted batch dims, a 4-D channels-last one (the last dim, W, is not
    the contiguous one): the op copies them into a matrix, forward and backward as torch."""
    g = torch.Generator().manual_seed(1)
    if layout == "permuted-batch":
        x = torch.randn(4, 3, 10, generator=g).to(device).permute(1, 0, 2)
    else:
        x = torch.randn(2, 5, 3, 10, generator=g).to(device, memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(6, 10, generator=g).to(device).requires_grad_()
    dy = torch.randn(*x.shape[:-1], 6, generator=g).to(device)
    y = linear_relu(x, w)
    got = torch.autograd.grad(y, (x, w), dy)
    want = torch.autograd.grad(F.relu(F.linear(x, w)), (x, w), dy)
    torch.testing.assert_close(y, F.relu(F.linear(x, w)), **tolerance(torch.float32))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tolerance(torch.float32))


# --- randomized parity ---------------------------------------------------------------------------

@st.composite
def _cases(draw):
    batch = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=2)))  # () : 1-D input
    return dict(
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.float16])),
        batch=batch, k=draw(st.integers(0, 40)), n=draw(st.integers(1, 40)),
        layouts=tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(3)),
        dy_layout=draw(st.sampled_from(LAYOUTS)), bias=draw(st.booleans()),
        relu=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=30, deadline=None, derandomize=True)
@given(case=_cases())
def test_randomized_parity(case):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _parity(device, case.pop("dtype"), case.pop("batch"), case.pop("k"), case.pop("n"),
            case.pop("layouts"), **case)


# --- the PyTorch path ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_reference_path_keeps_the_callers_dtype(dtype):
    """Without Triton (CPU tensors without the interpreter, other devices) the ops run torch's
    own functions, which support every dtype fastalex accepts on the CPU."""
    with reference_ops():
        for relu in (False, True):
            _parity("cpu", dtype, (4,), 12, 5, ("contiguous", "transposed", "sliced"), relu=relu)
