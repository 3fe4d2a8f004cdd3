"""Decode + ImageNet test transform of large JPEGs: full decode (baseline) against PIL draft-mode decoding.

Writes 20 photo-like 2000x1500 JPEGs into a temporary folder tree, reads them through the `folder`
dataset with the paper's test transform (shorter side 256, centre crop 224) once with draft
disabled and once with it on (the dataset takes min_side=256 from the transform), and writes
the timings and their ratio to benchmarks/results/decode.json.

    python benchmarks/bench_decode.py [--images 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageFilter

from record import write_result
from resnet.data import dataset_info, get_dataset
from resnet.data.transforms import test_transform

RESULTS = Path(__file__).parent / "results" / "decode.json"


def write_jpegs(root: Path, count: int, size: tuple[int, int]) -> None:
    """Photo-like JPEGs (smooth colour fields plus grain, quality 90) in root/train/<class>/."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (size[1] // 50, size[0] // 50, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))
        grain = rng.normal(0, 6, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", "JPEG", quality=90)


def time_pass(dataset) -> tuple[float, list[torch.Tensor]]:
    """Seconds to decode and transform every image once, and the outputs."""
    start = time.perf_counter()
    outputs = [dataset[i][0] for i in range(len(dataset))]
    return time.perf_counter() - start, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one loader worker's view: the decode cost per image
    size = (2000, 1500)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root, args.images, size)
        jpeg_bytes = np.mean([p.stat().st_size for p in root.rglob("*.jpg")])
        info = dataset_info("folder", root)
        transform = test_transform(info, torch.zeros(3, 1, 1))
        full = get_dataset("folder", "train", root, transform=transform, draft=0)
        draft = get_dataset("folder", "train", root, transform=transform)
        time_pass(full), time_pass(draft)  # warm the file cache
        full_s, draft_s = [], []
        for _ in range(args.repeats):
            t, full_out = time_pass(full)
            full_s.append(t)
            t, draft_out = time_pass(draft)
            draft_s.append(t)
    diff = torch.stack([(a - b).abs().mean() for a, b in zip(full_out, draft_out)]).mean().item()
    baseline, ours = min(full_s) / args.images, min(draft_s) / args.images
    result = {
        "benchmark": "decode + test transform (shorter side 256, centre crop 224) of large JPEGs",
        "images": args.images,
        "jpeg_size": list(size),
        "jpeg_mean_bytes": int(jpeg_bytes),
        "repeats": args.repeats,
        "baseline": "full decode",
        "full_decode_ms_per_image": round(baseline * 1000, 2),
        "draft_decode_ms_per_image": round(ours * 1000, 2),
        "speedup_full_over_draft": round(baseline / ours, 2),
        "draft_min_side": draft.draft,
        "mean_abs_diff_of_outputs_0_1_scale": round(diff, 5),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__},
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
