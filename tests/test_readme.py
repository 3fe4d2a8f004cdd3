"""The README and the docs run as written: their Python blocks execute and compute what they say, each command line
parses, and every command line that can work offline is run (small budgets, on small data this file writes) and
leaves what it should (a checkpoint, a report, an ONNX file that loads, the images it was given in its output); the
others are named with their reason. The pages are README.md and docs/*.md (PAGES; not docs/notes/, dated lab notes
whose commands record what was run then); a command is a line of an indented or fenced code block that starts a
`resnet` command, so moving a command between pages keeps it tested.

How a README line becomes a run (`prepare`), as general rules rather than a list of today's lines:

* placeholders are made before the command runs, in an empty working directory: a run directory for
  `--checkpoint runs/NAME`/`--resume`/`--init`, a checkpoint file for `*.safetensors`, an image folder
  (`train/<class>/`, `val/<class>/`) or the fashion-scenes for `--data-dir`, image files and folders for `predict`,
  a torchvision state dict for `convert SRC.pth`, and, for a weights name (`--init torchvision-v1`), a state dict
  of the right shape under the published file name in `$TORCH_HOME/hub/checkpoints` (a cached file is used as it
  is, the SHA-256 prefix is checked on download only: resnet/weights.py `download`); a run directory that another
  README line writes with `--out` is that line's output (so the fine-tune section runs as a chain);
* budgets are set: a few iterations (or the recipe's own length in epochs over a few images), a narrow net,
  a tiny `--budget` and at most two seeds for `reproduce`, a few canvases for `resnet data fashion-scenes`;
* data that cannot be fetched offline is replaced where the line's point survives (SUBSTITUTIONS); a line that
  cannot run offline at all must match exactly one pattern of OFFLINE, with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_fashion
from helpers import TEST_DEVICE
from PIL import Image

from resnet.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]  # docs/notes/ is not searched (glob is not recursive)
# akamaster's files (issue 22); RESNET_SHARED_WEIGHTS names the folder in a worktree that is not beside shared/
SHARED_WEIGHTS = Path(os.environ.get("RESNET_SHARED_WEIGHTS", ROOT.parent / "shared" / "weights"))

# A README command line that cannot work offline: a pattern (re.search on the line) and why. Every line that is
# not run must match exactly one, and a line that is run none (test_every_command_is_run_or_has_one_reason).
OFFLINE = {
    r"--download\b": "downloads a dataset (CIFAR-10/100 from torchvision's mirrors); the same commands on "
                     "Fashion-MNIST are run",
    r"^torchrun\b": "several processes under torchrun, on ImageNet (ILSVRC2012, 150 GB, not downloadable)",
    r"^resnet (train|analyze|predict|reproduce)\b.*--data imagenet\b": "ILSVRC2012 (150 GB) cannot be fetched",
    r"--data coco\b": "needs a COCO folder (18 GB), not available offline",
    r"^resnet serve\b": "starts a server that runs until it is stopped; tests/test_serve.py runs a real one on a "
                         "loopback port and compares its answers with `resnet predict`",
    r"^resnet demo\b": "trains four nets for 3,000 iterations (7 CPU minutes) and has no budget option; "
                       "`resnet reproduce degradation` (the same code) is run when the README has it",
}

# Data replaced by Fashion-MNIST where the line's point is the command, not the dataset: (pattern on the line,
# old, new). CIFAR-10/100 need a download; Fashion-MNIST takes the same small-image path (paper-cifar recipe,
# CIFAR protocol). `eval --data imagenet`: the ensemble and the protocol are what the line shows, and they run the
# same on a small-image checkpoint (multiscale at the image's own size).
SUBSTITUTIONS = [
    (r"--data cifar(10|100)\b", re.compile(r"^cifar(10|100)$"), "fashion-mnist"),
    (r"^resnet eval\b", re.compile(r"^imagenet$"), "fashion-mnist"),
]

TRAIN_ITERS = 2
FEW_IMAGES = 16  # --subset for Fashion-MNIST lines: the recipe's own length in epochs stays a few iterations
REPRODUCE_BUDGET = 2 / 64_000  # two iterations of the paper-cifar recipe (detection: two of each stage)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------- the README's lines


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def python_blocks(page: Path = README) -> list[str]:
    """A page's Python blocks, but the onnxruntime example: tests/test_export.py runs it on files it writes."""
    return [b for b in fenced_blocks(page.read_text(), "python") if "onnxruntime" not in b]


def code_lines(text: str) -> list[str]:
    """The lines of a page's indented (4 spaces) and fenced code blocks, Python blocks left out."""
    found, fence = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:]
            continue
        if (fence is not None and fence != "python") or (fence is None and line.startswith("    ")):
            found.append(line.strip())
    return found


def page_commands(page: Path) -> list[str]:
    """Every code line of a page that starts a `resnet` command, or runs one under torchrun or `python -m`
    (continuation lines joined, comments dropped)."""
    lines = code_lines(page.read_text().replace("\\\n", " "))
    starts = ("resnet ", "torchrun ", "python -m resnet ")
    return [" ".join(line.split("  #")[0].split()) for line in lines
            if line.startswith(starts) and (line.startswith("resnet ") or " -m resnet " in f" {line} ")]


def command_lines() -> list[str]:
    """The command lines of every page, in page order (a line may repeat across pages)."""
    return [line for page in PAGES for line in page_commands(page)]


def resnet_argv(line: str) -> list[str]:
    """The arguments of the `resnet` command a line runs (after `-m resnet` under torchrun or python)."""
    words = shlex.split(line)
    if words[0] == "resnet":
        return words[1:]
    return words[words.index("resnet", words.index("-m")) + 1:]


def reasons(line: str) -> list[str]:
    return [pattern for pattern in OFFLINE if re.search(pattern, line)]


def offline_lines() -> list[str]:
    """The lines run here, each once (the README repeats some)."""
    return list(dict.fromkeys(line for line in command_lines() if not reasons(line)))


def test_pages_have_python_and_commands():
    assert python_blocks() and len(page_commands(README)) >= 7
    jobs = {"training.md": "train", "own-images.md": "train", "detection.md": "train", "reproducing.md": "reproduce",
            "using-a-trained-net.md": "eval", "getting-started.md": "data"}
    for name, command in jobs.items():  # each job's page shows its commands, run by the tests below
        assert any(resnet_argv(line)[0] == command for line in page_commands(ROOT / "docs" / name)), name


def test_prose_holds_no_unchecked_command():
    """A `resnet` command at the start of a prose line is a code line that lost its indentation: it would not be
    tested."""
    for page in PAGES:
        code = set(code_lines(page.read_text()))
        prose = [line for line in page.read_text().splitlines() if line.startswith("resnet ") and line not in code]
        assert not prose, f"{page.name}: indent these commands (4 spaces) so the tests run them: {prose}"


@pytest.mark.parametrize("line", command_lines())
def test_readme_command_parses(line):
    argv = resnet_argv(line)
    args = build_parser(argv).parse_args(argv)
    assert args.command == argv[0]


def test_every_command_is_run_or_has_one_reason():
    """A new README command forces a decision: it is run (no pattern matches), or exactly one reason says why not."""
    ambiguous = {line: reasons(line) for line in command_lines() if len(reasons(line)) > 1}
    assert not ambiguous, f"README lines matched by more than one OFFLINE reason: {ambiguous}"
    run = set(offline_lines())
    assert all(line in run or len(reasons(line)) == 1 for line in command_lines())
    assert len(run) >= len(command_lines()) // 2  # most of the README runs here


def run_block(block: str, page: Path, tiny_fashion: Path, tmp_path: Path, monkeypatch, capsys) -> tuple[dict, str]:
    """Run a page's Python block on the tiny Fashion-MNIST in $RESNET_DATA, in an empty working directory; its
    variables and what it printed."""
    home = tmp_path / "data"
    if not home.exists():
        shutil.copytree(tiny_fashion, home / "fashion-mnist")
    monkeypatch.setenv("RESNET_DATA", str(home))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    capsys.readouterr()
    exec(compile(block, page.name, "exec"), namespace)
    return namespace, capsys.readouterr().out


def test_readme_python_computes_what_it_says(tiny_fashion, tmp_path, monkeypatch, capsys):
    """The README's block: the stage outputs of ResNet-50 at the paper's sizes, the list of nets, a finished run
    and the net loaded from it with the weights it saved."""
    from safetensors.torch import load_file

    import resnet

    [block] = python_blocks()
    names, printed = run_block(block, README, tiny_fashion, tmp_path, monkeypatch, capsys)
    shapes = {name: tuple(f.shape) for name, f in names["features"].items()}
    assert shapes == {"conv2_x": (1, 256, 56, 56), "conv3_x": (1, 512, 28, 28), "conv4_x": (1, 1024, 14, 14),
                      "conv5_x": (1, 2048, 7, 7)}  # Table 1: output sizes and widths (bottleneck x4)
    assert all(name in printed for name in ("resnet56", "resnet1202", "plain110", "resnet152"))
    run = tmp_path / "runs" / "r20"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert names["last"]["step"] == rows[-1]["step"] and names["last"] == {**rows[-1], **names["last"]}
    assert 0 <= names["last"]["test_top1_error"] <= 1 and names["last"]["test_images"] == 128  # all test images
    model = names["model"]
    assert not model.training and model.meta["model"] == "resnet20" and isinstance(model, resnet.models.ResNet)
    saved = load_file(run / "checkpoints" / "last.safetensors")
    weights = model.state_dict()
    assert all(torch.equal(weights[k], saved[k]) for k in weights if k in saved) and "fc.weight" in saved


# What each docs page's Python block prints (a regular expression), checked when the block runs; a new block needs
# an entry, so that it is checked for what it computes and not only for running.
DOCS_PYTHON_PRINTS = {
    "training.md": r"^test error \d+\.\d\d% after \d+ steps$",
    "own-images.md": r"^64 0\.01 10 10\.0$",  # the finetune recipe: batch, lr, epochs, the classifier's lr factor
    "detection.md": r"^\['boxes', 'labels', 'masks', 'scores'\]$",
    "using-a-trained-net.md": r"^torch\.Size\(\[1, 1000\]\)$",
    "reproducing.md": r"^$",  # an import and a commented call
}


def docs_blocks() -> list[tuple[str, str]]:
    return [(page.name, block) for page in PAGES[1:] for block in python_blocks(page)]


@pytest.mark.parametrize("name,block", docs_blocks(), ids=[name for name, _ in docs_blocks()])
def test_docs_python_prints_what_it_says(name, block, tiny_fashion, tmp_path, monkeypatch, capsys):
    assert name in DOCS_PYTHON_PRINTS, f"docs/{name}: a new Python block; say what it prints in DOCS_PYTHON_PRINTS"
    _, printed = run_block(block, ROOT / "docs" / name, tiny_fashion, tmp_path, monkeypatch, capsys)
    assert re.search(DOCS_PYTHON_PRINTS[name], printed.strip(), flags=re.M), f"docs/{name} printed {printed!r}"


# ----------------------------------------------------------------------------- artefacts, made once


def image(label: int, seed: int, size: int = 28) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 80, (size, size, 3))
    band = size // 2
    array[label * band:(label + 1) * band] += 150
    return Image.fromarray(array.astype(np.uint8))


def write_image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = image(seed % 2, seed)
    img.save(path, **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}))


def write_image_folder(root: Path, train: int = 4, val: int = 2) -> Path:
    """train/<class>/ and val/<class>/ for two classes, `cat` and `dog` (the README's examples), RGB PNGs."""
    for split, n in (("train", train), ("val", val)):
        for label, name in enumerate(("cat", "dog")):
            for i in range(n):
                write_image(root / split / name / f"{i}.png", seed=1000 * label + 10 * i + (split == "val"))
    return root


class Artefacts:
    """What the README's placeholders stand for, made on first use (once per module)."""

    def __init__(self, root: Path):
        self.root = root

    @cache
    def fashion(self) -> Path:
        """Fashion-MNIST in its IDX format: 512 training and 128 test images, 4 classes, learnable."""
        return write_tiny_fashion(self.root / "fashion-mnist")

    @cache
    def images(self) -> Path:
        return write_image_folder(self.root / "images")

    @cache
    def scenes(self) -> Path:
        from resnet.detection.scenes import make_fashion_scenes

        out, _ = make_fashion_scenes(self.root / "scenes", train=8, val=4, size=64, fashion_dir=self.fashion())
        return out

    @cache
    def run(self, kind: str) -> Path:
        """A finished run: `resnet` (resnet20, width 4, Fashion-MNIST), `plain` (plain20), `folder` (resnet20 on
        the image folder), `stopped` (resnet20 stopped after 2 of its 4 iterations), `detection` (fashion-scenes)."""
        from resnet.train.loop import Interrupted

        out = self.root / "runs" / kind
        model = "plain20" if kind == "plain" else "resnet20"
        data, data_dir = {"folder": ("folder", self.images()),
                          "detection": ("fashion-scenes", self.scenes())}.get(kind, ("fashion-mnist", self.fashion()))
        argv = ["train", "--model", model, "--data", data, "--data-dir", str(data_dir), "--out", str(out),
                "--iters", "4", "--eval-every", "2", "--batch-size", "4" if kind == "detection" else "8",
                "--base-width", "4", "--num-workers", "0", "--device", TEST_DEVICE, "--no-progress"]
        if kind == "stopped":
            from resnet.commands.train import model_options, recipe_from_args
            from resnet.train.loop import train

            args = build_parser(argv).parse_args(argv)
            with pytest.raises(Interrupted):
                train(model, data, recipe=recipe_from_args(args), out=out, data_dir=str(data_dir),
                      model_options=model_options(args), progress=False, stop_after=2)
        else:
            assert main(argv) == 0, f"fixture run {kind}"
        return out

    @cache
    def state_dict(self, model: str) -> Path:
        """A torchvision ResNet state dict (random weights, torchvision's names), for `convert` and `--init`."""
        import torchvision

        path = self.root / "state" / f"{model}.pth"
        path.parent.mkdir(exist_ok=True)
        torch.save(getattr(torchvision.models, model)().state_dict(), path)
        return path


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Artefacts:
    return Artefacts(tmp_path_factory.mktemp("readme"))


# ----------------------------------------------------------------------------- from a README line to a run


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def set_option(argv: list[str], name: str, value, only_if_missing: bool = False) -> None:
    if name in argv:
        if not only_if_missing:
            argv[argv.index(name) + 1] = str(value)
    else:
        argv += [name, str(value)]


def cap_option(argv: list[str], name: str, most: int) -> None:
    if name in argv:
        i = argv.index(name) + 1
        argv[i] = str(min(int(float(argv[i])), most))


def place(src: Path, dst: Path) -> None:
    """A copy of a file or folder at `dst` (links inside a run directory kept as links)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
    else:
        shutil.copy2(src, dst)


def cached_weights(artefacts: Artefacts, name: str, model: str | None) -> bool:
    """For a weights name, a file of the right shape at its cache path under $TORCH_HOME; False for no name."""
    from resnet.weights import WEIGHTS, find_weights

    entry = WEIGHTS.get(name) or (find_weights(model, name) if model else None)
    if entry is None:
        return False
    target = entry.cache_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.dataset == "cifar10":  # akamaster's real files, present on every developer machine and in CI
        found = sorted(SHARED_WEIGHTS.glob(f"*{entry.file_name}"))
        assert found, f"{entry.name}: not in {SHARED_WEIGHTS}; add an OFFLINE reason for this README line"
        place(found[0], target)
    else:  # torchvision's and timm's ResNets share torchvision's state-dict names
        place(artefacts.state_dict(entry.model), target)
    return True


class Line:
    """One README line made runnable in the current (empty) working directory."""

    def __init__(self, line: str, artefacts: Artefacts, producers: dict[str, str]):
        self.line, self.artefacts, self.producers = line, artefacts, producers
        argv = resnet_argv(line)
        for pattern, old, new in SUBSTITUTIONS:
            if re.search(pattern, line):
                argv = [new if i and argv[i - 1] == "--data" and old.match(a) else a for i, a in enumerate(argv)]
        self.argv = argv
        self.args = build_parser(argv).parse_args(argv)
        self.command = argv[0]
        self.data = getattr(self.args, "data", None)
        self.safetensors = 0

    # placeholders -------------------------------------------------------------------------------------------
    def run_for(self, path: str) -> Path:
        """The run directory a `runs/NAME` placeholder stands for: another README line's --out, else a fixture run
        fitting the line's data."""
        if path in self.producers and self.producers[path] != self.line:
            return produced(self.producers[path], self.artefacts, self.producers)
        if self.data in ("folder",):
            return self.artefacts.run("folder")
        if self.data in ("fashion-scenes", "coco"):
            return self.artefacts.run("detection")
        return self.artefacts.run("plain" if "plain" in Path(path).name else "resnet")

    def checkpoint(self, value: str, model: str | None = None) -> None:
        if Path(value).exists() or cached_weights(self.artefacts, value, model):
            return
        if value.endswith(".safetensors"):
            self.safetensors += 1
            kind = "plain" if "plain" in value or self.safetensors % 2 == 0 else "resnet"
            place(self.artefacts.run(kind) / "checkpoints" / "last.safetensors", Path(value))
        elif value.endswith((".pth", ".pt", ".bin")):
            place(self.artefacts.state_dict(model or "resnet50"), Path(value))
        elif value.endswith(".onnx"):  # an exported file (int8 when its name says so) of the Fashion-MNIST run
            int8 = ["--int8", "--calibration", "32", "--eval-limit", "64", "--max-int8-loss", "1"] * (".int8." in value)
            assert main(["export", "--checkpoint", str(self.artefacts.run("resnet")), "--out", value, *int8]) == 0
        else:
            place(self.run_for(value), Path(value))

    def data_dir(self, value: str) -> None:
        if self.command == "data" or Path(value).exists():  # `resnet data`: where to look and write
            return
        source = {"folder": self.artefacts.images, "fashion-scenes": self.artefacts.scenes,
                  "fashion-mnist": self.artefacts.fashion}.get(self.data)
        assert source is not None, f"{self.line}: no small data for --data {self.data}; add an OFFLINE reason"
        place(source(), Path(value))

    def materialise(self) -> None:
        a, argv = self.args, self.argv
        for i, word in enumerate(argv[:-1]):
            value = argv[i + 1]
            if word == "--checkpoint":
                self.checkpoint(value)
            elif word in ("--init", "--backbone-weights"):
                self.checkpoint(value, model=a.model)
            elif word == "--resume" and not Path(value).exists():
                place(self.artefacts.run("stopped"), Path(value))
            elif word == "--pretrained":  # a table6 suite folder: {plain,resnet}{depth}-s{seed}, a run per seed
                for kind in ("plain", "resnet"):
                    for seed in range(getattr(a, "seeds", None) or 1):
                        place(self.artefacts.run(kind), Path(value) / f"{kind}{(a.depths or [20])[0]}-s{seed}")
            elif word == "--data-dir":
                self.data_dir(value)
            elif word == "--image" and not Path(value).exists():  # export's test image
                write_image(Path(value))
            elif word == "--calibration-data" and "/" in value and not Path(value).exists():  # a folder of images
                place(self.artefacts.images(), Path(value))
        if self.command in ("predict", "explain"):
            for n, value in enumerate(a.images):
                if Path(value).exists():
                    continue
                if value.lower().endswith(IMAGE_SUFFIXES):
                    write_image(Path(value), seed=n)
                else:  # a folder of images, in sub-folders too
                    for j in range(3):
                        write_image(Path(value) / f"{j}.png", seed=j)
                    write_image(Path(value) / "more" / "3.jpg", seed=3)
        if self.command == "convert" and not Path(a.src).exists():
            if a.src.endswith(".th"):  # akamaster's file, from ../shared/weights
                from resnet.weights import WEIGHTS

                self.checkpoint(f"{a.model}.akamaster-cifar10")
                place(WEIGHTS[f"{a.model}.akamaster-cifar10"].cache_path(), Path(a.src))
            else:
                place(self.artefacts.state_dict(a.model), Path(a.src))

    # budgets ----------------------------------------------------------------------------------------------
    def budget(self) -> None:
        from resnet.commands.train import DETECTION_DATA, default_recipe
        from resnet.train.recipes import RECIPES

        a, argv = self.args, self.argv
        if self.command == "train" and not a.resume:
            if a.iters is not None:
                set_option(argv, "--iters", TRAIN_ITERS)
            elif a.epochs is not None:
                cap_option(argv, "--epochs", 2)
            elif RECIPES[default_recipe(a)].epochs is None:  # 64k or 600k iterations, 182 or 120 folder epochs
                set_option(argv, "--iters", TRAIN_ITERS)
            # else the recipe's own length in epochs (finetune, fast, detection): kept, over a few images
            if "--iters" in argv:
                set_option(argv, "--eval-every", TRAIN_ITERS)
            set_option(argv, "--batch-size", 4 if a.data in DETECTION_DATA else 8)
            if a.data in ("fashion-mnist", "synthetic", "cifar10", "cifar100"):
                set_option(argv, "--subset", FEW_IMAGES)
            cap_option(argv, "--eval-subset", FEW_IMAGES)
            if not (a.init or a.backbone_weights):
                set_option(argv, "--base-width", 4)
            set_option(argv, "--num-workers", 0, only_if_missing=True)
            set_option(argv, "--device", TEST_DEVICE, only_if_missing=True)
        elif self.command == "reproduce":
            set_option(argv, "--budget", REPRODUCE_BUDGET)
            cap_option(argv, "--seeds", 2)
            set_option(argv, "--device", TEST_DEVICE, only_if_missing=True)
        elif self.command == "eval":
            set_option(argv, "--workers", 0, only_if_missing=True)
        elif self.command == "analyze":
            cap_option(argv, "--images", 32)
        elif self.command == "data" and a.dataset == "fashion-scenes":
            set_option(argv, "--train", 8)
            set_option(argv, "--val", 4)
            set_option(argv, "--size", 64)
        if self.command in ("train", "reproduce", "eval") and a.data == "fashion-scenes" and not a.data_dir:
            argv += ["--data-dir", str(self.artefacts.scenes())]  # else the default 2,000 scenes are generated

    def prepare(self) -> list[str]:
        self.materialise()
        self.budget()
        return self.argv

    # what the run left ------------------------------------------------------------------------------------
    def check(self, cwd: Path, output: str) -> None:
        """What the command must have written or printed, checked against what this test knows independently."""
        checks = {"train": self.check_train, "reproduce": self.check_reproduce, "data": self.check_data,
                  "eval": self.check_eval, "predict": self.check_predict, "export": self.check_export,
                  "convert": self.check_convert, "summary": self.check_summary, "analyze": self.check_analyze,
                  "weights": self.check_weights, "explain": self.check_explain}
        assert self.command in checks, f"{self.line}: say in Line.check what this command must leave"
        checks[self.command](cwd, output)

    def check_explain(self, cwd: Path, output: str) -> None:
        from PIL import Image

        for image in map(Path, self.args.images):  # one Grad-CAM overlay per image, a readable PNG
            with Image.open(Path(self.args.out) / f"{image.stem}.gradcam.png") as overlay:
                assert overlay.format == "PNG" and min(overlay.size) > 0

    def check_train(self, cwd: Path, output: str) -> None:
        a = self.args
        run = Path(a.resume or a.out or next((cwd / "runs").iterdir()))
        assert (run / "checkpoints" / "last.safetensors").exists()
        config = json.loads((run / "config.json").read_text())
        assert config["model"] == (a.model or config["model"]) and config["data"] == (a.data or config["data"])
        if a.init:  # the run records the weights it started from
            assert config["init"]["given"] == a.init
        rows = [json.loads(row) for row in (run / "metrics.jsonl").read_text().splitlines()]
        if a.resume:  # the stopped run went on to its last step
            assert rows[-1]["step"] == config["recipe"]["iters"]
        errors = [v for k, v in rows[-1].items() if k.endswith("top1_error") or k.endswith("box_AP")]
        assert errors and all(0 <= v <= 1 for v in errors), rows[-1]  # the last row holds an evaluation

    def check_reproduce(self, cwd: Path, output: str) -> None:
        out = Path(self.args.out) if self.args.out else next(cwd.rglob("report.md")).parent
        report = json.loads((out / "report.json").read_text())
        finished = sorted(p.parent.name for p in out.glob("*/result.json"))
        runs = [p.parent.name for p in out.glob("*/config.json")]
        assert (out / "report.md").is_file() and runs, out
        if self.args.experiment == "detection":  # stages {backbone}-classify, {backbone}-detect: a row per backbone
            assert {row["backbone"] for row in report["results"]} == {name.split("-")[0] for name in runs}, report
        else:  # every finished run is in the report
            assert finished and all(name in json.dumps(report) for name in finished), (finished, report)

    def check_data(self, cwd: Path, output: str) -> None:
        a = self.args
        if a.dataset == "fashion-scenes":
            home = Path(a.data_dir) if a.data_dir else Path(os.environ["RESNET_DATA"])
            scenes = json.loads((Path(a.out or home / "fashion-scenes") / "scenes.json").read_text())
            assert scenes, "scenes.json is empty"
        else:
            assert "present" in output or "generated" in output, output

    def check_eval(self, cwd: Path, output: str) -> None:
        a = self.args
        if a.data in ("fashion-scenes", "coco"):  # COCOeval's numbers, in the --json file
            assert "AP" in output, output
            assert not a.json or json.loads(Path(a.json).read_text()), a.json
            return
        protocol = a.tta if a.tta != "none" else a.protocol
        assert f"({protocol})" in output and "top-1 err %" in output, output
        assert len(a.checkpoint) == 1 or f"ensemble of {len(a.checkpoint)}" in output, output

    def check_predict(self, cwd: Path, output: str) -> None:
        """Every image given (and every image under a folder given) is in the output or the --out file."""
        a = self.args
        images = [Path(v) for v in a.images if Path(v).is_file()]
        images += [p for v in a.images if Path(v).is_dir() for p in Path(v).rglob("*") if p.is_file()]
        written = Path(a.out).read_text() if a.out else ""
        assert images and all(p.name in output + written for p in images), (output, written)
        if a.out and a.out.endswith(".csv"):
            assert len(written.strip().splitlines()) >= len(images) + 1  # a header, then each image's classes
        if getattr(a, "draw", None):
            assert len(list(Path(a.draw).iterdir())) == len(images)

    def check_export(self, cwd: Path, output: str) -> None:
        import onnx

        props = {p.key: p.value for p in onnx.load(self.args.out).metadata_props}
        if getattr(self.args, "int8", False):  # int8: both held-out errors recorded in the file and printed
            quantization = json.loads(props["quantization"])
            assert {"input_mean", "resize_size", "class_names"} <= set(props), props
            assert f"int8 {100 * quantization['int8_top1_error']:.2f}%" in output, (quantization, output)
        elif "input_size" in props:  # a classifier: the preprocessing travels with it, checked against ONNX Runtime
            assert {"input_mean", "resize_size", "class_names"} <= set(props) and "onnxruntime" in output, props
        else:
            assert "onnxruntime" in output.lower() or "ONNX Runtime" in output, output

    def check_convert(self, cwd: Path, output: str) -> None:
        """The classifier's weights are the source file's, tensor for tensor."""
        from safetensors.torch import load_file

        source = torch.load(self.args.src, map_location="cpu", weights_only=True)
        source = source.get("state_dict", source)
        [fc] = [v for k, v in source.items() if k.endswith(("fc.weight", "linear.weight"))]
        assert torch.equal(load_file(self.args.out)["fc.weight"], fc)

    def check_summary(self, cwd: Path, output: str) -> None:
        from resnet import create_model

        params = sum(p.numel() for p in create_model(self.args.model).parameters())
        assert f"{params:,}" in output and "conv2_x" in output, output

    def check_analyze(self, cwd: Path, output: str) -> None:
        assert output.count("3x3 layers, response std mean") == len(self.args.checkpoint), output

    def check_weights(self, cwd: Path, output: str) -> None:
        assert "resnet18" in output and "torchvision-v1" in output


def producers() -> dict[str, str]:
    """README training lines by the run directory they write (`--out`), so later lines use their output."""
    found = {}
    for line in offline_lines():
        argv = resnet_argv(line)
        if argv[0] == "train" and "--out" in argv:
            found.setdefault(option(argv, "--out"), line)
    return found


_produced: dict[str, Path] = {}


def produced(line: str, artefacts: Artefacts, producers: dict[str, str], cwd: Path | None = None,
             capsys: pytest.CaptureFixture | None = None) -> Path:
    """Run a training line once (in its own folder) and return the run directory it wrote."""
    if line not in _produced:
        cwd = cwd or Path(artefacts.root / f"line{len(_produced)}")
        cwd.mkdir(parents=True, exist_ok=True)
        _produced[line] = cwd / option(resnet_argv(line), "--out")
        run_line(line, artefacts, producers, cwd, capsys)
    return _produced[line]


def run_line(line: str, artefacts: Artefacts, producers: dict[str, str], cwd: Path,
             capsys: pytest.CaptureFixture | None = None) -> None:
    before = Path.cwd()
    os.chdir(cwd)
    try:
        readme = Line(line, artefacts, producers)
        argv = readme.prepare()
        code = main(argv)
        output = ""
        if capsys is not None:
            captured = capsys.readouterr()
            output = captured.out + captured.err
            print(output)
        assert code == 0, f"{line}\nran as: resnet {shlex.join(argv)}\nexit status {code}\n{output[-3000:]}"
        readme.check(cwd, output)
    finally:
        os.chdir(before)


@pytest.fixture
def environment(artefacts, tmp_path, monkeypatch):
    """Data, caches and weights in tmp_path: $RESNET_DATA holds the tiny Fashion-MNIST, $TORCH_HOME the weights
    a line names, $HOME and $XDG_CACHE_HOME nothing yet."""
    data = tmp_path / "data"
    shutil.copytree(artefacts.fashion(), data / "fashion-mnist")
    for name, value in (("RESNET_DATA", data), ("TORCH_HOME", tmp_path / "torch"),
                        ("XDG_CACHE_HOME", tmp_path / "cache"), ("HOME", tmp_path / "home")):
        Path(value).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(value))
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.mark.parametrize("line", offline_lines())
def test_readme_command_runs(line, artefacts, environment, capsys):
    """Exit status 0 and what the command writes, with the placeholders made and small budgets (see the top)."""
    if resnet_argv(line)[:2] == ["data", "fashion-mnist"] and \
            not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("`resnet data fashion-mnist` needs the real files (Debian's dataset-fashion-mnist) offline")
    table = producers()
    if line in table.values() and line in _produced:  # already run as the input of a later line
        assert (_produced[line] / "config.json").is_file()
        return
    if line in table.values():
        produced(line, artefacts, table, cwd=environment, capsys=capsys)
        return
    run_line(line, artefacts, table, environment, capsys)
