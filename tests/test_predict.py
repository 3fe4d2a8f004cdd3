"""`resnet predict`: top classes with names and probabilities; one-line errors for files that are not images."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnet.cli import main
from resnet.models import create_model
from resnet.checkpoint import save_weights


def make_checkpoint(path, name: str, size: int, style: str, mean: torch.Tensor, num_classes: int = 10, meta=None):
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    names = [f"thing {i}" for i in range(num_classes)]
    full = {"model": name, "options": model.options, "classes": [str(i) for i in range(num_classes)],
            "class_names": names, "image_size": size, "style": style, **(meta or {})}
    save_weights(path, model, full, mean)
    return model


def test_top_classes_equal_the_softmax_of_the_preprocessed_image(tmp_path, capsys):
    mean = torch.rand(3, 32, 32)
    model = make_checkpoint(tmp_path / "c.safetensors", "resnet20", 32, "small", mean)
    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(tmp_path / "a.png")
    rc = main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "a.png"), "--json",
               "--top", "10"])
    assert rc == 0
    [result] = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        x = pixels.permute(2, 0, 1).float()[None] / 255 - mean
        probs = F.softmax(model(x), 1)[0]
    top = result["top"]
    assert [t["index"] for t in top] == probs.argsort(descending=True).tolist()
    assert [t["probability"] for t in top] == pytest.approx(probs.sort(descending=True).values.tolist(), abs=1e-6)
    assert top[0]["class"] == f"thing {top[0]['index']}"


def test_imagenet_style_with_input_std_and_text_output(tmp_path, capsys):
    from resnet.data import DatasetInfo
    from resnet.data.transforms import test_transform

    mean, std = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1), [0.229, 0.224, 0.225]
    model = make_checkpoint(tmp_path / "c.safetensors", "resnet18", 64, "imagenet", mean, meta={"input_std": std})
    pixels = torch.randint(0, 256, (90, 120, 3), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(tmp_path / "b.jpg", quality=100)
    rc = main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "b.jpg")])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("b.jpg") and len(lines) == 6
    decoded = torch.from_numpy(__import__("numpy").array(Image.open(tmp_path / "b.jpg"))).permute(2, 0, 1)
    info = DatasetInfo("t", [], [], 3, 64, "imagenet")
    with torch.no_grad():  # resize 73 (=256*64/224), centre crop 64, minus mean, divided by std
        x = test_transform(info, mean)(decoded) / torch.tensor(std).reshape(3, 1, 1)
        probs = F.softmax(model(x[None]), 1)[0]
    best = int(probs.argmax())
    assert f"{probs[best].item():7.2%}  thing {best}" in lines[1]


def test_a_file_that_is_not_an_image_gives_a_one_line_error(tmp_path, capsys):
    make_checkpoint(tmp_path / "c.safetensors", "resnet20", 32, "small", torch.zeros(3, 32, 32))
    (tmp_path / "notes.jpg").write_text("not an image at all")
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    rc = main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "ok.png"),
               str(tmp_path / "notes.jpg")])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""  # every file is read before anything is printed
    assert captured.err.count("\n") == 1 and "notes.jpg" in captured.err and "not an image" in captured.err
    assert main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "gone.png")]) == 2
    assert "gone.png" in capsys.readouterr().err
