"""Convolution (+ bias + ReLU): forward and every gradient against F.conv2d / F.relu(F.conv2d)
computed in float64 on the same values, for AlexNet's five layer geometries (reduced), odd
sizes, strides 1-4, padding 0-2, groups 1/2/4, both K-walk modes of the kernels, layouts, empty
batches, NaN, autocast, TF32 plumbing, errors and torch.compile; on CUDA also AlexNet's real
shapes at batch 128 in fp32 (IEEE and TF32), fp16 and bf16."""

import pytest
import torch
import triton
import torch.nn.functional as F
from conv_helpers import CL, check_conv, conv_grads, conv_inputs, tuner_configs
from helpers import tolerance

from fastalex.kernels import conv as conv_kernels
from fastalex.kernels._runtime import INTERPRET
from fastalex.ops import conv as conv_ops
from fastalex.ops.conv import conv2d, conv2d_relu

CUDA = torch.cuda.is_available() and not INTERPRET


@pytest.fixture(autouse=True)
def _ieee_fp32(monkeypatch):
    """fp32 tests compare with fp32 tolerances: keep TF32 off (torch's default for convs is
    on); the tests about TF32 switch it themselves."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


# AlexNet's five layers with batch, spatial size and channels cut down for the interpreter;
# the channel counts still hit each K-walk mode the real layer takes (conv1: RGB padded to 4
# channels, flat K; conv2: 16-channel tap tiles; conv3: wide tap tiles; conv4/5: flat K with
# 8-wide vectors, as grad-weight takes for conv1/conv2 on the GPU).
ALEXNET_REDUCED = {
    "conv1": dict(n=2, c=3, h=23, w=23, cout=16, k=11, stride=4, padding=0, groups=1),
    "conv2": dict(n=2, c=32, h=9, w=9, cout=32, k=5, stride=1, padding=2, groups=2),
    "conv3": dict(n=2, c=32, h=7, w=7, cout=48, k=3, stride=1, padding=1, groups=1),
    "conv4": dict(n=2, c=48, h=7, w=7, cout=48, k=3, stride=1, padding=1, groups=2),
    "conv5": dict(n=2, c=48, h=7, w=7, cout=32, k=3, stride=1, padding=1, groups=2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layer", list(ALEXNET_REDUCED))
def test_alexnet_layers_reduced(device, layer, dtype):
    # conv1's input is the image: no grad-input there, as in training.
    check_conv(device, dtype, **ALEXNET_REDUCED[layer], input_grad=layer != "conv1")


@pytest.mark.skipif(not CUDA, reason="needs CUDA (the interpreter's bf16 tl.dot is unusable)")
@pytest.mark.parametrize("layer", list(ALEXNET_REDUCED))
def test_alexnet_layers_reduced_bf16(layer):
    check_conv("cuda", torch.bfloat16, **ALEXNET_REDUCED[layer])


GEOMETRIES = [
    # n, c, h, w, cout, k, stride, padding, groups, relu, bias
    pytest.param(3, 5, 9, 7, 6, 3, 1, 0, 1, True, True, id="odd-hw-c5"),
    pytest.param(2, 4, 10, 11, 8, (3, 2), 2, 1, 2, True, False, id="rect-kernel-s2-p1-g2"),
    pytest.param(2, 8, 11, 9, 12, 3, 3, 2, 4, False, True, id="s3-p2-g4-no-relu"),
    pytest.param(1, 6, 13, 13, 4, 5, 4, 1, 2, True, True, id="s4-p1-g2-rgb-groups"),
    pytest.param(2, 6, 9, 10, 6, 3, (2, 1), (0, 2), 1, True, True, id="s2x1-p0x2"),
    pytest.param(2, 16, 5, 5, 8, 1, 1, 0, 1, True, False, id="1x1"),
    pytest.param(2, 4, 3, 3, 4, 5, 1, 1, 1, True, True, id="kernel-fills-padded-input"),
    pytest.param(2, 64, 5, 5, 16, 3, 1, 1, 1, True, True, id="64-channels"),
    pytest.param(2, 3, 11, 10, 8, 5, 2, 1, 1, True, True, id="rgb-with-grad-input"),
]


@pytest.mark.parametrize("n, c, h, w, cout, k, stride, padding, groups, relu, bias", GEOMETRIES)
def test_geometry(device, n, c, h, w, cout, k, stride, padding, groups, relu, bias):
    check_conv(device, torch.float32, n, c, h, w, cout, k, stride, padding, groups, relu=relu,
           bias=bias)


DILATED_AND_STRING_PADDING = [
    # n, c, h, w, cout, k, stride, padding, dilation, groups, input_grad
    pytest.param(2, 4, 9, 10, 6, 3, 1, 2, 2, 2, True, id="d2-p2-g2"),
    pytest.param(2, 6, 13, 11, 4, (3, 2), 2, (1, 0), (2, 3), 1, True, id="d2x3-s2-p1x0"),
    pytest.param(2, 4, 7, 8, 6, 4, 1, "same", 1, 2, True, id="same-even-kernel"),
    pytest.param(1, 6, 9, 8, 6, (2, 3), 1, "same", (3, 2), 2, True, id="same-asymmetric-d3x2"),
    pytest.param(2, 4, 7, 6, 4, (3, 2), 1, "valid", 2, 1, True, id="valid-d2"),
    pytest.param(1, 64, 6, 6, 8, 3, 1, "same", 2, 1, True, id="same-d2-tap-tiles"),
    pytest.param(2, 3, 15, 14, 8, 3, 2, 1, 3, 1, False, id="rgb-d3-relu-in-grad-weight"),
]


@pytest.mark.parametrize("n, c, h, w, cout, k, stride, padding, dilation, groups, input_grad",
                         DILATED_AND_STRING_PADDING)
def test_dilation_and_string_padding(device, n, c, h, w, cout, k, stride, padding, dilation,
                                     groups, input_grad):
    check_conv(device, torch.float32, n, c, h, w, cout, k, stride, padding, groups, dilation,
               input_grad=input_grad)


def test_float64_exact(device):
    check_conv(device, torch.float64, 2, 8, 7, 6, 8, 3, 2, 1, 2)


def test_gradcheck_float64(device):
    x, w, b = conv_inputs(2, 4, 5, 6, 4, 3, 2)
    # keep pre-activations away from ReLU's kink, where finite differences are meaningless
    b = b + torch.where(b >= 0, 1.0, -1.0)
    x, w, b = (t.to(device).requires_grad_() for t in (x, w, b))
    # fast mode (random projections of the Jacobian): each interpreted launch costs ~0.1 s
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d_relu(x, w, b, 2, 1, groups=2), (x, w, b),
                                    fast_mode=True)


LAYOUTS = {
    "channels-last": lambda t: t.contiguous(memory_format=CL),
    "sliced": lambda t: torch.cat([t, t], dim=3)[:, :, :, ::2],  # every stride odd
    "nhwc-view": lambda t: t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_input_layouts(device, layout):
    check_conv(device, torch.float32, 2, 6, 7, 8, 8, 3, 1, 1, 2, x_layout=LAYOUTS[layout])


@pytest.mark.parametrize("w_layout", ["channels-last", "transposed"])
def test_weight_layouts(device, w_layout):
    to = {"channels-last": LAYOUTS["channels-last"], "transposed": lambda t: t.transpose(2, 3)}
    x, w, b = conv_inputs(2, 16, 6, 6, 8, 3, 1)
    x, w, b = x.float().to(device), to[w_layout](w.float().to(device)), b.float().to(device)
    w.requires_grad_()
    (dw,) = torch.autograd.grad(conv2d_relu(x, w, b, 1, 1), w,
                                torch.ones(2, 8, 6, 6, device=device))
    # a channels-last weight gets a channels-last gradient (what AccumulateGrad keeps without
    # a copy); any other weight a contiguous one
    want = CL if w_layout == "channels-last" else torch.contiguous_format
    assert dw.is_contiguous(memory_format=want)
    check_conv(device, torch.float32, 2, 16, 6, 6, 8, 3, 1, 1, w_layout=to[w_layout])


def test_no_grad_input_skips_the_kernel(device, monkeypatch):
    def fail(*args):
        raise AssertionError("grad-input computed for an input that needs none")

    monkeypatch.setattr(conv_ops, "_input_grad", fail)
    check_conv(device, torch.float32, 2, 8, 7, 7, 8, 3, 1, 1, 2, input_grad=False)


def test_weight_grad_splits_are_deterministic(device):
    # M = 2*7*7 rows make several slices even under the interpreter (wgrad_slice_rows)
    rows = conv_kernels.wgrad_slice_rows(98, 16, 144, 1, 4, torch.device(device))
    if INTERPRET:
        assert triton.cdiv(98, rows) > 1
    x, w, b = conv_inputs(2, 16, 7, 7, 16, 3, 1)
    x, w, b = x.float().to(device), w.float().to(device), b.float().to(device)
    x_cl = x.contiguous(memory_format=CL)
    geometry = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    y = conv_kernels.conv2d_forward(x_cl, w.permute(0, 2, 3, 1).contiguous(), b, *geometry,
                                    True, False)
    dy = torch.randn_like(y)
    runs = [conv_kernels.conv2d_weight_grad(dy, y, x_cl, list(w.shape), *geometry, True, True,
                                            False, False) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_weight_grad_split_ignores_the_configuration(device):
    """The slices, the partial buffer and the reduce depend on the shape alone: every
    grad-weight configuration gives the same result, and no launcher reads ``best_config``."""
    x, w, b = conv_inputs(2, 8, 9, 9, 8, 3, 1)
    x, w, b = x.float().to(device), w.float().to(device), b.float().to(device)
    tuner = conv_kernels.TUNERS["weight_grad"][4]
    seen = []
    for config in conv_kernels.CONFIGS["weight_grad"][4]:
        with tuner_configs({tuner: [config]}):
            tuner.best_config = None  # a launcher reading it would fail
            w_ = w.detach().requires_grad_()
            y = conv2d_relu(x, w_, b, 1, 1)
            (dw,) = torch.autograd.grad(y, w_, torch.ones_like(y))
            seen.append(dw)
    for dw in seen[1:]:
        torch.testing.assert_close(dw, seen[0], **tolerance(torch.float32))


def test_empty_batch(device):
    x = torch.randn(0, 4, 7, 7, device=device, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    y = conv2d_relu(x, w, b, 2, 1, groups=2)
    assert y.shape == (0, 6, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_unbatched_input(device):
    x, w, b = (t.float().to(device) for t in conv_inputs(1, 4, 6, 5, 6, 3, 2))
    y = conv2d_relu(x[0], w, b, 1, 1, groups=2)
    torch.testing.assert_close(y, F.relu(F.conv2d(x[0], w, b, 1, 1, 1, 2)),
                               **tolerance(torch.float32))


def test_large_magnitudes(device):
    check_conv(device, torch.float32, 2, 6, 7, 7, 8, 3, 1, 1, 2, scale=1e4,
               tol=tolerance(torch.float32, atol=1e-5 * 1e4))  # atol scales with the data


def test_nan_and_inf_propagate(device):
    # RGB input: also checks that the zero channel added for the kernels meets no Inf
    x, w, b = (t.float() for t in conv_inputs(1, 3, 6, 6, 4, 3, 1))
    x[0, 1, 2, 3] = float("nan")
    x[0, 2, 5, 0] = float("inf")
    got = conv2d_relu(x.to(device), w.to(device), b.to(device), 1, 1).cpu()
    want = F.relu(F.conv2d(x.double(), w.double(), b.double(), 1, 1)).float()
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    torch.testing.assert_close(got, want, **tolerance(torch.float32), equal_nan=True)


def test_autocast(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    x, w, b = (t.float().to(device) for t in conv_inputs(2, 8, 7, 7, 8, 3, 2))
    w.requires_grad_()
    with torch.autocast(device, dtype=dtype):
        y = conv2d_relu(x, w, b, 1, 1, groups=2)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32
    want = F.relu(F.conv2d(x.to(dtype).double(), w.detach().to(dtype).double(),
                           b.to(dtype).double(), 1, 1, 1, 2))
    torch.testing.assert_close(y.double(), want.to(dtype).double(), **tolerance(dtype))


@pytest.mark.parametrize("allow", [True, False])
def test_fp32_follows_cudnn_tf32_switch(device, monkeypatch, allow):
    seen = []
    launcher = conv_ops._forward

    def spy(*args):
        seen.append(args[-1])
        return launcher(*args)

    monkeypatch.setattr(conv_ops, "_forward", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow)
    x, w, b = (t.float().to(device) for t in conv_inputs(1, 4, 5, 5, 4, 3, 1))
    conv2d(x, w, b, 1, 1)
    assert seen == [allow]
    assert conv_kernels.input_precision(torch.float32, allow) == ("tf32" if allow else "ieee")
    assert conv_kernels.input_precision(torch.float16, True) == "ieee"


def _error_cases():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(6, 2, 3, 3)
    return [
        ("input", dict(input=torch.randn(4, 8)), ValueError),
        ("input", dict(input=x.to(torch.int64)), TypeError),
        ("input", dict(input=[1.0]), TypeError),
        ("weight", dict(weight=torch.randn(6, 2, 3)), ValueError),
        ("weight", dict(weight=w.double()), TypeError),
        ("input", dict(weight=torch.randn(6, 3, 3, 3)), ValueError),  # 4 != 3 * 2 channels
        ("groups", dict(groups=3), ValueError),  # does not divide 4 input channels
        ("groups", dict(weight=torch.randn(6, 1, 3, 3), groups=4), ValueError),  # nor 6 outputs
        ("groups", dict(groups=0), ValueError),
        ("groups", dict(groups=2.0), TypeError),
        ("bias", dict(bias=torch.randn(5)), ValueError),
        ("bias", dict(bias=torch.randn(6, 1)), ValueError),
        ("bias", dict(bias=torch.randn(6).double()), TypeError),
        ("weight", dict(input=torch.randn(2, 4, 2, 8), padding=0), ValueError),  # 3x3 > 2x8
        ("weight", dict(weight=torch.randn(6, 2, 11, 3), padding=(1, 4)), ValueError),  # 11 > 10
        ("stride", dict(stride=0), ValueError),
        ("stride", dict(stride=(1, 2, 3)), ValueError),
        ("padding", dict(padding=-1), ValueError),
        ("padding", dict(padding="full"), ValueError),
        ("padding", dict(padding=(1, 2, 3)), ValueError),
        ("padding", dict(padding=1.0), TypeError),
        ("padding", dict(padding="same", stride=2), ValueError),  # as torch: stride 1 only
        ("dilation", dict(dilation=0), ValueError),
        ("dilation", dict(dilation=(1, 2, 3)), ValueError),
        ("dilation", dict(dilation=1.5), TypeError),
        ("weight", dict(dilation=5), ValueError),  # spans 11 > the padded 10
        ("weight", dict(weight=torch.randn(0, 2, 3, 3)), ValueError),
        ("stride", dict(stride=True), TypeError),
    ]


@pytest.mark.parametrize("fn", [conv2d, conv2d_relu])
@pytest.mark.parametrize("name, override, error", _error_cases())
def test_errors_name_the_argument(device, fn, name, override, error, monkeypatch):
    def fail(*args):
        raise AssertionError("a kernel ran before validation")

    monkeypatch.setattr(conv_ops, "_forward", fail)
    args = dict(input=torch.randn(2, 4, 8, 8), weight=torch.randn(6, 2, 3, 3), bias=None,
                stride=1, padding=1, groups=2)
    args.update(override)
    args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(error, match=name):
        fn(**args)


@pytest.mark.skipif(not CUDA, reason="needs CUDA for a second device")
def test_device_mismatch_names_the_argument():
    with pytest.raises(ValueError, match="weight"):
        conv2d(torch.randn(1, 2, 5, 5, device="cuda"), torch.randn(2, 2, 3, 3))


def test_torch_compile_fullgraph(device):
    backend = "inductor" if device == "cuda" else "aot_eager"

    def block(x, w, b):
        return conv2d_relu(x, w, b, 1, 1, groups=2).square().sum()

    x, w, b = (t.float().to(device).requires_grad_() for t in conv_inputs(2, 8, 6, 7, 8, 3, 2))
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(block(x, w, b), (x, w, b))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, **tolerance(torch.float32, atol=1e-4))


# ---- CUDA only: AlexNet's real layers at batch 128 -------------------------------------------

ALEXNET = {
    "conv1": dict(c=3, h=227, cout=96, k=11, stride=4, padding=0, groups=1),
    "conv2": dict(c=96, h=27, cout=256, k=5, stride=1, padding=2, groups=2),
    "conv3": dict(c=256, h=13, cout=384, k=3, stride=1, padding=1, groups=1),
    "conv4": dict(c=384, h=13, cout=384, k=3, stride=1, padding=1, groups=2),
    "conv5": dict(c=384, h=13, cout=256, k=3, stride=1, padding=1, groups=2),
}
# Largest error allowed, relative to the largest reference value, per precision:
# - fp32 IEEE: only fp32 accumulation-order differences (~1e-6; sums over up to 387,200 rows
#   for grad-weight); 5e-5 is still 20x below what TF32 gives, so it proves IEEE was pinned.
# - TF32: inputs rounded to 10-bit mantissas (2^-11 relative each), errors ~1e-3 of the output
#   scale, so 5e-3.
# - fp16 / bf16: the reference sees the same rounded inputs, so the error is fp32 accumulation
#   plus one final rounding: 2^-11 (fp16) and 2^-8 (bf16) relative, with 4x headroom.
PRECISIONS = {
    "fp32-ieee": (torch.float32, False, 5e-5),
    "tf32": (torch.float32, True, 5e-3),
    "fp16": (torch.float16, False, 2e-3),
    "bf16": (torch.bfloat16, False, 1.6e-2),
}


def _all_configurations(dtype):
    """Every convolution autotuner of ``dtype``'s width over its whole list (tuned afresh)."""
    size = torch.empty((), dtype=dtype).element_size()
    return tuner_configs({conv_kernels.TUNERS[kind][size]: configs[size]
                          for kind, configs in conv_kernels.CONFIGS.items()})


@pytest.mark.skipif(not CUDA, reason="needs CUDA (full AlexNet shapes at batch 128)")
@pytest.mark.parametrize("tuning", ["default-config", "autotuned"])
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("layer", list(ALEXNET))
def test_alexnet_full_size(layer, precision, tuning, monkeypatch):
    """The default configuration, and whichever configuration the autotuner picks here."""
    dtype, tf32, rel = PRECISIONS[precision]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    if tuning == "autotuned":
        with _all_configurations(dtype):
            _check_full_size(layer, precision)
    else:
        _check_full_size(layer, precision)


def _check_full_size(layer, precision):
    dtype, _, rel = PRECISIONS[precision]
    p = ALEXNET[layer]
    x, w, b = conv_inputs(128, p["c"], p["h"], p["h"], p["cout"], p["k"], p["groups"])
    x, w, b = (t.to("cuda", dtype) for t in (x, w, b))
    kwargs = dict(stride=p["stride"], padding=p["padding"], groups=p["groups"])
    input_grad = layer != "conv1"
    dy = torch.randn(F.conv2d(x.to("meta"), w.to("meta"), None, **kwargs).shape,
                     device="cuda", dtype=dtype)
    y, dx, dw, db = conv_grads(conv2d_relu, x, w, b, kwargs, dy, input_grad)

    # Reference in fp64 on the GPU. Gradients use the mask from our own output: over millions
    # of outputs a few pre-activations lie within rounding of 0 and may flip sign, which would
    # compare two correct answers to different masks.
    x64, w64, b64 = (t.double() for t in (x, w, b))
    y_ref = F.relu(F.conv2d(x64, w64, b64, **kwargs))
    dy_masked = torch.where(y > 0, dy, torch.zeros_like(dy)).double()
    _, dx_ref, dw_ref, db_ref = conv_grads(F.conv2d, x64, w64, b64, kwargs, dy_masked, input_grad)
    for name, got, ref in (("output", y, y_ref), ("grad_input", dx, dx_ref),
                           ("grad_weight", dw, dw_ref), ("grad_bias", db, db_ref)):
        if ref is None:
            assert got is None
            continue
        err = (got.double() - ref).abs().max().item() / ref.abs().max().item()
        assert err <= rel, f"{layer} {precision} {name}: max error {err:.2e} of max |ref|"


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("input_grad", [True, False],
                         ids=["with-input-grad", "relu-in-weight-grad"])
def test_cuda_graph_capture_and_replay(input_grad):
    """Forward and backward are capturable in one CUDA graph (no host sync, no allocation a
    capture forbids) and a replay on new data gives the eager results, bit for bit."""
    c, cout, k, groups = (3, 16, 5, 1) if not input_grad else (8, 16, 3, 2)
    x, w, b = (t.float().cuda() for t in conv_inputs(4, c, 19, 17, cout, k, groups))
    x.requires_grad_(input_grad)
    w.requires_grad_()
    b.requires_grad_()
    leaves = [t for t in (x, w, b) if t.requires_grad]
    dy = torch.randn(F.conv2d(x.to("meta"), w.to("meta"), None, 2, 1, 1, groups).shape,
                     device="cuda")

    def step():
        y = conv2d_relu(x, w, b, 2, 1, groups=groups)
        return (y, *torch.autograd.grad(y, leaves, dy))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compile (and tune) outside the capture
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        for t in (x, w, b, dy):
            t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    assert captured[0].shape == eager[0].shape
    for got, want in zip(captured, eager):
        assert torch.equal(got, want)
