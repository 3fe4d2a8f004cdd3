"""Detector speed on the fashion-scenes: ours (`create_detector(resnet50, "fpn")`, v1.5 stride, option B)
against torchvision's own `fasterrcnn_resnet50_fpn` built with the same settings (random weights, the
same image size and RPN/RoI settings, 3-channel images), training images/s and inference ms/image.

The two run interleaved (A, B, A, B, ...) so that a load change on the machine hits both alike; the ratio
ours/torchvision is the claim (>= 0.95: the wrapper adds nothing). Writes benchmarks/results/detection.json.
Usage: python benchmarks/bench_detection.py [--data-dir DIR] [--rounds 3] [--steps 1] [--batch-size 2] [--infer 2]
(without scenes at DIR or the default place, 64 canvases are generated into a temporary folder).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from record import write_result
from resnet.detection import create_detector, detection_loss
from resnet.detection.coco import collate_detection, detection_datasets
from resnet.provenance import cpu_model

RESULTS = Path(__file__).parent / "results" / "detection.json"


def scenes_folder(data_dir: str | None) -> Path:
    from resnet.detection.scenes import default_folder, make_fashion_scenes

    folder = Path(data_dir) if data_dir else default_folder()
    if (folder / "train.json").is_file():
        return folder
    return make_fashion_scenes(Path(tempfile.mkdtemp()) / "scenes", train=64, val=16, size=128, seed=0)[0]


def train_seconds(model, batches) -> float:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    start = time.perf_counter()
    for images, targets in batches:
        loss, _ = detection_loss(model, images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


@torch.no_grad()
def infer_seconds(model, images) -> float:
    model.eval()
    start = time.perf_counter()
    for image in images:
        model([image])
    return time.perf_counter() - start


def main() -> None:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="a fashion-scenes folder (default: the data home's)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    p.add_argument("--steps", type=int, default=1, help="training steps per round and model (default: 1)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--infer", type=int, default=2, help="images per inference round (default: 2)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    datasets, info = detection_datasets("fashion-scenes", scenes_folder(args.data_dir), augment=False)
    rgb = lambda sample: (sample[0].expand(3, -1, -1).contiguous(), sample[1])  # noqa: E731 - torchvision's net is RGB
    train = [rgb(datasets["train"][i]) for i in range(args.steps * args.batch_size)]
    batches = [collate_detection(train[i:i + args.batch_size]) for i in range(0, len(train), args.batch_size)]
    images = [rgb(datasets["val"][i])[0] for i in range(args.infer)]
    settings = dict(num_classes=info.num_classes, min_size=info.image_size, max_size=info.image_size)
    torch.manual_seed(0)
    models = {"ours": create_detector("resnet50", "fpn", bottleneck_stride="3x3", shortcut="B", **settings),
              "torchvision": fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **settings)}
    timing = {name: {"train_s": 0.0, "infer_s": 0.0} for name in models}
    for name, model in models.items():  # warm-up: one step and one image each
        train_seconds(model, batches[:1])
        infer_seconds(model, images[:1])
    for _ in range(args.rounds):
        for name, model in models.items():
            timing[name]["train_s"] += train_seconds(model, batches)
            timing[name]["infer_s"] += infer_seconds(model, images)
    result = {"benchmark": "detection", "cpu": cpu_model(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "image_size": info.image_size, "batch_size": args.batch_size,
              "rounds": args.rounds, "train_images": args.rounds * len(train), "infer_images": args.rounds * len(images)}
    for name, t in timing.items():
        result[name] = {"train_images_per_s": round(result["train_images"] / t["train_s"], 3),
                        "infer_ms_per_image": round(1000 * t["infer_s"] / result["infer_images"], 1)}
    result["ratio_train"] = round(result["ours"]["train_images_per_s"] / result["torchvision"]["train_images_per_s"], 3)
    result["ratio_infer"] = round(result["torchvision"]["infer_ms_per_image"] / result["ours"]["infer_ms_per_image"], 3)
    write_result(RESULTS, result)


if __name__ == "__main__":
    main()
