"""The paper's degradation experiment (Fig. 1 / Fig. 6 / Table 6) in miniature, on a CPU.

Plain and residual CIFAR-style nets at two depths are trained on Fashion-MNIST with the same
budget. The point: the deeper plain net has higher training and test error than the shallower
one, while the deeper residual net does not.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from resnet.checkpoint import atomic_write_text
from resnet.train.curves import plot_curves, read_metrics
from resnet.train.recipes import get_recipe


@dataclass
class DemoConfig:
    """Budgets chosen so that the four runs take under 10 minutes on 2 CPU cores.

    Small batches give the deep nets enough SGD steps (3,000) to show the paper's ordering;
    lr 0.02 is the paper's 0.1 at batch 128, scaled down with the batch (rounded up).
    """

    depths: tuple[int, ...] = (20, 56)
    data: str = "fashion-mnist"
    subset: int = 7_000  # training images
    eval_subset: int = 2_000  # test images evaluated each epoch
    epochs: int = 6
    batch_size: int = 16
    lr: float = 0.02
    base_width: int = 8  # half the paper's 16 filters: same depth, a quarter of the compute
    seed: int = 0
    nets: tuple[str, ...] = field(default=("plain", "resnet"))


def run_demo(out: str | Path = "runs/demo", config: DemoConfig | None = None, data_dir: str | None = None,
             download: bool = False, progress: bool | None = None) -> list[dict]:
    """Train every (net, depth) pair, then print and write the table, JSON and curves."""
    from resnet.train.loop import train

    config = config or DemoConfig()
    out = Path(out)
    recipe = get_recipe("paper-cifar", epochs=config.epochs, subset=config.subset, eval_subset=config.eval_subset,
                        batch_size=config.batch_size, lr=config.lr, seed=config.seed, val_split=False,
                        device="cpu", warmup="off")
    results = []
    for kind in config.nets:
        for depth in config.depths:
            name = f"{kind}{depth}"
            print(f"\n== {name} ({config.epochs} epochs on {config.subset} {config.data} images)")
            start = time.perf_counter()
            row = train(name, config.data, recipe=recipe, out=out / name, data_dir=data_dir, download=download,
                        model_options={"base_width": config.base_width}, progress=progress,
                        overwrite=True)  # the demo's own folders: a second demo replaces the first
            results.append({"net": name, "kind": kind, "depth": depth, "train_error": row["train_error"],
                            "test_error": row["test_top1_error"], "seconds": time.perf_counter() - start})
    table = format_results(results)
    print("\n" + table)
    atomic_write_text(out / "results.json", json.dumps({"config": config.__dict__, "results": results}, indent=2))
    for kind in config.nets:
        runs = {f"{kind}-{d}": read_metrics(out / f"{kind}{d}" / "metrics.jsonl") for d in config.depths}
        plot_curves(runs, out / f"curves-{kind}.png", title=f"{kind} nets on {config.data}")
    print(f"\nresults: {out / 'results.json'}; curves: {out}/curves-*.png")
    print(verdict(results))
    return results


def format_results(results: list[dict]) -> str:
    lines = [f"{'net':<10} {'depth':>5} {'train err %':>11} {'test err %':>10} {'time s':>7}"]
    for r in results:
        lines.append(f"{r['net']:<10} {r['depth']:>5} {100 * r['train_error']:>11.2f} {100 * r['test_error']:>10.2f}"
                     f" {r['seconds']:>7.0f}")
    return "\n".join(lines)


def verdict(results: list[dict]) -> str:
    """How much each kind's training error changes from the shallow to the deep net (positive: degradation)."""
    by = {(r["kind"], r["depth"]): r for r in results}
    shallow, deep = min(r["depth"] for r in results), max(r["depth"] for r in results)
    lines = []
    for kind in ("plain", "resnet"):
        if (kind, shallow) in by and (kind, deep) in by:
            a, b = by[(kind, shallow)]["train_error"], by[(kind, deep)]["train_error"]
            lines.append(f"{kind}: training error {100 * a:.2f}% at {shallow} layers, {100 * b:.2f}% at {deep} "
                         f"({100 * (b - a):+.2f} points)")
    return "; ".join(lines)
