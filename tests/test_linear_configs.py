"""Every autotune configuration of the linear GEMM, not only the default: each product (forward,
grad-input, grad-weight) pinned to each of its configurations, on sizes that leave a remainder
in every tile dimension (M, N, K not multiples of BLOCK_M, BLOCK_N, BLOCK_K; K below one
BLOCK_K and K over many), through the single-pass and the split-K paths, with and without bias,
ReLU, dropout and the backward's z-mask, against float64 torch on the same values. fp16 stands
for bf16, which goes through the same configurations and code but whose ``tl.dot`` the
interpreter cannot run; bf16 runs here on CUDA."""

import pytest
import torch
from helpers import tolerance

from fastalex.kernels import linear as K
from fastalex.kernels._runtime import INTERPRET, pinned_config
from fastalex.kernels.dropout import dropout_forward

CUDA = torch.cuda.is_available() and not INTERPRET
SMS = 132  # sm_count() of the interpreter and of CPU tensors
DTYPES = {"16": [torch.float16] + ([torch.bfloat16] if CUDA else []), "32": [torch.float32],
          "64": [torch.float64]}
PRODUCTS = ("fwd", "dgrad", "wgrad")


def _split_k(product, cfg, dtype, m, n, k, dbias=False):
    kw = cfg.kwargs
    return K.split_for(m, n, k, kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], dtype.itemsize,
                       SMS, dbias)


def _long_k(cfg, dtype, m, n):
    """The smallest K, one element over a multiple of BLOCK_K, that ``cfg`` splits."""
    bk = cfg.kwargs["BLOCK_K"]
    for tiles in range(2, 64):
        k = tiles * bk + 1
        if _split_k(None, cfg, dtype, m, n, k) > 1:
            return k
    raise AssertionError(f"{cfg} never splits K for {m}x{n}")


def _cases(cfg, dtype):
    """(name, M, N, K) in the kernel's terms: remainders in M, N and K everywhere."""
    bm, bn, bk = (cfg.kwargs[b] for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    m_two, n_two = bm + 3, bn + 5            # two blocks, the second partial
    m_one, n_one = max(bm // 2 - 3, 1), max(bn // 2 - 1, 1)   # one partial block
    return [
        ("short-k", m_two, n_two, bk // 2 + 3),  # K below one BLOCK_K
        ("split-k", m_one, n_one, _long_k(cfg, dtype, m_one, n_one)),
    ]


def _configs():
    for (product, cls), configs in K.CONFIGS.items():
        for i, cfg in enumerate(configs):
            for dtype in DTYPES[cls]:
                yield pytest.param(product, cls, i, dtype,
                                   id=f"{product}-{cls}-cfg{i}-{str(dtype)[6:]}")


def _rand(*shape, device, dtype, scale=1.0, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)


def _keep(seed, m, n, p, device):
    return dropout_forward(torch.ones(m, n, device=device), seed, p) != 0


def _close(got, want, dtype, k):
    # fp16 rounds the output once; the fp32 sum of k products drifts like sqrt(k) ulps
    tol = tolerance(dtype, atol=tolerance(dtype)["atol"] * max(1.0, (k / 64) ** 0.5))
    torch.testing.assert_close(got.double().cpu(), want.to(dtype).double().cpu(), **tol,
                               equal_nan=True)


def _run_fwd(device, dtype, m, n, k, variant, seed):
    x = _rand(m, k, device=device, dtype=dtype, seed=seed)
    w = _rand(n, k, device=device, dtype=dtype, scale=k ** -0.5, seed=seed + 1)
    b = _rand(n, device=device, dtype=dtype, seed=seed + 2) if variant != "plain" else None
    h = x.double() @ w.double().t() + (b.double() if b is not None else 0)
    if variant == "relu-dropout":
        p = 0.4
        s = torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)
        want = torch.where(_keep(s, m, n, p, device), h.relu() / (1 - p), 0.0)
        got = K.linear_forward(x, w, b, s, True, p, False)
    else:
        want, got = h, K.linear_forward(x, w, b, None, False, 0.0, False)
    _close(got, want, dtype, k)


def _run_dgrad(device, dtype, m, n, k, variant, seed):
    # kernel (M, N, K) = (batch, in_features, out_features)
    dy = _rand(m, k, device=device, dtype=dtype, seed=seed)
    w = _rand(k, n, device=device, dtype=dtype, scale=k ** -0.5, seed=seed + 1)
    z, scale, dh = None, 1.0, dy.double()
    if variant == "z-mask":
        z = _rand(m, k, device=device, dtype=dtype, seed=seed + 2).relu()
        scale = 2.0
        dh = torch.where(z > 0, dy.double() * scale, 0.0).to(dtype).double()
    got = K.linear_grad_input(dy, z, w, scale, False)
    _close(got, dh @ w.double(), dtype, k)


def _run_wgrad(device, dtype, m, n, k, variant, seed):
    # kernel (M, N, K) = (out_features, in_features, batch)
    dy = _rand(k, m, device=device, dtype=dtype, seed=seed)
    x = _rand(k, n, device=device, dtype=dtype, scale=k ** -0.5, seed=seed + 1)
    z = _rand(k, m, device=device, dtype=dtype, seed=seed + 2).relu()
    dh = torch.where(z > 0, dy.double() * 2.0, 0.0).to(dtype).double()
    with_bias = variant == "bias"
    dw, db = K.linear_grad_weight(dy, z, x, 2.0, with_bias, False)
    _close(dw, dh.t() @ x.double(), dtype, k)
    if with_bias:
        _close(db, dh.sum(0), dtype, k)


RUN = {"fwd": _run_fwd, "dgrad": _run_dgrad, "wgrad": _run_wgrad}
VARIANTS = {"fwd": ("relu-dropout", "plain"), "dgrad": ("z-mask", "plain"),
            "wgrad": ("bias", "no-bias")}


@pytest.mark.parametrize("product, cls, index, dtype", list(_configs()))
def test_every_configuration(device, product, cls, index, dtype):
    cfg = K.CONFIGS[(product, cls)][index]
    kernel = K.GEMMS[(product, cls)]
    assert cfg in kernel.all_configs
    with pinned_config(kernel, cfg):
        for j, (name, m, n, k) in enumerate(_cases(cfg, dtype)):
            for v, variant in enumerate(VARIANTS[product]):  # grad-bias forces one pass
                RUN[product](device, dtype, m, n, k, variant, seed=31 * index + 7 * j + v)


def test_cases_cover_both_paths():
    """The shapes above run every configuration through one pass and through split-K (but
    grad-weight with bias, which sums dh's rows in its one pass), with remainders throughout."""
    for (product, cls), configs in K.CONFIGS.items():
        for cfg in configs:
            dtype = DTYPES[cls][0]
            (_, m1, n1, k1), (_, m2, n2, k2) = _cases(cfg, dtype)
            assert _split_k(product, cfg, dtype, m1, n1, k1) == 1
            assert _split_k(product, cfg, dtype, m2, n2, k2) > 1
            assert _split_k(product, cfg, dtype, m2, n2, k2, dbias=True) == 1
            bm, bn, bk = (cfg.kwargs[b] for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
            assert k1 < bk and k2 > bk
            for size, block in ((m1, bm), (n1, bn), (k1, bk), (m2, bm), (n2, bn), (k2, bk)):
                assert size % block != 0


def test_pinned_config_restores_the_kernel():
    kernel = K.GEMMS[("fwd", "32")]
    before = list(kernel.configs)
    last = kernel.all_configs[-1]
    with pinned_config(kernel, last):
        assert kernel.configs == [last]
    assert kernel.configs == before
