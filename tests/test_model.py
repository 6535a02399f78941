"""The paper's AlexNet: structure, size, initialisation, ablations, and the two builds agreeing.

Most tests build the network on the CPU and run it under ``fastalex.reference_ops()`` (the
kernels are tested in their own files); one test runs the fastalex build through the kernels
(the interpreter on a CPU) at the smallest input, 67 px, against the torch.nn build.
"""

import pytest
import torch
from helpers import tolerance
from torch import nn

import fastalex
from fastalex import layers as L
from fastalex.models import AlexNet, alexnet, feature_size
from fastalex.models.alexnet import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE

PAPER_PARAMETERS = 60_965_224  # 227 px input, 1000 classes

CONVS = {  # name: (in, out, kernel, stride, padding, groups)
    "conv1": (3, 96, 11, 4, 0, 1),
    "conv2": (96, 256, 5, 1, 2, 2),
    "conv3": (256, 384, 3, 1, 1, 1),
    "conv4": (384, 384, 3, 1, 1, 2),
    "conv5": (384, 256, 3, 1, 1, 2),
}
FCS = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def paper_models():
    """Both builds at the paper's size, the fastalex one holding the torch one's weights."""
    torch.manual_seed(0)
    ours, ref = alexnet(impl="fastalex"), alexnet(impl="torch")
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def test_parameter_count(paper_models):
    for model in paper_models:
        assert count(model) == PAPER_PARAMETERS


def test_same_state_dict_keys_and_shapes(paper_models):
    ours, ref = paper_models
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert [k for k in a if k.endswith("weight")] == [
        f"features.{c}.weight" for c in CONVS] + [f"classifier.{f}.weight" for f in FCS]


def test_layer_geometry(paper_models):
    for model in paper_models:
        for name, (cin, cout, k, s, p, g) in CONVS.items():
            conv = getattr(model.features, name)
            assert isinstance(conv, nn.Conv2d)
            assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.groups) == (cin, cout, (k, k), (s, s), (p, p), g)
            assert conv.weight.shape == (cout, cin // g, k, k)
        for name, (fin, fout) in FCS.items():
            fc = getattr(model.classifier, name)
            assert isinstance(fc, nn.Linear) and (fc.in_features, fc.out_features) == (fin, fout)
        for name in ("pool1", "pool2", "pool5"):
            pool = getattr(model.features, name)
            assert isinstance(pool, nn.MaxPool2d)
            assert (pool.kernel_size, pool.stride) == (3, 2)
        assert not hasattr(model.features, "pool3") and not hasattr(model.features, "pool4")


def test_lrn_constants(paper_models):
    for model in paper_models:
        norms = [m for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]
        assert [n for n, m in model.features.named_children()
                if isinstance(m, nn.LocalResponseNorm)] == ["norm1", "norm2"]
        for norm in norms:
            # The paper's alpha = 1e-4 in a formula without the 1/n: torch's alpha is n * 1e-4.
            assert (norm.size, norm.alpha, norm.beta, norm.k) == (5, 5e-4, 0.75, 2.0)
    assert (LRN_SIZE, LRN_ALPHA / LRN_SIZE, LRN_BETA, LRN_K) == (5, pytest.approx(1e-4), 0.75, 2)
    order = [n for n, _ in paper_models[1].features.named_children()]
    # LRN after the ReLU of conv1 and conv2, before their pooling
    assert order[:8] == ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2"]


def test_fastalex_build_uses_fused_layers(paper_models):
    ours, _ = paper_models
    for name in CONVS:
        assert type(getattr(ours.features, name)) is L.Conv2dReLU
    assert isinstance(ours.features.norm1, L.LRN) and isinstance(ours.features.pool1, L.MaxPool2d)
    for name in ("fc6", "fc7"):
        fc = getattr(ours.classifier, name)
        assert type(fc) is L.LinearReLU and fc.p == 0.5
    assert isinstance(ours.classifier.fc8, nn.Linear)
    assert not any(isinstance(m, (nn.ReLU, nn.Dropout)) for m in ours.modules())


def test_torch_build_is_plain_torch(paper_models):
    _, ref = paper_models
    for m in ref.modules():
        assert type(m).__module__.startswith("torch.") or isinstance(m, AlexNet)
    assert [m.p for m in ref.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert list(ref.classifier._modules) == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7",
                                             "fc8"]


@pytest.mark.parametrize("impl", ["fastalex", "torch"])
def test_paper_initialisation(impl):
    torch.manual_seed(1)
    model = alexnet(impl=impl, image_size=99)  # fc6 with 1024 inputs: smaller, same rule
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        short = name.split(".")[-1]
        w = module.weight.detach()
        n = w.numel()
        # N(0, 0.01): sample mean within 5 standard errors, sample std within 5 of its own
        assert abs(w.mean().item()) < 5 * 0.01 / n ** 0.5, name
        assert abs(w.std().item() - 0.01) < 5 * 0.01 / (2 * n) ** 0.5, name
        expected = 1.0 if short in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(module.bias == expected), name


def test_forward_shapes_at_227(paper_models):
    ours, ref = paper_models
    x = torch.randn(2, 3, 227, 227) * 50
    with fastalex.reference_ops(), torch.no_grad():
        assert ours.features(x).shape == (2, 256, 6, 6)
        for model in (ours, ref):
            model.eval()
            assert model(x).shape == (2, 1000)
    assert feature_size(227) == 6


def test_builds_agree_at_227_with_reference_ops(paper_models):
    """Same weights, dropout off (eval): same logits, same gradients."""
    ours, ref = paper_models
    x = torch.randn(1, 3, 227, 227) * 50
    outs, grads = [], []
    with fastalex.reference_ops():
        for model in (ours, ref):
            model.eval()
            model.zero_grad()
            y = model(x)
            y.square().sum().backward()
            outs.append(y.detach())
            grads.append(model.features.conv1.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1], **tolerance(torch.float32))
    torch.testing.assert_close(grads[0], grads[1], **tolerance(torch.float32, atol=1e-3))


@pytest.fixture
def no_tf32():
    """fp32 means fp32: the kernels follow torch's TF32 switches (cuDNN's is on by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_builds_agree_through_the_kernels(device, no_tf32):
    """The fastalex build on its kernels (the interpreter on a CPU) against the torch.nn build
    in float64, at the smallest input (67 px: every feature map down to 1x1), dropout off."""
    torch.manual_seed(0)
    ref = alexnet(3, image_size=67, impl="torch").double().eval()
    ours = alexnet(3, image_size=67, impl="fastalex").to(device).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 67, 67, dtype=torch.float64) * 50
    with torch.no_grad():
        expected = ref(x)
        got = ours(x.float().to(device))
    assert fastalex.kernel_path(x.to(device)) != "reference"
    # Eight layers of fp32 rounding on logits of magnitude ~1: a few 1e-5 relative.
    torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-4, atol=1e-4)


def test_channels_last_gives_the_same_output():
    ref = alexnet(10, image_size=99, impl="torch").eval()
    x = torch.randn(2, 3, 99, 99) * 50
    with torch.no_grad():
        expected = ref(x)
        cl = alexnet(10, image_size=99).to(memory_format=torch.channels_last).eval()
        cl.load_state_dict(ref.state_dict())
        with fastalex.reference_ops():
            got = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, **tolerance(torch.float32, atol=1e-4))


@pytest.mark.parametrize("size,side", [(67, 1), (70, 1), (99, 2), (131, 3), (163, 4)])
@pytest.mark.parametrize("pooling", ["overlapping", "non-overlapping"])
def test_small_inputs_size_fc6_from_the_feature_map(size, side, pooling):
    model = alexnet(5, image_size=size, pooling=pooling, impl="torch").eval()
    assert feature_size(size, pooling) == side
    assert model.classifier.fc6.in_features == 256 * side * side
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, size, size)).shape == (1, 256, side, side)
        assert model(torch.randn(1, 3, size, size)).shape == (1, 5)


@pytest.mark.parametrize("impl", ["fastalex", "torch"])
def test_ablation_tanh(impl):
    model = alexnet(10, image_size=67, activation="tanh", impl=impl)
    tanhs = [n for n, m in model.named_modules() if isinstance(m, nn.Tanh)]
    assert tanhs == [f"features.tanh{i}" for i in range(1, 6)] + ["classifier.tanh6",
                                                                 "classifier.tanh7"]
    assert not any(isinstance(m, (nn.ReLU, L.Conv2dReLU, L.LinearReLU)) for m in model.modules())
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    with fastalex.reference_ops():
        y = model(torch.randn(2, 3, 67, 67))
    assert y.shape == (2, 10)
    assert list(model.state_dict()) == list(alexnet(10, image_size=67).state_dict())


@pytest.mark.parametrize("impl", ["fastalex", "torch"])
def test_ablation_non_overlapping_pooling(impl):
    model = alexnet(impl=impl, pooling="non-overlapping")
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(2, 2)] * 3
    assert count(model) == PAPER_PARAMETERS  # 227 px still ends at 6x6


@pytest.mark.parametrize("impl", ["fastalex", "torch"])
def test_ablation_no_lrn_and_dropout(impl):
    model = alexnet(10, image_size=67, impl=impl, lrn=False, dropout=0.2)
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
    ps = [m.p for m in model.modules() if isinstance(m, (nn.Dropout, L.LinearReLU))]
    assert ps == [0.2, 0.2]
    assert list(model.state_dict()) == list(alexnet(10, image_size=67).state_dict())


@pytest.mark.parametrize("impl", ["fastalex", "torch"])
def test_ablation_without_conv4(impl):
    torch.manual_seed(0)
    model = alexnet(10, image_size=67, impl=impl, conv4=False)
    names = [name for name, _ in model.features.named_children()]
    assert [n for n in names if n.startswith("conv")] == ["conv1", "conv2", "conv3", "conv5"]
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.groups) for c in convs] == [
        (3, 96, 1), (96, 256, 2), (256, 384, 1), (384, 256, 2)]  # conv3 feeds conv5
    full = alexnet(10, image_size=67, impl=impl)
    assert count(full) - count(model) == 384 * 192 * 9 + 384  # conv4's weights and biases
    assert model.config["conv4"] is False
    again = alexnet(**model.config)
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 67, 67) * 50
    with fastalex.reference_ops(), torch.no_grad():
        assert model.eval()(x).shape == (2, 10)
        torch.testing.assert_close(again.eval()(x), model(x))


def test_dropout_only_in_training():
    model = alexnet(4, image_size=67, impl="fastalex")
    x = torch.randn(2, 3, 67, 67) * 50
    with fastalex.reference_ops(), torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        assert not torch.equal(a, model(x))


@pytest.mark.parametrize("impl", ["fastalex", "torch"])
def test_he_initialisation_and_the_positive_biases(impl):
    torch.manual_seed(2)
    model = alexnet(impl=impl, image_size=99, init="he", positive_bias=0.1)
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        short = name.split(".")[-1]
        w = module.weight.detach()
        n, std = w.numel(), (2.0 / w[0].numel()) ** 0.5  # N(0, 2 / fan_in)
        assert abs(w.mean().item()) < 5 * std / n ** 0.5, name
        assert abs(w.std().item() - std) < 5 * std / (2 * n) ** 0.5, name
        expected = 0.1 if short in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(module.bias == torch.tensor(0.1).float() if expected else
                         module.bias == 0), name


def test_he_keeps_the_signal_that_the_paper_s_init_loses():
    """At 67 px with 10 classes, the image-dependent part of the logits (their std over a
    batch) is lost with N(0, 0.01) weights; with He's weights on a unit-variance input it is
    more than 30 times larger."""
    torch.manual_seed(3)
    x = torch.randn(32, 3, 67, 67) * 64  # about the spread of 0-255 pixels minus the mean
    with fastalex.reference_ops(), torch.no_grad():
        paper = alexnet(10, impl="torch", image_size=67).eval()(x)
        he = alexnet(10, impl="torch", image_size=67, init="he", positive_bias=0.1,
                     input_scale=1 / 64).eval()(x)
    assert paper.std(0).mean() < 0.01
    assert he.std(0).mean() > 30 * paper.std(0).mean()


def test_input_scale_multiplies_the_input_first():
    torch.manual_seed(4)
    model = alexnet(10, impl="torch", image_size=67, input_scale=0.25).eval()
    plain = alexnet(10, impl="torch", image_size=67).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 67, 67) * 50
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x * 0.25))
    assert model.config["input_scale"] == 0.25 and plain.config["input_scale"] == 1.0


def test_config_rebuilds_the_same_network():
    model = alexnet(7, 0.3, activation="tanh", pooling="non-overlapping", lrn=False,
                    image_size=99, impl="torch", init="he", positive_bias=0.1,
                    input_scale=0.5)
    again = alexnet(**model.config)
    assert again.config == model.config
    again.load_state_dict(model.state_dict())


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=2.0), "num_classes"),
    (dict(dropout=1.0), "dropout"),
    (dict(activation="gelu"), "activation"),
    (dict(pooling="average"), "pooling"),
    (dict(lrn="yes"), "lrn"),
    (dict(conv4=0), "conv4"),
    (dict(image_size=66), "image_size"),
    (dict(impl="jax"), "impl"),
    (dict(init="xavier"), "init"),
    (dict(positive_bias="1"), "positive_bias"),
    (dict(input_scale=0.0), "input_scale"),
    (dict(input_scale=float("nan")), "input_scale"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        alexnet(**kwargs)
