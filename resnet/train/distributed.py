"""Distributed set-up for `torchrun`: process group, ranks, and BN synchronised across processes."""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> Dist:
    """Join the process group that torchrun describes in the environment (NCCL on CUDA, Gloo on CPU)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    info = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        # a finite timeout: a process that dies makes the others fail instead of hanging for ever
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return info


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (identity in one process)."""
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def world_size() -> int:
    """The number of processes (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def all_gather_lists(items: list) -> list:
    """Every process's list joined in rank order (the list itself in one process); items must pickle."""
    if world_size() == 1:
        return items
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BN whose training statistics are over the global batch of all processes, on any device.

    torch's SyncBatchNorm runs only on GPUs; this computes the same statistics with a
    differentiable all-reduce of per-channel sums, so it also works with Gloo on CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        with warnings.catch_warnings():  # the differentiable all-reduce is marked deprecated in torch 2.x
            warnings.simplefilter("ignore", FutureWarning)
            # two passes (mean, then squared deviations) keep float32 accurate when |mean| >> std
            total = dist_fn.all_reduce(torch.cat([x.sum((0, 2, 3)), x.new_tensor([x.numel() / c])]))
            count = total[-1]
            mean = total[:c] / count
            var = dist_fn.all_reduce((x - mean[None, :, None, None]).square().sum((0, 2, 3))) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        scale = self.weight / torch.sqrt(var + self.eps)
        return (x - mean[None, :, None, None]) * scale[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """torch's SyncBatchNorm on CUDA; `GlobalBatchNorm2d` elsewhere (its state dict is the same)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats).to(child.weight.device)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device_type)
    return model
