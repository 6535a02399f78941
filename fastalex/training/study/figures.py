"""The study's plots: one metric against epochs for each arm of a claim (every seed thin, their
mean thick), as the paper's Figure 1 shows training error against epochs. Matplotlib's Agg
backend, written atomically."""

from pathlib import Path

from fastalex.training.atomic import write_atomic

LABELS = {"train_top1_error": "training top-1 error (%)",
          "val_top1_error": "validation top-1 error (%)",
          "gap": "validation minus training top-1 error (points)"}


def column(row: dict, name: str) -> float:
    """A metrics row's ``name`` in percent; ``gap`` is validation minus training error."""
    if name == "gap":
        return 100 * (row["val_top1_error"] - row["train_top1_error"])
    return 100 * row[name]


def arm_curves(series: dict, name: str, path, *, title: str, threshold: float | None = None):
    """``series`` maps an arm's label to its runs' histories (metrics rows); plots ``name``
    against epochs into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, histories) in enumerate(series.items()):
        color = f"C{i}"
        for history in histories:
            ax.plot([r["epoch"] for r in history], [column(r, name) for r in history],
                    color=color, alpha=0.3, linewidth=1)
        length = min(len(h) for h in histories)
        mean = [sum(column(h[e], name) for h in histories) / len(histories)
                for e in range(length)]
        ax.plot(range(1, length + 1), mean, color=color, marker="o", linewidth=2,
                label=f"{label} ({len(histories)} seed{'s' if len(histories) > 1 else ''})")
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set(title=title, xlabel="epoch", ylabel=LABELS.get(name, name))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path
