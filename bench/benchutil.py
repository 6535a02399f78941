"""Timing and reporting shared by the benchmark suites (import as ``from benchutil import ...``)."""

import json
import os
import time

import torch

_EAGER_COMPILE_BACKEND = "aot_eager"  # smoke mode on a CPU: trace with dynamo, skip codegen


def compiled(fn, mode: str, compile_mode: str = "default"):
    """``torch.compile(fn, mode=compile_mode)`` for a baseline: Inductor on a GPU; in smoke mode,
    dynamo + AOT autograd without code generation, which checks the same tracing in seconds."""
    if mode == "smoke":
        return torch.compile(fn, backend=_EAGER_COMPILE_BACKEND, dynamic=False)
    return torch.compile(fn, mode=compile_mode, dynamic=False)


def run_benchmark(benchmark, fn, mode: str, *, nbytes: float = 0.0, flops: float = 0.0,
                  images: int = 0, **info):
    """Time ``fn`` (no arguments, runs one case on its device) and record what it achieved.

    ``nbytes`` is the fewest bytes the case must move (for GB/s), ``flops`` its floating-point
    work (for TFLOP/s), ``images`` the images it processes (for images/s); extra keyword
    arguments go into ``extra_info`` as they are.
    """
    benchmark.extra_info.update(info)
    if mode == "smoke":
        start = time.perf_counter()
        benchmark.pedantic(fn, rounds=1, iterations=1)
        if os.environ.get("FASTALEX_BENCH_REHEARSE", "0") == "1":
            # the record a GPU run writes, with one CPU timing: it tests the flow, not the speed
            ms = (time.perf_counter() - start) * 1e3
            benchmark.extra_info.update(do_bench_ms=ms, device="cpu (rehearsal)", rehearsal=True)
            _record_rates(benchmark, ms, nbytes, flops, images)
            _append_record(benchmark)
        return
    import triton.testing

    fn()  # compile, autotune and warm caches outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    benchmark.extra_info.update(
        do_bench_ms=ms,
        peak_extra_mib=peak / 2**20,
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
    )
    _record_rates(benchmark, ms, nbytes, flops, images)
    _append_record(benchmark)

    def timed():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=10, iterations=1, warmup_rounds=2)


def _record_rates(benchmark, ms: float, nbytes: float, flops: float, images: int) -> None:
    if images:
        benchmark.extra_info["images_per_s"] = images / ms * 1e3
    if nbytes:
        benchmark.extra_info["gb_per_s"] = nbytes / ms / 1e6
    if flops:
        benchmark.extra_info["tflop_per_s"] = flops / ms / 1e9


def _append_record(benchmark) -> None:
    """Append this case to $FASTALEX_BENCH_JSONL at once: pytest-benchmark writes its JSON only
    when a session ends, and the GPU check cuts long sessions off."""
    path = os.environ.get("FASTALEX_BENCH_JSONL")
    if not path:
        return
    suite = benchmark.fullname.split("::")[0].rsplit("/", 1)[-1]
    record = {"name": benchmark.name, "suite": suite.removeprefix("bench_").removesuffix(".py"),
              "params": benchmark.params, "extra_info": dict(benchmark.extra_info)}
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
