"""Test protocols, top-k error and ensembles, checked against hand-made cases and independent computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from resnet.cli import main
from resnet.evaluate import ErrorMeter, InputNorm, ensemble_scores, get_protocol, topk_errors
from resnet.evaluate.protocols import MultiScale, TenCrop
from resnet.evaluate.runner import evaluate_models
from resnet import create_model
from helpers import randomize_bn



# ----------------------------------------------------------------------------- metrics


def test_topk_error_on_a_hand_made_example():
    # label ranks: sample 0 first, sample 1 third, sample 2 sixth (last) of 6 classes
    probs = torch.tensor([[0.50, 0.20, 0.10, 0.10, 0.05, 0.05],
                          [0.30, 0.25, 0.05, 0.20, 0.10, 0.10],
                          [0.05, 0.25, 0.20, 0.20, 0.29, 0.01]])
    labels = torch.tensor([0, 3, 5])
    errors = topk_errors(probs, labels)
    assert errors[1].tolist() == [0, 1, 1]
    assert errors[5].tolist() == [0, 0, 1]
    meter = ErrorMeter()
    meter.update(probs[:2], labels[:2])
    meter.update(probs[2:], labels[2:])
    result = meter.result()
    assert result["top1_error"] == pytest.approx(2 / 3)
    assert result["top5_error"] == pytest.approx(1 / 3)
    assert result["loss"] == pytest.approx(-(math.log(0.5) + math.log(0.2) + math.log(0.01)) / 3)
    assert result["images"] == 3


def test_top5_with_fewer_than_five_classes_is_never_wrong():
    errors = topk_errors(torch.tensor([[0.1, 0.2, 0.7]]), torch.tensor([0]))
    assert errors[1].tolist() == [1] and errors[5].tolist() == [0]


def test_ensemble_is_the_mean_of_members_scores():
    a, b, c = torch.rand(4, 7), torch.rand(4, 7), torch.rand(4, 7)
    assert torch.allclose(ensemble_scores([a, b, c]), (a + b + c) / 3)
    with pytest.raises(ValueError, match="disagree"):
        ensemble_scores([a, torch.rand(4, 6)])


# ----------------------------------------------------------------------------- normalisation


def test_input_norm_per_pixel_per_channel_and_std():
    mean = torch.arange(3 * 2 * 2, dtype=torch.float32).reshape(3, 2, 2) / 100
    x = torch.rand(5, 3, 2, 2)
    assert torch.allclose(InputNorm(mean)(x), x - mean)
    bigger = torch.rand(1, 3, 4, 4)  # a per-pixel mean only fits its own size: others get its channel average
    assert torch.allclose(InputNorm(mean)(bigger), bigger - mean.mean(dim=(1, 2), keepdim=True))
    std = [0.5, 0.25, 2.0]
    expected = (x - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(InputNorm(torch.tensor([0.1, 0.2, 0.3]), std)(x), expected)


@pytest.mark.parametrize("style,size", [("small", 32), ("imagenet", 224)])
def test_center_view_equals_the_data_packages_test_transform(style, size):
    from resnet.data import DatasetInfo
    from resnet.data.transforms import test_transform

    info = DatasetInfo("t", ["a"], ["a"], 3, size, style)
    mean = torch.rand(3, size, size) if style == "small" else torch.rand(3, 1, 1)
    image = torch.randint(0, 256, (3, 300, 260) if style == "imagenet" else (3, 32, 32), dtype=torch.uint8)
    views = get_protocol("center", style, size).prepare(image)
    assert views.shape == (1, 3, size, size)
    assert torch.allclose(InputNorm(mean)(views)[0], test_transform(info, mean)(image), atol=1e-6)


# ----------------------------------------------------------------------------- 10-crop geometry


def coordinate_image(height: int, width: int, offset: int = 0) -> torch.Tensor:
    """A float image whose channel 0 holds each pixel's row and channel 1 its column (plus `offset`)."""
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    return torch.stack([rows, cols, torch.zeros(height, width)]) + offset


def test_ten_crop_boxes_imagenet_style():
    image = coordinate_image(256, 320)  # shorter side already 256: the resize leaves it as it is
    views = TenCrop("imagenet", crop=224).prepare(image)
    assert views.shape == (10, 3, 224, 224)
    # (top, left) of the 224 crops in a 256x320 image: corners, then the centre (16, 48)
    boxes = [(0, 0), (0, 96), (32, 0), (32, 96), (16, 48)]
    for view, (top, left) in zip(views[:5], boxes):
        assert torch.equal(view, image[:, top:top + 224, left:left + 224])
    # the other five are the same boxes cut from the mirrored image: a mirrored box, flipped
    mirrored = [(0, 96), (0, 0), (32, 96), (32, 0), (16, 48)]
    for view, (top, left) in zip(views[5:], mirrored):
        assert torch.equal(view, image[:, top:top + 224, left:left + 224].flip(-1))
    assert views[0, 0, 0, 0] == 0 and views[3, 1, 0, 0] == 96 and views[4, 0, 0, 0] == 16


def test_ten_crop_boxes_small_images_come_from_the_padded_image():
    image = coordinate_image(32, 32, offset=1).to(torch.uint8)  # values 1..32, so padding (0) shows
    views = TenCrop("small").prepare(image)
    assert views.shape == (10, 3, 32, 32)
    padded = torch.zeros(3, 40, 40)
    padded[:, 4:36, 4:36] = image.float() / 255
    for view, (top, left) in zip(views[:5], [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]):
        assert torch.allclose(view, padded[:, top:top + 32, left:left + 32], atol=1e-6)
    assert torch.allclose(views[4], image.float() / 255, atol=1e-6)  # the centre crop is the image itself
    assert torch.equal(views[9], views[4].flip(-1))
    assert views[0, 0, :4].abs().sum() == 0 and views[0, 0, 4, 4] == 1 / 255


def test_ten_crop_scores_are_the_mean_of_the_ten_views_softmax():
    model = randomize_bn(create_model("resnet20"))
    norm = InputNorm(torch.rand(3, 32, 32))
    batch = torch.stack([TenCrop("small").prepare(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
                         for _ in range(2)])  # two images: each one's views must stay its own
    with torch.no_grad():
        got = TenCrop("small").scores(model, norm, batch)
        for image, views in enumerate(batch):
            expected = torch.stack([F.softmax(model(norm(v[None])), 1)[0] for v in views]).mean(0)
            assert torch.allclose(got[image], expected, atol=1e-6)


# ----------------------------------------------------------------------------- multi-scale


def test_multiscale_scores_equal_the_mean_of_per_scale_scores():
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet18", num_classes=7))
    norm = InputNorm(torch.tensor([0.4, 0.5, 0.6]), [0.2, 0.3, 0.25])
    scales = (32, 48)
    images = [torch.randint(0, 256, shape, dtype=torch.uint8) for shape in ((3, 40, 50), (3, 50, 40), (3, 40, 50))]
    protocol = MultiScale(scales)
    views, _ = protocol.collate([(protocol.prepare(im), 0) for im in images])
    with torch.no_grad():
        got = protocol.scores(model, norm, views)
        for i, image in enumerate(images):
            per_view = []
            for s in scales:  # computed separately, one image, one scale, one flip at a time
                x = norm(TF.to_dtype(TF.resize(image, [s], antialias=True), torch.float32, scale=True)[None])
                assert min(x.shape[-2:]) == s
                per_view += [F.softmax(model(x), 1)[0], F.softmax(model(x.flip(-1)), 1)[0]]
            assert torch.allclose(got[i], torch.stack(per_view).mean(0), atol=1e-6)


def test_multiscale_defaults():
    assert get_protocol("multiscale", "imagenet").scales == (224, 256, 384, 480, 640)
    assert get_protocol("multiscale", "small", 32).scales == (32,)
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("5crop")


# ----------------------------------------------------------------------------- members and ensemble


class Images(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def test_evaluate_models_members_and_ensemble_against_hand_computation():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (12,), generator=g)
    models = [randomize_bn(create_model(n), seed) for seed, n in enumerate(["resnet20", "plain20", "resnet20"])]
    norms = [InputNorm(torch.rand(3, 32, 32, generator=g)) for _ in models]
    protocol = get_protocol("center", "small", 32)
    result = evaluate_models(models, norms, Images(images, labels, protocol.prepare), protocol, batch_size=5,
                             progress=False)
    x = images.float() / 255
    with torch.no_grad():
        member_probs = [F.softmax(m(n(x)), 1) for m, n in zip(models, norms)]
    for probs, member in zip(member_probs, result["members"]):
        assert member["top1_error"] == pytest.approx((probs.argmax(1) != labels).float().mean().item())
        assert member["loss"] == pytest.approx(F.nll_loss(probs.log(), labels).item(), rel=1e-5)
    mean = sum(member_probs) / 3
    top5 = mean.topk(5, 1).indices
    assert result["ensemble"]["top1_error"] == pytest.approx((mean.argmax(1) != labels).float().mean().item())
    assert result["ensemble"]["top5_error"] == pytest.approx((top5 != labels[:, None]).all(1).float().mean().item())
    assert result["ensemble"]["loss"] == pytest.approx(F.nll_loss(mean.log(), labels).item(), rel=1e-5)


# ----------------------------------------------------------------------------- the command


def save_small_checkpoint(path, name: str, seed: int, mean: torch.Tensor | None):
    from resnet.checkpoint import save_weights

    model = randomize_bn(create_model(name), seed)
    classes = [str(i) for i in range(10)]
    meta = {"model": name, "options": model.options, "classes": classes, "class_names": classes,
            "dataset": "synthetic", "image_size": 32, "style": "small"}
    save_weights(path, model, meta, mean)
    return model


def test_eval_command_json_matches_the_data_packages_test_pipeline(tmp_path, capsys):
    from resnet.data import get_dataset, pixel_mean
    from resnet.data.sampling import balanced_sample
    from resnet.data.transforms import test_transform

    mean = pixel_mean("synthetic")
    a = save_small_checkpoint(tmp_path / "a.safetensors", "resnet20", 0, mean)
    b = save_small_checkpoint(tmp_path / "b.safetensors", "plain20", 1, None)  # falls back to the data's mean
    out = tmp_path / "res.json"
    rc = main(["eval", "--checkpoint", str(tmp_path / "a.safetensors"), "--checkpoint", str(tmp_path / "b.safetensors"),
               "--data", "synthetic", "--limit", "40", "--json", str(out), "--workers", "0", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2" in printed and "top-1 err %" in printed
    result = json.loads(out.read_text())
    assert [m["images"] for m in result["members"]] == [40, 40] and result["ensemble"]["images"] == 40
    dataset = get_dataset("synthetic", "test", transform=test_transform(get_dataset("synthetic").info, mean))
    chosen = balanced_sample(dataset.targets, 40, seed=0).tolist()  # --limit: a balanced sample (tested in test_data)
    x = torch.stack([dataset[i][0] for i in chosen])
    y = torch.tensor([dataset[i][1] for i in chosen])
    with torch.no_grad():
        probs = [F.softmax(m(x), 1) for m in (a, b)]
    for p, member in zip(probs + [(probs[0] + probs[1]) / 2], result["members"] + [result["ensemble"]]):
        assert member["top1_error"] == pytest.approx((p.argmax(1) != y).float().mean().item())
        assert member["loss"] == pytest.approx(F.nll_loss(p.log(), y).item(), rel=1e-4)


def test_eval_command_errors_are_one_line(tmp_path, capsys):
    save_small_checkpoint(tmp_path / "a.safetensors", "resnet20", 0, None)
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.safetensors"), "--data", "synthetic"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "a.safetensors"), "--data", "synthetic",
                 "--scales", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scales" in err
