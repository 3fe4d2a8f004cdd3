"""The server's limits, each refused with a JSON body naming the limit and the option that sets it.

- the request body (`--max-bytes`): 413 from the Content-Length header before reading anything, or as soon as a
  body without one (chunked) passes the limit; a body that takes longer than `--timeout` to arrive: 408;
- pixels after decoding (`--max-pixels`, the same default as `resnet predict`): 413 from the image header, before
  decoding, so decompression bombs never decode;
- images per request (`--max-images`): 413;
- empty, truncated or non-image files: 422 / 415; wrong content types: 415;
- a full queue (`--max-queue` images waiting): 503 with Retry-After; a prediction past `--timeout`: 504.

Uploads are decoded from memory by the same code as `resnet predict` (EXIF orientation, 16-bit scaling, every
PIL mode); the server never opens a path a request names and never unpickles request data.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass

import torch
from PIL import Image

from resnet.data.folder import DECODE_ERRORS, MAX_PIXELS
from resnet.predict import read_image

MAX_BYTES = 20_000_000
MAX_IMAGES = 64
MAX_QUEUE = 256
TIMEOUT = 30.0


@dataclass(frozen=True)
class Limits:
    """Every limit the server enforces (the `resnet serve` options of the same names)."""

    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    max_images: int = MAX_IMAGES
    max_queue: int = MAX_QUEUE
    timeout: float = TIMEOUT

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_images", "max_queue", "timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")


class LimitError(Exception):
    """A refused request: HTTP status, the limit's name, the option that sets it, one line, extra headers."""

    def __init__(self, status: int, limit: str, message: str, option: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.limit, self.option, self.headers = status, limit, option, headers or {}

    def body(self) -> dict:
        return {"error": str(self), "limit": self.limit, "option": self.option, "status": self.status}


class NamedUpload(io.BytesIO):
    """An upload in memory that shows as its name in the shared decoder's one-line errors."""

    def __init__(self, data: bytes, label: str) -> None:
        super().__init__(data)
        self.label = label

    def __str__(self) -> str:
        return self.label


def check_header(data: bytes, label: str, max_pixels: int) -> None:
    """Refuse an upload that is empty, not an image, or claims more than max_pixels pixels (read from its header:
    nothing is decoded)."""
    if not data:
        raise LimitError(422, "empty", f"{label}: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            w, h = image.size
    except Image.DecompressionBombError as error:
        raise LimitError(413, "pixels", f"{label}: refused as a possible decompression bomb ({error})",
                         "--max-pixels") from None
    except DECODE_ERRORS:
        raise LimitError(415, "image", f"{label}: not an image PIL can read") from None
    if w * h > max_pixels:
        raise LimitError(413, "pixels", f"{label}: {w}x{h} is {w * h:,} pixels, above the limit of {max_pixels:,}",
                         "--max-pixels")


def decode_upload(data: bytes, label: str, channels: int, min_side: int | None, max_pixels: int) -> torch.Tensor:
    """A uint8 CHW tensor of an uploaded image, decoded as `resnet predict` decodes files (resnet.predict.read_image),
    or a LimitError: 413 too many pixels, 415 not an image, 422 empty or truncated."""
    check_header(data, label, max_pixels)
    try:
        return read_image(NamedUpload(data, label), channels, min_side, max_pixels)
    except (ValueError, *DECODE_ERRORS) as error:  # the header was fine, the data are not (a truncated file)
        raise LimitError(422, "image", " ".join(str(error).split()) or f"{label}: cannot decode") from None


def error_response(status: int, body: dict, headers: dict[str, str] | None = None) -> tuple[dict, bytes]:
    """An ASGI http.response.start message and the JSON body, for the middleware (no framework response yet)."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http.response.start", "status": status, "headers": raw}, payload


class BodyLimit:
    """ASGI middleware: a body above `max_bytes` is refused with 413 (from Content-Length without reading it, or
    as soon as a chunked body passes the limit), and one that takes longer than `timeout` to arrive with 408."""

    def __init__(self, app, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limits = self.limits
        too_big = LimitError(413, "bytes", f"the request body is above the limit of {limits.max_bytes:,} bytes",
                             "--max-bytes")
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_bytes):
            return await self._refuse(send, too_big if length.isdigit() else
                                      LimitError(400, "content-length", "the Content-Length header is not a number"))
        received = 0
        deadline = asyncio.get_running_loop().time() + limits.timeout
        started = False

        async def limited_receive():
            nonlocal received
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except TimeoutError:
                raise LimitError(408, "timeout", f"the request body took longer than {limits.timeout:g} s to arrive",
                                 "--timeout") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limits.max_bytes:
                    raise too_big
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except LimitError as error:
            if started:
                raise
            await self._refuse(send, error)

    @staticmethod
    async def _refuse(send, error: LimitError) -> None:
        start, payload = error_response(error.status, error.body(), {**error.headers, "connection": "close"})
        await send(start)
        await send({"type": "http.response.body", "body": payload})
