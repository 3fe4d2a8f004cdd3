"""Fine-tuning (`train --init`): weights loaded as they are, a new classifier, frozen stages, lr groups,
the weights' normalisation in training and in the checkpoint, exact resume, and the benefit over scratch."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import v2

import resnet
from resnet import checkpoint
from resnet.cli import main
from resnet.data.loaders import TensorLoader
from resnet.train import finetune
from resnet.train.loop import Interrupted, train
from resnet.train.recipes import get_recipe
from resnet.train.schedule import LRSchedule
from helpers import randomize_bn, write_idx

TINY = {"base_width": 4}
SYNTHETIC_EVAL = dict(device="cpu", eval_subset=16, val_split=False)


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{which}.safetensors"))


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    """A run directory of resnet20 (base width 4) trained 8 steps on a tiny Fashion-MNIST folder, the init weights."""
    from conftest import learnable_images

    folder = tmp_path_factory.mktemp("source")
    images, labels = learnable_images(256, seed=5)
    write_idx(folder / "train-images-idx3-ubyte", images)
    write_idx(folder / "train-labels-idx1-ubyte", labels)
    write_idx(folder / "t10k-images-idx3-ubyte", images[:32])
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[:32])
    recipe = get_recipe("paper-cifar", iters=8, batch_size=32, val_split=False, device="cpu")
    out = tmp_path_factory.mktemp("init") / "run"
    train("resnet20", "fashion-mnist", data_dir=str(folder), recipe=recipe, out=out, model_options=TINY,
          progress=False)
    return out


@pytest.mark.parametrize("name,freeze", [("resnet18", 4), pytest.param("resnet50", None, marks=pytest.mark.slow)])
def test_torchvision_state_dict_as_init(tmp_path, capsys, name, freeze):
    """torchvision's own net, saved as a file: after --init and one step at a tiny lr, the backbone is the file's."""
    source = randomize_bn(getattr(torchvision.models, name)(weights=None))
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    run = tmp_path / "run"
    args = ["train", "--model", name, "--data", "synthetic", "--init", str(tmp_path / "tv.pth"), "--recipe",
            "finetune", "--iters", "1", "--batch-size", "8", "--lr", "1e-12", "--eval-subset", "16",
            "--device", "cpu", "--out", str(run), "--no-progress"] + (["--freeze", str(freeze)] if freeze else [])
    assert main(args) == 0
    assert "fc: 1000 -> 10 classes, re-initialised" in capsys.readouterr().out.splitlines()
    state = weights(run)
    assert state["fc.weight"].shape == (10, source.fc.in_features) and state["fc.bias"].shape == (10,)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert set(backbone) == set(state) - {"fc.weight", "fc.bias", "input_mean", "input_std"}
    for key, tensor in backbone.items():
        if freeze is not None or tensor.is_floating_point() and "running" not in key:
            assert torch.allclose(state[key], tensor, rtol=0, atol=1e-9), key  # lr 1e-12: changes ~1e-12
        if freeze is not None:  # frozen: BN statistics kept too, bit for bit
            assert torch.equal(state[key], tensor), key
    model = resnet.load_model(run, which="last")
    assert model.options["bottleneck_stride"] == ("3x3" if name == "resnet50" else "1x1")  # v1.5, as the file's
    assert model.input_std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    assert model.input_mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads((run / "config.json").read_text())["init"]["weights"] == str(tmp_path / "tv.pth")

    # the result works with the other commands
    assert main(["eval", "--checkpoint", str(run), "--data", "synthetic", "--limit", "16", "--no-progress",
                 "--workers", "0"]) == 0
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "a.png"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["top"]) == 5
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff"] < 1e-3


def test_training_normalises_as_the_init_weights_expect(tmp_path):
    """The loader's (x - data mean) batches become (x - mean) / std, as torchvision's Normalize computes them."""
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    data_mean = images.float().div(255).mean(0)  # per pixel, as our datasets' means
    net = resnet.create_model("resnet18", num_classes=4)
    net.input_mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    net.input_std = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    loader = TensorLoader(images, torch.zeros(6, dtype=torch.long), data_mean, 6, train=False)
    train_loader, evals = finetune.renormalise(net, data_mean, loader, {"test": loader})
    expected = v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(images.float() / 255)
    for got in (next(iter(train_loader))[0], next(iter(evals["test"]))[0]):
        assert torch.allclose(got, expected, atol=1e-5)
    assert len(train_loader) == 1
    net.input_mean, net.input_std = data_mean, None  # our own mean-only weights: the loaders as they are
    assert finetune.renormalise(net, data_mean, loader, {})[0] is loader


def test_freeze_keeps_stem_and_first_stages_fixed_bn_included(tiny_fashion, tmp_path, pretrained_run):
    init = pretrained_run
    before = weights(init, "best")
    recipe = get_recipe("finetune", iters=6, batch_size=32, lr=0.1, device="cpu", freeze=2)
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=recipe, out=tmp_path / "ft",
          model_options=TINY, init=init, progress=False)
    after = weights(tmp_path / "ft")
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    for key, tensor in before.items():
        if key.startswith(frozen):
            assert torch.equal(after[key], tensor), key
    assert not torch.equal(after["layer3.0.conv1.weight"], before["layer3.0.conv1.weight"])
    assert not torch.equal(after["layer3.0.bn1.running_mean"], before["layer3.0.bn1.running_mean"])
    with pytest.raises(ValueError, match="--freeze 4; resnet20 has 3 stages"):
        train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=get_recipe("finetune", freeze=4),
              out=tmp_path / "bad", model_options=TINY, init=init, progress=False)


def test_head_lr_and_no_decay_on_bn_and_biases(tiny_fashion, tmp_path, pretrained_run):
    recipe = get_recipe("finetune", iters=3, batch_size=32, head_lr_mult=7.0, device="cpu")
    net = resnet.create_model("resnet20", **TINY)
    names = {id(p): n for n, p in net.named_parameters()}
    groups = [([names[id(p)] for p in g["params"]], g) for g in finetune.param_groups(net, recipe)]
    assert sorted(n for members, _ in groups for n in members) == sorted(names.values())
    for members, group in groups:
        assert group["lr_mult"] == (7.0 if all(n.startswith("fc.") for n in members) else 1.0), members
        decays = {net.get_parameter(n).dim() > 1 for n in members}  # conv and fc weights, not BN or biases
        assert decays == {group.get("weight_decay") is None}, members
    assert len(finetune.param_groups(net, get_recipe("paper-cifar"))) == len(names)  # one plain group

    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=recipe, out=tmp_path / "ft",
          model_options=TINY, init=pretrained_run, progress=False)
    saved = checkpoint.load_training_state(tmp_path / "ft/checkpoints/last.state.pt")["optimizer"]["param_groups"]
    lr_last = LRSchedule(recipe, 3, warmup=False).lr(2)
    assert [g["lr"] for g in saved] == pytest.approx([lr_last * g["lr_mult"] for _, g in groups])
    assert [g["weight_decay"] for g in saved] == [g.get("weight_decay", 1e-4) for _, g in groups]


def test_cosine_schedule_with_linear_warmup():
    recipe = get_recipe("finetune", iters=200)
    schedule = LRSchedule(recipe, 200, warmup=False)
    for step in (0, 4, 9, 10, 100, 150, 199):
        cosine = 0.01 * (1 + math.cos(math.pi * step / 200)) / 2
        assert schedule.lr(step) == pytest.approx(cosine * min(1.0, (step + 1) / 10))  # 5% of 200 = 10 steps


def test_finetune_recipe_only_when_asked():
    tune, paper = get_recipe("finetune"), get_recipe("paper-cifar")
    assert (tune.lr, tune.schedule, tune.decay_bn_bias, tune.head_lr_mult) == (0.01, "cosine", False, 10.0)
    assert (paper.schedule, paper.decay_bn_bias, paper.head_lr_mult, paper.freeze) == ("step", True, 1.0, None)


def test_new_classifier_size_and_mismatches(tiny_fashion, tmp_path, capsys, pretrained_run):
    init = pretrained_run
    common = ["--data", "fashion-mnist", "--data-dir", str(tiny_fashion), "--init", str(init), "--iters", "1",
              "--batch-size", "32", "--base-width", "4", "--device", "cpu", "--no-progress", "--eval-subset", "8"]
    assert main(["train", "--model", "resnet20", "--num-classes", "7", "--out", str(tmp_path / "seven"), *common]) == 0
    assert "fc: 10 -> 7 classes, re-initialised" in capsys.readouterr().out
    assert weights(tmp_path / "seven")["fc.weight"].shape == (7, 16)
    assert main(["train", "--model", "resnet32", "--out", str(tmp_path / "r32"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnet train: error: weights ") and "missing: layer1.3.bn1.bias" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r32").exists()


def test_fine_tuning_resumes_exactly_without_the_init(tiny_fashion, tmp_path, pretrained_run):
    init = tmp_path / "init"
    shutil.copytree(pretrained_run, init)
    recipe = get_recipe("finetune", iters=12, batch_size=32, eval_every=5, device="cpu", freeze=1)
    options = dict(data_dir=str(tiny_fashion), model_options={**TINY, "num_classes": 6}, progress=False)
    train("resnet20", "fashion-mnist", recipe=recipe, out=tmp_path / "whole", init=init, **options)
    with pytest.raises(Interrupted):
        train("resnet20", "fashion-mnist", recipe=recipe, out=tmp_path / "parts", init=init, stop_after=7, **options)
    shutil.rmtree(init)  # resume must not need (or reread) the init weights
    config = json.loads((tmp_path / "parts/config.json").read_text())
    assert config["init"]["given"] == str(init) and config["recipe"]["freeze"] == 1
    train(resume=tmp_path / "parts", progress=False)
    whole, parts = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert whole.keys() == parts.keys()
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


# ---------------------------------------------------------------- evidence: transfer helps with little data

def _fashion_subset(root: Path, out: Path, classes: range, train_n: int, test_n: int) -> Path:
    """A Fashion-MNIST folder holding only `classes` (labels kept), the first `train_n` / `test_n` images."""
    from resnet.data.small import read_fashion_mnist

    out.mkdir()
    for split, stem, n in (("train", "train", train_n), ("test", "t10k", test_n)):
        images, labels = read_fashion_mnist(root, split)
        keep = torch.isin(labels, torch.tensor(list(classes))).nonzero().flatten()[:n]
        write_idx(out / f"{stem}-images-idx3-ubyte", images[keep, 0].numpy())
        write_idx(out / f"{stem}-labels-idx1-ubyte", labels[keep].numpy())
    return out


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_fine_tuning_beats_training_from_scratch_on_little_data(tmp_path):
    """resnet20 trained on Fashion-MNIST classes 0-4, fine-tuned on 1,000 images of classes 5-9 for 2 epochs,
    against the same net from scratch with the same data and budget (one lr for all layers: 0.01 and 0.1)."""
    source = _fashion_subset(FASHION, tmp_path / "a", range(0, 5), 5_000, 1_000)
    target = _fashion_subset(FASHION, tmp_path / "b", range(5, 10), 1_000, 1_000)
    pretrain = get_recipe("finetune", epochs=2, lr=0.05, head_lr_mult=1.0, device="cpu")
    train("resnet20", "fashion-mnist", data_dir=str(source), recipe=pretrain, out=tmp_path / "pre",
          model_options={"num_classes": 5}, progress=False)
    budget = {"epochs": 2, "device": "cpu"}
    tuned = train("resnet20", "fashion-mnist", data_dir=str(target), recipe=get_recipe("finetune", **budget),
                  out=tmp_path / "tuned", init=tmp_path / "pre", progress=False)
    scratch = {lr: train("resnet20", "fashion-mnist", data_dir=str(target), out=tmp_path / f"scratch-{lr}",
                         recipe=get_recipe("finetune", lr=lr, head_lr_mult=1.0, **budget),
                         progress=False)["test_top1_error"]
               for lr in (0.01, 0.1)}
    print(f"test error on classes 5-9: fine-tuned {tuned['test_top1_error']:.4f}, from scratch {scratch}")
    assert tuned["test_top1_error"] < min(scratch.values()) - 0.08  # 30.3% against 43.3% in our run
