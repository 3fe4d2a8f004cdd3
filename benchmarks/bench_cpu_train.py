"""End-to-end `resnet train` on the CPU: the automatic choice (resnet.precision) against fp32, and
bf16 autocast + channels_last forced, side by side in one run on one machine.

Each configuration trains the same short Fashion-MNIST run (same seed, data and schedule); the JSON
gives training images/s (evaluation excluded), the final test error of each, the ratios to fp32, the
CPU model and whether it has native bf16. On CPUs without native bf16 the automatic choice is fp32.
Writes benchmarks/results/cpu_train.json.
Usage: python benchmarks/bench_cpu_train.py [--model resnet20] [--iters 300] [--batch-size 128] [--subset 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import torch

from record import write_result
from resnet import precision
from resnet.provenance import cpu_model
from resnet.train.loop import train
from resnet.train.recipes import get_recipe

RESULTS = Path(__file__).parent / "results" / "cpu_train.json"
CONFIGS = {"auto": {}, "fp32": {"amp": False, "channels_last": False},
           "bf16+channels_last": {"amp": True, "channels_last": True}}


def run(config: dict, args: argparse.Namespace, out: Path) -> dict:
    recipe = get_recipe("paper-cifar", iters=args.iters, batch_size=args.batch_size, subset=args.subset,
                        eval_every=args.iters, eval_subset=args.eval_subset, val_split=False, device="cpu",
                        **config)
    with contextlib.redirect_stdout(io.StringIO()):
        row = train(args.model, "fashion-mnist", recipe=recipe, out=out, progress=False)
    return {"images_per_sec": row["images_per_sec"], "test_error": row["test_top1_error"],
            "train_error": row["train_error"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--subset", type=int, default=20_000)
    p.add_argument("--eval-subset", type=int, default=10_000)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = p.parse_args()
    result = {"model": args.model, "iters": args.iters, "batch_size": args.batch_size, "subset": args.subset,
              "cpu": cpu_model(), "native_bf16": precision.cpu_has_native_bf16(),
              "auto_choice": precision.describe(precision.amp_dtype("cpu", None), precision.channels_last("cpu", None)),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "baseline": "fp32", "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            result["runs"][name] = run(CONFIGS[name], args, Path(tmp) / name)
            print(name, result["runs"][name], flush=True)
    base = result["runs"].get("fp32")
    if base:
        for r in result["runs"].values():
            r["speed_vs_fp32"] = r["images_per_sec"] / base["images_per_sec"]
            r["test_error_minus_fp32"] = r["test_error"] - base["test_error"]
    write_result(RESULTS, result)


if __name__ == "__main__":
    main()
