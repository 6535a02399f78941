"""Train every (arm, seed) of a study through the training command's own code, resumably.

Each run is ``train.run(options.resolve([], **overrides))``, exactly what
``python -m fastalex.train`` does, in ``OUTPUT_DIR/runs/<arm>-seed<k>/``, which keeps its
metrics.jsonl and checkpoints. A finished run is marked by ``result.json``, written atomically
after training: a rerun skips it. A run with a checkpoint but no result was killed: it is
resumed from its checkpoint (``resume=``), which continues it exactly. A grid arm (the
learning-rate search of Figure 1) trains every grid point at the first seed, then the other
seeds at the point that scored best.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from fastalex.training import checkpoint, options, train
from fastalex.training.atomic import write_atomic
from fastalex.training.startup import UsageError
from fastalex.training.study import claims as claims_mod
from fastalex.training.study import measures

RESULT = "result.json"
TEN_CROP = "ten_crop.json"


@dataclass(frozen=True)
class Budget:
    """Epochs per run. FULL is sized so that every claim at 3 seeds takes about an hour on 2
    idle CPU cores (docs/REPRODUCTION.md gives the measurement); QUICK is a smoke run of one
    seed in well under 15 minutes."""

    alexnet_epochs: int
    convnet4_epochs: int

    def epochs(self, model: str) -> int:
        return self.convnet4_epochs if model == "convnet4" else self.alexnet_epochs


FULL = Budget(alexnet_epochs=4, convnet4_epochs=12)
QUICK = Budget(alexnet_epochs=1, convnet4_epochs=2)


def _grid_points(arm) -> list[dict]:
    points = [{}]
    for key, values in arm.grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def run_label(arm, point: dict) -> str:
    """``convnet4-relu-lr0.01`` for a grid point, the arm's name otherwise."""
    return arm.name + "".join(f"-{k}{v:g}" if isinstance(v, float) else f"-{k}{v}"
                              for k, v in point.items())


def run_dir(output_dir, label: str, seed: int) -> Path:
    return Path(output_dir) / "runs" / f"{label}-seed{seed}"


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=1) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


class Study:
    """The runs of a study in ``output_dir``: ``seeds`` seeds (0, 1, ...) per arm, ``budget``
    epochs per run, ``base`` overrides for every run (``device``, ``data``, or smaller
    settings in tests). ``bar`` (optional) is advanced by one per run or evaluation done."""

    def __init__(self, output_dir, *, seeds: int, budget: Budget, base: dict | None = None,
                 bar=None):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        self.output_dir = Path(output_dir)
        self.seeds, self.budget, self.base, self.bar = seeds, budget, dict(base or {}), bar
        self.trained: list[str] = []  # labels of the runs this process trained or resumed

    def planned(self, claims) -> int:
        """How many runs and evaluations :meth:`run` takes for ``claims``."""
        total = sum(len(_grid_points(arm)) + self.seeds - 1 if arm.grid else self.seeds
                    for arm in claims_mod.arms_of(claims))
        return total + (self.seeds if any(c.name == "ten-crop" for c in claims) else 0)

    def overrides(self, arm, point: dict, seed: int) -> dict:
        base = claims_mod.CONVNET4_BASE if arm.model == "convnet4" else {}
        return {**base, "epochs": self.budget.epochs(arm.model), **self.base, **arm.overrides,
                **point, "seed": seed, "no_progress": True}

    def run_one(self, arm, point: dict, seed: int) -> dict:
        """The result of one run: read if it finished before, else trained (or resumed)."""
        label = run_label(arm, point)
        out = run_dir(self.output_dir, label, seed)
        result_path = out / RESULT
        settings = self.overrides(arm, point, seed)
        kwargs = {**settings, "output_dir": str(out)}
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            saved = {k: v for k, v in result["overrides"].items() if k != "output_dir"}
            if saved != json.loads(json.dumps(settings)):  # the directory may be named anew
                raise UsageError(f"{out} holds a run with other settings (another budget, "
                                 "--data or --device?): give this study another --output-dir")
        else:
            if (out / checkpoint.CHECKPOINT).is_file():
                kwargs["resume"] = str(out / checkpoint.CHECKPOINT)
            config = options.resolve([], **kwargs)
            summary = train.run(config)
            self.trained.append(f"{label}-seed{seed}")
            result = {"arm": arm.name, "label": label, "seed": seed, "point": point,
                      "overrides": {k: v for k, v in kwargs.items() if k != "resume"},
                      "args": {k: v for k, v in vars(config).items() if k != "resume"},
                      "epochs_done": summary["epochs_done"], "best": summary["best"],
                      "history": summary["history"]}
            _write_json(result_path, result)
        self._advance()
        return result

    def _advance(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def run_arm(self, arm) -> dict:
        """``{"results": {seed: result}, "point": the grid point the seeds used}``."""
        if not arm.grid:
            return {"results": {s: self.run_one(arm, {}, s) for s in range(self.seeds)},
                    "point": {}, "grid": []}
        grid = [(p, self.run_one(arm, p, 0)) for p in _grid_points(arm)]
        point, first = min(grid, key=lambda pr: measures.selection_key(arm.select, pr[1]))
        results = {0: first}
        for seed in range(1, self.seeds):
            results[seed] = self.run_one(arm, point, seed)
        return {"results": results, "point": point, "grid": grid}

    def ten_crop(self, arm_runs: dict) -> None:
        """Score each run's final checkpoint with the centre crop and the 10 crops (cached in
        ``ten_crop.json`` beside it) into its result, as ``result["ten_crop"]``."""
        from fastalex.training import evaluate

        for seed, result in arm_runs["results"].items():
            out = run_dir(self.output_dir, result["label"], seed)
            path = out / TEN_CROP
            if not path.is_file():
                scores = evaluate.evaluate_checkpoint(
                    out / checkpoint.CHECKPOINT, device=self.base.get("device"), ten_crop=True,
                    center=True, workers=result["args"]["workers"],
                    progress=False)
                _write_json(path, {k: scores[k] for k in ("epoch", "center", "ten_crop")})
            result["ten_crop"] = json.loads(path.read_text())
            self._advance()

    def run(self, claims) -> dict:
        """Every arm of ``claims`` at every seed: ``{arm name: run_arm(...)}``."""
        runs = {arm.name: self.run_arm(arm) for arm in claims_mod.arms_of(claims)}
        if any(c.name == "ten-crop" for c in claims):
            self.ten_crop(runs[claims_mod.BASELINE])
        return runs
