"""Convolution (+ bias, + ReLU) as an implicit GEMM on channels-last (NHWC) tensors.

No im2col buffer is ever written: each program gathers its block of the patch matrix straight
from the input while it runs the GEMM. Per convolution group ``g`` (grid axis), with
``K = KH * KW * CIN_G`` ordered (kh, kw, c) like the packed weight ``[COUT, KH, KW, CIN_G]``:

- forward      y[m, co]  = sum_k patch[m, k] * w[co, k]       (M = N*OH*OW rows)
- grad-input   dx[m, ci] = sum_(kh,kw,co) dy'[out(m,kh,kw), co] * w[co, kh, kw, ci]  (M = N*H*W)
- grad-weight  dw[co, k] = sum_m dy'[m, co] * patch[m, k], split over m for parallelism;
  grad-bias is the same reduction of dy' alone, done by the k-block-0 programs.

``dy' = dy`` where the saved output ``y > 0``, else 0: one elementwise pass
(``_relu_grad_kernel``) before both GEMMs, except where grad-weight alone needs it and masks
cheaper in its loop (conv1; see :func:`relu_grad_in_kernels`).

Two ways to walk the reduction over (kh, kw, channel) in the forward and grad-input, picked by
the launcher from the channel count (``_k_block``); grad-weight always walks flat:
- TAP_TILES: the channel count is a multiple of BLOCK_K, so a K block is BLOCK_K consecutive
  channels of one filter tap: scalar index math per block, one padding-mask bit per row.
- flat: the K index is decomposed into (kh, kw, c) per element, with a 2-D mask. Contiguity
  hints (runs of the largest power of two dividing the channel count) keep the gather in
  16-byte cp.async vectors when that run is 8+ elements (conv2's 48 channels), 8-byte ones for
  conv1's RGB padded to 4 channels (see fastalex/ops/conv.py).
Both were checked by compiling for sm_90 offline (no GPU was available while writing this):
cp.async loads (LDGSTS) feeding wgmma, no register spills in the tuned configurations.

Filter size, stride and padding are compile-time constants (divisions by them become
multiplications; the five AlexNet layers compile five variants).
"""

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastalex.kernels._runtime import (
    INTERPRET, accumulator_dtype, autotune, grouped_tile, input_precision, new_empty, sm_count,
    tl_accumulator,
)

# ---------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _patch_rows(x_ptr, n, ih0, iw0, g, stride_xn, stride_xh, stride_xw, CIN_G: tl.constexpr):
    """Pointers to x[n, ih0, iw0, g*CIN_G] per row (outside x where the patch starts in the
    padding). int64: n * stride_xn passes 2^31 for large batches. Channels-last strides are
    multiples of the channel count, hence of VEC (see _load_patches)."""
    VEC: tl.constexpr = CIN_G & (-CIN_G)
    off = n.to(tl.int64) * stride_xn + ih0 * stride_xh + iw0 * stride_xw + g * CIN_G
    return x_ptr + tl.multiple_of(off, VEC)


@triton.jit
def _load_patches(
    # x_row: [R] pointers to x[n, ih0, iw0, g*CIN_G] of each row (possibly outside x when padded)
    x_row, ih0, iw0, row_ok,
    # which BLOCK_K block of the patch columns, and the input's extent and strides
    kk, H, W, stride_xh, stride_xw,
    CIN_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, PADDED: tl.constexpr,
    ROW_MASK: tl.constexpr, TAP_TILES: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Block ``kk`` of the implicit im2col matrix: [R, BLOCK_K] with zeros for padding.

    ``row_ok`` masks rows out only when ROW_MASK (callers that wrap their row indices onto
    valid rows skip it); PADDED=False means every tap of every row is inside the input.
    """
    K: tl.constexpr = KH * KW * CIN_G
    offs_k = tl.arange(0, BLOCK_K)
    if TAP_TILES:
        # One tap (kh, kw), BLOCK_K consecutive channels: scalar index math, row-only mask.
        tap = kk // (CIN_G // BLOCK_K)
        c0 = (kk % (CIN_G // BLOCK_K)) * BLOCK_K
        kh = tap // KW
        kw = tap % KW
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
        # Flattened K: every column has its own (kh, kw, c).
        k = kk * BLOCK_K + offs_k
        kh = k // (KW * CIN_G)
        kw = (k // CIN_G) % KW
        c = k % CIN_G
        # Runs of VEC columns (VEC = the largest power of two dividing both CIN_G and BLOCK_K)
        # start at multiples of VEC and are consecutive channels of one tap; the strides are
        # multiples of the channel count. Say so, or the gather is one 2-byte load per element
        # with no cp.async pipelining.
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


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _conv_fwd_kernel(
    # x: [N, H, W, C] (channels-last: strides H*W*C, W*C, C, 1); w: [COUT, KH, KW, CIN_G]
    # contiguous; b: [COUT] (unused unless HAS_BIAS); y: [N, OH, OW, COUT] contiguous
    x_ptr, w_ptr, b_ptr, y_ptr,
    # input extent and strides (elements)
    H, W, stride_xn, stride_xh, stride_xw,
    # GEMM rows M = N*OH*OW; output extent; channels per group on the GEMM's N side
    M, OH, OW, COUT, COUT_G,
    # convolution geometry
    CIN_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
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
                          CIN_G, KH, KW, PAD_H + PAD_W > 0, False, TAP_TILES, BLOCK_K)
        k = kk * BLOCK_K + offs_k
        if TAP_TILES:
            b = tl.load(w_col[None, :] + k[:, None])
        else:
            b = tl.load(w_col[None, :] + k[:, None], mask=(k < K)[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    # Epilogue on the fp32 (fp64) accumulator: bias, ReLU (NaN kept, as torch's), one rounding.
    if HAS_BIAS:
        acc += tl.load(b_ptr + g * COUT_G + co).to(ACC_DTYPE)[None, :]
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
    # dy: [N, OH, OW, COUT] contiguous, ReLU mask already applied (see relu_grad_in_kernels);
    # w: [COUT, KH, KW, CIN_G] contiguous; dx: [N, H, W, CIN] contiguous
    dy_ptr, w_ptr, dx_ptr,
    # GEMM rows M = N*H*W (input positions); input extent; output extent
    M, H, W, CIN, OH, OW, COUT,
    # convolution geometry (COUT_G is the reduction's channel count here)
    CIN_G: tl.constexpr, COUT_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    # arithmetic
    INPUT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    # tiling
    TAP_TILES: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dx for one [BLOCK_M, BLOCK_N] tile: a transposed convolution of dy' by w, as a GEMM over
    (kh, kw, co). Input position ih receives from output oh = (ih + PAD_H - kh) / STRIDE_H when
    that is a whole number in range; with a stride > 1 the other taps are masked, so the GEMM
    does STRIDE_H * STRIDE_W times the useful work (AlexNet never asks: conv1, the only strided
    layer, needs no grad-input)."""
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
    ih_p = ihw // W + PAD_H  # ih + PAD_H: output row oh*STRIDE_H + kh
    iw_p = ihw % W + PAD_W
    dy_row = n.to(tl.int64) * (OH * OW * COUT) + g * COUT_G
    w_base = w_ptr + g * COUT_G * KTOT + ci  # [BLOCK_N]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kk in range(0, (KD + BLOCK_K - 1) // BLOCK_K):
        if TAP_TILES:
            tap = kk // (COUT_G // BLOCK_K)
            c = (kk % (COUT_G // BLOCK_K)) * BLOCK_K + offs_k
            kh = tap // KW
            kw = tap % KW
            oh_s = ih_p - kh
            ow_s = iw_p - kw
            if STRIDE_H == 1:
                ok = (oh_s >= 0) & (oh_s < OH)
            else:
                ok = (oh_s >= 0) & (oh_s % STRIDE_H == 0) & (oh_s < OH * STRIDE_H)
            if STRIDE_W == 1:
                ok = ok & (ow_s >= 0) & (ow_s < OW)
            else:
                ok = ok & (ow_s >= 0) & (ow_s % STRIDE_W == 0) & (ow_s < OW * STRIDE_W)
            pos = (oh_s // STRIDE_H) * OW + ow_s // STRIDE_W
            offs = dy_row[:, None] + (pos * COUT)[:, None] + c[None, :]
            ok = ok[:, None]
            w_ptrs = w_base[None, :] + (c * KTOT)[:, None] + tap * CIN_G
            b = tl.load(w_ptrs)
        else:
            k = kk * BLOCK_K + offs_k
            tap = k // COUT_G
            c = k % COUT_G
            oh_s = ih_p[:, None] - (tap // KW)[None, :]
            ow_s = iw_p[:, None] - (tap % KW)[None, :]
            ok = (k < KD)[None, :] & (oh_s >= 0) & (ow_s >= 0)
            if STRIDE_H == 1:
                ok = ok & (oh_s < OH)
            else:
                ok = ok & (oh_s % STRIDE_H == 0) & (oh_s < OH * STRIDE_H)
            if STRIDE_W == 1:
                ok = ok & (ow_s < OW)
            else:
                ok = ok & (ow_s % STRIDE_W == 0) & (ow_s < OW * STRIDE_W)
            pos = (oh_s // STRIDE_H) * OW + ow_s // STRIDE_W
            offs = dy_row[:, None] + pos * COUT + c[None, :]
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
    # x: [N, H, W, C] (channels-last strides); dy, y: [N, OH, OW, COUT] contiguous (y only when
    # RELU); part: [SPLIT, COUT * KTOT + COUT] fp32 (fp64) partial sums: dw as [COUT, KTOT],
    # then db
    x_ptr, dy_ptr, y_ptr, part_ptr,
    # input extent and strides (elements)
    H, W, stride_xn, stride_xh, stride_xw,
    # reduction rows M = N*OH*OW, cut into as many slices as grid axis 1 has (each a multiple
    # of SPLIT_ALIGN rows, as wgrad_split computes); output channels
    M, COUT, COUT_G, SPLIT_ALIGN: tl.constexpr,
    # convolution geometry (OH, OW compile-time: the row decomposition runs every iteration)
    OH: tl.constexpr, OW: tl.constexpr,
    CIN_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    # what to compute
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    # tiling: output tile [BLOCK_CO, BLOCK_K], reduction step BLOCK_R rows. K is always walked
    # flat: with the contiguity hints a block inside one tap compiles to the same code as a
    # tap tile (checked in sm_90 SASS), and a 256-wide block may span taps (conv4: 192).
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
    m_per_split = tl.cdiv(tl.cdiv(M, tl.num_programs(1)), SPLIT_ALIGN) * SPLIT_ALIGN
    m_start = split * m_per_split
    m_end = min(m_start + m_per_split, M)

    acc = tl.zeros((BLOCK_CO, BLOCK_K), dtype=ACC_DTYPE)
    # grad-bias: row sums of dy'^T. For 16-bit inputs as a product with a ones block on the
    # tensor cores (exact: x * 1 in fp32), which costs far fewer instructions than a reduction
    # across threads in this loop; fp32/fp64 sum directly (a TF32 product would round dy').
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
                          CIN_G, KH, KW, PAD_H + PAD_W > 0, True, False, BLOCK_K)
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
@triton.jit(do_not_specialize=["SPLIT", "COUT", "stride_wo", "stride_wc", "stride_wh",
                               "stride_ww", "DW_CIN_G", "CIN_G", "KW", "KTOT"])
def _wgrad_reduce_kernel(
    # part: [SPLIT, COUT * KTOT + COUT] partial sums (dw as [COUT, KTOT], then db); dw:
    # [COUT, CIN_G, KH, KW] with the strides below (weight's own layout); db: [COUT] (unused
    # unless HAS_BIAS)
    part_ptr, dw_ptr, db_ptr,
    SPLIT, COUT,
    # dw's strides; channels c >= DW_CIN_G (zero padding of the input, see the op) are dropped
    stride_wo, stride_wc, stride_wh, stride_ww, DW_CIN_G,
    # geometry: runtime (this pass is memory-bound; one compiled variant serves every layer)
    CIN_G, KW, KTOT,
    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Sum the SPLIT partials in a fixed order (deterministic) and write dw (and db)."""
    total = COUT * (KTOT + 1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    acc = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for s in range(1, SPLIT):
        acc += tl.load(part_ptr + s * total + offs, mask=mask, other=0.0)
    is_w = offs < COUT * KTOT
    co = offs // KTOT
    k = offs % KTOT
    kh = k // (KW * CIN_G)
    kw = (k // CIN_G) % KW
    c = k % CIN_G
    dw_ptrs = dw_ptr + co * stride_wo + c * stride_wc + kh * stride_wh + kw * stride_ww
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask & is_w & (c < DW_CIN_G))
    if HAS_BIAS:
        tl.store(db_ptr + (offs - COUT * KTOT), acc.to(db_ptr.dtype.element_ty),
                 mask=mask & (offs >= COUT * KTOT))


@triton.jit(do_not_specialize=["numel"])
def _relu_grad_kernel(
    # dy, y, dy_masked: same-shape contiguous buffers (the output's channels-last memory)
    dy_ptr, y_ptr, out_ptr, numel,
    BLOCK: tl.constexpr,
):
    """dy' = dy where y > 0, else 0 (torch's threshold_backward: y <= 0 gives 0, NaN passes)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dy = tl.load(dy_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.where(y <= 0, tl.zeros_like(dy), dy), mask=mask)


# ---------------------------------------------------------------------------------------------
# Configurations (data). Chosen for AlexNet at batch 128 on Hopper (PERF.md), few on purpose:
# the GPU check tunes every one of them for every layer.
#   forward GEMMs (M x N x K):  conv1 387200 x 96 x 363 (flat K)   conv2 93312 x 128 x 1200 (x2)
#                               conv3 21632 x 384 x 2304   conv4 21632 x 192 x 1728 (x2)
#                               conv5 21632 x 128 x 1728 (x2)
#   grad-input: M = N*H*W, N = CIN_G, K = KH*KW*COUT_G (conv2: 93312 x 48 x 3200 per group).
#   grad-weight: COUT_G x KTOT outputs reduced over M: few tiles, so M is split (see launcher).
# The first entry of each list is the default used by tests and for untuned shapes: a 128x128
# tile with 8 warps (two wgmma warpgroups) suits every layer reasonably.
# ---------------------------------------------------------------------------------------------


def _cfg(num_warps, num_stages, **meta):
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


# 16-bit inputs: K blocks of 64 (tap tiles, or flat K for conv1/conv2, see _k_block).
_GEMM_CONFIGS_16 = [
    _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, GROUP_M=8),  # 96 KB of shared memory: 2 CTAs per SM
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=64, GROUP_M=8),  # 192 and 48 columns (conv4, dgrad conv2)
    _cfg(8, 3, BLOCK_M=256, BLOCK_N=128, GROUP_M=8),  # conv2/conv3: higher intensity
]
# fp32 (TF32 or IEEE): K blocks of 32, twice the bytes per element: shallower pipelines.
_GEMM_CONFIGS_32 = [
    _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=64, GROUP_M=8),
]
# fp64 has no tensor-core path worth tuning; one small tile keeps registers in check.
_GEMM_CONFIGS_64 = [_cfg(4, 2, BLOCK_M=64, BLOCK_N=64, GROUP_M=8)]

# Grad-weight: the output block [BLOCK_CO, BLOCK_K] decides how often each dy' row and patch
# row is re-read; 128 x 256 runs ~1.06 issued instructions per tensor-core cycle for conv3/4
# (sm_90 SASS, 8 warps) against 1.25 for 128 x 128, whose programs pay per-row index math
# twice as often per MMA. 128 x 128 stays first (the untuned default): 128 x 256 spills when the
# ReLU mask is applied in the loop (conv1).
_WGRAD_CONFIGS_16 = [
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=128, BLOCK_R=64),
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=256, BLOCK_R=64),
]
_WGRAD_CONFIGS_32 = [
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=128, BLOCK_R=32),
    _cfg(8, 3, BLOCK_CO=128, BLOCK_K=64, BLOCK_R=32),
]
_WGRAD_CONFIGS_64 = [_cfg(4, 2, BLOCK_CO=64, BLOCK_K=32, BLOCK_R=16)]

_GEOMETRY = ["CIN_G", "KH", "KW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "INPUT_PRECISION"]
_FWD_KEY = ["M", "COUT_G", "H", "W"] + _GEOMETRY
_DGRAD_KEY = ["M", "COUT_G", "H", "W"] + _GEOMETRY
_WGRAD_KEY = ["M", "COUT_G", "H", "W", "OH", "OW"] + _GEOMETRY


def _by_width(configs16, configs32, configs64, key, kernel):
    return {
        2: autotune(configs16, key=key)(kernel),
        4: autotune(configs32, key=key)(kernel),
        8: autotune(configs64, key=key)(kernel),
    }


_fwd = _by_width(_GEMM_CONFIGS_16, _GEMM_CONFIGS_32, _GEMM_CONFIGS_64, _FWD_KEY, _conv_fwd_kernel)
_dgrad = _by_width(_GEMM_CONFIGS_16, _GEMM_CONFIGS_32, _GEMM_CONFIGS_64, _DGRAD_KEY,
                   _conv_dgrad_kernel)
_wgrad = _by_width(_WGRAD_CONFIGS_16, _WGRAD_CONFIGS_32, _WGRAD_CONFIGS_64, _WGRAD_KEY,
                   _conv_wgrad_kernel)

# Reduction-side K blocks by element size (bytes): tap tiles when the channel count is a
# multiple of the block, else flat K with the same block. Narrower tap tiles lose to flat K:
# compiled for sm_90, conv2's 48 channels as 16-wide tap tiles run ~87 instructions per
# 64x128x16 wgmma (issue-bound, one barrier per wgmma), as flat 64-wide blocks ~34 (the
# gather still moves 16-byte vectors: 48 = 3 x 16 consecutive channels).
_TAP_BLOCKS = {2: (64,), 4: (32,), 8: (16,)}
_FLAT_BLOCK = {2: 64, 4: 32, 8: 16}
# Grad-weight split: slices are multiples of _SPLIT_ALIGN rows (a multiple of every BLOCK_R;
# small under the interpreter so that tests exercise several slices).
_SPLIT_ALIGN = 16 if INTERPRET else 128
# For choosing the split (wgrad_split): seconds per row per output element of one program
# (an SM's share of ~650 TFLOP/s bf16 tensor-core work, 2 flops per element), per element size
# (TF32 at half, IEEE fp32/fp64 on the FMA units far slower), and bytes per second for
# writing and reading back the fp32 partial sums.
_SM_ROW_SECONDS = {2: 2 / 4.9e12, 4: 2 / 2.4e12, 8: 2 / 0.4e12}
_PARTIAL_BYTES_PER_SECOND = 2.5e12


def _k_block(channels: int, tap_blocks, flat_block: int):
    """(BLOCK_K, TAP_TILES): channel tiles per tap when ``channels`` allows, else flat K."""
    for block in tap_blocks:
        if channels % block == 0:
            return block, True
    return flat_block, False


def _nhwc_strides(x: Tensor) -> tuple:
    """(n, h, w) strides of a channels-last contiguous [N, C, H, W] tensor, computed from its
    shape: torch leaves the strides of size-1 dimensions arbitrary, and the kernels' alignment
    hints need every stride to be a multiple of C."""
    _, c, h, w = x.shape
    return h * w * c, w * c, c


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output extent of a convolution along one axis (dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


@functools.lru_cache(maxsize=1024)
def wgrad_split(m: int, tiles: int, tile_elems: int, partial_elems: int, element_size: int,
                device: torch.device) -> int:
    """How many slices of the M rows grad-weight runs (one program per slice and output tile).

    Few output tiles (conv3: 27 of 128 x 256) need slices to fill the SMs, but every slice
    writes and reads back a partial-sum copy of dw, and a last wave that is nearly empty costs
    as much as a full one (135 programs on 132 SMs take two waves). So: the split with the
    least estimated time = waves * rows per program * row cost + partial-sum traffic, where a
    program holds one SM (8 warps, >200 registers each).
    """
    sms = sm_count(device)
    row_seconds = tile_elems * _SM_ROW_SECONDS[element_size]
    best, best_time = 1, float("inf")
    for split in range(1, min(triton.cdiv(m, _SPLIT_ALIGN), 4 * sms) + 1):
        per_split = triton.cdiv(triton.cdiv(m, split), _SPLIT_ALIGN) * _SPLIT_ALIGN
        if triton.cdiv(m, per_split) != split:
            continue  # the same slices as a smaller split
        waves = triton.cdiv(tiles * split, sms)
        seconds = (waves * per_split * row_seconds
                   + split * partial_elems * 8 / _PARTIAL_BYTES_PER_SECOND)
        if seconds < best_time:
            best, best_time = split, seconds
    return best


# ---------------------------------------------------------------------------------------------
# Launchers. Tensors are logical NCHW / [COUT, CIN_G, KH, KW] as documented on each; all
# activations are channels-last in memory.
# ---------------------------------------------------------------------------------------------


def conv2d_forward(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
    groups: int, relu: bool, tf32: bool,
) -> Tensor:
    """act(conv2d(x, w) + bias) -> [N, COUT, OH, OW] channels-last.

    x: [N, C, H, W] channels-last contiguous; weight: packed [COUT, KH, KW, CIN_G]
    contiguous; bias: [COUT] or None; act is ReLU when ``relu``.
    """
    n, c, h, w = x.shape
    cout, kh, kw, cin_g = weight.shape
    oh = output_size(h, kh, stride[0], padding[0])
    ow = output_size(w, kw, stride[1], padding[1])
    y = new_empty((n, cout, oh, ow), dtype=x.dtype, device=x.device,
                  memory_format=torch.channels_last)
    if y.numel() == 0:
        return y
    esize = x.element_size()
    block_k, tap_tiles = _k_block(cin_g, _TAP_BLOCKS[esize], _FLAT_BLOCK[esize])
    m, cout_g = n * oh * ow, cout // groups

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(cout_g, meta["BLOCK_N"]), groups)

    _fwd[esize][grid](
        x, weight, bias if bias is not None else weight, y,
        h, w, *_nhwc_strides(x),
        m, oh, ow, cout, cout_g,
        CIN_G=cin_g, KH=kh, KW=kw, STRIDE_H=stride[0], STRIDE_W=stride[1],
        PAD_H=padding[0], PAD_W=padding[1],
        HAS_BIAS=bias is not None, RELU=relu, INPUT_PRECISION=input_precision(x.dtype, tf32),
        ACC_DTYPE=tl_accumulator(x.dtype), TAP_TILES=tap_tiles, BLOCK_K=block_k,
    )
    return y


def conv2d_input_grad(
    grad_out: Tensor, weight: Tensor, input_hw: list[int], stride: list[int],
    padding: list[int], groups: int, tf32: bool,
) -> Tensor:
    """Grad-input -> [N, CIN, H, W] channels-last.

    grad_out: [N, COUT, OH, OW] channels-last contiguous, with any ReLU mask already applied
    (:func:`conv2d_relu_grad`); weight: packed [COUT, KH, KW, CIN_G].
    """
    n, cout, oh, ow = grad_out.shape
    _, kh, kw, cin_g = weight.shape
    h, w = input_hw
    cin = cin_g * groups
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

    _dgrad[esize][grid](
        grad_out, weight, dx,
        m, h, w, cin, oh, ow, cout,
        CIN_G=cin_g, COUT_G=cout_g, KH=kh, KW=kw, STRIDE_H=stride[0], STRIDE_W=stride[1],
        PAD_H=padding[0], PAD_W=padding[1],
        INPUT_PRECISION=input_precision(grad_out.dtype, tf32),
        ACC_DTYPE=tl_accumulator(grad_out.dtype), TAP_TILES=tap_tiles, BLOCK_K=block_k,
    )
    return dx


def conv2d_weight_grad(
    grad_out: Tensor, out: Optional[Tensor], x: Tensor, weight_shape: list[int],
    stride: list[int], padding: list[int], groups: int, relu: bool, has_bias: bool,
    tf32: bool, channels_last: bool,
) -> tuple[Tensor, Tensor]:
    """(grad-weight ``weight_shape`` = [COUT, CIN_G, KH, KW], grad-bias [COUT], or [0] unless
    ``has_bias``).

    grad_out, out: as for :func:`conv2d_input_grad`; x: [N, C, H, W] channels-last, where C may
    exceed weight_shape[1] * groups when the caller zero-padded the channels (their gradient is
    dropped). grad-weight is channels-last in memory when ``channels_last`` (to match
    the weight), else contiguous.

    Two kernels: per-slice partial sums in fp32 (fp64) over M = N*OH*OW, then a fixed-order
    reduction of the slices (deterministic; no atomics) that also casts and lays out dw.
    """
    n, cout, oh, ow = grad_out.shape
    _, cin, h, w = x.shape
    _, dw_cin_g, kh, kw = weight_shape
    cin_g, cout_g = cin // groups, cout // groups
    dtype, device = grad_out.dtype, grad_out.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = n * oh * ow
    ktot = kh * kw * cin_g
    if m == 0 or cout == 0 or ktot == 0:  # an empty sum: zero gradients
        dw = torch.empty(weight_shape, dtype=dtype, device=device, memory_format=fmt).zero_()
        return dw, torch.zeros((cout if has_bias else 0,), dtype=dtype, device=device)
    dw = new_empty(weight_shape, dtype=dtype, device=device, memory_format=fmt)
    db = new_empty((cout if has_bias else 0,), dtype=dtype, device=device)
    esize = grad_out.element_size()
    kernel = _wgrad[esize]
    partial_elems = cout * (ktot + 1)

    def split_for(meta):
        tiles = triton.cdiv(cout_g, meta["BLOCK_CO"]) * triton.cdiv(ktot, meta["BLOCK_K"])
        return wgrad_split(m, tiles * groups, meta["BLOCK_CO"] * meta["BLOCK_K"], partial_elems,
                           esize, device)

    # The split depends on the tile, which the autotuner picks: room for the largest.
    rows = max(split_for(config.kwargs) for config in kernel.configs)
    part = new_empty((rows, partial_elems), dtype=accumulator_dtype(dtype), device=device)

    def grid(meta):
        tiles = triton.cdiv(cout_g, meta["BLOCK_CO"]) * triton.cdiv(ktot, meta["BLOCK_K"])
        return (tiles, split_for(meta), groups)

    kernel[grid](
        x, grad_out, out if relu else grad_out, part,
        h, w, *_nhwc_strides(x),
        m, cout, cout_g, _SPLIT_ALIGN,
        OH=oh, OW=ow, CIN_G=cin_g, KH=kh, KW=kw, STRIDE_H=stride[0], STRIDE_W=stride[1],
        PAD_H=padding[0], PAD_W=padding[1],
        HAS_BIAS=has_bias, RELU=relu, INPUT_PRECISION=input_precision(dtype, tf32),
        ACC_DTYPE=tl_accumulator(dtype),
    )
    split = split_for(kernel.best_config.kwargs)
    block = 1024
    _wgrad_reduce_kernel[(triton.cdiv(cout * (ktot + 1), block),)](
        part, dw, db if has_bias else dw, split, cout,
        dw.stride(0), dw.stride(1), dw.stride(2), dw.stride(3), dw_cin_g,
        cin_g, kw, ktot, HAS_BIAS=has_bias, BLOCK=block, num_warps=4,
    )
    return dw, db


def relu_grad_in_kernels(input_grad: bool, weight_shape: list[int], groups: int,
                         element_size: int) -> bool:
    """Whether grad-weight should apply the ReLU mask itself (reading the saved output next to
    dy) rather than after one :func:`conv2d_relu_grad` pass, which grad-input always uses.

    In-kernel masking is redone for every visit of a dy element: once per grad-weight output
    block of KTOT (14 for conv4) and once per filter tap in grad-input, at ~0.2 issued
    warp-instructions per element (sm_90 SASS of the 16-bit select). One pass costs three
    reads/writes of the output instead. In-kernel wins only with no grad-input and few K blocks:
    conv1 (KTOT = 11*11*4 in 4 blocks), whose pass would move 3 x 74 MB at batch 128 in bf16.
    """
    if input_grad:
        return False
    _, cin_g, kh, kw = weight_shape
    cin_g = 4 if (cin_g == 3 and groups == 1) else cin_g  # the op pads RGB to 4 channels
    block_k = _wgrad[element_size].configs[0].kwargs["BLOCK_K"]
    return triton.cdiv(kh * kw * cin_g, block_k) <= 4


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
