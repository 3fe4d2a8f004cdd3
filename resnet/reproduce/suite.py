"""Running a suite: each run an ordinary run directory under `out`, finished runs skipped, stopped ones resumed.

`out/suite.json` records the data, budget and recipe; a later call with another budget or recipe is
refused, so one folder never mixes runs that cannot be compared. Runs go one at a time in this process
(`jobs=1`) or in `jobs` worker processes, through the same `run_one` (runs.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from resnet import strictjson
from resnet.atomic import atomic_write_text
from resnet.reproduce import workers
from resnet.reproduce.experiments import RunSpec
from resnet.reproduce.runs import finished, resumable, run_one
from resnet.train.curves import read_metrics
from resnet.train.loop import Interrupted
from resnet.train.progress import last_logged_step
from resnet.train.recipes import Recipe

SUITE_FIX = ("delete it to let the next call record the suite's options again (the runs are kept; a run trained "
             "with other options is then mixed in), or use another --out")
PROGRESS_SECONDS = 30  # with --jobs > 1, a line on how far each running run is, this often


def recipe_fields(recipe: Recipe | dict) -> dict:
    """A recipe as its JSON fields less the seed (seeds vary per run), for comparing one run or suite with another;
    a recorded one (a dict) gets the defaults of the fields added since it was written."""
    if isinstance(recipe, Recipe):
        recipe = dataclasses.asdict(recipe)
    fields = json.loads(json.dumps({**dataclasses.asdict(Recipe()), **recipe}))
    return {k: v for k, v in fields.items() if k != "seed"}


def check_suite(out: Path, data: str, budget: float, recipe: Recipe) -> None:
    """Create out/suite.json, or refuse (one line) when `out` holds a suite of another data, budget or recipe."""
    wanted = json.loads(json.dumps({"data": data, "budget": budget, "recipe": recipe_fields(recipe)}))
    path = out / "suite.json"
    if path.exists():
        have = strictjson.read_object(path, ("data", "budget", "recipe"), fix=SUITE_FIX)
        if not isinstance(have["recipe"], dict):
            raise ValueError(f"{path}: its 'recipe' is a {type(have['recipe']).__name__}, not an object; {SUITE_FIX}")
        have["recipe"] = recipe_fields(have["recipe"])
        if have != wanted:
            changed = [k for k in ("data", "budget") if have[k] != wanted[k]] or ["recipe"]
            was = ", ".join(f"{k} {have[k]}" for k in changed if k != "recipe") or "another recipe"
            raise ValueError(f"{out} holds a suite trained with {was}; re-run it with the same options to "
                             f"continue it, or give another --out")
        return
    atomic_write_text(path, json.dumps(wanted, indent=2))


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
        state = "resuming" if resumable(out / spec.name) else "training"
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
    """Runs in `jobs` worker processes (resnet/reproduce/workers.py), each with its share of the CPU threads.

    SIGINT/SIGTERM are forwarded to the workers, which save a checkpoint and stop; then this raises Interrupted
    (exit 128 + signal). A run that fails stops the others the same way, then its error is raised here.
    """
    threads = max(1, usable_cpus() // jobs)
    queue, running, results, failures, stopped = list(todo), [], [], [], []
    last_progress = time.monotonic()
    with workers.Forwarder(lambda: running) as stop:
        try:
            while queue or running:
                for worker in [w for w in running if w.process.poll() is not None]:
                    running.remove(worker)
                    answer = worker.answer()
                    if "result" in answer:
                        results.append(answer["result"])
                        say(f"[{len(results)}/{len(todo)} of this call, {total} in all] {_line(answer['result'])}")
                        on_result(answer["result"])
                    elif "interrupted" in answer and not stop.signum:  # a signal to that worker alone
                        stopped.append((worker.name, answer["interrupted"]))
                    elif "error" in answer and not failures:
                        failures.append(answer)
                        say(f"{worker.name} failed; stopping the other runs (each saves a checkpoint)")
                        for other in running:
                            workers.send(other, signal.SIGINT)
                while queue and len(running) < jobs and not (stop.signum or failures or stopped):
                    spec = queue.pop(0)
                    running.append(workers.start(spec.name, (spec, recipe, out, data, data_dir, download, False,
                                                             True, threads)))
                if not running:
                    break  # stopping: the runs not started stay for the next call
                workers.escalate(running, stop.signum or (signal.SIGINT if failures or stopped else 0))
                if not stop.signum and time.monotonic() - last_progress >= PROGRESS_SECONDS:
                    last_progress = time.monotonic()  # the workers' output goes to their logs: say how far they are
                    say("  " + ", ".join(_where(out / w.name, recipe.iters) for w in running)
                        + (f"; {len(queue)} waiting" if queue else ""))
                time.sleep(workers.POLL)
        except BaseException:
            workers.reap(running)
            raise
    if failures:
        error = failures[0]
        raise (ValueError if error.get("expected") else RuntimeError)(error["error"])
    if stop.signum or stopped:
        signum = stop.signum or stopped[0][1] - 128
        who = "every run" if stop.signum else f"{stopped[0][0]} was stopped by a signal; each run"
        raise Interrupted(signum, f"{who} saved a checkpoint; run the same command again to continue")
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
