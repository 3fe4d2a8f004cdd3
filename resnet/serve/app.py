"""The HTTP API (FastAPI on uvicorn): predictions, the model card, health, metrics and the web page.

- `POST /v1/predict?top_k=5`: one or more images (multipart field `file`, repeated; or the raw bytes with an
  image content type) -> {"model", "task", "predictions": [as `resnet predict --json`], "latency_ms"}.
- `GET /v1/model`: the model card. `GET /health`: 200 once the model is loaded and a warm-up batch has run, 503
  before. `GET /metrics`: Prometheus text. `GET /`: the page (static; it asks the API for everything).
- With a token, every route but /health and the static page needs `Authorization: Bearer TOKEN` (401 otherwise,
  compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from resnet.errors import one_line
from resnet.serve.batching import Batcher, QueueFull
from resnet.serve.limits import BodyLimit, LimitError, Limits, decode_upload
from resnet.serve.metrics import Metrics, Recorder
from resnet.serve.model import Served, load_served, model_card
from resnet.serve.page import PAGE

TOKEN_ENV = "RESNET_SERVE_TOKEN"


@dataclass
class Settings:
    """How the server runs: the checkpoint (for the model card), batching, limits, the token."""

    source: str = ""
    max_batch: int = 32
    max_wait_ms: float = 5.0
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    default_top_k: int = 5


class State:
    """The loaded network, its batcher and whether it is ready (loaded and warmed up)."""

    def __init__(self) -> None:
        self.decoders: anyio.CapacityLimiter | None = None  # made in the event loop (load)
        self.served: Served | None = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.error: str | None = None
        self.card: dict = {}


def warm_up_image(served: Served) -> torch.Tensor:
    """A mid-grey image of the size the network sees, for the warm-up batch."""
    side = served.min_side or 64
    return torch.full((served.channels, side, side), 128, dtype=torch.uint8)


async def load(state: State, settings: Settings, loader: Callable[[], Served], metrics: Metrics) -> None:
    """Load the network (a worker thread), start batching, run one warm-up batch: then /health says ready."""
    # decoding threads at a time: as many as cores, so that they do not starve the network's thread of the GIL
    state.decoders = anyio.CapacityLimiter(max(1, len(os.sched_getaffinity(0))))
    try:
        served = await run_in_threadpool(loader)
        state.batcher = Batcher(served.run, settings.max_batch, settings.max_wait_ms, settings.limits.max_queue,
                                observe_batch=metrics.batch_size.observe, observe_depth=metrics.queue_depth.set)
        state.batcher.start()
        prepared = await run_in_threadpool(served.prepare, warm_up_image(served))
        await asyncio.gather(*state.batcher.submit([prepared]))
        state.served, state.card = served, model_card(served, settings.source, settings.limits.max_pixels)
        state.ready = True
    except Exception as error:  # noqa: BLE001 - /health reports it; the process keeps answering
        state.error = one_line(error)


def create_app(loader: Callable[[], Served], settings: Settings) -> Callable:
    """The ASGI application: FastAPI routes inside the body-size limit and the metrics recorder."""
    state, metrics = State(), Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(load(state, settings, loader, metrics))
        yield
        loading.cancel()
        if state.batcher is not None:
            await state.batcher.stop()

    api = FastAPI(title="resnet serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    api.state.serve = state
    authorize = authorizer(settings.token)

    @api.exception_handler(LimitError)
    async def refused(request: Request, error: LimitError) -> JSONResponse:
        return JSONResponse(error.body(), error.status, headers=error.headers)

    @api.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"content-security-policy": "default-src 'self'; img-src 'self' blob: "
                                           "data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    @api.get("/health")
    async def health() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready", "model": state.served.name})
        status = "failed" if state.error else "loading"
        return JSONResponse({"status": status, **({"error": state.error} if state.error else {})}, 503)

    @api.get("/metrics", dependencies=[Depends(authorize)])
    async def prometheus() -> Response:
        body, content_type = metrics.text()
        return Response(body, media_type=content_type)

    @api.get("/v1/model", dependencies=[Depends(authorize)])
    async def card() -> dict:
        ready(state)
        return state.card

    @api.post("/v1/predict", dependencies=[Depends(authorize)])
    async def predict(request: Request, top_k: int = Query(settings.default_top_k, ge=1, le=1000)) -> dict:
        start = time.perf_counter()
        served = ready(state)
        uploads = await read_uploads(request, settings.limits)
        prepared = await anyio.to_thread.run_sync(prepare_all, served, uploads, settings.limits,
                                                  limiter=state.decoders)
        outputs = await run_batched(state.batcher, prepared, settings.limits, start)
        metrics.images.inc(len(outputs))
        return {"model": served.name, "task": served.task,
                "predictions": [served.answer(out, label, top_k) for (label, _), out in zip(uploads, outputs)],
                "latency_ms": round((time.perf_counter() - start) * 1000, 2)}

    return Recorder(BodyLimit(api, settings.limits), metrics)


def authorizer(token: str | None) -> Callable:
    """A FastAPI dependency: with a token, `Authorization: Bearer TOKEN` is required (constant-time comparison)."""
    expected = token.encode() if token else None

    async def authorize(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise LimitError(401, "token", "missing or wrong token: send the header 'Authorization: Bearer TOKEN'",
                             f"--token (or ${TOKEN_ENV})", {"www-authenticate": "Bearer"})

    return authorize


def ready(state: State) -> Served:
    if not state.ready:
        message = f"the model failed to load: {state.error}" if state.error else "the model is still loading"
        raise LimitError(503, "loading", message, None, {"retry-after": "5"})
    return state.served


async def read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """(label, bytes) of each uploaded image: multipart `file` fields, or a raw body with an image content type."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("image/"):
        return [("image", await request.body())]
    if kind != "multipart/form-data":
        raise LimitError(415, "content-type", f"content type {kind or '(none)'!r}: send multipart/form-data with "
                         "one or more `file` fields, or the image bytes with an image/* content type")
    try:
        form = await request.form(max_files=limits.max_images, max_fields=limits.max_images)
    except HTTPException as error:  # Starlette's multipart parser: too many files or fields, a malformed body
        if "Too many" in str(error.detail):
            raise LimitError(413, "images", f"more than {limits.max_images} images (or fields) in one request",
                             "--max-images") from None
        raise LimitError(422, "multipart", f"malformed multipart body ({error.detail})") from None
    files = form.getlist("file")
    if not files:
        raise LimitError(422, "multipart", "no `file` field in the multipart body")
    if not all(isinstance(f, UploadFile) for f in files):
        raise LimitError(422, "multipart", "each `file` field must be a file upload")
    uploads = [(f.filename or f"file {i + 1}", await f.read()) for i, f in enumerate(files)]
    await form.close()
    return uploads


def prepare_all(served: Served, uploads: list[tuple[str, bytes]], limits: Limits) -> list:
    """Decode and prepare every image of a request (a thread of Starlette's pool), or raise on the first bad one."""
    return [served.prepare(decode_upload(data, label, served.channels, served.min_side, limits.max_pixels))
            for label, data in uploads]


async def run_batched(batcher: Batcher, prepared: list, limits: Limits, start: float) -> list:
    """The network's outputs for a request's images, through the batcher; 503 when the queue is full, 504 past
    the time-out (its images are then dropped before they reach the network)."""
    try:
        futures = batcher.submit(prepared)
    except QueueFull as error:
        raise LimitError(503, "queue", f"the queue is full ({error}); retry later", "--max-queue",
                         {"retry-after": str(batcher.retry_after())}) from None
    try:
        left = limits.timeout - (time.perf_counter() - start)  # the request's time so far counts
        return await asyncio.wait_for(asyncio.gather(*futures), max(left, 0.001))
    except TimeoutError:
        for future in futures:
            future.cancel()
        raise LimitError(504, "timeout", f"no answer within {limits.timeout:g} s", "--timeout") from None


def app_from_settings(options: dict, load_now: bool = False) -> Callable:
    """The app for `resnet serve`'s options (resnet/commands/serve.py `settings_of`); `load_now` loads the network
    before returning (a bad checkpoint fails at once, in one line) instead of in the background."""
    limits = Limits(max_bytes=options["max_bytes"], max_pixels=options["max_pixels"],
                    max_images=options["max_images"], max_queue=options["max_queue"], timeout=options["timeout"])
    settings = Settings(source=options["checkpoint"], max_batch=options["max_batch"],
                        max_wait_ms=options["max_wait_ms"], limits=limits, token=options.get("token"))

    def loader() -> Served:
        if options.get("threads"):
            torch.set_num_threads(options["threads"])
        return load_served(options["checkpoint"], options["device"], options["protocol"], options.get("engine"),
                           options["score_threshold"])

    if load_now:
        served = loader()
        return create_app(lambda: served, settings)
    return create_app(loader, settings)


def app_from_environment() -> Callable:
    """The app of one `--workers N` process: the options from $RESNET_SERVE_SETTINGS (uvicorn's factory)."""
    return app_from_settings(json.loads(os.environ["RESNET_SERVE_SETTINGS"]))
