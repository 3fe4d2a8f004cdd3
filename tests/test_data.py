"""Datasets read back from small files written in their real formats, and the paper's transforms."""

from __future__ import annotations

import gzip
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from helpers import write_idx
from torchvision import tv_tensors

from resnet.data import DATASETS, DatasetInfo, DownloadError, dataset_info, get_dataset, load_tensors, pixel_mean
from resnet.data import datasets as datasets_module
from resnet.data.datasets import describe_input
from resnet.data.folder import decode_image
from resnet.data.transforms import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    Lighting,
    MeanSubtract,
    resize_shorter,
    test_transform,
    train_transform,
)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_shared_cache(tmp_path, monkeypatch):
    """Keep every default path (data home, mean cache) inside the test's own folder."""
    monkeypatch.setenv("RESNET_DATA", str(tmp_path / "data-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))


# ---- writers for the real formats ----------------------------------------------------------


def write_cifar(root: Path, name: str = "cifar10", per_batch: int = 20, n_test: int = 20, seed: int = 0) -> dict:
    """CIFAR python batches (pickle protocol 2, like the originals) in torchvision's folder; returns what was written."""
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    names = {"train": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"], "test": ["test_batch"]}
    if name == "cifar100":
        names = {"train": ["train"], "test": ["test"]}
    written = {}
    for split, files in names.items():
        datas, labels = [], []
        for f in files:
            n = per_batch * (5 if name == "cifar100" and split == "train" else 1) if split == "train" else n_test
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            label = rng.integers(0, classes, n).tolist()
            batch = {"batch_label": f, label_key: label, "data": data, "filenames": [f"{i}.png" for i in range(n)]}
            if name == "cifar100":
                batch["coarse_labels"] = [x // 5 for x in label]
            (folder / f).write_bytes(pickle.dumps(batch, protocol=2))
            datas.append(data)
            labels += label
        written[split] = (np.concatenate(datas), np.array(labels))
    class_names = [f"class{i}" for i in range(classes)]
    meta = {"label_names": class_names} if name == "cifar10" else {"fine_label_names": class_names, "coarse_label_names": []}
    (folder / ("batches.meta" if name == "cifar10" else "meta")).write_bytes(pickle.dumps(meta, protocol=2))
    written["folder"] = folder
    return written



def write_fashion(folder: Path, n_train: int = 120, n_test: int = 30, gz: bool = True) -> dict:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels)
        written[stem] = (images, labels)
    return written


COLOURS = {"n01440764": (250, 10, 10), "n01443537": (10, 10, 250)}  # class -> the colour its images are painted


def jpeg(path: Path, colour, size=(64, 48), mode: str = "RGB") -> None:
    image = Image.new("RGB", size, colour)
    image.convert(mode).save(path, "JPEG", quality=95)


def write_imagenet(root: Path, flat_val: bool = True) -> dict:
    """train/<wnid>/*.JPEG (RGB, grayscale, CMYK JPEGs, palette and RGBA PNGs, one truncated JPEG), val/ flat + Kaggle CSVs."""
    train = root / "train"
    for wnid, colour in COLOURS.items():
        (train / wnid).mkdir(parents=True)
        for i in range(3):
            jpeg(train / wnid / f"{wnid}_{i}.JPEG", colour)
    jpeg(train / "n01440764" / "n01440764_cmyk.JPEG", COLOURS["n01440764"], mode="CMYK")
    jpeg(train / "n01443537" / "n01443537_gray.JPEG", (10, 10, 250), mode="L")
    Image.new("RGB", (40, 30), COLOURS["n01443537"]).convert("P", palette=Image.Palette.ADAPTIVE).save(train / "n01443537" / "n01443537_p.png")
    Image.new("RGBA", (40, 30), COLOURS["n01440764"] + (255,)).save(train / "n01440764" / "n01440764_rgba.png")
    whole = train / "n01440764" / "n01440764_9.JPEG"
    jpeg(whole, COLOURS["n01440764"], size=(640, 480))
    truncated = train / "n01440764" / "n01440764_5_truncated.JPEG"
    data = whole.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    val = root / "val"
    val.mkdir()
    truth = {}
    for i in range(1, 7):
        wnid = list(COLOURS)[i % 2]
        stem = f"ILSVRC2012_val_{i:08d}"
        target = val / wnid if not flat_val else val
        target.mkdir(exist_ok=True)
        jpeg(target / f"{stem}.JPEG", COLOURS[wnid])
        truth[stem] = wnid
    if flat_val:
        rows = ["ImageId,PredictionString"] + [f"{s},{w} 1 2 30 40 {w} 5 6 20 20" for s, w in truth.items()]
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    return {"truncated": truncated, "truth": truth}


def colour_class(image: torch.Tensor) -> str:
    """Which class colour a decoded image is painted with (red or blue dominant)."""
    r, _, b = image.float().mean(dim=(1, 2)).tolist()
    return "n01440764" if r > b else "n01443537"


# ---- CIFAR ---------------------------------------------------------------------------------


def test_cifar10_batches_read_back_exactly(tmp_path):
    written = write_cifar(tmp_path)
    train = get_dataset("cifar10", "train", tmp_path)
    test = get_dataset("cifar10", "test", written["folder"])  # the batches folder itself is accepted too
    assert len(train) == 100 and len(test) == 20
    image, label = train[37]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    row = written["train"][0][37]
    assert torch.equal(image[0], torch.from_numpy(row[:1024].reshape(32, 32)))  # R plane first, row-major
    assert torch.equal(image[2], torch.from_numpy(row[2048:].reshape(32, 32)))
    assert label == written["train"][1][37]
    assert train.info.classes == [f"class{i}" for i in range(10)] and train.info.num_classes == 10
    assert (train.info.image_size, train.info.channels, train.info.style) == (32, 3, "small")


def test_cifar100_layout(tmp_path):
    written = write_cifar(tmp_path, "cifar100")
    images, labels, info = load_tensors("cifar100", "test", tmp_path)
    assert images.shape == (20, 3, 32, 32) and labels.dtype == torch.int64
    assert labels.tolist() == written["test"][1].tolist()
    assert info.num_classes == 100


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar(tmp_path)
    evil = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": Path("/")}  # a global outside the allow list
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(ValueError, match="test_batch"):
        load_tensors("cifar10", "test", tmp_path)


def test_val_split_is_the_papers_45k_5k_shape_disjoint_and_fixed_by_seed(tmp_path):
    written = write_cifar(tmp_path, per_batch=40)  # 200 training images -> 180 / 20
    train, train_labels, _ = load_tensors("cifar10", "train", tmp_path, val_split=True, seed=3)
    val, val_labels, _ = load_tensors("cifar10", "val", tmp_path, val_split=True, seed=3)
    assert (len(train), len(val)) == (180, 20)
    rows = {r.tobytes(): i for i, r in enumerate(written["train"][0])}
    train_idx = {rows[x.numpy().reshape(-1).tobytes()] for x in train}
    val_idx = {rows[x.numpy().reshape(-1).tobytes()] for x in val}
    assert not train_idx & val_idx and len(train_idx | val_idx) == 200
    assert val_labels.tolist() == [written["train"][1][i] for i in sorted(val_idx)]
    again, _, _ = load_tensors("cifar10", "val", tmp_path, val_split=True, seed=3)
    other, _, _ = load_tensors("cifar10", "val", tmp_path, val_split=True, seed=4)
    assert torch.equal(again, val) and not torch.equal(other, val)
    official_test, _, _ = load_tensors("cifar10", "val", tmp_path)  # without val_split, "val" is the test set
    assert torch.equal(official_test.reshape(20, -1), torch.from_numpy(written["test"][0]))
    assert len(get_dataset("cifar10", "val", tmp_path, val_split=True, seed=3)) == 20


def test_pixel_mean_is_the_training_mean_image_and_is_cached(tmp_path, monkeypatch):
    written = write_cifar(tmp_path)
    expected = written["train"][0].reshape(-1, 3, 32, 32).astype(np.float64).mean(axis=0) / 255
    mean = pixel_mean("cifar10", tmp_path)
    assert mean.dtype == torch.float32 and mean.shape == (3, 32, 32)
    np.testing.assert_allclose(mean.numpy(), expected, atol=1e-6)
    assert not list(written["folder"].glob("*mean*"))  # never written into the data folder
    assert len(list((tmp_path / "cache-home" / "resnet").glob("mean-cifar10-*.safetensors"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(datasets_module, "_compute_mean", fail)
    assert torch.equal(pixel_mean("cifar10", tmp_path), mean)
    assert torch.equal(pixel_mean("cifar10", tmp_path, val_split=True, seed=3), mean)  # always the full training set


# ---- Fashion-MNIST --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_fashion_mnist_idx_files(tmp_path, layout):
    folder = tmp_path / "fm" if layout == "flat-gz" else tmp_path / "fm" / "FashionMNIST" / "raw"
    written = write_fashion(folder, gz=layout == "flat-gz")
    train = get_dataset("fashion-mnist", "train", tmp_path / "fm")
    image, label = train[5]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8
    assert torch.equal(image[0], torch.from_numpy(written["train"][0][5])) and label == written["train"][1][5]
    info = dataset_info("fashion-mnist", tmp_path / "fm")
    assert (info.channels, info.image_size, info.num_classes, info.style) == (1, 28, 10, "small")
    assert info.class_names[0] == "T-shirt/top"
    assert len(get_dataset("fashion-mnist", "test", tmp_path / "fm")) == 30
    tr, _, _ = load_tensors("fashion-mnist", "train", tmp_path / "fm", val_split=True)
    va, _, _ = load_tensors("fashion-mnist", "val", tmp_path / "fm", val_split=True)
    assert (len(tr), len(va)) == (110, 10)  # 55k/5k in proportion
    expected = written["train"][0].astype(np.float64).mean(axis=0) / 255
    np.testing.assert_allclose(pixel_mean("fashion-mnist", tmp_path / "fm")[0].numpy(), expected, atol=1e-6)


def test_truncated_idx_file_is_named(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is truncated"):
        load_tensors("fashion-mnist", "train", tmp_path)


def test_labels_outside_the_classes_are_one_line_naming_the_file(tmp_path):
    labels = write_fashion(tmp_path / "fm")["t10k"][1].copy()
    labels[3] = 10
    write_idx(tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: label 10 at position 3 is outside the 10 classes"):
        load_tensors("fashion-mnist", "test", tmp_path / "fm")
    folder = write_cifar(tmp_path / "c")["folder"]
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch["labels"][0] = -1
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch: label -1 at position 0 is outside the 10 classes"):
        load_tensors("cifar10", "test", tmp_path / "c")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_found_without_configuration():
    train, train_labels, info = load_tensors("fashion-mnist", "train")
    test, test_labels, _ = load_tensors("fashion-mnist", "test")
    assert info.root == str(DEBIAN_FASHION)
    assert train.shape == (60_000, 1, 28, 28) and test.shape == (10_000, 1, 28, 28)
    assert info.num_classes == 10
    assert torch.bincount(train_labels).tolist() == [6000] * 10  # the published class balance
    assert torch.bincount(test_labels).tolist() == [1000] * 10
    mean = pixel_mean("fashion-mnist")
    assert mean.shape == (1, 28, 28) and abs(mean.mean().item() - 0.2860) < 1e-3  # Fashion-MNIST's known mean


# ---- ImageNet and folders -------------------------------------------------------------------


def test_imagenet_tree_with_flat_val_kaggle_ground_truth(tmp_path):
    written = write_imagenet(tmp_path)
    val = get_dataset("imagenet", "val", tmp_path)
    assert val.info.classes == list(COLOURS) and val.info.class_names == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert len(val) == 6
    for (path, label), (image, item_label) in zip(val.samples, val):
        assert item_label == label
        assert val.info.classes[label] == written["truth"][Path(path).stem] == colour_class(image)
    assert len(get_dataset("imagenet", "test", tmp_path)) == 6


def test_imagenet_modes_become_rgb_and_corrupt_files_are_skipped(tmp_path):
    written = write_imagenet(tmp_path)
    train = get_dataset("imagenet", "train", tmp_path)
    assert len(train) == 12
    with pytest.warns(UserWarning, match="n01440764_5_truncated.JPEG") as record:
        items = [train[i] for i in range(len(train))]
    assert len([w for w in record if "truncated" in str(w.message)]) == 1 and train.skipped == 1
    for image, label in items:
        assert image.shape[0] == 3 and image.dtype == torch.uint8
        assert train.info.classes[label] == colour_class(image)  # CMYK, L, P, RGBA all decode to the right colour
    bad = [i for i, (p, _) in enumerate(train.samples) if p == str(written["truncated"])][0]
    assert train[bad][0].shape[-2:] != (0, 0)  # the next valid item stands in
    strict = get_dataset("imagenet", "train", tmp_path, strict=True)
    with pytest.raises(ValueError, match="n01440764_5_truncated.JPEG"):
        strict[bad]


def test_imagenet_kaggle_layout_and_class_folder_val(tmp_path):
    root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    write_imagenet(root, flat_val=False)
    (root / "LOC_synset_mapping.txt").rename(tmp_path / "LOC_synset_mapping.txt")  # Kaggle keeps it at the top
    val = get_dataset("imagenet", "val", tmp_path)
    assert len(val) == 6 and val.info.class_names[1] == "goldfish, Carassius auratus"
    assert all(val.info.classes[label] == colour_class(image) for image, label in val)


def test_flat_val_with_devkit_ground_truth(tmp_path):
    write_imagenet(tmp_path)
    (tmp_path / "LOC_val_solution.csv").unlink()
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    truth = [list(COLOURS).index(list(COLOURS)[i % 2]) for i in range(1, 7)]
    ids = [7, 3]  # ILSVRC2012_IDs are not the sorted-wnid order: n01440764 -> 7, n01443537 -> 3
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[t]}\n" for t in truth))
    try:
        import scipy.io
    except ImportError:
        (data / "meta.mat").write_bytes(b"")
        with pytest.raises(RuntimeError, match="needs scipy"):
            get_dataset("imagenet", "val", tmp_path)
        return
    synsets = np.array(
        [(7, "n01440764", "tench, Tinca tinca", 0), (3, "n01443537", "goldfish, Carassius auratus", 0), (1001, "n00000001", "fish", 2)],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")],
    )
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    val = get_dataset("imagenet", "val", tmp_path)
    assert val.info.class_names == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert all(val.info.classes[label] == colour_class(image) for image, label in val)


def test_folder_dataset_and_its_channel_mean(tmp_path):
    for split in ("train", "val"):
        for name, colour in (("cat", (200, 100, 0)), ("dog", (0, 50, 100))):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                jpeg(tmp_path / split / name / f"{i}.jpg", colour, size=(80, 60))
    train = get_dataset("folder", "train", tmp_path)
    assert train.info.classes == ["cat", "dog"] and train.info.style == "imagenet" and train.info.image_size == 224
    assert [label for _, label in get_dataset("folder", "val", tmp_path)] == [0, 0, 1, 1]
    mean = pixel_mean("folder", tmp_path)
    assert mean.shape == (3, 1, 1)
    np.testing.assert_allclose(mean.flatten().numpy(), np.array([100, 75, 50]) / 255, atol=2 / 255)


def test_draft_decodes_large_jpegs_at_reduced_size_never_below_the_need(tmp_path):
    path = tmp_path / "big.jpg"
    jpeg(path, (10, 200, 30), size=(2000, 1500))
    assert decode_image(path).size == (2000, 1500)
    reduced = decode_image(path, 256)
    assert min(reduced.size) >= 256 and reduced.size[0] < 1000  # 1/4 scale: 500x375
    for name in ("a", "b"):  # two classes: a folder of one is refused
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / "big.jpg").write_bytes(path.read_bytes())
    info = dataset_info("folder", tmp_path)
    dataset = get_dataset("folder", "train", tmp_path, transform=test_transform(info, torch.zeros(3, 1, 1)))
    assert dataset.draft == 256 and dataset[0][0].shape == (3, 224, 224)
    assert get_dataset("folder", "train", tmp_path, transform=train_transform(info, torch.zeros(3))).draft == 256
    assert get_dataset("folder", "train", tmp_path).draft is None  # no transform: the full image


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, hint", [("cifar10", "--download"), ("cifar100", "--download"),
                                        ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
                                        ("imagenet", "train/<wnid>"), ("folder", "train/<class>")])
def test_missing_dataset_folder_is_one_line_naming_the_path(tmp_path, name, hint):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        get_dataset(name, "train", missing)
    message = str(error.value)
    assert str(missing) in message and hint in message and "\n" not in message


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist"])
def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch, name):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DownloadError) as error:
        get_dataset(name, "train", tmp_path / "dl", download=True)
    message = str(error.value)
    assert "failed" in message and str(tmp_path / "dl") in message and "by hand" in message and "\n" not in message


def test_unknown_names_and_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="unknown split"):
        get_dataset("synthetic", "dev")
    with pytest.raises(ValueError, match="num_classes"):
        get_dataset("cifar10", data_dir=tmp_path, num_classes=3)


# ---- synthetic ------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_sized():
    data = get_dataset("synthetic", num_classes=5, image_size=40, length=30, seed=2)
    assert data.info.num_classes == 5 and data.info.style == "small" and len(data) == 30
    image, label = data[7]
    assert image.shape == (3, 40, 40) and image.dtype == torch.uint8 and 0 <= label < 5
    assert torch.equal(image, get_dataset("synthetic", num_classes=5, image_size=40, length=30, seed=2)[7][0])
    images, labels, info = load_tensors("synthetic", num_classes=5, image_size=40, length=30, seed=2)
    assert torch.equal(images[7], image) and labels[7] == label
    assert not torch.equal(get_dataset("synthetic", "test", num_classes=5, image_size=40, length=30, seed=2)[7][0], image)
    assert dataset_info("synthetic", image_size=128).style == "imagenet"
    assert set(DATASETS) == {"cifar10", "cifar100", "fashion-mnist", "imagenet", "folder", "synthetic"}
    with pytest.raises(ValueError):
        load_tensors("folder")


# ---- transforms -----------------------------------------------------------------------------


def small_info(size: int = 32) -> DatasetInfo:
    return DatasetInfo("cifar10", list("0123456789"), list("0123456789"), 3, size, "small", None)


def test_cifar_train_crop_is_the_padded_image_shifted_at_most_4_px_and_flips_half():
    torch.manual_seed(0)
    image = torch.randint(1, 256, (3, 32, 32), dtype=torch.uint8)  # no zeros: padding is recognisable
    padded = torch.nn.functional.pad(image.float() / 255, (4, 4, 4, 4))
    transform = train_transform(small_info(), torch.zeros(3, 32, 32))
    windows = {(dy, dx, flip): (padded[:, dy:dy + 32, dx:dx + 32].flip(-1) if flip else padded[:, dy:dy + 32, dx:dx + 32])
               for dy in range(9) for dx in range(9) for flip in (False, True)}
    seen = []
    for _ in range(300):
        out = transform(tv_tensors.Image(image))
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and type(out) is torch.Tensor
        match = [key for key, window in windows.items() if torch.allclose(out, window, atol=1e-6)]
        assert len(match) == 1
        seen.append(match[0])
    assert {dy for dy, _, _ in seen} == set(range(9)) and {dx for _, dx, _ in seen} == set(range(9))
    flips = sum(flip for _, _, flip in seen)
    assert 115 < flips < 185  # Binomial(300, 0.5): mean 150, sd 8.7


def test_the_printed_protocol_names_the_runs_crop_padding():
    assert "pad 4, random crop" in describe_input(small_info())  # the paper's
    assert "pad 2, random crop" in describe_input(small_info(), crop_pad=2)  # --crop-pad 2
    assert "no crop" in describe_input(small_info(), crop_pad=0) and "pad" not in describe_input(small_info(), 0)


def test_train_transform_subtracts_the_mean_and_accepts_pil():
    mean = torch.rand(3, 32, 32)
    out = train_transform(small_info(), mean)(Image.new("RGB", (32, 32), (255, 255, 255)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    # a shift of at most 4 px keeps the centre inside the white image; the mean is subtracted after the crop
    assert torch.allclose(out[:, 8:24, 8:24], 1 - mean[:, 8:24, 8:24], atol=1e-6)


def test_small_test_transform_is_the_image_minus_the_mean_and_deterministic():
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    mean = torch.rand(1, 28, 28)
    transform = test_transform(small_info(28), mean)
    out = transform(image)
    assert torch.allclose(out, image.float() / 255 - mean, atol=1e-6) and torch.equal(out, transform(image))


def test_imagenet_transforms_sizes_and_scale_range():
    info = DatasetInfo("imagenet", ["a"], ["a"], 3, 224, "imagenet", None)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8))
    test = test_transform(info, torch.zeros(3, 1, 1))
    out = test(image)
    assert out.shape == (3, 224, 224) and torch.equal(out, test(image)) and test.min_side == 256
    train = train_transform(info, torch.zeros(3, 1, 1))
    assert train.min_side == 256 and train(image).shape == (3, 224, 224)
    scale = train.transforms[1]
    assert min(scale.min_size) == 256 and max(scale.min_size) == 480
    assert resize_shorter(256)(image).shape == (3, 256, 341)
    pil = Image.new("RGB", (500, 375), (1, 2, 3))
    assert test(pil).shape == (3, 224, 224) and train(pil).dtype == torch.float32


def test_mean_subtract_falls_back_to_channel_mean_for_other_sizes():
    mean = torch.rand(3, 32, 32)
    image = torch.rand(3, 40, 40)
    assert torch.allclose(MeanSubtract(mean)(image), image - mean.mean(dim=(1, 2), keepdim=True))
    assert torch.allclose(MeanSubtract(mean)(image[:, :32, :32]), image[:, :32, :32] - mean)
    assert torch.allclose(MeanSubtract(torch.tensor([0.1, 0.2, 0.3]))(image), image - torch.tensor([0.1, 0.2, 0.3])[:, None, None])


def test_lighting_is_alexnet_pca_noise():
    image = torch.rand(3, 16, 16)
    assert torch.equal(Lighting(0.0)(image), image)
    torch.manual_seed(0)
    alphas = []
    for _ in range(2000):
        shift = Lighting(0.1)(image) - image
        assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift), atol=1e-6)  # one RGB offset per image
        alphas.append(torch.linalg.solve(IMAGENET_EIGVEC, shift[:, 0, 0]) / IMAGENET_EIGVAL)
    alphas = torch.stack(alphas)
    assert torch.allclose(alphas.std(dim=0), torch.full((3,), 0.1), atol=0.01)
    assert torch.allclose(alphas.mean(dim=0), torch.zeros(3), atol=0.01)
