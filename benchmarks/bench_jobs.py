"""`resnet reproduce --jobs`: the demo's four nets trained one at a time with every core (jobs 1, the baseline)
against two at a time with half the cores each (jobs 2, the demo's default on 2 cores), side by side.

Each configuration runs the degradation suite (plain and residual 20 and 56, the demo's narrow nets and
batch) for the same short budget on Fashion-MNIST; the JSON gives the suite's wall time (its evaluations
included, as in the demo), training images/s over it and the ratio to jobs 1. Writes benchmarks/results/jobs.json.
Usage: python benchmarks/bench_jobs.py [--budget 0.2] [--jobs 1 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch

from record import write_result
from resnet import precision
from resnet.provenance import cpu_model
from resnet.reproduce import reproduce
from resnet.reproduce.experiments import DEGRADATION
from resnet.reproduce.suite import usable_cpus

RESULTS = Path(__file__).parent / "results" / "jobs.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.2, help="fraction of the demo's iterations (default: 0.2)")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    result = {"suite": "degradation", "budget": args.budget, "cpu": cpu_model(), "cores": usable_cpus(),
              "native_bf16": precision.cpu_has_native_bf16(), "torch": torch.__version__, "baseline": "jobs 1",
              "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in args.jobs:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                entry = reproduce("degradation", "fashion-mnist", budget=args.budget, jobs=jobs, device="cpu",
                                  out=Path(tmp) / f"jobs{jobs}", progress=False)
            seconds = time.perf_counter() - start
            images = sum(r["iterations"] for r in entry["runs"]) * DEGRADATION.batch_size
            result["runs"][f"jobs {jobs}"] = {"seconds": seconds, "images_per_sec": images / seconds}
            print(f"jobs {jobs}: {seconds:.1f} s, {images / seconds:.0f} img/s", flush=True)
    base = result["runs"].get("jobs 1")
    if base:
        for r in result["runs"].values():
            r["speed_vs_jobs_1"] = r["images_per_sec"] / base["images_per_sec"]
    write_result(RESULTS, result)


if __name__ == "__main__":
    main()
