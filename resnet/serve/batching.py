"""Dynamic batching: images that arrive together go through the network as one batch.

Each image is queued with a future. A collector on the event loop takes the first waiting image, then waits at
most `max_wait_ms` for more (up to `max_batch`), and runs the batch in one worker thread, so the event loop keeps
answering `/health` and `/metrics` while the network runs (as Triton's `max_queue_delay_microseconds`). While a
batch runs, new images queue up and form the next batch. At most `max_queue` images wait: a request that would
pass that is refused at once (503 with Retry-After) instead of waiting for a time-out. An image whose request
has given up (time-out, disconnect) is dropped before it reaches the network.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class QueueFull(Exception):
    """More images would wait than `max_queue` allows."""


class Batcher:
    """Runs `run(list of prepared images) -> list of outputs` on batches of at most max_batch images."""

    def __init__(self, run: Callable[[list], list], max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256, observe_batch: Callable[[int], None] | None = None,
                 observe_depth: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("--max-batch and --max-queue must be positive, --max-wait-ms not negative")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.max_queue = max_queue
        self.observe_batch = observe_batch or (lambda n: None)
        self.observe_depth = observe_depth or (lambda n: None)
        self.waiting: deque[tuple[object, asyncio.Future]] = deque()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="resnet-serve-net")
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.batch_seconds = 0.1  # a running estimate of one batch's time, for Retry-After

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        for _, future in self.waiting:
            future.cancel()
        self.executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self.waiting)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (for the Retry-After header)."""
        return max(1, math.ceil(self.depth / self.max_batch * self.batch_seconds))

    def submit(self, items: list) -> list[asyncio.Future]:
        """Queue the prepared images of one request (all or none) and return their futures."""
        if self.depth + len(items) > self.max_queue:
            raise QueueFull(f"{self.depth} images are waiting and the queue holds {self.max_queue}")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self.waiting.extend(zip(items, futures))
        self.observe_depth(self.depth)
        self.arrived.set()
        return futures

    def _take(self) -> list[tuple[object, asyncio.Future]]:
        batch = []
        while self.waiting and len(batch) < self.max_batch:
            item, future = self.waiting.popleft()
            if not future.done():  # its request gave up: never reaches the network
                batch.append((item, future))
        self.observe_depth(self.depth)
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
            if len(self.waiting) < self.max_batch and self.max_wait > 0:
                deadline = loop.time() + self.max_wait
                while len(self.waiting) < self.max_batch and (left := deadline - loop.time()) > 0:
                    self.arrived.clear()
                    try:
                        await asyncio.wait_for(self.arrived.wait(), left)
                    except TimeoutError:
                        break
            batch = self._take()
            if batch:
                await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        start = loop.time()
        try:
            outputs = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
        except Exception as error:  # noqa: BLE001 - the batch's requests get the error, the server goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (loop.time() - start)
        self.observe_batch(len(batch))
        for (_, future), output in zip(batch, outputs):
            if not future.done():
                future.set_result(output)
