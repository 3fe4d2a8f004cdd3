"""One run of a suite: trained, resumed or skipped (`run_one`), and the summary its result.json holds.

The suite (suite.py) runs these one at a time in its own process or in worker processes (workers.py); both
come here, so neither of them imports the other for it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from resnet import strictjson
from resnet.atomic import atomic_write_text
from resnet.checkpoint import weights_path
from resnet.reproduce.experiments import RunSpec, with_seed
from resnet.train import loop  # loop.train, looked up at each call (tests replace it)
from resnet.train.curves import read_metrics
from resnet.train.recipes import Recipe

RESULT = "result.json"  # written into a run directory when its run has finished
# what summarize writes into result.json, and the report reads back
RESULT_KEYS = ("name", "label", "model", "kind", "depth", "seed", "test_error", "best_val_test_error",
               "train_error", "iterations", "train_seconds")
NUMBERS = ("depth", "seed", "test_error", "best_val_test_error", "train_error", "iterations", "train_seconds")


def finished(run_dir: Path) -> dict | None:
    """The run's result if it has finished; a damaged result.json is one line naming it and what to do."""
    path = run_dir / RESULT
    if not path.exists():
        return None
    fix = f"delete it (rm {path}) to re-run that net: the same command then resumes it from its checkpoint"
    result = strictjson.read_object(path, RESULT_KEYS, fix=fix)
    bad = [k for k in NUMBERS if not isinstance(result[k], (int, float)) or isinstance(result[k], bool)]
    if bad:
        raise ValueError(f"{path}: {', '.join(map(repr, bad))} should be numbers; {fix}")
    return result


def resumable(run_dir: Path) -> bool:
    """Whether the run directory holds a started run with a checkpoint to resume from."""
    if not (run_dir / "config.json").exists():
        return False
    try:
        weights_path(run_dir, "last")
    except FileNotFoundError:
        return False
    return True


def last_epoch_train_error(rows: list[dict]) -> float:
    """Training error over the batches of (about) the last epoch: the windows of the evaluations that fall in it,
    weighted by their length, so one noisy quarter-epoch does not decide a comparison."""
    end = rows[-1]["epoch"]
    starts = [0] + [r["step"] for r in rows[:-1]]
    windows = [(r["train_error"], r["step"] - start) for r, start in zip(rows, starts) if r["epoch"] > end - 1]
    return sum(error * steps for error, steps in windows) / sum(steps for _, steps in windows)


def final_row(run_dir: Path, last: dict, rows: list[dict]) -> dict:
    """The run's final evaluation: `last` as train() returned it, or, when that has no test error (a run resumed
    after its last step returns no new evaluation), the last row of its metrics.jsonl that has one."""
    if "test_top1_error" in last:
        return last
    scored = [r for r in rows if "test_top1_error" in r]
    if not scored:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no evaluation with a test error to summarise the run by; "
                         f"delete {run_dir} to train that net again")
    return max(scored, key=lambda r: r["step"])


def summarize(run_dir: Path, spec: RunSpec, last: dict) -> dict:
    """The numbers the report needs, from the last evaluation and metrics.jsonl.

    `best_val_test_error` is the test error of the checkpoint with the lowest validation error
    (the paper selects models on its 45k/5k split); without a validation split it equals the final one.
    `train_error` is over the last epoch's batches (`last_epoch_train_error`).
    """
    rows = read_metrics(run_dir / "metrics.jsonl")
    last = final_row(run_dir, last, rows)
    validated = [r for r in rows if "val_top1_error" in r]  # never select on the test set
    selected = min(validated, key=lambda r: r["val_top1_error"]) if validated else last
    return {"name": spec.name, "label": spec.label, "model": spec.model, "kind": spec.kind, "depth": spec.depth,
            "seed": spec.seed, "options": spec.model_options,
            "test_error": last["test_top1_error"], "best_val_test_error": selected["test_top1_error"],
            "best_val_step": selected["step"],
            "train_error": last_epoch_train_error(rows) if rows else last["train_error"],
            "val_error": last.get("val_top1_error"), "iterations": last["step"],
            "train_seconds": last["wall_time"]}


def run_one(spec: RunSpec, recipe: Recipe, out: Path, data: str, data_dir: str | None, download: bool,
            progress: bool | None, log: bool = False, threads: int | None = None) -> dict:
    """Train (or resume, or skip) one run; returns its summary, also written to RUN_DIR/result.json."""
    run_dir = out / spec.name
    done = finished(run_dir)
    if done is not None:
        return done
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if log:  # a worker process: its output goes to the run's own log
            stream = stack.enter_context(open(run_dir / "train.log", "a", buffering=1))
            stack.enter_context(contextlib.redirect_stdout(stream))
            stack.enter_context(contextlib.redirect_stderr(stream))
        if resumable(run_dir):
            last = loop.train(resume=run_dir, progress=progress, download=download)
        else:
            last = loop.train(spec.model, data, recipe=with_seed(recipe, spec.seed), out=run_dir, data_dir=data_dir,
                         model_options=dict(spec.model_options), download=download, progress=progress,
                         overwrite=True)  # a start that never reached its first checkpoint begins again
    result = summarize(run_dir, spec, last)
    atomic_write_text(run_dir / RESULT, json.dumps(result, indent=2))
    return result
