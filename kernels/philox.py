"""The dropout keep-mask, shared by every kernel that drops units.

The standalone dropout kernels and the fused linear epilogue both call :func:`dropout_keep`
with the same seed and the same flat element index, so they drop the same units, and a backward
regenerates exactly the mask its forward used.
"""

import triton
import triton.language as tl


@triton.jit
def dropout_keep(seed, offsets, p):
    """Keep mask of inverted dropout: True where Philox's uniform draw in [0, 1) is >= ``p``.

    seed: int64 scalar (loaded from the op's seed tensor); offsets: flat element indices in the
    contiguous output (int32 or int64 block); p: drop probability. p=0 keeps all, p=1 drops all.
    """
    return tl.rand(seed, offsets) >= p
