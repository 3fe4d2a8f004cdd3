"""Real CIFAR-10 weights (akamaster/pytorch_resnet_cifar10, in ../shared/weights/): our nets with them against an
independent forward pass written here from the paper, option A's zero layout, conversion, names and commands.

The reference below is written from section 4.2 and Table 3 (option A), over the file's own state dict (its
`module.` and `linear` names), with F.conv2d and BN's formula; it shares no code with resnet.models.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import resnet
from resnet import weights
from resnet.weights import load_model
from resnet.cli import main
from resnet.evaluate import input_norm

SHARED = Path(__file__).resolve().parents[2] / "shared" / "weights"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent (present on every developer machine "
                                                             f"and in CI)")
FILES = {20: "akamaster-resnet20-12fca82f.th", 32: "akamaster-resnet32-d509ac18.th",
         44: "akamaster-resnet44-014dd654.th", 56: "akamaster-resnet56-4bfd9763.th"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EPS = 1e-5  # BatchNorm2d's default, as in the source's nets


def raw_state(depth: int) -> dict[str, torch.Tensor]:
    """The file's state dict as saved, `module.` removed (DataParallel's prefix), float64 for the reference."""
    saved = torch.load(SHARED / FILES[depth], map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("module."): v.double() for k, v in saved.items()}


def batch_norm(x: torch.Tensor, s: dict, name: str) -> torch.Tensor:
    """BN at test time, by its formula: gamma (x - running mean) / sqrt(running var + eps) + beta, per channel."""
    shape = (1, -1, 1, 1)
    mean, var = s[f"{name}.running_mean"].view(shape), s[f"{name}.running_var"].view(shape)
    return s[f"{name}.weight"].view(shape) * (x - mean) / torch.sqrt(var + EPS) + s[f"{name}.bias"].view(shape)


def zero_padded_identity(x: torch.Tensor, width: int, stride: int, zeros: str) -> torch.Tensor:
    """Option A: the identity subsampled by taking every `stride`-th pixel, and zero channels up to `width`:
    half before and half after ("both"), or all after ("after")."""
    x = x[:, :, ::stride, ::stride]
    extra = width - x.shape[1]
    before = extra // 2 if zeros == "both" else 0
    blank = lambda c: x.new_zeros(x.shape[0], c, x.shape[2], x.shape[3])  # noqa: E731
    return torch.cat([blank(before), x, blank(extra - before)], dim=1)


def paper_cifar_net(s: dict, x: torch.Tensor, n: int, zeros: str = "both") -> torch.Tensor:
    """Section 4.2: 3x3 conv with 16 filters, three stages of n basic blocks with 16/32/64 filters (the first
    block of stages 2 and 3 strides by 2), global average pool, a 10-way fc. Each block: conv-BN-ReLU-conv-BN,
    plus the shortcut (identity or option A), then ReLU."""
    x = F.relu(batch_norm(F.conv2d(x, s["conv1.weight"], padding=1), s, "bn1"))
    for stage, width in enumerate((16, 32, 64), start=1):
        for block in range(n):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.relu(batch_norm(F.conv2d(x, s[f"{p}.conv1.weight"], stride=stride, padding=1), s, f"{p}.bn1"))
            out = batch_norm(F.conv2d(out, s[f"{p}.conv2.weight"], padding=1), s, f"{p}.bn2")
            shortcut = x if stride == 1 and x.shape[1] == width else zero_padded_identity(x, width, stride, zeros)
            x = F.relu(out + shortcut)
    return x.mean(dim=(2, 3)) @ s["linear.weight"].T + s["linear.bias"]


def normalised(images: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std on 0..1 pixels, as the weights were trained."""
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def ours(depth: int, **options) -> torch.nn.Module:
    return resnet.create_model(f"resnet{depth}", pretrained=SHARED / FILES[depth], **options).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_the_shared_files_are_the_published_ones():
    """Each file's SHA-256 starts with the 8 hex digits in its name and in its entry (torch.hub's convention)."""
    for depth, file in FILES.items():
        entry = weights.WEIGHTS[f"resnet{depth}.akamaster-cifar10"]
        digest = hashlib.sha256((SHARED / file).read_bytes()).hexdigest()
        assert digest.startswith(entry.sha256_prefix) and file.endswith(entry.file_name), file
        assert weights.entry_for_file(SHARED / file) is entry


@pytest.mark.parametrize("depth", sorted(FILES))
def test_first_conv_bn_relu_by_hand(depth, images):
    s, model = raw_state(depth), ours(depth)
    x = normalised(images)
    assert torch.allclose(input_norm(model)(images), x.float(), atol=1e-6)  # the net's own normalisation
    by_hand = F.relu(batch_norm(F.conv2d(x.double(), s["conv1.weight"], padding=1), s, "bn1"))
    with torch.no_grad():
        got = model.stem(x.float())
    assert (got.double() - by_hand).abs().max() < 1e-5


@pytest.mark.parametrize("depth", sorted(FILES))
def test_whole_net_against_the_papers_construction(depth, images):
    """Our net with the weights equals the reference with zeros on both sides; the other layout does not."""
    s, model, n = raw_state(depth), ours(depth), (depth - 2) // 6
    x = normalised(images)
    reference = paper_cifar_net(s, x.double(), n, zeros="both")
    with torch.no_grad():
        logits = model(x.float()).double()
    assert (logits - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert torch.equal(logits.argmax(1), reference.argmax(1))
    # The option matters: the same weights under zeros-after (our default) give other logits and classes,
    # and that net equals the reference written with zeros after, so each layout computes what it says.
    after = resnet.create_model(f"resnet{depth}", zero_pad="after").eval()
    after.load_state_dict(model.state_dict())
    with torch.no_grad():
        wrong = after(x.float()).double()
    assert (wrong - reference).abs().max() > 0.5
    assert (wrong - paper_cifar_net(s, x.double(), n, zeros="after")).abs().max() <= 1e-5 * wrong.abs().max()


def test_the_weights_entry_and_model_record_the_layout_and_preprocessing():
    model = ours(20)
    assert model.options["shortcut"] == "A" and model.options["zero_pad"] == "both"
    assert model.meta["classes"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]
    assert model.meta["image_size"] == 32 and model.meta["style"] == "small"
    assert model.input_mean.flatten().tolist() == pytest.approx(MEAN)
    assert model.input_std.flatten().tolist() == pytest.approx(STD)
    assert model.meta["weights"] == "resnet20.akamaster-cifar10"
    assert resnet.create_model("resnet20").options["zero_pad"] == "after"  # the default is unchanged
    with pytest.raises(ValueError, match="zero_pad"):
        ours(20, zero_pad="after")
    with pytest.raises(ValueError, match="resnet20.akamaster-cifar10, for resnet20, not resnet32"):
        resnet.create_model("resnet32", pretrained=SHARED / FILES[20])


def test_a_renamed_file_is_recognised_by_its_key_names(tmp_path, images):
    shutil.copy(SHARED / FILES[20], tmp_path / "mine.th")
    model = resnet.create_model("resnet20", pretrained=tmp_path / "mine.th").eval()
    assert model.options["zero_pad"] == "both" and model.meta["weights"] == str(tmp_path / "mine.th")
    with torch.no_grad():
        assert torch.allclose(model(images), ours(20)(images))


@pytest.mark.parametrize("depth", sorted(FILES))
def test_convert_each_file(tmp_path, capsys, depth, images):
    out = tmp_path / f"resnet{depth}.safetensors"
    assert main(["convert", str(SHARED / FILES[depth]), "--from", "akamaster", "--model", f"resnet{depth}",
                 "--out", str(out)]) == 0
    assert "zero channels both" in capsys.readouterr().out
    converted = load_model(out)
    assert converted.options["zero_pad"] == "both" and converted.meta["classes"][0] == "airplane"
    assert converted.meta["image_size"] == 32 and converted.meta["dataset"] == "cifar10"
    with torch.no_grad():
        assert torch.equal(converted(images), ours(depth)(images))
    assert main(["convert", str(SHARED / FILES[depth]), "--from", "akamaster", "--model", "resnet50",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "only the CIFAR nets" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_weights_are_refused_by_convert_and_init(tmp_path, capsys, bad):
    saved = torch.load(SHARED / FILES[20], map_location="cpu", weights_only=True)
    saved["state_dict"]["module.layer2.0.conv1.weight"][0, 0, 0, 0] = bad
    torch.save(saved, tmp_path / "diverged.th")
    out = tmp_path / "x.safetensors"
    assert main(["convert", str(tmp_path / "diverged.th"), "--from", "akamaster", "--model", "resnet20",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(tmp_path / "diverged.th") in err and "NaN or infinite" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "diverged.th"]
    with pytest.raises(ValueError, match="NaN or infinite"):
        resnet.create_model("resnet20", pretrained=tmp_path / "diverged.th")


def test_predict_on_the_real_weights_gives_a_distribution(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i, size in enumerate(((32, 32), (40, 56), (28, 28))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["predict", str(tmp_path), "--checkpoint", str(SHARED / FILES[56]), "--top", "10", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 3
    for r in results:
        probs = [t["probability"] for t in r["top"]]
        assert all(0 <= p <= 1 for p in probs) and sum(probs) == pytest.approx(1, abs=1e-5)
        assert {t["class"] for t in r["top"]} == set(weights.CIFAR10_CLASSES)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A torch.hub cache holding the shared files under their upstream names (as a download leaves them)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    folder = tmp_path / "torch-home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for depth, file in FILES.items():
        (folder / weights.WEIGHTS[f"resnet{depth}.akamaster-cifar10"].file_name).symlink_to(SHARED / file)
    return folder


def test_names_work_everywhere_from_the_cache(hub_cache, tmp_path, capsys, images):
    """create_model, --init, eval, predict and export take `resnet20.akamaster-cifar10` (no network: cached)."""
    from test_data import write_cifar  # CIFAR-10's real on-disk format, random images

    named = resnet.create_model("resnet20", pretrained="akamaster-cifar10").eval()
    with torch.no_grad():
        assert torch.equal(named(images), ours(20)(images))
    from resnet.train.finetune import read_init

    _, options, _ = read_init("resnet20", "resnet20.akamaster-cifar10", {})
    assert options == {"shortcut": "A", "zero_pad": "both"}  # what `--init` builds the net with

    loaded = load_model("resnet20.akamaster-cifar10")
    assert loaded.meta["model"] == "resnet20" and loaded.meta["options"]["zero_pad"] == "both"
    write_cifar(tmp_path / "cifar")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", "resnet20.akamaster-cifar10", "--data", "cifar10", "--data-dir",
                 str(tmp_path / "cifar"), "--no-progress", "--workers", "0", "--json", str(tmp_path / "e.json")]) == 0
    assert "resnet20.akamaster-cifar10" in capsys.readouterr().out + (tmp_path / "e.json").read_text()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", "resnet20.akamaster-cifar10"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] in weights.CIFAR10_CLASSES
    pytest.importorskip("onnxruntime")
    assert main(["export", "--checkpoint", "resnet20.akamaster-cifar10", "--out", str(tmp_path / "m.onnx"),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_diff"] < 1e-3 and "input_std" in report["metadata"]
    assert main(["eval", "--checkpoint", "resnet20.akamaster-cifar1", "--data", "cifar10", "--data-dir",
                 str(tmp_path / "cifar")]) == 2
    assert "did you mean resnet20.akamaster-cifar10" in capsys.readouterr().err


def test_weights_lists_the_cifar_names(capsys):
    assert main(["weights", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    published = {20: 8.27, 32: 7.37, 44: 6.90, 56: 6.61, 110: 6.32, 1202: 6.18}
    for depth, error in published.items():
        row = rows[f"resnet{depth}.akamaster-cifar10"]
        assert row["error"] == pytest.approx(error) and row["dataset"] == "cifar10" and row["crop"] == 32
        assert row["url"].startswith("https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/")
        assert row["url"].endswith(f"resnet{depth}-{row['sha256']}.th")
        assert row["options"] == {"shortcut": "A", "zero_pad": "both"}
        assert row["mean"] == list(MEAN) and row["std"] == list(STD)
    assert main(["weights", "--model", "resnet56"]) == 0
    assert "akamaster-cifar10" in capsys.readouterr().out
