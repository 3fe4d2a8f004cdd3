"""Weights from torchvision and timm: same logits as the source model; clear errors for files that do not fit."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.transforms import v2

from resnet.cli import main
from resnet.convert import convert, read_state_dict
from resnet.evaluate import input_norm
from resnet.weights import load_model
from helpers import randomize_bn as randomize



def assert_same_logits(ours: torch.nn.Module, source: torch.nn.Module, size: int = 64) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = source(x), ours(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weights_give_the_same_logits(tmp_path, name):
    source = randomize(getattr(torchvision.models, name)(weights=None))
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    report = convert("torchvision", tmp_path / "tv.pth", name, tmp_path / "ours.safetensors")
    assert report["num_classes"] == 1000
    ours = load_model(tmp_path / "ours.safetensors")
    assert ours.options["bottleneck_stride"] == "3x3"
    assert_same_logits(ours, source)
    # the whole preprocessing too: our normalisation of a 0..1 image equals torchvision's Normalize
    image = torch.rand(3, 64, 64)
    normalize = v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert torch.allclose(input_norm(ours)(image[None]), normalize(image)[None], atol=1e-6)
    assert ours.meta["classes"][:3] == ["0", "1", "2"] and ours.meta["style"] == "imagenet"


def test_paper_stride_placement_would_not_match(tmp_path):
    """The check above is sensitive to the stride placement: the paper's 1x1 placement gives other logits."""
    from resnet import create_model

    source = randomize(torchvision.models.resnet50(weights=None))
    paper = create_model("resnet50", bottleneck_stride="1x1").eval()
    paper.load_state_dict(source.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (paper(x) - source(x)).abs().max() > 1e-3


def test_timm_safetensors_weights_give_the_same_logits(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm) to compare against")
    source = randomize(timm.create_model("resnet18", pretrained=False, num_classes=10))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    (tmp_path / "names.txt").write_text("\n".join(f"class {i}" for i in range(10)))
    rc = main(["convert", "--from", "timm", str(tmp_path / "timm.safetensors"), "--model", "resnet18",
               "--out", str(tmp_path / "ours.safetensors"), "--classes", str(tmp_path / "names.txt")])
    assert rc == 0
    ours = load_model(tmp_path / "ours.safetensors")
    assert ours.fc.out_features == 10 and ours.meta["class_names"][9] == "class 9"
    assert_same_logits(ours, source)


def test_mismatched_keys_are_listed(tmp_path, capsys):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    rc = main(["convert", "--from", "torchvision", str(tmp_path / "r18.pth"), "--model", "resnet34",
               "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "missing: layer1.2.bn1.bias" in err and "r18.pth" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_mismatched_shapes_are_listed(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as e:
        convert("torchvision", tmp_path / "bad.pth", "resnet18", tmp_path / "x.safetensors")
    assert "shape mismatch: layer2.0.conv1.weight (128, 32, 3, 3) vs (128, 64, 3, 3)" in str(e.value)
    assert "unexpected: extra.weight" in str(e.value)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_run(tmp_path, capsys):
    torch.save({"conv1.weight": torch.zeros(1), "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth: not a readable state dict"):
        read_state_dict(tmp_path / "evil.pth")
    assert "pickled code ran" not in capsys.readouterr().out


def test_wrapped_training_checkpoints_and_cifar_models(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pth")
    assert set(read_state_dict(tmp_path / "w.pth")) == set(state)
    with pytest.raises(ValueError, match="only the ImageNet nets"):
        convert("torchvision", tmp_path / "w.pth", "resnet20", tmp_path / "x.safetensors")
