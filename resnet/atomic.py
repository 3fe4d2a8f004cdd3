"""Atomic file writes: write to a temporary name beside the target, flush, rename, so a failure mid-write
leaves the previous file intact and a reader never sees half a file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside `path` (`.NAME.XXXXXXXX.tmp`), for writing before a rename."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename tmp_path onto `path` (atomic on POSIX).

    The temporary file is created like `open` does (mode 0666 less the umask), flushed to disk
    before the rename, and removed if `write` fails; an OSError names `path`, not the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = tmp.stat().st_mode  # 0666 less the umask: kept even if `write` recreates the file (safetensors does)
        write(str(tmp))
        os.chmod(tmp, mode)
        fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    except BaseException:
        _discard(tmp)
        raise
    fsync(path.parent)
    return path


def _discard(tmp: Path) -> None:
    """Remove a temporary file if it is there; where even that fails (a read-only disk) the error that
    matters is the write's, so this one is not raised."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk, so a rename never exposes an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
