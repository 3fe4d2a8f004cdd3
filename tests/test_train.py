"""Training: recipes, schedules, checkpoints, exact resume, the NaN guard, many processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import resnet
from resnet.cli import build_parser, main
from resnet.commands.options import model_options
from resnet.commands.train import recipe_from_args
from resnet.data.loaders import TensorLoader
from resnet import checkpoint
from resnet.train.loop import Interrupted, TrainingDiverged, train
from resnet.train.recipes import get_recipe
from resnet.train.schedule import LRSchedule
from helpers import TEST_DEVICE

TINY = {"base_width": 4}


def tiny_recipe(**overrides):
    base = dict(iters=24, batch_size=32, val_split=False, eval_every=8, device=TEST_DEVICE)
    base.update(overrides)
    return get_recipe("paper-cifar", **base)


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{which}.safetensors"))


# ---------------------------------------------------------------- recipes and schedules

def test_paper_recipes_are_the_papers():
    cifar, imagenet = get_recipe("paper-cifar"), get_recipe("paper-imagenet")
    assert (cifar.batch_size, cifar.lr, cifar.momentum, cifar.weight_decay, cifar.iters) == (128, 0.1, 0.9, 1e-4, 64000)
    assert [round(f * cifar.iters) for f in cifar.lr_drops] == [32000, 48000]
    assert (imagenet.batch_size, imagenet.iters, imagenet.schedule) == (256, 600_000, "plateau")


def test_zero_init_residual_option_reaches_the_network(tmp_path, tiny_fashion):
    """`--zero-init-residual` builds the trained net with every block's last BN scale at 0 (each block starts as
    its shortcut); without it they start at 1."""
    def first_block_scale(*flags: str) -> torch.Tensor:
        argv = ["train", "--model", "resnet20", "--data", "fashion-mnist", "--base-width", "4", *flags]
        options = model_options(build_parser().parse_args(argv))
        run = tmp_path / "-".join(["run", *flags])
        train("resnet20", "fashion-mnist", recipe=tiny_recipe(iters=1, lr=1e-9), data_dir=str(tiny_fashion), out=run,
              model_options=options, progress=False)
        return weights(run)["layer1.0.bn2.weight"]

    assert first_block_scale("--zero-init-residual").abs().max() < 1e-6  # one step at lr 1e-9 from 0
    assert torch.all(first_block_scale() > 0.99)


def test_command_line_overrides():
    args = build_parser().parse_args(["train", "--model", "resnet20", "--data", "cifar10", "--epochs", "3",
                                      "--batch-size", "64", "--lr", "0.05", "--no-amp", "--subset", "100"])
    recipe = recipe_from_args(args)
    assert (recipe.epochs, recipe.iters, recipe.batch_size, recipe.lr, recipe.amp, recipe.subset) == (
        3, None, 64, 0.05, False, 100)
    assert recipe.weight_decay == 1e-4  # untouched fields keep the recipe's value
    with pytest.raises(ValueError, match="--schedule"):
        get_recipe("paper-cifar", schedule="linear")
    with pytest.raises(ValueError, match="paper-cifar"):
        get_recipe("paper-cifr")
    with pytest.raises(ValueError, match="--batch-size"):
        get_recipe("paper-cifar", batch_size=0)


def test_step_schedule_and_resnet110_warmup():
    schedule = LRSchedule(get_recipe("paper-cifar"), 64000, warmup=False)
    assert [schedule.lr(s) for s in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    warm = LRSchedule(get_recipe("paper-cifar"), 64000, warmup=True)
    assert warm.lr(0) == 0.01
    for _ in range(20):
        warm.observe_train_error(0.9)
    assert warm.lr(100) == 0.01
    for _ in range(30):
        warm.observe_train_error(0.5)
    assert warm.lr(100) == 0.1


def test_plateau_schedule_divides_by_ten():
    schedule = LRSchedule(get_recipe("paper-imagenet", plateau_patience=2), 1000, warmup=False)
    for error in (0.5, 0.4, 0.41, 0.42):
        schedule.observe_val_error(error)
    assert schedule.lr(0) == pytest.approx(0.01)


# ---------------------------------------------------------------- loaders

def crop_params(batch: torch.Tensor, size: int, pad: int = 4) -> torch.Tensor:
    """(dy, dx, flip) of each crop, read back from an image whose pixel values encode their position."""
    out = []
    for img in batch.round().long()[:, 0]:
        ys, xs = torch.nonzero(img, as_tuple=True)
        (r0, c0), (_, c1) = divmod(img[ys[0], xs[0]].item() - 1, size), divmod(img[ys[1], xs[1]].item() - 1, size)
        flip = (c1 - c0) * (xs[1] - xs[0]).item() < 0  # columns run backwards
        dy = r0 + pad - ys[0].item()
        dx = c0 + pad - size + 1 + xs[0].item() if flip else c0 + pad - xs[0].item()
        out.append((dy, dx, int(flip)))
    return torch.tensor(out)


@pytest.mark.parametrize("pad", [4, 2, 1])
def test_tensor_loader_crops_and_flips_like_the_per_image_transform(pad):
    """Over many samples both give offsets uniform over [0, 2 * pad] and flips half the time."""
    from torchvision import tv_tensors

    from resnet.data import DatasetInfo
    from resnet.data.loaders import draw_crop_flip, random_crop_flip
    from resnet.data.transforms import train_transform

    n, size = 3000, 15
    image = (torch.arange(size * size) + 1).reshape(1, size, size).to(torch.uint8)  # value = 1 + row*15 + col
    loader = TensorLoader(image.expand(n, 1, size, size).clone(), torch.zeros(n, dtype=torch.long),
                          torch.zeros(1, size, size), n, train=True, pad=pad)
    batched = next(iter(loader))[0] * 255
    info = DatasetInfo(name="t", classes=["0"], class_names=["0"], channels=1, image_size=size, style="small", root=None)
    transform = train_transform(info, torch.zeros(1, size, size), crop_pad=pad)
    per_image = torch.stack([transform(tv_tensors.Image(image)) for _ in range(n)]) * 255

    uniform = torch.full((2 * pad + 1,), 1 / (2 * pad + 1))
    for name, sample in (("tensor loader", batched), ("per-image transform", per_image)):
        params = crop_params(sample, size, pad)
        for axis in (0, 1):
            counts = torch.bincount(params[:, axis], minlength=2 * pad + 1).float() / n
            assert torch.allclose(counts, uniform, atol=0.03), (name, axis, counts)
        assert 0.45 < params[:, 2].float().mean() < 0.55, name
    # the reader itself is right: it recovers parameters we chose
    chosen = draw_crop_flip(50, 4, torch.Generator().manual_seed(0))
    cropped = random_crop_flip(image.expand(50, 1, size, size), 4, chosen)
    assert torch.equal(crop_params(cropped.float(), size), chosen)


def test_the_recipe_crop_pad_reaches_the_training_loader(tiny_fashion):
    from resnet.train import distributed
    from resnet.train.classification import make_data

    for pad in (0, 2):
        recipe = tiny_recipe(crop_pad=pad)
        train_loader, *_ = make_data("fashion-mnist", str(tiny_fashion), recipe, distributed.Dist(),
                                     torch.device("cpu"), False)
        assert train_loader.pad == pad
    assert get_recipe("fast").crop_pad == 1 and get_recipe("paper-cifar").crop_pad == 4  # the paper's "4 pixels"


# ---------------------------------------------------------------- training

def test_a_few_steps_reduce_the_loss(tiny_fashion, tmp_path):
    row = train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=48),
                out=tmp_path / "run", model_options=TINY, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    assert row["test_top1_error"] < 0.3  # 4 balanced classes: chance is 0.75
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["iters"] == 48 and config["model"] == "resnet20"


@pytest.mark.parametrize("iters, steps", [(10, [4, 8, 10]), (9, [4, 9])])
def test_last_training_error_covers_at_least_half_an_interval(tiny_fashion, tmp_path, iters, steps):
    """Evaluations every 4 steps and at the end; one 1 step before the end would leave the last row's training
    error to a single batch, so it is left out (9 steps: rows at 4 and 9; 10 steps: 4, 8 and 10)."""
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=iters, eval_every=4),
          out=tmp_path / "run", model_options=TINY, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == steps


def test_final_evaluation_reads_every_held_out_image(tiny_fashion, tmp_path):
    """--eval-subset samples the evaluations during training; the last one is over the whole test set."""
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=8, eval_every=4,
          eval_subset=32), out=tmp_path / "run", model_options=TINY, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["test_images"]) for r in rows] == [(4, 32), (8, 128)]  # tiny_fashion has 128 test images


def test_checkpoint_round_trip(tiny_fashion, tmp_path):
    run = tmp_path / "run"
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=8),
          out=run, model_options=TINY, progress=False)
    model = resnet.load_model(run)
    assert not model.training
    assert model.meta["dataset"] == "fashion-mnist" and len(model.meta["classes"]) == 10
    assert model.input_mean.shape == (1, 28, 28)
    saved = weights(run, "best")
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    state = checkpoint.load_training_state(run / "checkpoints" / "last.state.pt")  # the link kept for old readers
    assert state["step"] == 8 and "momentum_buffer" in str(state["optimizer"]["state"])


def test_resume_is_bitwise_exact(tiny_fashion, tmp_path):
    recipe = tiny_recipe(iters=40, eval_every=7)
    options = dict(data_dir=str(tiny_fashion), model_options=TINY, progress=False)
    train("resnet20", "fashion-mnist", recipe=recipe, out=tmp_path / "whole", **options)
    with pytest.raises(Interrupted):  # stops mid-epoch (16 steps per epoch) and between evaluations
        train("resnet20", "fashion-mnist", recipe=recipe, out=tmp_path / "parts", stop_after=5, **options)
    with pytest.raises(Interrupted):
        train(resume=tmp_path / "parts", stop_after=13, progress=False)
    assert checkpoint.load_training_state(tmp_path / "parts/checkpoints/last.state.pt")["step"] == 18
    train(resume=tmp_path / "parts", progress=False)
    whole, parts = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert whole.keys() == parts.keys()
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    drop = ("images_per_sec", "wall_time")
    rows = [[{k: v for k, v in json.loads(line).items() if k not in drop}
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("whole", "parts")]
    assert rows[0] == rows[1]


def test_sigint_saves_and_resume_matches(tiny_fashion, tmp_path):
    """A real signal to a real `resnet train` process, at whatever step it has reached."""
    common = ["--model", "resnet20", "--data", "fashion-mnist", "--data-dir", str(tiny_fashion), "--iters", "120",
              "--batch-size", "32", "--no-val-split", "--eval-every", "1000", "--base-width", "4",
              "--device", TEST_DEVICE, "--log-every", "1"]
    cmd = [sys.executable, "-m", "resnet", "train", *common]
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "parts")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:  # wait until it is training, then interrupt
        if line.startswith("step 20/"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    stopped_at = checkpoint.load_training_state(tmp_path / "parts/checkpoints/last.state.pt")["step"]
    assert 20 <= stopped_at < 120
    assert main(["train", "--resume", str(tmp_path / "parts"), "--no-progress"]) == 0
    whole, parts = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


def test_resume_with_another_model_names_both(tiny_fashion, tmp_path):
    run = tmp_path / "run"
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=8), out=run,
          model_options=TINY, progress=False)
    with pytest.raises(ValueError, match=r"step-0000008/model\.safetensors.*resnet32"):
        train("resnet32", resume=run, progress=False)


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tiny_fashion, tmp_path):
    run = tmp_path / "run"
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=8), out=run,
          model_options=TINY, progress=False)
    before = weights(run)
    config = json.loads((run / "config.json").read_text())
    config["recipe"].update(lr=1e30, iters=40)  # diverges at once
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(TrainingDiverged, match=r"between steps \d+ and \d+"):
        train(resume=run, progress=False)
    after = weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_failure_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    model = resnet.create_model("resnet20", base_width=4)
    checkpoint.save_weights(path, model)
    good = path.read_bytes()

    def dies_mid_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", dies_mid_write)
    with pytest.raises(OSError):
        checkpoint.save_weights(path, resnet.create_model("resnet20", base_width=4))
    assert path.read_bytes() == good
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_missing_dataset_is_one_line_error(tmp_path, capsys):
    code = main(["train", "--model", "resnet20", "--data", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere"),
                 "--iters", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nowhere" in err and len(err.splitlines()) == 1


def test_two_processes_with_sync_bn_match_one_process(tiny_fashion, tmp_path):
    """torchrun, 2 CPU processes, Gloo, BN synchronised: same weights as one process, same global batch.

    Few steps at a small lr: float rounding differences (summation order) grow with every SGD step.
    """
    args = ["-m", "resnet", "train", "--model", "resnet20", "--data", "fashion-mnist", "--data-dir",
            str(tiny_fashion), "--iters", "4", "--lr", "0.02", "--batch-size", "32", "--no-val-split", "--eval-every", "2",
            "--base-width", "4", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], check=True, capture_output=True, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two"), "--sync-bn"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    diffs = {k: (one[k].double() - two[k].double()).abs().max().item() for k in one}
    assert max(diffs.values()) < 1e-4
    changed = max((one[k].double() - resnet.create_model("resnet20", base_width=4, in_channels=1).state_dict()[k]
                   .double()).abs().max().item() for k in one if k.endswith("conv1.weight"))
    assert changed > 1e-3  # training moved the weights, so agreeing means something
