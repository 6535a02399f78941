"""Fully-connected layers: ``linear`` and ``linear_relu`` (+ dropout) against F.linear /
F.relu(F.linear) / F.dropout(F.relu(F.linear)) with the dropout op's mask for the same seed,
forward and every gradient, reference in float64 on the same values. Split-K and single-pass
tilings, odd sizes, 3-D and strided inputs, empty batches, no bias, NaN, p=0/p=1, eval, fp64
gradcheck, autocast, errors and torch.compile; on CUDA also fc6/fc7/fc8 at batch 128 in fp32
(IEEE and TF32), fp16 and bf16."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from helpers import tolerance

from fastalex.kernels import linear as linear_kernels
from fastalex.kernels._runtime import INTERPRET, pinned_configs
from fastalex.kernels.dropout import dropout_forward
from fastalex.ops._rng import philox_seed
from fastalex.ops.linear import linear, linear_relu

CUDA = torch.cuda.is_available() and not INTERPRET
DTYPES = [torch.float32, torch.float16]  # bf16: the interpreter's tl.dot is unusable (CUDA below)


def _inputs(m, k, n, *, bias=True, seed=0):
    """fp64 CPU tensors: x ~ N(0, 1), w ~ N(0, 1/k), so outputs are O(1) whatever k is."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) / k**0.5
    b = torch.randn(n, generator=g, dtype=torch.float64) if bias else None
    return x, w, b


def _keep_mask(seed, m, n, p, device):
    """The dropout op's mask of a contiguous [m, n] tensor for ``seed`` (True = kept)."""
    ones = torch.ones(m, n, dtype=torch.float32, device=device)
    return dropout_forward(ones, seed, p) != 0


def _run(fn, x, w, b, dy, **kwargs):
    """(y, [grads of x, w, b]) of ``fn`` on leaf copies of the given tensors."""
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    xx, ww = leaves[0], leaves[1]
    bb = leaves[2] if b is not None else None
    y = fn(xx, ww, bb, **kwargs)
    return y, list(torch.autograd.grad(y, leaves, dy))


def _reference(x, w, b, dy, *, relu, keep=None, p=0.0, device="cpu"):
    """F.linear (+ F.relu, + dropout applying ``keep``) in float64 on ``device``."""
    def ref(x, w, b):
        y = F.linear(x, w, b)
        if relu:
            y = F.relu(y)
        if keep is not None:
            y = y * keep.to(y) / (1.0 - p)
        return y

    def f64(t):
        return None if t is None else t.detach().to(device, torch.float64)

    return _run(ref, f64(x), f64(w), f64(b), f64(dy))


def _compare(got, want, dtype, **override):
    y, grads = got
    y_ref, grads_ref = want
    tol = tolerance(dtype, **override)
    torch.testing.assert_close(y.cpu(), y_ref.to(dtype), **tol, equal_nan=True)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g.cpu(), r.to(dtype), **tol)


# Backward tolerances for fp16: dh = dy / (1 - p) is rounded to fp16 before the GEMMs read it (as
# torch's own fp16 dropout backward rounds it), a relative error up to 2^-11 per element that a
# cancelling sum can turn into more than tolerance(fp16)'s atol on small results.
_FP16_GRAD = dict(rtol=2e-3, atol=2e-3)


def _check(device, dtype, m, k, n, *, relu, p=0.0, training=False, bias=True, seed=0):
    x, w, b = _inputs(m, k, n, bias=bias, seed=seed)
    x, w = x.to(device, dtype), w.to(device, dtype)
    b = b.to(device, dtype) if bias else None
    dy = torch.randn(m, n, dtype=torch.float64).to(device, dtype)
    dropout = relu and training and p > 0
    keep = None
    if dropout:
        torch.manual_seed(1234)
        keep = _keep_mask(philox_seed(torch.device(device)), m, n, p, device).cpu()
        torch.manual_seed(1234)  # the op draws the same seed
    if relu:
        got = _run(linear_relu, x, w, b, dy, p=p, training=training)
    else:
        got = _run(linear, x, w, b, dy)
    want = _reference(x, w, b, dy, relu=relu, keep=keep, p=p)
    override = _FP16_GRAD if dtype == torch.float16 else {}
    _compare(got, want, dtype, **override)
    return got, keep


# --- parity --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_linear(device, dtype):
    _check(device, dtype, 5, 37, 29, relu=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_relu_eval(device, dtype):
    _check(device, dtype, 6, 45, 23, relu=True, p=0.5, training=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m, k, n, p", [
    (5, 37, 29, 0.5),     # one tile, one pass (no split)
    (3, 1100, 150, 0.3),  # split-K (fp32: 4 splits, fp16: 2) over two column tiles
])
def test_linear_relu_dropout_matches_the_dropout_op(device, dtype, m, k, n, p):
    (y, _), keep = _check(device, dtype, m, k, n, relu=True, p=p, training=True)
    assert not (y.cpu()[~keep] != 0).any()  # every unit the dropout op drops is exactly 0


def test_split_k_is_exercised():
    """The tilings correctness runs use (configs[0]) split the reductions the tests above
    split: both paths of the kernel are covered."""
    for dtype in DTYPES:
        cls = linear_kernels.operand_class(dtype)
        cfg = linear_kernels.CONFIGS[("fwd", cls)][0].kwargs
        split = linear_kernels.split_for(3, 150, 1100, cfg["BLOCK_M"], cfg["BLOCK_N"],
                                          cfg["BLOCK_K"], dtype.itemsize, 132, False)
        assert split > 1
        dgrad = linear_kernels.CONFIGS[("dgrad", cls)][0].kwargs
        assert linear_kernels.split_for(3, 1100, 150, dgrad["BLOCK_M"], dgrad["BLOCK_N"],
                                         dgrad["BLOCK_K"], dtype.itemsize, 132, False) == 1
        assert linear_kernels.split_for(3, 37, 29, cfg["BLOCK_M"], cfg["BLOCK_N"],
                                         cfg["BLOCK_K"], dtype.itemsize, 132, False) == 1


def test_backward_mask_is_the_regenerated_dropout_mask(device):
    """The backward masks dy with ``z > 0`` (z: the saved output) rather than regenerating the
    keep mask from the seed: z > 0 is exactly 'kept by the dropout op's mask and ReLU active'."""
    m, k, n, p = 7, 40, 33, 0.5
    x, w, b = (t.to(device, torch.float32) for t in _inputs(m, k, n))
    torch.manual_seed(99)
    keep = _keep_mask(philox_seed(torch.device(device)), m, n, p, device)
    torch.manual_seed(99)
    z = linear_relu(x, w, b, p=p, training=True)
    h = F.linear(x.double(), w.double(), b.double())
    clear = h.abs() > 1e-4  # away from ReLU's threshold, where fp32 rounding decides
    assert torch.equal((z > 0)[clear], (keep & (h > 0))[clear])
    # and the gradient is dy scaled where that mask is set, nothing else
    ww = w.detach().requires_grad_()
    torch.manual_seed(99)
    y = linear_relu(x, ww, b, p=p, training=True)
    (dw,) = torch.autograd.grad(y, ww, torch.ones_like(y))
    dh = (keep & (h > 0)).double() / (1 - p)
    torch.testing.assert_close(dw.double(), dh.t() @ x.double(), **tolerance(torch.float32))


def test_gradcheck_fp64_with_dropout(device):
    x, w, b = (t.to(device).requires_grad_() for t in _inputs(3, 6, 5))

    def f(x, w, b):
        torch.manual_seed(7)  # one seed, hence one mask, for every evaluation
        return linear_relu(x, w, b, p=0.3, training=True)

    # fast mode (random directions): each full Jacobian column is an interpreted launch
    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)


# --- shapes and layouts --------------------------------------------------------------------------

def test_3d_input_and_1d_input(device):
    x, w, b = (t.to(device, torch.float32) for t in _inputs(12, 19, 11))
    x3 = x.reshape(3, 4, 19)
    y = linear_relu(x3, w, b)
    assert y.shape == (3, 4, 11)
    torch.testing.assert_close(y.reshape(12, 11), F.relu(F.linear(x, w, b)))
    y1 = linear(x[0], w, b)
    assert y1.shape == (11,)
    torch.testing.assert_close(y1, F.linear(x[0], w, b))


@pytest.mark.parametrize("layout", ["transposed", "strided", "channels_last_flat", "weight_t"])
def test_non_contiguous_inputs(device, layout):
    x, w, b = _inputs(6, 24, 10)
    if layout == "transposed":
        x = x.t().contiguous().t()  # column-major: the batch dim is the contiguous one
    elif layout == "strided":
        x = torch.randn(6, 48, dtype=torch.float64)[:, ::2]  # no dim with stride 1
    elif layout == "channels_last_flat":
        x = torch.randn(6, 6, 2, 2, dtype=torch.float64).to(
            memory_format=torch.channels_last).flatten(1)  # a pool5 output, flattened
    else:
        w = w.t().contiguous().t()
    x, w, b = x.to(device, torch.float32), w.to(device, torch.float32), b.to(device, torch.float32)
    dy = torch.randn(6, 10, dtype=torch.float32, device=device)
    got = _run(linear_relu, x, w, b, dy)
    want = _reference(x, w, b, dy, relu=True)
    _compare(got, want, torch.float32)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_empty_batch(device, bias):
    x, w, b = (None if t is None else t.to(device) for t in _inputs(0, 8, 5, bias=bias))
    state = torch.get_rng_state()
    y, grads = _run(linear_relu, x, w, b, torch.zeros(0, 5, dtype=torch.float64, device=device),
                    p=0.5, training=True)
    assert y.shape == (0, 5)
    assert torch.equal(torch.get_rng_state(), state)  # nothing to drop: no seed drawn
    assert grads[0].shape == (0, 8)
    for g in grads[1:]:  # a sum over no rows
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("m, k, n", [(3, 0, 5), (3, 4, 0)], ids=["no-in-features",
                                                                   "no-out-features"])
def test_zero_features(device, m, k, n):
    x, w, b = (t.to(device, torch.float32) for t in _inputs(m, k, n))
    dy = torch.randn(m, n, device=device)
    got = _run(linear_relu, x, w, b, dy)
    _compare(got, _reference(x, w, b, dy, relu=True), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_bias(device, dtype):
    _check(device, dtype, 5, 21, 13, relu=True, bias=False)
    _check(device, dtype, 4, 30, 9, relu=True, p=0.5, training=True, bias=False)


def test_input_without_grad_skips_grad_input(device, monkeypatch):
    calls = []
    real = linear_kernels.linear_grad_input
    monkeypatch.setattr("fastalex.ops.linear._grad_input",
                        lambda *a: calls.append(1) or real(*a))
    x, w, b = (t.to(device, torch.float32) for t in _inputs(4, 8, 3))
    ww = w.requires_grad_()
    (dw,) = torch.autograd.grad(linear_relu(x, ww, b).sum(), ww)
    assert not calls
    torch.testing.assert_close(dw, ((F.linear(x, w, b) > 0).float()).t() @ x)


def test_frozen_weight_trained_bias(device):
    x, w, b = (t.to(device, torch.float32) for t in _inputs(5, 8, 3))
    bb = b.requires_grad_()
    dy = torch.randn(5, 3, device=device)
    (db,) = torch.autograd.grad(linear_relu(x, w, bb), bb, dy)
    torch.testing.assert_close(db, (dy * (F.linear(x, w, b) > 0)).sum(0))


# --- values: large, NaN, p, training -----------------------------------------------------------

def test_large_magnitudes(device):
    x, w, b = (t.to(device, torch.float32) for t in _inputs(4, 33, 6))
    x, b = x * 1e15, b * 1e16
    torch.testing.assert_close(linear_relu(x, w, b), F.relu(F.linear(x, w, b)))


def test_nan_propagates_like_torch(device):
    x, w, b = (t.to(device, torch.float32) for t in _inputs(4, 16, 6))
    x[1, 3] = float("nan")
    y = linear_relu(x, w, b)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[[0, 2, 3]]).any()  # as F.relu
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), equal_nan=True)
    torch.manual_seed(3)
    keep = _keep_mask(philox_seed(torch.device(device)), 4, 6, 0.5, device)
    torch.manual_seed(3)
    y = linear_relu(x, w, b, p=0.5, training=True)
    assert torch.equal(y[1] == 0, ~keep[1]) and torch.isnan(y[1][keep[1]]).all()  # dropped: 0


def test_p0_and_eval_draw_no_random_numbers(device):
    x, w, b = (t.to(device, torch.float32) for t in _inputs(4, 10, 6))
    ref = F.relu(F.linear(x, w, b))
    for p, training in [(0.0, True), (0.5, False), (1.0, False)]:
        state = torch.get_rng_state()
        torch.testing.assert_close(linear_relu(x, w, b, p=p, training=training), ref)
        assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("k", [12, 1100], ids=["one-pass", "split-k"])
def test_p1_gives_exact_zeros(device, k):
    x, w, b = (t.to(device, torch.float32).requires_grad_() for t in _inputs(3, k, 140))
    y = linear_relu(x, w, b, p=1.0, training=True)
    assert torch.equal(y, torch.zeros_like(y))
    for g in torch.autograd.grad(y, (x, w, b), torch.randn_like(y)):
        assert torch.equal(g, torch.zeros_like(g))


def test_reproducible_with_manual_seed(device):
    x, w, b = (t.to(device, torch.float32) for t in _inputs(8, 16, 32))
    torch.manual_seed(5)
    y1 = linear_relu(x, w, b, p=0.5, training=True)
    y2 = linear_relu(x, w, b, p=0.5, training=True)
    torch.manual_seed(5)
    assert torch.equal(linear_relu(x, w, b, p=0.5, training=True), y1)
    assert not torch.equal(y1, y2)  # consecutive calls draw different masks


def test_autocast(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float16  # interpreter: no bf16 dot
    x, w, b = (t.to(device, torch.float32) for t in _inputs(6, 20, 9))
    ww = w.detach().requires_grad_()
    with torch.autocast(device, dtype=dtype):
        y = linear_relu(x, ww, b)
    assert y.dtype == dtype
    ref = F.relu(F.linear(x.to(dtype).double(), w.to(dtype).double(), b.to(dtype).double()))
    torch.testing.assert_close(y.double(), ref.to(dtype).double(), **tolerance(dtype))
    (dw,) = torch.autograd.grad(y.float().sum(), ww)
    assert dw.dtype == torch.float32  # through the cast, as for F.linear under autocast


def test_tf32_switch_reaches_the_kernel(device, monkeypatch):
    seen = []
    real = linear_kernels.input_precision
    monkeypatch.setattr(linear_kernels, "input_precision",
                        lambda dtype, tf32: seen.append(real(dtype, tf32)) or seen[-1])
    x, w, b = (t.to(device, torch.float32) for t in _inputs(4, 8, 3))
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for allow in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = allow
            linear(x, w, b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert seen == ["ieee", "tf32"]


def test_layers_use_the_fused_op(device):
    from torch import nn

    from fastalex.layers import Linear, LinearReLU

    ref = nn.Linear(12, 7).to(device)
    fused = LinearReLU(12, 7, p=0.5).to(device)
    fused.load_state_dict(ref.state_dict())  # same parameter names and shapes
    plain = Linear(12, 7).to(device)
    plain.load_state_dict(ref.state_dict())
    x = torch.randn(5, 12, device=device)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref(x))
        fused.eval()
        torch.testing.assert_close(fused(x), F.relu(ref(x)))
        fused.train()
        torch.manual_seed(2)
        keep = _keep_mask(philox_seed(torch.device(device)), 5, 7, 0.5, device)
        torch.manual_seed(2)
        torch.testing.assert_close(fused(x), F.relu(ref(x)) * keep * 2.0)


# --- errors --------------------------------------------------------------------------------------

def _error_cases():
    w = torch.randn(5, 4)
    return [
        (dict(p=1.5), ValueError, "p"),
        (dict(p=-0.1), ValueError, "p"),
        (dict(p="0.5"), TypeError, "p"),
        (dict(training=1), TypeError, "training"),
        (dict(input=torch.randn(3, 6)), ValueError, "input"),
        (dict(input=torch.tensor(1.0)), ValueError, "input"),
        (dict(input=torch.randint(0, 3, (3, 4))), TypeError, "input"),
        (dict(weight=torch.randn(5, 4, 1)), ValueError, "weight"),
        (dict(weight=w.double()), TypeError, "weight"),
        (dict(weight=w.to("meta")), ValueError, "weight"),
        (dict(bias=torch.randn(4)), ValueError, "bias"),
        (dict(bias=torch.randn(5, 1)), ValueError, "bias"),
        (dict(bias=torch.randn(5, dtype=torch.float16)), TypeError, "bias"),
    ]


@pytest.mark.parametrize("kwargs, error, name", _error_cases(),
                         ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_errors_name_the_argument(device, kwargs, error, name):
    args = dict(input=torch.randn(3, 4), weight=torch.randn(5, 4), bias=torch.randn(5), p=0.5,
                training=True)
    args.update(kwargs)
    args = {k: v.to(device) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v
            for k, v in args.items()}
    state = torch.get_rng_state()
    with pytest.raises(error, match=rf"\b{name}\b"):
        linear_relu(**args)
    assert torch.equal(torch.get_rng_state(), state)  # raised before drawing a seed


# --- torch.compile -------------------------------------------------------------------------------

def test_compile_fullgraph(device):
    backend = "aot_eager" if device == "cpu" else "inductor"
    x, w, b = (t.to(device, torch.float32) for t in _inputs(6, 20, 9))

    def f(x, w, b, training):
        h = linear_relu(torch.sin(x), w, b, p=0.5, training=training)
        return linear(h, w[:, :9].contiguous(), b) * 2.0

    compiled = torch.compile(f, fullgraph=True, backend=backend)
    ref = F.linear(F.relu(F.linear(torch.sin(x), w, b)), w[:, :9], b) * 2.0
    torch.testing.assert_close(compiled(x, w, b, False), ref)
    # training: the mask and the backward through the compiled graph agree with themselves
    xx, ww = x.detach().requires_grad_(), w.detach().requires_grad_()
    g = torch.compile(lambda x, w, b: linear_relu(x, w, b, p=0.5, training=True),
                      fullgraph=True, backend=backend)
    y = g(xx, ww, b)
    kept = y.detach() != 0
    torch.testing.assert_close(y[kept], (2.0 * F.relu(F.linear(x, w, b)))[kept])
    dx, dw = torch.autograd.grad(y, (xx, ww), torch.ones_like(y))
    dh = kept.float() * 2.0
    torch.testing.assert_close(dx, dh @ w)
    torch.testing.assert_close(dw, dh.t() @ x)


# ---- CUDA only: AlexNet's fc layers at batch 128 ------------------------------------------------

FC_LAYERS = {"fc6": (9216, 4096, 0.5, 6), "fc7": (4096, 4096, 0.5, 7), "fc8": (4096, 1000, 0.0, 8)}
# (dtype, tf32) -> tolerance relative to the output's largest magnitude: K up to 9216 products
# summed in fp32, then one rounding; TF32 rounds each operand to 10 mantissa bits first.
FULL_PRECISIONS = {
    "fp32": (torch.float32, False, 1e-5),
    "tf32": (torch.float32, True, 5e-3),
    "fp16": (torch.float16, False, 4e-3),
    "bf16": (torch.bfloat16, False, 2e-2),
}


@pytest.mark.skipif(not CUDA, reason="needs CUDA (full fc shapes at batch 128)")
@pytest.mark.parametrize("tuning", ["default-config", "autotuned"])
@pytest.mark.parametrize("precision", list(FULL_PRECISIONS))
@pytest.mark.parametrize("layer", list(FC_LAYERS))
def test_alexnet_fc_layers_full_size(layer, precision, tuning):
    """fc6/fc7/fc8 forward and backward at batch 128 against float64 torch, with the default
    configurations and once with every configuration tuned as a GPU run does (the one that
    wins is the one the network will use)."""
    dtype = FULL_PRECISIONS[precision][0]
    kernels = [linear_kernels.GEMMS[(product, linear_kernels.operand_class(dtype))]
               for product in ("fwd", "dgrad", "wgrad")]
    with contextlib.ExitStack() as stack:
        if tuning == "autotuned":
            for kernel in kernels:
                stack.enter_context(pinned_configs(kernel, kernel.all_configs))
        _check_full_size(layer, precision)


def _check_full_size(layer, precision):
    k, n, p, seed = FC_LAYERS[layer]
    dtype, tf32, rel = FULL_PRECISIONS[precision]
    x, w, b = _inputs(128, k, n, seed=seed)
    x = F.relu(x)  # fc inputs are ReLU outputs
    x, w, b = (t.to("cuda", dtype) for t in (x, w, b))
    dy = torch.randn(128, n, device="cuda", dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        keep = None
        if p > 0:
            torch.manual_seed(11)
            keep = _keep_mask(philox_seed(torch.device("cuda")), 128, n, p, "cuda")
            torch.manual_seed(11)
            got = _run(linear_relu, x, w, b, dy, p=p, training=True)
        else:
            got = _run(linear, x, w, b, dy)
        # determinism: split-K sums its partials in a fixed order
        torch.manual_seed(11)
        again = _run(linear_relu, x, w, b, dy, p=p, training=True) if p > 0 else \
            _run(linear, x, w, b, dy)
        assert torch.equal(got[0], again[0]) and all(map(torch.equal, got[1], again[1]))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    want = _reference(x, w, b, dy, relu=p > 0, keep=keep, p=p, device="cuda")
    for g, r in zip([got[0]] + got[1], [want[0]] + want[1]):
        r = r.to(dtype).double()
        torch.testing.assert_close(g.double(), r, rtol=rel, atol=rel * r.abs().max().item())
