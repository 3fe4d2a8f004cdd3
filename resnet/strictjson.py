"""Strict JSON for results files: NaN and infinity (which `json.dumps` writes as invalid JSON) become null; and
reading a JSON object back with one line naming the file when it is damaged."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from resnet.atomic import atomic_write_text


def finite(value: Any) -> Any:
    """`value` with every non-finite float inside dicts, lists and tuples replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` that never writes NaN or Infinity (they are written as null)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def write(path: str | Path, value: Any) -> Path:
    """`value` as indented strict JSON in `path`, written atomically (what `--json OUT` options write)."""
    return atomic_write_text(path, dumps(value, indent=2))


def read_object(path: str | Path, required: tuple[str, ...] = (), fix: str = "") -> dict:
    """The JSON object in `path`, or one ValueError line naming the file and what is wrong with it (unreadable,
    empty, truncated or corrupt, a list or a number instead of an object, a required key missing), then `fix`."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ValueError(f"{path}: cannot be read ({reason}){tail}") from None
    if not text.strip():
        raise ValueError(f"{path}: is empty{tail}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: is not valid JSON (truncated or corrupt: {error.msg} at line {error.lineno}, "
                         f"column {error.colno}){tail}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a JSON {type(value).__name__}, not an object{tail}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ValueError(f"{path}: has no {', '.join(map(repr, missing))}{tail}")
    return value
