"""Fault injection for the tests: `RESNET_FAULT=NAME` (or `NAME@N`) kills this process with SIGKILL the
first (or N-th) time the code reaches `fault_point(NAME)`, so a test can crash a real run at an exact point."""

from __future__ import annotations

import os
import signal

_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die here, like `kill -9`, when $RESNET_FAULT names this point (a no-op otherwise)."""
    wanted = os.environ.get("RESNET_FAULT")
    if not wanted:
        return
    point, _, count = wanted.partition("@")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
