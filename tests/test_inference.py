"""resnet.inference: one Classifier over checkpoints and ONNX files; eval/predict on ONNX files agree with the
checkpoint and with ONNX Runtime run by hand; int8 export checked for accuracy (and refused when it is not)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import learnable_images, write_tiny_fashion
from resnet.cli import main

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


def train_tiny(out: Path, steps: int = 40, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """A ResNet-20 of width 4 (10 outputs, as Fashion-MNIST) trained for `steps` SGD steps on the learnable
    4-class band images (the tiny Fashion-MNIST's training set), saved as a checkpoint with the per-pixel mean;
    a few seconds."""
    from resnet.checkpoint import save_weights
    from resnet import create_model

    torch.manual_seed(seed)
    images, labels = learnable_images(512, 0)
    x, y = torch.from_numpy(images).float()[:, None] / 255, torch.from_numpy(labels).long()
    mean = x.mean(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, base_width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(steps):
        i = torch.randint(0, len(x), (32,))
        loss = F.cross_entropy(model(x[i] - mean), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # BN statistics of the whole training set, as a longer run would have
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model(x - mean)
    model.eval()
    names = FASHION_NAMES
    meta = {"model": "resnet20", "options": model.options, "classes": [str(i) for i in range(10)],
            "class_names": names, "dataset": "fashion-mnist", "image_size": 28, "style": "small"}
    save_weights(out, model, meta, mean)
    return model, mean


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, tiny fashion data, checkpoint, its fp32 ONNX file, model, mean), made once for the module."""
    folder = tmp_path_factory.mktemp("inference")
    fashion = write_tiny_fashion(folder / "fashion")
    model, mean = train_tiny(folder / "c.safetensors")
    assert main(["export", "--checkpoint", str(folder / "c.safetensors"), "--out", str(folder / "c.onnx")]) == 0
    return folder, fashion, folder / "c.safetensors", folder / "c.onnx", model, mean


def test_images() -> tuple[np.ndarray, np.ndarray]:
    """The tiny Fashion-MNIST's 128 test images and labels (write_tiny_fashion's seed)."""
    return learnable_images(128, 1)


test_images.__test__ = False  # a helper, not a test


def ort_by_hand(path: Path, images: np.ndarray) -> np.ndarray:
    """Softmax of ONNX Runtime's logits for uint8 images [N, H, W], normalised with the file's own mean."""
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    mean = np.array(json.loads(props["input_mean"]), dtype=np.float32)
    x = (images[:, None].astype(np.float32) / 255 - mean).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return torch.from_numpy(logits).softmax(1).numpy()


def eval_json(tmp_path: Path, checkpoint: Path, fashion: Path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", "fashion-mnist", "--data-dir", str(fashion),
                 "--workers", "0", "--no-progress", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_the_classifier_contract(trained):
    from resnet.inference import load_classifier

    folder, _, checkpoint, onnx_file, model, mean = trained
    images, _ = test_images()
    for source, engine in ((checkpoint, "torch-fp32"), (onnx_file, "onnxruntime-fp32")):
        classifier = load_classifier(source, engine=None if engine.startswith("onnx") else engine)
        assert classifier.engine == engine and classifier.name == "resnet20" and classifier.channels == 1
        assert classifier.classes == FASHION_NAMES
        views = [classifier.prepare(torch.from_numpy(image)[None]) for image in images[:5]]
        probs = classifier.probabilities(views)
        with torch.no_grad():
            expected = F.softmax(model(torch.from_numpy(images[:5]).float()[:, None] / 255 - mean), 1)
        assert probs.shape == (5, 10) and torch.allclose(probs, expected, atol=1e-5)
        top = classifier.top(probs[0], 2)
        assert [t["index"] for t in top] == expected[0].argsort(descending=True)[:2].tolist()
        assert top[0]["class"] == classifier.classes[top[0]["index"]]


def test_eval_on_the_fp32_onnx_file_equals_the_checkpoint_and_onnxruntime_by_hand(trained, tmp_path):
    _, fashion, checkpoint, onnx_file, _, _ = trained
    from_checkpoint = eval_json(tmp_path, checkpoint, fashion, "c")["members"][0]
    from_onnx = eval_json(tmp_path, onnx_file, fashion, "o")["members"][0]
    images, labels = test_images()
    by_hand = ort_by_hand(onnx_file, images)
    assert from_onnx["images"] == from_checkpoint["images"] == 128
    assert from_onnx["top1_error"] == pytest.approx(float((by_hand.argmax(1) != labels).mean()), abs=1e-9)
    assert abs(from_onnx["top1_error"] - from_checkpoint["top1_error"]) < 1e-4  # 0.01 points
    assert from_onnx["loss"] == pytest.approx(from_checkpoint["loss"], rel=1e-4, abs=1e-6)


def write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = [folder / f"{i}.png" for i in range(len(images))]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    return paths


def predict_json(capsys, checkpoint: Path, paths: list[Path], *extra: str) -> list[dict]:
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, paths), "--json", "--top", "10", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_on_the_fp32_onnx_file_equals_the_checkpoint(trained, tmp_path, capsys):
    _, _, checkpoint, onnx_file, _, _ = trained
    images, _ = test_images()
    paths = write_pngs(tmp_path / "pics", images[:6])
    from_checkpoint = predict_json(capsys, checkpoint, paths)
    from_onnx = predict_json(capsys, onnx_file, paths, "--engine", "onnxruntime")
    by_hand = ort_by_hand(onnx_file, images[:6])
    for a, b, p in zip(from_checkpoint, from_onnx, by_hand):
        assert a["engine"] == "torch-fp32" and b["engine"] == "onnxruntime-fp32"
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]] == list(np.argsort(-p, kind="stable"))
        assert [t["probability"] for t in b["top"]] == pytest.approx(sorted(p, reverse=True), abs=1e-6)


def test_engine_choice_is_said_and_wrong_engines_are_one_line(trained, tmp_path, capsys):
    _, _, checkpoint, onnx_file, _, _ = trained
    [path] = write_pngs(tmp_path / "pics", test_images()[0][:1])
    assert main(["predict", "--checkpoint", str(onnx_file), str(path), "--engine", "onnxruntime"]) == 0
    assert "resnet predict: engine onnxruntime-fp32" in capsys.readouterr().err
    for source, engine, words in ((onnx_file, "torch-bf16", "ONNX file"), (checkpoint, "onnxruntime", "resnet export")):
        assert main(["predict", "--checkpoint", str(source), str(path), "--engine", engine]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "--engine" in err


def test_the_commands_engine_list_is_the_librarys():
    from resnet.commands.predict import ENGINES as listed
    from resnet.inference import ENGINES

    assert listed == ENGINES


def int8_export(trained, out: Path, *extra: str) -> int:
    _, fashion, checkpoint, _, _, _ = trained
    return main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--int8", "--data-dir", str(fashion),
                 "--calibration", "128", *extra])


def test_int8_export_is_within_tolerance_and_eval_predict_run_it_as_onnxruntime_does(trained, tmp_path, capsys):
    int8 = tmp_path / "c.int8.onnx"
    assert int8_export(trained, int8) == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and "fp32" in printed and "relative accuracy loss" in printed
    graph = onnx.load(str(int8))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 for t in graph.graph.initializer)
    props = {p.key: p.value for p in graph.metadata_props}
    assert {"resnet", "input_mean", "input_size", "resize_size", "style", "class_names"} <= set(props)
    record = json.loads(props["quantization"])
    options = ort.SessionOptions()  # what ONNX Runtime runs: every conv fused into an int8 QLinearConv
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    ran = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(trained[3])).graph.node)
    assert ran.count("QLinearConv") == convs == 19 and "Conv" not in ran and "FusedConv" not in ran
    [gemm] = [n for n in graph.graph.node if n.op_type == "Gemm"]  # the classifier stays fp32 (no tied logits)
    floats = {t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert record["fp32_nodes"] == [gemm.name] and gemm.input[1] in floats
    images, labels = test_images()
    fp32_by_hand = ort_by_hand(trained[3], images)
    int8_by_hand = ort_by_hand(int8, images)
    int8_error = float((int8_by_hand.argmax(1) != labels).mean())
    assert record["fp32_top1_error"] == pytest.approx(float((fp32_by_hand.argmax(1) != labels).mean()), abs=1e-9)
    assert record["int8_top1_error"] == pytest.approx(int8_error, abs=1e-9)
    assert record["fp32_top1_error"] < 0.1  # a trained net, so the check means something
    assert record["relative_loss"] <= 0.01 and record["held_out"]["images"] == 128
    assert not np.allclose(int8_by_hand, fp32_by_hand, atol=1e-6)  # really a different (int8) computation
    assert eval_json(tmp_path, int8, trained[1], "i")["members"][0]["top1_error"] == pytest.approx(int8_error, abs=1e-9)
    paths = write_pngs(tmp_path / "pics", images[:5])
    capsys.readouterr()  # eval's table
    for result, p in zip(predict_json(capsys, int8, paths), int8_by_hand[:5]):
        assert result["engine"] == "onnxruntime-int8"
        assert result["top"][0]["index"] == int(p.argmax())
        assert result["top"][0]["probability"] == pytest.approx(float(p.max()), abs=1e-6)


def test_int8_from_a_broken_calibration_set_is_refused_in_one_line(trained, tmp_path, capsys):
    black = tmp_path / "black"
    black.mkdir()
    for i in range(8):  # calibration ranges from blank images: every real activation saturates
        Image.new("L", (28, 28)).save(black / f"{i}.png")
    out = tmp_path / "broken.int8.onnx"
    assert int8_export(trained, out, "--calibration-data", str(black)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "int8 top-1 error" in err and "fp32" in err and "--max-int8-loss" in err
    assert not out.exists() and list(tmp_path.glob("*.onnx*")) == []
    assert int8_export(trained, out, "--calibration-data", str(black), "--max-int8-loss", "1") == 0  # overridden
    assert json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["quantization"])[
        "relative_loss"] > 0.01


def test_int8_on_a_detector_is_one_line(tmp_path, capsys):
    from resnet.checkpoint import save_weights
    from resnet import create_model

    model = create_model("resnet20", base_width=4)  # only its metadata is read: it names a detector
    save_weights(tmp_path / "d.safetensors", model, {"model": "resnet20", "detector": {"head": "c4"}})
    assert main(["export", "--checkpoint", str(tmp_path / "d.safetensors"), "--out", str(tmp_path / "d.onnx"),
                 "--int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--int8" in err and "detector" in err and not (tmp_path / "d.onnx").exists()


def test_per_class_error_precision_recall_against_counts_and_the_confusion_png(trained, tmp_path, capsys):
    _, fashion, checkpoint, _, model, mean = trained
    png = tmp_path / "confusion.png"
    result = eval_json(tmp_path, checkpoint, fashion, "c", "--confusion", str(png))
    printed = capsys.readouterr().out
    assert "per class" in printed and "precision %" in printed and "Ankle boot" in printed
    member = result["members"][0]
    images, labels = test_images()
    with torch.no_grad():
        predicted = model(torch.from_numpy(images).float()[:, None] / 255 - mean).argmax(1).numpy()
    assert np.array(member["confusion"]).sum() == len(labels) == 128
    for row in member["per_class"]:
        k = row["index"]
        tp = int(((predicted == k) & (labels == k)).sum())
        fp, fn = int(((predicted == k) & (labels != k)).sum()), int(((predicted != k) & (labels == k)).sum())
        assert row["class"] == FASHION_NAMES[k] and row["images"] == tp + fn
        assert row["recall"] == (pytest.approx(tp / (tp + fn)) if tp + fn else None)
        assert row["top1_error"] == (pytest.approx(fn / (tp + fn)) if tp + fn else None)
        assert row["precision"] == (pytest.approx(tp / (tp + fp)) if tp + fp else None)
    assert sum(r["images"] for r in member["per_class"]) == 128
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.width > 300


def test_the_final_evaluation_of_training_writes_per_class_and_the_confusion_matrix(tmp_path):
    fashion = write_tiny_fashion(tmp_path / "fashion")
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--base-width", "4", "--data", "fashion-mnist", "--data-dir",
                 str(fashion), "--iters", "2", "--batch-size", "32", "--out", str(run), "--no-progress",
                 "--num-workers", "0"]) == 0
    record = json.loads((run / "per_class.json").read_text())
    [final] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1:]
    test = record["test"]
    assert np.array(test["confusion"]).sum() == final["test_images"] == 128
    wrong = 128 - np.trace(np.array(test["confusion"]))
    assert wrong / 128 == pytest.approx(final["test_top1_error"])  # the same evaluation as the metrics row
    assert [r["class"] for r in test["per_class"]] == FASHION_NAMES
    with Image.open(run / "confusion.png") as picture:
        assert picture.format == "PNG"


def test_every_command_in_docs_inference_parses():
    import re
    import shlex

    from resnet.cli import build_parser

    text = (Path(__file__).resolve().parent.parent / "docs" / "inference.md").read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()
             if line.startswith("resnet ")]
    assert len(lines) >= 12
    for line in lines:
        argv = shlex.split(line.split("  #")[0])[1:]
        build_parser(argv).parse_args(argv)  # SystemExit on an option the CLI does not have


def test_calibration_from_a_class_folder_tree_samples_every_class(trained, tmp_path):
    """A train/<class>/ tree sorted by name would give only its first class; the sample must reach the others."""
    from resnet.inference import load_classifier
    from resnet.inference.quantize import calibration_views

    for name, shade in (("a-black", 0), ("b-white", 255)):
        (tmp_path / name).mkdir()
        for i in range(20):
            Image.new("L", (28, 28), shade).save(tmp_path / name / f"{i:02d}.png")
    classifier = load_classifier(trained[2], engine="torch-fp32")
    views = calibration_views(classifier, str(tmp_path), None, None, 8)
    raw = {round(float(v.mean()), 3) for v in views}  # normalised: one value per shade
    assert len(views) == 8 and len(raw) == 2
