"""Detection speed on small images (issue 37): a COCO folder of 96-160 px images (shapes on noise, 3 classes)
at torchvision's default input scale (min_size 800 / max_size 1333: every image blown up to 800 px, what
`resnet train --data coco` did before --min-size) against the scale chosen from the data (the images' own:
`resnet.detection.datacheck.default_sizes`), C4 Faster R-CNN on ResNet-20; training images/s (SGD steps, batch 2)
and evaluation images/s (eval mode, one image at a time). The two settings run interleaved (A, B, A, B) so a load
change hits both; the ratio is the claim. Then where the time goes in a C4 Mask R-CNN at the data's scale: the
forward time of each part (trunk conv1..conv4_x, RPN, the box head's conv5_x per RoI, the mask head's second
conv5_x on the positive RoIs) from forward hooks, beside the whole training step (forward + backward).

Writes benchmarks/results/detection_sizes.json. Usage:
  python benchmarks/bench_detection_sizes.py [--images 24] [--rounds 2] [--steps 2] [--evals 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from record import write_result
from resnet.detection import create_detector, detection_loss
from resnet.detection.coco import collate_detection, detection_datasets

RESULTS = Path(__file__).parent / "results" / "detection_sizes.json"


def write_shapes(folder: Path, n: int, seed: int = 0) -> Path:
    """train/val COCO jsons of n images each, 96-160 px sides, 1-3 filled shapes (3 classes) on noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(1, n + 1):
            w, h = (int(v) for v in rng.integers(96, 161, 2))
            canvas = Image.fromarray(rng.integers(0, 80, (h, w, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(canvas)
            for _ in range(int(rng.integers(1, 4))):
                label = int(rng.integers(1, 4))
                bw, bh = (int(v) for v in rng.integers(20, 48, 2))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                box = [x, y, x + bw, y + bh]
                (draw.rectangle, draw.ellipse, draw.polygon)[label - 1](
                    box if label < 3 else [(x, y + bh), (x + bw // 2, y), (x + bw, y + bh)], fill=(220, 200, 60))
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label,
                                    "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                                    "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
            canvas.save(folder / split / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
        data = {"images": images, "annotations": annotations,
                "categories": [{"id": k, "name": name} for k, name in ((1, "box"), (2, "disc"), (3, "triangle"))]}
        (folder / f"{split}.json").write_text(json.dumps(data))
    return folder


def train_rate(model, batches) -> float:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    start, seen = time.perf_counter(), 0
    for images, targets in batches:
        loss, _ = detection_loss(model, images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(images)
    return seen / (time.perf_counter() - start)


@torch.no_grad()
def eval_rate(model, images) -> float:
    model.eval()
    start = time.perf_counter()
    for image in images:
        model([image])
    return len(images) / (time.perf_counter() - start)


def compare_sizes(datasets, info, args) -> dict:
    """Training and evaluation images/s at 800/1333 and at the data's scale, interleaved rounds."""
    train, val = datasets["train"], datasets["val"]
    batches = [collate_detection([train[2 * k], train[2 * k + 1]]) for k in range(args.steps)]
    evals = [val[k][0] for k in range(args.evals)]
    settings = {"torchvision 800/1333 (before)": (800, 1333), "from the data (after)": (info.min_size, info.max_size)}
    options = {k: v for k, v in info.detector_options().items() if k not in ("min_size", "max_size")}
    rates: dict = defaultdict(lambda: {"train": [], "eval": []})
    for _ in range(args.rounds):
        for name, (low, high) in settings.items():
            torch.manual_seed(0)
            model = create_detector("resnet20", "c4", min_size=low, max_size=high, **options)
            rates[name]["train"].append(train_rate(model, batches))
            rates[name]["eval"].append(eval_rate(model, evals))
    out = {name: {"min_size": settings[name][0], "max_size": settings[name][1],
                  "train_images_per_s": max(r["train"]), "eval_images_per_s": max(r["eval"]),
                  "rounds": {k: [round(v, 3) for v in vs] for k, vs in r.items()}} for name, r in rates.items()}
    before, after = (out[name] for name in settings)
    out["ratio_after_over_before"] = {k: after[k] / before[k] for k in ("train_images_per_s", "eval_images_per_s")}
    return out


def mask_breakdown(folder: Path, args) -> dict:
    """Forward seconds per part of a C4 Mask R-CNN training step at the data's scale, and the whole step."""
    datasets, info = detection_datasets("coco", folder, masks=True, augment=False)
    options = info.detector_options()
    torch.manual_seed(0)
    model = create_detector("resnet20", "c4", masks=True, **options).train()
    parts = {"trunk conv1..conv4_x": model.backbone, "RPN": model.rpn, "box head conv5_x": model.roi_heads.box_head,
             "mask head conv5_x (again)": model.roi_heads.mask_head}
    spent: dict = defaultdict(float)
    for name, module in parts.items():
        module.register_forward_pre_hook(lambda m, a, name=name: spent.__setitem__(name + "@", time.perf_counter()))
        module.register_forward_hook(lambda m, a, o, name=name: spent.__setitem__(
            name, spent[name] + time.perf_counter() - spent[name + "@"]))
    train = datasets["train"]
    batches = [collate_detection([train[2 * k], train[2 * k + 1]]) for k in range(args.steps)]
    train_rate(model, batches[:1])  # warm-up
    for key in list(spent):
        spent[key] = 0.0
    start = time.perf_counter()
    rate = train_rate(model, batches)
    total = time.perf_counter() - start
    per_step = {name: round(spent[name] / len(batches), 4) for name in parts}
    return {"train_images_per_s": rate, "step_seconds": round(total / len(batches), 4),
            "forward_seconds_per_step": per_step,
            "forward_share_of_step": {k: round(v / (total / len(batches)), 3) for k, v in per_step.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--evals", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    folder = write_shapes(Path(tempfile.mkdtemp()) / "shapes", args.images)
    datasets, info = detection_datasets("coco", folder, augment=False)
    load_before = os.getloadavg()
    result = {"command": "python benchmarks/bench_detection_sizes.py " + " ".join(
                  f"--{k} {v}" for k, v in vars(args).items()),
              "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
              "images": f"{args.images} per split, 96-160 px sides, chosen scale {info.min_size}/{info.max_size}",
              "sizes": compare_sizes(datasets, info, args)}
    print(json.dumps(result["sizes"], indent=2), flush=True)
    result.update({"c4_mask_rcnn_breakdown": mask_breakdown(folder, args),
              "loadavg_before_after": [load_before, os.getloadavg()],
              "note": "contended machine (shared cores): compare the ratio, not the absolute rates"})
    write_result(RESULTS, result)


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


if __name__ == "__main__":
    main()
