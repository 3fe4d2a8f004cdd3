"""Where a result came from: the project's version and git commit, torch and Python versions, the CPU or GPU, and
the command line. Runs record it in their config.json; benchmarks and reports call the same function, so a number
on the results page can be traced to the code and machine that made it.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

import resnet

SOURCE = Path(resnet.__file__).resolve().parent.parent  # the checkout (or site-packages) holding the package
GIT_SECONDS = 5  # the most a git call may take; a slow or broken git only leaves the commit out


def git_commit(root: Path = SOURCE) -> dict | None:
    """{"commit": full hash, "dirty": tracked files changed} when the code runs from a git checkout; None when
    it does not (an installed package, no git program, a git that fails)."""
    if not (root / ".git").exists():  # a folder in a clone, a file in a worktree
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=GIT_SECONDS, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=GIT_SECONDS, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's "model name", else lscpu's "Model name" (ARM), else what Python says."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text(errors="replace").splitlines() if cpuinfo.is_file() else []:
        if line.lower().startswith("model name") and ":" in line:
            return line.split(":", 1)[1].strip()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=GIT_SECONDS).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    for line in lscpu.splitlines():
        if line.strip().startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def gpu_name(device: str | torch.device | None) -> str | None:
    """The GPU's name when `device` is a CUDA device, else None (a CPU run does not start CUDA to ask)."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


def provenance(device: str | torch.device | None = None, argv: list[str] | None = None) -> dict:
    """The record: version, git commit (None outside a checkout), torch, Python, CPU, GPU (CUDA runs), device,
    and the command line (`argv`, default sys.argv) as one shell-quoted string."""
    git = git_commit()
    return {"version": resnet.__version__, "commit": git and git["commit"], "dirty": git and git["dirty"],
            "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
            "gpu": gpu_name(device), "device": None if device is None else str(device),
            "command": shlex.join(sys.argv if argv is None else argv)}
