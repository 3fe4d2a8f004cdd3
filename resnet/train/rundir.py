"""A run directory's guards: one writer at a time (an fcntl lock naming the holder's PID), no silent
overwrite of another run, and a clean restart after a crash (no stale temporary files, no metrics
rows past the checkpoint being resumed)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from resnet.atomic import atomic_write_text

LOCK_FILE = ".lock"
RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", "checkpoints")
_held: dict[Path, int] = {}  # run directory -> descriptor of its lock file, for the run directories this process holds


class RunDirBusy(ValueError):
    """Another process is writing the run directory."""


def lock(run_dir: Path) -> None:
    """Hold the run directory for this process (a POSIX record lock: released when the process ends, even on
    kill -9, and not inherited by DataLoader workers), or fail in one line naming the holder's PID."""
    key = run_dir.resolve()
    if key in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirBusy(f"{run_dir} is in use by another resnet process (PID {holder}); "
                         f"wait for it to finish, stop it, or use another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def unlock(run_dir: Path) -> None:
    """Let other processes write the run directory again."""
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)


def claim(run_dir: Path, *, fresh: bool, overwrite: bool = False) -> None:
    """Lock `run_dir` (creating it); for a new run refuse a directory that holds a run (or, with `overwrite`,
    remove that run's files); then remove the temporary files a crash may have left. Calling it again
    while holding the directory changes nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is a file, not a run directory")
    lock(run_dir)
    try:
        if fresh and any((run_dir / name).exists() for name in RUN_FILES):
            if not overwrite:
                raise ValueError(f"{run_dir} already holds a run of {_model_of(run_dir)}; use --resume {run_dir} "
                                 f"to continue it, or another --out (or --overwrite to replace it)")
            for name in RUN_FILES:
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        remove_temporaries(run_dir)
    except BaseException:
        unlock(run_dir)
        raise


def _model_of(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "config.json").read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown model"


def remove_temporaries(run_dir: Path) -> None:
    """Delete `.NAME.XXXXXXXX.tmp` files that a killed process left (atomic writes that never got renamed)."""
    for path in run_dir.rglob(".*.tmp"):
        path.unlink(missing_ok=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the metrics rows up to `step` (the checkpoint being resumed) and drop a torn last line,
    so a crash and resume never leave two rows for one step."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = [line for line in lines if (row_step := _step_of(line)) is not None and row_step <= step]
    if keep != lines:
        atomic_write_text(path, "".join(line + "\n" for line in keep))


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
