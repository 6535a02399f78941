"""Local response normalization across channels: fused Triton forward and backward.

    d[c]  = k + alpha/size * sum_{c' in [c-B, c+A]} a[c']^2      B = size // 2, A = (size-1) // 2,
    b[c]  = a[c] * d[c]^-beta                                     channels outside [0, C) are 0
    da[c] = db[c] * d[c]^-beta
            - (2 alpha beta / size) * a[c] * sum_{c' in [c-A, c+B]} db[c'] * a[c'] * d[c']^(-beta-1)

Tensors are viewed as (N, C, S), S the flattened spatial dims, each with its own three strides.
The forward reads x once and writes y once; the backward reads x and dy once and writes dx once,
recomputing d from x. Each thread holds a row: V consecutive channels at one spatial position
plus the halo channels the windows reach, in registers, and the window sums are compile-time
bands over them (:func:`_band_sum`), so no neighbour is loaded twice by one thread. Two row
orders: channels-last (channel stride 1: a row is one 16-byte vector, consecutive threads take
consecutive vectors) and every other layout (V = 32 channels, consecutive threads take
consecutive spatial positions). docs/kernels/lrn.md gives the design and its measurements.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from fastalex.kernels._runtime import (
    autotune,
    fp32_parts,
    from_fp32_parts,
    new_empty_like,
    tl_accumulator,
)

# How the kernels raise the normaliser to -beta (the POW constexpr).
POW_GENERIC = tl.constexpr(0)  # d^-beta = exp2(-beta * log2 d): NaN for d < 0, as torch.pow
POW_075 = tl.constexpr(1)  # beta == 0.75, fp32 accumulation: r = rsqrt(d), d^-0.75 = r sqrt(r)
POW_EVEN = tl.constexpr(2)  # even integer beta: |d|^-beta
POW_ODD = tl.constexpr(3)  # odd integer beta: sign(d) |d|^-beta
POW_ZERO = tl.constexpr(4)  # beta == 0: d^0 = 1 and y = x


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
        # on the valid rows (s < S <= S | 1) that hides their contiguity from Triton's axis
        # analysis, which derives a remainder's contiguity from the divisor's power-of-two
        # divisibility (S | 1 is odd): seen contiguous, the rows would be vectorised several per
        # thread and moved to the one-row-per-thread layout through shared memory.
        blocks = tl.cdiv(S, BLOCK_R)
        n = pid // (G * blocks)
        rest = pid % (G * blocks)
        c0 = (rest // blocks) * V
        s = (rest % blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = s < S
        s = s % (S | 1)
    return n.to(tl.int64), s.to(tl.int64), row_ok, c0


@triton.jit
def _neg_pow(d, neg_beta, POW: tl.constexpr):
    """(d^-beta, d^(-beta-1)) in the pow mode POW."""
    if POW == POW_075:
        r = tl.math.rsqrt(d)
        p = r * tl.sqrt(r)
        return p, p * (r * r)
    elif POW == POW_ZERO:
        return tl.full(d.shape, 1.0, d.dtype), tl.fdiv(tl.full(d.shape, 1.0, d.dtype), d)
    elif POW == POW_GENERIC:
        p = tl.exp2(neg_beta * tl.log2(d))
        return p, tl.fdiv(p, d)
    else:
        # integer beta: torch.pow of a negative base is real, with the sign of an odd power
        p = tl.exp2(neg_beta * tl.log2(tl.abs(d)))
        if POW == POW_ODD:
            p = tl.where(d < 0, -p, p)
        return p, tl.fdiv(p, d)


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
# Launch configurations, the first being the one used when not autotuning; it is valid in both
# row orders. The other row order holds one row per thread (the first three entries: two would
# spill at V = 32); channels-last may also take 4 rows per thread.
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
    stride_xn, stride_xc, stride_xs, stride_yn, stride_yc, stride_ys,
    # d = k + coef * (sum of squares), y = x * d^neg_beta; each as three fp32 parts
    coef_hi, coef_mid, coef_lo, k_hi, k_mid, k_lo, neg_beta_hi, neg_beta_mid, neg_beta_lo,
    # window; x halos of XL / XR channels, loaded as pieces of PXL / PXR (powers of 2, >= 1)
    SIZE: tl.constexpr, XL: tl.constexpr, XR: tl.constexpr, PXL: tl.constexpr,
    PXR: tl.constexpr,
    # row order, channels per row, pow mode, accumulation type, rows per program
    CHANNELS_LAST: tl.constexpr, V: tl.constexpr, POW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """y = lrn(x)."""
    B: tl.constexpr = SIZE // 2
    A: tl.constexpr = (SIZE - 1) // 2
    coef = from_fp32_parts(coef_hi, coef_mid, coef_lo, ACC)
    k = from_fp32_parts(k_hi, k_mid, k_lo, ACC)
    neg_beta = from_fp32_parts(neg_beta_hi, neg_beta_mid, neg_beta_lo, ACC)
    n, s, row_ok, c0 = _rows(tl.program_id(0), C, S, G, V, BLOCK_R, CHANNELS_LAST)
    x_row = n * stride_xn + s * stride_xs

    xl, _ = _load_piece(x_ptr, x_row, row_ok, c0, C, stride_xc, -PXL, PXL, -XL, 0, ACC)
    xc, ok = _load_piece(x_ptr, x_row, row_ok, c0, C, stride_xc, 0, V, 0, V, ACC)
    xr, _ = _load_piece(x_ptr, x_row, row_ok, c0, C, stride_xc, V, PXR, V, V + XR, ACC)

    ssq = tl.full([V, BLOCK_R], -0.0, ACC)
    ssq = _band_sum(ssq, xl * xl, -PXL, 0, -B, A)
    ssq = _band_sum(ssq, xc * xc, 0, 0, -B, A)
    ssq = _band_sum(ssq, xr * xr, V, 0, -B, A)
    p, _ = _neg_pow(k + coef * ssq, neg_beta, POW)

    c = c0 + tl.arange(0, V)[:, None]
    y_off = (n * stride_yn + s * stride_ys)[None, :] + c.to(tl.int64) * stride_yc
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
    stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
    stride_dxn, stride_dxc, stride_dxs,
    # d = k + coef * (sum of squares), d^neg_beta, grad_coef = 2 beta coef; as three fp32 parts
    coef_hi, coef_mid, coef_lo, k_hi, k_mid, k_lo, neg_beta_hi, neg_beta_mid, neg_beta_lo,
    grad_coef_hi, grad_coef_mid, grad_coef_lo,
    # window; x halos XL / XR, t = dy*x*d^(-beta-1) halos TL / TR, as pieces of P* (powers of 2)
    SIZE: tl.constexpr, XL: tl.constexpr, XR: tl.constexpr, TL: tl.constexpr,
    TR: tl.constexpr, PXL: tl.constexpr, PXR: tl.constexpr, PTL: tl.constexpr,
    PTR: tl.constexpr,
    # row order, channels per row, pow mode, accumulation type, rows per program
    CHANNELS_LAST: tl.constexpr, V: tl.constexpr, POW: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """dx = (d lrn(x) / dx)^T dy, recomputing the normaliser from x."""
    B: tl.constexpr = SIZE // 2
    A: tl.constexpr = (SIZE - 1) // 2
    coef = from_fp32_parts(coef_hi, coef_mid, coef_lo, ACC)
    k = from_fp32_parts(k_hi, k_mid, k_lo, ACC)
    neg_beta = from_fp32_parts(neg_beta_hi, neg_beta_mid, neg_beta_lo, ACC)
    grad_coef = from_fp32_parts(grad_coef_hi, grad_coef_mid, grad_coef_lo, ACC)
    n, s, row_ok, c0 = _rows(tl.program_id(0), C, S, G, V, BLOCK_R, CHANNELS_LAST)
    x_row = n * stride_xn + s * stride_xs
    dy_row = n * stride_dyn + s * stride_dys

    # x over [-XL, V + XR): the squares reach B channels left, A right, of each t position
    xl, _ = _load_piece(x_ptr, x_row, row_ok, c0, C, stride_xc, -PXL, PXL, -XL, 0, ACC)
    xc, ok = _load_piece(x_ptr, x_row, row_ok, c0, C, stride_xc, 0, V, 0, V, ACC)
    xr, _ = _load_piece(x_ptr, x_row, row_ok, c0, C, stride_xc, V, PXR, V, V + XR, ACC)
    # dy over the t positions [-TL, V + TR)
    dyl, okl = _load_piece(dy_ptr, dy_row, row_ok, c0, C, stride_dyc, -PTL, PTL, -TL, 0, ACC)
    dyc, _ = _load_piece(dy_ptr, dy_row, row_ok, c0, C, stride_dyc, 0, V, 0, V, ACC)
    dyr, okr = _load_piece(dy_ptr, dy_row, row_ok, c0, C, stride_dyc, V, PTR, V, V + TR, ACC)
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
    if POW == POW_ZERO:
        dx = dyc  # y = x
    else:
        dx = dyc * pc - grad_coef * xc * tsum

    c = c0 + tl.arange(0, V)[:, None]
    dx_off = (n * stride_dxn + s * stride_dxs)[None, :] + c.to(tl.int64) * stride_dxc
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
    """The POW constexpr for ``beta``; the rsqrt form is fp32-accurate only."""
    if beta == 0.0:
        mode = POW_ZERO
    elif beta == 0.75 and dtype != torch.float64:
        mode = POW_075
    elif float(beta).is_integer():
        mode = POW_ODD if int(beta) % 2 else POW_EVEN
    else:
        mode = POW_GENERIC
    return mode.value


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
    params = (*fp32_parts(alpha / size), *fp32_parts(k), *fp32_parts(-beta))
    meta = dict(SIZE=size, CHANNELS_LAST=channels_last, V=v, POW=_pow_mode(beta, dtype),
                ACC=tl_accumulator(dtype))
    if backward:
        xh, t_l, t_r = min(a + b, c - 1), min(a, c - 1), min(b, c - 1)
        params += fp32_parts(2.0 * beta * alpha / size)
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
