"""Inverted dropout without a stored mask: the mask is regenerated from a Philox seed.

Mask contract (shared with the fused linear+ReLU+dropout epilogue in ``kernels/linear.py``):
element ``i`` is kept iff ``dropout_keep(seed, i, p)`` (``kernels/philox.py``), where ``i`` is the
element's *logical* flat index, its position in row-major (C) order over the tensor's shape,
whatever its memory layout. For a contiguous ``[M, N]`` tensor that is ``m * N + n``, exactly
the offset the linear epilogue uses, so with the same seed both drop the same units. Because the
offset ignores strides, a channels-last or transposed tensor gets the same mask as its
contiguous copy, and a backward whose gradient arrives in another layout than the forward's
input still regenerates the forward's mask.

Offsets and memory positions are int32 while ``numel + BLOCK <= 2**31`` and int64 beyond; the
choice depends on ``numel`` alone, and both give the same mask anyway: Philox's counter is the
offset's low 32-bit word plus its high word, which is 0 for every offset below 2**31 either way.

Values: kept units are ``x * (1 / (1 - p))`` computed in fp32 (fp64 for fp64 tensors, with the
fp64 scale), rounded once to the tensor's dtype, as torch computes them; dropped units are
exactly 0, also where the input is NaN or Inf. The backward of inverted dropout is the same
masked scaling applied to the gradient, so one kernel serves both directions.

docs/kernels/dropout.md gives the design and the memory-traffic floors.
"""

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from fastalex.kernels._runtime import (
    INT32_LIMIT,
    fp32_parts,
    from_fp32_parts,
    new_empty,
    new_empty_like,
    tl_accumulator,
)
from fastalex.kernels.philox import dropout_keep


@triton.jit
def _dropout_kernel(
    # tensors: src is read, dst written; both hold `numel` elements in the same dense memory
    # order (dst may be src: in-place)
    src_ptr, dst_ptr,
    # mask: (1,) int64 Philox seed, drop probability
    seed_ptr, p,
    # scale 1 / (1 - p) as three fp32 parts whose exact sum is its fp64 value
    scale_hi, scale_mid, scale_lo,
    # layout: element count; the memory dims (outermost first, padded in front to 4 with
    # size 1 / stride 0) given as inner sizes and their strides in the logical (row-major)
    # index, the tensor the Philox offsets come from
    numel, size1, size2, size3, stride_index0, stride_index1, stride_index2, stride_index3,
    # meta: memory dims used (1: memory order is logical order), 64-bit indices, the type the
    # scaling runs in, elements per program
    NDIM: tl.constexpr, INT64: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """dst = where(keep, src * scale, 0) over one BLOCK of memory positions.

    src, dst: ``numel`` elements of any shape in one dense layout (contiguous, channels-last,
    any permutation of dims without gaps), addressed by memory position ``q``; the Philox offset
    of position ``q`` is its logical index, recovered from the memory dims when NDIM > 1.
    """
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    q = pid * BLOCK + tl.arange(0, BLOCK)
    in_range = q < numel

    if NDIM == 1:
        index = q
    else:
        # memory position -> coordinates along the memory dims -> logical index
        rest = q // size3
        index = (q - rest * size3) * stride_index3
        if NDIM == 2:
            index += rest * stride_index2
        else:
            outer = rest // size2
            index += (rest - outer * size2) * stride_index2
            if NDIM == 3:
                index += outer * stride_index1
            else:
                top = outer // size1
                index += (outer - top * size1) * stride_index1 + top * stride_index0

    seed = tl.load(seed_ptr)
    keep = dropout_keep(seed, index, p)
    src = tl.load(src_ptr + q, mask=in_range)
    # fp16/bf16/fp32 scale in fp32 by the fp32 scale and round once, as torch's dropout does;
    # fp64 by the fp64 scale
    scaled = src.to(ACC) * from_fp32_parts(scale_hi, scale_mid, scale_lo, ACC)
    # where, not a multiply by the mask: a dropped NaN or Inf must give 0
    out = tl.where(keep, scaled, 0.0)
    tl.store(dst_ptr + q, out.to(dst_ptr.dtype.element_ty), mask=in_range)


# One pass, elementwise, ~100 integer ops of Philox per element: no autotuning (it would also
# re-run an in-place launch). 1024 elements over 4 warps gives each thread 8 independent Philox
# chains to interleave and 16-byte loads in every dtype; 128x4096 fills 512 programs, several
# per SM on an H100.
BLOCK = 1024
NUM_WARPS = 4
# Memory dims the kernel maps back to logical indices; layouts that need more (rare permutes
# of 5+ dims) are first copied to contiguous.
MAX_DIMS = 4


def _memory_dims(t: torch.Tensor):
    """``t``'s layout as (size, logical stride) pairs in memory order, outermost first, with
    dims that are adjacent in both orders merged; None when ``t`` is not dense (gaps or
    overlaps). A contiguous tensor gives one pair, a channels-last NCHW tensor three."""
    if t.is_contiguous():
        return [(t.numel(), 1)]
    logical, dims = 1, []
    for size, stride in reversed(list(zip(t.shape, t.stride()))):
        if size != 1:  # a size-1 dim's stride is arbitrary and moves nothing
            dims.append((stride, size, logical))
        logical *= size
    dims.sort(key=lambda d: d[0], reverse=True)
    expected = 1
    for stride, size, _ in reversed(dims):
        if stride != expected:
            return None
        expected *= size
    merged = []
    for _, size, lstride in dims:
        if merged and merged[-1][1] == lstride * size:
            merged[-1] = (merged[-1][0] * size, lstride)
        else:
            merged.append((size, lstride))
    return merged or [(1, 1)]


def _kernel_layout(t: torch.Tensor):
    """Memory dims the kernel can take for ``t`` as it is, or None if it needs a contiguous copy."""
    dims = _memory_dims(t)
    return dims if dims is not None and len(dims) <= MAX_DIMS else None


def dropout_output(t: torch.Tensor) -> torch.Tensor:
    """The output the launchers allocate for ``t``: ``t``'s strides when the kernel can run on
    ``t`` in place (dense layouts), contiguous otherwise. Also the ops' fake (meta) function."""
    if t.numel() == 0 or _kernel_layout(t) is not None:
        return new_empty_like(t)
    return new_empty(t.shape, dtype=t.dtype, device=t.device)


@functools.lru_cache(maxsize=64)
def _scale_parts(p: float):
    """The kept units' scale 1 / (1 - p) (0 for p = 1, where nothing is kept) in fp32 parts."""
    return fp32_parts(0.0 if p >= 1.0 else 1.0 / (1.0 - p))


def _launch(src: torch.Tensor, dst: torch.Tensor, seed: torch.Tensor, p: float, dims,
            int64: Optional[bool] = None) -> None:
    """Run the kernel from ``src`` into ``dst`` (same layout, given by ``dims``)."""
    numel = src.numel()
    if int64 is None:
        int64 = numel + BLOCK > INT32_LIMIT
    pad = MAX_DIMS - len(dims)
    sizes = [1] * pad + [size for size, _ in dims]
    index_strides = [0] * pad + [stride for _, stride in dims]
    grid = (triton.cdiv(numel, BLOCK),)
    _dropout_kernel[grid](
        src, dst,
        seed, p,
        *_scale_parts(p),
        numel, sizes[1], sizes[2], sizes[3], *index_strides,
        NDIM=len(dims), INT64=int64, ACC=tl_accumulator(src.dtype), BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )


def _apply_mask(src: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    out = dropout_output(src)
    if src.numel() == 0:
        return out
    dims = _kernel_layout(src)
    if dims is None:
        src, dims = src.contiguous(), [(src.numel(), 1)]
    _launch(src, out, seed, p, dims)
    return out


def dropout_forward(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """y = x / (1 - p) where kept, 0 where dropped, for the mask of ``seed`` ((1,) int64 on
    x's device). y has x's strides when x is dense, else it is contiguous."""
    return _apply_mask(x, seed, p)


def dropout_forward_(x: torch.Tensor, seed: torch.Tensor, p: float) -> None:
    """:func:`dropout_forward` written into ``x`` itself (one pass when x is dense)."""
    if x.numel() == 0:
        return
    dims = _kernel_layout(x)
    if dims is None:
        x.copy_(dropout_forward(x, seed, p))
    else:
        _launch(x, x, seed, p, dims)


def dropout_backward(dy: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """dx = dy / (1 - p) where the forward with ``seed`` kept the unit, 0 elsewhere; the mask is
    regenerated, so dy may come in any layout."""
    return _apply_mask(dy, seed, p)
