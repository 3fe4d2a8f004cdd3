"""The data step (`make data`, `resnet data fashion-mnist`): get Fashion-MNIST onto a fresh machine.

In order: files already present (a `--data-dir`, $RESNET_DATA or ~/.cache/resnet, or Debian's folder);
Debian's `dataset-fashion-mnist` package, when this is a Debian/Ubuntu machine and we are root (the
package registries are reachable even where the internet is not, as on CI); torchvision's mirrors with
their md5 checksums. When all fail, one error says both ways to get the data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from resnet.data import small

DEBIAN_PACKAGE = "dataset-fashion-mnist"


class DataUnavailable(FileNotFoundError):
    """No way to get the dataset worked; the message says what to do."""


def _present(data_dir: str | Path | None, debian_dir: Path, say: Callable[[str], None] = print) -> Path | None:
    """The folder with the four published IDX files, if any of the usual places has them (size and md5 checked).

    A copy that is not the published one is skipped and said so; its damaged files (empty, truncated, corrupt)
    are renamed NAME.damaged, so that they no longer shadow an intact copy (Debian's) and a download can replace
    them; readable files with other data are left as they are. Debian's own folder is never changed.
    """
    folders = small.fashion_mnist_candidates(data_dir)
    if data_dir is None:
        folders = [f for f in folders if not f.is_relative_to(small.DEBIAN_FASHION_MNIST)]
        folders += [debian_dir, debian_dir / "raw"]
    for folder in folders:
        if not small._fashion_complete(folder):
            continue
        files = [small._idx_file(folder, stem) for pair in small.FASHION_FILES.values() for stem in pair]
        problems = [(path, found) for path in files if (found := small.fashion_mismatch(path)) is not None]
        if not problems:
            return folder
        ours = not folder.is_relative_to(debian_dir)
        for path, (kind, why) in problems:
            if kind == "damaged" and ours:
                path.rename(path.with_name(path.name + ".damaged"))
                why += f"; moved aside to {path.name}.damaged"
            say(f"fashion-mnist: skipping {folder}: {why}")
        if not ours:
            say(f"fashion-mnist: reinstall Debian's copy with `sudo apt-get install --reinstall {DEBIAN_PACKAGE}`")
    return None


def install_debian_package(apt_get: str = "apt-get") -> str | None:
    """apt-get install the package (with an `apt-get update` on a first failure); None if done, else why not."""
    if shutil.which(apt_get) is None:
        return "no apt-get on this machine"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "not root (run: sudo apt-get install dataset-fashion-mnist)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt_get, "install", "-y", "-q", DEBIAN_PACKAGE]
    print(f"installing Debian's {DEBIAN_PACKAGE} with {apt_get}", flush=True)
    if subprocess.run(install, env=env, stdin=subprocess.DEVNULL).returncode == 0:
        return None
    subprocess.run([apt_get, "update", "-q"], env=env, stdin=subprocess.DEVNULL)
    if subprocess.run(install, env=env, stdin=subprocess.DEVNULL).returncode == 0:
        return None
    return f"{apt_get} install {DEBIAN_PACKAGE} failed"


def download_fashion_mnist(target: Path, mirrors: Sequence[str] | None = None,
                           resources: Sequence[tuple[str, str]] | None = None) -> Path:
    """torchvision's download (its mirrors, each file's md5 checked) into target/FashionMNIST/raw."""
    from torchvision.datasets import FashionMNIST

    overrides = {"mirrors": mirrors, "resources": resources}
    # the same class name, because torchvision names the download folder after the class
    Mirrored = type("FashionMNIST", (FashionMNIST,), {k: list(v) for k, v in overrides.items() if v is not None})
    small._download("Fashion-MNIST", target, lambda: Mirrored(str(target), download=True))
    return target / "FashionMNIST" / "raw"


def ensure_fashion_mnist(data_dir: str | Path | None = None, *, apt: bool = True, download: bool = True,
                         apt_get: str = "apt-get", debian_dir: Path | None = None,
                         mirrors: Sequence[str] | None = None,
                         resources: Sequence[tuple[str, str]] | None = None,
                         say: Callable[[str], None] = print) -> tuple[Path, str]:
    """(folder with the IDX files, how it was found: 'present', 'debian' or 'download'), or DataUnavailable.

    A copy counts as present only if every file is the published one (`_present`); `say` gets a line for each
    copy skipped and why.
    """
    debian_dir = debian_dir or small.DEBIAN_FASHION_MNIST
    found = _present(data_dir, debian_dir, say)
    if found is not None:
        return found, "present"
    reasons = []
    if apt and data_dir is None:
        why = install_debian_package(apt_get)
        found = _present(None, debian_dir, say) if why is None else None
        if found is not None:
            return found, "debian"
        reasons.append(f"Debian package: {why or f'installed, but no IDX files in {debian_dir}'}")
    if download:
        target = Path(data_dir).expanduser() if data_dir is not None else small.data_home() / "fashion-mnist"
        try:
            return download_fashion_mnist(target, mirrors, resources), "download"
        except (small.DownloadError, RuntimeError) as error:
            reasons.append(f"download: {str(error).splitlines()[0]}")
    place = data_dir or f"{small.data_home() / 'fashion-mnist'}"
    raise DataUnavailable(
        f"fashion-mnist: not found and could not be fetched ({'; '.join(reasons) or 'fetching disabled'}); either "
        f"`sudo apt-get install {DEBIAN_PACKAGE}` (Debian/Ubuntu), or on a machine with internet run "
        f"`resnet data fashion-mnist` and copy the four *-ubyte.gz files into {place}")
