"""Running a suite: each run an ordinary run directory under `out`, finished runs skipped, stopped ones resumed.

`out/suite.json` records the data, budget and recipe; a later call with another budget or recipe is
refused, so one folder never mixes runs that cannot be compared. Runs go one at a time in this process
(`jobs=1`) or in `jobs` worker processes, through the same `run_one`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

from resnet.checkpoint import atomic_write_text
from resnet.reproduce.experiments import RunSpec, with_seed
from resnet.train.curves import read_metrics
from resnet.train.progress import last_logged_step
from resnet.train.recipes import Recipe

RESULT = "result.json"  # written into a run directory when its run has finished
PROGRESS_SECONDS = 30  # with --jobs > 1, a line on how far each running run is, this often


def check_suite(out: Path, data: str, budget: float, recipe: Recipe) -> None:
    """Create out/suite.json, or refuse (one line) when `out` holds a suite of another data, budget or recipe."""
    recipe_fields = {k: v for k, v in dataclasses.asdict(recipe).items() if k != "seed"}  # seeds vary per run
    wanted = json.loads(json.dumps({"data": data, "budget": budget, "recipe": recipe_fields}))
    path = out / "suite.json"
    if path.exists():
        have = json.loads(path.read_text())
        defaults = json.loads(json.dumps(dataclasses.asdict(Recipe())))  # fields added since the suite began
        have["recipe"] = {k: v for k, v in {**defaults, **have["recipe"]}.items() if k != "seed"}
        if have != wanted:
            changed = [k for k in ("data", "budget") if have[k] != wanted[k]] or ["recipe"]
            was = ", ".join(f"{k} {have[k]}" for k in changed if k != "recipe") or "another recipe"
            raise ValueError(f"{out} holds a suite trained with {was}; re-run it with the same options to "
                             f"continue it, or give another --out")
        return
    atomic_write_text(path, json.dumps(wanted, indent=2))


def finished(run_dir: Path) -> dict | None:
    """The run's result if it has finished."""
    path = run_dir / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def _resumable(run_dir: Path) -> bool:
    from resnet.checkpoint import weights_path

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


def summarize(run_dir: Path, spec: RunSpec, last: dict) -> dict:
    """The numbers the report needs, from the last evaluation and metrics.jsonl.

    `best_val_test_error` is the test error of the checkpoint with the lowest validation error
    (the paper selects models on its 45k/5k split); without a validation split it equals the final one.
    `train_error` is over the last epoch's batches (`last_epoch_train_error`).
    """
    rows = read_metrics(run_dir / "metrics.jsonl")
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
    from resnet.train.loop import train

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
        if _resumable(run_dir):
            last = train(resume=run_dir, progress=progress, download=download)
        else:
            last = train(spec.model, data, recipe=with_seed(recipe, spec.seed), out=run_dir, data_dir=data_dir,
                         model_options=dict(spec.model_options), download=download, progress=progress,
                         overwrite=True)  # a start that never reached its first checkpoint begins again
    result = summarize(run_dir, spec, last)
    atomic_write_text(run_dir / RESULT, json.dumps(result, indent=2))
    return result


def run_all(specs: list[RunSpec], recipe: Recipe, out: Path, data: str, *, data_dir: str | None = None,
            download: bool = False, jobs: int = 1, progress: bool | None = None,
            on_result: Callable[[dict], None] = lambda r: None, say: Callable[[str], None] = print) -> list[dict]:
    """Run every spec (finished ones are read back), calling `on_result` after each; returns the summaries."""
    results, todo = [], []
    for spec in specs:
        done = finished(out / spec.name)
        (results if done else todo).append(done or spec)
    say(f"{len(specs)} runs: {len(results)} finished, {len(todo)} to train"
        + (f", {jobs} at a time (logs in RUN_DIR/train.log)" if jobs > 1 and todo else ""))
    for i, spec in enumerate(todo):
        if jobs > 1:
            break
        state = "resuming" if _resumable(out / spec.name) else "training"
        say(f"[{len(results) + 1}/{len(specs)}] {state} {spec.name}")
        start = time.perf_counter()
        result = run_one(spec, recipe, out, data, data_dir, download, progress)
        say(f"[{len(results) + 1}/{len(specs)}] {_line(result)} ({time.perf_counter() - start:.0f} s)")
        results.append(result)
        on_result(result)
    if jobs > 1 and todo:
        results += _run_parallel(todo, recipe, out, data, data_dir, download, jobs, on_result, say, len(specs))
    order = {s.name: i for i, s in enumerate(specs)}
    return sorted(results, key=lambda r: order.get(r["name"], len(order)))


def _run_parallel(todo, recipe, out, data, data_dir, download, jobs, on_result, say, total) -> list[dict]:
    """Runs in `jobs` worker processes, each with its share of the CPU threads."""
    threads = max(1, usable_cpus() // jobs)
    results = []
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(run_one, spec, recipe, out, data, data_dir, download, False, True, threads): spec
                   for spec in todo}
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=PROGRESS_SECONDS,
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
            running = [futures[f].name for f in futures if f in pending and f.running()][:jobs]  # in order given
            if not done and running:  # the workers' output goes to their logs: say here how far they are
                waiting = len(pending) - len(running)
                say("  " + ", ".join(_where(out / name, recipe.iters) for name in running)
                    + (f"; {waiting} waiting" if waiting else ""))
            for future in done:
                result = future.result()
                results.append(result)
                say(f"[{len(results)}/{len(todo)} of this call, {total} in all] {_line(result)}")
                on_result(result)
    return results


def usable_cpus() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _where(run_dir: Path, iters: int | None) -> str:
    """'resnet20-s0 step 4000/64000, eta 1:58:02 (test err 18.20% at step 3200)' for progress lines: the step
    and ETA from the run's log (written every 50 steps), the error from its last evaluation."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    logged_step, eta = last_logged_step(run_dir / "train.log") or (0, None)
    if eta is None and not rows:
        return f"{run_dir.name} starting"
    last = rows[-1] if rows else {"step": 0}
    where = f"{run_dir.name} step {max(logged_step, last['step'])}/{iters or '?'}"
    if eta is not None and logged_step >= last["step"]:
        where += f", eta {eta}"
    test = last.get("test_top1_error", last.get("val_top1_error"))
    return where if test is None else f"{where} (test err {100 * test:.2f}% at step {last['step']})"


def _line(r: dict) -> str:
    return (f"{r['name']}: test error {100 * r['test_error']:.2f}%, training error {100 * r['train_error']:.2f}%, "
            f"{r['iterations']} iterations")
