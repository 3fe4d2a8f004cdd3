"""A user's own COCO data (issue 37): bad data ends a run at once with one line (never a hang), the data check
names every bad entry when a split is opened, mixed channels, decompression bombs, splits without objects."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet.cli import main
from resnet.detection.coco import CocoDetection, detection_datasets

ROOT = Path(__file__).resolve().parents[1]
HANG_LIMIT = 150  # seconds: a run that fails on bad data takes seconds (imports included on a loaded machine)
TRAIN = ["--model", "resnet20", "--base-width", "4", "--head", "c4", "--recipe", "detection-cpu", "--iters", "2",
         "--batch-size", "2", "--data", "coco", "--num-workers", "2", "--no-progress"]


def write_split(root: Path, split: str = "train", n: int = 4, size: tuple[int, int] = (48, 40),
                categories: tuple[tuple[int, str], ...] = ((1, "a"), (2, "b")), suffix: str = ".png",
                mode: str = "RGB") -> dict:
    """root/split.json and n noise images in root/split/, one box (and polygon) each; returns the json dict."""
    (root / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(split) + n)
    images, annotations = [], []
    w, h = size
    for i in range(1, n + 1):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(root / split / f"{i}{suffix}")
        images.append({"id": i, "file_name": f"{i}{suffix}", "width": w, "height": h})
        annotations.append({"id": i, "image_id": i, "category_id": categories[i % len(categories)][0],
                            "bbox": [4, 4, 20, 16], "area": 320, "iscrowd": 0,
                            "segmentation": [[4, 4, 24, 4, 24, 20, 4, 20]]})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": name} for c, name in categories]}
    save(root, split, data)
    return data


def save(root: Path, split: str, data: dict) -> None:
    (root / f"{split}.json").write_text(json.dumps(data))


def coco_folder(root: Path, **options) -> tuple[dict, dict]:
    return write_split(root, "train", **options), write_split(root, "val", **options)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def resnet_train(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`resnet train` on root as a real process, failed (not hung) past HANG_LIMIT seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "resnet", "train", *TRAIN, "--data-dir", str(root), "--out", str(out), *extra]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=HANG_LIMIT, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"resnet train did not end within {HANG_LIMIT} s (hung on exit?)")


def error_line(result: subprocess.CompletedProcess) -> str:
    """The run's one error line (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("resnet train: error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------- no hang, ever


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_in_a_worker_ends_the_run_with_one_line(tmp_path, suffix):
    coco_folder(tmp_path / "data", suffix=suffix)
    truncate(tmp_path / "data" / "train" / f"2{suffix}")  # the header still reads: the worker meets it
    line = error_line(resnet_train(tmp_path / "data", tmp_path / "run"))
    assert f"train.json: image id 2 ('2{suffix}')" in line and "train/2" in line


def test_size_not_the_json_s_one_line_before_training(tmp_path):
    train, _ = coco_folder(tmp_path / "data")
    train["images"][2]["width"] = 64
    save(tmp_path / "data", "train", train)
    line = error_line(resnet_train(tmp_path / "data", tmp_path / "run"))
    assert "train.json: image id 3 ('3.png') is 48x40, the json says 64x40" in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_empty_segmentation_with_masks_one_line(tmp_path):
    train, _ = coco_folder(tmp_path / "data")
    train["annotations"][1]["segmentation"] = []
    save(tmp_path / "data", "train", train)
    line = error_line(resnet_train(tmp_path / "data", tmp_path / "run", "--masks"))
    assert "train.json: annotations[1] (id 2, image id 2) has segmentation [], not a polygon or RLE mask" in line


def test_masks_on_a_json_without_segmentations_one_line(tmp_path):
    train, _ = coco_folder(tmp_path / "data")
    for ann in train["annotations"]:
        del ann["segmentation"]
    save(tmp_path / "data", "train", train)
    line = error_line(resnet_train(tmp_path / "data", tmp_path / "run", "--masks"))
    assert "train.json: no annotation has a segmentation" in line and "without --masks" in line


def test_duplicate_image_id_in_val_names_both_entries(tmp_path):
    _, val = coco_folder(tmp_path / "data")
    val["images"][3]["id"] = 1
    val["annotations"][3]["image_id"] = 1
    save(tmp_path / "data", "val", val)
    line = error_line(resnet_train(tmp_path / "data", tmp_path / "run"))
    assert "val.json: image id 1 is given 2 times: images[0] ('1.png') and images[3] ('4.png')" in line


@pytest.mark.slow  # two runs (a training and a resume): about 55 s on 2 loaded cores
def test_bad_file_on_resume_keeps_the_last_checkpoint(tmp_path):
    from resnet.detection.train import train_detector
    from resnet.train.loop import Interrupted
    from resnet.train.recipes import get_recipe

    coco_folder(tmp_path / "data")
    recipe = get_recipe("detection-cpu", iters=4, batch_size=2, eval_every=2, num_workers=0)
    with pytest.raises(Interrupted):
        train_detector("resnet20", "coco", data_dir=str(tmp_path / "data"), recipe=recipe, out=tmp_path / "run",
                       model_options={"base_width": 4}, progress=False, stop_after=2)
    saved = {p: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").rglob("*") if p.is_file()}
    assert saved
    truncate(tmp_path / "data" / "train" / "1.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "resnet", "train", "--resume", str(tmp_path / "run"),
                             "--no-progress"], capture_output=True, text=True, timeout=HANG_LIMIT, env=env, cwd=ROOT)
    assert result.returncode == 2 and "image id 1 ('1.png')" in result.stderr.splitlines()[-1], result.stderr[-2000:]
    assert {p: p.read_bytes() for p in saved} == saved  # the checkpoint is kept, byte for byte


LOADER_SCRIPT = """
import sys
import torch
from torch.utils.data import Dataset
from resnet.data.loaders import build_loader

class Bad(Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        if i == 3:
            raise ValueError("bad.png: cannot decode (image file is truncated)")
        return torch.zeros(2)

try:
    for batch in build_loader(Bad(), 2, train=False, num_workers=2):
        pass
except ValueError as e:
    print(e)
    sys.exit(2)
"""


def test_any_loader_worker_error_is_its_own_line_and_the_process_exits(tmp_path):
    """Classification loaders are the same ResumableLoader: a worker's error, then a prompt exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        result = subprocess.run([sys.executable, "-c", LOADER_SCRIPT], capture_output=True, text=True,
                                timeout=HANG_LIMIT, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit after a loader worker's error")
    assert result.returncode == 2 and result.stdout.strip() == "bad.png: cannot decode (image file is truncated)"


# ---------------------------------------------------------------------------------------------- the data check


def test_check_names_every_bad_entry_at_once(tmp_path):
    train = write_split(tmp_path, categories=((1, "a"), (2, "b"), (3, "a")))
    train["images"][0]["file_name"] = "/etc/hostname"
    train["images"][1]["file_name"] = "../val/1.png"
    train["images"][2]["height"] = 41
    save(tmp_path, "train", train)
    with pytest.raises(ValueError) as caught:
        CocoDetection(tmp_path / "train.json", tmp_path / "train")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'train.json'}: 4 bad entries: ")
    assert "category name 'a' is given 2 times: categories[0] and categories[2]" in message
    assert "image id 1 ('/etc/hostname'): file_name is an absolute path" in message
    assert "image id 2 ('../val/1.png'): file_name climbs out of the image folder with '..'" in message
    assert "image id 3 ('3.png') is 48x40, the json says 48x41" in message


def test_train_split_without_objects_refused_and_negatives_counted(tmp_path):
    train, _ = coco_folder(tmp_path)
    train["annotations"] = train["annotations"][:2]
    save(tmp_path, "train", train)
    with pytest.warns(UserWarning, match=r"train.json: 2 of 4 training images have no objects"):
        detection_datasets("coco", tmp_path)
    del train["annotations"]
    save(tmp_path, "train", train)
    with pytest.raises(ValueError, match=r"train.json: no objects to learn from: 4 images and 0 annotations"):
        detection_datasets("coco", tmp_path)


def test_val_split_without_objects_refused_at_the_start(tmp_path):
    _, val = coco_folder(tmp_path)
    val["annotations"] = []
    save(tmp_path, "val", val)
    with pytest.raises(ValueError, match=r"val.json: no objects to evaluate on \(AP over no objects is undefined\)"):
        detection_datasets("coco", tmp_path)


def test_empty_categories_names_the_json(tmp_path):
    train = write_split(tmp_path)
    train["categories"], train["annotations"] = [], []
    save(tmp_path, "train", train)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'train.json'}: no categories"):
        CocoDetection(tmp_path / "train.json", tmp_path / "train")


# ------------------------------------------------------------------------------------ channels and huge images


def test_mixed_channels_read_as_rgb_with_one_notice(tmp_path):
    write_split(tmp_path, "val")
    write_split(tmp_path, "train")
    Image.fromarray(np.full((40, 48), 30000, np.uint16)).save(tmp_path / "train" / "1.png")  # 16-bit grayscale
    Image.new("L", (48, 40), 90).save(tmp_path / "train" / "2.png")
    Image.new("RGBA", (48, 40), (10, 20, 30, 128)).save(tmp_path / "train" / "3.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datasets, info = detection_datasets("coco", tmp_path, augment=False)
    notices = [str(w.message) for w in caught if "grayscale" in str(w.message)]
    assert notices == [f"{tmp_path}: 2 of 8 images are grayscale and the others colour: all are read as RGB"]
    assert info.channels == 3
    shapes = {tuple(datasets[s][i][0].shape) for s in ("train", "val") for i in range(4)}
    assert shapes == {(3, 40, 48)}
    assert datasets["train"][1][0][:, 0, 0].mul(255).round().tolist() == [90, 90, 90]  # gray copied to R, G, B


def test_all_grayscale_stays_one_channel(tmp_path):
    coco_folder(tmp_path, mode="L")
    _, info = detection_datasets("coco", tmp_path)
    assert info.channels == 1


def png_claiming(path: Path, width: int, height: int) -> None:
    """A small PNG whose header says width x height (a decompression bomb, as far as a header tells)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def test_decompression_bomb_is_one_line_naming_the_file_and_max_pixels(tmp_path, capsys):
    train, _ = coco_folder(tmp_path / "data")
    png_claiming(tmp_path / "data" / "train" / "2.png", 20000, 20000)
    train["images"][1].update(width=20000, height=20000)
    save(tmp_path / "data", "train", train)
    assert main(["train", *TRAIN, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error" not in err[0]
    assert "train/2.png: refused as a possible decompression bomb" in err[0] and "--max-pixels" in err[0]
    assert main(["train", *TRAIN, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run2"),
                 "--max-pixels", "1000"]) == 2
    err = capsys.readouterr().err
    assert "train/1.png: 48x40 is 1,920 pixels, above the limit of 1,000 (--max-pixels)" in err


# --------------------------------------------------------------------------------------------- category ids


@pytest.fixture(scope="module")
def toothbrush_detector(tmp_path_factory):
    """A tiny detector for categories 5/17/90 (names a/b/toothbrush) whose classifier always says label 3
    (category 90), and an image."""
    import torch

    from resnet.detection import create_detector, save_detector

    folder = tmp_path_factory.mktemp("ids")
    torch.manual_seed(0)
    model = create_detector("resnet20", "c4", class_names=["a", "b", "toothbrush"], category_ids=[5, 17, 90],
                            base_width=4, box_score_thresh=0.0)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 20.0]))
    path = save_detector(folder / "det.safetensors", model)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "x.png")
    return path, folder / "x.png"


def test_predict_reports_the_dataset_s_category_ids(toothbrush_detector, tmp_path, capsys):
    path, image = toothbrush_detector
    assert main(["predict", str(image), "--checkpoint", str(path), "--json", "--score-threshold", "0.5",
                 "--out", str(tmp_path / "p.json")]) == 0  # label 3 scores ~1, the others ~0
    detections = json.loads(capsys.readouterr().out)[0]["detections"]
    assert detections and {(d["category_id"], d["class"]) for d in detections} == {(90, "toothbrush")}
    assert "label" not in detections[0]
    assert json.loads((tmp_path / "p.json").read_text())[0]["detections"] == detections
    assert main(["predict", str(image), "--checkpoint", str(path), "--out", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("image,rank,category_id,class") and rows[1].split(",")[2:4] == ["90", "toothbrush"]


def test_training_data_carries_category_ids_to_the_detector(tmp_path):
    from resnet.detection import create_detector

    coco_folder(tmp_path, categories=((90, "toothbrush"), (5, "a"), (17, "b")))
    datasets, info = detection_datasets("coco", tmp_path)
    assert info.category_ids == [5, 17, 90] and info.class_names == ["a", "b", "toothbrush"]
    model = create_detector("resnet20", "c4", base_width=4, **info.detector_options())
    assert model.meta["category_ids"] == [5, 17, 90]
    labels = {int(label) for i in range(4) for label in datasets["train"][i][1]["labels"]}
    assert labels == {1, 2, 3}  # the json's 90 is label 3 inside, reported as 90 outside


def test_draw_into_a_file_is_one_line(toothbrush_detector, tmp_path, capsys):
    path, image = toothbrush_detector
    (tmp_path / "taken").write_text("x")
    assert main(["predict", str(image), "--checkpoint", str(path), "--draw", str(tmp_path / "taken")]) == 2
    assert f"--draw {tmp_path / 'taken'}: is a file; give a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- sizes


def test_default_sizes_follow_the_data():
    from resnet.detection.datacheck import default_sizes

    # small: their own scale, the median shorter side 96; 128x96 and 160x120 at shorter side 96 are 128 long
    assert default_sizes([(128, 96), (160, 120), (96, 96)]) == (96, 128)
    assert default_sizes([(640, 480), (500, 375), (427, 640)]) == (800, 1333)  # COCO-sized photos: torchvision's


def test_sizes_chosen_from_the_data(tmp_path):
    coco_folder(tmp_path, size=(64, 48))
    _, info = detection_datasets("coco", tmp_path)
    assert (info.min_size, info.max_size) == (48, 64)  # not torchvision's 800/1333: a 64x48 image stays 64x48


def test_min_max_size_stored_in_the_checkpoint_and_used_by_eval(tmp_path, capsys):
    from resnet.detection import load_detector

    coco_folder(tmp_path / "data", size=(64, 48))
    common = [*TRAIN[:-3], "--num-workers", "0", "--no-progress", "--data-dir", str(tmp_path / "data")]
    assert main(["train", *common, "--out", str(tmp_path / "run"), "--min-size", "40", "--max-size", "100"]) == 0
    assert "detector input: shorter side 40 px, longer side at most 100 px (given" in capsys.readouterr().out
    model = load_detector(tmp_path / "run", which="last")
    assert (model.transform.min_size, model.transform.max_size) == ((40,), 100)
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", "coco", "--data-dir",
                 str(tmp_path / "data"), "--split", "val", "--no-progress", "--min-size", "32"]) == 0
    assert "detector input: shorter side 32 px, longer side at most 100 px" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- smaller things


def test_nan_backbone_weights_refused(tmp_path):
    import torch

    from resnet.checkpoint import save_weights
    from resnet.detection import create_detector
    from resnet import create_model

    net = create_model("resnet20", base_width=4)
    with torch.no_grad():
        net.conv1.weight[0, 0, 0, 0] = float("nan")
    save_weights(tmp_path / "nan.safetensors", net, {"model": "resnet20", "options": {"base_width": 4}})
    with pytest.raises(ValueError, match=r"--backbone-weights .*nan.safetensors: 1 tensor\(s\) hold NaN"):
        create_detector("resnet20", "c4", num_classes=3, base_width=4, backbone_weights=tmp_path / "nan.safetensors")


def test_fashion_scenes_with_a_corrupt_json_is_rebuilt(tmp_path, monkeypatch):
    import torch

    from resnet.detection import scenes

    folder = tmp_path / "scenes"
    folder.mkdir()
    (folder / "scenes.json").write_text(json.dumps(scenes.parameters(2, 1, 64, 0, 4)))
    (folder / "train.json").write_text("{not json")
    (folder / "val.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    called = []
    monkeypatch.setattr(scenes, "write_split", lambda tmp, split, *a, **k: called.append(split) or
                        (tmp / split).mkdir(parents=True))
    monkeypatch.setattr("resnet.data.small.read_fashion_mnist", lambda root, split: (torch.zeros(1, 1, 28, 28),
                                                                                      torch.zeros(1)))
    monkeypatch.setattr("resnet.data.small.fashion_mnist_root", lambda *a, **k: tmp_path)
    out, how = scenes.make_fashion_scenes(folder, train=2, val=1, size=64)
    assert how.startswith("rebuilt (") and "train.json: does not read" in how and called == ["train", "val"]


@pytest.mark.parametrize("option, words", [
    ({"mix_prob": 0.5}, "--mix-prob 0.5 does nothing without --mixup-alpha or --cutmix-alpha"),
])
def test_recipe_settings_that_do_nothing_refused(option, words):
    from resnet.train.recipes import get_recipe

    with pytest.raises(ValueError, match=words):
        get_recipe("fast", **option).validate()
    get_recipe("fast", mixup_alpha=0.2, **option).validate()  # with mixing on, it means something


@pytest.mark.parametrize("option, words", [
    ({"low_res_size": 28}, "--low-res-size 28: not smaller than the fashion-mnist input \\(28 px\\)"),
    ({"crop_pad": 28}, "--crop-pad 28: at or above the fashion-mnist image size \\(28 px\\)"),
])
def test_size_settings_that_do_nothing_refused(option, words):
    from resnet.data.info import DatasetInfo
    from resnet.train.classification import check_sizes
    from resnet.train.recipes import get_recipe

    info = DatasetInfo("fashion-mnist", ["a"], ["a"], 1, 28, "small")
    with pytest.raises(ValueError, match=words):
        check_sizes(get_recipe("fast", **option), info)
    check_sizes(get_recipe("fast", low_res_size=20, crop_pad=4), info)
