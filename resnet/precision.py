"""Numeric fast paths: bf16/fp16 autocast and channels_last, chosen per device.

On CUDA both are on by default. On the CPU they pay only where the processor computes bf16
natively (AVX512-BF16 or AMX): there bf16 autocast with channels_last trains about 1.7x faster;
elsewhere bf16 is emulated and many times slower than fp32, so the default stays fp32.
$RESNET_CPU_FAST (1, 0 or auto) overrides the CPU choice for training, evaluation and prediction alike.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matrix work in hardware (AVX512-BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


CPU_FAST_ENV = "RESNET_CPU_FAST"  # "auto" (default), "1" or "0": the CPU choice for every command at once


def default_on(device: torch.device | str) -> bool:
    """Whether autocast and channels_last are worth having on `device` when the user did not say.

    On the CPU, $RESNET_CPU_FAST=1/0 overrides the automatic choice (e.g. for exact fp32 scores from `eval`).
    """
    device = torch.device(device)
    if device.type != "cpu":
        return device.type == "cuda"
    setting = os.environ.get(CPU_FAST_ENV, "auto").strip().lower()
    if setting not in ("auto", "", "0", "1"):
        raise ValueError(f"invalid ${CPU_FAST_ENV}={setting!r}; use 1 (bf16 autocast + channels_last), "
                         f"0 (fp32) or auto")
    return cpu_has_native_bf16() if setting in ("auto", "") else setting == "1"


def amp_dtype(device: torch.device | str, amp: bool | None, dtype: str = "bf16") -> torch.dtype | None:
    """The autocast dtype for `device` (None: full fp32). `amp` None means: on where it pays."""
    enabled = default_on(device) if amp is None else amp
    return DTYPES[dtype] if enabled else None


def channels_last(device: torch.device | str, requested: bool | None) -> bool:
    """Whether to lay activations out as NHWC. `requested` None means: on where autocast pays."""
    return default_on(device) if requested is None else requested


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for `dtype` on `device`, or a no-op context for fp32."""
    device = torch.device(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def describe(dtype: torch.dtype | None, nhwc: bool) -> str:
    """For start-up lines: 'bf16 autocast, channels_last' or 'fp32, NCHW'."""
    precision = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(dtype, "fp32")
    return f"{precision}, {'channels_last' if nhwc else 'NCHW'}"


__all__ = ["CPU_FAST_ENV", "DTYPES", "amp_dtype", "autocast", "channels_last",
           "cpu_has_native_bf16", "default_on", "describe"]
