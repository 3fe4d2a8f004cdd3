"""Detection on the training engine: a run directory like classification's, exact resume, the command line,
learning on the scenes, and `resnet reproduce detection`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TEST_DEVICE, write_idx
from safetensors.torch import load_file

from resnet.cli import main
from resnet.detection.scenes import make_fashion_scenes
from resnet.detection.train import train_detector
from resnet.train.curves import read_metrics
from resnet.train.loop import Interrupted, train
from resnet.train.recipes import get_recipe

TINY = {"base_width": 4}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Fashion-MNIST files of filled rectangles, tall for class 0 and wide for class 1: a detector can learn them."""
    folder = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for stem, n in (("train", 200), ("t10k", 100)):
        labels = rng.integers(0, 2, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, label in enumerate(labels):
            h, w = (24, 8) if label == 0 else (8, 24)
            images[i, 14 - h // 2:14 + h // 2, 14 - w // 2:14 + w // 2] = 255
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="module")
def scenes(shapes, tmp_path_factory) -> Path:
    out, _ = make_fashion_scenes(tmp_path_factory.mktemp("s") / "scenes", train=24, val=8, size=64, seed=1,
                                 fashion_dir=shapes)
    return out


def det_recipe(**overrides):
    base = dict(iters=6, batch_size=2, eval_every=3, num_workers=0, device=TEST_DEVICE)
    return get_recipe("detection-cpu", **{**base, **overrides})


def test_a_detection_run_has_the_classification_run_directory(scenes, tmp_path):
    run = tmp_path / "run"
    row = train_detector("resnet20", "fashion-scenes", data_dir=str(scenes), recipe=det_recipe(), out=run,
                         model_options=TINY, progress=False)
    assert {"config.json", "metrics.jsonl", "curves.png", "checkpoints"} <= {p.name for p in run.iterdir()}
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "detection" and config["detector"]["head"] == "c4"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and rows[-1] == row
    assert 0 <= row["val_box_AP"] <= 1 and row["val_images"] == 8
    from resnet.detection import load_detector
    model = load_detector(run, which="last")
    assert model.roi_heads.box_predictor.cls_score.out_features == 11  # the 10 Fashion-MNIST classes + background


def test_detection_resume_is_exact(scenes, tmp_path):
    recipe = det_recipe(iters=8, eval_every=4)
    common = dict(data_dir=str(scenes), recipe=recipe, model_options=TINY, progress=False)
    whole = train_detector("resnet20", "fashion-scenes", out=tmp_path / "a", **common)
    with pytest.raises(Interrupted):
        train_detector("resnet20", "fashion-scenes", out=tmp_path / "b", stop_after=5, **common)
    resumed = train_detector(resume=tmp_path / "b", progress=False)
    a, b = (load_file(str(tmp_path / r / "checkpoints" / "last.safetensors")) for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["train_loss"] == whole["train_loss"] and resumed["val_box_AP"] == whole["val_box_AP"]


def test_detection_from_the_command_line_and_its_resume(scenes, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--model", "resnet20", "--data", "fashion-scenes", "--data-dir", str(scenes), "--recipe",
            "detection-cpu", "--iters", "4", "--batch-size", "2", "--eval-every", "2", "--num-workers", "0",
            "--base-width", "4", "--no-progress", "--out", str(run), "--device", TEST_DEVICE]
    assert main(args) == 0
    assert "val box AP" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # finished: its final evaluation again
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="detection run"):
        train(resume=run, progress=False)


@pytest.mark.slow
def test_training_on_the_scenes_improves_box_ap(scenes, tmp_path):
    before = train_detector("resnet20", "fashion-scenes", data_dir=str(scenes), recipe=det_recipe(iters=1, lr=1e-6),
                            out=tmp_path / "a", progress=False)
    after = train_detector("resnet20", "fashion-scenes", data_dir=str(scenes),
                           recipe=det_recipe(iters=240, eval_every=240, batch_size=4), out=tmp_path / "b",
                           progress=False)
    assert after["val_box_AP50"] > before["val_box_AP50"] + 0.1


def test_reproduce_detection_reuses_backbones_resumes_and_refuses_another_budget(shapes, scenes, tmp_path):
    from resnet.reproduce.detection import reproduce_detection

    suite = tmp_path / "table6"  # classification runs of both kinds, as a table6 suite holds them
    for model in ("plain20", "resnet20"):
        train(model, "fashion-mnist", data_dir=str(shapes), out=suite / f"{model}-s0", model_options=TINY,
              recipe=get_recipe("paper-cifar", iters=4, batch_size=32, val_split=False, device=TEST_DEVICE),
              progress=False)
    out = tmp_path / "det"
    report = reproduce_detection("fashion-scenes", budget=0.002, out=out, data_dir=str(scenes), pretrained=suite,
                                 device=TEST_DEVICE, progress=False, command="test")
    assert [r["backbone"] for r in report["results"]] == ["plain20", "resnet20"]
    assert [r["classification_seconds"] for r in report["results"]] == [None, None]  # reused: not this suite's time
    assert [r["detection_seconds"] for r in report["results"]] == [
        read_metrics(out / f"{m}-detect" / "metrics.jsonl")[-1]["wall_time"] for m in ("plain20", "resnet20")]
    assert set(report["relative_gain"]) >= {"box_AP", "box_AP50"}
    assert "ResNet-101 27.2 / 48.4" in (out / "report.md").read_text()
    mtime = (out / "resnet20-detect" / "metrics.jsonl").stat().st_mtime
    again = reproduce_detection("fashion-scenes", budget=0.002, out=out, data_dir=str(scenes), pretrained=suite,
                                device=TEST_DEVICE, progress=False, command="test")
    assert again["results"] == report["results"]
    assert (out / "resnet20-detect" / "metrics.jsonl").stat().st_mtime == mtime  # nothing trained again
    with pytest.raises(ValueError, match="budget 0.002"):
        reproduce_detection("fashion-scenes", budget=0.5, out=out, data_dir=str(scenes), pretrained=suite,
                            device=TEST_DEVICE, progress=False)


def test_detection_report_gives_mean_std_and_the_gain_against_its_spread():
    from resnet.reproduce.detection import PAPER, format_report, summarise

    ap = {("plain", 0): 0.20, ("resnet", 0): 0.30, ("plain", 1): 0.25, ("resnet", 1): 0.30,
          ("plain", 2): 0.22, ("resnet", 2): 0.33}
    results = [{"backbone": f"{k}20", "kind": k, "seed": s, "classification_test_error": 0.07, "box_AP": v,
                "box_AP50": 2 * v} for (k, s), v in ap.items()]
    summary, gains = summarise(results)
    plain = np.array([0.20, 0.25, 0.22])
    assert summary[0]["box_AP_mean"] == pytest.approx(plain.mean())
    assert summary[0]["box_AP_std"] == pytest.approx(plain.std(ddof=1))
    per_seed = np.array([0.30 / 0.20 - 1, 0.30 / 0.25 - 1, 0.33 / 0.22 - 1])
    assert gains["box_AP"]["per_seed"] == pytest.approx(list(per_seed))
    assert gains["box_AP"]["std"] == pytest.approx(per_seed.std(ddof=1))
    assert gains["box_AP"]["residual_better"] == 3 and gains["box_AP"]["beyond_spread"]
    mixed = [dict(r, box_AP=0.2 + 0.05 * (r["seed"] == 1) * (r["kind"] == "plain")) for r in results]
    assert not summarise(mixed)[1]["box_AP"]["beyond_spread"]  # residual worse on seed 1: not a consistent gain
    text = format_report({"data": "fashion-scenes", "budget": 1, "command": "c", "results": results,
                          "summary": summary, "gains": gains, "paper": PAPER,
                          "paper_relative_gain": {"coco_AP": 0.28, "coco_AP50": 0.17}})
    assert "| plain20 | 3 | 7.00±0.00 | 22.3±2.5 |" in text
    assert "box AP: +40% relative (±17% over 3 seeds; residual better in 3/3): larger than the seed-to-seed spread" in text


def test_the_masks_suite_has_its_own_default_folder(tmp_path, monkeypatch):
    """Its report must not overwrite the box suite's, which it usually reuses with --pretrained."""
    from resnet.reproduce.detection import reproduce_detection

    monkeypatch.chdir(tmp_path)
    for name in ("detection-fashion-scenes", "detection-fashion-scenes-masks"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "suite.json").write_text(json.dumps({"data": "fashion-scenes", "budget": 0.5,
                                                                          "recipe": {}}))
    for masks, name in ((True, "detection-fashion-scenes-masks"), (False, "detection-fashion-scenes")):
        with pytest.raises(ValueError, match=rf"^runs/{name} holds a suite trained with budget 0.5"):
            reproduce_detection("fashion-scenes", budget=1.0, masks=masks, data_dir=str(tmp_path), progress=False)


def test_a_suite_refuses_its_own_pretraining_run_of_another_recipe(tmp_path):
    """Resuming a suite after the `fast` recipe changed must not average two pipelines over the seeds."""
    import dataclasses

    from resnet.reproduce.detection import check_backbone_recipe, recipes

    pretrain = dataclasses.replace(recipes(1.0)[0], seed=2)
    run = tmp_path / "plain20-classify-s2"
    check_backbone_recipe(run, pretrain)  # not begun yet: nothing to compare
    run.mkdir()
    recorded = {k: v for k, v in dataclasses.asdict(pretrain).items() if k != "low_res_size"}  # a field added later
    (run / "config.json").write_text(json.dumps({"model": "plain20", "recipe": dict(recorded, seed=2)}))
    check_backbone_recipe(run, pretrain)
    other = dict(recorded, crop_pad=pretrain.crop_pad + 3, tta="none")
    (run / "config.json").write_text(json.dumps({"model": "plain20", "recipe": other}))
    with pytest.raises(ValueError, match=r"plain20-classify-s2 was pretrained with another recipe than this suite's "
                                         rf"\(crop_pad {pretrain.crop_pad + 3} -> {pretrain.crop_pad}, "
                                         rf"tta 'none' -> '{pretrain.tta}'\)"):
        check_backbone_recipe(run, pretrain)


def test_detection_figure_and_wall_time_come_with_the_report(tmp_path):
    from PIL import Image

    from resnet.reproduce.detection import FIGURE, write_report

    results = [{"backbone": f"{k}20", "kind": k, "seed": s, "classification_test_error": 0.07,
                "box_AP": 0.2 + 0.1 * (k == "resnet") + 0.01 * s, "box_AP50": 0.4, "mask_AP": 0.25,
                "classification_seconds": 240.0 + 60 * s, "detection_seconds": 300.0}
               for s in (0, 1) for k in ("plain", "resnet")]
    write_report(tmp_path, "fashion-scenes", 1.0, results, "c")
    with Image.open(tmp_path / FIGURE) as figure:
        assert figure.format == "PNG" and figure.width > 3 * figure.height / 2  # one panel per AP metric, side by side
    text = (tmp_path / "report.md").read_text()
    assert "- Wall time of classification per backbone and seed: 4.5 min (mean of 4; 18 min in all)." in text
    assert "- Wall time of detection per backbone and seed: 5.0 min (mean of 4; 20 min in all)." in text
    (tmp_path / FIGURE).unlink()
    write_report(tmp_path, "fashion-scenes", 1.0, [r for r in results if r["kind"] == "plain"], "c")
    assert not (tmp_path / FIGURE).exists()  # nothing to compare until both backbones have a run


def test_reproduce_detection_trains_each_seed_on_its_own_backbones(shapes, scenes, tmp_path):
    from resnet.reproduce.detection import reproduce_detection

    suite = tmp_path / "table6"
    for model in ("plain20", "resnet20"):
        for seed in (0, 1):
            train(model, "fashion-mnist", data_dir=str(shapes), out=suite / f"{model}-s{seed}", model_options=TINY,
                  recipe=get_recipe("paper-cifar", iters=2, batch_size=32, val_split=False, seed=seed,
                                    device=TEST_DEVICE), progress=False)
    out = tmp_path / "det"
    report = reproduce_detection("fashion-scenes", budget=0.001, seeds=2, out=out, data_dir=str(scenes),
                                 pretrained=suite, device=TEST_DEVICE, progress=False, command="test")
    assert [(r["backbone"], r["seed"]) for r in report["results"]] == [
        ("plain20", 0), ("resnet20", 0), ("plain20", 1), ("resnet20", 1)]
    assert (out / "resnet20-detect" / "result.json").exists() and (out / "resnet20-detect-s1" / "result.json").exists()
    seeds = [json.loads((out / d / "config.json").read_text())["recipe"]["seed"] for d in ("plain20-detect",
                                                                                            "plain20-detect-s1")]
    assert seeds == [0, 1]
    assert [row["seeds"] for row in report["summary"]] == [2, 2]
    resnet_ap = [r["box_AP"] for r in report["results"] if r["kind"] == "resnet"]
    assert report["summary"][1]["box_AP_mean"] == pytest.approx(np.mean(resnet_ap))
    with pytest.raises(FileNotFoundError, match="plain20 seed 2"):
        reproduce_detection("fashion-scenes", budget=0.001, seeds=3, out=out, data_dir=str(scenes), pretrained=suite,
                            device=TEST_DEVICE, progress=False)
