"""The one writer of benchmarks/results/*.json: the result with where it came from (resnet/provenance.py: version,
commit, torch, Python, CPU or GPU, command line) and the load average when it was written (the machine is shared;
ratios measured side by side in one run are what a result claims), written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from resnet.atomic import atomic_write_text
from resnet.provenance import provenance


def write_result(path: str | Path, result: dict, *, echo: bool = True) -> Path:
    """Write `result` plus "provenance" and "load_average" (1, 5, 15 min) to `path` as JSON; print it when `echo`."""
    record = {**result, "provenance": provenance(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(record, indent=2)
    written = atomic_write_text(path, text + "\n")
    if echo:
        print(text)
    return written
