"""The data step (`make data`): files present, Debian's package, a checksummed download, or one clear error.

Nothing here touches the real system: the Debian folder, apt-get and the mirror are stand-ins the
tests make (a script, a temporary folder, an HTTP server on 127.0.0.1).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import write_idx

from resnet.cli import main
from resnet.data import fetch, small

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_fashion(folder: Path) -> dict[str, str]:
    """Four small IDX .gz files in the real format; returns {file name: md5} computed with hashlib."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return {f"{s}.gz": hashlib.md5((folder / f"{s}.gz").read_bytes()).hexdigest() for s in STEMS}


@pytest.fixture
def mirror(tmp_path):
    """An HTTP server on 127.0.0.1 serving a folder of Fashion-MNIST files; yields (url, md5s)."""
    served = tmp_path / "served"
    md5s = write_fashion(served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", md5s
    server.shutdown()


REAL_PUBLISHED = small.FASHION_PUBLISHED  # the real Fashion-MNIST's sizes and checksums


def published_like_write_fashion(folder: Path) -> dict:
    """FASHION_PUBLISHED for the files `write_fashion` writes (the same data every time): the tests' 'published' set."""
    write_fashion(folder)
    table = {}
    for stem in STEMS:
        data = gzip.decompress((folder / f"{stem}.gz").read_bytes())
        table[stem] = (set(), len(data), hashlib.md5(data).hexdigest())
    return table


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real data folders: $RESNET_DATA and Debian's folder point into tmp_path; the small files that
    `write_fashion` writes count as the published ones."""
    monkeypatch.setenv("RESNET_DATA", str(tmp_path / "home"))
    monkeypatch.setattr(small, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setattr(small, "FASHION_PUBLISHED", published_like_write_fashion(tmp_path / "published"))


def fake_apt_get(tmp_path: Path, source: Path, target: Path) -> str:
    """A stand-in apt-get: `install` copies the files into the 'Debian' folder, and records its arguments."""
    script = tmp_path / "apt-get"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'apt.log'}\n"
                      f"[ \"$1\" = install ] && mkdir -p {target} && cp {source}/*.gz {target}/\nexit 0\n")
    script.chmod(0o755)
    return str(script)


def test_package_already_present_is_used_without_fetching(tmp_path):
    write_fashion(tmp_path / "debian")
    folder, how = fetch.ensure_fashion_mnist(apt_get="/nonexistent/apt-get", mirrors=["http://127.0.0.1:9/"])
    assert (folder, how) == (tmp_path / "debian", "present")


def test_debian_package_is_installed_when_root(tmp_path, monkeypatch):
    write_fashion(tmp_path / "pkg")
    monkeypatch.setattr(fetch.os, "geteuid", lambda: 0)
    apt = fake_apt_get(tmp_path, tmp_path / "pkg", tmp_path / "debian")
    folder, how = fetch.ensure_fashion_mnist(apt_get=apt, download=False)
    assert (folder, how) == (tmp_path / "debian", "debian")
    assert "install -y -q dataset-fashion-mnist" in (tmp_path / "apt.log").read_text()
    images, labels = small.read_fashion_mnist(folder, "train")
    assert images.shape == (20, 1, 28, 28) and labels.shape == (20,)


def test_download_from_a_mirror_checks_md5(tmp_path, mirror):
    url, md5s = mirror
    resources = [(name, md5) for name, md5 in md5s.items()]
    folder, how = fetch.ensure_fashion_mnist(apt=False, mirrors=[url], resources=resources)
    assert how == "download" and folder == tmp_path / "home" / "fashion-mnist" / "FashionMNIST" / "raw"
    images, _ = small.read_fashion_mnist(folder, "test")
    assert images.shape == (10, 1, 28, 28)
    # a second call finds the files and fetches nothing
    assert fetch.ensure_fashion_mnist(apt=False, mirrors=["http://127.0.0.1:9/"])[1] == "present"


def test_download_with_a_wrong_checksum_is_refused(tmp_path, mirror):
    url, md5s = mirror
    resources = [(name, "0" * 32) for name in md5s]
    with pytest.raises(fetch.DataUnavailable, match="download"):
        fetch.ensure_fashion_mnist(apt=False, mirrors=[url], resources=resources)


def test_neither_way_is_one_line_naming_both_and_exit_2(tmp_path, monkeypatch, capsys):
    from torchvision.datasets import FashionMNIST

    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens on port 9
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get
    assert main(["data", "fashion-mnist"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "apt-get install dataset-fashion-mnist" in error and "resnet data fashion-mnist" in error
    assert "no apt-get on this machine" in error


# ---- damaged copies: checked by size and md5, skipped or moved aside, never shadowing an intact one ---------


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupt":  # one flipped byte inside the compressed data: only the CRC (or inflate) notices
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    else:
        path.write_bytes(b"<html>404 not found</html>")


@pytest.mark.parametrize("how", ["empty", "truncated", "corrupt", "not gzip"])
def test_a_damaged_copy_in_the_data_home_is_skipped_said_and_moved_aside(tmp_path, capsys, how):
    write_fashion(tmp_path / "debian")
    home = tmp_path / "home" / "fashion-mnist"
    write_fashion(home)
    bad = home / "train-images-idx3-ubyte.gz"
    damage(bad, how)
    assert main(["data", "fashion-mnist", "--no-apt", "--no-download"]) == 0
    out = capsys.readouterr().out
    assert f"fashion-mnist: skipping {home}: train-images-idx3-ubyte.gz" in out
    assert out.strip().splitlines()[-1] == f"fashion-mnist: present in {tmp_path / 'debian'}"
    assert not bad.exists() and bad.with_name(bad.name + ".damaged").exists()  # kept, no longer in the way
    assert small.fashion_mnist_root(None, download=False) == tmp_path / "debian"


@pytest.mark.parametrize("how", ["empty", "truncated", "not gzip"])
def test_training_skips_a_damaged_copy_that_would_shadow_debians(tmp_path, how):
    write_fashion(tmp_path / "debian")
    home = tmp_path / "home" / "fashion-mnist"
    write_fashion(home)
    damage(home / "t10k-labels-idx1-ubyte.gz", how)
    with pytest.warns(UserWarning, match=f"skipping the damaged copy in {home} .*t10k-labels-idx1-ubyte.gz"):
        assert small.fashion_mnist_root(None, download=False) == tmp_path / "debian"


def test_a_copy_with_other_data_is_skipped_but_left_as_it_is(tmp_path, capsys):
    write_fashion(tmp_path / "debian")
    home = tmp_path / "home" / "fashion-mnist"
    write_fashion(home)
    write_idx(home / "train-labels-idx1-ubyte.gz", np.zeros(20, dtype=np.uint8))  # readable, but not the data
    assert main(["data", "fashion-mnist", "--no-apt", "--no-download"]) == 0
    out = capsys.readouterr().out
    assert f"skipping {home}: train-labels-idx1-ubyte.gz's md5 is not the published file's" in out
    assert (home / "train-labels-idx1-ubyte.gz").exists()


def test_damaged_everywhere_and_no_way_to_fetch_is_one_line_exit_2(tmp_path, capsys):
    write_fashion(tmp_path / "home" / "fashion-mnist")
    damage(tmp_path / "home" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz", "truncated")
    assert main(["data", "fashion-mnist", "--no-apt", "--no-download"]) == 2
    captured = capsys.readouterr()
    assert "t10k-images-idx3-ubyte.gz is truncated" in captured.out and captured.err.count("\n") == 1


@pytest.mark.skipif(not (REAL_PUBLISHED and Path("/usr/share/datasets/fashion-mnist").is_dir()),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_real_files_match_the_published_checksums(monkeypatch):
    monkeypatch.setattr(small, "FASHION_PUBLISHED", REAL_PUBLISHED)
    debian = Path("/usr/share/datasets/fashion-mnist")
    for stem in STEMS:  # read only: nothing is written there
        assert small.fashion_mismatch(debian / f"{stem}.gz") is None
