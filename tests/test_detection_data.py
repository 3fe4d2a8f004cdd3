"""COCO-format detection data (layouts, bad annotations, loaders), the fashion-scenes generator, and COCO AP."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_idx
from PIL import Image

from resnet.cli import main
from resnet.detection.coco import CocoDetection, build_detection_data, coco_split_files
from resnet.detection.evaluate import coco_metrics, evaluate_detector
from resnet.detection.scenes import make_fashion_scenes


def write_coco(folder: Path, images: list[tuple[int, int]], annotations: list[dict], name: str = "train",
               categories: tuple[int, ...] = (1, 2)) -> Path:
    """A generic-form split: folder/name.json and grey PNGs in folder/name/."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (w, h) in enumerate(images, 1):
        Image.fromarray(np.full((h, w), 100, np.uint8)).save(folder / name / f"{i}.png")
        entries.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
    for k, ann in enumerate(annotations, 1):
        ann.setdefault("id", k)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    data = {"images": entries, "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
    (folder / f"{name}.json").write_text(json.dumps(data))
    return folder / f"{name}.json"


def test_bad_boxes_clipped_dropped_one_warning_negatives_kept(tmp_path):
    path = write_coco(tmp_path, [(40, 30), (40, 30)], [
        {"image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20]},  # partly outside: clipped
        {"image_id": 1, "category_id": 2, "bbox": [5, 5, 0, 10]},  # zero width: dropped
        {"image_id": 1, "category_id": 2, "bbox": [50, 40, 5, 5]},  # wholly outside: empty after clipping
        {"image_id": 1, "category_id": 2, "bbox": [2, 3, 10, 8]},  # fine
    ])  # image 2 has no objects
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = CocoDetection(path, tmp_path / "train")
    assert len(caught) == 1
    assert "of 4 boxes, 1 partly outside their image were clipped to it and 2 empty or degenerate" in str(caught[0].message)
    assert len(dataset) == 2
    image, target = dataset[0]
    assert image.shape == (1, 30, 40) and image.dtype == torch.float32
    assert target["boxes"].tolist() == [[30, 20, 40, 30], [2, 3, 12, 11]] and target["labels"].tolist() == [1, 2]
    _, negative = dataset[1]
    assert negative["boxes"].shape == (0, 4) and negative["labels"].shape == (0,)


def test_malformed_json_names_file_and_place(tmp_path):
    path = write_coco(tmp_path, [(20, 20)], [])
    path.write_text(path.read_text()[:-5])
    with pytest.raises(ValueError, match=rf"{path}: malformed json \(line 1, column"):
        CocoDetection(path, tmp_path / "train")


def test_missing_image_names_file_and_entry(tmp_path):
    path = write_coco(tmp_path, [(20, 20), (20, 20)], [])
    (tmp_path / "train" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{path}: image id 2 \('2.png'\): no such file"):
        CocoDetection(path, tmp_path / "train")


def test_unknown_category_names_file_and_annotation(tmp_path):
    path = write_coco(tmp_path, [(20, 20)], [{"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match=rf"{path}: annotations\[0\] \(id 1\) has category_id 7, not among the categories \(1, 2\)"):
        CocoDetection(path, tmp_path / "train")


def test_bad_annotation_exits_2_from_the_command_line(tmp_path, capsys):
    from resnet.detection import create_detector, save_detector

    write_coco(tmp_path, [(20, 20)], [{"image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}], name="val")
    model = create_detector("resnet20", "c4", num_classes=3, in_channels=1, base_width=4, min_size=32, max_size=32)
    save_detector(tmp_path / "det.safetensors", model)
    assert main(["eval", "--checkpoint", str(tmp_path / "det.safetensors"), "--data", "coco",
                 "--data-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val.json: annotations[0] (id 1) has category_id 9" in err[0]


def test_coco_own_layout(tmp_path):
    write_coco(tmp_path / "tmp", [(20, 20)], [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    (tmp_path / "annotations").mkdir()
    (tmp_path / "tmp" / "train.json").rename(tmp_path / "annotations" / "instances_val2017.json")
    (tmp_path / "tmp" / "train").rename(tmp_path / "val2017")
    annotations, images = coco_split_files(tmp_path, "val")
    assert annotations == tmp_path / "annotations" / "instances_val2017.json" and images == tmp_path / "val2017"
    assert len(CocoDetection(annotations, images)) == 1
    with pytest.raises(FileNotFoundError, match="no train split"):
        coco_split_files(tmp_path, "train")


# ----------------------------------------------------------------------------- fashion-scenes

@pytest.fixture(scope="module")
def marked_fashion(tmp_path_factory) -> Path:
    """Fashion-MNIST files whose train items are all 200 and test items all 90: a canvas shows its source."""
    folder = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for stem, n, value in (("train", 60, 200), ("t10k", 40, 90)):
        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):
            h, w = rng.integers(10, 26, 2)
            images[i, 2:2 + h, 3:3 + w] = value
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def scenes(marked_fashion, tmp_path_factory) -> Path:
    out, how = make_fashion_scenes(tmp_path_factory.mktemp("s") / "scenes", train=12, val=6, size=64, seed=3,
                                   fashion_dir=marked_fashion)
    assert how == "generated"
    return out


def test_scenes_deterministic_by_seed(scenes, marked_fashion, tmp_path):
    again, _ = make_fashion_scenes(tmp_path / "again", train=12, val=6, size=64, seed=3, fashion_dir=marked_fashion)
    other, _ = make_fashion_scenes(tmp_path / "other", train=12, val=6, size=64, seed=4, fashion_dir=marked_fashion)
    assert (scenes / "train.json").read_text() == (again / "train.json").read_text()
    assert (scenes / "val" / "000003.png").read_bytes() == (again / "val" / "000003.png").read_bytes()
    assert (scenes / "train.json").read_text() != (other / "train.json").read_text()
    assert make_fashion_scenes(again, train=12, val=6, size=64, seed=3, fashion_dir=marked_fashion)[1] == "present"
    assert not list(tmp_path.glob(".*.tmp"))  # written beside, then renamed


def test_scenes_train_from_train_images_val_from_test_images(scenes):
    from pycocotools import mask as mask_utils

    for split, low, high in (("train", 150, 200), ("val", 30, 90)):  # train items 200, test items 90 (edges blur)
        data = json.loads((scenes / f"{split}.json").read_text())
        assert data["annotations"] and [c["name"] for c in data["categories"]][0] == "T-shirt/top"
        for ann in data["annotations"]:
            image = np.asarray(Image.open(scenes / split / f"{ann['image_id'] - 1:06d}.png"))
            pixels = image[mask_utils.decode(ann["segmentation"]).astype(bool)]
            assert low <= pixels.max() <= high, (split, ann["id"])


def test_scenes_boxes_are_the_mask_pixels(scenes):
    from pycocotools import mask as mask_utils

    data = json.loads((scenes / "train.json").read_text())
    per_image = {}
    for ann in data["annotations"]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["area"] == mask.sum()
        per_image.setdefault(ann["image_id"], []).append(mask)
    for masks in per_image.values():  # instances own disjoint pixels, and each canvas has 1..4
        assert 1 <= len(masks) <= 4 and np.sum(masks, axis=0).max() == 1


def test_scenes_loader_resumes_exactly_and_augments(scenes):
    train, evals, info = build_detection_data("fashion-scenes", scenes, batch_size=3, seed=5, masks=True,
                                              num_workers=0)
    assert info.detector_options() == {"num_classes": 11, "class_names": info.class_names, "in_channels": 1,
                                       "min_size": 64, "max_size": 64, "category_ids": list(range(1, 11))}
    assert len(train) == 4 and len(evals["val"]) == 2
    train.set_epoch(1)
    epoch = list(train)
    train.set_epoch(1, start_batch=2)
    resumed = list(train)
    assert len(resumed) == 2
    for (ia, ta), (ib, tb) in zip(epoch[2:], resumed):
        assert all(torch.equal(a, b) for a, b in zip(ia, ib))
        assert all(torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"]) for a, b in zip(ta, tb))
    images, targets = epoch[0]
    raw = evals["val"].dataset.__class__(train.dataset.annotation_file, train.dataset.image_folder, masks=True)
    plain = {int(raw[i][1]["image_id"]): raw[i] for i in range(len(raw))}
    changed = sum(not torch.equal(img, plain[int(t["image_id"])][0]) for b in epoch for img, t in zip(*b))
    assert changed > 0  # flips and scale jitter
    for b in epoch:
        for image, target in zip(*b):
            for box, mask in zip(target["boxes"], target["masks"]):  # boxes follow the masks
                ys, xs = torch.nonzero(mask, as_tuple=True)
                assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1


# ----------------------------------------------------------------------------- COCO AP

def square(x: float, y: float, size: float = 20.0) -> list[float]:
    return [x, y, size, size]


@pytest.fixture
def gt(tmp_path):
    """Two 100x100 images, three 20x20 objects; pycocotools' COCO over them (and their masks)."""
    from pycocotools import mask as mask_utils

    path = write_coco(tmp_path, [(100, 100), (100, 100)], [
        {"image_id": 1, "category_id": 1, "bbox": square(10, 10)},
        {"image_id": 1, "category_id": 2, "bbox": square(50, 40)},
        {"image_id": 2, "category_id": 1, "bbox": square(30, 60)},
    ])
    data = json.loads(path.read_text())
    for ann in data["annotations"]:
        mask = np.zeros((100, 100), np.uint8, order="F")
        x, y, w, h = (int(v) for v in ann["bbox"])
        mask[y:y + h, x:x + w] = 1
        rle = mask_utils.encode(mask)
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    path.write_text(json.dumps(data))
    return CocoDetection(path, tmp_path / "train", masks=True)


def results(dataset, dx: float = 0.0) -> list[dict]:
    from pycocotools import mask as mask_utils

    out = []
    for ann in dataset.coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        mask = np.zeros((100, 100), np.uint8, order="F")
        mask[int(y):int(y + h), int(x + dx):int(x + dx + w)] = 1
        rle = mask_utils.encode(mask)
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": [x + dx, y, w, h],
                    "score": 0.9, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return out


def pycocotools_direct(dataset, dets: list[dict], iou_type: str) -> list[float]:
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(dataset.coco, dataset.coco.loadRes(dets), iou_type)
        e.evaluate(), e.accumulate(), e.summarize()
    return list(e.stats[:6])


@pytest.mark.parametrize("kind, iou_type", [("box", "bbox"), ("mask", "segm")])
def test_ap_perfect_shifted_none(gt, kind, iou_type):
    perfect = coco_metrics(gt.coco, results(gt), (kind,))
    assert perfect[f"{kind}_AP"] == pytest.approx(1.0) and perfect[f"{kind}_AP50"] == pytest.approx(1.0)
    assert np.isnan(perfect[f"{kind}_APl"])  # no large objects
    quarter = coco_metrics(gt.coco, results(gt, dx=5), (kind,))  # IoU 15/25 = 0.6: passes .5, .55, .6 of ten
    assert quarter[f"{kind}_AP50"] == pytest.approx(1.0) and quarter[f"{kind}_AP75"] == 0
    assert quarter[f"{kind}_AP"] == pytest.approx(0.3)
    half = coco_metrics(gt.coco, results(gt, dx=10), (kind,))  # IoU 1/3: below every threshold
    assert half[f"{kind}_AP"] == 0 and half[f"{kind}_AP50"] == 0
    assert coco_metrics(gt.coco, [], (kind,))[f"{kind}_AP"] == 0
    for dx, metrics in ((0, perfect), (5, quarter), (10, half)):
        direct = pycocotools_direct(gt, results(gt, dx), iou_type)
        ours = [metrics[f"{kind}_{m}"] for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        np.testing.assert_allclose(ours, [v if v >= 0 else np.nan for v in direct])


class GroundTruthDetector(torch.nn.Module):
    """Returns each image's ground truth as detections (score 1), in eval mode, as torchvision's outputs."""

    def __init__(self, dataset, dx: float = 0.0):
        super().__init__()
        self.by_size = {}
        self.dataset, self.dx = dataset, dx
        self.roi_heads = type("Heads", (), {"has_mask": staticmethod(lambda: True)})()

    def forward(self, images):
        outs = []
        for image in images:
            index = self.index
            self.index += 1
            _, target = self.dataset[index]
            boxes = target["boxes"] + torch.tensor([self.dx, 0, self.dx, 0])
            masks = torch.roll(target["masks"].float(), int(self.dx), dims=2)[:, None]
            outs.append({"boxes": boxes, "labels": target["labels"], "scores": torch.ones(len(boxes)), "masks": masks})
        return outs


def test_evaluate_detector_on_model_outputs(gt):
    model = GroundTruthDetector(gt)
    model.index = 0
    metrics = evaluate_detector(model, gt, batch_size=2)
    assert metrics["box_AP"] == pytest.approx(1.0) and metrics["mask_AP"] == pytest.approx(1.0)
    assert metrics["images"] == 2
    model = GroundTruthDetector(gt, dx=10)
    model.index = 0
    shifted = evaluate_detector(model, gt, batch_size=1)
    assert shifted["box_AP"] == 0 and shifted["mask_AP"] == 0


def _score_shard(rank: int, dataset_args: tuple, port: int, out: str) -> None:
    """One of two Gloo processes: score its image (rank 0 perfect, rank 1 shifted off) and write the metrics."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        shard = torch.utils.data.Subset(CocoDetection(*dataset_args, masks=True), [rank])
        model = GroundTruthDetector(shard, dx=10.0 * rank)
        model.index = 0
        metrics = evaluate_detector(model, shard, batch_size=1)
        Path(out, f"{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_evaluate_detector_scores_every_process_shard_together(gt, tmp_path):
    """Under torchrun each process evaluates its shard; COCOeval must see all of them, and every rank the same."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_score_shard, args=((gt.annotation_file, gt.image_folder), port, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["images"] == 2
    alone = []  # the same detections scored in one process: rank 0's image right, rank 1's off by half a box
    for image, dx in ((0, 0.0), (1, 10.0)):
        _, target = gt[image]
        alone += [{"image_id": int(target["image_id"]), "category_id": gt.category_ids[int(label) - 1],
                   "bbox": [float(b[0] + dx), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": 1.0}
                  for b, label in zip(target["boxes"], target["labels"])]
    assert ranks[0]["box_AP"] == pytest.approx(coco_metrics(gt.coco, alone)["box_AP"])
    assert 0 < ranks[0]["box_AP"] < 1
