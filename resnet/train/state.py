"""The state of a run: everything a checkpoint saves and a resume restores, in one object.

Counters (step, epoch, position in the epoch), the best selection error, the clocks, the metric window
since the last evaluation, the warm-up's training errors, the RNG states, and the state dicts of the
optimiser, grad scaler, schedule and weight EMA. The model's own weights go beside it in safetensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

WINDOW = 3  # loss sum, wrong, count since the last evaluation


@dataclass
class TrainState:
    """Where a run is. `state_dict()` is the checkpoint's training state; `load_state_dict()` restores it."""

    device: torch.device
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_error: float = math.inf  # lowest selection error (validation, else test) so far
    elapsed: float = 0.0  # training seconds in all (evaluations and logging left out)
    window_start: float = 0.0  # `elapsed` at the last evaluation
    window: torch.Tensor = None  # [loss sum, wrong, count] since the last evaluation, on the device
    warmup_errors: list[torch.Tensor] = field(default_factory=list)  # per warm-up step, read every log_every steps

    def __post_init__(self) -> None:
        if self.window is None:
            self.window = torch.zeros(WINDOW, dtype=torch.float64, device=self.device)

    def advance(self) -> None:
        """One more training step taken."""
        self.step += 1
        self.batch_in_epoch += 1

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def reset_window(self) -> None:
        """Start a new metric window (after an evaluation)."""
        self.window = torch.zeros_like(self.window)
        self.window_start = self.elapsed

    def state_dict(self, components: dict) -> dict:
        """The checkpoint's training state; `components` maps names (optimizer, scaler, ...) to objects with
        state_dict() or to plain values."""
        cuda = self.device.type == "cuda"
        state = {name: (c.state_dict() if hasattr(c, "state_dict") else c) for name, c in components.items()}
        state.update({
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_error": self.best_error, "elapsed": self.elapsed, "window_start": self.window_start,
            "window": self.window.cpu(),
            "warmup_errors": torch.stack(self.warmup_errors).cpu() if self.warmup_errors else torch.zeros(0),
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if cuda else None}})
        return state

    def load_state_dict(self, state: dict, components: dict) -> None:
        """Restore counters, clocks, window and RNG, and each component from its saved state."""
        for name, component in components.items():
            if name in state and hasattr(component, "load_state_dict"):
                component.load_state_dict(state[name])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_error, self.elapsed, self.window_start = state["best_error"], state["elapsed"], state["window_start"]
        self.window = state["window"].to(self.device)
        warmup = state.get("warmup_errors", torch.zeros(0))
        self.warmup_errors = list(warmup.to(self.device, torch.float64).unbind())
        torch.set_rng_state(state["rng"]["cpu"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
