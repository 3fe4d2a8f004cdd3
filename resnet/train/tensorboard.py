"""TensorBoard event files beside metrics.jsonl (`--tensorboard`): the same numbers, for people who read runs
there. metrics.jsonl stays the source of truth; this only mirrors each evaluation row."""

from __future__ import annotations

from pathlib import Path

class MissingDependency(OSError):
    """An optional package that an option needs is not installed (a problem of the environment: exit 2)."""


SCALARS = ("loss", "error", "lr", "images_per_sec", "AP")  # row keys ending in one of these are written


def open_writer(run_dir: Path, step: int):
    """A SummaryWriter on `run_dir/tensorboard`; events after `step` (left by a run that crashed) are dropped."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingDependency("--tensorboard needs the tensorboard package: pip install tensorboard "
                                  "(or pip install 'resnet[tensorboard]')") from None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1 if step else None)


def tag(key: str) -> str:
    """'val_top1_error' -> 'val/top1_error', 'lr' -> 'train/lr'."""
    split, _, rest = key.partition("_")
    return f"{split}/{rest}" if split in ("train", "val", "test") and rest else f"train/{key}"


def write_row(writer, row: dict) -> None:
    """One evaluation row's numbers as scalars at its step."""
    for key, value in row.items():
        if isinstance(value, (int, float)) and any(key.endswith(s) for s in SCALARS):
            writer.add_scalar(tag(key), value, row["step"])
    writer.flush()
