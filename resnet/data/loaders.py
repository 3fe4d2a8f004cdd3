"""Loaders that resume exactly: every batch is a pure function of (seed, epoch, position).

Two kinds:
- `TensorLoader`: a small dataset (CIFAR, Fashion-MNIST) held as one uint8 tensor on the
  training device, cropped/flipped a whole batch at a time (airbench style, no per-image Python).
- `build_loader`: a torch DataLoader over any map-style dataset, with `ResumableSampler` sharding
  across processes and seeding each sample's augmentation from (seed, epoch, index), so the
  result does not depend on worker count or on where a run was resumed.
Both have `set_epoch(epoch, start_batch=0)` and `len()` in batches per process.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import weakref

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def _seed_of(*parts: int) -> int:
    """A 31-bit seed from integers (tuples of ints hash the same in every process)."""
    return hash(tuple(parts)) & 0x7FFF_FFFF


def shard(order: torch.Tensor, rank: int, world_size: int, drop_last: bool, batch_size: int) -> torch.Tensor:
    """This process's share of an epoch: every world_size-th index, whole global batches if drop_last."""
    if drop_last:
        usable = (len(order) // (batch_size * world_size)) * batch_size * world_size
        order = order[:usable]
    return order[rank::world_size]


def draw_crop_flip(n: int, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random (dy, dx, flip) for n images: offsets in [0, 2*pad], flip with probability 1/2."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flip = (torch.rand(n, generator=generator) < 0.5).long()
    return torch.cat([offsets, flip[:, None]], dim=1)


def random_crop_flip(images: torch.Tensor, pad: int, params: torch.Tensor) -> torch.Tensor:
    """Pad each side with zeros, crop back to the original size at (dy, dx), flip where asked; batched."""
    b, c, h, w = images.shape
    device = images.device
    dy, dx, flip = params.to(device, non_blocking=True).unbind(1)  # no wait for the device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = dx[:, None] + torch.arange(w, device=device)
    cols = torch.where(flip[:, None].bool(), cols.flip(1), cols)[:, None, None, :].expand(b, c, h, w)
    return out.gather(3, cols)


# Test-time views (dy, dx, flip) for `--tta`: "flip" is the image and its mirror; "flip-shift" adds copies moved
# one pixel down-right and up-left, each with its mirror (airbench's translate TTA; README, "Time to accuracy").
TTA_VIEWS = {
    "none": ((0, 0, 0),),
    "flip": ((0, 0, 0), (0, 0, 1)),
    "flip-shift": ((0, 0, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1), (-1, -1, 0), (-1, -1, 1)),
}


def tta_view(images: torch.Tensor, view: tuple[int, int, int]) -> torch.Tensor:
    """One view (dy, dx, flip) of a batch of raw images [B,C,H,W]: moved dy rows down and dx columns right with
    zeros shifted in, then mirrored if flip."""
    dy, dx, flip = view
    if dy or dx:
        h, w = images.shape[-2:]
        p = max(abs(dy), abs(dx))
        images = torch.nn.functional.pad(images, (p, p, p, p))[..., p - dy:p - dy + h, p - dx:p - dx + w]
    return images.flip(-1) if flip else images


def tta_views(images: torch.Tensor, tta: str) -> torch.Tensor:
    """All views of `tta` (TTA_VIEWS) of a batch of raw images, stacked view-major [V*B,C,H,W]."""
    return torch.cat([tta_view(images, view) for view in TTA_VIEWS[tta]])


class TensorLoader:
    """Batches from a dataset held as uint8 [N,C,H,W] on `device`, augmented per batch there."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, batch_size: int, *,
                 train: bool, device: str | torch.device = "cpu", seed: int = 0, pad: int = 4,
                 rank: int = 0, world_size: int = 1) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.mean = mean.to(device, torch.float32)
        self.batch_size, self.train, self.seed, self.pad = batch_size, train, seed, pad
        self.rank, self.world_size = rank, world_size
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        order = _epoch_order(len(self.images), self.seed, epoch, shuffle=self.train)
        self.indices = shard(order, self.rank, self.world_size, self.train, self.batch_size).to(self.images.device)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self):
        for i in range(self.start_batch, len(self)):
            idx = self.indices[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.train:  # drawn for the global batch, so any number of processes sees the same crops
                g = torch.Generator().manual_seed(_seed_of(self.seed, self.epoch, i))
                params = draw_crop_flip(self.batch_size * self.world_size, self.pad, g)[self.rank::self.world_size]
                x = random_crop_flip(x, self.pad, params[:len(x)])
            yield x.float().div_(255).sub_(self.mean), self.labels[idx]


class ResumableSampler(Sampler):
    """Shuffled (seed, epoch) order, sharded by rank, that can start mid-epoch; yields (index, epoch)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch * self.batch_size
        order = _epoch_order(self.n, self.seed, epoch, self.shuffle)
        self.indices = shard(order, self.rank, self.world_size, self.drop_last, self.batch_size).tolist()

    def __iter__(self):
        return iter([(i, self.epoch) for i in self.indices[self.start:]])

    def __len__(self) -> int:
        return len(self.indices) - self.start


class SeededSamples(Dataset):
    """Wraps a dataset so that sample (index, epoch) draws its augmentation from its own seed."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_of(self.seed, epoch, index))
            return self.dataset[index]


class ResumableLoader:
    """A DataLoader whose epochs and mid-epoch restarts follow `ResumableSampler`."""

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int | None = None, pin_memory: bool = False,
                 collate_fn=None) -> None:
        self.sampler = ResumableSampler(len(dataset), batch_size, shuffle=train, seed=seed, rank=rank,
                                        world_size=world_size, drop_last=train)
        workers = default_workers(world_size) if num_workers is None else num_workers
        self.loader = DataLoader(SeededSamples(dataset, seed), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                                 drop_last=train, prefetch_factor=4 if workers > 0 else None,
                                 worker_init_fn=ignore_stop_signals, collate_fn=collate_fn,
                                 generator=torch.Generator().manual_seed(seed))  # not the global RNG: see below
        # Each iterator draws its workers' base seed from `generator`; from torch's global RNG, a resume (a new
        # iterator mid-epoch) would shift the global stream that training draws from (mixup, RoI sampling).
        self.batch_size, self.train = batch_size, train
        _OPEN.add(self)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        """Batches in a whole epoch for this process (not only those left after a mid-epoch start)."""
        n = len(self.sampler.indices)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self):
        """The loader's batches; a worker's error stops the workers and is re-raised as its own one line."""
        try:
            yield from self.loader
        except Exception as error:
            self.close()
            raise worker_error(error) from None

    def close(self) -> None:
        """Stop the persistent workers now (they ignore SIGTERM, see `ignore_stop_signals`, so nothing else would:
        multiprocessing's exit handler would wait on them forever). The next iteration starts new ones."""
        iterator, self.loader._iterator = getattr(self.loader, "_iterator", None), None
        workers = list(getattr(iterator, "_workers", []))
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()  # asks each worker to leave, joins it for up to 5 s
        for worker in workers:
            if worker.is_alive():  # stuck, or Python is exiting (torch's shutdown is then a no-op)
                worker.kill()
                worker.join(timeout=5)


_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register  # registered after torch's and multiprocessing's exit handlers, so it runs before them
def _close_open_loaders() -> None:
    for loader in list(_OPEN):
        loader.close()


WORKER_ERROR = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def worker_error(error: Exception) -> Exception:
    """A bad-input error (ValueError, OSError) raised in a loader worker as the worker's own message (torch
    re-raises it with the worker's whole traceback in the message); any other error as it is."""
    match = WORKER_ERROR.match(str(error))
    if not match or not isinstance(error, (ValueError, OSError)):
        return error
    name = match.group(1)
    lines = [line for line in str(error).splitlines() if line.startswith(f"{name}: ")]
    if not lines:
        return error
    try:
        return type(error)(lines[-1][len(name) + 2:])
    except Exception:  # noqa: BLE001 - an exception type that takes other arguments: keep torch's
        return error


def ignore_stop_signals(worker_id: int) -> None:
    """In a loader worker: ignore SIGINT/SIGTERM, which a terminal or `kill -- -PGID` sends to the whole
    process group; the main process handles them (saves, then stops its workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def default_workers(world_size: int = 1) -> int:
    """Workers per process: the CPUs this process may use, shared among local processes, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus // max(1, world_size) - 1))


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int | None = None,
                 device: str | torch.device = "cpu", collate_fn=None) -> ResumableLoader:
    """A resumable, sharded loader for a map-style dataset; pinned memory when training on CUDA.

    `collate_fn` (DataLoader's; None: stack into tensors) builds a batch from samples, e.g. lists of
    images and target dicts for detection.
    """
    pin = torch.device(device).type == "cuda"
    return ResumableLoader(dataset, batch_size, train=train, seed=seed, rank=rank, world_size=world_size,
                           num_workers=num_workers, pin_memory=pin, collate_fn=collate_fn)
