"""A folder task for ResNet-50 at 224 made from Fashion-MNIST (train/<class>/, val/<class>/ of PNG files):
the held-out set on which bench_inference.py measures a trained ResNet-50's top-1 error per engine.

The first `--train` training images and the first `--val` test images, as 28x28 grayscale PNGs (the folder
pipeline scales them to 224 and reads them as RGB); the same arguments always give the same folder.
Usage: python benchmarks/fashion_folder.py OUT [--train 12000] [--val 2000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from resnet.data.small import FASHION_MNIST_CLASSES, fashion_mnist_root, read_fashion_mnist


def write_fashion_folder(out: str | Path, train: int = 12_000, val: int = 2_000) -> Path:
    """Write the folder task into `out` (kept as it is when its manifest says it holds the same images)."""
    out = Path(out)
    manifest, wanted = out / "fashion_folder.txt", f"train {train} val {val}\n"
    if manifest.exists() and manifest.read_text() == wanted:
        return out
    root = fashion_mnist_root(None, download=False)
    for split, source, count in (("train", "train", train), ("val", "test", val)):
        images, labels = read_fashion_mnist(root, source)
        for i in range(min(count, len(labels))):
            folder = out / split / FASHION_MNIST_CLASSES[int(labels[i])].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i].squeeze().numpy()).save(folder / f"{i:05d}.png")
    manifest.write_text(wanted)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=12_000)
    p.add_argument("--val", type=int, default=2_000)
    args = p.parse_args()
    print(write_fashion_folder(args.out, args.train, args.val))
