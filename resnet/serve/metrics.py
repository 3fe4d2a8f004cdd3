"""Prometheus metrics of the server (prometheus_client): requests by route and status code, request latency,
batch sizes, queue depth. Each app has its own registry (several apps in one test process do not collide);
under `--workers N` the processes share prometheus_client's multiprocess directory and /metrics sums them."""

from __future__ import annotations

import os
import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
                               multiprocess)

ROUTES = ("/", "/health", "/metrics", "/v1/model", "/v1/predict")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("resnet_serve_requests", "HTTP requests by route and status code",
                                ["route", "code"], registry=self.registry)
        self.latency = Histogram("resnet_serve_request_seconds", "request latency (seconds) by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("resnet_serve_batch_size", "images per forward pass",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("resnet_serve_queue_depth", "images waiting for the network",
                                 registry=self.registry, multiprocess_mode="livesum")
        self.images = Counter("resnet_serve_images", "images predicted", registry=self.registry)

    def text(self) -> tuple[bytes, str]:
        """The Prometheus exposition text (all worker processes' under --workers) and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Recorder:
    """ASGI middleware: counts every HTTP request by route (unknown paths as "other") and status, and times it."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope.get("path", "") if scope.get("path", "") in ROUTES else "other"
        status = 500
        start = time.perf_counter()

        async def tracked_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
