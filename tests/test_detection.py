"""Detectors on our backbones: C4 structure, frozen BN, every family forward/backward, parity with torchvision's
fasterrcnn_resnet50_fpn, checkpoints, and the predict/eval/export commands on a detector."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import randomize_bn
from torchvision.ops.misc import FrozenBatchNorm2d

from resnet.checkpoint import save_weights
from resnet.cli import main
from resnet.detection import create_detector, detection_loss, load_detector, load_torchvision_detector, save_detector
from resnet import create_model

# small and fast: few proposals and RoIs, a thin FPN, 64-px images
TINY = dict(min_size=64, max_size=64, rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32,
            rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=32, rpn_batch_size_per_image=32,
            box_batch_size_per_image=16, box_detections_per_img=10)


def targets(n: int = 2, size: int = 64, masks: bool = False) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, size, size, generator=g) for _ in range(n)]
    out = []
    for _ in range(n):
        t = {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])}
        if masks:
            t["masks"] = torch.zeros(1, size, size, dtype=torch.uint8)
            t["masks"][:, 10:50, 8:40] = 1
        out.append(t)
    return images, out


def test_c4_trunk_stride_16_and_conv5_per_roi():
    model = create_detector("resnet50", "c4", num_classes=3, in_channels=1, base_width=8, **TINY).eval()
    x = torch.rand(1, 1, 128, 128)
    trunk = model.backbone(x)["0"]
    assert trunk.shape == (1, 32 * 4, 8, 8)  # conv4_x: 4 x base 8 x 4 (bottleneck), 128 / 16
    assert model.backbone.stride == 16 and not hasattr(model.backbone, "layer4")
    seen = {}
    head = model.roi_heads.box_head
    head.layer4.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].shape, out=o.shape))
    model.rpn.register_forward_hook(lambda m, i, o: seen.update(proposals=len(o[0][0])))
    with torch.no_grad():
        model([x[0]])
    rois = seen["inp"][0]
    assert seen["inp"] == (rois, 128, 14, 14) and seen["out"] == (rois, 256, 7, 7)  # RoIAlign 14x14 -> conv5_x 7x7
    assert rois == seen["proposals"] > 0  # every proposal of the RPN goes through conv5_x
    assert model.roi_heads.box_predictor.cls_score.in_features == 256  # after global average pooling


def test_c4_cifar_split_one_stage_earlier():
    model = create_detector("resnet20", "c4", num_classes=3, in_channels=1, **TINY)
    assert model.backbone.stride == 2 and model.backbone.out_channels == 32  # conv1..conv3_x
    assert model.roi_heads.box_head.stage_name == "conv4_x"


def test_pretrained_backbone_frozen_bn_does_not_move(tmp_path):
    net = randomize_bn(create_model("resnet20", in_channels=1, base_width=8))
    net.input_mean = torch.full((1, 28, 28), 0.3)
    save_weights(tmp_path / "cls.safetensors", net)
    model = create_detector("resnet20", "fpn", num_classes=3, backbone_weights=tmp_path / "cls.safetensors", in_channels=1,
                            trainable_stages=2, **TINY)
    body = model.backbone.body
    frozen = [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert torch.allclose(body.bn1.running_var, net.bn1.running_var)  # the weights' statistics, kept
    assert model.transform.image_mean == pytest.approx([0.3]) and model.transform.image_std == [1.0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss, _ = detection_loss(model, *targets())
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    bn_keys = [k for k in before if "bn" in k or "downsample.1" in k]
    assert bn_keys and all(torch.equal(before[k], after[k]) for k in bn_keys)
    assert torch.equal(before["backbone.body.layer1.0.conv1.weight"], after["backbone.body.layer1.0.conv1.weight"])
    assert torch.equal(before["backbone.body.conv1.weight"], after["backbone.body.conv1.weight"])
    assert not torch.equal(before["backbone.body.layer3.0.conv1.weight"], after["backbone.body.layer3.0.conv1.weight"])


@pytest.mark.parametrize("backbone, head, masks, options", [
    ("resnet18", "c4", False, {"base_width": 8}),
    ("plain18", "fpn", True, {"base_width": 8}),
    ("resnet50", "fpn", False, {"base_width": 4, "bottleneck_stride": "3x3"}),
    ("resnet50", "c4", True, {"base_width": 4, "shortcut": "C"}),
    ("resnet20", "fpn", False, {"base_width": 4}),
    ("plain20", "c4", False, {}),
    ("resnet32", "c4", True, {"shortcut": "B", "base_width": 8}),
    ("resnet20", "fpn", True, {"shortcut": "A", "base_width": 4}),
])
def test_every_family_forward_backward(backbone, head, masks, options):
    model = create_detector(backbone, head, masks, num_classes=3, in_channels=1, fpn_channels=16, **options, **TINY) \
        if head == "fpn" else create_detector(backbone, head, masks, num_classes=3, in_channels=1, **options, **TINY)
    model.train()
    loss, parts = detection_loss(model, *targets(masks=masks))
    loss.backward()
    assert torch.isfinite(loss) and ("loss_mask" in parts) == masks
    assert model.backbone.body.conv1.weight.grad is not None if head == "fpn" else model.backbone.conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(targets()[0])
    assert out[0]["boxes"].shape[1] == 4 and ("masks" in out[0]) == masks


@pytest.mark.parametrize("backbone", ["resnet20", "resnet1202", "resnet152", "plain34"])
def test_fpn_anchors_match_the_maps(backbone):
    model = create_detector(backbone, "fpn", num_classes=2, base_width=4, fpn_channels=8)
    maps = len(model.backbone.body.stages) + 1  # every stage and the max-pool level
    assert len(model.rpn.anchor_generator.sizes) == maps
    assert model.roi_heads.box_roi_pool.featmap_names == [str(i) for i in range(maps - 1)]


def test_parity_with_torchvision_fasterrcnn_resnet50_fpn():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    settings = dict(num_classes=5, min_size=128, max_size=160, box_score_thresh=0.0, box_detections_per_img=30)
    theirs = randomize_bn(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **settings))
    ours = create_detector("resnet50", "fpn", bottleneck_stride="3x3", shortcut="B", **settings)
    load_torchvision_detector(ours, theirs.state_dict(), "fasterrcnn_resnet50_fpn")
    ours.eval()
    images = [torch.rand(3, 120, 150, generator=torch.Generator().manual_seed(1)),
              torch.rand(3, 140, 100, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        expected, got = theirs(images), ours(images)
    for e, g in zip(expected, got):
        assert len(e["boxes"]) > 0
        assert torch.equal(e["labels"], g["labels"])
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-5, rtol=0)


def test_unknown_option_and_bad_trainable_stages():
    with pytest.raises(ValueError, match="unknown detector option.*min_sise"):
        create_detector("resnet20", num_classes=3, min_sise=64)
    with pytest.raises(ValueError, match="trainable_stages=5"):
        create_detector("resnet20", num_classes=3, trainable_stages=5)
    with pytest.raises(ValueError, match="counts the background"):
        create_detector("resnet20", num_classes=3, class_names=["a", "b", "c"])


@pytest.fixture(scope="module")
def saved_detector(tmp_path_factory):
    """A tiny Mask R-CNN (C4, resnet20) checkpoint, every box kept, and a scene image."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("det")
    torch.manual_seed(0)
    model = create_detector("resnet20", "c4", True, class_names=["cat", "dog"], in_channels=1, base_width=8,
                            **{**TINY, "box_score_thresh": 0.0})
    path = save_detector(folder / "det.safetensors", model)
    g = torch.Generator().manual_seed(3)
    image = (torch.rand(64, 80, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(image).save(folder / "scene.png")
    return model.eval(), path, folder / "scene.png"


def test_checkpoint_roundtrip(saved_detector):
    model, path, _ = saved_detector
    loaded = load_detector(path)
    assert loaded.spec == model.spec and loaded.meta["class_names"] == ["cat", "dog"]
    x = [torch.rand(1, 64, 64)]
    with torch.no_grad():
        a, b = model(x)[0], loaded(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])


def test_predict_command(saved_detector, tmp_path, capsys):
    _, path, image = saved_detector
    draw, out = tmp_path / "drawn", tmp_path / "p.json"
    assert main(["predict", str(image), "--checkpoint", str(path), "--json", "--score-threshold", "0",
                 "--draw", str(draw), "--out", str(out)]) == 0
    results = json.loads(capsys.readouterr().out)
    detections = results[0]["detections"]
    assert detections and {d["class"] for d in detections} <= {"cat", "dog"}
    assert set(detections[0]) == {"box", "category_id", "class", "score", "mask"}
    assert detections[0]["mask"]["size"] == [64, 80]
    assert json.loads(out.read_text()) == results
    from PIL import Image

    assert Image.open(draw / "scene.png").size == (80, 64)
    assert main(["predict", str(image), "--checkpoint", str(path), "--out", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text().startswith("image,rank,category_id,class,score,x1,y1,x2,y2,mask_rle")


def test_export_command_checks_onnxruntime(saved_detector, tmp_path, capsys):
    _, path, image = saved_detector
    out = tmp_path / "det.onnx"
    assert main(["export", "--checkpoint", str(path), "--out", str(out), "--image", str(image), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["detections"] > 0
    assert report["max_abs_diff_boxes"] <= 0.05 and report["outputs"] == ["boxes", "labels", "scores", "masks"]
