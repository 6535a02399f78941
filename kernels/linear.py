"""The fully-connected layers' GEMM, with bias, ReLU and dropout fused in the epilogue.

One kernel computes ``C = A @ B`` for the three products of a linear layer, chosen by strides:

- forward:     y[M, N_out] = x @ W^T  (A = x, B = W^T); epilogue ``+ bias``, ReLU, inverted
  dropout, all on the fp32 accumulator, then one rounding;
- grad-input:  dx[M, K_in] = dh @ W   (A = dh, B = W);
- grad-weight: dW[N_out, K_in] = dh^T @ x and grad-bias = dh's column sums (A = dh^T, B = x).

``dh`` is never materialised: A is dy, and the kernel forms ``dh = where(z > 0, dy * scale, 0)``
from the forward's output z as it loads each A tile.

Short, wide products (batch 128) split their reduction over ``SPLIT_K`` programs per output
tile; the last program to arrive at a tile sums the fp32 partials in a fixed order and runs the
epilogue. ``docs/kernels/linear.md`` gives the protocol, the configurations and the floors.
"""

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from fastalex.kernels._runtime import (
    INT32_LIMIT, autotune, grouped_tile, input_precision, new_empty, sm_count, tl_accumulator,
)
from fastalex.kernels.philox import dropout_keep


@triton.jit
def _aligned(v, ALIGN: tl.constexpr):
    """``v`` itself, where ALIGN (a power of two) divides it, written so that Triton knows
    the divisor: it specialises arguments only on divisibility by 16, and without the divisor
    of a size or stride (fc8's N = 1000) it splits loads, stores and masks into single
    elements, whose addresses then spill."""
    return (v // ALIGN) * ALIGN


@triton.jit
def _linear_gemm_kernel(
    # A [M, K] (x, dy or dy^T) and B [K, N] (W^T, W or x)
    a_ptr, stride_am, stride_ak,
    b_ptr, stride_bk, stride_bn,
    # z [M, K]: the forward's output, seen as A is (MASK_A); A's element is kept where z > 0
    z_ptr, stride_zm, stride_zk,
    # C [M, N]: the output, in the output dtype, columns contiguous
    c_ptr, stride_cm,
    # bias [N] (HAS_BIAS); grad-bias [M], contiguous (DBIAS): the sums of A's rows
    bias_ptr, stride_biasn, dbias_ptr,
    # dropout: seed (1,) int64; p, the drop probability (fp32, as dropout_keep compares it);
    # scale = 1/(1-p), applied to C (DROPOUT) or to A's kept elements (MASK_A)
    seed_ptr, p, scale: tl.float64,
    # split-K workspace (SPLIT_K > 1): partial tiles [SPLIT_K, M, N] in ACC_DTYPE and int8 keep
    # flags [M, N] (DROPOUT), rows stride_wsm apart; one int32 arrival counter per tile, zero
    # on entry (the launcher clears them; the last program of each tile clears its own again)
    part_ptr, keep_ptr, count_ptr, stride_wsm,
    # problem size
    M, N, K,
    # the largest power of two <= 16 dividing each size and stride above (see _aligned)
    ALIGN_M: tl.constexpr, ALIGN_N: tl.constexpr, ALIGN_K: tl.constexpr,
    ALIGN_AM: tl.constexpr, ALIGN_AK: tl.constexpr, ALIGN_BK: tl.constexpr,
    ALIGN_BN: tl.constexpr, ALIGN_ZM: tl.constexpr, ALIGN_ZK: tl.constexpr,
    ALIGN_CM: tl.constexpr,
    # what this launch computes; IDX64: some element offset may reach 2^31
    MASK_A: tl.constexpr, HAS_BIAS: tl.constexpr, DBIAS: tl.constexpr,
    RELU: tl.constexpr, DROPOUT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, IDX64: tl.constexpr,
    # tiling (autotuned), programs per tile (heuristic _split_k), K a multiple of BLOCK_K
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_N) tile of C over one 1/SPLIT_K share of the reduction.

    Grid: (tiles of C, SPLIT_K). dbias is written by the programs of the first column block.
    """
    M = _aligned(M, ALIGN_M)
    N = _aligned(N, ALIGN_N)
    K = _aligned(K, ALIGN_K)
    stride_am = _aligned(stride_am, ALIGN_AM)
    stride_ak = _aligned(stride_ak, ALIGN_AK)
    stride_bk = _aligned(stride_bk, ALIGN_BK)
    stride_bn = _aligned(stride_bn, ALIGN_BN)
    stride_zm = _aligned(stride_zm, ALIGN_ZM)
    stride_zk = _aligned(stride_zk, ALIGN_ZK)
    stride_cm = _aligned(stride_cm, ALIGN_CM)

    tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tile, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    # Rows and columns wrap (modulo) for the loads, so only the K tail needs a mask; stores mask.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    k_first = pid_k * per_split
    k_last = min(k_first + per_split, k_tiles)
    rows = offs_m % M
    cols = offs_n % N
    ks = k_first * BLOCK_K + offs_k
    if IDX64:
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
        ks = ks.to(tl.int64)
    a_ptrs = a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak
    b_ptrs = b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn
    if MASK_A:
        z_ptrs = z_ptr + rows[:, None] * stride_zm + ks[None, :] * stride_zk

    if ACC_DTYPE != tl.float64:
        scale = tl.cast(scale, ACC_DTYPE)  # the fp64 argument would promote fp32 math to fp64
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if DBIAS:
        dbias = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    for kk in range(k_first, k_last):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - kk * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if MASK_A:
            # dh = dy * scale where the forward kept the unit and ReLU passed it (z > 0)
            if EVEN_K:
                z = tl.load(z_ptrs)
            else:
                z = tl.load(z_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            a = tl.where(z > 0, a.to(ACC_DTYPE) * scale, 0.0).to(a_ptr.dtype.element_ty)
            z_ptrs += BLOCK_K * stride_zk
        if DBIAS:
            if pid_n == 0:
                dbias += tl.sum(a.to(ACC_DTYPE), axis=1)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if DBIAS:
        if pid_n == 0:
            tl.store(dbias_ptr + offs_m, dbias.to(dbias_ptr.dtype.element_ty), mask=offs_m < M)
    out_m = offs_m
    if IDX64:
        out_m = out_m.to(tl.int64)
    in_c = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if DROPOUT:
        seed = tl.load(seed_ptr)

    if SPLIT_K == 1:
        if DROPOUT:
            # element (m, n) of the mask is dropout_keep at m * N + n, as the dropout op's
            keep = dropout_keep(seed, out_m[:, None] * N + offs_n[None, :], p)
        is_last = True
    else:
        ws_offs = out_m[:, None] * stride_wsm + offs_n[None, :]
        if IDX64:
            slab = M.to(tl.int64) * stride_wsm  # one [M, N] partial of the workspace
        else:
            slab = M * stride_wsm
        tl.store(part_ptr + pid_k * slab + ws_offs, acc, mask=in_c)
        if DROPOUT:
            # Each program draws the mask of its 1/SPLIT_K slab of the tile's rows (the last
            # would otherwise draw it all) and leaves it, out of band, as int8 flags.
            SLAB: tl.constexpr = BLOCK_M // SPLIT_K
            slab_m = pid_m * BLOCK_M + pid_k * SLAB + tl.arange(0, SLAB)
            if IDX64:
                slab_m = slab_m.to(tl.int64)
            slab_keep = dropout_keep(seed, slab_m[:, None] * N + offs_n[None, :], p)
            tl.store(keep_ptr + slab_m[:, None] * stride_wsm + offs_n[None, :],
                     slab_keep.to(tl.int8), mask=(slab_m[:, None] < M) & (offs_n[None, :] < N))
        # Every thread's stores are issued before one thread releases the arrival (acq_rel at
        # GPU scope); the last arrival's acquire then sees every program's partial.
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        is_last = arrived == SPLIT_K - 1
    if is_last:
        if SPLIT_K > 1:
            tl.store(count_ptr + tile, 0)  # for a relaunch on the same workspace
            # fixed order: the same bits whoever is last; a loop (not unrolled): one tile live.
            # .cg reads at L2, where the other programs' stores are, never a stale L1 line.
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
            for s in tl.range(0, SPLIT_K, num_stages=1):
                acc += tl.load(part_ptr + s * slab + ws_offs, mask=in_c, other=0.0,
                               cache_modifier=".cg")
            if DROPOUT:
                keep = tl.load(keep_ptr + ws_offs, mask=in_c, other=0, cache_modifier=".cg") != 0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n * stride_biasn, mask=offs_n < N, other=0.0)
            acc += bias.to(ACC_DTYPE)[None, :]
        if RELU:
            acc = tl.where(acc < 0, 0.0, acc)  # NaN stays NaN, as in torch.relu
        if DROPOUT:
            # where, not a product with the mask: a dropped NaN or Inf gives 0 (as the dropout op)
            acc = tl.where(keep, acc * scale, 0.0)
        tl.store(c_ptr + out_m[:, None] * stride_cm + offs_n[None, :],
                 acc.to(c_ptr.dtype.element_ty), mask=in_c)


# --- tiling: few configurations, chosen for AlexNet's fc layers at batch 128 ---------------------
# (M, N, K) per product: forward fc6 128x4096x9216, fc7 128x4096x4096, fc8 128x1000x4096;
# grad-input 128x9216x4096, 128x4096x4096, 128x4096x1000; grad-weight 4096x9216x128,
# 4096x4096x128, 1000x4096x128. The first of each list is the default when not tuning; the
# split of the reduction is derived per shape and tile (_split_k).


def _cfg(bm, bn, bk, warps, stages, group_m=8, maxnreg=None):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
        num_warps=warps, num_stages=stages, maxnreg=maxnreg,
    )


# Forward, M = 128 rows against a wide weight: a 128-row block reads each weight tile once and
# split-K fills the SMs (fc6, fc7: 32 tiles x 4 splits); narrower tiles for fc8's N = 1000.
_FWD_16 = [
    _cfg(128, 128, 64, 8, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(128, 32, 128, 4, 4),
]
# Grad-input, the same shape class (N = in_features: 72 tiles of 128 for fc6); z's tile is a
# third operand per stage, so one stage fewer for the widest tile.
_DGRAD_16 = [
    _cfg(128, 128, 64, 8, 3),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
]
# Grad-weight: a large output (fc6: 37.7M elements) over a reduction of only 128, store-bound;
# plenty of tiles, no split, and two stages cover the K steps. 64-row tiles fit two programs
# per SM, so one's stores overlap the other's loads.
_WGRAD_16 = [
    _cfg(128, 128, 64, 8, 2),
    _cfg(64, 128, 64, 4, 2),
    _cfg(128, 256, 64, 8, 2),
    _cfg(128, 128, 128, 8, 2),
]
# fp32 operands take twice the shared memory per stage: half the BLOCK_K. IEEE fp32 runs on the
# FMA units with operand fragments in registers: ptxas (Triton 3.6's) caps some 4-warp tiles
# at 168 registers and spills unless told it may use 255.
_SKINNY_32 = [
    _cfg(128, 128, 32, 8, 3),
    _cfg(128, 64, 32, 4, 4, maxnreg=255),
    _cfg(64, 128, 32, 4, 4, maxnreg=255),
]
_WGRAD_32 = [
    _cfg(128, 128, 32, 8, 2),
    _cfg(64, 128, 32, 4, 2, maxnreg=255),
]
# fp64: no tensor-core path worth tuning; small tiles that fit in registers and shared memory.
_FP64 = [_cfg(64, 64, 16, 4, 2)]

CONFIGS = {
    # (product, operand bits) -> configurations
    ("fwd", "16"): _FWD_16,
    ("dgrad", "16"): _DGRAD_16,
    ("wgrad", "16"): _WGRAD_16,
    ("fwd", "32"): _SKINNY_32,
    ("dgrad", "32"): _SKINNY_32,
    ("wgrad", "32"): _WGRAD_32,
    ("fwd", "64"): _FP64,
    ("dgrad", "64"): _FP64,
    ("wgrad", "64"): _FP64,
}

_MAX_SPLIT = 16


@functools.lru_cache(maxsize=4096)
def split_for(M, N, K, bm, bn, bk, elt, sms, dbias) -> int:
    """Splits of the reduction (a power of two <= BLOCK_M, for the dropout slabs) minimising a
    per-SM byte count: waves x (operand bytes of one program + its partial-sum traffic).

    The fc layers are bandwidth-bound, so time ~ bytes each SM pulls; more splits fill more SMs
    but add fp32 partial tiles written once and read by the tile's last program.
    """
    if dbias:  # grad-bias sums A's rows in the same pass: one program per tile
        return 1
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    k_tiles = triton.cdiv(K, bk)
    best, best_cost, split = 1, None, 1
    while split <= min(_MAX_SPLIT, bm) and (split == 1 or triton.cdiv(k_tiles, split) >= 2):
        waves = triton.cdiv(tiles * split, sms)
        cost = (bm + bn) * bk * elt * triton.cdiv(k_tiles, split)
        if split > 1:
            cost += (split + 1) * bm * bn * 4
        cost *= waves
        if best_cost is None or cost < best_cost:
            best, best_cost = split, cost
        split *= 2
    return best


def _split_k(args) -> int:
    return split_for(args["M"], args["N"], args["K"], args["BLOCK_M"], args["BLOCK_N"],
                     args["BLOCK_K"], args["a_ptr"].element_size(),
                     sm_count(args["c_ptr"].device), args["DBIAS"])


# With the z-mask (MASK_A), A tiles pass through registers to be masked: tiles larger than
# 128x128x64 then run out of registers and spill (sm_90, 8 warps, Triton 3.6).
_MASKED_MAX = 128 * 128 * 64


def _prune(configs, named_args, **kwargs):
    """The autotuner's early pruning: only tiles that fit the z-mask when it is on."""
    if not kwargs.get("MASK_A"):
        return configs
    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] <= _MASKED_MAX]
    return kept or configs[:1]


# Every BLOCK_K divides this: K % _K_ALIGN == 0 means no program meets a partial K step.
_K_ALIGN = 128
_KEY = ["M", "N", "K", "INPUT_PRECISION", "DROPOUT", "RELU", "MASK_A", "DBIAS"]
GEMMS = {
    key: autotune(configs, key=_KEY, prune_configs_by={"early_config_prune": _prune})(
        triton.heuristics({"SPLIT_K": _split_k})(_linear_gemm_kernel))
    for key, configs in CONFIGS.items()
}


def operand_class(dtype: torch.dtype) -> str:
    """The key of :data:`CONFIGS` for operands of ``dtype``: "16", "32" or "64" bits."""
    return {torch.float64: "64", torch.float32: "32"}.get(dtype, "16")


def _alignment(stride: int) -> int:
    """The largest power of two <= 16 dividing ``stride`` (16 for 0)."""
    return 16 if stride % 16 == 0 else stride & -stride


def _extent(shape, strides) -> int:
    """One past the largest element offset a [shape] view with ``strides`` reaches."""
    return 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0


def _round_up(v: int, to: int) -> int:
    return triton.cdiv(v, to) * to


class _Workspace:
    """Split-K scratch for one launch, in one allocation from torch's caching allocator (so it
    follows the stream and CUDA-graph rules of any tensor): arrival counters, cleared here on
    the launch's stream, then partials and keep flags, which every launch overwrites first."""

    def __init__(self, kernel, M, N, K, acc_dtype, elt, device, dbias, dropout):
        splits, tiles = 1, 1
        for cfg in kernel.configs:  # whichever of them the autotuner picks
            kw = cfg.kwargs
            s = split_for(M, N, K, kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], elt,
                          sm_count(device), dbias)
            if s > 1:
                splits = max(splits, s)
                tiles = max(tiles, triton.cdiv(M, kw["BLOCK_M"]) * triton.cdiv(N, kw["BLOCK_N"]))
        self.stride = _round_up(max(N, 1), 16)
        self.used = splits > 1
        if not self.used:
            return
        acc_bytes = torch.empty((), dtype=acc_dtype).element_size()
        count_bytes = _round_up(4 * tiles, 128)
        part_bytes = _round_up(splits * M * self.stride * acc_bytes, 128)
        keep_bytes = M * self.stride if dropout else 0
        buf = new_empty((count_bytes + part_bytes + keep_bytes,), dtype=torch.int8,
                        device=device)
        self.counters = buf[:count_bytes].view(torch.int32)
        self.counters.zero_()
        self.partials = buf[count_bytes:count_bytes + part_bytes].view(acc_dtype)
        self.keep = buf[count_bytes + part_bytes:] if dropout else self.partials
        self.extent = splits * M * self.stride


def _launch(product, a, a_strides, b, b_strides, c, M, N, K, tf32, *, z=None, z_strides=(0, 0),
            bias=None, dbias=None, seed=None, p=0.0, scale=1.0, relu=False, dropout=False):
    """Pick the tuned kernel for ``product`` and the operands' dtype, give it a split-K
    workspace that fits every configuration it may run, and launch. C is [M, N] contiguous."""
    dtype = a.dtype
    kernel = GEMMS[(product, operand_class(dtype))]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    ws = _Workspace(kernel, M, N, K, acc, a.element_size(), c.device, dbias is not None, dropout)
    extents = [_extent((M, K), a_strides), _extent((K, N), b_strides), M * N,
               _extent((M, K), z_strides) if z is not None else 0, ws.extent if ws.used else 0]
    strides = (*a_strides, *b_strides, *z_strides, c.stride(0))
    aligns = [_alignment(v) for v in (M, N, K, *strides)]
    bias_stride = bias.stride(0) if bias is not None else 0

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])

    kernel[grid](
        a, strides[0], strides[1],
        b, strides[2], strides[3],
        z, strides[4], strides[5],
        c, strides[6],
        bias, bias_stride, dbias,
        seed, p, scale,
        ws.partials if ws.used else None, ws.keep if ws.used else None,
        ws.counters if ws.used else None, ws.stride,
        M, N, K,
        *aligns,
        MASK_A=z is not None, HAS_BIAS=bias is not None, DBIAS=dbias is not None,
        RELU=relu, DROPOUT=dropout,
        INPUT_PRECISION=input_precision(dtype, tf32), ACC_DTYPE=tl_accumulator(dtype),
        IDX64=max(extents) >= INT32_LIMIT,
        EVEN_K=K % _K_ALIGN == 0,
    )


def dropout_scale(p: float) -> float:
    # p = 1 keeps nothing: any finite scale will do, and 1/(1-p) is not one.
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def linear_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    seed: Optional[torch.Tensor], relu: bool, p: float, tf32: bool,
) -> torch.Tensor:
    """``y = x @ weight^T + bias``, then ReLU if ``relu``, then inverted dropout with drop
    probability ``p`` when ``seed`` is given, all on the fp32 accumulator.

    x: [M, K], weight: [N, K], bias: [N], any strides; seed: (1,) int64 (dropout on iff given).
    Returns y: [M, N] contiguous, element (m, n) dropped iff ``dropout_keep(seed, m * N + n, p)``
    is false, as the dropout op's mask of a [M, N] tensor. ``tf32``: fp32 operands may be
    rounded to TF32 (torch's matmul switch).
    """
    M, K = x.shape
    N = weight.shape[0]
    y = new_empty((M, N), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    dropout = seed is not None
    _launch("fwd", x, x.stride(), weight, (weight.stride(1), weight.stride(0)), y, M, N, K,
            tf32, bias=bias, seed=seed, p=float(p), scale=dropout_scale(p) if dropout else 1.0,
            relu=relu, dropout=dropout)
    return y


def linear_grad_input(
    dy: torch.Tensor, z: Optional[torch.Tensor], weight: torch.Tensor, scale: float, tf32: bool,
) -> torch.Tensor:
    """``dx = dh @ weight`` with ``dh = where(z > 0, dy * scale, 0)`` formed as dy loads
    (``z`` None: ``dh = dy``).

    dy, z: [M, N] (z: the forward's output), weight: [N, K], any strides. Returns dx: [M, K]
    contiguous.
    """
    M, N = dy.shape
    K = weight.shape[1]
    dx = new_empty((M, K), dtype=dy.dtype, device=dy.device)
    if dx.numel() == 0:
        return dx
    _launch("dgrad", dy, dy.stride(), weight, weight.stride(), dx, M, K, N, tf32, z=z,
            z_strides=z.stride() if z is not None else (0, 0), scale=scale)
    return dx


def linear_grad_weight(
    dy: torch.Tensor, z: Optional[torch.Tensor], x: torch.Tensor, scale: float, with_bias: bool,
    tf32: bool,
) -> list[torch.Tensor]:
    """``dW = dh^T @ x`` and, if ``with_bias``, ``db = dh.sum(0)`` in the same pass, with
    ``dh`` as in :func:`linear_grad_input`.

    dy, z: [M, N], x: [M, K], any strides. Returns [dW [N, K], db [N]] (db empty without bias),
    contiguous.
    """
    M, N = dy.shape
    K = x.shape[1]
    dw = new_empty((N, K), dtype=dy.dtype, device=dy.device)
    db = new_empty((N,) if with_bias else (0,), dtype=dy.dtype, device=dy.device)
    if dw.numel() == 0:
        if with_bias and N > 0:
            # no columns to multiply (K = 0), but the bias still has its gradient
            db.copy_((dy if z is None else torch.where(z > 0, dy * scale, 0)).sum(0))
        return [dw, db]
    _launch("wgrad", dy, (dy.stride(1), dy.stride(0)), x, x.stride(), dw, N, K, M, tf32, z=z,
            z_strides=(z.stride(1), z.stride(0)) if z is not None else (0, 0),
            dbias=db if with_bias else None, scale=scale)
    return [dw, db]
