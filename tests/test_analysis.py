"""Layer responses (Fig. 7): the hooked stds equal stds computed by calling the modules by hand."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from resnet.evaluate.analysis import layer_responses, response_layers
from resnet import create_model
from helpers import randomize_bn



def test_only_3x3_layers_in_network_order():
    assert len(response_layers(create_model("resnet20"))) == 18  # 6n, the stem left out
    assert len(response_layers(create_model("plain56"))) == 54
    layers = response_layers(create_model("resnet50"))
    assert len(layers) == 16 and all(name.endswith("bn2") for name, _ in layers)  # one 3x3 per bottleneck
    assert [n for n, _ in response_layers(create_model("resnet18"))][:3] == ["layer1.0.bn1", "layer1.0.bn2",
                                                                             "layer1.1.bn1"]


def responses_by_hand(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's BN outputs after its 3x3 convs, computed by calling the block's modules directly."""
    out = []
    h = F.relu(model.bn1(model.conv1(x)))
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            a = block.bn1(block.conv1(h))
            b = block.bn2(block.conv2(F.relu(a)))
            out += [a, b]
            if block.residual:
                b = b + (h if block.downsample is None else block.downsample(h))
            h = F.relu(b)
    return out


@pytest.mark.parametrize("name", ["plain20", "resnet20"])
def test_stds_equal_hand_computed_ones_over_several_batches(name):
    model = randomize_bn(create_model(name), seed=1)
    batches = [torch.randn(6, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    got = layer_responses(model, iter(batches))
    with torch.no_grad():
        per_batch = [responses_by_hand(model, x) for x in batches]
        expected = [torch.cat([r[i].flatten() for r in per_batch]).double().std().item() for i in range(18)]
    assert [r["index"] for r in got] == list(range(1, 19))
    assert [r["std"] for r in got] == pytest.approx(expected, rel=1e-6)


def test_plot_and_command_write_json_and_png(tmp_path, capsys):
    from resnet.cli import main
    from resnet.checkpoint import save_weights

    for name in ("plain20", "resnet20"):
        model = randomize_bn(create_model(name))
        meta = {"model": name, "options": model.options, "image_size": 32, "style": "small"}
        save_weights(tmp_path / f"{name}.safetensors", model, meta, torch.full((3, 32, 32), 0.3))
    rc = main(["analyze", "responses", "--checkpoint", str(tmp_path / "plain20.safetensors"), "--checkpoint",
               str(tmp_path / "resnet20.safetensors"), "--data", "synthetic", "--images", "24", "--batch-size", "10",
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    result = json.loads((tmp_path / "out" / "responses.json").read_text())
    assert [n["model"] for n in result["networks"]] == ["plain20", "resnet20"]
    assert [n["residual"] for n in result["networks"]] == [False, True]
    assert all(len(n["layers"]) == 18 and n["images"] == 24 for n in result["networks"])
    png = (tmp_path / "out" / "responses.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plain20: 18 3x3 layers" in capsys.readouterr().out
