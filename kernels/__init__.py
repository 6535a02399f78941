"""Triton kernels of fastalex and their launchers (installed as ``fastalex.kernels``).

One module per operation. Each holds the ``@triton.jit`` kernels, then a launcher per kernel that
allocates the outputs, picks the grid and launches. Launchers take tensors that the caller has
already validated (``fastalex.ops`` does that) and know nothing of autograd.
"""
