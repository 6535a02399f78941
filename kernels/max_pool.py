"""2D max-pool: a forward that keeps a compact window-local arg-max, and a gather backward.

The forward writes ``y`` and, per output element, the position of the winning element inside its
window (``kh * KW + kw``) in the narrowest integer type that holds the window area (int8 for
AlexNet's 3x3: 1 byte per output against the 8 bytes of torch's int64 indices). On request it
also writes torch's int64 indices (the winner's flat position ``ih * W + iw`` in its input
plane), derived from that arg-max. The input is not needed by the backward, which is a gather:
every input element visits the outputs whose windows cover it and adds the ``dy`` of those that
chose it. No atomics, so the result is deterministic, and the sum runs over outputs in torch's
order (``oh``, then ``ow``, ascending).

Arg-max rule, as torch's CPU and CUDA kernels: scan the window row-major, take an element when
``v > best or isnan(v)``; the first valid element is always taken. So ties go to the first
maximum, a NaN wins over numbers and the last NaN wins over earlier ones; padding never wins.

Tiling (both kernels): a 2D tile of ``BLOCK_R`` rows by ``BLOCK_Q`` columns of the tensor the
kernel writes, with the contiguous axis of its layout as the columns so that loads and stores
coalesce: for NCHW the rows are ``(n, c, h)`` and the columns ``w``; for channels-last the rows
are ``(n, h, w)`` and the columns ``c``. Inputs are read through their strides, so any layout
works; only speed depends on the layout matching.

docs/kernels/max_pool.md gives the design and the memory-traffic floors.
"""

import torch
import triton
import triton.language as tl

from fastalex.kernels._runtime import AUTOTUNE, INT32_LIMIT, new_empty, tl_accumulator

# The launcher sizes the column block to the contiguous axis (capped at _MAX_BLOCK_Q: wider ones
# span several programs); the configurations choose how many rows go with it and the warps,
# pruned to tiles of _MIN_TILE.._MAX_TILE elements and at most _MAX_PER_THREAD per thread (more
# spill: 32 per thread spill over 10 KB). Without autotuning the first that fits runs: the
# largest such tile on 4 warps.
_CONFIGS = [
    triton.Config({"BLOCK_R": block_r}, num_warps=num_warps)
    for num_warps in (4, 8)
    for block_r in (256, 128, 64, 32, 16, 8, 4)
]
_MAX_BLOCK_Q = 128
_MIN_TILE, _MAX_TILE, _MAX_PER_THREAD = 512, 4096, 8
_FWD_KEY = ["n_rows", "n_cols", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW", "STORE_ARG",
            "STORE_INDEX", "CHANNELS_LAST", "BLOCK_Q"]
_BWD_KEY = ["n_rows", "n_cols", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW",
            "CHANNELS_LAST", "BLOCK_Q"]


def fitting(configs, block_q: int) -> list:
    """The configurations whose tile fits with columns of ``block_q`` (see _CONFIGS); the first
    configuration when none does."""

    def fits(config):
        tile = config.kwargs["BLOCK_R"] * block_q
        return _MIN_TILE <= tile <= _MAX_TILE and tile <= _MAX_PER_THREAD * 32 * config.num_warps

    return [c for c in configs if fits(c)] or list(configs[:1])


def _prune(configs, named_args, **kwargs):
    """What the autotuners choose among: every fitting configuration."""
    return fitting(configs, kwargs.get("BLOCK_Q", named_args.get("BLOCK_Q")))


# Sizes are not specialised on (fewer compiled variants across shapes); strides and n_cols are,
# since their divisibility by 16 is what lets channels-last loads and stores vectorise.
_SIZES = ["C", "H", "W", "OH", "OW", "n_rows"]
# Row indices switch to int64 division only when they could pass 2^31 (int64 division costs
# several times int32's), with a block's margin; offsets into the tensors are always int64.
_ROWS_INT32_LIMIT = INT32_LIMIT - 1 - 4096
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
def _fwd_tap(best, arg, x_ptr, x_base, ih0, iw0, mask, H, W, stride_xh, stride_xw, k,
             KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, ACC: tl.constexpr):
    """Fold tap ``k`` (row-major in the window) into the running max and arg-max."""
    ih = ih0 + (k // KW) * DH
    iw = iw0 + (k % KW) * DW
    # Row/column terms are combined before the 2D add: channels-last keeps them per row.
    ok = mask & ((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
    v = tl.load(x_ptr + (x_base + (ih * stride_xh + iw * stride_xw)), mask=ok,
                other=float("-inf")).to(ACC)
    # torch's rule (v > best or isnan(v)); arg < 0 takes the first valid element, so a window
    # of -inf points at its first element inside the input, as torch's does.
    take = ok & ((v > best) | (v != v) | (arg < 0))
    return tl.where(take, v, best), tl.where(take, k, arg)


@triton.jit
def _first_inside(i0, D: tl.constexpr):
    """The first tap position i0 + j * D (j >= 0) that is >= 0: where torch's window starts."""
    return i0 + tl.cdiv(tl.maximum(-i0, 0), D) * D


@triton.jit
def _flat_index(arg, ih0, iw0, W, KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr):
    """torch's int64 index of each window's winner, ih * W + iw, from the window-local arg-max.
    A window with no element inside the input (arg -1, output -inf) gets torch's value for it
    too: its first tap row and column moved inside by whole dilation steps."""
    a = tl.maximum(arg, 0)
    ih = tl.where(arg >= 0, ih0 + (a // KW) * DH, _first_inside(ih0, DH))
    iw = tl.where(arg >= 0, iw0 + (a % KW) * DW, _first_inside(iw0, DW))
    return ih * W + iw


@triton.jit(do_not_specialize=_SIZES)
def _max_pool2d_fwd_kernel(
    # Pointers: x (N, C, H, W), any strides; y, arg and index (N, C, OH, OW), one shared layout,
    # arg holding the window-local arg-max kh * KW + kw (int8/int16/int32; -1 if the window has
    # no element inside the input), index torch's int64 indices.
    x_ptr, y_ptr, arg_ptr, index_ptr,
    # Sizes; the tile grid covers n_rows x n_cols (see the module docstring).
    C, H, W, OH, OW, n_rows, n_cols,
    # Strides in elements: x, then y (which arg and index share).
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    # Window, compile-time: the taps unroll and divisions by the stride become shifts.
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    # Outputs besides y: arg (for a backward), index (asked for by return_indices).
    STORE_ARG: tl.constexpr, STORE_INDEX: tl.constexpr,
    # Compare in ACC (fp32, or fp64); unroll the taps (small windows) or loop over them (large
    # ones: bounded compile time).
    ACC: tl.constexpr, UNROLL: tl.constexpr,
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
        x_base = (n * stride_xn)[:, None] + (c * stride_xc)[None, :]
        y_off = (n * stride_yn + oh * stride_yh + ow * stride_yw)[:, None] \
            + (c * stride_yc)[None, :]
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
        x_base = (n * stride_xn + c * stride_xc)[:, None]
        y_off = (n * stride_yn + c * stride_yc + oh * stride_yh)[:, None] \
            + (ow * stride_yw)[None, :]

    best = tl.full([BLOCK_R, BLOCK_Q], float("-inf"), ACC)
    arg = tl.full([BLOCK_R, BLOCK_Q], -1, tl.int32)
    if UNROLL:
        for k in tl.static_range(KH * KW):
            best, arg = _fwd_tap(best, arg, x_ptr, x_base, ih0, iw0, mask, H, W, stride_xh,
                                 stride_xw, k, KW, DH, DW, ACC)
    else:
        for k in range(KH * KW):
            best, arg = _fwd_tap(best, arg, x_ptr, x_base, ih0, iw0, mask, H, W, stride_xh,
                                 stride_xw, k, KW, DH, DW, ACC)

    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_ARG:
        tl.store(arg_ptr + y_off, arg.to(arg_ptr.dtype.element_ty), mask=mask)
    if STORE_INDEX:
        tl.store(index_ptr + y_off, _flat_index(arg, ih0, iw0, W, KW, DH, DW), mask=mask)


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
             stride_dyh, stride_dyw, stride_argh, stride_argw, jh, jw,
             KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
             PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
             NJH: tl.constexpr, NJW: tl.constexpr, ACC: tl.constexpr):
    """Add dy of output candidate (jh, jw) where its arg-max is this input element."""
    oh, kh, ok_h = _covering(ih, jh, KH, SH, PH, DH, NJH, OH)
    ow, kw, ok_w = _covering(iw, jw, KW, SW, PW, DW, NJW, OW)
    ok = mask & (ok_h & ok_w)
    a = tl.load(arg_ptr + (a_base + (oh * stride_argh + ow * stride_argw)), mask=ok, other=-1)
    # dy is loaded under `ok`, not under the hit test: a mask that varies along the channels
    # would turn channels-last's vector loads into scalar ones (and wait on the arg load); the
    # sectors are fetched either way, and the neighbours' candidates hit in L1.
    g = tl.load(dy_ptr + (g_base + (oh * stride_dyh + ow * stride_dyw)), mask=ok, other=0.0)
    return acc + tl.where(a == kh * KW + kw, g.to(ACC), 0.0)


@triton.jit(do_not_specialize=_SIZES)
def _max_pool2d_bwd_kernel(
    # Pointers: dy (N, C, OH, OW), any strides; arg (N, C, OH, OW) from the forward, any
    # strides; dx (N, C, H, W), written in full (zero where no window chose the element).
    dy_ptr, arg_ptr, dx_ptr,
    # Sizes; the tile grid covers n_rows x n_cols of dx (see the module docstring).
    C, H, W, OH, OW, n_rows, n_cols,
    # Strides in elements: dy, arg, dx.
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_argn, stride_argc, stride_argh, stride_argw,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
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
        g_base = (n * stride_dyn)[:, None] + (c * stride_dyc)[None, :]
        a_base = (n * stride_argn)[:, None] + (c * stride_argc)[None, :]
        x_off = (n * stride_dxn + ih.to(tl.int64) * stride_dxh
                 + iw.to(tl.int64) * stride_dxw)[:, None] \
            + (c * stride_dxc)[None, :]
        ih = ih[:, None]
        iw = iw[:, None]
    else:
        # rows (n, c, ih), columns iw.
        ih = rows % H
        nc = rows // H
        c = (nc % C).to(tl.int64)
        n = (nc // C).to(tl.int64)
        iw = cols
        g_base = (n * stride_dyn + c * stride_dyc)[:, None]
        a_base = (n * stride_argn + c * stride_argc)[:, None]
        x_off = (n * stride_dxn + c * stride_dxc + ih.to(tl.int64) * stride_dxh)[:, None] \
            + (iw.to(tl.int64) * stride_dxw)[None, :]
        ih = ih[:, None]
        iw = iw[None, :]

    acc = tl.zeros([BLOCK_R, BLOCK_Q], ACC)
    if UNROLL:
        for jh in tl.static_range(NJH):
            for jw in tl.static_range(NJW):
                acc = _bwd_tap(acc, dy_ptr, arg_ptr, g_base, a_base, ih, iw, mask, OH, OW,
                               stride_dyh, stride_dyw, stride_argh, stride_argw, jh, jw,
                               KH, KW, SH, SW, PH, PW, DH, DW, NJH, NJW, ACC)
    else:
        for jh in range(NJH):
            for jw in range(NJW):
                acc = _bwd_tap(acc, dy_ptr, arg_ptr, g_base, a_base, ih, iw, mask, OH, OW,
                               stride_dyh, stride_dyw, stride_argh, stride_argw, jh, jw,
                               KH, KW, SH, SW, PH, PW, DH, DW, NJH, NJW, ACC)

    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=mask)


# Autotuners over every configuration; without autotuning, _launch picks one per column block.
_fwd = triton.autotune(_CONFIGS, key=_FWD_KEY, prune_configs_by={"early_config_prune": _prune})(
    _max_pool2d_fwd_kernel)
_bwd = triton.autotune(_CONFIGS, key=_BWD_KEY, prune_configs_by={"early_config_prune": _prune})(
    _max_pool2d_bwd_kernel)


def _launch(tuner, grid, block_q: int, *args, **meta) -> None:
    """Launch ``tuner``'s kernel: autotuned, or else in the first of its configurations that
    fits ``block_q`` columns. The right tile depends on the column block (the first entry alone
    spills at 128 columns), and the choice is made here rather than by the autotuner, which in
    some Triton versions benchmarks even a single remaining configuration."""
    if AUTOTUNE:
        tuner[grid](*args, BLOCK_Q=block_q, **meta)
    else:
        config = fitting(tuner.configs, block_q)[0]
        tuner.fn[grid](*args, BLOCK_Q=block_q, **meta, **config.all_kwargs())


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


def forward_outputs(x: torch.Tensor, kernel_size: list[int], out_h: int, out_w: int,
                    channels_last: bool, with_arg: bool, with_index: bool):
    """The (y, arg, index) tensors :func:`max_pool2d_forward` returns for ``x``, unwritten: each
    (N, C, out_h, out_w), channels-last when ``channels_last`` else contiguous; ``arg`` and
    ``index`` empty (0,) tensors when not asked for. Also the ops' fake (meta) function."""
    fmt = _memory_format(channels_last)
    shape = (x.shape[0], x.shape[1], out_h, out_w)

    def alloc(wanted, dtype):
        return new_empty(shape if wanted else (0,), dtype=dtype, device=x.device,
                         memory_format=fmt if wanted else torch.contiguous_format)

    y = alloc(True, x.dtype)
    arg = alloc(with_arg, index_dtype(kernel_size[0] * kernel_size[1]))
    return y, arg, alloc(with_index, torch.int64)


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
    with_index: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Max-pool a 4D ``x`` (any strides) into ``y`` (N, C, out_h, out_w), ``arg`` and ``index``.

    ``arg`` holds the window-local arg-max (:func:`index_dtype` of the window area), written
    only ``with_arg`` (a backward will follow); ``index`` torch's int64 indices, written only
    ``with_index``; each is an empty tensor otherwise (see :func:`forward_outputs`).
    """
    N, C, H, W = x.shape
    y, arg, index = forward_outputs(x, kernel_size, out_h, out_w, channels_last, with_arg,
                                    with_index)
    if y.numel() == 0:
        return y, arg, index
    rows, cols = (N * out_h * out_w, C) if channels_last else (N * C * out_h, out_w)
    block_q = min(triton.next_power_of_2(cols), _MAX_BLOCK_Q)
    _launch(_fwd, _grid(rows, cols, block_q), block_q,
        x, y, arg if with_arg else y, index if with_index else y,
        C, H, W, out_h, out_w, rows, cols,
        *x.stride(),
        *y.stride(),
        KH=kernel_size[0], KW=kernel_size[1], SH=stride[0], SW=stride[1],
        PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
        STORE_ARG=with_arg, STORE_INDEX=with_index,
        ACC=tl_accumulator(x.dtype), UNROLL=kernel_size[0] * kernel_size[1] <= _MAX_UNROLL,
        CHANNELS_LAST=channels_last, ROWS_INT64=rows > _ROWS_INT32_LIMIT,
    )
    return y, arg, index


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
    _launch(_bwd, _grid(rows, cols, block_q), block_q,
        grad_output, arg, grad_input,
        C, in_h, in_w, OH, OW, rows, cols,
        *grad_output.stride(),
        *arg.stride(),
        *grad_input.stride(),
        KH=kernel_size[0], KW=kernel_size[1], SH=stride[0], SW=stride[1],
        PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
        NJH=njh, NJW=njw,
        ACC=tl_accumulator(grad_output.dtype), UNROLL=njh * njw <= _MAX_UNROLL,
        CHANNELS_LAST=channels_last, ROWS_INT64=rows > _ROWS_INT32_LIMIT,
    )
    return grad_input
