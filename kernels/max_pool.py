"""2D max-pool: a forward that keeps a compact window-local arg-max, and a gather backward.

The forward writes ``y`` and, per output element, the position of the winning element inside its
window (``kh * KW + kw``) in the narrowest integer type that holds the window area (int8 for
AlexNet's 3x3: 1 byte per output against the 8 bytes of torch's int64 indices). The input is not
needed by the backward, which is a gather: every input element visits the outputs whose windows
cover it and adds the ``dy`` of those that chose it. No atomics, so the result is deterministic,
and the sum runs over outputs in torch's order (``oh``, then ``ow``, ascending).

Arg-max rule, as torch's CPU and CUDA kernels: scan the window row-major, take an element when
``v > best or isnan(v)``; the first valid element is always taken. So ties go to the first
maximum, a NaN wins over numbers and the last NaN wins over earlier ones; padding never wins.

Tiling (both kernels): a 2D tile of ``BLOCK_R`` rows by ``BLOCK_Q`` columns of the tensor the
kernel writes, with the contiguous axis of its layout as the columns so that loads and stores
coalesce: for NCHW the rows are ``(n, c, h)`` and the columns ``w``; for channels-last the rows
are ``(n, h, w)`` and the columns ``c``. Inputs are read through their strides, so any layout
works; only speed depends on the layout matching.
"""

import torch
import triton
import triton.language as tl

from fastalex.kernels._runtime import autotune, new_empty, tl_accumulator

# The launcher sizes the column block to the contiguous axis (AlexNet: 96 or 256 channels for
# channels-last, widths 13, 27, 55 for NCHW; capped at _MAX_BLOCK_Q, wider ones span several
# programs); the configurations choose how many rows go with it and the warps, pruned to tiles of
# _MIN_TILE.._MAX_TILE elements and at most _MAX_PER_THREAD per thread. ptxas for sm_90 (3x3/2):
# 8 fp32 elements per thread take 64 registers channels-last, 112-128 NCHW (per-element 64-bit
# addresses); 16 per thread take 166-254 and 32 spill.
# The first configuration is the one tests use: the interpreter's cost is per program and per
# operation far more than per element, so fewer, larger tiles run the tests faster.
_CONFIGS = [
    triton.Config({"BLOCK_R": block_r}, num_warps=num_warps)
    for num_warps in (4, 8)
    for block_r in (32, 4, 8, 16, 64, 128, 256)
]
_MAX_BLOCK_Q = 128
_MIN_TILE, _MAX_TILE, _MAX_PER_THREAD = 512, 4096, 8
_FWD_KEY = ["n_rows", "n_cols", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW", "STORE_ARG",
            "CHANNELS_LAST", "BLOCK_Q"]
_BWD_KEY = ["n_rows", "n_cols", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW",
            "CHANNELS_LAST", "BLOCK_Q"]


def _prune(configs, named_args, **kwargs):
    """Keep the configurations whose tile fits (see _CONFIGS); at least one."""
    block_q = kwargs.get("BLOCK_Q", named_args.get("BLOCK_Q"))

    def fits(config):
        tile = config.kwargs["BLOCK_R"] * block_q
        return _MIN_TILE <= tile <= _MAX_TILE and tile <= _MAX_PER_THREAD * 32 * config.num_warps

    return [c for c in configs if fits(c)] or list(configs[:1])


# Sizes are not specialised on (fewer compiled variants across shapes); strides and n_cols are,
# since their divisibility by 16 is what lets channels-last loads and stores vectorise.
_SIZES = ["C", "H", "W", "OH", "OW", "n_rows"]
# Row indices switch to int64 division only when they could pass 2^31 (int64 division costs
# several times int32's); offsets into the tensors are always computed in int64.
_INT32_LIMIT = 2**31 - 1 - 4096
# Unroll up to this many taps (forward) or candidate outputs (backward); beyond it a loop keeps
# the compile time bounded for large windows.
_MAX_UNROLL = 128


@triton.jit
def _tile(n_rows, n_cols, ROWS_INT64: tl.constexpr, BLOCK_R: tl.constexpr,
          BLOCK_Q: tl.constexpr):
    """This program's [BLOCK_R, BLOCK_Q] tile of the (rows, columns) grid: row and column
    indices (rows int64 when ROWS_INT64) and the in-bounds mask."""
    pid = tl.program_id(0)
    n_q = tl.cdiv(n_cols, BLOCK_Q)
    pid_r = pid // n_q
    pid_q = pid % n_q
    if ROWS_INT64:
        rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    else:
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return rows, cols, mask


@triton.jit
def _fwd_tap(best, arg, x_ptr, x_base, ih0, iw0, mask, H, W, sx_h, sx_w, k,
             KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, ACC: tl.constexpr):
    """Fold tap ``k`` (row-major in the window) into the running max and arg-max."""
    ih = ih0 + (k // KW) * DH
    iw = iw0 + (k % KW) * DW
    # Row/column terms are combined before the 2D add: channels-last keeps them per row.
    ok = mask & ((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
    v = tl.load(x_ptr + (x_base + (ih * sx_h + iw * sx_w)), mask=ok,
                other=float("-inf")).to(ACC)
    # torch's rule (v > best or isnan(v)); arg < 0 takes the first valid element, so a window
    # of -inf points at its first element inside the input, as torch's does.
    take = ok & ((v > best) | (v != v) | (arg < 0))
    return tl.where(take, v, best), tl.where(take, k, arg)


@triton.jit(do_not_specialize=_SIZES)
def _max_pool2d_fwd_kernel(
    # Pointers: x (N, C, H, W), any strides; y and arg (N, C, OH, OW), one shared layout, arg
    # holding the window-local arg-max kh * KW + kw (int8/int16/int32; -1 if the window has no
    # element inside the input).
    x_ptr, y_ptr, arg_ptr,
    # Sizes; the tile grid covers n_rows x n_cols (see the module docstring).
    C, H, W, OH, OW, n_rows, n_cols,
    # Strides in elements: x, then y (which arg shares).
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_h, sy_w,
    # Window, compile-time: the taps unroll and divisions by the stride become shifts.
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    # Options: write arg (skipped when no gradient is needed), compare in ACC (fp32, or fp64),
    # unroll the taps (small windows) or loop over them (large ones: bounded compile time).
    STORE_ARG: tl.constexpr, ACC: tl.constexpr, UNROLL: tl.constexpr,
    # Tiling.
    CHANNELS_LAST: tl.constexpr, ROWS_INT64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """y[n, c, oh, ow] = max over the window of x; arg = where in the window it was."""
    rows, cols, mask = _tile(n_rows, n_cols, ROWS_INT64, BLOCK_R, BLOCK_Q)

    if CHANNELS_LAST:
        # rows (n, oh, ow), columns c: every tap loads BLOCK_Q contiguous channels.
        ow = rows % OW
        t = rows // OW
        oh = (t % OH).to(tl.int64)
        n = (t // OH).to(tl.int64)
        ow = ow.to(tl.int64)
        c = cols.to(tl.int64)
        ih0 = (oh * SH - PH)[:, None]
        iw0 = (ow * SW - PW)[:, None]
        x_base = (n * sx_n)[:, None] + (c * sx_c)[None, :]
        y_off = (n * sy_n + oh * sy_h + ow * sy_w)[:, None] + (c * sy_c)[None, :]
    else:
        # rows (n, c, oh), columns ow: consecutive rows share input rows (L1 hits) and each
        # tap reads a row segment at stride SW.
        oh = rows % OH
        nc = rows // OH
        c = (nc % C).to(tl.int64)
        n = (nc // C).to(tl.int64)
        oh = oh.to(tl.int64)
        ow = cols.to(tl.int64)
        ih0 = (oh * SH - PH)[:, None]
        iw0 = (ow * SW - PW)[None, :]
        x_base = (n * sx_n + c * sx_c)[:, None]
        y_off = (n * sy_n + c * sy_c + oh * sy_h)[:, None] + (ow * sy_w)[None, :]

    best = tl.full([BLOCK_R, BLOCK_Q], float("-inf"), ACC)
    arg = tl.full([BLOCK_R, BLOCK_Q], -1, tl.int32)
    if UNROLL:
        for k in tl.static_range(KH * KW):
            best, arg = _fwd_tap(best, arg, x_ptr, x_base, ih0, iw0, mask, H, W, sx_h, sx_w, k,
                                 KW, DH, DW, ACC)
    else:
        for k in range(KH * KW):
            best, arg = _fwd_tap(best, arg, x_ptr, x_base, ih0, iw0, mask, H, W, sx_h, sx_w, k,
                                 KW, DH, DW, ACC)

    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_ARG:
        tl.store(arg_ptr + y_off, arg.to(arg_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _covering(i, j, K: tl.constexpr, S: tl.constexpr, P: tl.constexpr, D: tl.constexpr,
              NJ: tl.constexpr, O):
    """Along one axis: the j-th output (ascending) whose window may cover input position i,
    the tap k by which it does, and whether it really does.

    Dilation 1: the covering outputs are consecutive, at most cdiv(K, S) of them, ending at
    (i + P) // S. Dilation > 1: try each tap k (from the last, so outputs ascend) and keep those
    whose offset is a multiple of the stride.
    """
    if D == 1:
        o = (i + P) // S - (NJ - 1 - j)  # i + P >= 0: // is floor division here
        k = i + P - o * S
        ok = (o >= 0) & (o < O) & (k < K)
    else:
        k = i * 0 + (K - 1 - j)  # a tensor like the D == 1 branch's, whatever j is
        t = i + P - k * D
        o = tl.maximum(t, 0) // S
        ok = (t >= 0) & (t % S == 0) & (o < O)
    return o.to(tl.int64), k, ok


@triton.jit
def _bwd_tap(acc, dy_ptr, arg_ptr, g_base, a_base, ih, iw, mask, OH, OW,
             sg_h, sg_w, sa_h, sa_w, jh, jw,
             KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
             PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
             NJH: tl.constexpr, NJW: tl.constexpr, ACC: tl.constexpr):
    """Add dy of output candidate (jh, jw) where its arg-max is this input element."""
    oh, kh, ok_h = _covering(ih, jh, KH, SH, PH, DH, NJH, OH)
    ow, kw, ok_w = _covering(iw, jw, KW, SW, PW, DW, NJW, OW)
    ok = mask & (ok_h & ok_w)
    a = tl.load(arg_ptr + (a_base + (oh * sa_h + ow * sa_w)), mask=ok, other=-1)
    # dy is loaded under `ok`, not under the hit test: a mask that varies along the channels
    # would turn channels-last's vector loads into scalar ones (and wait on the arg load); the
    # sectors are fetched either way, and the neighbours' candidates hit in L1.
    g = tl.load(dy_ptr + (g_base + (oh * sg_h + ow * sg_w)), mask=ok, other=0.0)
    return acc + tl.where(a == kh * KW + kw, g.to(ACC), 0.0)


@triton.jit(do_not_specialize=_SIZES)
def _max_pool2d_bwd_kernel(
    # Pointers: dy (N, C, OH, OW), any strides; arg (N, C, OH, OW) from the forward, any
    # strides; dx (N, C, H, W), written in full (zero where no window chose the element).
    dy_ptr, arg_ptr, dx_ptr,
    # Sizes; the tile grid covers n_rows x n_cols of dx (see the module docstring).
    C, H, W, OH, OW, n_rows, n_cols,
    # Strides in elements: dy, arg, dx.
    sg_n, sg_c, sg_h, sg_w,
    sa_n, sa_c, sa_h, sa_w,
    sx_n, sx_c, sx_h, sx_w,
    # Window, compile-time as in the forward; NJH x NJW candidate outputs per input element.
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    NJH: tl.constexpr, NJW: tl.constexpr,
    # Accumulation type (fp32, or fp64 for fp64); unroll the candidates or loop over them.
    ACC: tl.constexpr, UNROLL: tl.constexpr,
    # Tiling.
    CHANNELS_LAST: tl.constexpr, ROWS_INT64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """dx[n, c, ih, iw] = sum of dy over the outputs whose arg points at (ih, iw), in torch's
    order (oh, then ow, ascending)."""
    rows, cols, mask = _tile(n_rows, n_cols, ROWS_INT64, BLOCK_R, BLOCK_Q)

    if CHANNELS_LAST:
        # rows (n, ih, iw), columns c.
        iw = rows % W
        t = rows // W
        ih = t % H
        n = (t // H).to(tl.int64)
        c = cols.to(tl.int64)
        g_base = (n * sg_n)[:, None] + (c * sg_c)[None, :]
        a_base = (n * sa_n)[:, None] + (c * sa_c)[None, :]
        x_off = (n * sx_n + ih.to(tl.int64) * sx_h + iw.to(tl.int64) * sx_w)[:, None] \
            + (c * sx_c)[None, :]
        ih = ih[:, None]
        iw = iw[:, None]
    else:
        # rows (n, c, ih), columns iw.
        ih = rows % H
        nc = rows // H
        c = (nc % C).to(tl.int64)
        n = (nc // C).to(tl.int64)
        iw = cols
        g_base = (n * sg_n + c * sg_c)[:, None]
        a_base = (n * sa_n + c * sa_c)[:, None]
        x_off = (n * sx_n + c * sx_c + ih.to(tl.int64) * sx_h)[:, None] \
            + (iw.to(tl.int64) * sx_w)[None, :]
        ih = ih[:, None]
        iw = iw[None, :]

    acc = tl.zeros([BLOCK_R, BLOCK_Q], ACC)
    if UNROLL:
        for jh in tl.static_range(NJH):
            for jw in tl.static_range(NJW):
                acc = _bwd_tap(acc, dy_ptr, arg_ptr, g_base, a_base, ih, iw, mask, OH, OW,
                               sg_h, sg_w, sa_h, sa_w, jh, jw, KH, KW, SH, SW, PH, PW, DH, DW,
                               NJH, NJW, ACC)
    else:
        for jh in range(NJH):
            for jw in range(NJW):
                acc = _bwd_tap(acc, dy_ptr, arg_ptr, g_base, a_base, ih, iw, mask, OH, OW,
                               sg_h, sg_w, sa_h, sa_w, jh, jw, KH, KW, SH, SW, PH, PW, DH, DW,
                               NJH, NJW, ACC)

    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=mask)


_fwd = autotune(_CONFIGS, key=_FWD_KEY, prune_configs_by={"early_config_prune": _prune})(
    _max_pool2d_fwd_kernel)
_bwd = autotune(_CONFIGS, key=_BWD_KEY, prune_configs_by={"early_config_prune": _prune})(
    _max_pool2d_bwd_kernel)


def index_dtype(kernel_area: int) -> torch.dtype:
    """The narrowest integer type holding window positions 0 .. kernel_area - 1 (and -1)."""
    if kernel_area <= 127:
        return torch.int8
    if kernel_area <= 32767:
        return torch.int16
    return torch.int32


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _grid(rows: int, cols: int, block_q: int):
    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_R"]) * triton.cdiv(cols, block_q),)

    return grid


def max_pool2d_forward(
    x: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    out_h: int,
    out_w: int,
    channels_last: bool,
    with_arg: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-pool a 4D ``x`` (any strides) into ``y`` (N, C, out_h, out_w) and ``arg``.

    ``y`` and ``arg`` are channels-last when ``channels_last`` else contiguous; ``arg`` holds
    the window-local arg-max (:func:`index_dtype` of the window area), or is an empty tensor
    when ``with_arg`` is False (inference: nothing to backpropagate).
    """
    N, C, H, W = x.shape
    fmt = _memory_format(channels_last)
    shape = (N, C, out_h, out_w)
    y = new_empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    arg_dtype = index_dtype(kernel_size[0] * kernel_size[1])
    arg = new_empty(shape if with_arg else (0,), dtype=arg_dtype, device=x.device,
                    memory_format=fmt if with_arg else torch.contiguous_format)
    if y.numel() == 0:
        return y, arg
    rows, cols = (N * out_h * out_w, C) if channels_last else (N * C * out_h, out_w)
    block_q = min(triton.next_power_of_2(cols), _MAX_BLOCK_Q)
    _fwd[_grid(rows, cols, block_q)](
        x, y, arg if with_arg else y,
        C, H, W, out_h, out_w, rows, cols,
        *x.stride(),
        *y.stride(),
        KH=kernel_size[0], KW=kernel_size[1], SH=stride[0], SW=stride[1],
        PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
        STORE_ARG=with_arg, ACC=tl_accumulator(x.dtype),
        UNROLL=kernel_size[0] * kernel_size[1] <= _MAX_UNROLL,
        CHANNELS_LAST=channels_last, ROWS_INT64=rows > _INT32_LIMIT, BLOCK_Q=block_q,
    )
    return y, arg


def max_pool2d_backward(
    grad_output: torch.Tensor,
    arg: torch.Tensor,
    in_h: int,
    in_w: int,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    channels_last: bool,
) -> torch.Tensor:
    """Gradient (N, C, in_h, in_w) of the input, from ``grad_output`` and the forward's ``arg``
    (both (N, C, OH, OW), any strides); channels-last when ``channels_last`` else contiguous."""
    N, C, OH, OW = arg.shape
    grad_input = new_empty((N, C, in_h, in_w), dtype=grad_output.dtype,
                           device=grad_output.device, memory_format=_memory_format(channels_last))
    if grad_input.numel() == 0:
        return grad_input
    rows, cols = (N * in_h * in_w, C) if channels_last else (N * C * in_h, in_w)
    block_q = min(triton.next_power_of_2(cols), _MAX_BLOCK_Q)
    # Candidate outputs per input element along each axis (see _covering).
    njh = triton.cdiv(kernel_size[0], stride[0]) if dilation[0] == 1 else kernel_size[0]
    njw = triton.cdiv(kernel_size[1], stride[1]) if dilation[1] == 1 else kernel_size[1]
    _bwd[_grid(rows, cols, block_q)](
        grad_output, arg, grad_input,
        C, in_h, in_w, OH, OW, rows, cols,
        *grad_output.stride(),
        *arg.stride(),
        *grad_input.stride(),
        KH=kernel_size[0], KW=kernel_size[1], SH=stride[0], SW=stride[1],
        PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
        NJH=njh, NJW=njw,
        ACC=tl_accumulator(grad_output.dtype), UNROLL=njh * njw <= _MAX_UNROLL,
        CHANNELS_LAST=channels_last, ROWS_INT64=rows > _INT32_LIMIT, BLOCK_Q=block_q,
    )
    return grad_input
