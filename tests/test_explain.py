"""`resnet explain`: Grad-CAM (Captum's LayerGradCam) puts its peak where the class is decided."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnet.cli import main

PATTERNS = ["solid", "horizontal stripes", "vertical stripes", "checkerboard"]


def pattern(label: int, patch: int) -> np.ndarray:
    rows, cols = np.indices((patch, patch))
    return [np.ones((patch, patch)), rows % 2 == 0, cols % 2 == 0, (rows + cols) % 2 == 0][label].astype(np.int64)


def patch_images(n: int, seed: int, size: int = 32, patch: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy grey images with one bright square in a random quadrant; its pattern (PATTERNS) is the class.
    Returns (images, labels, the quadrant of each square: 0 top left, 1 top right, 2 bottom left, 3 bottom right)."""
    rng = np.random.default_rng(seed)
    labels, quadrants = rng.integers(0, 4, n), rng.integers(0, 4, n)
    images = rng.integers(0, 70, (n, size, size))
    half = size // 2
    for image, label, where in zip(images, labels, quadrants):
        top, left = (where // 2) * half, (where % 2) * half
        r, c = rng.integers(1, half - patch, 2)
        image[top + r:top + r + patch, left + c:left + c + patch] += 170 * pattern(int(label), patch)
    return images.astype(np.uint8), labels, quadrants


def quadrant(row: int, col: int, size: int) -> int:
    return (row >= size // 2) * 2 + (col >= size // 2)


@pytest.fixture(scope="module")
def patch_net(tmp_path_factory):
    """A ResNet-20 of width 4 trained for a few seconds on the pattern task, saved as a checkpoint."""
    from resnet.checkpoint import save_weights
    from resnet.models import create_model

    folder = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    images, labels, _ = patch_images(512, 0)
    x, y = torch.from_numpy(images).float()[:, None] / 255, torch.from_numpy(labels).long()
    mean = x.mean(0)
    model = create_model("resnet20", num_classes=4, in_channels=1, base_width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(150):
        i = torch.randint(0, len(x), (32,))
        loss = F.cross_entropy(model(x[i] - mean), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    meta = {"model": "resnet20", "options": model.options, "classes": PATTERNS, "class_names": PATTERNS,
            "image_size": 32, "style": "small"}
    save_weights(folder / "q.safetensors", model, meta, mean)
    return folder / "q.safetensors", model, mean


def test_grad_cam_peaks_in_the_quadrant_that_decides_the_class(patch_net, tmp_path, capsys):
    checkpoint, model, mean = patch_net
    images, labels, quadrants = patch_images(24, 1)
    with torch.no_grad():
        predicted = model(torch.from_numpy(images).float()[:, None] / 255 - mean).argmax(1).numpy()
    assert (predicted == labels).mean() >= 0.9  # the net learned the task, so where it looks is meaningful
    (tmp_path / "held-out").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "held-out" / f"{i:02d}.png")
    out = tmp_path / "cams"
    assert main(["explain", "--checkpoint", str(checkpoint), str(tmp_path / "held-out"), "--out", str(out),
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [str(tmp_path / "held-out" / f"{i:02d}.png") for i in range(24)]
    hits = [quadrant(*r["peak"], r["size"][0]) == where for r, where in zip(results, quadrants)]
    assert np.mean(hits) >= 0.75, hits
    assert all(r["layer"] == "conv4_x" and r["index"] == p for r, p in zip(results, predicted))
    with Image.open(results[0]["out"]) as overlay:
        assert overlay.mode == "RGB" and overlay.size == (224, 224)  # 32 px enlarged 7x to be seen


def test_class_and_layer_options_and_one_line_errors(patch_net, tmp_path, capsys):
    checkpoint, _, _ = patch_net
    images, labels, _ = patch_images(1, 2)
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    other = (int(labels[0]) + 1) % 4
    assert main(["explain", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--class", str(other), "--layer", "conv3_x"]) == 0
    printed = capsys.readouterr().out
    assert f"for {PATTERNS[other]}" in printed and "conv3_x" in printed and "of 16x16" not in printed
    for extra, words in ((["--layer", "conv9_x"], "--layer conv9_x"), (["--class", "7"], "--class 7")):
        assert main(["explain", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out",
                     str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err
    assert main(["explain", "--checkpoint", str(tmp_path / "m.onnx"), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "gradients" in capsys.readouterr().err
