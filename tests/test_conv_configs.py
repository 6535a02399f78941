"""Every autotune configuration of every convolution kernel, forward and backward.

On a GPU the autotuner may pick any configuration of a list, so each one is pinned in turn
(``tuner_configs``) and the whole op runs against torch in fp64: forward, grad-input,
grad-weight with its reduce, and the ReLU-grad pass or the in-kernel mask. fp16 runs the
16-bit configurations (bf16 takes the same code; the interpreter's bf16 ``tl.dot`` is unusable),
fp32 and fp64 theirs. The geometries are small but leave a remainder in every tile dimension of
every configuration and take both K walks (checked by ``test_geometries_cover_every_tile``).
"""

import pytest
import torch
import triton
from conv_helpers import check_conv, tuner_configs

from fastalex.kernels import conv as conv_kernels
from fastalex.kernels.conv import CONFIGS, TUNERS

# Per element size (each with its own blocks), name: (n, cin_g, cout_g, h, w, k, stride,
# padding, dilation, input_grad); groups=2 everywhere. Spatial sizes put the row counts just
# past the largest BLOCK_M of that size, to keep the interpreter's work small.
_T = {2: 64, 4: 32, 8: 16}  # a channel count that makes tap tiles (the tap block itself)
_HW = {  # (flat h, w), (tap-forward h, w), (tap-input-grad h, w)
    2: ((29, 9), (11, 13), (13, 11)),
    4: ((17, 9), (7, 11), (7, 11)),
    8: ((9, 9), (5, 7), (5, 7)),
}
GEOMETRIES = {
    size: {
        # odd channel counts: flat K in forward and grad-input; stride 2 in one axis
        "flat": (2, 5, 72, *flat, (3, 1), (2, 1), 1, 1, True),
        # the same without grad-input: the ReLU mask is applied inside grad-weight
        "flat-relu-in-weight-grad": (2, 5, 72, *flat, (3, 1), (2, 1), 1, 1, False),
        # tap tiles in the forward; dilated, asymmetric padding per axis
        "tap-forward": (2, _T[size], 40, *tap_fwd, 3, 1, (2, 1), (2, 1), True),
        # tap tiles in grad-input, stride 2 in one axis
        "tap-input-grad": (2, 40, _T[size], *tap_dgrad, 3, (2, 1), 1, 1, True),
    }
    for size, (flat, tap_fwd, tap_dgrad) in _HW.items()
}
GROUPS = 2
DTYPES = {2: torch.float16, 4: torch.float32, 8: torch.float64}
# (element size, configuration index): index i pins configuration i (modulo its list's length)
# of every kernel, so each configuration of each list runs at least once
CASES = [
    pytest.param(size, index, id=f"{str(DTYPES[size]).split('.')[1]}-config{index}")
    for size in DTYPES
    for index in range(max(len(by_size[size]) for by_size in CONFIGS.values()))
]


def _pick(kind, size, index):
    configs = CONFIGS[kind][size]
    return configs[index % len(configs)]


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _gemms(size, geometry):
    """{kind: (sizes, TAP_TILES or None)} of the kernels this geometry runs: sizes are the
    (rows, columns, reduction) extents the tiles cut, as the launchers compute them."""
    n, cin_g, cout_g, h, w, k, stride, padding, dilation, input_grad = GEOMETRIES[size][geometry]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (k, stride, padding, dilation))
    oh = conv_kernels.output_size(h, kh, sh, ph, ph, dh)
    ow = conv_kernels.output_size(w, kw, sw, pw, pw, dw)
    m_out, m_in, ktot = n * oh * ow, n * h * w, kh * kw * cin_g
    tap = conv_kernels._TAP_BLOCKS[size][0]
    gemms = {"forward": ((m_out, cout_g, ktot), cin_g % tap == 0)}
    if input_grad:
        gemms["input_grad"] = ((m_in, cin_g, kh * kw * cout_g), cout_g % tap == 0)
    relu_inside = conv_kernels.relu_grad_in_kernels(input_grad, [GROUPS * cout_g, cin_g, kh, kw],
                                                    GROUPS, size)
    rows = conv_kernels.wgrad_slice_rows(m_out, cout_g, ktot, GROUPS, size, torch.device("cpu"))
    gemms["weight_grad_relu" if relu_inside else "weight_grad"] = ((m_out, rows, cout_g, ktot),
                                                                   None)
    return gemms


@pytest.mark.parametrize("size, index", CASES)
def test_geometries_cover_every_tile(size, index):
    """Over the geometries, each pinned configuration meets a partial tile in each of its
    dimensions (the K blocks of flat walks included), several row tiles, and both K walks."""
    for kind in CONFIGS:
        config = _pick(kind, size, index)
        partial, walks, runs, several_row_tiles = set(), set(), False, False
        for geometry in GEOMETRIES[size]:
            gemm = _gemms(size, geometry).get(kind)
            if gemm is None:
                continue
            runs = True
            sizes, tap_tiles = gemm
            meta = config.kwargs
            if kind.startswith("weight_grad"):
                m, rows, cout_g, ktot = sizes
                dims = {"BLOCK_R": m % meta["BLOCK_R"] or rows % meta["BLOCK_R"],
                        "BLOCK_CO": cout_g % meta["BLOCK_CO"], "BLOCK_K": ktot % meta["BLOCK_K"]}
            else:
                m, ncols, kred = sizes
                block_k = conv_kernels._FLAT_BLOCK[size]
                dims = {"BLOCK_M": m % meta["BLOCK_M"], "BLOCK_N": ncols % meta["BLOCK_N"]}
                walks.add("tap" if tap_tiles else "flat")
                if not tap_tiles:
                    dims["BLOCK_K"] = kred % block_k
                several_row_tiles |= triton.cdiv(m, meta["BLOCK_M"]) > 1
            partial |= {dim for dim, rest in dims.items() if rest}
        assert runs, kind
        want = {"BLOCK_R", "BLOCK_CO", "BLOCK_K"} if kind.startswith("weight_grad") else \
            {"BLOCK_M", "BLOCK_N", "BLOCK_K"}
        assert partial == want, (kind, config)
        if not kind.startswith("weight_grad"):
            assert walks == {"tap", "flat"} and several_row_tiles, kind


@pytest.mark.parametrize("geometry", list(GEOMETRIES[2]))
@pytest.mark.parametrize("size, index", CASES)
def test_every_configuration(device, size, index, geometry):
    n, cin_g, cout_g, h, w, k, stride, padding, dilation, input_grad = GEOMETRIES[size][geometry]
    pins = {TUNERS[kind][size]: [_pick(kind, size, index)] for kind in CONFIGS}
    with tuner_configs(pins):
        for tuner in pins:
            tuner.best_config = None
        check_conv(device, DTYPES[size], n, GROUPS * cin_g, h, w, GROUPS * cout_g, k, stride,
                   padding, GROUPS, dilation, input_grad=input_grad)
        launched = {kind for kind in CONFIGS if TUNERS[kind][size].best_config is not None}
        assert launched == set(_gemms(size, geometry))
        for kind in launched:
            assert TUNERS[kind][size].best_config is pins[TUNERS[kind][size]][0]
