"""The fully-connected layers' GEMM, with bias, ReLU and dropout fused in the epilogue.

One kernel computes ``C = A @ B`` for the three products of a linear layer, by strides:

- forward:     y[M, N_out]   = x[M, K_in] @ W^T            (A = x,    B = W^T), epilogue:
  ``+ bias``, ReLU, inverted dropout, all on the fp32 accumulator, then one rounding;
- grad-input:  dx[M, K_in]   = dh[M, N_out] @ W            (A = dh,   B = W);
- grad-weight: dW[N_out, K_in] = dh^T @ x, grad-bias = row sums of dh^T (A = dh^T, B = x).

``dh`` is never materialised: the backward passes dy as A together with the forward's output z,
and the kernel forms ``dh = dy * scale`` where ``z > 0`` (else 0) as it loads each A tile.

At AlexNet's batch of 128 the layers are weight-bandwidth-bound (fc6's weight is 75 MB in bf16
against ~10 GFLOP) and too short in M to fill the GPU with output tiles: 128x128 tiles give fc6
only 32 programs. So the reduction is split (split-K) over ``SPLIT_K`` programs per tile, chosen
per shape and tile to fill the SMs (``_split_k``). Each writes its fp32 partial tile to a
workspace; the last to arrive (an arrival counter per tile) sums the partials in a fixed order
(bitwise deterministic) and runs the epilogue. The dropout mask costs one Philox evaluation per
output element (~65 instructions in the sm_90 code), which would stretch the tail fourfold if only
the last program of each tile drew it: each of the ``SPLIT_K`` programs draws the mask of its
own 1/SPLIT_K slab of rows and marks the dropped elements of its partial with -inf; the last
program reads the marks back from each slab's owner and zeroes those units (whatever the sum,
NaN and Inf included, as the dropout op does).

The arrival counters are cached per device and stream and left at zero by every launch, so a
launch costs no memset; launches on one stream never overlap.
"""

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from fastalex.kernels._runtime import (
    AUTOTUNE, autotune, grouped_tile, input_precision, new_empty, sm_count, tl_accumulator,
)
from fastalex.kernels.philox import dropout_keep


@triton.jit
def _linear_gemm_kernel(
    # A [M, K] (x, dy or dy^T) and B [K, N] (W^T, W or x): any strides
    a_ptr, stride_am, stride_ak,
    b_ptr, stride_bk, stride_bn,
    # z: the forward's output laid out like A (MASK_A): A's element is kept where z > 0
    z_ptr,
    # C [M, N], contiguous: output, in the output dtype
    c_ptr,
    # bias [N] (HAS_BIAS); grad-bias [M] (DBIAS): sums of A's rows
    bias_ptr, dbias_ptr,
    # dropout: seed (1,) int64, drop probability (fp32, as dropout_keep compares);
    # scale: 1/(1-p), applied to C (DROPOUT) or to A's kept elements (MASK_A)
    seed_ptr, p, scale: tl.float64,
    # split-K: fp32 partial tiles [SPLIT_K, M, N] and one int32 arrival counter per tile (0)
    ws_ptr, count_ptr,
    # problem size
    M, N, K,
    # what this launch computes
    MASK_A: tl.constexpr, HAS_BIAS: tl.constexpr, DBIAS: tl.constexpr,
    RELU: tl.constexpr, DROPOUT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr,
    # tiling (autotuned), programs per tile (heuristic _split_k), K a multiple of BLOCK_K
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_N) tile of C over one 1/SPLIT_K share of the reduction.

    Grid: (tiles of C, SPLIT_K). a: [M, K], b: [K, N], element strides as given; z: like a
    (MASK_A); c: [M, N] contiguous; bias: [N]; dbias: [M] (written by the programs of the first
    column block); ws: fp32 (fp64 for fp64) [SPLIT_K, M, N] contiguous, count: int32 [tiles],
    zero on entry and on exit (SPLIT_K > 1 only). Accumulates in ACC_DTYPE.
    """
    tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tile, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    # Rows/columns wrap (modulo) for the loads, so only the K tail needs a mask; the store masks.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_a = (offs_m % M).to(tl.int64)
    cols_b = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)

    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    k_first = pid_k * per_split
    k_last = min(k_first + per_split, k_tiles)
    ks = (k_first * BLOCK_K + offs_k).to(tl.int64)
    a_offs = rows_a[:, None] * stride_am + ks[None, :] * stride_ak
    b_offs = ks[:, None] * stride_bk + cols_b[None, :] * stride_bn
    a_ptrs = a_ptr + a_offs
    b_ptrs = b_ptr + b_offs
    if MASK_A:
        z_ptrs = z_ptr + a_offs

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
            # dh = dy * scale where the forward kept the unit and ReLU passed it (z > 0).
            if EVEN_K:
                z = tl.load(z_ptrs)
            else:
                z = tl.load(z_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            a = tl.where(z > 0, a.to(ACC_DTYPE) * scale, 0.0).to(a_ptr.dtype.element_ty)
            z_ptrs += BLOCK_K * stride_ak
        if DBIAS:
            if pid_n == 0:
                dbias += tl.sum(a.to(ACC_DTYPE), axis=1)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=ACC_DTYPE)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    c_rows = offs_m.to(tl.int64)
    mn = tl.cast(M, tl.int64) * N  # one [M, N] partial slab of the workspace
    in_c = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    c_offs = c_rows[:, None] * N + offs_n[None, :]
    if DBIAS:
        if pid_n == 0:
            tl.store(dbias_ptr + offs_m, dbias.to(dbias_ptr.dtype.element_ty), mask=offs_m < M)
    if DROPOUT:
        seed = tl.load(seed_ptr)
        SLAB: tl.constexpr = tl.constexpr(BLOCK_M // SPLIT_K)  # rows each split draws

    if SPLIT_K == 1:
        if DROPOUT:
            keep = dropout_keep(seed, c_offs, p)
        is_last = True
    else:
        ws_tile = ws_ptr + c_offs
        tl.store(ws_tile + pid_k * mn, acc, mask=in_c)
        if DROPOUT:
            # This program draws the mask of its slab of rows only, and marks the dropped
            # elements of its partial with -inf for the last program to read back.
            slab_rows = pid_m * BLOCK_M + pid_k * SLAB + tl.arange(0, SLAB)
            slab_offs = slab_rows.to(tl.int64)[:, None] * N + offs_n[None, :]
            dropped = ~dropout_keep(seed, slab_offs, p)
            in_slab = (slab_rows[:, None] < M) & (offs_n[None, :] < N)
            tl.debug_barrier()  # after the partial's stores: some hit the same addresses
            tl.store(ws_ptr + pid_k * mn + slab_offs,
                     tl.full((SLAB, BLOCK_N), float("-inf"), ACC_DTYPE), mask=in_slab & dropped)
        # Every thread's stores are issued before one thread releases the arrival count.
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        is_last = arrived == SPLIT_K - 1
    if is_last:
        if SPLIT_K > 1:
            tl.store(count_ptr + tile, 0)  # leave the counter ready for the next launch
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
            if DROPOUT:
                keep = tl.full((BLOCK_M, BLOCK_N), True, tl.int1)
                slab_of_row = tl.arange(0, BLOCK_M) // SLAB
            # fixed order: the same bits whoever is last; a loop (not unrolled): one tile live
            for s in tl.range(0, SPLIT_K, num_stages=1, loop_unroll_factor=2):
                # .cg: read at L2, where the other programs' stores are, never a stale L1 line
                part = tl.load(ws_tile + s * mn, mask=in_c, other=0.0, cache_modifier=".cg")
                acc += part
                if DROPOUT:
                    # dropped: its slab's owner marked it (whatever the sum, NaN and Inf too)
                    keep = keep & ~((slab_of_row == s)[:, None] & (part == float("-inf")))
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0)
            acc += bias.to(ACC_DTYPE)[None, :]
        if RELU:
            acc = tl.where(acc < 0, 0.0, acc)  # NaN stays NaN, as in torch.relu
        if DROPOUT:
            # where, not a product with the mask: a dropped NaN or Inf gives 0 (as the dropout op)
            acc = tl.where(keep, acc * scale, 0.0)
        tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=in_c)


# --- tiling: few configurations, chosen for AlexNet's fc layers at batch 128 ---------------------
# (M, N, K) per product: forward fc6 128x4096x9216, fc7 128x4096x4096, fc8 128x1000x4096;
# grad-input 128x9216x4096, 128x4096x4096, 128x4096x1000; grad-weight 4096x9216x128,
# 4096x4096x128, 1000x4096x128. The first of each list is the default for any other shape (and
# the one correctness runs use); the split of the reduction is derived per shape (_split_k).


def _cfg(bm, bn, bk, warps, stages, group_m=8):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
        num_warps=warps, num_stages=stages,
    )


# Forward, M = 128 rows against a wide weight: a 128-row block reads each weight tile once and
# split-K fills the SMs (fc6, fc7: 32 tiles x 4 splits); narrower tiles are the alternatives for
# fc8's N = 1000 (8 tiles of 128).
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
# fp32 operands take twice the shared memory per stage: half the BLOCK_K.
_SKINNY_32 = [
    _cfg(128, 128, 32, 8, 3),
    _cfg(128, 64, 32, 4, 4),
    _cfg(64, 128, 32, 4, 4),
]
_WGRAD_32 = [
    _cfg(128, 128, 32, 8, 2),
    _cfg(64, 128, 32, 4, 2),
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
def _split_for(M, N, K, bm, bn, bk, elt, sms, dbias) -> int:
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
    return _split_for(args["M"], args["N"], args["K"], args["BLOCK_M"], args["BLOCK_N"],
                      args["BLOCK_K"], args["a_ptr"].element_size(),
                      sm_count(args["c_ptr"].device), args["DBIAS"])


# Every BLOCK_K divides this: K % _K_ALIGN == 0 means no program meets a partial K step.
_K_ALIGN = 128
_HEURISTICS = {"SPLIT_K": _split_k}
_KEY = ["M", "N", "K", "INPUT_PRECISION", "DROPOUT"]
_GEMMS = {
    name: autotune(configs, key=_KEY)(triton.heuristics(_HEURISTICS)(_linear_gemm_kernel))
    for name, configs in CONFIGS.items()
}


def _operand_class(dtype: torch.dtype) -> str:
    return {torch.float64: "64", torch.float32: "32"}.get(dtype, "16")


# Arrival counters, one int32 per tile, kept zero between launches by the last program of each
# tile. Cached per device and stream so that launches on one stream never overlap on them.
_counters: dict = {}


def _arrival_counters(device: torch.device, tiles: int) -> torch.Tensor:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    buf = _counters.get(key)
    if buf is None or buf.numel() < tiles:
        buf = torch.zeros(max(tiles, 1024), dtype=torch.int32, device=device)
        _counters[key] = buf
    return buf


@functools.lru_cache(maxsize=4096)
def _workspace_plan(product, cls, M, N, K, elt, sms, dbias):
    """(most splits, most tiles among split configurations) over the configurations this
    launch may run: the workspace and counters must fit whichever the autotuner picks."""
    configs = CONFIGS[(product, cls)] if AUTOTUNE else CONFIGS[(product, cls)][:1]
    splits, tiles = 1, 1
    for cfg in configs:
        kw = cfg.kwargs
        s = _split_for(M, N, K, kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], elt, sms, dbias)
        if s > 1:
            splits = max(splits, s)
            tiles = max(tiles, triton.cdiv(M, kw["BLOCK_M"]) * triton.cdiv(N, kw["BLOCK_N"]))
    return splits, tiles


def _launch(product, a, a_strides, b, b_strides, c, M, N, K, tf32, *, z=None, bias=None,
            dbias=None, seed=None, p=0.0, scale=1.0, relu=False, dropout=False):
    """Pick the tuned kernel for ``product`` and the operands' dtype, size the split-K
    workspace for the configurations it may run, and launch."""
    dtype = a.dtype
    cls = _operand_class(dtype)
    splits, tiles = _workspace_plan(product, cls, M, N, K, a.element_size(),
                                    sm_count(c.device), dbias is not None)
    if splits > 1:
        ws = torch.empty((splits, M, N), dtype=torch.float32 if cls != "64" else dtype,
                         device=c.device)
        counters = _arrival_counters(c.device, tiles)
    else:
        ws = counters = c  # never touched with SPLIT_K == 1

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"])

    _GEMMS[(product, cls)][grid](
        a, a_strides[0], a_strides[1],
        b, b_strides[0], b_strides[1],
        z,
        c,
        bias, dbias,
        seed, p, scale,
        ws, counters,
        M, N, K,
        MASK_A=z is not None, HAS_BIAS=bias is not None, DBIAS=dbias is not None,
        RELU=relu, DROPOUT=dropout,
        INPUT_PRECISION=input_precision(dtype, tf32),
        ACC_DTYPE=tl_accumulator(dtype),
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

    x: [M, K] any strides; weight: [N, K] any strides; bias: [N]; seed: (1,) int64 (dropout on
    iff given, which needs ``relu``). Returns y: [M, N] contiguous, element (m, n) dropped iff
    ``dropout_keep(seed, m * N + n, p)`` is false, as the dropout op's mask of a [M, N] tensor.
    ``tf32``: fp32 operands may be rounded to TF32 (torch's matmul switch).
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

    dy: [M, N] contiguous; z: [M, N] contiguous, the forward's output; weight: [N, K] any
    strides. Returns dx: [M, K] contiguous.
    """
    M, N = dy.shape
    K = weight.shape[1]
    dx = new_empty((M, K), dtype=dy.dtype, device=dy.device)
    if dx.numel() == 0:
        return dx
    _launch("dgrad", dy, dy.stride(), weight, weight.stride(), dx, M, K, N, tf32, z=z,
            scale=scale)
    return dx


def linear_grad_weight(
    dy: torch.Tensor, z: Optional[torch.Tensor], x: torch.Tensor, scale: float, with_bias: bool,
    tf32: bool,
) -> list[torch.Tensor]:
    """``dW = dh^T @ x`` and, if ``with_bias``, ``db = dh.sum(0)`` in the same pass, with
    ``dh`` as in :func:`linear_grad_input`.

    dy, z: [M, N] contiguous; x: [M, K] any strides. Returns [dW [N, K], db [N]] (db empty
    without bias), contiguous.
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
            dbias=db if with_bias else None, scale=scale)
    return [dw, db]
