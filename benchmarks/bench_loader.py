"""Small-dataset loading: the whole set as one tensor augmented per batch (`TensorLoader`) against
the baseline, torch's DataLoader running the per-image transforms (pad, crop, flip, mean).

Writes benchmarks/results/loader.json: images/s of each and their ratio, measured in one run.
Usage: python benchmarks/bench_loader.py [--images 20000] [--batch-size 128] [--workers 2] [--data fashion-mnist]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from record import write_result
from resnet.data import get_dataset, load_tensors, pixel_mean
from resnet.data.loaders import TensorLoader, build_loader
from resnet.data.transforms import train_transform

RESULTS = Path(__file__).parent / "results" / "loader.json"


def images_per_second(loader, limit: int) -> float:
    seen, start = 0, time.perf_counter()
    for x, _ in loader:
        seen += len(x)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default="fashion-mnist", help="a small dataset (fashion-mnist, cifar10, synthetic)")
    args = p.parse_args()
    options = {"length": args.images, "image_size": 32} if args.data == "synthetic" else {}
    mean = pixel_mean(args.data, **options)
    images, labels, info = load_tensors(args.data, "train", **options)
    tensor_loader = TensorLoader(images, labels, mean, args.batch_size, train=True)
    dataset = get_dataset(args.data, "train", transform=train_transform(info, mean), **options)
    baseline = build_loader(dataset, args.batch_size, train=True, num_workers=args.workers)
    images_per_second(baseline, 4 * args.batch_size)  # start the workers before timing
    result = {
        "data": args.data, "images": args.images, "batch_size": args.batch_size, "workers": args.workers,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
        "baseline": "DataLoader with per-image torchvision.transforms.v2 (pad 4, crop, flip, mean)",
        "baseline_images_per_sec": images_per_second(baseline, args.images),
        "tensor_loader_images_per_sec": images_per_second(tensor_loader, args.images),
    }
    result["speedup"] = result["tensor_loader_images_per_sec"] / result["baseline_images_per_sec"]
    write_result(RESULTS, result)


if __name__ == "__main__":
    main()
