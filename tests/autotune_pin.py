"""Run a Triton autotuner with a chosen list of configurations.

``with kernel_configs(kernel, [config]):`` pins one configuration (a one-entry autotuner runs it
without benchmarking or pruning); ``with kernel_configs(kernel, ALL):`` lets it tune over all of
them (on CUDA). The autotuner's configuration list and its cache of choices are restored after.
"""

import contextlib


@contextlib.contextmanager
def kernel_configs(kernel, configs):
    """``kernel`` (a ``triton.autotune`` object) choosing among ``configs`` inside the block."""
    saved_configs, saved_cache = kernel.configs, kernel.cache
    kernel.configs, kernel.cache = list(configs), {}
    try:
        yield
    finally:
        kernel.configs, kernel.cache = saved_configs, saved_cache


def config_id(config) -> str:
    """A short test id: the block sizes and warps of ``config``."""
    blocks = "-".join(f"{k}{v}" for k, v in config.kwargs.items())
    return f"{blocks}-w{config.num_warps}"
