"""The confusion matrix as a picture with the class names, and the per-class table beside the errors.

Rows are the true classes, columns the top-1 predictions; each cell is shaded by the share of the row's
images (so classes of different sizes compare) and, up to 30 classes, labelled with its count.
"""

from __future__ import annotations

from pathlib import Path

from resnet.atomic import atomic_write

MAX_TABLE_CLASSES = 50  # more classes than this: the per-class table is in --json only


def plot_confusion(confusion: list[list[int]], names: list[str], path: str | Path, title: str = "") -> Path:
    """Draw the confusion matrix to `path` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64)
    k = len(counts)
    if k == 0:
        raise ValueError(f"--confusion {path}: no images were scored")
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.45 * k, 40)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's images")
    labels = [str(n) for n in names] if len(names) == k else [str(i) for i in range(k)]
    ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=8 if k > 20 else 10)
    ax.set_yticks(range(k), labels, fontsize=8 if k > 20 else 10)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7 if k > 12 else 9,
                            color="white" if shares[i, j] > 0.5 else "black")
    ax.set_title(title or f"confusion matrix ({int(counts.sum())} images)")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def format_per_class(rows: list[dict]) -> str:
    """A fixed-width table: class, images, top-1 error, precision, recall (percent; '-' where undefined)."""
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    header = ("class", "images", "top-1 err %", "precision %", "recall %")
    body = [(str(r["class"]), str(r["images"]), pct(r["top1_error"]), pct(r["precision"]), pct(r["recall"]))
            for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in body)])
