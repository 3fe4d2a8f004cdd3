"""The training engine: one loop for every task (train/task.py), read top to bottom.

Set-up (model, optimiser, schedule, EMA, restored state), then `fit`: epochs of steps, an evaluation when
due, a checkpoint after each evaluation, and a stop on a signal or a NaN loss. The task decides what a batch
is, how it becomes a loss and how an evaluation is computed; the engine decides everything else. The training
step never waits for the device: the loss is checked for NaN/inf on the device and the flag looked at every
`log_every` steps. With an EMA of the weights, the EMA is what is evaluated and what the weights files hold
(so eval, predict and export use it); the raw training weights travel in the training state.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet import precision, strictjson
from resnet.atomic import atomic_write_text
from resnet.checkpoint import (check_finite, last_checkpoint, load_state_dict_checked, load_weights, model_meta,
                               prune_checkpoints, save_training_checkpoint)
from resnet.faults import fault_point
from resnet.train import distributed, rundir, tensorboard
from resnet.train.curves import read_metrics
from resnet.train.progress import Progress
from resnet.train.recipes import Recipe, describe
from resnet.train.schedule import LRSchedule
from resnet.train.state import TrainState
from resnet.train.stops import Interrupted, NonFiniteGuard, StopFlag, TrainingDiverged, agreed_stop
from resnet.train.task import Task


def evaluation_due(step: int, eval_every: int, total_steps: int) -> bool:
    """Evaluate every `eval_every` steps and after the last one, but leave out a regular evaluation less than half
    an interval before the end: the last row's training error then covers at least half an interval of batches."""
    if step == total_steps:
        return True
    return step % eval_every == 0 and total_steps - step >= eval_every / 2


class EMAState:
    """The EMA's part of a checkpoint: its average count and the raw training weights (the EMA's own weights
    are the checkpoint's weights file)."""

    def __init__(self, ema: AveragedModel, net: nn.Module) -> None:
        self.ema, self.net = ema, net

    def state_dict(self) -> dict:
        weights = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        return {"n_averaged": self.ema.n_averaged.cpu().clone(), "train_weights": weights}

    def load_state_dict(self, state: dict) -> None:
        self.ema.n_averaged.copy_(state["n_averaged"])
        self.net.load_state_dict(state["train_weights"])


@dataclass
class Checkpoint:
    """The last checkpoint of a run being resumed: its weights file and what it holds."""

    file: Path
    weights: dict
    meta: dict
    mean: torch.Tensor | None
    state: dict


def read_checkpoint(ckpt_dir: Path) -> Checkpoint:
    """The run's last checkpoint, refused in one line when its weights (or raw EMA-run weights) hold NaN/inf."""
    file, state = last_checkpoint(ckpt_dir)
    weights, meta, mean = load_weights(file)
    check_finite(weights, str(file))
    check_finite(state.get("ema", {}).get("train_weights", {}), str(file.parent))
    return Checkpoint(file, weights, meta, mean, state)


class Trainer:
    """A run of `task` with `recipe` in `run_dir`: a new directory (`fresh`), or one being resumed, from its last
    checkpoint (`restore`) or, when it never saved one, from the start."""

    def __init__(self, task: Task, recipe: Recipe, run_dir: Path, config: dict, *, dist: distributed.Dist,
                 device: torch.device, fresh: bool, restore: bool, progress: bool | None = None,
                 stop_after: int | None = None, warmup: bool = False) -> None:
        self.task, self.recipe, self.run_dir, self.config = task, recipe, run_dir, config
        self.dist, self.device, self.fresh, self.restore = dist, device, fresh, restore
        self.stop_after = stop_after
        self.progress_flag = progress
        self.ckpt_dir = run_dir / "checkpoints"
        self.say = print if dist.is_main else (lambda *a, **k: None)
        checkpoint = read_checkpoint(self.ckpt_dir) if restore else None
        self._build_model(checkpoint)
        self._build_optimiser(warmup)
        self.state = TrainState(device)
        if checkpoint is not None:
            self.state.load_state_dict(checkpoint.state, self.components())
        self.saved = self.state.step if restore else None  # step of the last checkpoint on disk
        self.guard = NonFiniteGuard(device, self.state.step)
        self.last_row: dict = {}
        self.steps_this_call = 0
        self.writer = None

    # ------------------------------------------------------------------------- set-up

    def _build_model(self, checkpoint: Checkpoint | None) -> None:
        task, recipe, device = self.task, self.recipe, self.device
        self.net, notes = task.build_model()
        for note in notes:
            self.say(note)
        task.model_ready(self.net, None if checkpoint is None else (checkpoint.meta, checkpoint.mean))
        self.channels_last = precision.channels_last(device, recipe.channels_last)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.net = self.net.to(device, memory_format=fmt)
        if self.dist.enabled and recipe.sync_bn:
            self.net = distributed.convert_sync_batchnorm(self.net, device.type)
        cuda = device.type == "cuda"
        ddp = nn.parallel.DistributedDataParallel(self.net, device_ids=[device.index] if cuda else None) \
            if self.dist.enabled else self.net
        self.step_model = torch.compile(ddp) if recipe.compile else ddp
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True) \
            if recipe.ema_decay > 0 else None
        if checkpoint is not None:  # into the EMA when there is one (the raw weights come with the state)
            target = self.ema.module if self.ema is not None else self.net
            load_state_dict_checked(target, checkpoint.weights, str(checkpoint.file),
                                    f"{self.config['model']} ({self.config['data']})")
        self.eval_model = self.ema.module if self.ema is not None else self.step_model

    def _build_optimiser(self, warmup: bool) -> None:
        recipe = self.recipe
        self.amp_dtype = precision.amp_dtype(self.device, recipe.amp, recipe.amp_dtype)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer = torch.optim.SGD(self.task.param_groups(self.net), lr=recipe.lr, momentum=recipe.momentum,
                                         weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
        self.steps_per_epoch = len(self.task.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"--batch-size {recipe.batch_size} is larger than the training set")
        self.total_steps = recipe.total_steps(self.steps_per_epoch)
        self.eval_every = recipe.eval_every or self.steps_per_epoch
        self.schedule = LRSchedule(recipe, self.total_steps, warmup)

    def components(self) -> dict:
        """What the training state holds besides the counters (train/state.py)."""
        parts = {"optimizer": self.optimizer, "scaler": self.scaler, "schedule": self.schedule,
                 "model": self.config["model"], "data": self.config["data"]}
        if self.ema is not None:
            parts["ema"] = EMAState(self.ema, self.net)
        return parts

    def autocast(self):
        return precision.autocast(self.device, self.amp_dtype)

    def announce(self) -> None:
        """Take the run directory and say what is about to run."""
        if not self.dist.is_main:
            return
        rundir.claim(self.run_dir, fresh=self.fresh)  # creates a new --out (a no-op if held)
        if self.fresh:
            atomic_write_text(self.run_dir / "config.json", json.dumps(self.config, indent=2))
        else:  # what a crash after the checkpoint may have left: newer folders, metrics rows past it
            prune_checkpoints(self.ckpt_dir)
            rundir.truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step)
        c, task = self.config, self.task
        self.say(f"{'training' if self.fresh else 'resuming'} {c['model']} on {c['data']} ({task.summary()}) "
                 f"-> {self.run_dir}")
        self.say(f"device {self.device}, {self.dist.world_size} process(es), {self.total_steps} iterations, "
                 f"{self.steps_per_epoch} per epoch, {precision.describe(self.amp_dtype, self.channels_last)}")
        for line in task.describe():
            self.say(line)
        self.say(f"recipe {self.recipe.name}:\n{describe(self.recipe)}")
        if self.recipe.tensorboard:
            self.writer = tensorboard.open_writer(self.run_dir, self.state.step)

    # ------------------------------------------------------------------------- the loop

    def fit(self) -> dict:
        """Train to the end (returns the last evaluation row) or raise Interrupted / TrainingDiverged."""
        self.announce()
        s = self.state
        self.bar = Progress(self.total_steps, initial=s.step, enabled=self.dist.is_main,
                            force_bar=self.progress_flag, log_every=self.recipe.log_every)
        if s.step >= self.total_steps:  # a finished run resumed: its final evaluation, without training
            return self.finish(self.final_row())
        self.step_model.train()
        try:
            with StopFlag() as stop:
                while s.step < self.total_steps:
                    signum = self.run_epoch(stop)
                    if signum:
                        self.interrupt(signum)
        except TrainingDiverged:
            self.close()
            raise
        return self.finish(self.last_row)

    def run_epoch(self, stop: StopFlag) -> int:
        """The steps left in this epoch; returns the signal to stop for (0 at the end of the epoch or run)."""
        s = self.state
        self.task.train_loader.set_epoch(s.epoch, s.batch_in_epoch)
        tick = time.perf_counter()
        for batch in self.task.train_loader:
            self.run_step(batch)
            s.elapsed += time.perf_counter() - tick
            signum = self.after_step(stop)
            tick = time.perf_counter()  # evaluation and logging do not count as training time
            if s.step >= self.total_steps:
                return 0
            if signum:
                if s.batch_in_epoch == self.steps_per_epoch:
                    s.next_epoch()
                return signum
        s.next_epoch()
        return 0

    def run_step(self, batch) -> None:
        """One optimiser step on one batch; nothing here waits for the device."""
        s = self.state
        lr = self.schedule.lr(s.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        loss, stats = self.task.train_step(self.step_model, batch, s.step, self.autocast)
        self.guard.observe(loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        with torch.no_grad():
            s.window += stats
            if self.schedule.warming:
                s.warmup_errors.append(stats[1] / stats[2])
        s.advance()
        self.steps_this_call += 1
        self.last_stats, self.last_lr = stats, lr

    def after_step(self, stop: StopFlag) -> int:
        """Log, look at the NaN flag, evaluate when due; returns the signal every process agrees to stop for."""
        s = self.state
        looked = s.step % self.recipe.log_every == 0
        if looked:
            self.check_loss()
            self.feed_warmup_errors()
        self.bar.update(s.step, s.epoch, self.postfix)
        if evaluation_due(s.step, self.eval_every, self.total_steps):
            self.last_row = self.run_evaluation()
            self.bar.log_row(self.last_row, self.task.row_summary(self.last_row))
        forced = self.stop_after is not None and self.steps_this_call >= self.stop_after
        return agreed_stop(stop.signum, self.dist, forced, self.device, due=looked or s.step % self.eval_every == 0)

    def postfix(self) -> dict:
        """The progress bar's numbers (read from the device only when shown)."""
        loss_sum, wrong, n = self.last_stats.tolist()
        fields = self.task.window_row(loss_sum, wrong, n)
        shown = {"loss": fields["train_loss"]}
        if "train_error" in fields:
            shown["err%"] = 100 * fields["train_error"]
        return {**shown, "lr": self.last_lr, "img/s": n * self.dist.world_size / max(self.bar.step_time(), 1e-9)}

    # ------------------------------------------------------------------------- evaluation and checkpoints

    def run_evaluation(self) -> dict:
        """Evaluate, append a metrics row, redraw the curves and save a checkpoint (marked best when it is)."""
        s, task = self.state, self.task
        self.check_loss()
        loss_sum, wrong, count = distributed.all_reduce_sum(s.window.clone()).tolist()
        row = {"epoch": round(s.epoch + s.batch_in_epoch / self.steps_per_epoch, 3), "step": s.step,
               "lr": self.schedule.lr(s.step - 1), **task.window_row(loss_sum, wrong, count)}
        row.update(task.evaluate(self.eval_model, s.step == self.total_steps, self.autocast))  # the last reads all
        row["images_per_sec"] = count / max(s.elapsed - s.window_start, 1e-9)
        row["wall_time"] = s.elapsed
        selection = task.selection_error(row)
        self.schedule.observe_val_error(selection)
        is_best = selection < s.best_error
        s.best_error = min(s.best_error, selection)
        s.reset_window()
        if self.dist.is_main:
            self.write_row(row)
            if s.step == self.total_steps and hasattr(task, "write_final"):  # per-class errors, confusion matrix
                task.write_final(self.run_dir)
        self.save_checkpoint(best=is_best)
        return row

    def write_row(self, row: dict) -> None:
        metrics = self.run_dir / "metrics.jsonl"
        with open(metrics, "a") as f:
            f.write(strictjson.dumps(row) + "\n")
        fault_point("metrics:after-row")
        self.task.plot(read_metrics(metrics), self.run_dir / "curves.png",
                       title=f"{self.config['model']} on {self.config['data']}")
        if self.writer is not None:
            tensorboard.write_row(self.writer, row)

    def save_checkpoint(self, best: bool = False) -> None:
        """Weights (the EMA's when there is one) and training state of this step; nothing when nothing changed."""
        if not self.dist.is_main or (self.state.step == self.saved and not best):
            return
        weights = self.ema.module if self.ema is not None else self.net
        save_training_checkpoint(self.ckpt_dir, self.state.step, weights, model_meta(self.net),
                                 self.state.state_dict(self.components()), best=best)
        self.saved = self.state.step

    def check_loss(self) -> None:
        """Look at the NaN/inf flag (one sync); raises TrainingDiverged naming the checkpoint that is kept."""
        kept = (f"the last good checkpoint is {self.ckpt_dir / 'last'} (step {self.saved})" if self.saved is not None
                else "no checkpoint was saved before it")
        self.guard.check(self.state.step, self.state.epoch, kept)

    def feed_warmup_errors(self) -> None:
        """Feed the warm-up steps' training errors to the schedule (read from the device in one go)."""
        errors = self.state.warmup_errors
        for error in torch.stack(errors).tolist() if errors else []:
            self.schedule.observe_train_error(error)
        errors.clear()

    def final_row(self) -> dict:
        """The last evaluation of a run that already ran to its end: from metrics.jsonl, else computed now."""
        rows = [r for r in read_metrics(self.run_dir / "metrics.jsonl") if r.get("step") == self.total_steps]
        return rows[-1] if rows else self.run_evaluation()

    # ------------------------------------------------------------------------- the end

    def interrupt(self, signum: int) -> None:
        """Save, release the run directory and raise Interrupted (exit 128 + signal)."""
        self.check_loss()
        self.save_checkpoint()
        message = f"stopped at step {self.state.step}; checkpoint saved; continue with: resnet train --resume " \
                  f"{self.run_dir}"
        self.close()
        self.say(message, file=sys.stderr)
        distributed.teardown()
        raise Interrupted(signum, message)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.dist.is_main:
            rundir.unlock(self.run_dir)

    def finish(self, row: dict) -> dict:
        self.bar.close()
        self.say(f"done: {self.state.step} iterations, final: {'  '.join(self.task.row_summary(row))}")
        self.close()
        distributed.teardown()
        return row
