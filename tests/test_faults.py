"""Fault injection: kills at exact points, signals to a process group with loader workers, two writers,
bad files and bad values. Each case checks what is on disk afterwards."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import resnet
from conftest import learnable_images
from helpers import TEST_DEVICE, write_idx
from resnet import atomic, checkpoint, strictjson
from resnet.cli import main
from resnet.train import rundir
from resnet.train.loop import Interrupted, TrainingDiverged, train
from resnet.train.recipes import get_recipe

ITERS, EVAL_EVERY = 24, 8
TINY = {"base_width": 4}


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> Path:
    """A learnable Fashion-MNIST folder: 512 training images, 2048 test images (so an evaluation takes a while)."""
    folder = tmp_path_factory.mktemp("fashion")
    for stem, n, seed in (("train", 512, 0), ("t10k", 2048, 1)):
        images, labels = learnable_images(n, seed)
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


def train_args(fashion: Path, out: Path, *extra: str, iters: int = ITERS) -> list[str]:
    return ["train", "--model", "resnet20", "--data", "fashion-mnist", "--data-dir", str(fashion), "--iters",
            str(iters), "--batch-size", "32", "--lr", "0.1", "--no-val-split", "--eval-every", str(EVAL_EVERY), "--eval-subset", "128",
            "--base-width", "4", "--device", TEST_DEVICE, "--no-progress", "--out", str(out), *extra]


def resnet_process(args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resnet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, **kwargs)


def wait_for_line(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the process ended before printing {prefix!r}: {proc.stderr.read()[-2000:]}")


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def metric_rows(run: Path) -> list[dict]:
    drop = ("images_per_sec", "wall_time")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def leftovers(run: Path) -> list[str]:
    """Temporary files and checkpoint folders that nothing points at."""
    ckpt = run / "checkpoints"
    kept = {os.readlink(ckpt / p) for p in ("last", "best") if (ckpt / p).is_symlink()}
    folders = [p.name for p in ckpt.glob("step-*") if p.name not in kept]
    return folders + [str(p.relative_to(run)) for p in run.rglob("*.tmp")]


@pytest.fixture(scope="module")
def whole(fashion, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(train_args(fashion, out)) == 0
    return out


# ---------------------------------------------------------------- kill -9 at exact points, then resume

@pytest.mark.parametrize("point", [
    "checkpoint:between-files",  # weights of step 16 written, its state not: the old pair must stay in use
    "metrics:after-row",  # the row of step 16 written, its checkpoint not: no duplicate row after the resume
    pytest.param("checkpoint:before-switch", marks=pytest.mark.slow),
    pytest.param("checkpoint:before-prune", marks=pytest.mark.slow),
])
def test_kill_at_a_point_then_resume_equals_the_uninterrupted_run(fashion, whole, tmp_path, point):
    run = tmp_path / "run"
    proc = resnet_process(train_args(fashion, run), env={"RESNET_FAULT": f"{point}@2"})  # at the second save
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    ckpt = run / "checkpoints"
    _, state = checkpoint.last_checkpoint(ckpt)
    assert state["step"] == (16 if point == "checkpoint:before-prune" else 8)
    if point.startswith("checkpoint:b"):  # the pair of step 16 is (half) written but not in use
        written = {p.name for p in (ckpt / "step-0000016").iterdir()}
        assert written == ({"model.safetensors"} if point.endswith("files") else {"model.safetensors", "state.pt"})
    if point == "metrics:after-row":
        assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [8, 16]

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    expected, got = last_weights(whole), last_weights(run)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert metric_rows(run) == metric_rows(whole)  # one row per evaluation, none twice
    assert [r["step"] for r in metric_rows(run)] == [8, 16, 24]
    assert leftovers(run) == []


def test_a_torn_metrics_line_and_stale_temporaries_are_cleaned_on_resume(fashion, whole, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(**_api(fashion, run), stop_after=10)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"step": 16, "train_lo')
    (run / ".curves.png.1234abcd.tmp").write_bytes(b"half a plot")
    (run / "checkpoints" / ".last.deadbeef.tmp").symlink_to("step-0000008")
    train(resume=run, progress=False)
    assert metric_rows(run) == metric_rows(whole)
    assert leftovers(run) == []
    expected, got = last_weights(whole), last_weights(run)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def _api(fashion: Path, run: Path, **recipe) -> dict:
    options = dict(iters=ITERS, batch_size=32, val_split=False, eval_every=EVAL_EVERY, eval_subset=128,
                   device=TEST_DEVICE)
    options.update(recipe)
    return dict(model="resnet20", data="fashion-mnist", data_dir=str(fashion), out=run, model_options=TINY,
                progress=False, recipe=get_recipe("paper-cifar", **options))


def test_resume_inside_the_warm_up_is_exact(fashion, tmp_path):
    """Warm-up errors stay on the device between looks (every log_every steps); a stop between looks keeps them."""
    options = dict(warmup="on", warmup_lr=0.05, warmup_error=0.75, log_every=5)  # ends at the look of step 10
    train(**_api(fashion, tmp_path / "whole", **options))
    with pytest.raises(Interrupted):
        train(**_api(fashion, tmp_path / "parts", **options), stop_after=7)  # two steps after a look
    train(resume=tmp_path / "parts", progress=False)
    expected, got = last_weights(tmp_path / "whole"), last_weights(tmp_path / "parts")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    lrs = [r["lr"] for r in metric_rows(tmp_path / "whole")]
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.001)  # the warm-up did end


def test_a_run_directory_from_the_two_file_layout_resumes(fashion, whole, tmp_path):
    """Runs written before the checkpoint folders (last.safetensors + last.state.pt as files) still resume."""
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(**_api(fashion, run), stop_after=8)
    ckpt = run / "checkpoints"
    for link in ("last.safetensors", "last.state.pt", "best.safetensors"):
        data = (ckpt / link).read_bytes()
        (ckpt / link).unlink()
        (ckpt / link).write_bytes(data)
    for pointer in ("last", "best"):
        (ckpt / pointer).unlink()
    for folder in ckpt.glob("step-*"):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    train(resume=run, progress=False)
    expected, got = last_weights(whole), last_weights(run)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert (ckpt / "last").is_symlink() and leftovers(run) == []


# ---------------------------------------------------------------- signals

def start_with_workers(fashion: Path, run: Path, workers: int) -> subprocess.Popen:
    """A run whose data come through DataLoader workers, evaluating 1024 images every 4 steps, in its own
    process group; returns once its second evaluation begins (the evaluation workers exist by then)."""
    args = train_args(fashion, run, "--device-loader", "off", "--num-workers", str(workers), "--log-every", "1",
                      iters=12)
    args[args.index("--eval-subset") + 1] = "1024"
    args[args.index("--eval-every") + 1] = "4"
    proc = resnet_process(args, start_new_session=True)
    wait_for_line(proc, "step 8/")
    return proc


def test_sigterm_to_the_process_group_during_evaluation_with_workers(fashion, tmp_path):
    """What docker stop / Slurm / Kubernetes do: SIGTERM to every process, DataLoader workers included."""
    run = tmp_path / "run"
    proc = start_with_workers(fashion, run, workers=2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "exited unexpectedly" not in err and "--resume" in err
    _, state = checkpoint.last_checkpoint(run / "checkpoints")
    assert state["step"] == 8
    assert [r["step"] for r in metric_rows(run)] == [4, 8]
    assert leftovers(run) == []


def test_a_second_ctrl_c_stops_during_a_long_evaluation(fashion, tmp_path):
    run = tmp_path / "run"
    proc = start_with_workers(fashion, run, workers=1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole foreground group
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "without saving" in err
    # it stopped inside the evaluation: no row and no checkpoint for step 8, the one of step 4 kept
    assert [r["step"] for r in metric_rows(run)] == [4]
    _, state = checkpoint.last_checkpoint(run / "checkpoints")
    assert state["step"] == 4


# ---------------------------------------------------------------- run directories

def test_two_writers_of_one_run_directory(fashion, tmp_path):
    run = tmp_path / "run"
    first = resnet_process(train_args(fashion, run, "--log-every", "1", iters=5000), start_new_session=True)
    wait_for_line(first, "step 1/")
    second = subprocess.run([sys.executable, "-m", "resnet", *train_args(fashion, run, "--overwrite")],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert second.stderr.strip() == (f"resnet train: error: {run} is in use by another resnet process "
                                     f"(PID {first.pid}); wait for it to finish, stop it, or use another --out")
    os.killpg(first.pid, signal.SIGTERM)
    first.communicate(timeout=300)
    assert first.returncode == 143
    _, state = checkpoint.last_checkpoint(run / "checkpoints")  # the first run's, untouched by --overwrite
    assert state["step"] >= 1 and json.loads((run / "config.json").read_text())["recipe"]["iters"] == 5000
    rundir.lock(run)  # the lock went with the process
    rundir.unlock(run)


def test_an_existing_run_is_refused_unless_overwrite(fashion, tmp_path, capsys):
    run = tmp_path / "run"
    short = train_args(fashion, run, iters=8)
    assert main(short) == 0
    before = (run / "checkpoints" / "last.safetensors").read_bytes()
    capsys.readouterr()
    assert main(short) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"resnet train: error: {run} already holds a run of resnet20; use --resume {run} to continue it, "
                   f"or another --out (or --overwrite to replace it)")
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == before
    assert main([*short, "--overwrite", "--lr", "0.05"]) == 0
    assert [r["step"] for r in metric_rows(run)] == [8]  # the old rows went with the old run
    assert json.loads((run / "config.json").read_text())["recipe"]["lr"] == 0.05


def test_conflicting_options_are_one_line(fashion, tmp_path, capsys):
    cases = {
        ("--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")): "--out",
        ("--model", "resnet20", "--data", "fashion-mnist", "--iters", "5", "--epochs", "2"): "--epochs 2 and --iters 5",
    }
    for args, named in cases.items():
        assert main(["train", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert named in err and len(err.splitlines()) == 1


def test_a_relative_data_dir_is_stored_absolute(fashion, tmp_path, monkeypatch):
    monkeypatch.chdir(fashion.parent)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(**{**_api(fashion, run), "data_dir": fashion.name}, stop_after=2)
    assert json.loads((run / "config.json").read_text())["data_dir"] == str(fashion)
    monkeypatch.chdir(tmp_path)  # elsewhere: the dataset is still found
    with pytest.raises(Interrupted):
        train(resume=run, progress=False, stop_after=1)
    assert checkpoint.last_checkpoint(run / "checkpoints")[1]["step"] == 3


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.atomic_write_text(tmp_path / "a.json", "{}")
        checkpoint.save_weights(tmp_path / "w.safetensors", resnet.create_model("resnet20", base_width=4))
    finally:
        os.umask(old)
    for name in ("a.json", "w.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_metrics_truncation_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 8}\n{"step": 16}\n{"step": 24}\n{"step": 3')
    rundir.truncate_metrics(path, 16)
    assert path.read_text() == '{"step": 8}\n{"step": 16}\n'


# ---------------------------------------------------------------- NaN

def test_nan_loss_names_a_checkpoint_that_exists(fashion, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="no checkpoint was saved before it"):
        train(**_api(fashion, run, lr=1e30))  # diverges before the first evaluation
    assert not (run / "checkpoints" / "last").exists()
    run = tmp_path / "run2"
    with pytest.raises(Interrupted):
        train(**_api(fashion, run), stop_after=EVAL_EVERY)
    config = json.loads((run / "config.json").read_text())
    config["recipe"].update(lr=1e30)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(TrainingDiverged) as caught:
        train(resume=run, progress=False)
    found = re.search(r"between steps (\d+) and (\d+).*the last good checkpoint is (\S+) \(step (\d+)\)",
                      str(caught.value))
    assert found, str(caught.value)
    first, last, path, step = found.groups()
    assert int(first) == EVAL_EVERY + 1 and int(last) == 2 * EVAL_EVERY  # looked at before the evaluation
    weights, state = checkpoint.last_checkpoint(Path(path).parent)
    assert Path(path).resolve() == weights.parent.resolve() and state["step"] == int(step) == EVAL_EVERY
    assert all(torch.isfinite(v).all() for v in load_file(str(weights)).values())


def nan_checkpoint(tmp_path: Path) -> Path:
    model = resnet.create_model("resnet20", base_width=4, in_channels=1)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    checkpoint.save_weights(path, model, {"model": "resnet20", "options": model.options, "image_size": 28,
                                          "style": "small", "classes": [str(i) for i in range(10)]})
    return path


def test_nan_weights_are_refused_by_every_command(fashion, tmp_path, capsys):
    from PIL import Image

    path = nan_checkpoint(tmp_path)
    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    commands = [["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")],
                ["eval", "--checkpoint", str(path), "--data", "fashion-mnist", "--data-dir", str(fashion)],
                ["predict", "--checkpoint", str(path), str(tmp_path / "x.png")],
                ["analyze", "responses", "--checkpoint", str(path), "--data", "fashion-mnist", "--data-dir",
                 str(fashion), "--out", str(tmp_path / "r")]]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and "NaN or infinite" in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_export_of_a_nan_model_is_refused(tmp_path):
    from resnet.export import export_onnx

    model = resnet.create_model("resnet20", base_width=4)
    with torch.no_grad():
        model.conv1.weight.fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        export_onnx(model, tmp_path / "m.onnx", image_size=32)
    assert list(tmp_path.iterdir()) == []


def test_json_never_holds_nan():
    text = strictjson.dumps({"loss": math.nan, "rows": [math.inf, 1.5, (-math.inf, 2)]})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "loss": None, "rows": [None, 1.5, [None, 2]]}


# ---------------------------------------------------------------- the top-level handler

def test_expected_failures_are_one_line_with_exit_2(fashion, tmp_path, capsys, monkeypatch):
    path = tmp_path / "c.safetensors"
    model = resnet.create_model("resnet20", base_width=4)  # 3 input channels: Fashion-MNIST has 1
    checkpoint.save_weights(path, model, {"model": "resnet20", "options": model.options, "image_size": 32})
    bad_meta = tmp_path / "bad.safetensors"
    checkpoint.save_weights(bad_meta, model, {"model": "resnet20", "options": ["base_width", 4]})
    (tmp_path / "file").write_text("")
    cases = [
        (["analyze", "responses", "--checkpoint", str(path), "--data", "fashion-mnist", "--data-dir", str(fashion),
          "--out", str(tmp_path / "r"), "--no-progress"], "3-channel"),
        (["analyze", "responses", "--checkpoint", str(path), "--data", "synthetic", "--images", "4", "--no-progress", "--out",
          str(tmp_path / "file" / "r")], str(tmp_path / "file")),
        (["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx"), "--opset", "99"], "--opset 99"),
        (["export", "--checkpoint", str(path), "--out", str(tmp_path)], str(tmp_path)),
        (["export", "--checkpoint", str(bad_meta), "--out", str(tmp_path / "m.onnx")], "'options'"),
        (["predict", "--checkpoint", str(path), "--device", "cuda:7", str(tmp_path / "file")], "--device cuda:7"),
        (["eval", "--checkpoint", str(path), "--data", "fashion-mnist", "--device", "tpu"], "invalid --device tpu"),
    ]
    for command, named in cases:
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, (command, err)

    def disk_full(tensors, filename, metadata=None):
        raise OSError(28, "No space left on device", filename)

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    assert main(["train", "--model", "resnet20", "--data", "fashion-mnist", "--data-dir", str(fashion), "--iters", "1",
                 "--batch-size", "32", "--base-width", "4", "--device", TEST_DEVICE, "--no-val-split", "--eval-subset", "32",
                 "--out", str(tmp_path / "full"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("resnet train: error: ") and err.endswith("model.safetensors: No space left on device")
    assert leftovers(tmp_path / "full") == []


def test_a_bug_shows_its_traceback_and_asks_for_a_report(capsys, monkeypatch):
    import resnet.commands.summary as summary_command

    def broken(args):
        return 1 / 0

    monkeypatch.setattr(summary_command, "run", broken)
    assert main(["summary", "resnet20"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "please report it" in err
