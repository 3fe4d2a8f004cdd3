"""Networks against independent references: torchvision's models and the paper's numbers."""

import json

import pytest
import torch
import torchvision

from resnet import create_model, list_models
from resnet.cli import main
from resnet.summary import count_params, summarize

TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
PAPER_MACS = {"resnet18": 1.8e9, "resnet34": 3.6e9, "resnet50": 3.8e9, "resnet101": 7.6e9, "resnet152": 11.3e9,
              "plain34": 3.6e9}
PAPER_CIFAR_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6, 1202: 19.4e6}


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_state_dict_loads_and_gives_same_logits(depth):
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")().eval()
    for m in reference.modules():  # non-trivial BN statistics so the comparison means something
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    ours = create_model(f"resnet{depth}", bottleneck_stride="3x3").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() < 1e-5
    assert count_params(ours) == TORCHVISION_PARAMS[depth]


@pytest.mark.parametrize("name", list(PAPER_MACS))
def test_multiply_adds_match_paper(name):
    total = summarize(create_model(name))[-1].macs
    assert abs(total - PAPER_MACS[name]) / PAPER_MACS[name] < 0.03


def test_torchvision_stride_placement_costs_more():
    """v1.5 (stride in the 3x3) is known to cost ~4.1 GMACs against the paper's 3.8."""
    total = summarize(create_model("resnet50", bottleneck_stride="3x3"))[-1].macs
    assert 4.0e9 < total < 4.2e9


@pytest.mark.parametrize("depth", list(PAPER_CIFAR_PARAMS))
def test_cifar_params_match_paper(depth):
    params = count_params(create_model(f"resnet{depth}"))
    assert round(params / 1e6, 2 if depth < 110 else 1) == pytest.approx(PAPER_CIFAR_PARAMS[depth] / 1e6)


@pytest.mark.parametrize("depth,plain", [(20, "plain20"), (56, "plain56"), (34, "plain34")])
def test_shortcut_options_parameter_order(depth, plain):
    base = count_params(create_model(plain))
    counts = {s: count_params(create_model(f"resnet{depth}", shortcut=s)) for s in "ABC"}
    assert counts["A"] == base < counts["B"] < counts["C"]


def test_shortcut_a_is_zero_padded_subsampled_identity():
    model = create_model("resnet20").eval()
    block = model.layer2[0]
    x = torch.randn(1, 16, 8, 8)
    shortcut = block.downsample(x)
    assert shortcut.shape == (1, 32, 4, 4)
    assert torch.equal(shortcut[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(shortcut[:, 16:]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shortcut_a_gradient_is_the_strided_slices(dtype):
    """Option A subsamples with a 1x1 pooling (faster on a CPU): its values and its gradient are exactly those of
    x[:, :, ::2, ::2], also in channels_last and bf16, the trainer's form on a CPU."""
    shortcut = create_model("resnet20").layer3[0].downsample
    x = torch.randn(3, 32, 7, 7, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
    out = shortcut(x)
    upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, upstream)
    reference = x.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(reference[:, :, ::2, ::2], reference, upstream[:, :32])
    assert out.shape == (3, 64, 4, 4) and torch.equal(out[:, :32], x[:, :, ::2, ::2])
    assert torch.equal(grad, expected)


def test_shortcut_a_zeros_split_before_and_after_and_recorded(tmp_path):
    """zero_pad="both" (akamaster's layout): 8 zero channels, the identity's 16, 8 zero channels."""
    from resnet.checkpoint import save_weights
    from resnet.weights import load_model

    model = create_model("resnet20", zero_pad="both").eval()
    x = torch.randn(1, 16, 8, 8)
    shortcut = model.layer2[0].downsample(x)
    assert shortcut.shape == (1, 32, 4, 4) and "zero_pad='both'" in repr(model.layer2[0].downsample)
    assert torch.equal(shortcut[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(shortcut[:, :8]) == 0 and torch.count_nonzero(shortcut[:, 24:]) == 0
    assert create_model("resnet20").options["zero_pad"] == "after"  # the default: fb.resnet.torch's layout
    assert "zero_pad" not in create_model("resnet18").options  # no option A, nothing to record
    save_weights(tmp_path / "w.safetensors", model)  # the layout is in the checkpoint's options and comes back
    again = load_model(tmp_path / "w.safetensors")
    assert again.options["zero_pad"] == "both" and again.layer3[0].downsample.zero_pad == "both"
    y = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(y), model(y))


def test_plain_block_has_no_shortcut():
    model = create_model("plain20").eval()
    block = model.layer1[0]
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(block.branch(x)))
        residual = create_model("resnet20").layer1[0].eval()
        residual.load_state_dict(block.state_dict())
        assert torch.allclose(residual(x), torch.relu(block.branch(x) + x))


def test_bottleneck_stride_placement():
    paper = create_model("resnet50").layer2[0]
    tv = create_model("resnet50", bottleneck_stride="3x3").layer2[0]
    assert paper.conv1.stride == (2, 2) and paper.conv2.stride == (1, 1)
    assert tv.conv1.stride == (1, 1) and tv.conv2.stride == (2, 2)


def test_zero_init_residual_makes_blocks_identity_at_start():
    model = create_model("resnet18", zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for layer in model.stages for b in layer)
    assert torch.count_nonzero(create_model("resnet18").layer1[0].bn2.weight) > 0


def test_he_initialisation_variance():
    conv = create_model("resnet56").layer2[1].conv1  # 32 filters 3x3: fan_out = 32*9
    expected_std = (2.0 / (32 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.1)


def test_forward_features_names_and_shapes():
    model = create_model("resnet50").eval()
    feats = model.forward_features(torch.randn(1, 3, 224, 224))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "conv2_x": (256, 56, 56), "conv3_x": (512, 28, 28), "conv4_x": (1024, 14, 14), "conv5_x": (2048, 7, 7)}
    cifar = create_model("resnet20", in_channels=1).eval()
    feats = cifar.forward_features(torch.randn(1, 1, 32, 32))
    assert [tuple(v.shape[1:]) for v in feats.values()] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert [f["stride"] for f in cifar.feature_info] == [1, 2, 4]


@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("resnet1202", "resnet200", "resnet152")])
def test_every_registered_model_forward_backward(name):
    model = create_model(name, num_classes=7)
    size = 64 if model.spec.family == "imagenet" else 32
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_name_and_bad_option_say_what_is_allowed():
    with pytest.raises(ValueError, match="resnet50"):
        create_model("resnet05")
    with pytest.raises(ValueError, match="'A', 'B', 'C'"):
        create_model("resnet20", shortcut="D")
    with pytest.raises(ValueError, match="1x1"):
        create_model("resnet50", bottleneck_stride="2x2")
    with pytest.raises(ValueError, match="'after', 'both'"):
        create_model("resnet20", zero_pad="before")


def test_summary_command(capsys):
    assert main(["summary", "resnet34", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data["rows"]] == ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "fc", "total"]
    assert data["rows"][-1]["params"] == TORCHVISION_PARAMS[34]
    assert main(["summary", "resnet110"]) == 0
    assert "conv4_x" in capsys.readouterr().out
    assert main(["summary", "resnet111"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_one_create_model():
    """`resnet.create_model` is the only create_model: without weights it builds what resnet.models.build_model
    builds (the same layers and initial weights from the same seed); the models package has no twin."""
    import resnet
    import resnet.models
    import resnet.weights
    from resnet.models import build_model

    assert resnet.create_model is resnet.weights.create_model
    assert not hasattr(resnet.models, "create_model")
    torch.manual_seed(0)
    ours = resnet.create_model("resnet20", shortcut="B")
    torch.manual_seed(0)
    bare = build_model("resnet20", shortcut="B")
    assert ours.options == bare.options
    assert ours.state_dict().keys() == bare.state_dict().keys()
    assert all(torch.equal(ours.state_dict()[k], bare.state_dict()[k]) for k in bare.state_dict())
