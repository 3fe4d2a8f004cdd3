"""`train()`: a classification run from its configuration (fresh, or the saved one of a run being resumed),
trained by the engine (resnet/train/engine.py) on the classification task (resnet/train/classification.py).

A run directory holds `config.json` (model, data, recipe), `metrics.jsonl` (one row per evaluation),
`curves.png`, and `checkpoints/` (see resnet/checkpoint.py: `last` and `best` pointing at `step-N/` folders of
weights and state, with `last.safetensors`, `best.safetensors`). One process writes it at a time
(resnet/train/rundir.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from resnet.checkpoint import check_finite, has_checkpoint
from resnet.device import resolve_device
from resnet.models import get_spec
from resnet.train import distributed, finetune, rundir
from resnet.train.classification import ClassificationTask, evaluate, make_data, make_model
from resnet.train.engine import Trainer, evaluation_due
from resnet.train.recipes import Recipe, recipe_from_dict
from resnet.train.stops import Interrupted, StopFlag, StopNow, TrainingDiverged

__all__ = ["train", "run", "read_config", "Interrupted", "TrainingDiverged", "StopFlag", "StopNow",  # the loop's API
           "evaluate", "evaluation_due", "make_data", "make_model"]


def train(model: str | None = None, data: str | None = None, *, recipe: Recipe | None = None,
          out: str | Path | None = None, data_dir: str | None = None, resume: str | Path | None = None,
          model_options: dict | None = None, download: bool = False, progress: bool | None = None,
          stop_after: int | None = None, overwrite: bool = False, init: str | Path | None = None) -> dict:
    """Train `model` on `data` with `recipe`, writing a run directory; returns the last evaluation row.

    `init` starts from pretrained weights: a name (`resnet weights`), a checkpoint or run directory, or a
    torchvision/timm state dict (see train/finetune.py). `resume` continues a run directory where it
    stopped (a run that had finished returns its final evaluation); `out` may not hold another run unless
    `overwrite`. `stop_after` (testing) stops as if interrupted after that many steps of this call.
    """
    if resume is not None:  # a model, data or data_dir given with it are checked against the checkpoint
        run_dir, config = read_config(Path(resume), out, task="classification")
        config.update(model=model or config["model"], data=data or config["data"],
                      data_dir=data_dir or config.get("data_dir"))
        recipe = recipe_from_config(config, run_dir)
    else:
        run_dir, config, recipe = new_config(model, data, recipe or Recipe(), out, data_dir, model_options, init)
    restore = resume is not None and has_checkpoint(run_dir / "checkpoints")  # else: a run that never saved starts
    pretrained, init_notes = None, []
    if config.get("init") and not restore:  # a new run from weights (or one that never saved: from them again)
        pretrained, config["model_options"], init_notes = finetune.read_init(
            config["model"], config["init"]["given"], config["model_options"])
        check_finite(pretrained.state, pretrained.source)
        config["init"]["weights"] = config["init"]["weights"] or pretrained.source

    def make_task(recipe: Recipe) -> ClassificationTask:
        return ClassificationTask(config["model"], config["data"], config.get("data_dir"), recipe,
                                  config["model_options"], download=download, pretrained=pretrained,
                                  init_notes=init_notes, from_init=bool(config.get("init")))

    return run(make_task, config, run_dir, recipe, fresh=resume is None, restore=restore, progress=progress,
               stop_after=stop_after, overwrite=overwrite)


def run(make_task, config: dict, run_dir: Path, recipe: Recipe, *, fresh: bool, restore: bool,
        progress: bool | None = None, stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Any task's run: devices and processes, the run directory claimed before any data is read, the task's data,
    then the engine. `make_task(recipe)` builds the task (train/task.py)."""
    device = resolve_device(recipe.device)
    dist = distributed.setup(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    if recipe.batch_size % dist.world_size:
        raise ValueError(f"--batch-size {recipe.batch_size} is not divisible by {dist.world_size} processes")
    if dist.is_main and run_dir.exists():  # fail before loading data: another writer, or another run in --out
        rundir.claim(run_dir, fresh=fresh, overwrite=overwrite)
    torch.manual_seed(recipe.seed)
    task = make_task(recipe)
    task.setup(dist, device)
    try:
        trainer = Trainer(task, recipe, run_dir, config, dist=dist, device=device, fresh=fresh, restore=restore,
                          progress=progress, stop_after=stop_after, warmup=paper_warmup(config["model"], recipe))
        return trainer.fit()
    finally:
        close_loaders(task)


def close_loaders(task) -> None:
    """Stop the task's loader workers, however the run ended (an error in a worker included), so that the
    process exits at once instead of waiting on persistent workers."""
    loaders = [getattr(task, "train_loader", None)]
    for group in ("val_loaders", "eval_loaders", "final_loaders"):
        loaders += list((getattr(task, group, None) or {}).values())
    for loader in loaders:
        while loader is not None and not hasattr(loader, "close"):  # a wrapper (finetune.Renormalised)
            loader = getattr(loader, "loader", None)
        if loader is not None:
            loader.close()


def new_config(model: str | None, data: str | None, recipe: Recipe, out, data_dir, model_options, init,
               name: str | None = None) -> tuple[Path, dict, Recipe]:
    """A new run's directory (`out`, else runs/NAME-TIME with NAME model-data), config.json contents and checked
    recipe; fails on a bad model name or option before any data is read."""
    if model is None or data is None:
        raise ValueError("give --model and --data (or --resume RUN_DIR)")
    get_spec(model)
    recipe = recipe.validate()
    run_dir = Path(out) if out else Path("runs") / f"{name or f'{model}-{data}'}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = {"model": model, "data": data, "model_options": dict(model_options or {}), "recipe": asdict(recipe),
              "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir else None}  # resumable anywhere
    if init is not None:
        config["init"] = {"given": str(init), "weights": None}  # the weights' own name once they are read
    return run_dir, config, recipe


def read_config(run_dir: Path, out: str | Path | None, task: str | None = None) -> tuple[Path, dict]:
    """The run directory being resumed and its config.json; one line naming the file when it is unusable, or
    when it is a run of another task than `task`."""
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise ValueError(f"--out {out} with --resume: a resumed run continues in its own directory {run_dir}")
    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.json) to resume")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the run cannot be resumed") from None
    missing = [key for key in ("model", "data", "recipe") if not isinstance(config, dict) or key not in config]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} in it; the run cannot be resumed")
    found = config.get("task", "classification")
    if task is not None and found != task:
        raise ValueError(f"{run_dir} is a {found} run, not a {task} one: resume it with `resnet train --resume "
                         f"{run_dir}`")
    config.setdefault("model_options", {})
    return run_dir, config


def recipe_from_config(config: dict, run_dir: Path) -> Recipe:
    try:
        return recipe_from_dict(config["recipe"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{run_dir / 'config.json'}: its recipe is unusable: {e}") from None


def paper_warmup(model: str, recipe: Recipe) -> bool:
    """ResNet-110 and deeper warm up at lr 0.01 until training error < 80% (section 4.2), or as the recipe says."""
    spec = get_spec(model)
    return recipe.warmup == "on" or (recipe.warmup == "auto" and spec.depth >= 110 and spec.residual)
