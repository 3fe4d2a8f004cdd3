"""How a run stops early, in small named units: signals, the stop every process agrees on, the NaN/inf guard.

SIGINT/SIGTERM set a flag that the loop reads after each step: it saves a checkpoint and raises
`Interrupted` (exit 128 + signal). A second signal stops at once (`StopNow`), keeping the last checkpoint.
The loss is checked for NaN/inf on the device every step and the flag is read only now and then (one sync).
"""

from __future__ import annotations

import contextlib
import signal
import sys

import torch

from resnet.train import distributed


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopNow(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once without saving (the last checkpoint is kept)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.exit_code = 128 + signum


class StopFlag:
    """Records SIGINT/SIGTERM so the loop can save a checkpoint at the next step and exit; a second
    signal (say, Ctrl-C again during a long evaluation) stops at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous = {}

    def __enter__(self) -> StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum:
            print("second signal: stopping now without saving; the last checkpoint is kept", file=sys.stderr)
            raise StopNow(signum)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def agreed_stop(signum: int, dist: distributed.Dist, forced: bool, device: torch.device, due: bool) -> int:
    """The signal every process stops for: any process's request stops all at the same step.

    Processes compare their signals only when `due` (every log_every steps and at evaluations), as it
    costs a sync; `forced` stops are the same step in every process anyway.
    """
    value = signum or (int(signal.SIGINT) if forced else 0)
    if dist.enabled and not forced and not due:
        return 0
    if dist.enabled:
        flag = torch.tensor([value], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        value = int(flag.item())
    return value


class NonFiniteGuard:
    """A flag on the device that any NaN/inf loss sets without a sync, read every `log_every` steps."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.flag = torch.zeros((), dtype=torch.bool, device=device)
        self.checked = step  # the step of the last look

    def observe(self, loss: torch.Tensor) -> None:
        self.flag |= ~torch.isfinite(loss.detach())

    def check(self, step: int, epoch: int, kept: str) -> None:
        """One sync: raise TrainingDiverged naming the steps since the last look, whose checkpoint is `kept`."""
        if distributed.all_reduce_sum(self.flag.to(torch.float64)).item() > 0:
            raise TrainingDiverged(f"the loss became NaN or infinite between steps {self.checked + 1} and {step} "
                                   f"(epoch {epoch + 1}); training stopped; {kept}")
        self.checked = step
