"""Image folders as a new user has them: any size, odd files, symlinks, 16-bit and rotated images, unreadable
files, a pixel-mean cache that follows the images, and training defaults that fit the data."""

from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from resnet.cli import build_parser, main
from resnet.commands.train import recipe_and_notes
from resnet.data import dataset_info, get_dataset, pixel_mean
from resnet.data.folder import decode_image
from resnet.data.sampling import balanced_sample
from resnet.data.transforms import train_transform


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """The mean cache goes to the test's own folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))


def band_image(label: int, size: int, rng: np.random.Generator, classes: int = 3) -> np.ndarray:
    """A grey image with a bright band whose height says its class (learnable, and any size)."""
    image = rng.integers(0, 80, (size, size), dtype=np.uint8)
    band = size // classes
    image[label * band:(label + 1) * band] += 150
    return image


def write_folder(root: Path, size: int = 28, per_class: dict | None = None, classes: int = 3, seed: int = 0) -> dict:
    """root/{train,val}/c<k>/<i>.png greyscale band images; returns {split: [(path, array)]}."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 8, "val": 3}
    written: dict[str, list] = {}
    for split, n in per_class.items():
        for label in range(classes):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                array = band_image(label, size, rng, classes)
                Image.fromarray(array).save(folder / f"{i}.png")
                written.setdefault(split, []).append((folder / f"{i}.png", array))
    return written


# ---- protocol from the images' size ------------------------------------------------------------


def test_small_images_train_at_native_size_with_the_cifar_protocol(tmp_path):
    write_folder(tmp_path / "small", size=28)
    write_folder(tmp_path / "large", size=96)
    small, large = dataset_info("folder", tmp_path / "small"), dataset_info("folder", tmp_path / "large")
    assert (small.style, small.image_size) == ("small", 28)
    assert (large.style, large.image_size) == ("imagenet", 224)
    forced = dataset_info("folder", tmp_path / "small", style="imagenet")
    assert (forced.style, forced.image_size) == ("imagenet", 224)
    assert dataset_info("folder", tmp_path / "large", image_size=48).style == "small"  # a small input size: CIFAR protocol
    # the training view is the image padded by 4 and cropped back to 28x28 (maybe flipped): find its offset
    image = torch.randint(1, 256, (3, 28, 28), dtype=torch.uint8)
    out = train_transform(small, torch.zeros(3, 28, 28))(image)
    assert out.shape == (3, 28, 28)
    padded = torch.nn.functional.pad(image.float() / 255, (4, 4, 4, 4))
    windows = [w for dy in range(9) for dx in range(9) for w in (padded[:, dy:dy + 28, dx:dx + 28],
                                                                padded[:, dy:dy + 28, dx:dx + 28].flip(-1))]
    assert any(torch.allclose(out, w) for w in windows)


def test_training_on_a_folder_prints_the_choice_stores_it_and_evaluates_val_once(tmp_path, capsys):
    write_folder(tmp_path / "data", size=20)
    rc = main(["train", "--model", "resnet20", "--base-width", "4", "--data", "folder", "--data-dir",
               str(tmp_path / "data"), "--iters", "2", "--batch-size", "8", "--device", "cpu", "--num-workers", "0",
               "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "small-image protocol at 20x20" in out and "lr 0.00625" in out  # 0.1 x 8/128, printed
    [row] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "val_top1_error" in row and not any(k.startswith("test_") for k in row)  # val/ once, not as val and test
    from resnet.checkpoint import load_weights

    _, meta, mean = load_weights(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert (meta["style"], meta["image_size"]) == ("small", 20) and mean.shape == (3, 20, 20)


# ---- defaults that fit the data ---------------------------------------------------------------


def test_folder_length_is_in_epochs_and_lr_scales_with_the_batch():
    def recipe(*argv):
        return recipe_and_notes(build_parser().parse_args(["train", "--model", "resnet18", *argv]))

    r, notes = recipe("--data", "folder")
    assert (r.iters, r.epochs) == (None, round(64_000 * 128 / 45_000)) and any("182 epochs" in n for n in notes)
    r, _ = recipe("--data", "imagenet", "--recipe", "paper-imagenet")
    assert (r.iters, r.epochs) == (None, round(600_000 * 256 / 1_281_167))
    r, notes = recipe("--data", "cifar10", "--batch-size", "32")
    assert (r.iters, r.lr, r.warmup_lr) == (64_000, 0.1 * 32 / 128, 0.01 * 32 / 128) and "lr 0.025" in notes[0]
    r, notes = recipe("--data", "imagenet", "--recipe", "paper-imagenet", "--batch-size", "1024", "--epochs", "5")
    assert (r.lr, r.epochs) == (0.4, 5) and len(notes) == 1
    r, notes = recipe("--data", "folder", "--batch-size", "32", "--lr", "0.3", "--iters", "10")
    assert (r.lr, r.iters, notes) == (0.3, 10, [])


# ---- balanced samples -------------------------------------------------------------------------


def test_subsets_are_seeded_and_class_balanced():
    targets = np.repeat(np.arange(4), [60, 60, 60, 5])  # class order, as a folder lists its files
    sample = balanced_sample(targets, 96, seed=0).numpy()
    counts = np.bincount(targets[sample], minlength=4)
    assert len(set(sample.tolist())) == 96 and counts[3] == 5 and counts[:3].max() - counts[:3].min() <= 1
    assert np.array_equal(sample, balanced_sample(targets, 96, seed=0).numpy())
    assert not np.array_equal(sample, balanced_sample(targets, 96, seed=1).numpy())
    counts = np.bincount(targets[balanced_sample(targets, 30, seed=2).numpy()], minlength=4)
    assert counts[3] == 5 and sorted(counts[:3]) == [8, 8, 9]  # the small class gives all it has, the rest share 25
    assert len(balanced_sample(targets, 1000)) == len(targets)


def test_training_subsets_of_a_folder_cover_every_class(tmp_path):
    from resnet.train import distributed
    from resnet.train.loop import make_data
    from resnet.train.recipes import get_recipe

    write_folder(tmp_path, size=16, per_class={"train": 40, "val": 20}, classes=4)
    recipe = get_recipe("paper-cifar", subset=24, eval_subset=8, batch_size=4, num_workers=0)
    train, evals, finals, _, _ = make_data("folder", str(tmp_path), recipe, distributed.Dist(), torch.device("cpu"),
                                           False)
    labels = [y for _, y in train.loader.dataset.dataset]
    assert len(labels) == 24 and np.bincount(labels).tolist() == [6, 6, 6, 6]
    held = [y for _, y in evals["val"].loader.dataset.dataset]
    assert sorted(np.bincount(held).tolist()) == [2, 2, 2, 2] and list(evals) == ["val"]
    assert len(finals["val"].loader.dataset) == 80  # the final evaluation reads every val image


# ---- odd folders ------------------------------------------------------------------------------


def test_empty_class_warned_symlink_loop_safe_and_each_file_once(tmp_path):
    written = write_folder(tmp_path, size=16, per_class={"train": 2})
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "train" / "junk").mkdir()
    (tmp_path / "train" / "junk" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "train" / "c0" / "loop").symlink_to(tmp_path / "train")  # a loop back to the top
    (tmp_path / "train" / "c1" / "again.png").symlink_to(tmp_path / "train" / "c1" / "0.png")  # the same file
    (tmp_path / "train" / "c2" / "sub").mkdir()
    (tmp_path / "train" / "c2" / "sub" / "deep.png").symlink_to(tmp_path / "train" / "c2" / "1.png")
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("the scan hangs")))
    signal.alarm(20)
    try:
        with pytest.warns(UserWarning) as record:
            dataset = get_dataset("folder", "train", tmp_path)
    finally:
        signal.alarm(0)
    messages = " ".join(str(w.message) for w in record)
    assert "empty" in messages and "junk" in messages
    assert dataset.info.classes == ["c0", "c1", "c2"]
    real = sorted(os.path.realpath(p) for p, _ in dataset.samples)
    assert real == sorted(str(p) for p, _ in written["train"])  # each real image once, symlinks followed at most once


def test_sixteen_bit_exif_palette_cmyk_rgba(tmp_path):
    values = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    decoded = np.asarray(decode_image(tmp_path / "deep.png"))
    assert np.array_equal(decoded[..., 0], np.round(values / 257).astype(np.uint8))  # scaled, not clipped to 255
    assert (decoded == 255).mean() < 0.01

    stored = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(tmp_path / f"o{orientation}.jpg", exif=exif, quality=95)
        raw = np.asarray(Image.open(tmp_path / f"o{orientation}.jpg").convert("RGB"))
        expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / f"o{orientation}.jpg")).convert("RGB"))
        turned = {3: np.rot90(raw, 2), 6: np.rot90(raw, -1), 8: np.rot90(raw, 1)}[orientation]
        got = np.asarray(decode_image(tmp_path / f"o{orientation}.jpg"))
        assert np.array_equal(got, expected) and np.array_equal(got, turned)

    colour = (200, 40, 10)
    Image.new("RGB", (8, 8), colour).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.new("RGBA", (8, 8), colour + (255,)).save(tmp_path / "rgba.png")
    Image.new("RGB", (8, 8), colour).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    for name in ("p.png", "rgba.png", "cmyk.jpg"):
        got = np.asarray(decode_image(tmp_path / name)).reshape(-1, 3).mean(0)
        assert np.abs(got - colour).max() <= 3, name


# ---- the per-pixel mean cache -----------------------------------------------------------------


def test_mean_is_numpys_cached_outside_the_data_and_follows_replaced_images(tmp_path):
    written = write_folder(tmp_path / "data", size=16)
    expected = np.mean([a for _, a in written["train"]], axis=0) / 255
    mean = pixel_mean("folder", tmp_path / "data")
    assert mean.shape == (3, 16, 16)
    np.testing.assert_allclose(mean[0].numpy(), expected, atol=1e-6)
    assert not [p for p in (tmp_path / "data").rglob("*") if "mean" in p.name]
    assert len(list((tmp_path / "cache-home" / "resnet").glob("mean-folder-*"))) == 1
    for path, _ in written["train"]:  # in place: same names, new content
        Image.fromarray(np.full((16, 16), 255, np.uint8)).save(path)
    np.testing.assert_allclose(pixel_mean("folder", tmp_path / "data").numpy(), 1.0, atol=1e-6)


# ---- eval with an unreadable file -------------------------------------------------------------


def test_eval_counts_only_readable_images_and_names_the_bad_one(tmp_path, capsys):
    import torch.nn.functional as F

    from resnet.checkpoint import save_weights
    from resnet import create_model
    from helpers import randomize_bn

    written = write_folder(tmp_path, size=16, per_class={"train": 2, "val": 4})
    bad = tmp_path / "val" / "c1" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    model = randomize_bn(create_model("resnet20", num_classes=3, base_width=4))
    mean = torch.rand(3, 16, 16)
    meta = {"model": "resnet20", "options": model.options, "classes": ["c0", "c1", "c2"], "image_size": 16,
            "style": "small"}
    save_weights(tmp_path / "m.safetensors", model, meta, mean)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rc = main(["eval", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", "folder", "--data-dir",
                   str(tmp_path), "--split", "val", "--workers", "0", "--no-progress", "--json",
                   str(tmp_path / "r.json")])
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["members"][0]["images"] == 11 and [s["image"] for s in result["skipped"]] == [str(bad)]
    assert any(str(bad) in str(w.message) for w in record) and str(bad) in capsys.readouterr().out
    good = [(p, a) for p, a in written["val"] if p != bad]
    labels = torch.tensor([int(p.parent.name[1]) for p, _ in good])
    x = torch.stack([torch.from_numpy(a).float().div(255).expand(3, -1, -1) for _, a in good]) - mean
    with torch.no_grad():
        wrong = (F.softmax(model(x), 1).argmax(1) != labels).float().mean().item()
    assert result["members"][0]["top1_error"] == pytest.approx(wrong)  # the bad file did not borrow a neighbour
