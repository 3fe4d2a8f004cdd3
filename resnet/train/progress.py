"""Progress of a run: a tqdm bar with loss, error, images/s and ETA on a terminal, plain
periodic log lines otherwise (CI, files)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm


class Progress:
    """Shows training progress; the postfix is computed only when it is displayed (no GPU sync per step)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, force_bar: bool | None = None,
                 log_every: int = 50) -> None:
        self.enabled, self.total, self.log_every = enabled, total, log_every
        self.use_bar = enabled and (sys.stderr.isatty() if force_bar is None else force_bar)
        self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, file=sys.stderr) \
            if self.use_bar else None
        self.last_time, self.last_step = time.perf_counter(), initial
        self._step_time = 0.0
        self._smoothed: float | None = None  # seconds per training step, evaluations excluded

    def step_time(self) -> float:
        """Seconds per step, averaged since the last display."""
        return self._step_time

    def update(self, step: int, epoch: int, postfix: Callable[[], dict]) -> None:
        if not self.enabled:
            return
        due = self.bar is not None and (step % 10 == 0 or step == self.total)
        due = due or (self.bar is None and (step % self.log_every == 0 or step == self.total))
        if not due:
            return
        now = time.perf_counter()
        self._step_time = (now - self.last_time) / max(step - self.last_step, 1)
        self.last_time, self.last_step = now, step
        ema = self._smoothed
        self._smoothed = self._step_time if ema is None else 0.7 * ema + 0.3 * self._step_time
        values = postfix()
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}")
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        eta = (self.total - step) * self._smoothed
        fields = "  ".join(f"{k} {_number(v)}" for k, v in values.items())
        print(f"step {step}/{self.total}  epoch {epoch + 1}  {fields}  eta {_duration(eta)}", flush=True)

    def log_row(self, row: dict, parts: list[str] | None = None) -> None:
        """One line per evaluation (the task's `parts`, by default its errors, between the step and the rate),
        printed above the bar."""
        if not self.enabled:
            return
        parts = error_parts(row) if parts is None else parts
        line = "  ".join([f"step {row['step']}", *parts, f"{row['images_per_sec']:.0f} img/s"])
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)
        self.resume_clock(row["step"])

    def resume_clock(self, step: int) -> None:
        """Call after a pause (an evaluation at `step`): the pause does not count in step time, rate or ETA,
        and the next rate is over the steps after it only."""
        self.last_time, self.last_step = time.perf_counter(), step
        if self.bar is not None:
            self.bar.unpause()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def error_parts(row: dict, show_top5: bool = True) -> list[str]:
    """A classification row's errors as printed: "train err 5.00%", "val err 7.12% (top-5 0.40%)"."""
    parts = [f"train err {100 * row['train_error']:.2f}%"]
    for key in ("val", "test"):
        if f"{key}_top1_error" in row:
            top5 = f" (top-5 {100 * row[f'{key}_top5_error']:.2f}%)" if show_top5 else ""
            parts.append(f"{key} err {100 * row[f'{key}_top1_error']:.2f}%{top5}")
    return parts


_LOG_LINE = re.compile(r"^step (\d+)/\d+  .*  eta (\d+:\d\d:\d\d)$", re.MULTILINE)  # as update() prints


def last_logged_step(log: Path, tail_bytes: int = 4096) -> tuple[int, str] | None:
    """(step, eta) from the last progress line `Progress` wrote into a log file, or None before the first one.
    Lets another process (the suite's --jobs monitor) say how far a run is between its evaluations."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - tail_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    matches = _LOG_LINE.findall(text)
    return (int(matches[-1][0]), matches[-1][1]) if matches else None


def _number(value: float) -> str:
    """4 significant digits, but whole numbers from 10,000 up (img/s 12345, not 1.234e+04)."""
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
