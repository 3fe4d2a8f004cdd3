"""What the training engine trains: the task interface. Classification (resnet/train/classification.py) is the
first implementation, detection (resnet/detection/task.py) the second; the engine knows nothing else of either.

A task owns its data (a training loader with `len()` and `set_epoch(epoch, start_batch)` for exact resume, and
its held-out splits), builds the network, turns a batch into a loss, and computes and names an
evaluation. The engine owns the optimiser, schedule, EMA, checkpoints, signals, progress and the run directory.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import nn


class Task(Protocol):
    """The task-specific part of a run; the engine calls these in this order."""

    name: str  # "classification", "detection": recorded in config.json
    train_loader: Any  # len() batches per process, set_epoch(epoch, start_batch), yields batches

    def setup(self, dist, device: torch.device) -> None:
        """Read the data (fills `train_loader`; the held-out data stays the task's own)."""

    def build_model(self) -> tuple[nn.Module, list[str]]:
        """The network to train, on the CPU, with `.meta` for its checkpoints; and notes to print (init weights)."""

    def model_ready(self, net: nn.Module, resumed: tuple | None) -> None:
        """Called once the weights are in place (`resumed`: the checkpoint's (meta, input mean), or None)."""

    def param_groups(self, net: nn.Module) -> list:
        """The optimiser's parameter groups (lr multipliers, no weight decay on BN and biases, frozen left out)."""

    def summary(self) -> str:
        """A few words for the first line of a run ("10 classes")."""

    def describe(self) -> list[str]:
        """Lines printed at the start of a run (the input, the task's settings)."""

    def train_step(self, model: nn.Module, batch, step: int, autocast: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to back-propagate, window statistics [loss sum, wrong, count] as float64 on the device).
        Must not wait for the device (no .item())."""

    def evaluate(self, model: nn.Module, final: bool, autocast: Callable) -> dict:
        """Metrics over each held-out split, keys prefixed by its name ("val_top1_error"); evaluations during
        training may score a sample (`--eval-subset`), the `final` one scores every held-out image."""

    def selection_error(self, row: dict) -> float:
        """The number (lower is better) that picks the `best` checkpoint: validation, else test."""

    def row_summary(self, row: dict) -> list[str]:
        """The parts of the one line printed after an evaluation ("val err 7.12%")."""

    def window_row(self, loss_sum: float, wrong: float, count: float) -> dict:
        """The training fields of a metrics row from the window's totals."""

    def plot(self, rows: list[dict], path, title: str) -> None:
        """Redraw the run's curves.png from its metrics rows."""
