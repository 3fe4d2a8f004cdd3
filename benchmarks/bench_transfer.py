"""Transfer with real pretrained weights: akamaster's CIFAR-10 ResNet-56 (../shared/weights) fine-tuned on a small
Fashion-MNIST image folder, against the same net trained from scratch with the same recipe and budget, and with
the paper's recipe. The folder is grayscale 28x28 (one channel: the pretrained RGB conv1 is summed over its input
channels, as timm adapts it) or, with `--rgb32`, the same images as 32x32 RGB.

Each run is a real `resnet train` process; the error is `resnet eval` of its final weights on the folder's `val/`
(held-out Fashion-MNIST *test* images, never seen in training). Writes benchmarks/results/transfer.json.
Usage: python benchmarks/bench_transfer.py [--per-class 200 100] [--epochs 2] [--rgb32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from record import write_result
from resnet.data.sampling import balanced_sample
from resnet.data.small import FASHION_MNIST_CLASSES, fashion_mnist_root, read_fashion_mnist
from resnet.provenance import cpu_model
from resnet.reproduce.suite import usable_cpus

RESULTS = Path(__file__).parent / "results" / "transfer.json"
WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "akamaster-resnet56-4bfd9763.th"


def write_folder(root: Path, per_class: tuple[int, int], rgb32: bool) -> None:
    """train/<class>/*.png from Fashion-MNIST's training images, val/<class>/*.png from its test images."""
    source = fashion_mnist_root(None, download=False)
    for split, n, seed in (("train", per_class[0], 0), ("val", per_class[1], 1)):
        images, labels = read_fashion_mnist(source, "train" if split == "train" else "test")
        for i in balanced_sample(labels, n * len(FASHION_MNIST_CLASSES), seed).tolist():
            image = Image.fromarray(images[i, 0].numpy(), "L")
            if rgb32:
                image = image.convert("RGB").resize((32, 32), Image.BILINEAR)
            folder = root / split / FASHION_MNIST_CLASSES[labels[i]].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i}.png")


def resnet(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "resnet", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"resnet {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def trained_error(name: str, options: list[str], data: Path, tmp: Path) -> dict:
    """Train one run on the folder, then the top-1 error of its final weights on val/."""
    out = tmp / name
    start = time.perf_counter()
    resnet("train", "--model", "resnet56", "--data", "folder", "--data-dir", str(data), "--out", str(out),
           "--no-progress", *options)
    seconds = time.perf_counter() - start
    report = tmp / f"{name}.json"
    resnet("eval", "--checkpoint", str(out), "--data", "folder", "--data-dir", str(data), "--json", str(report))
    result = json.loads(report.read_text())["members"][0]
    print(f"{name}: {100 * result['top1_error']:.1f}% error ({seconds / 60:.1f} min)", flush=True)
    shown = [f"../shared/weights/{WEIGHTS.name}" if option == str(WEIGHTS) else option for option in options]
    return {"name": name, "options": shown, "top1_error": result["top1_error"], "images": result.get("images"),
            "train_seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, nargs=2, default=[200, 100], metavar=("TRAIN", "VAL"))
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (the same for the scratch run)")
    p.add_argument("--rgb32", action="store_true", help="32x32 RGB images instead of 28x28 grayscale")
    args = p.parse_args()
    budget = ["--epochs", str(args.epochs)]
    runs = {"finetuned": ["--init", str(WEIGHTS), "--recipe", "finetune", *budget],
            "scratch-finetune-recipe": ["--recipe", "finetune", *budget],
            "scratch-paper-cifar": ["--recipe", "paper-cifar", *budget]}
    result = {"cpu": cpu_model(), "cores": usable_cpus(), "torch": torch.__version__, "weights": WEIGHTS.name,
              "images": "32x32 RGB" if args.rgb32 else "28x28 grayscale", "per_class": args.per_class,
              "epochs": args.epochs, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fashion-folder"
        write_folder(data, tuple(args.per_class), args.rgb32)
        for name, options in runs.items():
            result["runs"].append(trained_error(name, options, data, Path(tmp)))
    write_result(RESULTS, result, echo=False)


if __name__ == "__main__":
    main()
