"""``OUTPUT_DIR/REPORT.md``: one table row per measure (claim, the paper's figure, the measured
effect as mean +- std over seeds, its 95% interval, the verdict), then per claim its arms'
per-seed values and the plot it cites."""

from dataclasses import dataclass
from pathlib import Path

from fastalex.training.atomic import write_atomic
from fastalex.training.study import figures, measures, statistics
from fastalex.training.study.claims import TRAIN_ERROR_THRESHOLD

VERDICT_RULE = (
    "Each effect is computed per seed between runs that share the seed (same data, same "
    "budget, one factor changed), oriented so that the paper's claim is an effect above the "
    "null value (0 for a difference, 1 for a ratio). The verdict is *reproduced* when the 95% "
    "t-interval over seeds (mean +- t(0.975, n-1) std / sqrt(n)) excludes the null value on "
    "the paper's side, *not reproduced* when it excludes it on the other side, and "
    "*inconclusive at this scale* otherwise, and always with a single seed (no interval). A "
    "run that never reached the 25% training error within its budget counts its whole budget "
    "as a lower bound (shown as \"> x\"): an interval of lower bounds can only confirm the "
    "claim; a ratio whose denominator never reached it cannot be measured.")


@dataclass(frozen=True)
class Row:
    claim: str
    measure: str
    paper: str
    effect: str
    interval: str
    verdict: str
    n: int


# A finding's verdict (a change the paper does not make): the same rule, other words.
FINDING_VERDICTS = {
    statistics.REPRODUCED: "the departure helps",
    statistics.NOT_REPRODUCED: "the departure hurts",
    statistics.INCONCLUSIVE: "no difference shown at this scale",
}


def _fmt(x: float, unit: str) -> str:
    return f"{x:.2f}{unit}" if unit == "x" else f"{x:+.2f}{unit}"


def measure_row(claim, measure, runs: dict) -> Row:
    """The table row of one measure of ``claim`` over every seed in ``runs``."""
    seeds = sorted(runs[measure.arm]["results"])
    values = [measures.effect(measure, runs, s) for s in seeds]
    name = f"`{claim.name}`"
    if any(v is None for v in values):
        return Row(name, measure.label, measure.paper,
                   f"not measurable: {measure.reference} never reached "
                   f"{100 * TRAIN_ERROR_THRESHOLD:.0f}% within the budget", "-",
                   statistics.INCONCLUSIVE, len(seeds))
    s = statistics.summarize([v.value for v in values])
    bound = "> " if any(v.censored for v in values) else ""
    effect = bound + _fmt(s.mean, measure.unit) + (
        f" ± {s.std:.2f}" if s.std is not None else " (one seed)")
    interval = "-" if s.low is None else \
        f"[{bound}{_fmt(s.low, measure.unit)}, {_fmt(s.high, measure.unit)}]"
    verdict = statistics.verdict(s, measure.null)
    if bound and verdict == statistics.NOT_REPRODUCED:  # lower bounds cannot refute
        verdict = statistics.INCONCLUSIVE
    if measure.finding:
        verdict = FINDING_VERDICTS[verdict]
    return Row(name, measure.label, measure.paper, effect, interval, verdict, s.n)


def _arm_table(claim, runs: dict) -> list[str]:
    """Per arm and seed: the metrics the claim's measures use."""
    metrics = list(dict.fromkeys(m.metric for m in claim.measures))
    lines = ["| arm | seed | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for arm in claim.arms:
        for seed, result in sorted(runs[arm.name]["results"].items()):
            cells = []
            for metric in metrics:
                if metric == "ten_crop_gain" and "ten_crop" not in result:
                    cells.append("-")
                    continue
                v = measures.METRICS[metric](result)
                cells.append(("> " if v.censored else "") + f"{v.value:.2f}")
            lines.append(f"| {result['label']} | {seed} | " + " | ".join(cells) + " |")
    return lines


def _grid_lines(claim, runs: dict) -> list[str]:
    lines = []
    for arm in claim.arms:
        grid = runs[arm.name]["grid"]
        if not grid:
            continue
        tried = ", ".join(
            f"{run['label']}: " + ("> " if v.censored else "") + f"{v.value:.0f} steps"
            for run, v in ((r, measures.METRICS[arm.select](r)) for _, r in grid))
        lines.append(f"- {arm.name}: searched at seed 0 ({tried}); the other seeds use "
                     f"{runs[arm.name]['point']}.")
    return lines


def write_report(output_dir, claims, runs: dict, *, header: str = "") -> Path:
    """Write ``output_dir/REPORT.md`` and the PNGs it cites; returns the report's path."""
    output_dir = Path(output_dir)
    rows = [measure_row(c, m, runs) for c in claims for m in c.measures]
    lines = ["# The paper's claims, reproduced", ""]
    if header:
        lines += [header, ""]
    lines += ["| claim | measure | paper | measured (mean ± std) | 95% interval | verdict | "
              "seeds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.claim} | {r.measure} | {r.paper} | {r.effect} | {r.interval} | "
              f"{r.verdict} | {r.n} |" for r in rows]
    lines += ["", "**Verdict rule.** " + VERDICT_RULE, ""]
    for claim in claims:
        lines += [f"## `{claim.name}`: {claim.title}", "", claim.says, ""]
        lines += _grid_lines(claim, runs)
        lines += ["", *_arm_table(claim, runs), ""]
        series = {arm.name: [r["history"] for _, r in sorted(runs[arm.name]["results"].items())]
                  for arm in claim.arms}
        png = f"{claim.name}.png"
        threshold = 100 * TRAIN_ERROR_THRESHOLD if claim.plot == "train_top1_error" else None
        figures.arm_curves(series, claim.plot, output_dir / png, title=claim.title,
                           threshold=threshold)
        lines += [f"![{claim.title}]({png})", ""]
    path = output_dir / "REPORT.md"
    text = "\n".join(lines)
    write_atomic(path, lambda f: f.write(text.encode()))
    return path
