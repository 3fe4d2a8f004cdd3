"""Training curves in the paper's style (Fig. 1, 4, 6): training error dashed, test error bold,
one colour per network, error (%) against iterations; Fig. 6 puts plain nets left, residual right."""

from __future__ import annotations

import json
from pathlib import Path

from resnet.atomic import atomic_write


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file (an empty list if there is none yet).

    A last line without its newline is a row being written (another process is running) or torn by a crash (a
    resume removes it): it is left out. Any other line that is not a JSON object is one error naming the file.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{path}: line {number} is not a JSON object; the file is damaged (remove that line "
                             f"to keep the others)")
        rows.append(row)
    return rows


def _draw(ax, runs: dict[str, list[dict]], colours: dict[str, str]) -> None:
    """One panel: each run's training error (dashed) and held-out error (bold) against iterations; the legend
    names the split that was drawn bold (test, or val where a run has no test split: an image folder)."""
    drawn = []
    for label, rows in runs.items():
        steps = [r["step"] for r in rows]
        held_out = held_out_key(rows)
        drawn.append(held_out.split("_")[0])
        marker = "o" if len(rows) < 3 else None  # a line through one point would draw nothing
        ax.plot(steps, [100 * r["train_error"] for r in rows], color=colours[label], linewidth=0.9,
                linestyle="--", marker=marker, markersize=3)
        ax.plot(steps, [100 * r.get(held_out, float("nan")) for r in rows], color=colours[label], linewidth=2.2,
                marker=marker, markersize=4, label=label)
    ax.set_xlabel("iterations")
    ax.grid(alpha=0.3)
    ax.legend(title=f"bold: {'/'.join(dict.fromkeys(drawn)) or 'test'}, dashed: train", fontsize=8, title_fontsize=8)


def held_out_key(rows: list[dict]) -> str:
    """The metrics key of the held-out error drawn bold: the test split's when the rows have one, else val's."""
    return "test_top1_error" if any("test_top1_error" in r for r in rows) else "val_top1_error"


def plot_panels(panels: dict[str, dict[str, list[dict]]], path: str | Path, title: str | None = None,
                colours: dict[str, str] | None = None) -> Path:
    """Panels side by side sharing the y axis (Fig. 6: plain left, residual right); written atomically as PNG.

    `colours` maps run labels to colours (e.g. one per depth, the same in every panel).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for runs in panels.values() for label in runs]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = colours or {label: cycle[i % len(cycle)] for i, label in enumerate(dict.fromkeys(labels))}
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), dpi=120, sharey=True, squeeze=False)
    for ax, (name, runs) in zip(axes[0], panels.items()):
        _draw(ax, runs, colours)
        if name:
            ax.set_title(name)
    axes[0][0].set_ylabel("error (%)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def plot_curves(runs: dict[str, list[dict]], path: str | Path, title: str | None = None) -> Path:
    """One panel of runs (a single run's curves.png, or several nets compared)."""
    return plot_panels({"": runs}, path, title=title)
