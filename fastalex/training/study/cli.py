"""The command line of ``python -m fastalex.reproduce``."""

import argparse
import platform
import time

import torch

from fastalex.training.startup import HelpFormatter, UsageError, run_cli
from fastalex.training.study import claims as claims_mod
from fastalex.training.study import report, runner
from fastalex.training.system import usable_cpus

PROG = "python -m fastalex.reproduce"
DESCRIPTION = (
    "Run the paper's claims as controlled experiments (same data, same budget, several seeds, "
    "one factor changed) through the training command's own code, and write "
    "OUTPUT_DIR/REPORT.md: per claim the measured effect (mean ± std over seeds), its 95% "
    "interval and a verdict. A rerun skips finished runs and resumes a killed one. The method: "
    "docs/REPRODUCTION.md.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("--claims", metavar="A,B", default="all",
                   help=f"the claims to run, comma-separated: {', '.join(claims_mod.NAMES)}")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="seeds per arm (default: 3, 1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"one seed and short runs ({runner.QUICK.alexnet_epochs} AlexNet "
                        f"epochs, {runner.QUICK.convnet4_epochs} for the four-layer CNN; "
                        f"full: {runner.FULL.alexnet_epochs} and "
                        f"{runner.FULL.convnet4_epochs}): a smoke run, every verdict "
                        "inconclusive")
    p.add_argument("--output-dir", metavar="DIR",
                   help="where runs/<arm>-seed<k>/ and REPORT.md go (default: runs/reproduce, "
                        "runs/reproduce-quick with --quick)")
    p.add_argument("--data", metavar="DIR",
                   help="the same study on an ImageFolder tree (train/ and val/) with the "
                        "paper's recipe (default: the built-in shapes dataset)")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    return p


def _header(args, seeds: int, budget, seconds: float) -> str:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()} "
            f"{platform.processor() or platform.system()}, {usable_cpus()} usable CPUs, device "
            f"{device}; torch {torch.__version__}; data {args.data or 'built-in shapes'}; "
            f"{seeds} seed{'s' if seeds > 1 else ''}; {budget.alexnet_epochs} epochs per "
            f"AlexNet run, {budget.convnet4_epochs} per four-layer CNN run; wall time of "
            f"this invocation {seconds / 60:.1f} min.")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        from tqdm.auto import tqdm

        try:
            names = [] if args.claims == "all" else args.claims.split(",")
            selected = claims_mod.select(names)
        except ValueError as exc:
            raise UsageError(f"--claims: {exc}") from None
        seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
        if seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {seeds}")
        budget = runner.QUICK if args.quick else runner.FULL
        output_dir = args.output_dir or ("runs/reproduce-quick" if args.quick
                                         else "runs/reproduce")
        base = {k: v for k, v in (("data", args.data), ("device", args.device)) if v}
        start = time.perf_counter()
        with tqdm(desc="study runs", unit="run") as bar:
            study = runner.Study(output_dir, seeds=seeds, budget=budget, base=base, bar=bar)
            bar.total = study.planned(selected)
            bar.refresh()
            runs = study.run(selected)
        path = report.write_report(output_dir, selected, runs,
                                   header=_header(args, seeds, budget,
                                                  time.perf_counter() - start))
        print(f"wrote {path}")
        return 0

    return run_cli(PROG, command, interrupted="interrupted; finished runs are kept and a rerun "
                                              "resumes the killed one")
