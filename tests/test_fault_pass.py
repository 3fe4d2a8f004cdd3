"""Fault-pass cases outside the training loop (issue 22): one-class folders, val classes with no twin, predict over
unreadable files, checkpoints whose metadata does not fit their network, eval's choice of weights and split names,
oversized batches, and error lines that name the right file. Each test fails on the code before the fix."""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import randomize_bn
from resnet import atomic, checkpoint
from resnet.checkpoint import save_weights
from resnet.cli import main
from resnet.data import dataset_info, get_dataset
from resnet import create_model


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """The pixel-mean cache goes to the test's own folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))


def band_images(root: Path, classes: list[str], n: int, size: int = 16, seed: int = 0) -> list[Path]:
    """root/<class>/<i>.png: grey images with a bright band whose height depends on the class."""
    rng = np.random.default_rng(seed)
    paths = []
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = rng.integers(0, 80, (size, size), dtype=np.uint8)
            image[label * 3:(label + 1) * 3] += 150
            Image.fromarray(image).save(root / name / f"{i}.png")
            paths.append(root / name / f"{i}.png")
    return paths


def small_checkpoint(path: Path, num_classes: int = 3, meta: dict | None = None, mean: torch.Tensor | None = None,
                     size: int = 16) -> torch.nn.Module:
    """A narrow resnet20 with non-trivial BN, saved with its classes, small style and a per-pixel mean."""
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet20", num_classes=num_classes, base_width=4))
    full = {"model": "resnet20", "options": model.options, "classes": [f"c{i}" for i in range(num_classes)],
            "class_names": [f"thing {i}" for i in range(num_classes)], "image_size": size, "style": "small",
            **(meta or {})}
    save_weights(path, model, full, torch.full((3, size, size), 0.3) if mean is None else mean)
    return model


# ---- 1. folder data ---------------------------------------------------------------------------------


def test_a_folder_with_one_class_is_refused_in_one_line(tmp_path, capsys):
    band_images(tmp_path / "train", ["cat"], 4)
    band_images(tmp_path / "val", ["cat"], 2)
    with pytest.raises(ValueError, match=r"only one class folder \(cat\).*at least 2"):
        dataset_info("folder", tmp_path)
    small_checkpoint(tmp_path / "m.safetensors", num_classes=1)
    rc = main(["eval", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", "folder", "--data-dir",
               str(tmp_path), "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(tmp_path / "train") in err


def test_val_classes_with_no_twin_in_train_are_warned_by_name(tmp_path):
    band_images(tmp_path / "train", ["c0", "c1", "c2"], 2)
    band_images(tmp_path / "val", ["c0", "c1", "c2"], 2)
    band_images(tmp_path / "val", ["dog", "eel"], 3, seed=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dataset = get_dataset("folder", "val", tmp_path)
    assert len(dataset) == 6  # the three known classes' images, scored
    [warning] = [str(w.message) for w in record if "no twin" in str(w.message)]
    assert "dog, eel" in warning and "6 image(s)" in warning and str(tmp_path / "val") in warning


# ---- 8. error lines name the target, not the temporary file --------------------------------------------


def test_a_failed_atomic_write_names_the_target_file(tmp_path, monkeypatch, capsys):
    """A read-only or full --out fails at the temporary file's creation; the line must name what was asked for."""
    real_open = os.open

    def refuse_temporaries(path, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "open", refuse_temporaries)
    target = tmp_path / "out" / "results.json"
    with pytest.raises(OSError) as caught:
        atomic.atomic_write_text(target, "{}")
    from resnet.errors import one_line

    assert one_line(caught.value) == f"{target}: Permission denied"
    assert not target.exists() and list(target.parent.iterdir()) == []


# ---- 2. predict on a folder, --no-amp, checkpoints that do not fit their network -------------------------


def test_predict_on_a_folder_skips_and_names_unreadable_images(tmp_path, capsys):
    small_checkpoint(tmp_path / "m.safetensors")
    images = band_images(tmp_path / "photos", ["a", "b"], 3)
    truncated, empty, text = images[1], images[4], tmp_path / "photos" / "b" / "notes.png"
    truncated.write_bytes(truncated.read_bytes()[:60])  # the header reads, the data do not
    empty.write_bytes(b"")
    text.write_text("not an image")
    rc = main(["predict", "--checkpoint", str(tmp_path / "m.safetensors"), str(tmp_path / "photos"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    predicted = [r["image"] for r in json.loads(captured.out)]
    assert predicted == [str(p) for p in images if p not in (truncated, empty)]
    skipped = captured.err.strip().splitlines()
    assert len(skipped) == 3 and all(line.startswith("resnet predict: skipped ") for line in skipped)
    for bad in (truncated, empty, text):  # each named on its own line, with why
        assert sum(f"{bad}:" in line for line in skipped) == 1
    for p in (*images, text):  # nothing readable: exit 2, one line
        if p not in (truncated, empty, text):
            p.unlink()
    assert main(["predict", "--checkpoint", str(tmp_path / "m.safetensors"), str(tmp_path / "photos")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none of the 3 image files could be read" in err


def test_predict_no_amp_is_exact_fp32_on_a_bf16_cpu(tmp_path, capsys, monkeypatch):
    from resnet import precision

    monkeypatch.setenv("RESNET_CPU_FAST", "auto")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # as on a CPU with AVX512-BF16 or AMX
    mean = torch.rand(3, 16, 16)
    model = small_checkpoint(tmp_path / "m.safetensors", mean=mean)
    [path] = band_images(tmp_path / "one", ["a"], 1)
    pixels = torch.from_numpy(np.array(Image.open(path))).float().div(255).expand(3, -1, -1)
    with torch.no_grad():
        expected = F.softmax(model((pixels - mean)[None]), 1)[0]

    def top_probabilities(*extra: str) -> list[float]:
        assert main(["predict", "--checkpoint", str(tmp_path / "m.safetensors"), str(path), "--json", "--top", "3",
                     *extra]) == 0
        return [t["probability"] for t in json.loads(capsys.readouterr().out)[0]["top"]]

    exact = expected.sort(descending=True).values.tolist()
    assert top_probabilities("--no-amp") == pytest.approx(exact, abs=1e-6)
    assert top_probabilities() != pytest.approx(exact, abs=1e-6)  # the default there is bf16 autocast


def test_class_names_shorter_than_the_classifier_are_refused(tmp_path, capsys):
    small_checkpoint(tmp_path / "m.safetensors", num_classes=3, meta={"class_names": ["cat", "dog"]})
    [path] = band_images(tmp_path / "one", ["a"], 1)
    rc = main(["predict", "--checkpoint", str(tmp_path / "m.safetensors"), str(path)])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and captured.err.count("\n") == 1
    assert str(tmp_path / "m.safetensors") in captured.err and "'class_names' lists 2 classes" in captured.err


@pytest.mark.parametrize("shape", [(5,), (3, 16), (4, 16, 16), (1, 3, 16, 16)])
def test_an_input_mean_of_the_wrong_shape_is_one_line_in_eval_and_predict(tmp_path, capsys, shape):
    band_images(tmp_path / "train", ["c0", "c1", "c2"], 2)
    band_images(tmp_path / "val", ["c0", "c1", "c2"], 2)
    checkpoint_file = tmp_path / "m.safetensors"
    small_checkpoint(checkpoint_file, mean=torch.rand(shape))
    for argv in (["predict", str(tmp_path / "val")],
                 ["eval", "--data", "folder", "--data-dir", str(tmp_path), "--workers", "0", "--no-progress"]):
        rc = main([*argv, "--checkpoint", str(checkpoint_file)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1, err
        assert str(checkpoint_file) in err and "input mean has shape" in err


# ---- 3. eval of a run directory: the final weights by default, splits named as they are -------------------


def fake_run(run: Path) -> tuple[Path, Path]:
    """A run directory whose checkpoints/best (step 1) and checkpoints/last (step 2) hold different networks."""
    from resnet.checkpoint import model_meta, save_training_checkpoint

    files = []
    for step, seed in ((1, 1), (2, 2)):
        torch.manual_seed(seed)
        net = randomize_bn(create_model("resnet20", num_classes=3, base_width=4), seed)
        net.meta = {"classes": ["c0", "c1", "c2"], "class_names": ["c0", "c1", "c2"], "image_size": 16,
                    "style": "small"}
        net.input_mean = torch.full((3, 16, 16), 0.3)
        folder = save_training_checkpoint(run / "checkpoints", step, net, model_meta(net), {"step": step},
                                          best=step == 1)
        files.append(folder / checkpoint.WEIGHTS)
    (run / "config.json").write_text(json.dumps({"model": "resnet20", "data": "folder"}))
    return files[0], files[1]


def eval_json(capsys, *argv: str) -> tuple[dict, str]:
    out = Path(argv[argv.index("--json") + 1])
    assert main(["eval", "--workers", "0", "--no-progress", *argv]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_eval_of_a_run_directory_scores_the_final_weights_unless_told(tmp_path, capsys):
    band_images(tmp_path / "data" / "train", ["c0", "c1", "c2"], 2)
    band_images(tmp_path / "data" / "val", ["c0", "c1", "c2"], 6, seed=3)
    best, last = fake_run(tmp_path / "run")
    data = ["--data", "folder", "--data-dir", str(tmp_path / "data")]
    j = ["--json", str(tmp_path / "r.json")]
    by_file = {}
    for name, file in (("best", best), ("last", last)):
        by_file[name], _ = eval_json(capsys, "--checkpoint", str(file), *data, *j)
    assert by_file["best"]["members"][0]["loss"] != by_file["last"]["members"][0]["loss"]  # two different nets
    default, text = eval_json(capsys, "--checkpoint", str(tmp_path / "run"), *data, *j)
    chosen, _ = eval_json(capsys, "--checkpoint", str(tmp_path / "run"), "--which", "best", *data, *j)
    assert default["members"][0]["loss"] == by_file["last"]["members"][0]["loss"]
    assert chosen["members"][0]["loss"] == by_file["best"]["members"][0]["loss"]
    assert default["members"][0]["weights"].endswith("checkpoints/last.safetensors")
    # a folder's held-out images are val/, and they are called so (also when asked for --split test)
    assert default["split"] == "val" and text.splitlines()[0] == "folder val (center)"
    assert "(checkpoints/last.safetensors)" in text


def test_eval_split_val_of_a_small_dataset_is_the_held_out_part_of_training(tiny_fashion, tmp_path, capsys):
    from resnet.data import load_tensors

    save_weights(tmp_path / "m.safetensors", create_model("resnet20", num_classes=10, in_channels=1, base_width=4),
                 {"model": "resnet20", "options": {"num_classes": 10, "in_channels": 1, "base_width": 4},
                  "image_size": 28, "style": "small"}, torch.zeros(1, 28, 28))
    result, text = eval_json(capsys, "--checkpoint", str(tmp_path / "m.safetensors"), "--data", "fashion-mnist",
                             "--data-dir", str(tiny_fashion), "--split", "val", "--json", str(tmp_path / "r.json"))
    val = load_tensors("fashion-mnist", "val", tiny_fashion, val_split=True)[1]
    test = load_tensors("fashion-mnist", "test", tiny_fashion)[1]
    assert len(val) != len(test) and result["members"][0]["images"] == len(val)  # 512 / 12, not the 128 test images
    assert text.splitlines()[0] == "fashion-mnist val (center)"


def test_the_curves_legend_names_the_split_drawn_bold():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resnet.train.curves import _draw

    for key, split in (("val_top1_error", "val"), ("test_top1_error", "test")):
        fig, ax = plt.subplots()
        _draw(ax, {"net": [{"step": 1, "train_error": 0.5, key: 0.4}]}, {"net": "C0"})
        assert ax.get_legend().get_title().get_text() == f"bold: {split}, dashed: train"
        plt.close(fig)


def test_a_torn_last_metrics_line_is_left_out_and_a_damaged_one_named(tmp_path):
    from resnet.train.curves import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "tra')  # a row being written by a running worker
    assert read_metrics(path) == [{"step": 1}]
    path.write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"{path}: line 2 is not a JSON object"):
        read_metrics(path)


# ---- 4. an oversized batch is scored in chunks that fit ----------------------------------------------------


def test_an_oversized_batch_is_split_into_chunks_with_the_same_results(tmp_path, monkeypatch):
    from resnet.evaluate import memory
    from resnet.evaluate.protocols import Center
    from resnet.evaluate.preprocess import InputNorm
    from resnet.evaluate.runner import evaluate_models

    model = randomize_bn(create_model("resnet20", num_classes=3, base_width=4))
    protocol = Center("small", 16)
    images = torch.randint(0, 256, (50, 3, 16, 16), dtype=torch.uint8)
    dataset = [(protocol.prepare(image), i % 3) for i, image in enumerate(images)]  # views [1, C, H, W]
    norm = InputNorm(torch.full((3, 1, 1), 0.4))
    reference = evaluate_models([model], [norm], dataset, protocol, batch_size=7, progress=False)
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))  # every forward pass
    image_bytes = 3 * 16 * 16 * 4
    monkeypatch.setattr(memory, "free_bytes", lambda device: memory.SHARE * 6 * image_bytes * memory.ACTIVATION_FACTOR)
    chunked = evaluate_models([model], [norm], dataset, protocol, batch_size=4096, progress=False)
    assert max(seen) == 6 and sum(seen) == 50  # every image once, never more than 6 at a time
    for key in ("top1_error", "top5_error", "images"):
        assert chunked["members"][0][key] == reference["members"][0][key]
    assert chunked["members"][0]["loss"] == pytest.approx(reference["members"][0]["loss"], rel=1e-6)


def test_predict_splits_an_oversized_batch_too(tmp_path, monkeypatch, capsys):
    from resnet.evaluate import memory

    small_checkpoint(tmp_path / "m.safetensors")
    band_images(tmp_path / "photos", ["a", "b"], 5)
    argv = ["predict", "--checkpoint", str(tmp_path / "m.safetensors"), str(tmp_path / "photos"), "--json"]
    assert main([*argv, "--batch-size", "3"]) == 0
    reference = json.loads(capsys.readouterr().out)
    image_bytes = 3 * 16 * 16 * 4
    monkeypatch.setattr(memory, "free_bytes", lambda device: memory.SHARE * 4 * image_bytes * memory.ACTIVATION_FACTOR)
    seen = []
    real = memory.chunks_for
    monkeypatch.setattr(memory, "chunks_for", lambda x, device: seen.append(len(x)) or real(x, device))
    assert main([*argv, "--batch-size", "4096"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert max(seen) == 4 and sum(seen) == 10
    assert [r["image"] for r in got] == [r["image"] for r in reference]
    for a, b in zip(got, reference):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-6)


# ---- 7. under torchrun: an expected error once, a lost rank in one line --------------------------------------


def test_under_torchrun_an_expected_error_is_printed_by_rank_0_only(tmp_path, capsys, monkeypatch):
    argv = ["eval", "--checkpoint", str(tmp_path / "missing.safetensors"), "--data", "synthetic"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    lines = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 2
        lines[rank] = capsys.readouterr().err.strip().splitlines()
    assert len(lines["0"]) == 1 and "missing.safetensors" in lines["0"][0] and lines["1"] == []


def test_a_lost_rank_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    import resnet.cli as cli
    import resnet.commands.summary as summary

    gloo = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:36049: Connection "
            "reset by peer. This is typically caused by a remote worker hanging or bugs in the application.")

    def fail(args):
        raise RuntimeError(gloo)

    monkeypatch.setattr(summary, "run", fail)
    monkeypatch.setattr(cli.os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exit_:
        main(["summary", "resnet20"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "lost rank 1 of 2" in err and "Connection reset by peer" in err and "checkpoint is kept" in err
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: the same error is a bug, with its traceback
    assert main(["summary", "resnet20"]) == 1
    assert "internal error" in capsys.readouterr().err


def test_killing_one_torchrun_rank_gives_the_survivor_one_line_and_keeps_the_checkpoint(tiny_fashion, tmp_path):
    import shutil
    import signal
    import subprocess
    import sys
    import time

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    run = tmp_path / "run"
    proc = subprocess.Popen([torchrun, "--nproc-per-node", "2", "-m", "resnet", "train", "--model", "resnet20",
                             "--data", "fashion-mnist", "--data-dir", str(tiny_fashion), "--iters", "5000",
                             "--batch-size", "32", "--base-width", "4", "--no-val-split", "--eval-every", "10",
                             "--device", "cpu", "--no-progress", "--out", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 150
    while not (run / "checkpoints" / "last").is_symlink():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    rank1 = []
    for pid in os.listdir("/proc"):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"RANK=1" in environ and str(run).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            rank1.append(int(pid))
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    ours = [line for line in out.splitlines() if line.startswith("resnet train:")]
    assert len(ours) == 1 and "lost rank 1 of 2" in ours[0] and f"--resume {run}" in ours[0], out[-3000:]
    assert "internal error" not in out
    checkpoint.last_checkpoint(run / "checkpoints")  # kept and consistent


# ---- 9. a .gz whose deflate data are corrupt from the start: zlib.error is not an OSError --------------------------


def test_a_gz_with_corrupt_deflate_data_is_named_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Found by benchmarks/fault_pass.py: bytes flipped near the start of a .gz's compressed data make gzip raise
    zlib.error (not the CRC's BadGzipFile, an OSError), which `resnet data fashion-mnist` showed as a traceback."""
    from helpers import write_idx
    from resnet.data import small

    home = tmp_path / "home" / "fashion-mnist"
    home.mkdir(parents=True)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(home / f"{split}-images-idx3-ubyte.gz", np.arange(n * 28 * 28).reshape(n, 28, 28) % 7)
        write_idx(home / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    path = home / "t10k-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[:12] + bytes(b ^ 0xFF for b in data[12:40]) + data[40:])
    assert small.idx_damage(path).startswith(f"{path.name} cannot be read as gzip (")
    assert small.fashion_mismatch(path)[0] == "damaged"
    with pytest.raises(ValueError, match=f"cannot read IDX file {path}"):
        small.read_idx(path)
    monkeypatch.setenv("RESNET_DATA", str(tmp_path / "home"))
    monkeypatch.setattr(small, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    assert main(["data", "fashion-mnist", "--no-apt", "--no-download"]) == 2  # no intact copy anywhere: one line
    captured = capsys.readouterr()
    assert f"skipping {home}: {path.name} cannot be read as gzip" in captured.out
    assert captured.err.count("\n") == 1 and "internal error" not in captured.err
    assert path.with_name(path.name + ".damaged").exists()
