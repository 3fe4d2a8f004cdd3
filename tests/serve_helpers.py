"""What the server's tests, its benchmark and its fault pass share: a tiny Fashion-MNIST-style checkpoint, images,
and a real `resnet serve` process on a free loopback port."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from resnet.checkpoint import save_weights
from resnet.data.small import FASHION_MNIST_CLASSES
from resnet import create_model

ROOT = Path(__file__).resolve().parents[1]


def fashion_checkpoint(path: Path, seed: int = 0, base_width: int = 4) -> Path:
    """A ResNet-20 (base width 4) for 28x28 grey images with Fashion-MNIST's class names, random weights and BN
    statistics (so that classes differ in probability), and a per-pixel mean."""
    torch.manual_seed(seed)
    model = create_model("resnet20", num_classes=10, in_channels=1, base_width=base_width).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    meta = {"model": "resnet20", "options": model.options, "class_names": list(FASHION_MNIST_CLASSES),
            "classes": [str(i) for i in range(10)], "image_size": 28, "style": "small", "dataset": "fashion-mnist"}
    save_weights(path, model, meta, torch.rand(1, 28, 28) * 0.2 + 0.2)
    return path


def fashion_image(seed: int, size: int = 28) -> np.ndarray:
    """A grey garment-like image: a bright smooth blob on black, as Fashion-MNIST's pictures are."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    cy, cx, ry, rx = g.uniform(0.35, 0.65), g.uniform(0.35, 0.65), g.uniform(0.15, 0.4), g.uniform(0.15, 0.4)
    blob = np.exp(-(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) * 2)
    return (255 * blob * g.uniform(0.6, 1.0, (size, size))).clip(0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder: Path, n: int, size: int = 28) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i:03d}.png")
        paths[-1].write_bytes(png_bytes(fashion_image(i, size)))
    return paths


def detector_and_scene(folder: Path) -> tuple[Path, Path]:
    """A tiny untrained C4 Mask R-CNN (every box kept: score threshold 0) saved in `folder`, and a 64 px scene."""
    from test_detection import TINY

    from resnet.detection import create_detector, save_detector

    torch.manual_seed(0)
    model = create_detector("resnet20", "c4", True, class_names=["cat", "dog"], in_channels=1, base_width=8,
                            **{**TINY, "box_score_thresh": 0.0})
    path = save_detector(folder / "det.safetensors", model)
    scene = folder / "scene.png"
    scene.write_bytes(png_bytes(fashion_image(3, size=64)))
    return path, scene


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(threads: int | None = 1) -> dict:
    """The server's environment: this tree first on the path, `threads` OpenMP threads (None: torch's default),
    exact fp32 unless the caller's environment says otherwise."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("RESNET_CPU_FAST", "0")
    return env


def start_server(checkpoint: Path, *options: str, port: int | None = None, wait: float = 60,
                 log: Path | None = None, threads: int | None = 1) -> tuple[subprocess.Popen, str]:
    """`python -m resnet serve` on 127.0.0.1 and a free port; returns (process, base URL) once /health says ready."""
    port = port or free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "resnet", "serve", "--checkpoint", str(checkpoint),
                                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *options],
                               env=environment(threads), stdout=out,
                               stderr=subprocess.STDOUT if log else subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"resnet serve exited with {process.returncode}: "
                               f"{process.stderr.read().decode() if process.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise RuntimeError(f"resnet serve did not become ready within {wait} s")


def stop_server(process: subprocess.Popen, timeout: float = 20) -> int | None:
    """SIGTERM, then SIGKILL of its process group if it has not exited within `timeout`."""
    import signal

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    return process.returncode


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 and a free port, in a thread of the test process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        url, deadline = f"http://127.0.0.1:{self.port}", time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not become ready")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)
