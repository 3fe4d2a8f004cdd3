"""How many images one forward pass may take: evaluation and prediction split an oversized batch into chunks
that fit the memory there is, so `--batch-size 4096` under a memory limit gives the same scores as 64 does.

The estimate is deliberately simple: a ResNet's widest activations hold about 5x the elements of its input
(64 channels at 1/4 of the pixels for ImageNet nets, 16 channels at full size for CIFAR nets, 4x wider
bottleneck outputs at 1/16), and inference keeps a few of them alive at once; ACTIVATION_FACTOR bytes of
memory per input byte covers that with room. The memory there is: the free GPU memory on CUDA; on the CPU the
least of the system's available memory, the cgroup's limit less its usage, and the address-space limit
(`ulimit -v`) less what this process has mapped.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from pathlib import Path

import torch

ACTIVATION_FACTOR = 32  # bytes of memory one forward pass needs per byte of fp32 input, with headroom
PASS_CAP = 4 * 1024**3  # on the CPU, the most one forward pass may plan to use (the rest stays for everything else)
SHARE = 2  # a pass may plan to use 1/SHARE of the memory that is free


def _meminfo(key: str) -> int | None:
    """A /proc/meminfo field in bytes (Linux), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) reads as None


def _cgroup_free() -> int | None:
    """The memory this process's cgroup may still use (v2 memory.max - memory.current, or v1), or None."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:
            return max(0, cap - used)
    return None


def _address_space_free() -> int | None:
    """Under `ulimit -v`: the limit less this process's mapped size (VmSize), or None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_bytes(device: torch.device | str) -> int:
    """The memory a forward pass on `device` can count on now (see the module's docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    known = [v for v in (_meminfo("MemAvailable"), _cgroup_free(), _address_space_free()) if v is not None]
    return min(known) if known else PASS_CAP * SHARE


def images_per_pass(image_bytes: int, device: torch.device | str) -> int:
    """How many images of `image_bytes` (fp32 input) one forward pass may take on `device` (at least 1)."""
    budget = free_bytes(device) // SHARE
    if torch.device(device).type != "cuda":  # a GPU's memory is there for this; a CPU's is shared with the rest
        budget = min(budget, PASS_CAP)
    return max(1, budget // max(1, image_bytes * ACTIVATION_FACTOR))


def input_bytes(image: torch.Tensor) -> int:
    """The fp32 bytes of one image [C, H, W] as the estimate counts them: a 1-channel (grey) image as 3 channels,
    since the first convolution's output is as wide as for colour images."""
    channels = image.shape[0] if image.dim() == 3 else 3
    return image.numel() * 4 * max(1, 3 // max(1, channels))


def chunks_for(x: torch.Tensor, device: torch.device | str) -> Sequence[torch.Tensor]:
    """The batch `x` [N, C, H, W] as consecutive chunks that each fit one forward pass (one chunk when it fits)."""
    if len(x) <= 1:
        return (x,)
    n = images_per_pass(input_bytes(x[0]), device)
    return (x,) if len(x) <= n else x.split(n)


def views_bytes(views) -> int:
    """The bytes one image's prepared views (a tensor [V, C, H, W] or a list of [C, H, W]) count for (`input_bytes`)."""
    if isinstance(views, torch.Tensor):
        views = list(views) if views.dim() == 4 else [views]
    return sum(input_bytes(v) for v in views)


def batch_that_fits(batch_size: int, image_bytes: int, device: torch.device | str) -> int:
    """`batch_size`, or fewer images when a batch of that many prepared images (held while it is scored, with
    the forward pass's chunks) would not fit: the loader then reads smaller batches; the scores are the same."""
    return max(1, min(batch_size, images_per_pass(image_bytes, device)))
