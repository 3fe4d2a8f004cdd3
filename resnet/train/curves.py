"""Training curves in the paper's style (Fig. 1, 4, 6): training error thin, test error bold,
one colour per network, error (%) against iterations."""

from __future__ import annotations

import json
from pathlib import Path

from resnet.checkpoint import atomic_write


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file (an empty list if there is none yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(runs: dict[str, list[dict]], path: str | Path, title: str | None = None) -> Path:
    """Plot each run's train and held-out error against iterations; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(runs.items()):
        colour = colours[i % len(colours)]
        steps = [r["step"] for r in rows]
        held_out = "test_top1_error" if any("test_top1_error" in r for r in rows) else "val_top1_error"
        ax.plot(steps, [100 * r["train_error"] for r in rows], color=colour, linewidth=0.8, linestyle="--")
        ax.plot(steps, [100 * r.get(held_out, float("nan")) for r in rows], color=colour, linewidth=2.2,
                label=label)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="bold: test, dashed: train", fontsize=8, title_fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png")

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)
