"""Shared fixtures: small datasets written in their real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TEST_DEVICE, write_idx


def pytest_configure(config: pytest.Config) -> None:
    if TEST_DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"RESNET_TEST_DEVICE={TEST_DEVICE!r}: use cpu or cuda")
    if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("RESNET_TEST_DEVICE=cuda, but no CUDA device is available")


@pytest.fixture(autouse=True, scope="session")
def fp32_on_every_cpu():
    """Tests compare against fp32 references: keep the CPU in fp32 whether or not it has native bf16, so the
    suite means the same on every machine (session-wide, so module fixtures and subprocesses see it too).
    tests/test_precision.py turns the fast path on where it tests it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESNET_CPU_FAST", "0")
        yield


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Means computed for the tests' many tiny datasets go to a folder of the session's, not to the user's
    ~/.cache/resnet (one file per dataset folder: hundreds a day otherwise)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def learnable_images(n: int, seed: int, classes: int = 4, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose class is a bright horizontal band at a class-specific height."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 80, (n, size, size))
    band = size // classes
    for i, label in enumerate(labels):
        images[i, label * band:(label + 1) * band, :] += 150
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_tiny_fashion(folder: Path) -> Path:
    """A new Fashion-MNIST folder (IDX gz files) with 512 training and 128 test images, 4 classes, learnable."""
    folder.mkdir()
    for stem, n, seed in (("train", 512, 0), ("t10k", 128, 1)):
        images, labels = learnable_images(n, seed)
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture
def tiny_fashion(tmp_path: Path) -> Path:
    """A Fashion-MNIST folder (IDX gz files) with 512 training and 128 test images, learnable."""
    return write_tiny_fashion(tmp_path / "fashion")
