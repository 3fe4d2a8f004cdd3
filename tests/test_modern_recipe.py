"""The modern recipe's ingredients, each against an independent computation, and the engine's guarantees with them on:
label smoothing, mixup/cutmix, random erasing, EMA, one-cycle, flip and shift TTA, TensorBoard, and exact resume."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from resnet.checkpoint import load_training_state
from resnet.data.batch_augment import BatchMix, low_resolution, random_erase
from resnet.data.loaders import tta_views
from resnet.train.classification import ClassificationTask, evaluate
from resnet.train.loop import Interrupted, train
from resnet.train.recipes import RANGES, get_recipe
from resnet.train.schedule import LRSchedule
from helpers import TEST_DEVICE

TINY = {"base_width": 4}
MODERN = dict(label_smoothing=0.1, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=0.8, random_erasing=0.5,
              ema_decay=0.9, nesterov=True, schedule="onecycle", warmup_fraction=0.2, tta="flip", low_res_size=20)


def tiny_recipe(**overrides):
    base = dict(iters=24, batch_size=32, val_split=False, eval_every=8, device=TEST_DEVICE)
    base.update(overrides)
    return get_recipe("paper-cifar", **base)


def plain_autocast():
    return contextlib.nullcontext()


# ---------------------------------------------------------------- ingredients on their own

def test_label_smoothing_is_the_smoothed_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    task = ClassificationTask("resnet20", "synthetic", None, tiny_recipe(label_smoothing=0.2), TINY)
    task.device, task.mix = torch.device("cpu"), BatchMix(10)

    class Fixed(torch.nn.Module):  # a "network" that returns the logits above
        def forward(self, x):
            return logits

    loss, stats = task.train_step(Fixed(), (torch.zeros(16, 1, 4, 4), y), 0, plain_autocast)
    log_p = logits.log_softmax(1)
    by_hand = (0.8 * -log_p.gather(1, y[:, None]).squeeze(1) + 0.2 * -log_p.mean(1)).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert stats[1].item() == (logits.argmax(1) != y).sum().item() and stats[2].item() == 16


def test_mixup_mixes_images_and_labels_in_the_same_proportion_and_pairing():
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 6, 6), torch.arange(8) % 5
    mixed, target = BatchMix(5, mixup_alpha=0.4)(x, y)
    lam = target[torch.arange(8), y]  # the share of each image's own label
    assert torch.allclose(lam, lam[0].expand(8)) and 0 <= lam[0] <= 1
    pair = torch.tensor([(i - 1) % 8 for i in range(8)])  # each image is mixed with one other: find which
    assert torch.allclose(mixed, lam[0] * x + (1 - lam[0]) * x[pair], atol=1e-6)
    expected = lam[0] * F.one_hot(y, 5) + (1 - lam[0]) * F.one_hot(y[pair], 5)
    assert torch.allclose(target, expected.float(), atol=1e-6)


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area():
    torch.manual_seed(3)
    x, y = torch.rand(6, 1, 16, 16) + 1, torch.arange(6)  # distinct labels, no pixel equal across images
    pair = torch.tensor([(i - 1) % 6 for i in range(6)])
    for _ in range(5):
        mixed, target = BatchMix(6, cutmix_alpha=1.0)(x, y)
        kept, pasted = mixed == x, mixed == x[pair]
        assert bool((kept | pasted).all())  # every pixel from the image or its partner, at the same place
        rows, cols = pasted[0, 0].any(1).nonzero().flatten(), pasted[0, 0].any(0).nonzero().flatten()
        if len(rows):  # one box, the same in every image
            box = torch.zeros(16, 16, dtype=torch.bool)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            assert bool((pasted[:, 0] == box).all())
        share = kept.float().mean(dim=(1, 2, 3))
        assert torch.allclose(target[torch.arange(6), y], share, atol=1e-6)
        assert torch.allclose(target[torch.arange(6), y[pair]], 1 - share, atol=1e-6)


def test_mix_probability_leaves_some_batches_one_hot():
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])
    untouched = sum(bool(torch.equal(BatchMix(4, mixup_alpha=1.0, prob=0.3)(x, y)[0], x)) for _ in range(200))
    assert 110 < untouched < 170  # about 70% of 200


def test_random_erasing_erases_one_rectangle_in_a_fraction_of_images():
    torch.manual_seed(0)
    x = torch.ones(2000, 1, 20, 20)
    erased = random_erase(x, 0.5)
    zero = erased == 0
    hit = zero.flatten(1).any(1)
    assert 0.45 < hit.float().mean() < 0.55
    for image in zero[hit][:50, 0]:  # a filled axis-aligned rectangle of 2%..33% of the image (+ rounding)
        rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        assert image[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert int(image.sum()) == len(rows) * len(cols)
        assert 0.01 <= image.float().mean() <= 0.40
    assert torch.equal(erased[~hit], x[~hit])


def test_onecycle_ramps_then_decays_linearly_to_zero():
    schedule = LRSchedule(get_recipe("paper-cifar", schedule="onecycle", warmup_fraction=0.1, lr=0.4, warmup="off"),
                          1000, warmup=False)
    assert schedule.lr(0) == pytest.approx(0.4 / 100)  # step 1 of the 100-step ramp
    assert schedule.lr(99) == pytest.approx(0.4)
    assert schedule.lr(100) == pytest.approx(0.4)
    assert schedule.lr(550) == pytest.approx(0.2)  # half-way down the 900 steps after the ramp
    assert schedule.lr(1000) == 0


def test_flip_tta_is_the_mean_of_the_two_softmaxes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 4, (10,))
    net(x)
    loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    result = evaluate(net, loader, torch.device("cpu"), plain_autocast, tta="flip")
    with torch.no_grad():
        probs = (net(x).softmax(1) + net(x.flip(-1)).softmax(1)) / 2
    assert result["top1_error"] == pytest.approx((probs.argmax(1) != y).float().mean().item())
    assert result["loss"] == pytest.approx(-probs[torch.arange(10), y].log().mean().item(), rel=1e-5)
    plain = evaluate(net, loader, torch.device("cpu"), plain_autocast)
    assert plain["loss"] != pytest.approx(result["loss"])  # the flip was used


def _moved(x, dy, dx):
    """x moved dy rows down and dx columns right, zeros shifted in (one-pixel moves, by slicing)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    rows_to, rows_from = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    cols_to, cols_from = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[..., rows_to, cols_to] = x[..., rows_from, cols_from]
    return out


def test_tta_views_are_the_image_moved_one_pixel_and_mirrored():
    x = torch.rand(3, 2, 5, 7)
    views = tta_views(x, "flip-shift").view(6, 3, 2, 5, 7)
    expected = [x, x.flip(-1), _moved(x, 1, 1), _moved(x, 1, 1).flip(-1), _moved(x, -1, -1), _moved(x, -1, -1).flip(-1)]
    for view, want in zip(views, expected):
        assert torch.equal(view, want)
    assert torch.equal(tta_views(x, "flip"), torch.cat([x, x.flip(-1)]))
    assert torch.equal(tta_views(x, "none"), x)


def test_flip_shift_tta_is_the_mean_softmax_of_six_views_of_the_raw_image():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    raw, y = torch.rand(10, 1, 8, 8), torch.randint(0, 4, (10,))
    mean = torch.rand(1, 8, 8)  # a per-pixel mean: the views are of the raw image, normalised afterwards
    x = raw - mean
    net(x)
    loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    result = evaluate(net, loader, torch.device("cpu"), plain_autocast, tta="flip-shift", offset=mean)
    with torch.no_grad():
        views = [raw, raw.flip(-1), _moved(raw, 1, 1), _moved(raw, 1, 1).flip(-1), _moved(raw, -1, -1),
                 _moved(raw, -1, -1).flip(-1)]
        probs = torch.stack([net(v - mean).softmax(1) for v in views]).mean(0)
    assert result["top1_error"] == pytest.approx((probs.argmax(1) != y).float().mean().item())
    assert result["loss"] == pytest.approx(-probs[torch.arange(10), y].log().mean().item(), rel=1e-5)
    flip = evaluate(net, loader, torch.device("cpu"), plain_autocast, tta="flip", offset=mean)
    assert flip["loss"] != pytest.approx(result["loss"])  # the shifted views were used


@pytest.mark.parametrize("option", sorted(RANGES))
def test_every_numeric_option_refuses_nan_inf_and_out_of_range_values(option):
    low, high, low_open, _ = RANGES[option]
    bad = [math.nan, math.inf, -math.inf, low - 1 if not low_open else low]
    if high is not None:
        bad.append(high + 1)
    for value in bad:
        with pytest.raises(ValueError, match=f"--{option.replace('_', '-')}"):
            get_recipe("paper-cifar", **{option: value})


def test_command_line_values_are_checked_at_parse_time(capsys):
    from resnet.cli import main

    for args in (["--momentum", "2"], ["--lr-drops", "1.5"], ["--lr", "nan"], ["--lr", "inf"], ["--log-every", "0"],
                 ["--label-smoothing", "1"], ["--ema-decay", "1"], ["--lr-drops", "0.75", "0.5"]):
        code = main(["train", "--model", "resnet20", "--data", "synthetic", "--out", "/nonexistent/x", *args])
        err = capsys.readouterr().err
        assert code == 2 and args[0] in err and len(err.strip().splitlines()) == 1, (args, err)


# ---------------------------------------------------------------- in the engine

def test_progressive_resizing_feeds_small_batches_for_its_fraction_of_the_steps(tiny_fashion, tmp_path, monkeypatch):
    import resnet.train.classification as classification

    sizes = []
    net_inputs = []

    def recording(x, size):
        out = low_resolution(x, size)
        sizes.append((tuple(x.shape[-2:]), tuple(out.shape[-2:])))
        return out

    monkeypatch.setattr(classification, "low_resolution", recording)
    original_step = classification.ClassificationTask.train_step

    def step(self, model, batch, index, autocast):
        handle = model.register_forward_pre_hook(lambda m, args: net_inputs.append(tuple(args[0].shape[-2:])))
        try:
            return original_step(self, model, batch, index, autocast)
        finally:
            handle.remove()

    monkeypatch.setattr(classification.ClassificationTask, "train_step", step)
    recipe = tiny_recipe(iters=10, eval_every=100, low_res_size=16, low_res_fraction=0.3)
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=recipe, out=tmp_path / "run",
          model_options=TINY, progress=False)
    assert sizes == [((28, 28), (16, 16))] * 3
    assert net_inputs == [(16, 16)] * 3 + [(28, 28)] * 7
    flat = torch.full((2, 1, 28, 28), 0.25)
    assert torch.allclose(low_resolution(flat, 20), torch.full((2, 1, 20, 20), 0.25))


def test_ema_weights_are_the_hand_computed_average(tiny_fashion, tmp_path):
    """Step by step (a resume after each), the weights file holds the EMA, the state the raw training weights."""
    run, decay = tmp_path / "run", 0.75
    recipe = tiny_recipe(iters=4, eval_every=1, ema_decay=decay)
    with pytest.raises(Interrupted):
        train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=recipe, out=run, model_options=TINY,
              progress=False, stop_after=1)
    history = []
    for step in range(1, 5):
        folder = run / "checkpoints" / f"step-{step:07d}"
        history.append((load_file(str(folder / "model.safetensors")),
                        load_training_state(folder / "state.pt")["ema"]["train_weights"]))
        if step < 4:
            with pytest.raises(Interrupted) if step < 3 else contextlib.nullcontext():
                train(resume=run, progress=False, stop_after=1)
    expected = dict(history[0][1])  # the first update copies the weights
    for ema, raw in history[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * raw[k] if raw[k].is_floating_point() else raw[k]
                    for k in raw}
        for key in ("conv1.weight", "fc.bias", "bn1.running_mean"):
            assert torch.allclose(ema[key], expected[key], atol=1e-6), key
    assert not torch.equal(history[-1][0]["conv1.weight"], history[-1][1]["conv1.weight"])


def test_resume_with_every_ingredient_on_is_bitwise_exact(tiny_fashion, tmp_path):
    recipe = tiny_recipe(**MODERN)
    whole = train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=recipe, out=tmp_path / "a",
                  model_options=TINY, progress=False)
    with pytest.raises(Interrupted):
        train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=recipe, out=tmp_path / "b",
              model_options=TINY, progress=False, stop_after=11)
    resumed = train(resume=tmp_path / "b", progress=False)
    a, b = (load_file(str(tmp_path / r / "checkpoints" / "last.safetensors")) for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    raw = [load_training_state(tmp_path / r / "checkpoints" / "last" / "state.pt")["ema"]["train_weights"]
           for r in "ab"]
    assert all(torch.equal(raw[0][k], raw[1][k]) for k in raw[0])
    rows = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in "ab"]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("wall_time", "images_per_sec")} for r in rs]
    assert strip(rows[0]) == strip(rows[1]) and whole["test_top1_error"] == resumed["test_top1_error"]


def test_a_finished_run_resumed_returns_its_final_evaluation(tiny_fashion, tmp_path):
    run = tmp_path / "run"
    done = train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=8), out=run,
                 model_options=TINY, progress=False)
    again = train(resume=run, progress=False)
    assert again == done and "test_top1_error" in again
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # nothing trained or appended


def test_a_run_that_never_saved_resumes_from_the_start(tiny_fashion, tmp_path):
    run = tmp_path / "run"
    first = train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=8), out=run,
                  model_options=TINY, progress=False)
    import shutil
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.jsonl").unlink()  # as a run that died before its first evaluation leaves it
    again = train(resume=run, progress=False)
    assert {k: v for k, v in again.items() if "error" in k or "loss" in k} == \
        {k: v for k, v in first.items() if "error" in k or "loss" in k}
    assert (run / "checkpoints" / "last.safetensors").exists()


def test_a_config_with_an_unknown_field_is_one_line_naming_it(tiny_fashion, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=8), out=run,
              model_options=TINY, progress=False, stop_after=3)
    config = json.loads((run / "config.json").read_text())
    config["recipe"]["learning_speed"] = 3
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json.*learning_speed"):
        train(resume=run, progress=False)
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        train(resume=run, progress=False)


def test_nan_weights_are_refused_before_training_and_leave_no_run(tiny_fashion, tmp_path):
    run = tmp_path / "run"
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=8), out=run,
          model_options=TINY, progress=False, stop_after=8)
    from safetensors.torch import save_file
    from safetensors import safe_open
    weights = run / "checkpoints" / "last.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(weights))
    tensors["conv1.weight"][0, 0, 0, 0] = math.nan
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ValueError, match="NaN"):
        train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=8),
              out=tmp_path / "from-nan", model_options=TINY, progress=False, init=bad)
    assert not (tmp_path / "from-nan").exists()
    save_file(tensors, str(Path(weights).resolve()), metadata=meta)  # the run's own last checkpoint goes bad
    with pytest.raises(ValueError, match="NaN"):
        train(resume=run, progress=False)


def test_tensorboard_mirrors_the_metrics_rows(tiny_fashion, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(tensorboard=True), out=run,
          model_options=TINY, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    errors = events.Scalars("test/top1_error")
    assert [e.step for e in errors] == [r["step"] for r in rows]
    assert [e.value for e in errors] == pytest.approx([r["test_top1_error"] for r in rows])
    assert {"train/loss", "train/error", "train/lr", "train/images_per_sec"} <= set(events.Tags()["scalars"])


def test_tensorboard_missing_is_one_line(tiny_fashion, tmp_path, monkeypatch, capsys):
    import builtins
    from resnet.cli import main

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    code = main(["train", "--model", "resnet20", "--data", "fashion-mnist", "--data-dir", str(tiny_fashion),
                 "--iters", "2", "--batch-size", "32", "--base-width", "4", "--tensorboard", "--no-progress",
                 "--out", str(tmp_path / "run"), "--device", TEST_DEVICE])
    err = capsys.readouterr().err
    assert code == 2 and "pip install tensorboard" in err and "Traceback" not in err


def test_fast_recipe_learns(tiny_fashion, tmp_path):
    recipe = get_recipe("fast", iters=48, batch_size=64, eval_every=16, val_split=False, device=TEST_DEVICE)
    rows = []
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=recipe, out=tmp_path / "run",
          model_options=TINY, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["test_top1_error"] < 0.5 < 0.75  # 4 classes: chance is 75% error
    assert rows[-1]["test_top1_error"] < rows[0]["test_top1_error"] or rows[0]["test_top1_error"] < 0.2


@pytest.mark.parametrize("tta", ["flip", "flip-shift"])
def test_training_tta_is_what_eval_tta_gives(tiny_fashion, tmp_path, capsys, tta):
    from resnet.cli import main

    run = tmp_path / "run"
    row = train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=16, tta=tta),
                out=run, model_options=TINY, progress=False)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--which", "last", "--data", "fashion-mnist", "--data-dir",
                 str(tiny_fashion), "--tta", tta, "--json", str(tmp_path / "e.json"), "--no-progress",
                 "--workers", "0"]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["protocol"] == tta
    member = result["members"][0]
    assert member["top1_error"] == pytest.approx(row["test_top1_error"])
    assert member["loss"] == pytest.approx(row["test_loss"], rel=1e-4)


def test_an_init_run_names_the_weights_it_starts_from(tiny_fashion, tmp_path, capsys):
    first = tmp_path / "first"
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=2, eval_every=2),
          out=first, model_options=TINY, progress=False)
    capsys.readouterr()
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=tiny_recipe(iters=2, eval_every=2),
          out=tmp_path / "second", progress=False, init=first)
    out = capsys.readouterr().out
    assert f"init: starting from the weights {first}" in out
    assert json.loads((tmp_path / "second" / "config.json").read_text())["init"]["given"] == str(first)
