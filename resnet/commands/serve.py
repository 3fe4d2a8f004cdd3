"""Serve a trained network over HTTP: POST /v1/predict (images -> the JSON of `resnet predict --json`), GET
/v1/model (the model card), GET /health, GET /metrics (Prometheus) and a web page at /.

Anything `resnet predict` takes: a run directory, a .safetensors checkpoint, a `resnet weights` name, a
detector run, an .onnx file from `resnet export` (ONNX Runtime, fp32 or int8). Images arriving together run as
one batch (at most --max-batch, after waiting at most --max-wait-ms) in a worker thread. Safe by default: binds
127.0.0.1; with --token (or $RESNET_SERVE_TOKEN) every route but /health and the static page needs
`Authorization: Bearer TOKEN`; every limit answers with a JSON body naming its option. SIGTERM/SIGINT: stop
accepting, finish the requests in flight (at most --grace seconds), exit.

Examples:
  resnet serve --checkpoint runs/r20
  resnet serve --checkpoint r20-int8.onnx
  resnet serve --checkpoint runs/r20 --host 0.0.0.0 --port 8080 --token "$(cat token.txt)" --workers 2
  curl -F file=@shirt.png http://127.0.0.1:8000/v1/predict"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import tempfile

from resnet.data.folder import MAX_PIXELS
from resnet.evaluate.protocols import PROTOCOLS
from resnet.inference.classifier import ENGINES
from resnet.serve import check_installed

SETTINGS_ENV = "RESNET_SERVE_SETTINGS"  # the options, as JSON, for the processes of --workers N


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a run directory, a .safetensors checkpoint, a `resnet weights` name, a detector run, or an "
                        ".onnx file written by `resnet export` (fp32 or --int8; runs in ONNX Runtime)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own copy of the model (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: torch's, one per core; with --workers N, cores / N)")
    p.add_argument("--token", default=None, help="require `Authorization: Bearer TOKEN` (default: $RESNET_SERVE_TOKEN)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--protocol", default="center", choices=PROTOCOLS,
                   help="classifiers' test protocol (default: center)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="what computes classifiers' scores, as `resnet predict`: auto (default: ONNX Runtime for an "
                        ".onnx file; torch with the device's fast path for a checkpoint), torch-fp32, torch-bf16, "
                        "onnxruntime")
    p.add_argument("--score-threshold", type=float, default=0.5, help="detectors: the lowest score (default: 0.5)")
    p.add_argument("--max-batch", type=int, default=32, help="images per forward pass (default: 32; 1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="the longest an image waits for others to fill a batch (default: 5)")
    p.add_argument("--max-queue", type=int, default=256, help="images waiting at most; more: 503 (default: 256)")
    p.add_argument("--max-bytes", type=int, default=20_000_000, help="request body limit (default: 20,000,000)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"pixels per image after decoding (default: {MAX_PIXELS:,}, as predict)")
    p.add_argument("--max-images", type=int, default=64, help="images per request (default: 64)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a request may take: 504 for the prediction, 408 for the upload (default: 30)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds to finish the requests in flight after SIGTERM/SIGINT (default: 10)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: info; warning hides the access log)")


def settings_of(args: argparse.Namespace) -> dict:
    """The options the server processes need, as a JSON-able dict."""
    keys = ("checkpoint", "device", "protocol", "engine", "score_threshold", "max_batch", "max_wait_ms", "max_queue",
            "max_bytes", "max_pixels", "max_images", "timeout", "threads")
    return {k: getattr(args, k) for k in keys} | {"token": args.token or os.environ.get("RESNET_SERVE_TOKEN")}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    check_installed()
    # imported here, not at the top: `resnet --help` stays fast and a missing package is one line
    import uvicorn

    from resnet.serve.app import app_from_settings

    for option in ("workers", "max_batch", "max_queue", "max_bytes", "max_pixels", "max_images", "threads"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be positive")
    if args.timeout <= 0 or args.grace < 0 or args.max_wait_ms < 0:
        raise ValueError("--timeout must be positive, --grace and --max-wait-ms not negative")
    settings = settings_of(args)
    if not is_loopback(args.host) and not settings["token"]:
        print(f"resnet serve: warning: listening on {args.host} without a token: anyone who can reach this port can "
              f"use the model; set --token or $RESNET_SERVE_TOKEN", file=sys.stderr)
    common = dict(host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=args.grace,
                  server_header=False)
    if args.workers == 1:
        app = app_from_settings(settings, load_now=True)  # a bad checkpoint fails here, in one line
        uvicorn.Server(uvicorn.Config(app, **common)).run()
        return 0
    app_from_settings(settings, load_now=True)  # fail in one line before starting the processes
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    with tempfile.TemporaryDirectory(prefix="resnet-serve-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # /metrics sums the processes
        uvicorn.run("resnet.serve.app:app_from_environment", factory=True, workers=args.workers, **common)
    return 0
