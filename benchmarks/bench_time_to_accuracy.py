"""Time to accuracy on Fashion-MNIST: the wall time of `resnet train` (start-up, training and the evaluations it
needs) until the test accuracy on all 10,000 test images first reaches each target, for the `fast` recipe and for
`paper-cifar`, one after the other on the same machine and cores.

Each run is a real `resnet train` process evaluating on the whole test set when its recipe does (fast: every
1,170 iterations, 5 epochs, and after the last; paper-cifar: once per epoch); the clock is read when each metrics
row appears. A run stops when every target is reached, at the end of its schedule, or at its time cap
(SIGTERM: it saves and exits). A one-cycle schedule peaks at its end, so the fast recipe runs at a length for each
target (`--fast-epochs`: 13, 42 and 92 epochs fit 10, 30 and 60 minutes of the 2-core CPU; its hosts differ by
up to 20% in speed: 46 epochs took 29.0 minutes on one, 40 took 30.0 on another). With `--processes 2`
the fast recipe runs as torchrun's two processes of one thread each (data parallel over the cores; on the 2-core
AMD EPYC no faster than one process of two threads: 1,515-1,553 against ~1,500 images/s within an epoch, as the
processes wait for each other at every step). First the bare training step of the same net and batch is timed (the
ceiling for the commands).
Writes benchmarks/results/time_to_accuracy.json (`--out`: another file, for another CPU).
Usage: python benchmarks/bench_time_to_accuracy.py [--fast-epochs 13 42 92] [--processes 2] [--baseline-minutes 10]
       [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from record import write_result
from resnet import precision
from resnet.provenance import cpu_model
from resnet.reproduce.suite import usable_cpus

RESULTS = Path(__file__).parent / "results" / "time_to_accuracy.json"
TARGETS = (0.94, 0.95)


def rows_of(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def launcher(processes: int) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment for one process (all threads) or torchrun's `processes` of one thread."""
    if processes == 1:
        return [sys.executable, "-m", "resnet"], dict(os.environ)
    return ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
             "resnet"], {**os.environ, "OMP_NUM_THREADS": "1"})


def timed_run(model: str, recipe: str, extra: list[str], minutes: float, out: Path, processes: int = 1) -> dict:
    """Run `resnet train` and note the wall time at which each evaluation row appeared."""
    prefix, env = launcher(processes)
    command = [*prefix, "train", "--model", model, "--data", "fashion-mnist", "--recipe", recipe, "--out", str(out),
               "--no-progress", *extra]
    print(" ".join(command[len(prefix) - 1:]), flush=True)
    start = time.perf_counter()
    log = open(out.with_suffix(".log"), "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    seen: list[dict] = []
    reached: dict[str, float] = {}
    while process.poll() is None:
        time.sleep(0.5)
        for row in rows_of(out / "metrics.jsonl")[len(seen):]:
            row["seconds"] = time.perf_counter() - start
            seen.append(row)
            accuracy = 1 - row["test_top1_error"]
            print(f"  {row['seconds'] / 60:6.2f} min  step {row['step']}  test acc {100 * accuracy:.2f}%", flush=True)
            for target in TARGETS:
                if accuracy >= target and f"{target}" not in reached:
                    reached[f"{target}"] = row["seconds"]
        if len(reached) == len(TARGETS) or time.perf_counter() - start > 60 * minutes:
            os.killpg(process.pid, signal.SIGTERM)  # the group: torchrun's workers too
            process.wait()
    for row in rows_of(out / "metrics.jsonl")[len(seen):]:  # a last row written while stopping
        row["seconds"] = time.perf_counter() - start
        seen.append(row)
    log.close()
    if not seen:  # it stopped before its first evaluation (a bad option, missing data): its own words say why
        lines = out.with_suffix(".log").read_text().strip().splitlines() or ["(no output)"]
        raise SystemExit(f"bench_time_to_accuracy: {' '.join(command[len(prefix) - 1:])} gave no evaluation "
                         f"(exit {process.returncode}): {lines[-1]}")
    best = max(seen, key=lambda r: 1 - r["test_top1_error"])
    tta = json.loads((out / "config.json").read_text())["recipe"]["tta"]
    return {"model": model, "recipe": recipe, "options": extra, "tta": tta, "processes": processes,
            "cap_minutes": minutes,
            "seconds_to": {t: reached.get(f"{t}") for t in TARGETS},
            "best_test_accuracy": 1 - best["test_top1_error"], "best_at_seconds": best["seconds"],
            "last_test_accuracy": 1 - seen[-1]["test_top1_error"], "epochs_run": seen[-1]["epoch"],
            "seconds": time.perf_counter() - start, "train_images_per_sec": seen[-1]["images_per_sec"],
            "rows": [{k: r[k] for k in ("epoch", "step", "seconds", "test_top1_error")} for r in seen]}


def raw_step_rate(model: str, fast_options: Sequence[str] = (), steps: int = 30) -> float:
    """Images/s of the bare training step (forward, loss, backward, SGD) of the fast runs' net and batch (the fast
    recipe with `fast_options`, read by `resnet train`'s own parser) on random 28x28 inputs, with the precision
    the trainer picks here: the ceiling for the whole command."""
    import torch.nn.functional as F

    from resnet import create_model
    from resnet.cli import build_parser
    from resnet.commands.options import model_options
    from resnet.commands.train import recipe_from_args

    args = build_parser().parse_args(["train", "--model", model, "--data", "fashion-mnist", "--recipe", "fast",
                                      *fast_options])
    fast, cpu = recipe_from_args(args), torch.device("cpu")
    batch_size = fast.batch_size
    dtype, nhwc = precision.amp_dtype(cpu, None), precision.channels_last(cpu, None)
    net = create_model(model, **{"num_classes": 10, "in_channels": 1, **model_options(args)})
    form = torch.channels_last if nhwc else torch.contiguous_format
    net = net.to(memory_format=form)
    sgd = torch.optim.SGD(net.parameters(), lr=fast.lr, momentum=fast.momentum, nesterov=fast.nesterov,
                          weight_decay=fast.weight_decay)
    x = torch.randn(batch_size, 1, 28, 28).to(memory_format=form)
    y = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        with precision.autocast(cpu, dtype):
            loss = F.cross_entropy(net(x), y, label_smoothing=fast.label_smoothing)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()

    for _ in range(5):  # warm-up: allocator, oneDNN primitives
        step()
    iterations = max(1, steps * 256 // batch_size)  # the same number of images at any batch size
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return batch_size * iterations / (time.perf_counter() - start)


def earlier_runs(machine: dict, path: Path) -> list[dict]:
    """The runs of the JSON already written (none when there is none yet), when it was measured on this machine and
    software."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    same = ("cpu", "cores", "native_bf16", "torch", "threads")
    if any(earlier.get(key) != machine[key] for key in same):
        raise SystemExit(f"--append: {path} was measured on another machine or torch "
                         f"({', '.join(f'{k}={earlier.get(k)}' for k in same)}); write this one's runs to "
                         f"another --out")
    return earlier["runs"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--fast-epochs", type=int, nargs="*", default=[13, 42, 92],
                   help="lengths of the fast recipe's runs (one-cycle peaks at its end; default: 13 42 92)")
    p.add_argument("--fast-options", nargs=argparse.REMAINDER, default=[],
                   help="more `resnet train` options for the fast runs (last on the line)")
    p.add_argument("--processes", type=int, default=1, help="processes of the fast runs (2: torchrun, one thread each)")
    p.add_argument("--fast-minutes", type=float, default=70.0, help="time cap of each fast run (default: 70)")
    p.add_argument("--baseline-minutes", type=float, default=10.0,
                   help="time cap of the paper-cifar run (its 64k iterations take hours; default: 10)")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--append", action="store_true",
                   help="add these runs to the runs already in the JSON (measured on the same CPU, else refused)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help=f"the JSON to write, one per CPU (default: "
                        f"{RESULTS.relative_to(Path(__file__).parent.parent)})")
    args = p.parse_args()
    result = {"cpu": cpu_model(), "cores": usable_cpus(), "native_bf16": precision.cpu_has_native_bf16(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "targets": list(TARGETS),
              "baseline": "paper-cifar", "runs": []}
    if args.append:
        result["runs"] = earlier_runs(result, args.out)
    result["raw_step_images_per_sec"] = raw_step_rate(args.model, args.fast_options)
    print(f"raw training step: {result['raw_step_images_per_sec']:.0f} images/s", flush=True)
    jobs = [("fast", ["--epochs", str(epochs), *args.fast_options], args.fast_minutes, f"fast-{epochs}",
             args.processes) for epochs in args.fast_epochs]
    if not args.skip_baseline:
        jobs.append(("paper-cifar", [], args.baseline_minutes, "paper-cifar", 1))
    with tempfile.TemporaryDirectory() as tmp:
        for recipe, extra, minutes, name, processes in jobs:
            run = timed_run(args.model, recipe, extra, minutes, Path(tmp) / name, processes)
            # each run keeps the ceiling measured beside it: --append gathers runs of other sessions and hosts
            result["runs"].append({**run, "raw_step_images_per_sec": result["raw_step_images_per_sec"]})
            write_result(args.out, result, echo=False)
    write_result(args.out, result, echo=False)
    for run in result["runs"]:
        times = ", ".join(f"{100 * float(t):.0f}%: " + (f"{s / 60:.1f} min" if s else "not reached")
                          for t, s in run["seconds_to"].items())
        print(f"{run['recipe']} {' '.join(run['options'])} (tta {run.get('tta', '?')}): {times}; "
              f"best {100 * run['best_test_accuracy']:.2f}%")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
