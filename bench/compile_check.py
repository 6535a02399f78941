"""Hopper compile gate: every fastalex kernel, in every configuration its launcher can pick for
AlexNet's layers at batch 128, compiled ahead of time for sm_90 without a GPU.

The launches are the real ones: AlexNet (``fastalex.models.alexnet``, the paper's build) runs
forward and backward on ``meta`` tensors of the real shapes, dtypes and layouts, plus the
dropout layer on fc6/fc7's outputs (the tanh build's), in bf16, fp16, fp32 with TF32 and fp32
without. Nothing executes: a fake Triton driver answers for an sm_90 device, every autotuner
launches its whole (pruned) configuration list instead of benchmarking, and Triton's
``jit_cache_hook`` records what each JIT launch would compile (signature, constexprs, integer
and alignment specialisation, options) and skips it. Meta tensors keep their storage offset in
``data_ptr()``, so the 16-byte alignment specialisation is that of a real launch.

Each distinct kernel is then compiled with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``
(Triton's bundled ptxas), in parallel, with Triton's cache in ``--cache-dir``. Registers and
stack frame (spill) bytes come from ``cuobjdump -res-usage`` on the cubin; the tensor-core
instruction family and cp.async/TMA use from its SASS (``cuobjdump -sass``); ``stack`` is the
stack frame in bytes per thread, which only spills occupy in these kernels. One row per
precision, layer, pass, kernel and configuration. Exits 1 on a compile error, any spill (no allow-list: a kernel that
spills in a configuration its launcher can pick fails the gate) or dynamic shared memory over
sm_90's 227 KB per block; 2 if the drive captured none of a kernel family it must see.

    python bench/compile_check.py [--jobs 2] [--cache-dir DIR] [--precision bf16 ...]
"""

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

PRECISIONS = ("bf16", "fp16", "fp32", "tf32")
SMEM_LIMIT = 227 * 1024  # sm_90: most dynamic shared memory one block may use
BATCH = 128
# Kernel families the drive must reach (a launcher that silently took another path would
# otherwise shrink the gate); matched against the captured kernels' names.
EXPECTED = ("_linear_gemm_kernel", "_conv_fwd_kernel", "_conv_dgrad_kernel",
            "_conv_wgrad_kernel", "_lrn_fwd_kernel", "_lrn_bwd_kernel",
            "_max_pool2d_fwd_kernel", "_max_pool2d_bwd_kernel", "_dropout_kernel")


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel compiles (%(default)s)")
    parser.add_argument("--cache-dir", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fastalex",
        "compile_check"), help="Triton's compile cache for these builds (%(default)s)")
    parser.add_argument("--precision", action="append", choices=PRECISIONS,
                        help="only these precisions (repeatable; default: all)")
    parser.add_argument("--only", action="append", default=[],
                        help="only rows whose 'precision layer pass kernel' contains this "
                             "(repeatable), e.g. fc8 or _linear")
    parser.add_argument("--capture-only", action="store_true",
                        help="list what would be compiled, compile nothing")
    parser.add_argument("--json", help="also write the rows to this file")
    return parser.parse_args(argv)


ARGS = _parse_args(sys.argv[1:]) if __name__ == "__main__" else None
# Triton reads these when first imported: build real GPU code (not the interpreter's), tune
# over every configuration, and cache the builds where asked.
os.environ["TRITON_INTERPRET"] = "0"
os.environ["FASTALEX_AUTOTUNE"] = "1"
if ARGS is not None:
    os.environ["TRITON_CACHE_DIR"] = ARGS.cache_dir

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.autotuner import Autotuner, Heuristics  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


# --- capture ------------------------------------------------------------------------------------

class _Sm90Driver:
    """What ``JITFunction.run`` asks of the active driver before it compiles: an sm_90 device."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return TARGET

    def get_active_torch_device(self):
        return torch.device("meta")


class Capture:
    """What one launch would compile, and where it came from."""

    def __init__(self, label, direction, precision, fn, compile_info, config):
        self.label, self.direction, self.precision, self.fn = label, direction, precision, fn
        self.name = fn.__name__
        self.signature = compile_info["signature"]
        self.constants = compile_info["constants"]
        self.attrs = compile_info["configs"][0]
        spec = json.loads(compile_info["specialization_data"])
        # JSON turned the options' tuples into lists (as JITFunction.preload undoes too)
        self.options = {k: tuple(v) if isinstance(v, list) else v
                        for k, v in spec["options"].items()}
        self.key = (self.name, spec["key"], json.dumps(spec["options"], sort_keys=True))
        self.config = config

    def describe(self):
        """The configuration: the autotuner's and heuristics' meta-parameters, warps, stages."""
        params = dict(self.config)
        names = [p.name for p in self.fn.params]
        for path, value in self.constants.items():
            name = names[path[0]]
            if name in params and isinstance(value, int):
                params[name] = value
        body = " ".join(f"{k}={v}" for k, v in params.items())
        return f"{body} w{self.options['num_warps']} s{self.options['num_stages']}".strip()


class _Recorder:
    """Patches Triton so that launches record their compiles instead of running."""

    def __init__(self):
        self.captures = []
        self.label = "?"
        self.direction = "fwd"
        self.precision = "?"
        self._config = {}

    def hook(self, *, key, repr, fn, compile, is_manual_warmup, already_compiled):
        self.captures.append(Capture(self.label, self.direction, self.precision,
                                     fn.jit_function, compile, self._config))
        return True  # skip the compile: the gate compiles each distinct kernel once, later

    def autotuner_run(self, tuner, *args, **kwargs):
        """Every configuration the autotuner would benchmark (after its pruning), launched once
        each with the heuristics of the kernels under it."""
        tuner.nargs = dict(zip(tuner.arg_names, args))
        configs = tuner.prune_configs(kwargs) if len(tuner.configs) > 1 else tuner.configs
        heuristics = []
        inner = tuner.fn
        while isinstance(inner, Heuristics):
            heuristics += list(inner.values)
            inner = inner.fn
        for config in configs:
            self._config = {**config.kwargs, **{name: "?" for name in heuristics}}
            try:
                tuner.fn.run(*args, **kwargs, **config.all_kwargs())
            finally:
                self._config = {}
        tuner.best_config = configs[0]
        tuner.nargs = None

    @contextlib.contextmanager
    def active(self):
        recorder = self
        previous_run, previous_hook = Autotuner.run, knobs.runtime.jit_cache_hook

        def run(tuner, *args, **kwargs):
            return recorder.autotuner_run(tuner, *args, **kwargs)

        driver.set_active(_Sm90Driver())
        Autotuner.run = run
        knobs.runtime.jit_cache_hook = self.hook
        try:
            yield self
        finally:
            Autotuner.run = previous_run
            knobs.runtime.jit_cache_hook = previous_hook


def _force_kernel_path():
    """Make every fastalex op take its Triton path for meta tensors (they would otherwise take
    the PyTorch reference, as for any device without Triton)."""
    import fastalex.backend as backend

    backend.kernel_path = lambda tensor: backend.TRITON
    for name, module in list(sys.modules.items()):
        if name.startswith("fastalex") and hasattr(module, "uses_triton"):
            module.uses_triton = lambda tensor: True


def _labelled(recorder, model):
    """Forward and backward hooks that name the layer whose kernels are being recorded."""
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their leaves say more

        def forward(*_, name=name.split(".")[-1]):
            recorder.label, recorder.direction = name, "fwd"

        def backward(*_, name=name.split(".")[-1]):
            recorder.label, recorder.direction = name, "bwd"

        handles.append(module.register_forward_pre_hook(forward))
        handles.append(module.register_full_backward_pre_hook(backward))
    return handles


def _precision_switches(precision):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return dtype, precision == "tf32"


def drive(recorder, precision):
    """AlexNet's training step (forward, backward) at batch 128 in ``precision``, and the
    dropout layer on fc6's and fc7's outputs."""
    from fastalex import layers
    from fastalex.models.alexnet import alexnet

    dtype, tf32 = _precision_switches(precision)
    recorder.precision = precision
    switches = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        model = alexnet().to(device="meta", dtype=dtype).train()
        handles = _labelled(recorder, model)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = torch.empty(BATCH, 3, 227, 227, device="meta", dtype=dtype)
            x = x.contiguous(memory_format=memory_format)
            out = model(x)
            recorder.label, recorder.direction = "loss", "bwd"
            torch.autograd.grad(out, list(model.parameters()), torch.empty_like(out))
        for handle in handles:
            handle.remove()
        for name in ("drop6", "drop7"):
            recorder.label, recorder.direction = name, "fwd"
            h = torch.empty(BATCH, 4096, device="meta", dtype=dtype, requires_grad=True)
            y = layers.Dropout(0.5)(h)
            recorder.direction = "bwd"
            torch.autograd.grad(y, h, torch.empty_like(y))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = switches


# --- compile and inspect ------------------------------------------------------------------------

def _tool(name):
    return getattr(knobs.nvidia, name).path


def _cuobjdump(cubin_path, flag):
    result = subprocess.run([_tool("cuobjdump"), flag, cubin_path], capture_output=True,
                            text=True, check=True)
    return result.stdout


def inspect_cubin(cubin: bytes, workdir: str, tag: str) -> dict:
    """:func:`_inspect`, kept per binary beside Triton's cache (disassembly is most of a warm
    run's time)."""
    stats_dir = os.path.join(os.environ.get("TRITON_CACHE_DIR", workdir), "compile_check")
    path = os.path.join(stats_dir, hashlib.sha256(cubin).hexdigest() + ".json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    stats = _inspect(cubin, workdir, tag)
    os.makedirs(stats_dir, exist_ok=True)
    with open(f"{path}.{os.getpid()}", "w") as f:
        json.dump(stats, f)
    os.replace(f"{path}.{os.getpid()}", path)
    return stats


def _inspect(cubin: bytes, workdir: str, tag: str) -> dict:
    """Registers, stack frame bytes (spills: Triton's kernels have no other local memory),
    spill instructions, tensor-core family and asynchronous-copy use, read from the binary."""
    path = os.path.join(workdir, f"{tag}.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    try:
        usage = _cuobjdump(path, "-res-usage")
        sass = _cuobjdump(path, "-sass")
    finally:
        os.remove(path)
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    mma = ("wgmma" if re.search(r"\bHGMMA", sass) else
           "mma" if re.search(r"\bHMMA|\bDMMA", sass) else "none")
    copies = []
    if re.search(r"\bLDGSTS", sass):
        copies.append("cp.async")
    if re.search(r"\bUTMALDG|\bUBLKCP|\bUTMASTG", sass):
        copies.append("tma")
    return {
        "regs": int(regs.group(1)) if regs else -1,
        "stack": int(stack.group(1)) if stack else -1,
        "spill_ops": len(re.findall(r"\b(?:STL|LDL)\b", sass)),
        "mma": mma,
        "async_copy": "+".join(copies) or "-",
    }


_CAPTURES: list = []  # read by the forked workers


def compile_one(index: int) -> dict:
    """Compile capture ``index`` for sm_90 and inspect the binary (runs in a worker)."""
    from triton.compiler import ASTSource

    cap = _CAPTURES[index]
    start = time.perf_counter()
    try:
        src = ASTSource(cap.fn, cap.signature, cap.constants, cap.attrs)
        kernel = triton.compile(src, target=TARGET, options=cap.options)
        stats = inspect_cubin(kernel.asm["cubin"], ARGS_WORKDIR, f"k{os.getpid()}_{index}")
        stats["smem"] = int(kernel.metadata.shared)
        stats["error"] = ""
    except Exception as e:  # a compile error is a result of the gate, reported in its row
        stats = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
                 if str(e).strip() else type(e).__name__}
    stats["seconds"] = round(time.perf_counter() - start, 1)
    return stats


ARGS_WORKDIR = None


def verdict(stats: dict) -> str:
    if stats.get("error"):
        return "COMPILE ERROR"
    problems = []
    if stats["stack"] != 0 or stats["spill_ops"]:
        problems.append("SPILLS")
    if stats["smem"] > SMEM_LIMIT:
        problems.append("SMEM")
    return "+".join(problems) or "ok"


def main(args) -> int:
    global ARGS_WORKDIR
    import multiprocessing
    import tempfile

    start = time.perf_counter()
    recorder = _Recorder()
    precisions = args.precision or list(PRECISIONS)
    with recorder.active():
        import fastalex.functional  # noqa: F401  (the ops, before their names are patched)
        import fastalex.layers  # noqa: F401
        _force_kernel_path()
        for precision in precisions:
            drive(recorder, precision)
    caps = [c for c in recorder.captures if not args.only or any(
        s in f"{c.precision} {c.label} {c.direction} {c.name}" for s in args.only)]
    seen_names = {c.name for c in recorder.captures}
    missing = [name for name in EXPECTED if name not in seen_names]

    # one row per (precision, layer, kernel, configuration); one compile per distinct kernel
    rows, unique = {}, {}
    for cap in caps:
        unique.setdefault(cap.key, cap)
        rows.setdefault((cap.precision, cap.label, cap.direction, cap.name, cap.describe(),
                         cap.key), cap)
    keys = list(unique)
    capture_seconds = time.perf_counter() - start
    print(f"captured {len(caps)} launches: {len(rows)} rows, {len(keys)} distinct kernels "
          f"({capture_seconds:.1f} s); triton {triton.__version__}, torch {torch.__version__}, "
          f"ptxas {_tool('ptxas')}", flush=True)
    results = {}
    if not args.capture_only:
        _CAPTURES[:] = [unique[k] for k in keys]
        with tempfile.TemporaryDirectory() as workdir:
            ARGS_WORKDIR = workdir
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(max(1, args.jobs)) as pool:
                for i, stats in enumerate(pool.imap(compile_one, range(len(keys)))):
                    results[keys[i]] = stats
                    if (i + 1) % 25 == 0:
                        print(f"  {i + 1}/{len(keys)} compiled, "
                              f"{time.perf_counter() - start:.0f} s", flush=True)
    failed = _report(rows, results, args)
    wall = time.perf_counter() - start
    print(f"{len(keys)} kernels compiled for sm_90 in {wall:.0f} s with {args.jobs} jobs; "
          f"{failed} failing rows")
    if missing:
        print(f"FAIL: the drive reached no {', '.join(missing)}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def _report(rows, results, args) -> int:
    header = (f"{'precision':9} {'layer':6} {'pass':4} {'kernel':26} {'configuration':64} {'regs':>4} "
              f"{'stack':>5} {'smem KB':>7} {'mma':5} {'copy':12} verdict")
    print(header)
    failed, out = 0, []
    counts = defaultdict(int)
    for (precision, label, direction, name, config, key) in rows:
        stats = results.get(key)
        lead = f"{precision:9} {label:6} {direction:4} {name:26} {config:64}"
        if stats is None:
            print(lead)
            continue
        v = verdict(stats)
        counts[v] += 1
        if v != "ok":
            failed += 1
        if stats.get("error"):
            print(f"{lead} {stats['error']}")
        else:
            print(f"{lead} {stats['regs']:>4} "
                  f"{stats['stack']:>5} {stats['smem'] / 1024:>7.1f} {stats['mma']:5} "
                  f"{stats['async_copy']:12} {v}")
        out.append(dict(precision=precision, layer=label, direction=direction, kernel=name,
                        config=config, **stats,
                        verdict=v))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if counts:
        print("verdicts: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    return failed


if __name__ == "__main__":
    sys.exit(main(ARGS))
