"""`resnet predict`: top classes with names and probabilities; one-line errors for files that are not images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnet.cli import main
from resnet import create_model
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


def test_a_file_that_is_not_an_image_is_skipped_and_named(tmp_path, capsys):
    make_checkpoint(tmp_path / "c.safetensors", "resnet20", 32, "small", torch.zeros(3, 32, 32))
    (tmp_path / "notes.jpg").write_text("not an image at all")
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    rc = main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "ok.png"),
               str(tmp_path / "notes.jpg")])
    captured = capsys.readouterr()
    assert rc == 0 and captured.out.splitlines()[0] == str(tmp_path / "ok.png")  # the readable one is predicted
    assert "notes.jpg" not in captured.out
    assert captured.err.count("\n") == 1 and "notes.jpg" in captured.err and "not an image" in captured.err
    assert main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "notes.jpg")]) == 2
    err = capsys.readouterr().err  # nothing readable: one line, exit 2
    assert err.count("\n") == 1 and "notes.jpg" in err and "not an image" in err
    assert main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "gone.png")]) == 2
    assert "gone.png" in capsys.readouterr().err


def smooth_image(size: int, seed: int = 0) -> np.ndarray:
    """A low-frequency RGB image (a 7x7 random grid enlarged smoothly), so a resize back loses little."""
    grid = np.random.default_rng(seed).integers(0, 256, (7, 7, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))


def predict_json(capsys, checkpoint, *images, extra=()):
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, images), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_an_enlarged_copy_gets_the_checkpoints_own_size_and_the_same_classes(tmp_path, capsys):
    mean = torch.rand(3, 28, 28)
    model = make_checkpoint(tmp_path / "c.safetensors", "resnet20", 28, "small", mean)
    original = smooth_image(28)
    Image.fromarray(original).save(tmp_path / "a.png")
    Image.fromarray(original).resize((112, 112), Image.NEAREST).save(tmp_path / "a4x.png")  # 4x, and another shape
    Image.fromarray(original).resize((112, 140), Image.NEAREST).save(tmp_path / "a4x5.png")
    small, big, tall = predict_json(capsys, tmp_path / "c.safetensors", tmp_path / "a.png", tmp_path / "a4x.png",
                                    tmp_path / "a4x5.png")
    assert [t["index"] for t in big["top"]] == [t["index"] for t in small["top"]]
    assert [t["probability"] for t in big["top"]] == pytest.approx([t["probability"] for t in small["top"]], abs=0.02)
    assert tall["top"][0]["index"] == small["top"][0]["index"]
    # the network sees the 28x28 image: PIL's own downscale of the enlarged copy gives the same classes
    pil = np.array(Image.open(tmp_path / "a4x.png").resize((28, 28), Image.BILINEAR))
    with torch.no_grad():
        probs = F.softmax(model(torch.from_numpy(pil).permute(2, 0, 1)[None].float() / 255 - mean), 1)[0]
    assert probs.argmax().item() == big["top"][0]["index"]


def png_claiming(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height (the data is that of a 1x1 image): costs nothing to write."""
    import struct
    import zlib

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def test_huge_images_and_decompression_bombs_are_one_line(tmp_path, capsys):
    make_checkpoint(tmp_path / "c.safetensors", "resnet20", 32, "small", torch.zeros(3, 32, 32))
    png_claiming(tmp_path / "huge.png", 12_000, 12_000)  # 144 megapixels, above the 64M limit
    png_claiming(tmp_path / "bomb.png", 40_000, 40_000)  # PIL's own bomb check refuses it while opening
    Image.new("RGB", (300, 300)).save(tmp_path / "photo.png")
    for name, words in (("huge.png", "above the limit"), ("bomb.png", "decompression bomb")):
        rc = main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / name)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and name in err and words in err
    assert main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "photo.png"),
                 "--max-pixels", "50000"]) == 2
    assert "photo.png" in capsys.readouterr().err


def test_a_folder_in_batches_with_json_and_csv_files(tmp_path, capsys):
    import csv

    make_checkpoint(tmp_path / "c.safetensors", "resnet20", 32, "small", torch.rand(3, 32, 32))
    (tmp_path / "pics" / "more").mkdir(parents=True)
    paths = [tmp_path / "pics" / f"{i}.png" for i in range(3)] + [tmp_path / "pics" / "more" / "x.jpg"]
    for i, path in enumerate(paths):
        Image.fromarray(smooth_image(32 + 8 * i, seed=i)).save(path)
    (tmp_path / "pics" / "notes.txt").write_text("not an image")
    one_by_one = predict_json(capsys, tmp_path / "c.safetensors", *paths)
    batched = predict_json(capsys, tmp_path / "c.safetensors", tmp_path / "pics",
                           extra=("--batch-size", "3", "--out", str(tmp_path / "p.json")))
    assert sorted(r["image"] for r in batched) == sorted(map(str, paths))
    by_image = {r["image"]: r["top"] for r in one_by_one}
    for r in batched:
        assert [t["index"] for t in r["top"]] == [t["index"] for t in by_image[r["image"]]]
        assert [t["probability"] for t in r["top"]] == pytest.approx([t["probability"] for t in by_image[r["image"]]],
                                                                     abs=1e-5)
    assert json.loads((tmp_path / "p.json").read_text()) == batched
    assert main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "pics"), "--top", "3",
                 "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 4 * 3 and rows[0].keys() == {"image", "rank", "index", "class", "probability"}
    first = [r for r in rows if r["image"] == batched[0]["image"]]
    assert [int(r["index"]) for r in first] == [t["index"] for t in batched[0]["top"][:3]]
    assert main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "pics"),
                 "--out", str(tmp_path / "p.xml")]) == 2
