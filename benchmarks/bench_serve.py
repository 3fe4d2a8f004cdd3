"""`resnet serve` under load, beside the offline rate of the same images, in one run (loopback only, bounded).

For each model (a Fashion-MNIST ResNet-20 at 28x28, an ImageNet ResNet-50 at 224: random weights, the speed is
the same) and each server mode (dynamic batching: --max-batch 32 --max-wait-ms 5; no batching: --max-batch 1),
a real `resnet serve` process on a free 127.0.0.1 port answers 1, 8 and 32 concurrent clients for a fixed time
each (every client sends one PNG per request and waits for the answer). Reported: requests/s, images/s, p50/p99
latency, errors (anything but 200). Offline: the same PNGs decoded, prepared and scored in batches of 32 in this
process by the code `resnet predict` runs (resnet.predict.probabilities), for the same time.

Goals (issue 36): at 32 clients the served images/s >= 0.8x offline, and batching >= 2x no batching (ResNet-20).
The clients run in this process (asyncio + httpx) on the same cores as the server: at high rates they take CPU
from it, which counts against the server. Writes benchmarks/results/bench_serve.json (full runs) with the CPU
(lscpu), torch, the commit and the load average before and after.

Usage: python benchmarks/bench_serve.py [--seconds 10] [--models resnet20 resnet50] [--threads N] [--quick]
                                       [--json OUT]
  --quick: ResNet-20 (base width 4), 1 and 8 clients, 1 s each, servers in threads of this process: checks the
  script (tests/test_serve.py runs it), measures nothing worth keeping.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from serve_helpers import fashion_checkpoint, fashion_image, png_bytes, start_server, stop_server  # noqa: E402

from record import write_result  # noqa: E402
from resnet.checkpoint import save_weights  # noqa: E402
from resnet import create_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_serve.json"
MODES = {"batching": ["--max-batch", "32", "--max-wait-ms", "5"], "no batching": ["--max-batch", "1"]}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or "unknown"


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resnet50_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1000).eval()
    meta = {"model": "resnet50", "options": model.options, "image_size": 224, "style": "imagenet",
            "class_names": [f"class {i}" for i in range(1000)]}
    save_weights(path, model, meta, torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1))
    return path


def workload(name: str, folder: Path, quick: bool) -> tuple[Path, list[bytes]]:
    """(checkpoint, PNG images) of a model: 28x28 grey garments for ResNet-20, 320x240 RGB photos for ResNet-50."""
    if name == "resnet20":
        return fashion_checkpoint(folder / "r20.safetensors", base_width=4 if quick else 16), \
            [png_bytes(fashion_image(i)) for i in range(64)]
    photos = []
    for i in range(16):
        grey = fashion_image(i, 320)[:240]
        photos.append(png_bytes(np.stack([grey, grey[::-1], 255 - grey], axis=2)))  # 320x240 RGB
    return resnet50_checkpoint(folder / "r50.safetensors"), photos


def offline_rate(checkpoint: Path, images: list[bytes], seconds: float, batch: int = 32,
                 threads: int | None = None) -> dict:
    """Images/s of decode + prepare + batched scoring in this process, by `resnet predict`'s code."""
    from resnet.serve.limits import decode_upload
    from resnet.serve.model import load_served

    if threads:
        torch.set_num_threads(threads)
    served = load_served(str(checkpoint))
    served.run([served.prepare(decode_upload(images[0], "x", served.channels, served.min_side, 10**8))])  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        chosen = [images[(done + i) % len(images)] for i in range(batch)]
        served.run([served.prepare(decode_upload(data, "x", served.channels, served.min_side, 10**8))
                    for data in chosen])
        done += batch
    elapsed = time.perf_counter() - start
    return {"images": done, "seconds": round(elapsed, 2), "images_per_s": round(done / elapsed, 1)}


async def load_test(url: str, images: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` concurrent clients, each sending one image per request for `seconds`."""
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                r = await http.post(url + "/v1/predict", content=images[i % len(images)],
                                    headers={"content-type": "image/png"})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
            i += clients

    start = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"clients": clients, "requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1), "images_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": errors}


class InProcess:
    """--quick: the server in a thread of this process (no start-up cost)."""

    def __init__(self, checkpoint: Path, options: list[str], threads: int | None) -> None:
        from serve_helpers import ServerThread

        from resnet.serve.app import app_from_settings

        settings = {"checkpoint": str(checkpoint), "device": "cpu", "protocol": "center", "engine": None,
                    "score_threshold": 0.5, "max_batch": int(options[1]),
                    "max_wait_ms": float(options[3]) if len(options) > 3 else 5.0, "max_queue": 256,
                    "max_bytes": 20_000_000, "max_pixels": 64_000_000, "max_images": 64, "timeout": 300, "token": None,
                    "threads": threads}
        self.server = ServerThread(app_from_settings(settings, load_now=True))

    def __enter__(self) -> str:
        return self.server.__enter__()

    def __exit__(self, *exc) -> None:
        self.server.__exit__()


class Process:
    """A real `resnet serve` process (--threads as given, else torch's default)."""

    def __init__(self, checkpoint: Path, options: list[str], threads: int | None) -> None:
        self.checkpoint, self.options, self.threads = checkpoint, options, threads

    def __enter__(self) -> str:
        threads = ["--threads", str(self.threads)] if self.threads else []
        self.process, url = start_server(self.checkpoint, *self.options, "--timeout", "300", "--max-queue", "1024",
                                         *threads, wait=180, threads=None)
        return url

    def __exit__(self, *exc) -> None:
        stop_server(self.process)


def bench_model(name: str, folder: Path, clients: list[int], seconds: float, quick: bool,
                threads: int | None = None) -> dict:
    checkpoint, images = workload(name, folder, quick)
    result: dict = {"model": name, "image": "28x28 grey PNG" if name == "resnet20" else "320x240 RGB PNG -> 224",
                    "offline": offline_rate(checkpoint, images, seconds, threads=threads), "served": []}
    print(f"{name}: offline {result['offline']['images_per_s']} images/s", file=sys.stderr)
    for mode, options in MODES.items():
        with (InProcess if quick else Process)(checkpoint, options, threads) as url:
            asyncio.run(load_test(url, images, 1, min(seconds, 1)))  # warm the connection pool and caches
            for n in clients:
                row = {"mode": mode, **asyncio.run(load_test(url, images, n, seconds))}
                result["served"].append(row)
                print(f"{name} {mode:>11} {n:>2} clients: {row['images_per_s']} images/s p50 {row['p50_ms']} ms "
                      f"p99 {row['p99_ms']} ms errors {row['errors']}", file=sys.stderr)
    by = {(r["mode"], r["clients"]): r["images_per_s"] for r in result["served"]}
    top = max(clients)
    served, offline, unbatched = by[("batching", top)], result["offline"]["images_per_s"], by[("no batching", top)]
    result[f"served_over_offline_at_{top}_clients"] = round(served / offline, 3)
    result[f"batching_over_none_at_{top}_clients"] = round(served / max(unbatched, 1e-9), 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per measurement (default: 10)")
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet50"], choices=["resnet20", "resnet50"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads offline and in the server (default: torch's, one per core); on a machine "
                             "shared with other jobs 1 avoids OpenMP's threads waiting on each other")
    parser.add_argument("--quick", action="store_true", help="a check of the script, not a measurement")
    parser.add_argument("--json", type=Path, help=f"write here (default: {RESULTS.relative_to(ROOT)}; --quick: none)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its servers (finally)
    if args.quick:
        args.seconds, args.models, args.clients = 1.0, ["resnet20"], [1, 8]
    os.environ.setdefault("RESNET_CPU_FAST", "0")  # offline and served alike: exact fp32 unless the caller says
    report = {"benchmark": "bench_serve", "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
              "commit": commit(), "command": " ".join(["python", *sys.argv]), "quick": args.quick,
              "RESNET_CPU_FAST": os.environ["RESNET_CPU_FAST"], "threads": args.threads or torch.get_num_threads(),
              "seconds_each": args.seconds, "loadavg_before": [round(v, 2) for v in os.getloadavg()], "models": []}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        for name in args.models:
            report["models"].append(bench_model(name, Path(folder), args.clients, args.seconds, args.quick,
                                                args.threads))
    report["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    out = args.json or (None if args.quick else RESULTS)
    if out:
        write_result(out, report, echo=False)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
