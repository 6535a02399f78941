"""Convolution (+ bias, + ReLU) as an implicit GEMM on channels-last (NHWC) tensors.

No im2col buffer is written: each program gathers its block of the patch matrix from the input
while it runs the GEMM. Per convolution group ``g`` (grid axis), with ``K = KH * KW * CIN_G``
ordered (kh, kw, c) like the packed weight ``[COUT, KH, KW, CIN_G]``:

- forward      y[m, co]  = sum_k patch[m, k] * w[co, k]       (M = N*OH*OW rows)
- grad-input   dx[m, ci] = sum_(kh,kw,co) dy'[out(m,kh,kw), co] * w[co, kh, kw, ci]  (M = N*H*W)
- grad-weight  dw[co, k] = sum_m dy'[m, co] * patch[m, k]: partial sums over fixed slices of
  the rows, then a fixed-order reduce of the slices; grad-bias is the same sum of dy' alone.

``dy'`` is dy where the saved ReLU output is > 0, else 0. Output row ``oh`` and tap ``kh`` read
input row ``oh * STRIDE_H - PAD_H + kh * DIL_H``; PAD_H is the top padding (the bottom padding
only sets OH, which is how torch's asymmetric ``padding="same"`` is expressed). The design, the
configurations and what was measured: docs/kernels/conv.md.
"""

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastalex.kernels._runtime import (
    INT32_LIMIT, INTERPRET, accumulator_dtype, autotune, grouped_tile, input_precision,
    new_empty, sm_count, tl_accumulator,
)

# ---------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _patch_rows(x_ptr, n, ih0, iw0, g, stride_xn, stride_xh, stride_xw, CIN_G: tl.constexpr):
    """Pointers to x[n, ih0, iw0, g*CIN_G] per row (outside x where the patch starts in the
    padding). int64: n * stride_xn passes 2^31 for large batches. The launcher passes dense
    NHWC strides, multiples of the channel count, hence of VEC."""
    VEC: tl.constexpr = CIN_G & (-CIN_G)
    off = n.to(tl.int64) * stride_xn + ih0 * stride_xh + iw0 * stride_xw + g * CIN_G
    return x_ptr + tl.multiple_of(off, VEC)


@triton.jit
def _load_patches(
    # x_row: [R] pointers to x[n, ih0, iw0, g*CIN_G] of each row (possibly outside x when padded)
    x_row, ih0, iw0, row_ok,
    # which BLOCK_K block of the patch columns; the input's extent and strides
    kk, H, W, stride_xh, stride_xw,
    # geometry
    CIN_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    # PADDED=False: every tap of every row is inside x; ROW_MASK: mask rows with row_ok
    PADDED: tl.constexpr, ROW_MASK: tl.constexpr, TAP_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Block ``kk`` of the implicit im2col matrix: [R, BLOCK_K], zeros for padding."""
    K: tl.constexpr = KH * KW * CIN_G
    offs_k = tl.arange(0, BLOCK_K)
    if TAP_TILES:
        # One tap (kh, kw), BLOCK_K consecutive channels: scalar index math, row-only mask.
        tap = kk // (CIN_G // BLOCK_K)
        c0 = (kk % (CIN_G // BLOCK_K)) * BLOCK_K
        kh = (tap // KW) * DIL_H
        kw = (tap % KW) * DIL_W
        ptrs = x_row[:, None] + (kh * stride_xh + kw * stride_xw + c0 + offs_k)[None, :]
        if PADDED:
            ih = ih0 + kh
            iw = iw0 + kw
            ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            if ROW_MASK:
                ok = ok & row_ok
            a = tl.load(ptrs, mask=ok[:, None], other=0.0)
        elif ROW_MASK:
            a = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            a = tl.load(ptrs)
    else:
        # Flat K: every column has its own (kh, kw, c).
        k = kk * BLOCK_K + offs_k
        kh = (k // (KW * CIN_G)) * DIL_H
        kw = ((k // CIN_G) % KW) * DIL_W
        c = k % CIN_G
        # Runs of VEC columns (VEC = the largest power of two dividing both CIN_G and BLOCK_K)
        # start at multiples of VEC and are consecutive channels of one tap, and the strides
        # are multiples of the channel count: say so, or the gather is one load per element.
        POW2: tl.constexpr = CIN_G & (-CIN_G)
        VEC: tl.constexpr = POW2 if POW2 < BLOCK_K else BLOCK_K
        col = tl.max_contiguous(tl.multiple_of(kh * stride_xh + kw * stride_xw + c, VEC), VEC)
        ptrs = x_row[:, None] + col[None, :]
        ok = (k < K)[None, :]
        if PADDED:
            ih = ih0[:, None] + kh[None, :]
            iw = iw0[:, None] + kw[None, :]
            ok = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        if ROW_MASK:
            ok = ok & row_ok[:, None]
        a = tl.load(ptrs, mask=ok, other=0.0)
    return a


@triton.jit
def _relu_grad(dy, y_ptrs, mask, RELU: tl.constexpr):
    """dy where the saved output y > 0, else 0 (torch's threshold_backward: y <= 0 gives 0)."""
    if RELU:
        y = tl.load(y_ptrs, mask=mask, other=0.0)
        dy = tl.where(y <= 0, tl.zeros_like(dy), dy)
    return dy


@triton.jit
def _output_tap_rows(ih_p, kh, OH, STRIDE_H: tl.constexpr, DIL_H: tl.constexpr):
    """(oh, ok) for grad-input: input row ``ih_p - PAD_H`` receives tap ``kh`` from output row
    oh = (ih_p - kh * DIL_H) / STRIDE_H when that is a whole number in [0, OH)."""
    oh_s = ih_p - kh * DIL_H
    if STRIDE_H == 1:
        ok = (oh_s >= 0) & (oh_s < OH)
    else:
        ok = (oh_s >= 0) & (oh_s % STRIDE_H == 0) & (oh_s < OH * STRIDE_H)
    return oh_s // STRIDE_H, ok


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _conv_fwd_kernel(
    # x: [N, H, W, C] dense NHWC; w: [COUT, KH, KW, CIN_G] contiguous; b: [COUT] with stride
    # stride_bc (unused unless HAS_BIAS); y: [N, OH, OW, COUT] contiguous
    x_ptr, w_ptr, b_ptr, y_ptr,
    # input extent and strides (elements); the bias's stride
    H, W, stride_xn, stride_xh, stride_xw, stride_bc,
    # GEMM rows M = N*OH*OW; output extent; output channels per group (the GEMM's N)
    M, OH, OW, COUT, COUT_G,
    # convolution geometry (PAD_H/PAD_W: top/left; PADDED: any side padded)
    CIN_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr, PADDED: tl.constexpr,
    # epilogue and arithmetic
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    # tiling (TAP_TILES and BLOCK_K from the launcher, the rest autotuned)
    TAP_TILES: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    """y = act(conv(x, w) + b) for one [BLOCK_M, BLOCK_N] tile of one group's GEMM."""
    K: tl.constexpr = KH * KW * CIN_G
    pid = tl.program_id(0)
    g = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(COUT_G, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows and columns past the end wrap onto valid ones (their results are never stored), so
    # the loads need no bounds mask beyond padding.
    m = offs_m % M
    co = offs_n % COUT_G
    n = m // (OH * OW)
    ohw = m % (OH * OW)
    ih0 = (ohw // OW) * STRIDE_H - PAD_H
    iw0 = (ohw % OW) * STRIDE_W - PAD_W
    x_row = _patch_rows(x_ptr, n, ih0, iw0, g, stride_xn, stride_xh, stride_xw, CIN_G)
    w_col = w_ptr + (g * COUT_G + co) * K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kk in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        a = _load_patches(x_row, ih0, iw0, None, kk, H, W, stride_xh, stride_xw,
                          CIN_G, KH, KW, DIL_H, DIL_W, PADDED, False, TAP_TILES, BLOCK_K)
        k = kk * BLOCK_K + offs_k
        if TAP_TILES:
            b = tl.load(w_col[None, :] + k[:, None])
        else:
            b = tl.load(w_col[None, :] + k[:, None], mask=(k < K)[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    # Epilogue on the fp32 (fp64) accumulator: bias, ReLU (NaN kept, as torch's), one rounding.
    if HAS_BIAS:
        acc += tl.load(b_ptr + (g * COUT_G + co) * stride_bc).to(ACC_DTYPE)[None, :]
    if RELU:
        acc = tl.where(acc < 0, tl.zeros_like(acc), acc)
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * COUT + (g * COUT_G + offs_n)[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < COUT_G)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Grad-input
# ---------------------------------------------------------------------------------------------


@triton.jit
def _conv_dgrad_kernel(
    # dy: [N, OH, OW, COUT] contiguous, ReLU mask already applied; w: [COUT, KH, KW, CIN_G]
    # contiguous; dx: [N, H, W, CIN] contiguous
    dy_ptr, w_ptr, dx_ptr,
    # GEMM rows M = N*H*W (input positions); input extent; output extent
    M, H, W, CIN, OH, OW, COUT,
    # convolution geometry (COUT_G is this GEMM's reduction channel count; PAD_H/W top/left)
    CIN_G: tl.constexpr, COUT_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    # arithmetic
    INPUT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    # tiling
    TAP_TILES: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dx for one [BLOCK_M, BLOCK_N] tile: the transposed convolution of dy' by w as a GEMM over
    (kh, kw, co). Taps that land between output rows (stride > 1) are masked, so the GEMM does
    STRIDE_H * STRIDE_W times the useful work."""
    KTOT: tl.constexpr = KH * KW * CIN_G  # row length of the packed weight
    KD: tl.constexpr = KH * KW * COUT_G  # this GEMM's reduction length
    pid = tl.program_id(0)
    g = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(CIN_G, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m = offs_m % M
    ci = offs_n % CIN_G
    n = m // (H * W)
    ihw = m % (H * W)
    ih_p = ihw // W + PAD_H  # ih + PAD_H = oh * STRIDE_H + kh * DIL_H
    iw_p = ihw % W + PAD_W
    dy_row = n.to(tl.int64) * (OH * OW * COUT) + g * COUT_G
    w_base = w_ptr + g * COUT_G * KTOT + ci  # [BLOCK_N]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kk in range(0, (KD + BLOCK_K - 1) // BLOCK_K):
        if TAP_TILES:
            # One tap, BLOCK_K consecutive output channels: one row mask.
            tap = kk // (COUT_G // BLOCK_K)
            c = (kk % (COUT_G // BLOCK_K)) * BLOCK_K + offs_k
            oh, ok_h = _output_tap_rows(ih_p, tap // KW, OH, STRIDE_H, DIL_H)
            ow, ok_w = _output_tap_rows(iw_p, tap % KW, OW, STRIDE_W, DIL_W)
            offs = dy_row[:, None] + ((oh * OW + ow) * COUT)[:, None] + c[None, :]
            ok = (ok_h & ok_w)[:, None]
            b = tl.load(w_base[None, :] + (c * KTOT)[:, None] + tap * CIN_G)
        else:
            # Flat: every column has its own (tap, co).
            k = kk * BLOCK_K + offs_k
            tap = k // COUT_G
            c = k % COUT_G
            oh, ok_h = _output_tap_rows(ih_p[:, None], (tap // KW)[None, :], OH, STRIDE_H, DIL_H)
            ow, ok_w = _output_tap_rows(iw_p[:, None], (tap % KW)[None, :], OW, STRIDE_W, DIL_W)
            offs = dy_row[:, None] + (oh * OW + ow) * COUT + c[None, :]
            ok = (k < KD)[None, :] & ok_h & ok_w
            w_ptrs = w_base[None, :] + (c * KTOT + tap * CIN_G)[:, None]
            b = tl.load(w_ptrs, mask=(k < KD)[:, None], other=0.0)
        a = tl.load(dy_ptr + offs, mask=ok, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    dx_ptrs = dx_ptr + offs_m.to(tl.int64)[:, None] * CIN + (g * CIN_G + offs_n)[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < CIN_G)[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Grad-weight and grad-bias
# ---------------------------------------------------------------------------------------------


@triton.jit
def _conv_wgrad_kernel(
    # x: [N, H, W, C] dense NHWC; dy, y: [N, OH, OW, COUT] contiguous (y only when RELU);
    # part: [SPLIT, COUT * KTOT + COUT] fp32 (fp64) partial sums: dw as [COUT, KTOT], then db
    x_ptr, dy_ptr, y_ptr, part_ptr,
    # input extent and strides (elements)
    H, W, stride_xn, stride_xh, stride_xw,
    # reduction rows M = N*OH*OW: grid axis 1 runs one slice of SLICE_ROWS rows each (the last
    # one shorter); output channels
    M, SLICE_ROWS, COUT, COUT_G,
    # convolution geometry (OH, OW compile-time: the row decomposition runs every iteration)
    OH: tl.constexpr, OW: tl.constexpr,
    CIN_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr, PADDED: tl.constexpr,
    # what to compute
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    # tiling: output tile [BLOCK_CO, BLOCK_K], reduction step BLOCK_R rows; K is walked flat
    # (a block may span taps)
    BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Partial dw[co, k] (and db[co]) over one slice of the M rows: dy'^T @ patches."""
    KTOT: tl.constexpr = KH * KW * CIN_G
    pid = tl.program_id(0)
    split = tl.program_id(1)
    g = tl.program_id(2)
    num_k = (KTOT + BLOCK_K - 1) // BLOCK_K
    pid_co = pid // num_k
    kk = pid % num_k

    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    dy_col = g * COUT_G + offs_co % COUT_G  # wrapped: columns past COUT_G are never stored
    m_start = split * SLICE_ROWS
    m_end = min(m_start + SLICE_ROWS, M)

    acc = tl.zeros((BLOCK_CO, BLOCK_K), dtype=ACC_DTYPE)
    # grad-bias: row sums of dy'^T. 16-bit inputs: a product with a ones block on the tensor
    # cores (exact: x * 1 summed in fp32), far fewer instructions than a cross-thread sum in
    # this loop; fp32/fp64 sum directly (a TF32 product would round dy').
    BIAS_BY_DOT: tl.constexpr = dy_ptr.dtype.element_ty.primitive_bitwidth == 16
    bias_acc = tl.zeros((BLOCK_CO, 16) if BIAS_BY_DOT else (BLOCK_CO,), dtype=ACC_DTYPE)
    for r0 in range(m_start, m_end, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        row_ok = offs_r < m_end
        n = offs_r // (OH * OW)
        ohw = offs_r % (OH * OW)
        ih0 = (ohw // OW) * STRIDE_H - PAD_H
        iw0 = (ohw % OW) * STRIDE_W - PAD_W
        x_row = _patch_rows(x_ptr, n, ih0, iw0, g, stride_xn, stride_xh, stride_xw, CIN_G)
        a = _load_patches(x_row, ih0, iw0, row_ok, kk, H, W, stride_xh, stride_xw,
                          CIN_G, KH, KW, DIL_H, DIL_W, PADDED, True, False, BLOCK_K)
        offs = offs_r.to(tl.int64)[:, None] * COUT + dy_col[None, :]
        d = tl.load(dy_ptr + offs, mask=row_ok[:, None], other=0.0)
        d = _relu_grad(d, y_ptr + offs, row_ok[:, None], RELU)
        acc = tl.dot(tl.trans(d), a, acc, input_precision=INPUT_PRECISION)
        if HAS_BIAS:
            if kk == 0:
                if BIAS_BY_DOT:
                    ones = tl.full((BLOCK_R, 16), 1.0, tl.float32).to(d.dtype)
                    bias_acc = tl.dot(tl.trans(d), ones, bias_acc)
                else:
                    bias_acc += tl.sum(d.to(ACC_DTYPE), axis=0)

    co_ok = offs_co < COUT_G
    part_split = part_ptr + split.to(tl.int64) * (COUT * (KTOT + 1))
    part_row = part_split + (g * COUT_G + offs_co) * KTOT
    k = kk * BLOCK_K + tl.arange(0, BLOCK_K)
    tl.store(part_row[:, None] + k[None, :], acc, mask=co_ok[:, None] & (k < KTOT)[None, :])
    if HAS_BIAS:
        if kk == 0:
            if BIAS_BY_DOT:  # every column holds the sum: keep column 0 (exact, NaN kept)
                first = (tl.arange(0, 16) == 0)[None, :]
                bias = tl.sum(tl.where(first, bias_acc, tl.zeros_like(bias_acc)), axis=1)
            else:
                bias = bias_acc
            tl.store(part_split + COUT * KTOT + g * COUT_G + offs_co, bias, mask=co_ok)


# Memory-bound: no value specialization of the integer arguments (one compiled variant per
# dtype and HAS_BIAS instead of one per shape class).
@triton.jit(do_not_specialize=["SPLIT", "COUT", "stride_dwo", "stride_dwc", "stride_dwh",
                               "stride_dww", "DW_CIN_G", "CIN_G", "KW", "KTOT"])
def _wgrad_reduce_kernel(
    # part: [SPLIT, COUT * KTOT + COUT] partial sums (dw as [COUT, KTOT], then db); dw:
    # [COUT, DW_CIN_G, KH, KW] with the strides below (the weight's own layout); db: [COUT]
    # contiguous (unused unless HAS_BIAS)
    part_ptr, dw_ptr, db_ptr,
    SPLIT, COUT,
    # dw's strides; channels c >= DW_CIN_G (zero padding of the input, see the op) are dropped
    stride_dwo, stride_dwc, stride_dwh, stride_dww, DW_CIN_G,
    # geometry of the partial sums' K axis
    CIN_G, KW, KTOT,
    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Sum the SPLIT partials in slice order (deterministic) and write dw (and db)."""
    total = COUT * (KTOT + 1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    ptrs = part_ptr + offs
    acc = tl.load(ptrs, mask=mask, other=0.0)
    for _ in range(1, SPLIT):
        ptrs += total  # 64-bit pointer arithmetic: SPLIT * total may pass 2^31
        acc += tl.load(ptrs, mask=mask, other=0.0)
    is_w = offs < COUT * KTOT
    co = offs // KTOT
    k = offs % KTOT
    kh = k // (KW * CIN_G)
    kw = (k // CIN_G) % KW
    c = k % CIN_G
    dw_ptrs = dw_ptr + co * stride_dwo + c * stride_dwc + kh * stride_dwh + kw * stride_dww
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask & is_w & (c < DW_CIN_G))
    if HAS_BIAS:
        tl.store(db_ptr + (offs - COUT * KTOT), acc.to(db_ptr.dtype.element_ty),
                 mask=mask & (offs >= COUT * KTOT))


@triton.jit(do_not_specialize=["numel"])
def _relu_grad_kernel(
    # dy, y, out: same-shape contiguous buffers (the output's channels-last memory)
    dy_ptr, y_ptr, out_ptr, numel,
    BLOCK: tl.constexpr,
):
    """out = dy where y > 0, else 0 (torch's threshold_backward: y <= 0 gives 0, NaN passes)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dy = tl.load(dy_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.where(y <= 0, tl.zeros_like(dy), dy), mask=mask)


# ---------------------------------------------------------------------------------------------
# Configurations (data), chosen for AlexNet at batch 128 on Hopper (docs/kernels/conv.md); the
# first of each list is the default when autotuning is off.
# ---------------------------------------------------------------------------------------------


def _cfg(num_warps, num_stages, **meta):
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


# Forward and grad-input tiles [BLOCK_M, BLOCK_N], by input width: 16-bit, fp32, fp64.
_GEMM_CONFIGS_16 = [
    _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, GROUP_M=8),  # two wgmma warpgroups: every layer
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=64, GROUP_M=8),  # 192 and 48 columns (conv4; conv2 dgrad)
    _cfg(8, 3, BLOCK_M=256, BLOCK_N=128, GROUP_M=8),  # conv2/conv3: higher arithmetic intensity
]
# fp32 keeps 8 warps on the narrow tile too: IEEE fp32 runs tl.dot on the FMA units, whose
# 128 x 64 tile spills registers in grad-input with 4 warps (sm_90).
_GEMM_CONFIGS_32 = [
    _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, GROUP_M=8),
    _cfg(8, 4, BLOCK_M=128, BLOCK_N=64, GROUP_M=8),
]
_GEMM_CONFIGS_64 = [_cfg(4, 2, BLOCK_M=64, BLOCK_N=64, GROUP_M=8)]

# Grad-weight output tiles [BLOCK_CO, BLOCK_K] and reduction step BLOCK_R: the wider tile
# re-reads each dy' row fewer times, the narrower has twice the programs.
_WGRAD_CONFIGS_16 = [
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=128, BLOCK_R=64),
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=256, BLOCK_R=64),
]
_WGRAD_CONFIGS_32 = [
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=128, BLOCK_R=32),
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=64, BLOCK_R=32),
]
_WGRAD_CONFIGS_64 = [_cfg(4, 2, BLOCK_CO=64, BLOCK_K=32, BLOCK_R=16)]
# With the ReLU mask applied in the loop, the saved output's tile is live beside dy's: the
# 128 x 256 tile then steps 32 rows at a time (64 rows spill registers on sm_90).
_WGRAD_RELU_CONFIGS_16 = [
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=128, BLOCK_R=64),
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=256, BLOCK_R=32),
]

# Every autotuned kernel's configurations by element size (bytes): the lists above, named.
CONFIGS = {
    "forward": {2: _GEMM_CONFIGS_16, 4: _GEMM_CONFIGS_32, 8: _GEMM_CONFIGS_64},
    "input_grad": {2: _GEMM_CONFIGS_16, 4: _GEMM_CONFIGS_32, 8: _GEMM_CONFIGS_64},
    "weight_grad": {2: _WGRAD_CONFIGS_16, 4: _WGRAD_CONFIGS_32, 8: _WGRAD_CONFIGS_64},
    "weight_grad_relu": {2: _WGRAD_RELU_CONFIGS_16, 4: _WGRAD_CONFIGS_32, 8: _WGRAD_CONFIGS_64},
}

_GEOMETRY = ["CIN_G", "KH", "KW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "DIL_H", "DIL_W",
             "INPUT_PRECISION"]
_KEYS = {
    "forward": ["M", "COUT_G", "H", "W", "PADDED"] + _GEOMETRY,
    "input_grad": ["M", "COUT_G", "H", "W"] + _GEOMETRY,
    "weight_grad": ["M", "COUT_G", "H", "W", "OH", "OW", "PADDED"] + _GEOMETRY,
}
_KEYS["weight_grad_relu"] = _KEYS["weight_grad"]
_KERNELS = {"forward": _conv_fwd_kernel, "input_grad": _conv_dgrad_kernel,
            "weight_grad": _conv_wgrad_kernel, "weight_grad_relu": _conv_wgrad_kernel}
# The autotuned launch targets, TUNERS[kind][element size].
TUNERS = {
    kind: {size: autotune(configs, key=_KEYS[kind])(_KERNELS[kind])
           for size, configs in CONFIGS[kind].items()}
    for kind in CONFIGS
}

# Reduction-side K blocks by element size: tap tiles when the channel count is a multiple of
# the block, else flat K with the same block.
_TAP_BLOCKS = {2: (64,), 4: (32,), 8: (16,)}
_FLAT_BLOCK = {2: 64, 4: 32, 8: 16}
# Grad-weight slices are multiples of _SPLIT_ALIGN rows (a multiple of every BLOCK_R; small
# under the interpreter so that tests run several slices and partial last blocks).
_SPLIT_ALIGN = 16 if INTERPRET else 128
# The split is modelled for the default tile of each width (the first grad-weight
# configuration, with or without ReLU), whichever tile the autotuner then picks: the
# partial-sum buffer, the grid's slice axis and the reduce depend on the shape alone.
_DEFAULT_WGRAD_TILE = {size: (configs[0].kwargs["BLOCK_CO"], configs[0].kwargs["BLOCK_K"])
               for size, configs in CONFIGS["weight_grad"].items()}
# Split model: seconds per row per output element of one program (an SM's share of the
# tensor-core rate, 2 flops per element; TF32 at half, IEEE fp32/fp64 on the FMA units), and
# bytes per second for writing and reading back the fp32 partial sums.
_SM_ROW_SECONDS = {2: 2 / 4.9e12, 4: 2 / 2.4e12, 8: 2 / 0.4e12}
_PARTIAL_BYTES_PER_SECOND = 2.5e12
# The ReLU mask is applied inside grad-weight when K spans at most this many default blocks.
_RELU_IN_WGRAD_MAX_BLOCKS = 4


def _k_block(channels: int, tap_blocks, flat_block: int):
    """(BLOCK_K, TAP_TILES): channel tiles per tap when ``channels`` allows, else flat K."""
    for block in tap_blocks:
        if channels % block == 0:
            return block, True
    return flat_block, False


def _nhwc_strides(x: Tensor) -> tuple:
    """(n, h, w) strides of a dense NHWC [N, C, H, W] tensor, from its shape: torch leaves the
    strides of size-1 dimensions arbitrary, and the alignment hints need multiples of C."""
    _, c, h, w = x.shape
    return h * w * c, w * c, c


def _check_int32(**sizes: int) -> None:
    """Row counts and per-image sizes are indexed with 32-bit offsets (batch offsets with
    64-bit ones): refuse what would overflow, before any kernel runs."""
    for name, size in sizes.items():
        if size >= INT32_LIMIT - 1024:
            raise ValueError(f"{name} = {size} is too large for the convolution kernels' "
                             f"32-bit offsets (limit {INT32_LIMIT - 1024})")


def output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                dilation: int) -> int:
    """Output extent of a convolution along one axis (torch's formula)."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


@functools.lru_cache(maxsize=1024)
def wgrad_slice_rows(m: int, cout_g: int, ktot: int, groups: int, element_size: int,
                     device: torch.device) -> int:
    """Rows per grad-weight slice (a multiple of ``_SPLIT_ALIGN``); ``cdiv(m, rows)`` slices.

    Few output tiles (conv3: 54 of 128 x 128) need slices to fill the SMs, but every slice
    writes and reads back a partial copy of dw, and a nearly empty last wave costs a full one.
    So: the split with the least estimated time = waves * rows per program * row cost +
    partial-sum traffic, for the default tile and one program per SM.
    """
    sms = sm_count(device)
    block_co, block_k = _DEFAULT_WGRAD_TILE[element_size]
    tiles = triton.cdiv(cout_g, block_co) * triton.cdiv(ktot, block_k) * groups
    row_seconds = block_co * block_k * _SM_ROW_SECONDS[element_size]
    partial_seconds = groups * cout_g * (ktot + 1) * 8 / _PARTIAL_BYTES_PER_SECOND
    best, best_time = triton.cdiv(m, _SPLIT_ALIGN) * _SPLIT_ALIGN, float("inf")
    for split in range(1, min(triton.cdiv(m, _SPLIT_ALIGN), 4 * sms) + 1):
        rows = triton.cdiv(triton.cdiv(m, split), _SPLIT_ALIGN) * _SPLIT_ALIGN
        if triton.cdiv(m, rows) != split:
            continue  # the same slices as a smaller split
        seconds = triton.cdiv(tiles * split, sms) * rows * row_seconds + split * partial_seconds
        if seconds < best_time:
            best, best_time = rows, seconds
    return best


# ---------------------------------------------------------------------------------------------
# Launchers. Tensors are logical NCHW / [COUT, CIN_G, KH, KW] as documented on each; all
# activations are channels-last in memory. padding is [top, bottom, left, right].
# ---------------------------------------------------------------------------------------------


def conv2d_forward(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
    dilation: list[int], groups: int, relu: bool, tf32: bool,
) -> Tensor:
    """act(conv2d(x, w) + bias) -> [N, COUT, OH, OW] channels-last.

    x: [N, C, H, W] channels-last contiguous; weight: packed [COUT, KH, KW, CIN_G]
    contiguous; bias: [COUT] with any stride, or None; act is ReLU when ``relu``.
    """
    n, c, h, w = x.shape
    cout, kh, kw, cin_g = weight.shape
    oh = output_size(h, kh, stride[0], padding[0], padding[1], dilation[0])
    ow = output_size(w, kw, stride[1], padding[2], padding[3], dilation[1])
    _check_int32(rows=n * oh * ow, input_image=c * h * w, output_image=cout * oh * ow)
    y = new_empty((n, cout, oh, ow), dtype=x.dtype, device=x.device,
                  memory_format=torch.channels_last)
    if y.numel() == 0:
        return y
    esize = x.element_size()
    block_k, tap_tiles = _k_block(cin_g, _TAP_BLOCKS[esize], _FLAT_BLOCK[esize])
    m, cout_g = n * oh * ow, cout // groups

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(cout_g, meta["BLOCK_N"]), groups)

    TUNERS["forward"][esize][grid](
        x, weight, bias if bias is not None else weight, y,
        h, w, *_nhwc_strides(x), bias.stride(0) if bias is not None else 0,
        m, oh, ow, cout, cout_g,
        CIN_G=cin_g, KH=kh, KW=kw, STRIDE_H=stride[0], STRIDE_W=stride[1],
        PAD_H=padding[0], PAD_W=padding[2], DIL_H=dilation[0], DIL_W=dilation[1],
        PADDED=any(p > 0 for p in padding),
        HAS_BIAS=bias is not None, RELU=relu, INPUT_PRECISION=input_precision(x.dtype, tf32),
        ACC_DTYPE=tl_accumulator(x.dtype), TAP_TILES=tap_tiles, BLOCK_K=block_k,
    )
    return y


def conv2d_input_grad(
    grad_out: Tensor, weight: Tensor, input_hw: list[int], stride: list[int],
    padding: list[int], dilation: list[int], groups: int, tf32: bool,
) -> Tensor:
    """Grad-input -> [N, CIN, H, W] channels-last.

    grad_out: [N, COUT, OH, OW] channels-last contiguous, with any ReLU mask already applied
    (:func:`conv2d_relu_grad`); weight: packed [COUT, KH, KW, CIN_G].
    """
    n, cout, oh, ow = grad_out.shape
    _, kh, kw, cin_g = weight.shape
    h, w = input_hw
    cin = cin_g * groups
    _check_int32(rows=n * h * w, input_image=cin * h * w, output_image=cout * oh * ow)
    dx = new_empty((n, cin, h, w), dtype=grad_out.dtype, device=grad_out.device,
                   memory_format=torch.channels_last)
    if dx.numel() == 0:
        return dx
    esize = grad_out.element_size()
    cout_g = cout // groups
    block_k, tap_tiles = _k_block(cout_g, _TAP_BLOCKS[esize], _FLAT_BLOCK[esize])
    m = n * h * w

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(cin_g, meta["BLOCK_N"]), groups)

    TUNERS["input_grad"][esize][grid](
        grad_out, weight, dx,
        m, h, w, cin, oh, ow, cout,
        CIN_G=cin_g, COUT_G=cout_g, KH=kh, KW=kw, STRIDE_H=stride[0], STRIDE_W=stride[1],
        PAD_H=padding[0], PAD_W=padding[2], DIL_H=dilation[0], DIL_W=dilation[1],
        INPUT_PRECISION=input_precision(grad_out.dtype, tf32),
        ACC_DTYPE=tl_accumulator(grad_out.dtype), TAP_TILES=tap_tiles, BLOCK_K=block_k,
    )
    return dx


def conv2d_weight_grad(
    grad_out: Tensor, out: Optional[Tensor], x: Tensor, weight_shape: list[int],
    stride: list[int], padding: list[int], dilation: list[int], groups: int, relu: bool,
    has_bias: bool, tf32: bool, channels_last: bool,
) -> tuple[Tensor, Tensor]:
    """(grad-weight ``weight_shape`` = [COUT, CIN_G, KH, KW], grad-bias [COUT], or [0] unless
    ``has_bias``).

    grad_out: as for :func:`conv2d_input_grad`, unmasked when ``relu`` (the mask then comes
    from ``out``, the saved output); x: [N, C, H, W] channels-last, where C may exceed
    weight_shape[1] * groups when the caller zero-padded the channels (their gradient is
    dropped). grad-weight is channels-last in memory when ``channels_last``, else contiguous.
    """
    n, cout, oh, ow = grad_out.shape
    _, cin, h, w = x.shape
    _, dw_cin_g, kh, kw = weight_shape
    cin_g, cout_g = cin // groups, cout // groups
    dtype, device = grad_out.dtype, grad_out.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m, ktot = n * oh * ow, kh * kw * cin_g
    _check_int32(rows=m, input_image=cin * h * w, output_image=cout * oh * ow)
    if m == 0 or cout == 0 or ktot == 0:  # an empty sum: zero gradients
        dw = torch.empty(weight_shape, dtype=dtype, device=device, memory_format=fmt).zero_()
        return dw, torch.zeros((cout if has_bias else 0,), dtype=dtype, device=device)
    dw = new_empty(weight_shape, dtype=dtype, device=device, memory_format=fmt)
    db = new_empty((cout if has_bias else 0,), dtype=dtype, device=device)
    esize = grad_out.element_size()
    slice_rows = wgrad_slice_rows(m, cout_g, ktot, groups, esize, device)
    split = triton.cdiv(m, slice_rows)
    part = new_empty((split, cout * (ktot + 1)), dtype=accumulator_dtype(dtype), device=device)

    def grid(meta):
        tiles = triton.cdiv(cout_g, meta["BLOCK_CO"]) * triton.cdiv(ktot, meta["BLOCK_K"])
        return (tiles, split, groups)

    TUNERS["weight_grad_relu" if relu else "weight_grad"][esize][grid](
        x, grad_out, out if relu else grad_out, part,
        h, w, *_nhwc_strides(x),
        m, slice_rows, cout, cout_g,
        OH=oh, OW=ow, CIN_G=cin_g, KH=kh, KW=kw, STRIDE_H=stride[0], STRIDE_W=stride[1],
        PAD_H=padding[0], PAD_W=padding[2], DIL_H=dilation[0], DIL_W=dilation[1],
        PADDED=any(p > 0 for p in padding),
        HAS_BIAS=has_bias, RELU=relu, INPUT_PRECISION=input_precision(dtype, tf32),
        ACC_DTYPE=tl_accumulator(dtype),
    )
    block = 1024
    _wgrad_reduce_kernel[(triton.cdiv(cout * (ktot + 1), block),)](
        part, dw, db if has_bias else dw, split, cout,
        *dw.stride(), dw_cin_g,
        cin_g, kw, ktot, HAS_BIAS=has_bias, BLOCK=block, num_warps=4,
    )
    return dw, db


def relu_grad_in_kernels(input_grad: bool, weight_shape: list[int], groups: int,
                         element_size: int) -> bool:
    """Whether grad-weight applies the ReLU mask itself (reading the saved output next to dy)
    rather than after one :func:`conv2d_relu_grad` pass, which grad-input always uses.

    In-kernel masking is redone for every visit of a dy element, once per grad-weight K block;
    the pass costs three reads/writes of the output instead. In-kernel wins only without
    grad-input and with few K blocks (conv1: K = 11*11*4 in 4 blocks of 128). Depends on the
    shape alone, never on the configuration the autotuner picked.
    """
    if input_grad:
        return False
    _, cin_g, kh, kw = weight_shape
    cin_g = 4 if (cin_g == 3 and groups == 1) else cin_g  # the op pads RGB to 4 channels
    block_k = _DEFAULT_WGRAD_TILE[element_size][1]
    return triton.cdiv(kh * kw * cin_g, block_k) <= _RELU_IN_WGRAD_MAX_BLOCKS


def conv2d_relu_grad(grad_out: Tensor, out: Tensor) -> Tensor:
    """dy' = grad_out where out > 0, else 0; both [N, C, H, W] channels-last contiguous, and so
    is the result."""
    res = new_empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device,
                    memory_format=torch.channels_last)
    numel = res.numel()
    if numel == 0:
        return res
    block = 4096
    _relu_grad_kernel[(triton.cdiv(numel, block),)](grad_out, out, res, numel, BLOCK=block,
                                                    num_warps=8)
    return res
