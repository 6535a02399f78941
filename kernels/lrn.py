"""Local response normalization across channels: fused Triton forward and backward.

    d[c]  = k + alpha/size * sum_{c' in [c-B, c+A]} a[c']^2      B = size // 2, A = (size-1) // 2,
    b[c]  = a[c] * d[c]^-beta                                     channels outside [0, C) are 0
    da[c] = db[c] * d[c]^-beta
            - (2 alpha beta / size) * a[c] * sum_{c' in [c-A, c+B]} db[c'] * a[c'] * d[c']^(-beta-1)

Tensors are viewed as (N, C, S), S the flattened spatial dims, each with its own three strides.
The forward reads x once and writes y once; the backward reads x and dy once and writes dx once
(it recomputes d from x: nothing but x is saved).

How the channel stencils are done; the whole design follows from this. At the byte floor a
channel's neighbours must come from registers. Re-loading them through L1 costs, with size=5,
14 loads per element in the backward (a[c-4..c+4], db[c-2..c+2]) plus 5 pow evaluations if each
neighbour's normaliser is recomputed: that backward is MUFU- and L1-bound on an H100/H200, well
over its memory time. So each thread owns a run of V consecutive channels (its "centre") at one
spatial position, plus the halo channels the stencils reach on either side, in registers, and
the window sums are sums over a compile-time band,

    out[o, r] = sum_w where(LO <= (src_at + w) - (dst_at + o) <= HI, src[w, r], -0.0),

a 3-D broadcast whose two channel axes live in one thread: each `where` condition is a
compile-time constant per register, so LLVM folds the selects and the `+ -0.0` (an exact
identity, unlike `+ 0.0`) and leaves exactly size-1 adds per output. The normaliser and the
backward's t = db*a*d^(-beta-1) are computed once per channel of the centre and halo: the
recomputation is (V + A + B) / V, and the halo re-reads come from L1/L2, not DRAM.

SASS for sm_90 (compiled offline with Triton 3.8, BLOCK_R=128, 4 warps, size=5, beta=0.75): no
shuffles, no shared memory, no spills, in every layout below. Per thread:
    forward  NCHW bf16 V=32: 36 LDG + 32 STG (scalar, coalesced across the warp), ~790
                             instructions, 128 registers
    backward NCHW bf16 V=32: 76 LDG + 32 STG, ~1500 instructions, 163 registers
    forward  NHWC bf16 V=8:  LDG.128 centre + two 4-byte halo loads, STG.128, ~210
                             instructions, 32 registers
    backward NHWC bf16 V=8:  2 LDG.128 + 4 halo loads, STG.128, ~400 instructions, 47 registers
    (fp32 NHWC, V=4: ~160 and ~280 instructions.) That is 0.2 (forward) + 0.4 (backward) issue
    cycles per element per SM in bf16 against ~0.9 that the memory floor at 70% of an H200's
    copy bandwidth allows: memory-bound, if the loads stay in flight. MUFU: 2 per element of
    centre and halo (rsqrt, sqrt), i.e. 2.25 per element forward and 3.25 backward in NHWC
    bf16. About a third of the NCHW instructions are 64-bit address arithmetic (IMAD.WIDE +
    LEA + LEA.HI.X per load): int32 offsets within an image would cut them, at the price of a
    guard for images of 2^31 elements; not done.

Two layouts of rows (a row = one thread's V channels at one spatial position):
- CHANNELS_LAST (channel stride 1, e.g. NHWC): rows are (spatial s, channel group g), g fastest,
  so consecutive threads read consecutive 16-byte vectors: V = 16 bytes of channels, the centre
  is one fully coalesced LDG.128, and each halo is its own "piece" (a separate load, at most 16
  bytes), because Triton's coalescing pass spreads anything wider than 16 bytes along the
  contiguous axis across threads, which would take the channels off the thread.
- otherwise (NCHW, any other strides): rows are BLOCK_R consecutive spatial positions of one
  group of V = 32 channels; each channel is one load, coalesced across the warp. The rows' index
  is taken modulo (S | 1) (a no-op on valid rows) to hide their contiguity from Triton's axis
  analysis: when S % 8 == 0 it would otherwise vectorize along rows, putting 8 rows in a
  thread, and convert that layout to the in-thread-channels one through shared memory (seen in
  the SASS; AlexNet's S = 3025 and 729 are odd and never vectorize).
  One row per thread (BLOCK_R = 32 * num_warps): two would spill at V = 32.
Rows are the last tensor axis everywhere: the default layout Triton gives the 3-D band
broadcasts then puts threads on rows like the loads do (with rows first it spread threads over
the channel axes and the sums became shuffles and shared-memory round trips).

pow: d^-beta = exp2(-beta * log2 d) (lg2/ex2.approx: a few 1e-7 relative error by their
documented bounds, inside the fp32 tolerance; the interpreter computes exactly, so only the CUDA
run of the tests checks this). For AlexNet's
beta = 0.75, r = rsqrt(d) gives d^-0.75 = r * sqrt(r) and d^-1.75 = d^-0.75 * r * r: two MUFU
ops and no reciprocal. Integer betas use |d| and restore the sign, as torch.pow does for a
negative normaliser (k < 0 or alpha < 0).
"""

import functools
import math

import numpy as np
import torch
import triton
import triton.language as tl

from fastalex.kernels._runtime import autotune, new_empty_like

# pow modes (the POW constexpr)
POW_GENERIC = 0  # d^-beta = exp2(-beta * log2 d): NaN for d < 0, as torch.pow
POW_075 = 1  # beta == 0.75 with fp32 accumulation: rsqrt and sqrt
POW_EVEN = 2  # even integer beta: |d|^-beta
POW_ODD = 3  # odd integer beta: sign(d) |d|^-beta
POW_ZERO = 4  # beta == 0: d^0 = 1

_FP32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------------
# device helpers
# ---------------------------------------------------------------------------------------------
@triton.jit
def _band_sum(acc, src, SRC_AT: tl.constexpr, DST_AT: tl.constexpr, LO: tl.constexpr,
              HI: tl.constexpr):
    """acc[o, r] + sum of src[w, r] over the w with LO <= (SRC_AT + w) - (DST_AT + o) <= HI.

    acc: [DST_W, R], src: [SRC_W, R]; positions are channel offsets from the rows' group start.
    """
    DST_W: tl.constexpr = acc.shape[0]
    SRC_W: tl.constexpr = src.shape[0]
    # Skip, at compile time, a piece that no window of this output piece reaches.
    if SRC_AT + SRC_W - 1 - DST_AT >= LO:
        if SRC_AT - (DST_AT + DST_W - 1) <= HI:
            o = tl.arange(0, DST_W)
            w = tl.arange(0, SRC_W)
            rel = (SRC_AT + w)[None, :] - (DST_AT + o)[:, None]
            band = (rel >= LO) & (rel <= HI)
            # -0.0 is the exact additive identity, so folded-away terms leave no add behind.
            acc = acc + tl.sum(tl.where(band[:, :, None], src[None, :, :], -0.0), axis=1)
    return acc


@triton.jit
def _load_piece(ptr, row_off, row_ok, c0, C, stride_c, AT: tl.constexpr, W: tl.constexpr,
                VALID_LO: tl.constexpr, VALID_HI: tl.constexpr, ACC: tl.constexpr):
    """Channels c0 + AT + w, w in [0, W), of each row, as a [W, R] tile of ACC, 0 outside
    [0, C) and outside the positions [VALID_LO, VALID_HI) (a compile-time trim of the padding
    of a halo piece to a power of two). Returns (values, in-bounds mask).

    row_off: [R] int64 element offsets of the rows' group start channel, without c0's own
    offset; c0: the group start channel, a scalar or a [1, R] tensor.
    """
    w = AT + tl.arange(0, W)
    c = c0 + w[:, None]
    ok = row_ok[None, :] & (c >= 0) & (c < C)
    if (VALID_LO > AT) or (VALID_HI < AT + W):
        ok = ok & ((w >= VALID_LO) & (w < VALID_HI))[:, None]
    v = tl.load(ptr + (row_off[None, :] + c.to(tl.int64) * stride_c), mask=ok, other=0.0)
    return v.to(ACC), ok


@triton.jit
def _rows(pid, C, S, G, V: tl.constexpr, BLOCK_R: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """This program's rows: (batch index n (scalar int64), spatial index s ([R] int64), valid
    rows [R], group start channel c0 (scalar, or [1, R] in the channels-last order))."""
    if CHANNELS_LAST:
        # rows q = s * G + g of one image: consecutive rows are consecutive V-channel vectors
        blocks = tl.cdiv(S * G, BLOCK_R)
        n = pid // blocks
        q = (pid % blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = q < S * G
        s = q // G
        c0 = ((q % G) * V)[None, :]
    else:
        # BLOCK_R consecutive spatial positions of one channel group. "% (S | 1)" is a no-op
        # on the valid rows (s < S <= S | 1) that hides their contiguity from the axis
        # analysis (see the module docstring): it derives the contiguity of a remainder from
        # the divisor's power-of-two divisibility, and S | 1 is odd.
        blocks = tl.cdiv(S, BLOCK_R)
        n = pid // (G * blocks)
        rest = pid % (G * blocks)
        c0 = (rest // blocks) * V
        s = (rest % blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = s < S
        s = s % (S | 1)
    return n.to(tl.int64), s.to(tl.int64), row_ok, c0


@triton.jit
def _param(hi, lo, ACC: tl.constexpr):
    """A host float passed as fp32 hi + lo (Triton passes Python floats as fp32): exact to
    ~2^-48 in fp64, the plain fp32 value otherwise."""
    if ACC == tl.float64:
        return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    else:
        return hi


@triton.jit
def _neg_pow(d, neg_beta, POW: tl.constexpr):
    """(d^-beta, d^(-beta-1)) for the pow mode POW (see the module constants)."""
    if POW == 1:
        r = tl.math.rsqrt(d)
        p = r * tl.sqrt(r)
        return p, p * (r * r)
    elif POW == 4:
        return tl.full(d.shape, 1.0, d.dtype), tl.fdiv(tl.full(d.shape, 1.0, d.dtype), d)
    elif POW == 0:
        p = tl.exp2(neg_beta * tl.log2(d))
        return p, tl.fdiv(p, d)
    else:
        p = tl.exp2(neg_beta * tl.log2(tl.abs(d)))
        if POW == 3:
            p = tl.where(d < 0, -p, p)
        return p, tl.fdiv(p, d)


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
# The first entry is the one the tests and the interpreter use; it is valid in both row orders.
# Few entries: each is a ~1 s compile the first time a shape is seen. One row per thread in
# NCHW (the first three); channels-last also tries 4 rows per thread (more loads in flight and
# the row arithmetic amortized over 32 channels instead of 8).
_CONFIGS = [
    triton.Config({"BLOCK_R": 128}, num_warps=4),
    triton.Config({"BLOCK_R": 64}, num_warps=2),
    triton.Config({"BLOCK_R": 256}, num_warps=8),
    triton.Config({"BLOCK_R": 512}, num_warps=4),
]
_KEY = ["C", "S", "V", "SIZE", "CHANNELS_LAST", "POW"]


def _prune(configs, named_args, **kwargs):
    """The NCHW row order holds one row per thread (more would spill at V = 32)."""
    channels_last = kwargs.get("CHANNELS_LAST", named_args.get("CHANNELS_LAST"))
    if channels_last:
        return configs
    kept = [c for c in configs if c.kwargs["BLOCK_R"] == 32 * c.num_warps]
    return kept or configs[:1]


@autotune(_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _lrn_fwd_kernel(
    # x, y: (N, C, S) views, any strides (fast when the channel or the spatial stride is 1)
    x_ptr, y_ptr,
    # sizes; G = cdiv(C, V) channel groups
    C, S, G,
    # strides, in elements
    sxn, sxc, sxs, syn, syc, sys,
    # d = k + coef * (sum of squares), y = x * d^neg_beta; each as fp32 hi + lo
    coef, coef_lo, k, k_lo, neg_beta, neg_beta_lo,
    # window; x halos of XL / XR channels, loaded as pieces of PXL / PXR (powers of 2, >= 1)
    SIZE: tl.constexpr, XL: tl.constexpr, XR: tl.constexpr, PXL: tl.constexpr,
    PXR: tl.constexpr,
    # row order, channels per row, pow mode, rows per program
    CHANNELS_LAST: tl.constexpr, V: tl.constexpr, POW: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """y = lrn(x)."""
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    B: tl.constexpr = SIZE // 2
    A: tl.constexpr = (SIZE - 1) // 2
    coef = _param(coef, coef_lo, ACC)
    k = _param(k, k_lo, ACC)
    neg_beta = _param(neg_beta, neg_beta_lo, ACC)
    n, s, row_ok, c0 = _rows(tl.program_id(0), C, S, G, V, BLOCK_R, CHANNELS_LAST)
    x_row = n * sxn + s * sxs

    xl, _ = _load_piece(x_ptr, x_row, row_ok, c0, C, sxc, -PXL, PXL, -XL, 0, ACC)
    xc, ok = _load_piece(x_ptr, x_row, row_ok, c0, C, sxc, 0, V, 0, V, ACC)
    xr, _ = _load_piece(x_ptr, x_row, row_ok, c0, C, sxc, V, PXR, V, V + XR, ACC)

    ssq = tl.full([V, BLOCK_R], -0.0, ACC)
    ssq = _band_sum(ssq, xl * xl, -PXL, 0, -B, A)
    ssq = _band_sum(ssq, xc * xc, 0, 0, -B, A)
    ssq = _band_sum(ssq, xr * xr, V, 0, -B, A)
    p, _ = _neg_pow(k + coef * ssq, neg_beta, POW)

    c = c0 + tl.arange(0, V)[:, None]
    y_off = (n * syn + s * sys)[None, :] + c.to(tl.int64) * syc
    tl.store(y_ptr + y_off, (xc * p).to(y_ptr.dtype.element_ty), mask=ok)


@autotune(_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _lrn_bwd_kernel(
    # x, dy, dx: (N, C, S) views, any strides (fast when they share a unit channel or spatial
    # stride)
    x_ptr, dy_ptr, dx_ptr,
    # sizes; G = cdiv(C, V) channel groups
    C, S, G,
    # strides, in elements
    sxn, sxc, sxs, sdyn, sdyc, sdys, sdxn, sdxc, sdxs,
    # d = k + coef * (sum of squares), d^neg_beta, grad_coef = 2 beta coef; as fp32 hi + lo
    coef, coef_lo, k, k_lo, neg_beta, neg_beta_lo, grad_coef, grad_coef_lo,
    # window; x halos XL / XR, t = dy*x*d^(-beta-1) halos TL / TR, as pieces of P* (powers of 2)
    SIZE: tl.constexpr, XL: tl.constexpr, XR: tl.constexpr, TL: tl.constexpr,
    TR: tl.constexpr, PXL: tl.constexpr, PXR: tl.constexpr, PTL: tl.constexpr,
    PTR: tl.constexpr,
    # row order, channels per row, pow mode, rows per program
    CHANNELS_LAST: tl.constexpr, V: tl.constexpr, POW: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """dx = (d lrn(x) / dx)^T dy, recomputing the normaliser from x."""
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    B: tl.constexpr = SIZE // 2
    A: tl.constexpr = (SIZE - 1) // 2
    coef = _param(coef, coef_lo, ACC)
    k = _param(k, k_lo, ACC)
    neg_beta = _param(neg_beta, neg_beta_lo, ACC)
    grad_coef = _param(grad_coef, grad_coef_lo, ACC)
    n, s, row_ok, c0 = _rows(tl.program_id(0), C, S, G, V, BLOCK_R, CHANNELS_LAST)
    x_row = n * sxn + s * sxs
    dy_row = n * sdyn + s * sdys

    # x over [-XL, V + XR): the squares reach B channels left, A right, of each t position
    xl, _ = _load_piece(x_ptr, x_row, row_ok, c0, C, sxc, -PXL, PXL, -XL, 0, ACC)
    xc, ok = _load_piece(x_ptr, x_row, row_ok, c0, C, sxc, 0, V, 0, V, ACC)
    xr, _ = _load_piece(x_ptr, x_row, row_ok, c0, C, sxc, V, PXR, V, V + XR, ACC)
    # dy over the t positions [-TL, V + TR)
    dyl, okl = _load_piece(dy_ptr, dy_row, row_ok, c0, C, sdyc, -PTL, PTL, -TL, 0, ACC)
    dyc, _ = _load_piece(dy_ptr, dy_row, row_ok, c0, C, sdyc, 0, V, 0, V, ACC)
    dyr, okr = _load_piece(dy_ptr, dy_row, row_ok, c0, C, sdyc, V, PTR, V, V + TR, ACC)
    sql = xl * xl
    sqc = xc * xc
    sqr = xr * xr

    # t on the centre. Masked explicitly: outside [0, C) x = dy = 0, but d^(-beta-1) is inf
    # when k = 0, and 0 * inf would leak NaN into the neighbours' sums.
    ssq = tl.full([V, BLOCK_R], -0.0, ACC)
    ssq = _band_sum(ssq, sql, -PXL, 0, -B, A)
    ssq = _band_sum(ssq, sqc, 0, 0, -B, A)
    ssq = _band_sum(ssq, sqr, V, 0, -B, A)
    pc, q = _neg_pow(k + coef * ssq, neg_beta, POW)
    tc = tl.where(ok, dyc * xc * q, 0.0)

    # t on the left halo; x there is a copy (a folded band) out of the left x piece
    xtl = _band_sum(tl.full([PTL, BLOCK_R], -0.0, ACC), xl, -PXL, -PTL, 0, 0)
    ssq = tl.full([PTL, BLOCK_R], -0.0, ACC)
    ssq = _band_sum(ssq, sql, -PXL, -PTL, -B, A)
    ssq = _band_sum(ssq, sqc, 0, -PTL, -B, A)
    ssq = _band_sum(ssq, sqr, V, -PTL, -B, A)
    _, q = _neg_pow(k + coef * ssq, neg_beta, POW)
    tl_ = tl.where(okl, dyl * xtl * q, 0.0)

    # t on the right halo
    xtr = _band_sum(tl.full([PTR, BLOCK_R], -0.0, ACC), xr, V, V, 0, 0)
    ssq = tl.full([PTR, BLOCK_R], -0.0, ACC)
    ssq = _band_sum(ssq, sql, -PXL, V, -B, A)
    ssq = _band_sum(ssq, sqc, 0, V, -B, A)
    ssq = _band_sum(ssq, sqr, V, V, -B, A)
    _, q = _neg_pow(k + coef * ssq, neg_beta, POW)
    tr = tl.where(okr, dyr * xtr * q, 0.0)

    # the sum of t over the reverse window [c - A, c + B]
    tsum = tl.full([V, BLOCK_R], -0.0, ACC)
    tsum = _band_sum(tsum, tl_, -PTL, 0, -A, B)
    tsum = _band_sum(tsum, tc, 0, 0, -A, B)
    tsum = _band_sum(tsum, tr, V, 0, -A, B)
    if POW == 4:
        dx = dyc  # beta = 0: y = x
    else:
        dx = dyc * pc - grad_coef * xc * tsum

    c = c0 + tl.arange(0, V)[:, None]
    dx_off = (n * sdxn + s * sdxs)[None, :] + c.to(tl.int64) * sdxc
    tl.store(dx_ptr + dx_off, dx.to(dx_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
# The launch plan depends only on shapes, strides, dtype and the layer's constants, which repeat
# every step: it is cached, so a call costs a few dictionary lookups on the host (rebuilding it
# costs ~100 us of Python on a slow CPU, as much as the kernel itself on a GPU).


@functools.lru_cache(maxsize=1024)
def _collapse(shape, stride):
    dims = [(n, st) for n, st in zip(shape[2:], stride[2:]) if n != 1]
    for (_, outer), (n, inner) in zip(dims, dims[1:]):
        if outer != inner * n:
            return None
    return dims[-1][1] if dims else 1


def spatial_stride(t: torch.Tensor):
    """The one stride of ``t``'s flattened spatial dims (2 and up), or None when they do not
    collapse to one stride."""
    return _collapse(t.shape, t.stride())


def flattenable(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a contiguous copy when its spatial dims cannot be viewed as one."""
    return t if spatial_stride(t) is not None else t.contiguous()


def output_like(x: torch.Tensor) -> torch.Tensor:
    """The result tensor for input ``x``: ``x``'s strides when it is dense (channels-last stays
    channels-last), torch's choice otherwise; always flattenable. Also the fake op's output."""
    return new_empty_like(flattenable(x))


def _views(shape, strides):
    """Sizes (N, C, S) and per-tensor strides (sn, sc, ss) of (N, C, *spatial) tensors of the
    given strides, with the batch folded into the spatial dim when every tensor allows it
    (always for dense channels-last): one long row space wastes no partial block per image."""
    n, c = shape[0], shape[1]
    s = math.prod(shape[2:])
    strides = [(st[0], st[1], _collapse(shape, st)) for st in strides]
    if n == 1 or s == 1 or all(sn == s * ss for sn, _, ss in strides):
        if n * s * c < 2**30:  # keeps the row indices (s * groups) well inside int32
            return (1, c, n * s), [(0, sc, ss if s > 1 else sn) for sn, sc, ss in strides]
    return (n, c, s), strides


def _pow_mode(beta: float, dtype: torch.dtype) -> int:
    if beta == 0.0:
        return POW_ZERO
    if beta == 0.75 and dtype != torch.float64:
        return POW_075
    if float(beta).is_integer():
        return POW_ODD if int(beta) % 2 else POW_EVEN
    return POW_GENERIC


def _split(v: float):
    """v as fp32 hi + lo (see _param); beyond fp32's range, hi alone (+-inf)."""
    hi = float(np.float32(v)) if abs(v) <= _FP32_MAX else math.copysign(math.inf, v)
    lo = float(np.float32(v - hi)) if math.isfinite(hi) else 0.0
    return hi, lo


def _pow2(v: int) -> int:
    return triton.next_power_of_2(max(v, 1))


@functools.lru_cache(maxsize=256)
def _plan(shape, dtype, strides, size, alpha, beta, k, backward):
    """(grid, runtime arguments after the pointers, constexpr arguments) of one launch."""
    (n, c, s), strides = _views(shape, strides)
    _, sc, ss = strides[0]
    channels_last = sc == 1 and c > 1 and ss != 1 and s > 1
    if channels_last:
        v = max(16 // dtype.itemsize, 1)  # one 16-byte vector per row
    else:
        v = 16 if dtype == torch.float64 else 32
    v = min(v, _pow2(c))
    g = triton.cdiv(c, v)
    if channels_last:
        def grid(meta):
            return (n * triton.cdiv(s * g, meta["BLOCK_R"]),)
    else:
        def grid(meta):
            return (n * g * triton.cdiv(s, meta["BLOCK_R"]),)
    b, a = size // 2, (size - 1) // 2
    params = (*_split(alpha / size), *_split(k), *_split(-beta))
    meta = dict(SIZE=size, CHANNELS_LAST=channels_last, V=v, POW=_pow_mode(beta, dtype))
    if backward:
        xh, t_l, t_r = min(a + b, c - 1), min(a, c - 1), min(b, c - 1)
        params += _split(2.0 * beta * alpha / size)
        meta.update(XL=xh, XR=xh, TL=t_l, TR=t_r, PXL=_pow2(xh), PXR=_pow2(xh), PTL=_pow2(t_l),
                    PTR=_pow2(t_r))
    else:
        xl, xr = min(b, c - 1), min(a, c - 1)
        meta.update(XL=xl, XR=xr, PXL=_pow2(xl), PXR=_pow2(xr))
    args = (c, s, g, *(st for tensor in strides for st in tensor), *params)
    return grid, args, meta


def lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Local response normalization of ``x`` (N, C, *spatial), as
    ``torch.nn.functional.local_response_norm``; the result keeps ``x``'s strides when ``x`` is
    dense."""
    x = flattenable(x)
    y = output_like(x)
    if x.numel() == 0:
        return y
    grid, args, meta = _plan(x.shape, x.dtype, (x.stride(), y.stride()), size, alpha, beta, k,
                             False)
    _lrn_fwd_kernel[grid](x, y, *args, **meta)
    return y


def lrn_backward(x: torch.Tensor, grad_out: torch.Tensor, size: int, alpha: float, beta: float,
                 k: float) -> torch.Tensor:
    """Gradient of :func:`lrn_forward` with respect to ``x``, given the gradient of its result;
    fast when ``x`` and ``grad_out`` share a layout."""
    x = flattenable(x)
    dy = flattenable(grad_out)
    dx = output_like(x)
    if x.numel() == 0:
        return dx
    grid, args, meta = _plan(x.shape, x.dtype, (x.stride(), dy.stride(), dx.stride()), size,
                             alpha, beta, k, True)
    _lrn_bwd_kernel[grid](x, dy, dx, *args, **meta)
    return dx
