"""The training loop, top to bottom: set-up, data, model, optimiser, loop, evaluation, checkpoints.

A run directory holds `config.json` (model, data, recipe), `metrics.jsonl` (one row per
evaluation), `curves.png`, and `checkpoints/` (see resnet/checkpoint.py: `last` and `best`
pointing at `step-N/` folders of weights and state, with `last.safetensors`, `best.safetensors`).
One process writes it at a time (resnet/train/rundir.py). The training step never waits for the
device: the loss is checked for NaN/inf on the device and the flag looked at every `log_every` steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnet import precision
from resnet.data.datasets import describe_input
from resnet.data.loaders import TensorLoader, build_loader
from resnet.device import resolve_device
from resnet.evaluate.metrics import topk_errors
from resnet.models import create_model, get_spec
from resnet import strictjson
from resnet.checkpoint import (atomic_write_text, last_checkpoint, load_state_dict_checked, load_weights, model_meta,
                               prune_checkpoints, save_training_checkpoint, unwrap)
from resnet.faults import fault_point
from resnet.train import distributed, finetune, rundir
from resnet.train.curves import plot_curves, read_metrics
from resnet.train.progress import Progress
from resnet.train.recipes import Recipe, describe, recipe_from_dict
from resnet.train.schedule import LRSchedule


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# ----------------------------------------------------------------------------- set-up


def evaluation_due(step: int, eval_every: int, total_steps: int) -> bool:
    """Evaluate every `eval_every` steps and after the last one, but leave out a regular evaluation less than half
    an interval before the end: the last row's training error then covers at least half an interval of batches."""
    if step == total_steps:
        return True
    return step % eval_every == 0 and total_steps - step >= eval_every / 2

def make_data(data: str, data_dir: str | None, recipe: Recipe, dist: distributed.Dist, device: torch.device,
              download: bool):
    """Training loader, held-out loaders by name ('val', and 'test' when the split is held out) for the evaluations
    during training (a `--eval-subset` sample) and for the final one (every held-out image), info, mean."""
    from resnet.data import dataset_info, get_dataset, load_tensors, pixel_mean
    from resnet.data.datasets import TREES, held_out_splits, protocol_options
    from resnet.data.sampling import balanced_sample, balanced_subset
    from resnet.data.transforms import test_transform, train_transform

    options = protocol_options(data, recipe.style, recipe.image_size)
    info = dataset_info(data, data_dir, download=download, **options)
    mean = pixel_mean(data, data_dir, download=download, **options)
    per_process = recipe.batch_size // dist.world_size
    common = {"seed": recipe.seed, "rank": dist.rank, "world_size": dist.world_size}
    held_out = held_out_splits(data, recipe.val_split)
    use_tensors = info.style == "small" and data not in TREES and recipe.device_loader != "off"
    if recipe.device_loader == "on" and not use_tensors:
        raise ValueError(f"--device-loader on needs cifar10, cifar100, fashion-mnist or synthetic; {data!r} is read "
                         f"from files")
    split_options = {"data_dir": data_dir, "download": download, "val_split": recipe.val_split, "seed": recipe.seed,
                     **options}
    if use_tensors:
        images, labels, info = load_tensors(data, "train", **split_options)
        if recipe.subset:
            keep = balanced_sample(labels, recipe.subset, recipe.seed)
            images, labels = images[keep], labels[keep]
        train = TensorLoader(images, labels, mean, per_process, train=True, device=device, **common)
        evals, finals = {}, {}
        for key, split in held_out.items():
            images, labels, _ = load_tensors(data, split, **split_options)
            finals[key] = evals[key] = TensorLoader(images, labels, mean, per_process, train=False, device=device,
                                                    **common)
            if recipe.eval_subset and recipe.eval_subset < len(labels):
                keep = balanced_sample(labels, recipe.eval_subset, recipe.seed)
                evals[key] = TensorLoader(images[keep], labels[keep], mean, per_process, train=False, device=device,
                                          **common)
        return train, evals, finals, info, mean
    dataset = get_dataset(data, "train", transform=train_transform(info, mean), **split_options)
    info = dataset.info
    dataset = balanced_subset(dataset, recipe.subset, recipe.seed)
    workers = {"num_workers": recipe.num_workers, "device": device, **common}
    train = build_loader(dataset, per_process, train=True, **workers)
    evals, finals = {}, {}
    for key, split in held_out.items():
        held = get_dataset(data, split, transform=test_transform(info, mean), **split_options)
        finals[key] = build_loader(held, per_process, train=False, **workers)
        sample = balanced_subset(held, recipe.eval_subset, recipe.seed)
        evals[key] = finals[key] if sample is held else build_loader(sample, per_process, train=False, **workers)
    return train, evals, finals, info, mean


def make_model(model_name: str, info, mean: torch.Tensor, options: dict) -> nn.Module:
    options = {"num_classes": info.num_classes, "in_channels": info.channels, **options}
    model = create_model(model_name, **options)
    model.meta = {"classes": list(info.classes), "class_names": list(info.class_names), "dataset": info.name,
                  "image_size": info.image_size, "style": info.style}
    model.input_mean = mean
    return model


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast) -> dict:
    """Loss, top-1 and top-5 error over a loader (summed over all processes)."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1 wrong, top5 wrong, count
    for x, y in loader:
        x, y = _to_device(x, y, device)
        with autocast():
            logits = model(x)
        totals += _batch_stats(logits.float(), y)
    model.train()
    loss, wrong1, wrong5, n = distributed.all_reduce_sum(totals).tolist()
    return {"loss": loss / n, "top1_error": wrong1 / n, "top5_error": wrong5 / n, "images": int(n)}


def _batch_stats(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[loss sum, top-1 wrong, top-5 wrong, count] of one batch, kept on the device (no sync)."""
    errors = topk_errors(logits, y)
    loss = F.cross_entropy(logits, y, reduction="sum")
    return torch.stack([loss.double(), errors[1].sum().double(), errors[5].sum().double(),
                        torch.tensor(len(y), device=y.device, dtype=torch.float64)])


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool = False):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


# ----------------------------------------------------------------------------- the run

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


def train(model: str | None = None, data: str | None = None, *, recipe: Recipe | None = None,
          out: str | Path | None = None, data_dir: str | None = None, resume: str | Path | None = None,
          model_options: dict | None = None, download: bool = False, progress: bool | None = None,
          stop_after: int | None = None, overwrite: bool = False, init: str | Path | None = None) -> dict:
    """Train `model` on `data` with `recipe`, writing a run directory; returns the last evaluation row.

    `init` starts from pretrained weights: a name (`resnet weights`), a checkpoint or run directory, or a
    torchvision/timm state dict (see train/finetune.py). `resume` continues a run directory where it
    stopped; `out` may not hold another run unless `overwrite`. `stop_after` (testing) stops as if
    interrupted after that many steps of this call.
    """
    pretrained, init_notes = None, []
    # --- configuration: fresh or from the run being resumed
    if resume is not None:
        run_dir = Path(resume)
        if out is not None and Path(out).resolve() != run_dir.resolve():
            raise ValueError(f"--out {out} with --resume: a resumed run continues in its own directory {run_dir}")
        config_path = run_dir / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{run_dir}: not a run directory (no config.json) to resume")
        config = json.loads(config_path.read_text())
        model = model or config["model"]
        data = data or config["data"]
        data_dir = data_dir or config.get("data_dir")
        recipe = recipe_from_dict(config["recipe"])
        model_options = config.get("model_options", {})
    else:
        if model is None or data is None:
            raise ValueError("give --model and --data (or --resume RUN_DIR)")
        get_spec(model)  # fail on a bad name before loading data
        recipe = (recipe or Recipe()).validate()
        model_options = dict(model_options or {})
        if init is not None:
            pretrained, model_options, init_notes = finetune.read_init(model, init, model_options)
        run_dir = Path(out) if out else Path("runs") / f"{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
        config = {"model": model, "data": data, "model_options": model_options, "recipe": asdict(recipe),
                  "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir else None}  # resumable anywhere
        if pretrained is not None:
            config["init"] = {"given": str(init), "weights": pretrained.source}

    device = resolve_device(recipe.device)
    dist = distributed.setup(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    if recipe.batch_size % dist.world_size:
        raise ValueError(f"--batch-size {recipe.batch_size} is not divisible by {dist.world_size} processes")
    say = print if dist.is_main else (lambda *a, **k: None)
    if dist.is_main and run_dir.exists():  # fail before loading data: another writer, or another run in --out
        rundir.claim(run_dir, fresh=resume is None, overwrite=overwrite)
    torch.manual_seed(recipe.seed)

    # --- data and model
    train_loader, eval_loaders, final_loaders, info, mean = make_data(data, data_dir, recipe, dist, device, download)
    net = make_model(model, info, mean, model_options)
    for note in init_notes + (finetune.load_init(net, pretrained, mean) if pretrained is not None else []):
        say(note)
    ckpt_dir = run_dir / "checkpoints"
    state = None
    if resume is not None:
        weights_file, state = last_checkpoint(ckpt_dir)
        weights, saved_meta, saved_mean = load_weights(weights_file)
        load_state_dict_checked(net, weights, str(weights_file), f"{model} ({data})")
        if config.get("init"):
            finetune.restore_normalisation(net, saved_meta, saved_mean)
    train_loader, eval_loaders = finetune.renormalise(net, mean, train_loader, eval_loaders)
    _, final_loaders = finetune.renormalise(net, mean, train_loader, final_loaders)
    finetune.freeze(net, recipe.freeze)
    cuda = device.type == "cuda"
    channels_last = precision.channels_last(device, recipe.channels_last)
    net = net.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if dist.enabled and recipe.sync_bn:
        net = distributed.convert_sync_batchnorm(net, device.type)
    ddp = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None) if dist.enabled else net
    step_model = torch.compile(ddp) if recipe.compile else ddp

    amp_dtype = precision.amp_dtype(device, recipe.amp, recipe.amp_dtype)

    def autocast():
        return precision.autocast(device, amp_dtype)

    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.SGD(finetune.param_groups(net, recipe), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)

    # --- length of the run
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {recipe.batch_size} is larger than the training set")
    total_steps = recipe.iters if recipe.iters else recipe.epochs * steps_per_epoch
    eval_every = recipe.eval_every or steps_per_epoch
    depth = get_spec(model).depth
    warmup = recipe.warmup == "on" or (recipe.warmup == "auto" and depth >= 110 and get_spec(model).residual)
    schedule = LRSchedule(recipe, total_steps, warmup)

    # --- counters, restored on resume
    step, epoch, batch_in_epoch, best_error = 0, 0, 0, math.inf
    window = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, wrong, count since last eval
    warmup_errors: list[torch.Tensor] = []  # training error of each warm-up step, read every log_every steps
    elapsed = window_start = 0.0  # training seconds, in all and at the last evaluation
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        schedule.load_state_dict(state["schedule"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        best_error, elapsed, window_start = state["best_error"], state["elapsed"], state["window_start"]
        window = state["window"].to(device)
        warmup_errors = list(state.get("warmup_errors", torch.zeros(0)).to(device, torch.float64).unbind())
        torch.set_rng_state(state["rng"]["cpu"])
        if cuda and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)

    saved = step if state is not None else None  # step of the last checkpoint on disk
    if dist.is_main:
        rundir.claim(run_dir, fresh=resume is None, overwrite=overwrite)  # creates a new --out (a no-op if held)
        if resume is None:
            atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
        else:  # what a crash after the checkpoint may have left: newer folders, metrics rows past it
            prune_checkpoints(ckpt_dir)
            rundir.truncate_metrics(run_dir / "metrics.jsonl", step)
        say(f"{'resuming' if resume else 'training'} {model} on {data} ({info.num_classes} classes) -> {run_dir}")
        say(f"device {device}, {dist.world_size} process(es), {total_steps} iterations, "
            f"{steps_per_epoch} per epoch, {precision.describe(amp_dtype, channels_last)}")
        say(f"input: {describe_input(info)}")
        say(f"recipe {recipe.name}:\n{describe(recipe)}")

    def save_checkpoint(best: bool = False) -> None:
        nonlocal saved
        if not dist.is_main or (step == saved and not best):  # nothing changed since the last save
            return
        save_training_checkpoint(ckpt_dir, step, net, model_meta(net), {
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "schedule": schedule.state_dict(),
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best_error": best_error,
            "elapsed": elapsed, "window_start": window_start, "window": window.cpu(), "model": model, "data": data,
            "warmup_errors": torch.stack(warmup_errors).cpu() if warmup_errors else torch.zeros(0),
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if cuda else None}},
            best=best)
        saved = step

    nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # a NaN/inf loss since the last look
    checked = step  # the step of that look

    def check_loss() -> None:
        """Look at the non-finite-loss flag (one sync); stop naming the steps since the last look."""
        nonlocal checked
        if distributed.all_reduce_sum(nonfinite.to(torch.float64)).item() > 0:
            bar.close()
            if dist.is_main:
                rundir.unlock(run_dir)
            kept = (f"the last good checkpoint is {ckpt_dir / 'last'} (step {saved})" if saved is not None
                    else "no checkpoint was saved before it")
            raise TrainingDiverged(f"the loss became NaN or infinite between steps {checked + 1} and {step} "
                                   f"(epoch {epoch + 1}); training stopped; {kept}")
        checked = step

    def feed_warmup_errors() -> None:
        """Feed the warm-up steps' training errors to the schedule (read from the device in one go)."""
        for error in torch.stack(warmup_errors).tolist() if warmup_errors else []:
            schedule.observe_train_error(error)
        warmup_errors.clear()

    def run_evaluation() -> dict:
        nonlocal best_error, window, window_start
        check_loss()
        loss_sum, wrong, count = distributed.all_reduce_sum(window.clone()).tolist()
        row = {"epoch": round(epoch + batch_in_epoch / steps_per_epoch, 3), "step": step, "lr": schedule.lr(step - 1),
               "train_loss": loss_sum / max(count, 1), "train_error": wrong / max(count, 1)}
        loaders = final_loaders if step == total_steps else eval_loaders  # the final one reads every image
        for key, loader in loaders.items():
            row.update({f"{key}_{k}": v for k, v in evaluate(step_model, loader, device, autocast).items()})
        row["images_per_sec"] = count / max(elapsed - window_start, 1e-9)
        row["wall_time"] = elapsed
        selection = row.get("val_top1_error", row.get("test_top1_error"))
        schedule.observe_val_error(selection)
        is_best = selection < best_error
        best_error = min(best_error, selection)
        window = torch.zeros_like(window)
        window_start = elapsed
        if dist.is_main:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(strictjson.dumps(row) + "\n")
            fault_point("metrics:after-row")
            plot_curves({model: read_metrics(run_dir / "metrics.jsonl")}, run_dir / "curves.png",
                        title=f"{model} on {data}")
        save_checkpoint(best=is_best)
        return row

    # --- the loop
    last_row: dict = {}
    bar = Progress(total_steps, initial=step, enabled=dist.is_main, force_bar=progress, log_every=recipe.log_every,
                   show_top5=info.num_classes > 5)
    steps_this_call = 0
    step_model.train()
    with StopFlag() as stop:
        while step < total_steps:
            train_loader.set_epoch(epoch, batch_in_epoch)
            tick = time.perf_counter()
            for x, y in train_loader:
                x, y = _to_device(x, y, device, channels_last)
                lr = schedule.lr(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_mult", 1.0)
                with autocast():
                    logits = step_model(x)
                    loss = F.cross_entropy(logits, y)
                nonfinite |= ~torch.isfinite(loss.detach())  # on the device: no sync
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                with torch.no_grad():
                    wrong = (logits.argmax(1) != y).sum()
                    window[:2] += torch.stack([loss.detach().double() * len(y), wrong.double()])
                    window[2] += len(y)
                    if schedule.warming:
                        warmup_errors.append(wrong.double() / len(y))
                step, batch_in_epoch, steps_this_call = step + 1, batch_in_epoch + 1, steps_this_call + 1
                elapsed += time.perf_counter() - tick
                looked = step % recipe.log_every == 0
                if looked:
                    check_loss()
                    feed_warmup_errors()
                bar.update(step, epoch, lambda: {"loss": loss.item(), "err%": 100 * wrong.item() / len(y), "lr": lr,
                                                 "img/s": len(y) * dist.world_size / max(bar.step_time(), 1e-9)})
                if evaluation_due(step, eval_every, total_steps):
                    last_row = run_evaluation()
                    bar.log_row(last_row)
                signum = _agreed_stop(stop.signum, dist, stop_after is not None and steps_this_call >= stop_after,
                                      device, due=looked or step % eval_every == 0)
                tick = time.perf_counter()  # evaluation and logging do not count as training time
                if signum or step >= total_steps:
                    break
            else:
                epoch, batch_in_epoch = epoch + 1, 0
                continue
            if step >= total_steps:
                break
            if batch_in_epoch == steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            check_loss()
            save_checkpoint()
            bar.close()
            message = f"stopped at step {step}; checkpoint saved; continue with: resnet train --resume {run_dir}"
            say(message, file=sys.stderr)
            if dist.is_main:
                rundir.unlock(run_dir)
            distributed.teardown()
            raise Interrupted(signum or signal.SIGINT, message)
    bar.close()  # the last step was evaluated in the loop (step == total_steps)
    if dist.is_main:
        say(f"done: {step} iterations, final " + ", ".join(f"{k} {v:.4g}" for k, v in last_row.items()
                                                         if k.endswith("error")))
        rundir.unlock(run_dir)
    distributed.teardown()
    return last_row


def _agreed_stop(signum: int, dist: distributed.Dist, forced: bool, device: torch.device, due: bool) -> int:
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
