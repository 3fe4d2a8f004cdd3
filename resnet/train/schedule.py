"""The paper's learning-rate schedules: step drops at fixed iterations, or drops when error plateaus,
optionally after ResNet-110's warm-up (lr 0.01 until training error falls below 80%); and, for
fine-tuning and the fast recipe, cosine or linear decay to zero, optionally after a linear warm-up over a
fraction of training (warm-up then linear decay is the one-cycle schedule)."""

from __future__ import annotations

import math

from resnet.train.recipes import Recipe


class LRSchedule:
    """lr at each step; its state (warm-up, plateau counters) goes into the checkpoint."""

    def __init__(self, recipe: Recipe, total_iters: int, warmup: bool) -> None:
        self.recipe = recipe
        self.drops = [round(f * total_iters) for f in recipe.lr_drops] if recipe.schedule == "step" else []
        self.total = total_iters
        self.ramp = round(recipe.warmup_fraction * total_iters)
        self.warming = warmup
        self.train_error_ema: float | None = None
        self.factor = 1.0  # plateau drops so far
        self.best = math.inf
        self.bad_evals = 0

    def lr(self, step: int) -> float:
        if self.warming:
            return self.recipe.warmup_lr
        if self.recipe.schedule == "cosine":
            lr = self.recipe.lr * 0.5 * (1 + math.cos(math.pi * min(step, self.total) / self.total))
        elif self.recipe.schedule == "onecycle":  # linear, from the peak after the ramp down to 0 at the end
            lr = self.recipe.lr * min(1.0, max(self.total - step, 0) / max(self.total - self.ramp, 1))
        else:
            lr = self.recipe.lr * self.factor * 0.1 ** sum(step >= d for d in self.drops)
        return lr * (step + 1) / self.ramp if step < self.ramp else lr

    def observe_train_error(self, error: float) -> None:
        """End the warm-up once the (smoothed) training error is below the recipe's threshold."""
        if not self.warming:
            return
        ema = self.train_error_ema
        self.train_error_ema = error if ema is None else 0.9 * ema + 0.1 * error
        if self.train_error_ema < self.recipe.warmup_error:
            self.warming = False

    def observe_val_error(self, error: float) -> None:
        """Plateau schedule: divide lr by 10 after `plateau_patience` evaluations without improvement."""
        if self.recipe.schedule != "plateau":
            return
        if error < self.best - 1e-4:
            self.best, self.bad_evals = error, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.recipe.plateau_patience:
            self.factor *= 0.1
            self.bad_evals = 0

    def state_dict(self) -> dict:
        return {"warming": self.warming, "train_error_ema": self.train_error_ema, "factor": self.factor,
                "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
