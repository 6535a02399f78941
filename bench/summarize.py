"""Merge benchmark results, print one table of what fastalex achieved and the verdict per target.

Reads pytest-benchmark JSON files and the JSON-lines files that ``benchutil.run_benchmark``
appends to (``$FASTALEX_BENCH_JSONL``), one record per case.

For each case: fastalex's median time (``triton.testing.do_bench``) beside each baseline's, the
speed-ups, GB/s and its share of the measured copy bandwidth, TFLOP/s and peak extra memory.
Then, for each target in :data:`TARGETS`, one line per matching case: the measured figure, the
bar, and MET / NOT MET (or "unmeasured" where a side of the comparison has no record).

usage: python bench/summarize.py [--out MERGED.json] [--copy COPY.json] RESULTS.json[l]...
"""

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass, field

ALIASES = {"cudnn": "eager", "torch": "eager"}  # the eager baseline under other names
COLUMNS = ("fastalex", "eager", "compile")  # the implementations the table shows side by side


@dataclass(frozen=True)
class Target:
    """A bar a benchmark case must clear.

    ``metric``: ``"speedup"`` (the baseline's median time over ``impl``'s), ``"copy_share"``
    (``impl``'s GB/s over the card's measured copy bandwidth), ``"images_per_s"``,
    ``"memory"`` (the baseline's peak memory over ``impl``'s: at least 1 means no higher), or
    ``"feeds"`` (``impl``'s images/s over the highest images/s of the cases that ``versus``
    names: (suite, impl, where) of another suite, e.g. the training step a loader must feed).
    ``where``: extra_info values a case must have (a tuple allows several).
    """

    what: str
    suite: str
    metric: str
    at_least: float
    baseline: str = "eager"
    impl: str = "fastalex"
    where: dict = field(default_factory=dict)
    versus: tuple = ()


TARGETS = (
    Target("LRN fwd+bwd >= 5x torch eager", "lrn", "speedup", 5.0, where={"passes": "fwdbwd"}),
    Target("LRN fwd+bwd >= 1.3x torch.compile", "lrn", "speedup", 1.3, baseline="compile",
           where={"passes": "fwdbwd"}),
    Target("LRN fwd+bwd >= 70% of copy bandwidth", "lrn", "copy_share", 0.7,
           where={"passes": "fwdbwd"}),
    Target("max-pool >= torch eager", "max_pool", "speedup", 1.0),
    Target("dropout >= torch eager", "dropout", "speedup", 1.0),
    Target("conv + ReLU fwd+bwd (bf16) >= cuDNN eager", "conv", "speedup", 1.0,
           where={"precision": "bf16", "direction": "fwdbwd"}),
    Target("fc6/fc7 fused (bf16) >= 1.2x linear + ReLU + dropout eager", "linear", "speedup",
           1.2, where={"precision": "bf16", "layer": ("fc6", "fc7")}),
    Target("training step (bf16, CUDA graph) >= 1.5x torch eager", "train_step", "speedup", 1.5,
           impl="fastalex-graph", where={"dtype": "bf16"}),
    Target("training step (bf16, CUDA graph) >= 1.2x torch.compile reduce-overhead",
           "train_step", "speedup", 1.2, impl="fastalex-graph", baseline="compile-ro",
           where={"dtype": "bf16"}),
    Target("training step (bf16, CUDA graph) >= 40,000 images/s", "train_step", "images_per_s",
           40_000, impl="fastalex-graph", where={"dtype": "bf16"}),
    Target("training step (bf16) peak memory <= torch eager's", "train_step", "memory", 1.0,
           where={"dtype": "bf16"}),
    Target("prepared data, nvJPEG decode + device augmentation >= the bf16 batch-128 training "
           "step (CUDA graph)", "data", "feeds", 1.0,
           where={"case": "prepared-gpu-decode+augment"},
           versus=("train_step", "fastalex-graph", {"dtype": "bf16"})),
)


def load(path: str) -> list:
    """The benchmark records in a pytest-benchmark JSON file or a JSON-lines file."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text).get("benchmarks", [])


def suite_of(record: dict) -> str:
    if record.get("suite"):
        return record["suite"]
    module = record.get("fullname", "").split("::")[0].rsplit("/", 1)[-1]
    return module.removeprefix("bench_").removesuffix(".py")


def impl_of(record: dict) -> str:
    impl = (record.get("extra_info") or {}).get("impl") or (record.get("params") or {}).get("impl")
    impl = impl or "fastalex"
    return ALIASES.get(impl, impl)


def case_of(record: dict) -> tuple:
    """(suite, the case's parameters other than the implementation), as a hashable key."""
    params = {k: v for k, v in (record.get("params") or {}).items() if k != "impl"}
    return suite_of(record), tuple(sorted((k, str(v)) for k, v in params.items()))


def group(records: list) -> dict:
    """{case: {impl: extra_info}}; a later record of the same case and impl replaces an earlier."""
    cases = defaultdict(dict)
    for record in records:
        cases[case_of(record)][impl_of(record)] = record.get("extra_info") or {}
    return cases


def _ratio(num, den):
    return num / den if num and den else None


def reference_rate(versus: tuple, cases: dict):
    """The highest images/s among the cases of ``versus`` = (suite, impl, where), or None."""
    suite, impl, where = versus
    probe = Target("", suite, "images_per_s", 0.0, impl=impl, where=where)
    rates = [cases[case].get(impl, {}).get("images_per_s") for case in cases
             if matches(probe, case, cases[case])]
    return max((r for r in rates if r), default=None)


def measure(target: Target, impls: dict, copy_gbps, cases: dict | None = None) -> tuple:
    """(measured figure or None, what it is in words) of ``target`` on one case (``cases``:
    every case, for a ``"feeds"`` target's reference)."""
    ours = impls.get(target.impl, {})
    base = impls.get(target.baseline, {})
    if target.metric == "speedup":
        return _ratio(base.get("do_bench_ms"), ours.get("do_bench_ms")), f"x {target.baseline}"
    if target.metric == "copy_share":
        return _ratio(ours.get("gb_per_s"), copy_gbps), "of copy bandwidth"
    if target.metric == "images_per_s":
        return ours.get("images_per_s"), "images/s"
    if target.metric == "feeds":
        return (_ratio(ours.get("images_per_s"), reference_rate(target.versus, cases or {})),
                f"x {target.versus[0]} {target.versus[1]} images/s")
    if target.metric == "memory":
        return _ratio(base.get("peak_mib"), ours.get("peak_mib")), f"{target.baseline} peak / ours"
    raise ValueError(f"unknown metric {target.metric!r}")


def matches(target: Target, case: tuple, impls: dict) -> bool:
    suite, _ = case
    if suite != target.suite:
        return False
    info = impls.get(target.impl) or next(iter(impls.values()), {})
    for key, allowed in target.where.items():
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if info.get(key) not in allowed:
            return False
    return True


def case_name(case: tuple) -> str:
    suite, params = case
    return f"{suite}[" + ",".join(v for _, v in params) + "]"


def print_table(cases: dict, copy_gbps) -> None:
    header = f"{'case':58} {'fastalex ms':>11} {'eager ms':>9} {'compile ms':>10} " \
             f"{'x eager':>7} {'x compile':>9} {'GB/s':>7} {'%copy':>6} {'TFLOP/s':>8} {'MiB':>7}"
    print(header)
    print("-" * len(header))

    def fmt(value, spec):
        width = spec.split(".")[0]
        return format(value, spec) if value is not None else format("-", f">{width}")

    for case in sorted(cases):
        impls = cases[case]
        ms = {impl: impls.get(impl, {}).get("do_bench_ms") for impl in COLUMNS}
        ours = impls.get("fastalex", {})
        gbps = ours.get("gb_per_s")
        share = _ratio(100 * gbps if gbps else None, copy_gbps)
        print(f"{case_name(case)[:58]:58} {fmt(ms['fastalex'], '11.4f')} "
              f"{fmt(ms['eager'], '9.4f')} {fmt(ms['compile'], '10.4f')} "
              f"{fmt(_ratio(ms['eager'], ms['fastalex']), '7.2f')} "
              f"{fmt(_ratio(ms['compile'], ms['fastalex']), '9.2f')} {fmt(gbps, '7.0f')} "
              f"{fmt(share, '6.1f')} {fmt(ours.get('tflop_per_s'), '8.1f')} "
              f"{fmt(ours.get('peak_extra_mib'), '7.0f')}")


def print_targets(cases: dict, copy_gbps) -> int:
    """One line per target and matching case; returns how many measured cases miss their bar."""
    print("\ntargets (measured / bar -> verdict)")
    missed = 0
    for target in TARGETS:
        rows = [case for case in sorted(cases) if matches(target, case, cases[case])]
        if not rows:
            print(f"  {target.what}: unmeasured (no case ran)")
            continue
        for case in rows:
            value, unit = measure(target, cases[case], copy_gbps, cases)
            if value is None:
                verdict = "unmeasured"
            else:
                met = value >= target.at_least
                missed += not met
                verdict = f"{value:.3g} {unit} / {target.at_least:g} -> " \
                          f"{'MET' if met else 'NOT MET'}"
            print(f"  {target.what} | {case_name(case)}: {verdict}")
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--out", help="write the merged benchmark JSON here")
    parser.add_argument("--copy", help="copy_bandwidth.py's JSON output")
    args = parser.parse_args()

    records = []
    for path in args.files:
        try:
            records += load(path)
        except (OSError, ValueError) as err:
            print(f"skipped {path}: {err}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"benchmarks": records}, f, indent=1)
    if any((r.get("extra_info") or {}).get("rehearsal") for r in records):
        print("REHEARSAL: CPU timings through Triton's interpreter on tiny shapes; no figure "
              "below is a GPU measurement")

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

    cases = group(records)
    print_table(cases, copy_gbps)
    missed = print_targets(cases, copy_gbps)
    print(f"\n{len(records)} records, {len(cases)} cases; {missed} measured case(s) below a target")


if __name__ == "__main__":
    main()
