"""Merge benchmark results and print one table of what fastalex achieved.

Reads pytest-benchmark JSON files and the JSON-lines files that ``benchutil.run_benchmark``
appends to (``$FASTALEX_BENCH_JSONL``), one record per case.

For each case, fastalex's median time (``triton.testing.do_bench``) beside torch eager's and
torch.compile's, the speed-ups, GB/s and its share of the measured copy bandwidth, TFLOP/s and
peak extra memory.

usage: python bench/summarize.py [--out MERGED.json] [--copy COPY.json] RESULTS.json[l]...
"""

import argparse
import json
import re
from collections import defaultdict

IMPLS = ("fastalex", "eager", "compile")
ALIASES = {"cudnn": "eager", "torch": "eager"}  # the eager baseline under other names


def impl_of(bench: dict) -> str:
    params = bench.get("params") or {}
    candidates = [params.get("impl")] + re.split(r"[-\[\]_]", bench["name"])
    for token in candidates:
        if token in IMPLS or token in ALIASES:
            return token
    return "fastalex"


def load(path: str) -> list:
    """The benchmark records in a pytest-benchmark JSON file or a JSON-lines file."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text).get("benchmarks", [])


def case_of(bench: dict, impl: str) -> str:
    name = bench["name"]
    name = re.sub(rf"(?<=[-\[]){impl}(?=[-\]])", "", name)
    return re.sub(r"--+", "-", name).replace("[-", "[").replace("-]", "]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--out", help="write the merged benchmark JSON here")
    parser.add_argument("--copy", help="copy_bandwidth.py's JSON output")
    args = parser.parse_args()

    benches = []
    for path in args.files:
        try:
            benches += load(path)
        except (OSError, ValueError) as err:
            print(f"skipped {path}: {err}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"benchmarks": benches}, f, indent=1)

    copy_gbps = None
    if args.copy:
        try:
            with open(args.copy) as f:
                copy = json.load(f)
            copy_gbps = copy["copy_gb_per_s_median"]
            print(f"{copy['device']}: copy bandwidth {copy_gbps:.0f} GB/s (median), "
                  f"torch {copy['torch']}, triton {copy['triton']}")
        except (OSError, ValueError, KeyError) as err:
            print(f"no copy bandwidth: {err}")

    cases = defaultdict(dict)
    for bench in benches:
        impl = impl_of(bench)
        cases[case_of(bench, impl)][ALIASES.get(impl, impl)] = bench.get("extra_info", {})

    header = f"{'case':58} {'fastalex ms':>11} {'eager ms':>9} {'compile ms':>10} " \
             f"{'x eager':>7} {'x compile':>9} {'GB/s':>7} {'%copy':>6} {'TFLOP/s':>8} {'MiB':>7}"
    print(header)
    print("-" * len(header))
    for case in sorted(cases):
        impls = cases[case]
        ms = {impl: impls.get(impl, {}).get("do_bench_ms") for impl in IMPLS}
        ours = impls.get("fastalex", {})

        def fmt(value, spec):
            width = spec.split(".")[0]
            return format(value, spec) if value is not None else format("-", f">{width}")

        speedup = {
            base: ms[base] / ms["fastalex"] if ms["fastalex"] and ms[base] else None
            for base in ("eager", "compile")
        }
        gbps = ours.get("gb_per_s")
        share = 100 * gbps / copy_gbps if gbps and copy_gbps else None
        print(f"{case[:58]:58} {fmt(ms['fastalex'], '11.4f')} {fmt(ms['eager'], '9.4f')} "
              f"{fmt(ms['compile'], '10.4f')} {fmt(speedup['eager'], '7.2f')} "
              f"{fmt(speedup['compile'], '9.2f')} {fmt(gbps, '7.0f')} {fmt(share, '6.1f')} "
              f"{fmt(ours.get('tflop_per_s'), '8.1f')} {fmt(ours.get('peak_extra_mib'), '7.0f')}")


if __name__ == "__main__":
    main()
