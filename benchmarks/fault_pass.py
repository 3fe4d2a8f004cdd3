"""The fault pass of issue 22, re-run after its fixes, with the detection-data and recipe cases of issue 37 (det-*,
recipe-*: a user's own COCO folders, written by tests/test_detection_faults.py's writer): every case the issues
name, each one a real `python -m resnet` (or torchrun) subprocess on small data this script writes into a
temporary folder (offline; Fashion-MNIST from Debian's /usr/share/datasets/fashion-mnist only where a case needs
the real files).

Each case has the class the issue reports for it before the fixes (`before`; where the issue says only
"accepted silently", silent wrong result) and the class measured here (`after`), one of
  clean error          exit status not 0, no traceback, one error line (naming what the case requires)
  traceback            a traceback or "internal error" in the output
  hang                 still running at the case's timeout (or processes left behind after a stop)
  silent wrong result  exit 0 where an error, or a line naming the problem, was required
  data loss            a checkpoint or result that should have been kept is gone
  code executed        a malicious pickle ran its code
  works                the right behaviour where that is to succeed (predict skipping an unreadable file, ...)
and `goal`, the class the case must end in; `ok` is after == goal with every expectation of the case met
(`missing` lists those not met). Under torchrun what the ranks print is judged, not the launcher's own report of
a rank that exited non-zero (its ChildFailedError traceback). Every subprocess runs with OMP_NUM_THREADS=1 and
RESNET_CPU_FAST=0, with $RESNET_DATA and $XDG_CACHE_HOME inside the temporary folder. Writes
benchmarks/results/fault_pass.json (full runs only) and prints the table and the counts per class before and after.
About 5 minutes on 2 cores. Two cases mount a small tmpfs (read-only, full) and need root.

Usage: python benchmarks/fault_pass.py [--list] [--only ID [ID ...]] [--keep DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' data writers: the same small datasets the tests use

from conftest import write_tiny_fashion  # noqa: E402
from helpers import alive  # noqa: E402
from test_fault_pass import band_images, small_checkpoint  # noqa: E402
from test_faults import nan_checkpoint  # noqa: E402

from record import write_result  # noqa: E402
from resnet import checkpoint, create_model  # noqa: E402
from resnet.data.small import DEBIAN_FASHION_MNIST  # noqa: E402
from resnet.provenance import cpu_model  # noqa: E402
from resnet.train import rundir  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fault_pass.json"
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"
AKAMASTER20 = SHARED_WEIGHTS / "akamaster-resnet20-12fca82f.th"
CLASSES = ("clean error", "traceback", "hang", "silent wrong result", "data loss", "code executed", "works")
TIMEOUT = 120  # seconds a case's command may run before it counts as a hang
SIGNAL_TIMEOUT = 90  # the reproduce --jobs 2 cases: start, both workers training, the stop
STOP_SECONDS = 20  # the most a stop may take once the signal is sent (as tests/test_reproduce_signals.py)
SUITE_BUDGET = str(6 / 64_000)  # 6 iterations per net: the suite's two runs finish in seconds
TINY_TRAIN = ["--model", "resnet20", "--base-width", "4", "--batch-size", "32", "--iters", "4", "--subset", "256",
              "--eval-subset", "128", "--no-val-split", "--device", "cpu", "--no-progress"]


# ---- running a command and judging what it did ---------------------------------------------------------------


@dataclass
class Outcome:
    """What one case's (last) command did, and what the case expected of it and did not see."""

    rc: int | None  # None: still running at the timeout (then killed with its process group)
    out: str = ""
    err: str = ""
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)
    verdict: str | None = None  # a class the case established itself (processes left, a lost checkpoint, code run)

    @property
    def text(self) -> str:
        return self.out + self.err

    def expect(self, condition: bool, what: str) -> Outcome:
        if not condition:
            self.missing.append(what)
        return self


class SetupFailed(RuntimeError):
    """A fixture (the small suite, the fine-tuned run, ...) could not be made: the case is not judged."""


def environment(ws: Workspace, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RESNET_CPU_FAST": "0",
           "RESNET_DATA": str(ws.root / "data-home"), "XDG_CACHE_HOME": str(ws.root / "cache"),
           "PYTHONPATH": str(ROOT)}
    env.pop("RESNET_FAULT", None)
    return {**env, **(extra or {})}


def start(ws: Workspace, cmd: list[str], env: dict[str, str] | None = None,
          preexec: Callable[[], None] | None = None) -> subprocess.Popen:
    """CMD in a session of its own, as a terminal's foreground job is a process group of its own."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ws.root,
                            env=environment(ws, env), start_new_session=True, preexec_fn=preexec)


def finish(proc: subprocess.Popen, timeout: float, started: float) -> Outcome:
    """Wait for PROC; at the timeout kill its whole process group and call it a hang."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return Outcome(proc.returncode, out, err, time.monotonic() - started)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        return Outcome(None, out, err, time.monotonic() - started)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def python_m_resnet(*argv: str) -> list[str]:
    return [sys.executable, "-m", "resnet", *argv]


def command(ws: Workspace, cmd: list[str], timeout: float = TIMEOUT, env: dict[str, str] | None = None,
            preexec: Callable[[], None] | None = None) -> Outcome:
    """CMD run to its end (or to the timeout)."""
    started = time.monotonic()
    return finish(start(ws, cmd, env, preexec), timeout, started)


def resnet(ws: Workspace, *argv: str, **kwargs) -> Outcome:
    """`python -m resnet ARGV` run to its end (or to the timeout)."""
    return command(ws, python_m_resnet(*argv), **kwargs)


def error_lines(o: Outcome) -> list[str]:
    return [line for line in o.err.splitlines() if ": error:" in line]


def clean_error(o: Outcome, *words: str) -> Outcome:
    """Expect exit status 2 and one error line naming each of WORDS."""
    o.expect(o.rc == 2, f"exit status 2 (got {o.rc})")
    lines = error_lines(o)
    o.expect(len(lines) == 1, f"one error line (got {len(lines)})")
    for word in words:
        o.expect(word in o.err, f"the error names {word!r}")
    return o


def works(o: Outcome, *words: str, rc: int = 0) -> Outcome:
    """Expect exit status RC and each of WORDS in the output."""
    o.expect(o.rc == rc, f"exit status {rc} (got {o.rc})")
    for word in words:
        o.expect(word in o.text, f"the output says {word!r}")
    return o


def classify(o: Outcome, goal: str) -> str:
    """The class of an outcome (see the module's docstring), for a case whose right behaviour is GOAL."""
    if o.verdict:
        return o.verdict
    if o.rc is None:
        return "hang"
    if "Traceback (most recent call last)" in o.text or "internal error" in o.text:
        return "traceback"
    if o.rc == 0:
        return "works" if goal == "works" and not o.missing else "silent wrong result"
    return "works" if goal == "works" and not o.missing else "clean error"


# ---- the small data and runs the cases share -------------------------------------------------------------------


class Workspace:
    """The temporary folder and the fixtures the cases share, each made once, when first needed."""

    def __init__(self, root: Path):
        self.root = root
        (root / "data-home").mkdir(parents=True, exist_ok=True)
        (root / "cache").mkdir(exist_ok=True)

    def fresh(self, name: str) -> Path:
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        return path

    @functools.cached_property
    def fashion(self) -> Path:
        """Fashion-MNIST IDX files with 512 learnable training images and 128 test images (the tests' tiny_fashion)."""
        return write_tiny_fashion(self.fresh("fashion"))

    @functools.cached_property
    def folder(self) -> Path:
        """An image folder: train/ and val/ with three classes of 16x16 grey PNGs (24 and 6 per class)."""
        root = self.fresh("folder")
        band_images(root / "train", ["c0", "c1", "c2"], 24)
        band_images(root / "val", ["c0", "c1", "c2"], 6, seed=3)
        return root

    @functools.cached_property
    def weights(self) -> Path:
        """A narrow resnet20 checkpoint of three classes at 16x16 with a per-pixel mean."""
        path = self.root / "small.safetensors"
        small_checkpoint(path)
        return path

    @functools.cached_property
    def finetune(self) -> Outcome:
        """The README's fine-tune command, offline: --init takes the local akamaster ResNet-20 file."""
        return resnet(self, "train", "--model", "resnet20", "--init", str(AKAMASTER20), "--recipe", "finetune",
                      "--data", "folder", "--data-dir", str(self.folder), "--out", str(self.fresh("finetuned")),
                      "--device", "cpu", "--no-progress")

    @property
    def finetuned(self) -> Path:
        """The fine-tuned run directory (a finished run on the image folder)."""
        if self.finetune.rc != 0:
            raise SetupFailed(f"the fine-tune run failed (exit {self.finetune.rc}): {tail(self.finetune)}")
        return self.root / "finetuned"

    def suite_argv(self, out: Path, jobs: int = 1, budget: str = SUITE_BUDGET) -> list[str]:
        return ["reproduce", "table6", "--data", "fashion-mnist", "--data-dir", str(self.fashion), "--depths", "20",
                "--budget", budget, "--jobs", str(jobs), "--device", "cpu", "--out", str(out), "--no-progress"]

    @functools.cached_property
    def suite(self) -> Path:
        """A finished table6 suite (plain20 and resnet20, 6 iterations each)."""
        out = self.fresh("suite")
        done = resnet(self, *self.suite_argv(out))
        if done.rc != 0:
            raise SetupFailed(f"the small suite failed (exit {done.rc}): {tail(done)}")
        return out

    @functools.cached_property
    def stopped(self) -> Path:
        """A run of 8 iterations killed (-9) right after its checkpoint of step 4: a run to --resume."""
        run = self.fresh("stopped")
        killed = resnet(self, "train", "--data", "fashion-mnist", "--data-dir", str(self.fashion),
                        *with_value(TINY_TRAIN, "--iters", "8"), "--eval-every", "4", "--out", str(run),
                        env={"RESNET_FAULT": "checkpoint:before-prune"})
        if killed.rc != -signal.SIGKILL or not (run / "checkpoints" / "last").is_symlink():
            raise SetupFailed(f"the run to resume was not stopped at its checkpoint (exit {killed.rc})")
        return run

    def copy_of_stopped(self, name: str) -> Path:
        copy = self.fresh(name)
        shutil.copytree(self.stopped, copy, symlinks=True)
        return copy


def with_value(argv: list[str], option: str, value: str) -> list[str]:
    """ARGV with OPTION's value replaced."""
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


def tail(o: Outcome, lines: int = 3) -> str:
    return " | ".join(o.text.strip().splitlines()[-lines:])[-600:]


# ---- the README and what a newcomer trips over ---------------------------------------------------------------


def readme_finetune(ws: Workspace) -> Outcome:
    o = ws.finetune
    return works(Outcome(o.rc, o.out, o.err, o.seconds), "10 iterations, 1 per epoch",
                 "done: 10 iterations, final: train err")


def init_named(ws: Workspace) -> Outcome:
    o = ws.finetune
    return works(Outcome(o.rc, o.out, o.err, 0.0), f"init: starting from the weights {AKAMASTER20}")


def one_class_folder(ws: Workspace) -> Outcome:
    root = ws.fresh("one-class")
    band_images(root / "train", ["cat"], 8)
    band_images(root / "val", ["cat"], 2)
    o = resnet(ws, "train", "--model", "resnet20", "--base-width", "4", "--data", "folder", "--data-dir", str(root),
               "--iters", "4", "--device", "cpu", "--no-progress", "--out", str(ws.fresh("one-class-run")))
    return clean_error(o, "only one class folder (cat)", "at least 2")


def val_without_twin(ws: Workspace) -> Outcome:
    root = ws.fresh("no-twin")
    shutil.copytree(ws.folder, root)
    band_images(root / "val", ["dog", "eel"], 3, seed=1)
    o = resnet(ws, "eval", "--checkpoint", str(ws.weights), "--data", "folder", "--data-dir", str(root),
               "--workers", "0", "--no-progress")
    return works(o, "no twin in train/ are left out (6 image(s)): dog, eel")


def unreadable_photos(ws: Workspace, readable: int) -> Path:
    root = ws.fresh(f"photos-{readable}")
    images = band_images(root, ["a", "b"], 2)
    for bad in images[readable:]:
        bad.write_bytes(bad.read_bytes()[:60])  # the header reads, the pixels do not
    (root / "b" / "notes.png").write_text("not an image")
    return root


def predict_skips_unreadable(ws: Workspace) -> Outcome:
    root = unreadable_photos(ws, readable=3)
    o = resnet(ws, "predict", "--checkpoint", str(ws.weights), str(root), "--json")
    try:
        predicted = len(json.loads(o.out))
    except ValueError:
        predicted = 0
    o.expect(predicted == 3, f"3 images predicted (got {predicted})")
    skipped = [line for line in o.err.splitlines() if line.startswith("resnet predict: skipped ")]
    return works(o.expect(len(skipped) == 2, f"2 skipped files named (got {len(skipped)})"))


def predict_none_readable(ws: Workspace) -> Outcome:
    root = unreadable_photos(ws, readable=0)
    o = resnet(ws, "predict", "--checkpoint", str(ws.weights), str(root))
    return clean_error(o, "none of the 5 image files could be read")


def eval_run_directory(ws: Workspace) -> Outcome:
    o = resnet(ws, "eval", "--checkpoint", str(ws.finetuned), "--data", "folder", "--data-dir", str(ws.folder),
               "--workers", "0", "--no-progress")
    o.expect(o.out.startswith("folder val (center)"), "the split named val, not test")
    return works(o, "(checkpoints/last.safetensors)")


def resume_finished(ws: Workspace) -> Outcome:
    o = resnet(ws, "train", "--resume", str(ws.finetuned), "--no-progress")
    done = [line for line in o.out.splitlines() if line.startswith("done:")]
    o.expect(bool(done) and "err" in done[-1].partition("final")[2], "the final evaluation after 'done: ... final'")
    return works(o)


def predict_no_amp(ws: Workspace) -> Outcome:
    image = ws.folder / "val" / "c1" / "0.png"
    o = resnet(ws, "predict", "--checkpoint", str(ws.finetuned), str(image), "--no-amp")
    return works(o, str(image))


def torchrun_error_once(ws: Workspace) -> Outcome:
    o = ranks_only(command(ws, [torchrun(), "--nproc-per-node", "2", "-m", "resnet", "eval", "--checkpoint",
                                str(ws.root / "missing.safetensors"), "--data", "synthetic"]))
    o.expect(o.rc not in (0, None), "a non-zero exit status")
    lines = error_lines(o)
    return o.expect(len(lines) == 1 and "missing.safetensors" in lines[0],
                    f"one error line naming the file (got {len(lines)})")


def torchrun() -> str:
    return shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


LAUNCHER_FAILURE = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"


def ranks_only(o: Outcome) -> Outcome:
    """Without torchrun's own report of a rank that exited non-zero (the launcher's ChildFailedError traceback and
    its table, printed last, for any failing rank): what is judged is what the ranks printed."""
    start = o.err.rfind("Traceback (most recent call last):")
    if start >= 0 and LAUNCHER_FAILURE in o.err[start:]:
        o.err = o.err[:start]
    return o


# ---- suites and runs that cannot get stuck ---------------------------------------------------------------------


def suite_stuck(ws: Workspace) -> Outcome:
    out = ws.fresh("stuck")
    argv = ws.suite_argv(out)
    killed = resnet(ws, *argv, env={"RESNET_FAULT": "checkpoint:before-prune"})  # kill -9 after the final save
    stuck = [run for run in out.glob("*-s0") if (run / "checkpoints" / "last").is_symlink()
             and not (run / "result.json").exists()]
    if killed.rc != -signal.SIGKILL or not stuck:
        raise SetupFailed(f"the kill at the final checkpoint did not leave a stuck run (exit {killed.rc})")
    o = resnet(ws, *argv)  # the same command again
    finished = [run.name for run in out.glob("*-s0") if (run / "result.json").exists()]
    o.expect(len(finished) == 2, f"both runs finished (result.json in {finished})")
    return works(o)


def damage_suite_file(name: str, text: str | bytes, words: str) -> Callable[[Workspace], Outcome]:
    """A case: the suite's suite.json or its resnet20 run's result.json holds TEXT; the same command again."""

    def case(ws: Workspace) -> Outcome:
        path = ws.suite / name
        good = path.read_bytes()
        damaged = good[: len(good) // 2] if text == "truncated" else text
        try:
            path.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
            o = resnet(ws, *ws.suite_argv(ws.suite))
        finally:
            path.write_bytes(good)
        return clean_error(o, f"{path}: ", words, "delete it")

    return case


def damage_config(change: Callable[[str], str], words: str) -> Callable[[Workspace], Outcome]:
    """A case: a stopped run's config.json changed by CHANGE (its text to the new text), then --resume."""

    def case(ws: Workspace) -> Outcome:
        run = ws.copy_of_stopped("config-case")
        config = run / "config.json"
        config.write_text(change(config.read_text()))
        o = resnet(ws, "train", "--resume", str(run), "--no-progress")
        return clean_error(o, str(config), words)

    return case


def unknown_field(text: str) -> str:
    config = json.loads(text)
    config["recipe"]["bogus_field"] = 1
    return json.dumps(config)


def without_model(text: str) -> str:
    config = json.loads(text)
    del config["model"]
    return json.dumps(config)


def log_every_0(ws: Workspace) -> Outcome:
    o = resnet(ws, "train", "--data", "fashion-mnist", "--data-dir", str(ws.fashion), *TINY_TRAIN, "--log-every",
               "0", "--out", str(ws.fresh("log-every-0")))
    return clean_error(o, "--log-every")


def wrong_mean(ws: Workspace, command: str) -> Outcome:
    path = ws.root / "wrong-mean.safetensors"
    small_checkpoint(path, mean=torch.rand(4, 16, 16))
    argv = (["predict", str(ws.folder / "val")] if command == "predict" else
            ["eval", "--data", "folder", "--data-dir", str(ws.folder), "--workers", "0", "--no-progress"])
    return clean_error(resnet(ws, *argv, "--checkpoint", str(path)), str(path), "input mean has shape")


def eval_under_memory_limit(ws: Workspace) -> Outcome:
    """`eval --batch-size 8192` on 8,192 real Fashion-MNIST test images with `ulimit -v` at what a fresh
    process maps plus 1.2 GiB: one pass of ResNet-20 (width 16) over that batch needs more."""
    path = ws.root / "w16.safetensors"
    model = create_model("resnet20", in_channels=1)
    checkpoint.save_weights(path, model, {"model": "resnet20", "options": model.options, "image_size": 28,
                                          "style": "small", "classes": [str(i) for i in range(10)]})
    limit = fresh_process_vmsize(ws) + int(1.2 * 1024**3)
    o = resnet(ws, "eval", "--checkpoint", str(path), "--data", "fashion-mnist", "--limit", "8192", "--batch-size",
               "8192", "--workers", "0", "--no-progress",
               preexec=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    return works(o, "does not fit in the memory there is", "8192")


def fresh_process_vmsize(ws: Workspace) -> int:
    """Bytes mapped by a fresh Python process that has imported torch and resnet (VmSize)."""
    probe = subprocess.run([sys.executable, "-c", "import torch, resnet.cli; from pathlib import Path; "
                            "print(next(l.split()[1] for l in Path('/proc/self/status').read_text().splitlines() "
                            "if l.startswith('VmSize')))"], capture_output=True, text=True, env=environment(ws),
                           check=True)
    return int(probe.stdout) * 1024


def class_names_short(ws: Workspace) -> Outcome:
    path = ws.root / "short-names.safetensors"
    small_checkpoint(path, num_classes=3, meta={"class_names": ["cat", "dog"]})
    o = resnet(ws, "predict", "--checkpoint", str(path), str(ws.folder / "val" / "c0" / "0.png"))
    return clean_error(o, str(path), "'class_names' lists 2 classes")


# ---- values ------------------------------------------------------------------------------------------------------


def bad_train_value(option: str, value: str) -> Callable[[Workspace], Outcome]:
    def case(ws: Workspace) -> Outcome:
        out = ws.fresh("bad-value")
        argv = TINY_TRAIN if option not in TINY_TRAIN else with_value(TINY_TRAIN, option, value)
        extra = [option, value] if option not in TINY_TRAIN else []
        o = resnet(ws, "train", "--data", "fashion-mnist", "--data-dir", str(ws.fashion), *argv, *extra, "--out",
                   str(out))
        return clean_error(o, option).expect(not out.exists(), "nothing written to --out")

    return case


def bad_suite_value(option: str, value: str) -> Callable[[Workspace], Outcome]:
    def case(ws: Workspace) -> Outcome:
        out = ws.fresh("bad-suite")
        o = resnet(ws, *with_value(ws.suite_argv(out), option, value))
        return clean_error(o, option).expect(not out.exists(), "nothing written to --out")

    return case


# ---- NaN weights, pickles, error lines that name the target --------------------------------------------------------


def init_nan(ws: Workspace) -> Outcome:
    weights = nan_weights(ws)
    out = ws.fresh("nan-init")
    o = resnet(ws, "train", "--data", "fashion-mnist", "--data-dir", str(ws.fashion), *TINY_TRAIN, "--init",
               str(weights), "--out", str(out))
    clean_error(o, str(weights), "NaN or infinite")
    return o.expect(not (out / "config.json").exists(), "no run directory left that blocks --out")


def nan_weights(ws: Workspace) -> Path:
    folder = ws.root / "nan"
    folder.mkdir(exist_ok=True)
    return nan_checkpoint(folder)


def resume_nan(ws: Workspace) -> Outcome:
    from safetensors.torch import load_file, save_file

    run = ws.copy_of_stopped("nan-resume")
    weights = (run / "checkpoints" / "last" / checkpoint.WEIGHTS).resolve()
    tensors = load_file(str(weights))
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(weights), metadata=safetensors_metadata(weights))
    o = resnet(ws, "train", "--resume", str(run), "--no-progress")
    clean_error(o, "NaN or infinite")
    return o.expect("last good checkpoint" not in o.err, "the NaN checkpoint is not called the last good one")


def safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def convert_nan(ws: Workspace) -> Outcome:
    state = torch.load(AKAMASTER20, map_location="cpu", weights_only=True)
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][key].view(-1)[0] = float("nan")
    source, target = ws.root / "nan-akamaster.th", ws.root / "nan-converted.safetensors"
    torch.save(state, source)
    o = resnet(ws, "convert", "--from", "akamaster", str(source), "--model", "resnet20", "--out", str(target))
    return clean_error(o, "NaN or infinite").expect(not target.exists(), "no checkpoint written")


class Payload:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickle_case(where: str) -> Callable[[Workspace], Outcome]:
    def case(ws: Workspace) -> Outcome:
        marker = ws.root / f"pwned-{where}"
        marker.unlink(missing_ok=True)
        if where == "convert":
            source = ws.root / "evil.pth"
            torch.save({"conv1.weight": Payload(marker)}, source)
            o = resnet(ws, "convert", "--from", "torchvision", str(source), "--model", "resnet18", "--out",
                       str(ws.root / "evil.safetensors"))
        else:
            run = ws.copy_of_stopped("evil-resume")
            state = (run / "checkpoints" / "last" / checkpoint.STATE).resolve()
            torch.save({"step": 4, "rng": Payload(marker)}, state)
            o = resnet(ws, "train", "--resume", str(run), "--no-progress")
        clean_error(o)
        if marker.exists():
            o.verdict = "code executed"
        return o

    return case


def out_not_writable(kind: str) -> Callable[[Workspace], Outcome]:
    """convert --out into a read-only or a full (64 KiB) tmpfs: the line must name the target, not a temporary."""

    def case(ws: Workspace) -> Outcome:
        mount = ws.fresh(f"mount-{kind}")
        mount.mkdir()
        options = "ro,size=64k" if kind == "read-only" else "size=64k"
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True).returncode:
            if kind != "read-only" or os.geteuid() == 0:
                raise SetupFailed("cannot mount a tmpfs here (needs root)")
            mount.chmod(0o555)  # not root: a read-only folder is enough
        target = mount / "r20.safetensors"
        try:
            o = resnet(ws, "convert", "--from", "akamaster", str(AKAMASTER20), "--model", "resnet20", "--out",
                       str(target))
            left = sorted(p.name for p in mount.iterdir())
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)
        clean_error(o, f"{target}: ")
        return o.expect(".tmp" not in o.err and not left, f"no temporary named or left behind ({left})")

    return case


# ---- signals and workers ---------------------------------------------------------------------------------------


def signal_suite(signum: signal.Signals) -> Callable[[Workspace], Outcome]:
    """`setsid resnet reproduce table6 --depths 20 --budget 0.002 --jobs 2 &`, both workers training, then
    `kill -SIG -- -PGID`: every process must end within seconds with checkpoints saved and a `continue with`."""

    def case(ws: Workspace) -> Outcome:
        out = ws.fresh(f"signal-{signum.name}")
        runs = [out / "plain20-s0", out / "resnet20-s0"]
        started = time.monotonic()
        proc = start(ws, python_m_resnet(*ws.suite_argv(out, jobs=2, budget="0.002")))
        while not all((run / "metrics.jsonl").exists() for run in runs):  # past the first evaluation
            if proc.poll() is not None or time.monotonic() - started > SIGNAL_TIMEOUT:
                o = finish(proc, 1, started)
                raise SetupFailed(f"the suite did not get both workers training (exit {o.rc}): {tail(o)}")
            time.sleep(0.2)
        workers = [int((run / rundir.LOCK_FILE).read_text().split()[0]) for run in runs]
        os.killpg(proc.pid, signum)
        stopped = time.monotonic()
        o = finish(proc, STOP_SECONDS + 10, started)
        while any(alive(pid) for pid in workers) and time.monotonic() - stopped < STOP_SECONDS:
            time.sleep(0.2)
        left = [pid for pid in workers if alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if left:
            o.verdict = "hang"
        o.missing += [f"worker {pid} still running {STOP_SECONDS} s after the signal" for pid in left]
        works(o, "continue with: resnet reproduce table6", rc=128 + signum)
        for run in runs:
            if not saved_a_checkpoint(run):
                o.verdict = o.verdict or "data loss"
                o.missing.append(f"{run.name}: no checkpoint kept")
            o.expect(lock_is_free(run), f"{run.name}: its lock was released (resume not refused)")
        return o

    return case


def saved_a_checkpoint(run: Path) -> bool:
    try:
        return checkpoint.last_checkpoint(run / "checkpoints")[1]["step"] > 0
    except (OSError, ValueError, KeyError):
        return False


def lock_is_free(run: Path) -> bool:
    try:
        rundir.lock(run)
    except (OSError, ValueError, RuntimeError):
        return False
    rundir.unlock(run)
    return True


def torchrun_lost_rank(ws: Workspace) -> Outcome:
    """Two torchrun ranks training; rank 1 killed with SIGKILL after the first checkpoint."""
    run = ws.fresh("torchrun-run")
    started = time.monotonic()
    proc = start(ws, [torchrun(), "--nproc-per-node", "2", "-m", "resnet", "train", "--data", "fashion-mnist",
                      "--data-dir", str(ws.fashion), *with_value(TINY_TRAIN, "--iters", "5000"), "--eval-every", "10",
                      "--out", str(run)])
    while not (run / "checkpoints" / "last").is_symlink():
        if proc.poll() is not None or time.monotonic() - started > TIMEOUT:
            o = finish(proc, 1, started)
            raise SetupFailed(f"torchrun did not reach its first checkpoint (exit {o.rc}): {tail(o)}")
        time.sleep(0.5)
    rank1 = [pid for pid in rank_pids(run) if b"RANK=1" in environ_of(pid)]
    if len(rank1) != 1:
        kill_group(proc.pid)
        raise SetupFailed(f"found {len(rank1)} processes of rank 1")
    os.kill(rank1[0], signal.SIGKILL)
    o = ranks_only(finish(proc, TIMEOUT, started))
    ours = [line for line in o.text.splitlines() if line.startswith("resnet train:")]
    o.expect(o.rc not in (0, None), "a non-zero exit status")
    o.expect(len(ours) == 1 and "lost rank 1 of 2" in ours[0], f"one line naming the lost rank (got {len(ours)})")
    o.expect(saved_a_checkpoint(run), "the checkpoint kept")
    return o


def rank_pids(run: Path) -> list[int]:
    """The processes whose command line names RUN (the torchrun ranks)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(run).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def environ_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


# ---- data ----------------------------------------------------------------------------------------------------------


def damaged_gz(kind: str) -> Callable[[Workspace], Outcome]:
    """$RESNET_DATA/fashion-mnist holds Debian's four files, one of them corrupt, truncated or empty: `resnet data
    fashion-mnist` must skip that copy, say so, and find Debian's intact one."""

    def case(ws: Workspace) -> Outcome:
        home = ws.fresh(f"data-home-{kind}")
        copy = home / "fashion-mnist"
        shutil.copytree(DEBIAN_FASHION_MNIST, copy, ignore=shutil.ignore_patterns("raw", "FashionMNIST"))
        victim = copy / "t10k-images-idx3-ubyte.gz"
        data = victim.read_bytes()
        victim.write_bytes({"corrupt": data[:100] + bytes(b ^ 0xFF for b in data[100:400]) + data[400:],
                            "truncated": data[: len(data) // 2], "empty": b""}[kind])
        o = resnet(ws, "data", "fashion-mnist", "--no-apt", "--no-download", env={"RESNET_DATA": str(home)})
        return works(o, f"skipping {copy}", f"present in {DEBIAN_FASHION_MNIST}")

    return case


# ---- detection on a user's own COCO data (issue 37) -------------------------------------------------------------


DET_TIMEOUT = 180  # a 2-iteration detector run takes 20-60 s on 2 loaded cores; a hang never ends
DET_TRAIN = ["--model", "resnet20", "--base-width", "4", "--head", "c4", "--recipe", "detection-cpu", "--iters", "2",
             "--batch-size", "2", "--data", "coco", "--num-workers", "2", "--no-progress"]


def coco_data(ws: Workspace, name: str, **options) -> tuple[Path, dict, dict]:
    """A fresh COCO folder of 48x40 noise PNGs (the tests' writer): (folder, train json, val json)."""
    from test_detection_faults import write_split

    root = ws.fresh(name)
    return root, write_split(root, "train", **options), write_split(root, "val", **options)


def det_train(ws: Workspace, root: Path, *extra: str, out: str = "det-run") -> Outcome:
    return resnet(ws, "train", *DET_TRAIN, "--data-dir", str(root), "--out", str(ws.fresh(out)), *extra,
                  timeout=DET_TIMEOUT)


def det_json(root: Path, split: str, data: dict) -> None:
    (root / f"{split}.json").write_text(json.dumps(data))


def det_damaged(change: Callable[[Path, dict, dict], None], *words: str, masks: bool = False,
                **options) -> Callable[[Workspace], Outcome]:
    """Train on a COCO folder that CHANGE damages; one error line naming WORDS, exit 2."""
    def case(ws: Workspace) -> Outcome:
        root, train, val = coco_data(ws, "coco-bad", **options)
        change(root, train, val)
        return clean_error(det_train(ws, root, *(["--masks"] if masks else [])), *words)

    return case


def det_truncate(suffix: str) -> Callable[[Path, dict, dict], None]:
    def change(root: Path, train: dict, val: dict) -> None:
        from test_detection_faults import truncate

        truncate(root / "train" / f"2{suffix}")
    return change


def det_edit(split: str, edit: Callable[[dict], None]) -> Callable[[Path, dict, dict], None]:
    def change(root: Path, train: dict, val: dict) -> None:
        data = train if split == "train" else val
        edit(data)
        det_json(root, split, data)
    return change


def duplicate_image_id(data: dict) -> None:
    data["images"][3]["id"] = 1
    data["annotations"][3]["image_id"] = 1


def bomb(root: Path, train: dict, val: dict) -> None:
    from test_detection_faults import png_claiming

    png_claiming(root / "train" / "2.png", 20000, 20000)
    train["images"][1].update(width=20000, height=20000)
    det_json(root, "train", train)


def det_mixed_channels(ws: Workspace) -> Outcome:
    from PIL import Image

    root, _, _ = coco_data(ws, "coco-mixed")
    Image.new("L", (48, 40), 90).save(root / "train" / "1.png")
    Image.fromarray(np.full((40, 48), 30000, np.uint16)).save(root / "train" / "2.png")
    Image.new("RGBA", (48, 40), (1, 2, 3, 100)).save(root / "train" / "3.png")
    return works(det_train(ws, root), "read as RGB", "done:")


@functools.lru_cache(maxsize=None)
def det_ids_run(ws: Workspace) -> Path:
    """A detector trained 2 iterations on categories 5/17/90 (the last named toothbrush)."""
    root, _, _ = coco_data(ws, "coco-ids", categories=((5, "a"), (17, "b"), (90, "toothbrush")))
    done = det_train(ws, root, out="det-ids")
    if done.rc != 0:
        raise SetupFailed(f"the detector run failed (exit {done.rc}): {tail(done)}")
    return ws.root / "det-ids"


def det_predict_ids(ws: Workspace) -> Outcome:
    run = det_ids_run(ws)
    o = resnet(ws, "predict", str(ws.root / "coco-ids" / "val" / "1.png"), "--checkpoint", str(run), "--json",
               "--score-threshold", "0")
    works(o, '"category_id": 90')
    try:
        ids = {d.get("category_id") for r in json.loads(o.out) for d in r["detections"]}
    except (ValueError, KeyError, TypeError):
        ids = set()
    return o.expect(ids and ids <= {5, 17, 90}, f"category ids are the json's 5/17/90 (got {sorted(map(str, ids))})")


def det_draw_file(ws: Workspace) -> Outcome:
    run = det_ids_run(ws)
    (ws.root / "taken").write_text("x")
    o = resnet(ws, "predict", str(ws.root / "coco-ids" / "val" / "1.png"), "--checkpoint", str(run), "--draw",
               str(ws.root / "taken"))
    return clean_error(o, "--draw", "give a folder")


def det_small_images(ws: Workspace) -> Outcome:
    root, _, _ = coco_data(ws, "coco-small")
    return works(det_train(ws, root), "detector input: shorter side 40 px")


def det_backbone_nan(ws: Workspace) -> Outcome:
    root, _, _ = coco_data(ws, "coco-nan")
    weights = nan_weights(ws)
    return clean_error(det_train(ws, root, "--backbone-weights", str(weights)), "NaN or infinite")


def det_scenes_corrupt(ws: Workspace) -> Outcome:
    folder = ws.fresh("scenes")
    argv = ["data", "fashion-scenes", "--out", str(folder), "--train", "8", "--val", "4", "--size", "64"]
    made = resnet(ws, *argv)
    if made.rc != 0:
        raise SetupFailed(f"fashion-scenes could not be made (exit {made.rc}): {tail(made)}")
    (folder / "train.json").write_text("{not json")
    o = works(resnet(ws, *argv), "rebuilt")
    try:
        images = len(json.loads((folder / "train.json").read_text())["images"])
    except (ValueError, KeyError, TypeError):
        images = 0
    return o.expect(images == 8, f"train.json made again with its 8 images (has {images})")


def recipe_does_nothing(option: str, value: str, *more: str) -> Callable[[Workspace], Outcome]:
    def case(ws: Workspace) -> Outcome:
        out = ws.fresh("does-nothing")
        o = resnet(ws, "train", "--data", "fashion-mnist", "--data-dir", str(ws.fashion), *TINY_TRAIN, option, value,
                   *more, "--out", str(out))
        return clean_error(o, option)

    return case



# ---- the table ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the command, or what is injected
    before: str  # the class the issue reports before the fixes
    goal: str  # the class the case must end in now
    run: Callable[[Workspace], Outcome] = field(repr=False, compare=False)
    issue: str = ""  # what the issue says of it, where the class needs the words


DET_HANG = "the worker's traceback as one 'error' line, then the process never exits (only a kill ends it)"
DET_CASES = [
    Case("det-truncated-png", "train --data coco, a truncated PNG (header intact)", "hang", "clean error",
         det_damaged(det_truncate(".png"), "train.json", "image id 2 ('2.png')"), DET_HANG),
    Case("det-truncated-jpeg", "train --data coco, a truncated JPEG", "hang", "clean error",
         det_damaged(det_truncate(".jpg"), "train.json", "image id 2 ('2.jpg')", suffix=".jpg"), DET_HANG),
    Case("det-size-mismatch", "train --data coco, json width/height not the file's", "hang", "clean error",
         det_damaged(det_edit("train", lambda d: d["images"][2].update(width=64)), "image id 3", "64x40"), DET_HANG),
    Case("det-segmentation-empty", "train --masks, an annotation with segmentation []", "hang", "clean error",
         det_damaged(det_edit("train", lambda d: d["annotations"][1].update(segmentation=[])), "annotations[1]",
                     masks=True), DET_HANG),
    Case("det-masks-no-segmentation", "train --masks on a json without segmentations", "hang", "clean error",
         det_damaged(det_edit("train", lambda d: [a.pop("segmentation") for a in d["annotations"]]),
                     "no annotation has a segmentation", masks=True), DET_HANG),
    Case("det-val-duplicate-id", "train --data coco, val.json repeats an image id", "hang", "clean error",
         det_damaged(det_edit("val", duplicate_image_id), "val.json", "images[0]", "images[3]"),
         "prints done: and then hangs"),
    Case("det-mixed-channels", "train --data coco, grayscale + 16-bit + RGBA among RGB", "traceback", "works",
         det_mixed_channels, "expected input ... to have 1 channels"),
    Case("det-bomb", "train --data coco, a 20000x20000 PNG", "traceback", "clean error",
         det_damaged(bomb, "train/2.png", "--max-pixels"), "internal error (a bug in resnet)"),
    Case("det-val-no-annotations", "train --data coco, val.json with no annotations", "traceback", "clean error",
         det_damaged(det_edit("val", lambda d: d.update(annotations=[])), "val.json", "no objects"),
         "TypeError ... 'int' and 'NoneType' at evaluation"),
    Case("det-train-no-annotations", "train --data coco, train.json without 'annotations'", "silent wrong result",
         "clean error", det_damaged(det_edit("train", lambda d: d.pop("annotations")), "train.json", "no objects"),
         "trains silently as all negatives"),
    Case("det-train-duplicate-id", "train --data coco, train.json repeats an image id", "silent wrong result",
         "clean error", det_damaged(det_edit("train", duplicate_image_id), "images[0]", "images[3]"),
         "the second file gets the first file's boxes"),
    Case("det-dup-category-names", "train --data coco, two categories named 'a'", "silent wrong result",
         "clean error", det_damaged(lambda root, t, v: [det_edit(s, lambda d: d["categories"][1].update(name="a"))(
             root, t, v) for s in ("train", "val")], "category name 'a'"), "accepted, print as one name"),
    Case("det-file-name-absolute", "train --data coco, file_name /etc/hostname", "silent wrong result",
         "clean error", det_damaged(det_edit("train", lambda d: d["images"][0].update(file_name="/etc/hostname")),
                                    "/etc/hostname", "absolute"), "opens /etc/hostname"),
    Case("det-file-name-dotdot", "train --data coco, file_name ../val/1.png", "silent wrong result",
         "clean error", det_damaged(det_edit("train", lambda d: d["images"][0].update(file_name="../val/1.png")),
                                    "../val/1.png", "climbs out"), "reads outside the dataset folder"),
    Case("det-empty-categories", "train --data coco, 'categories': []", "clean error", "clean error",
         det_damaged(lambda root, t, v: [det_edit(s, lambda d: d.update(categories=[], annotations=[]))(root, t, v)
                                          for s in ("train", "val")], "train.json", "no categories"),
         "the error does not name the json"),
    Case("det-predict-category-ids", "predict --json, a detector trained on category ids 5/17/90",
         "silent wrong result", "works", det_predict_ids, "reports the contiguous label (3 for 90)"),
    Case("det-predict-draw-file", "predict --draw FILE (an existing file)", "clean error", "clean error",
         det_draw_file, "says 'File exists'"),
    Case("det-small-images", "train --data coco on 48x40 images: the detector's input size", "silent wrong result",
         "works", det_small_images, "upscaled to torchvision's 800 px"),
    Case("det-backbone-nan", "train --data coco --backbone-weights WEIGHTS holding a NaN", "silent wrong result",
         "clean error", det_backbone_nan, "trains, then diverges (exit 1)"),
    Case("det-scenes-corrupt-json", "resnet data fashion-scenes with a corrupt train.json", "silent wrong result",
         "works", det_scenes_corrupt, "calls the folder 'present' (exit 0)"),
    Case("recipe-mix-prob-alone", "train --mix-prob 0.5 without --mixup-alpha/--cutmix-alpha",
         "silent wrong result", "clean error", recipe_does_nothing("--mix-prob", "0.5"), "accepted silently"),
    Case("recipe-low-res-size-28", "train --low-res-size 28 on 28 px images", "silent wrong result", "clean error",
         recipe_does_nothing("--low-res-size", "28"), "accepted silently"),
    Case("recipe-crop-pad-28", "train --crop-pad 28 on 28 px images", "silent wrong result", "clean error",
         recipe_does_nothing("--crop-pad", "28"), "accepted silently"),
]


GZ_NOTE = "says 'present' (exit 0) for corrupt, truncated or empty .gz files ... shadows an intact Debian copy"
JSON_DAMAGE = [("corrupt", b"\x00\xffnot json{", "cannot be read"), ("truncated", "truncated", "not valid JSON"),
               ("empty", "", "is empty"), ("list", "[1, 2]", "holds a JSON list")]

CASES = [
    Case("readme-finetune", "train --model resnet20 --init akamaster-resnet20.th --recipe finetune --data folder "
         "(the README's fine-tune line, offline weights)", "traceback", "works", readme_finetune,
         "TypeError ... 'NoneType' and 'int' (paper_epochs('finetune'))"),
    Case("init-named", "the same run: a line naming the --init weights", "silent wrong result", "works", init_named,
         "an --init run prints no line naming the weights it started from"),
    Case("folder-one-class", "train --data folder with one class folder", "silent wrong result", "clean error",
         one_class_folder, "trains silently (loss 0, exit 0)"),
    Case("folder-val-no-twin", "eval --data folder, val/ with 2 classes not in train/", "silent wrong result", "works",
         val_without_twin, "dropped silently; warn naming them"),
    Case("predict-unreadable", "predict on a folder with a truncated image and a text file among 3 good ones",
         "clean error", "works", predict_skips_unreadable, "stops at the first unreadable image (exit 2)"),
    Case("predict-none-readable", "predict on a folder where no file is readable", "clean error", "clean error",
         predict_none_readable),
    Case("eval-run-dir", "eval --checkpoint RUN_DIR --data folder (no --which)", "silent wrong result", "works",
         eval_run_directory, "scores checkpoints/best, selected on the val/ it scores, and calls val/ 'test'"),
    Case("resume-finished", "train --resume of a finished run", "silent wrong result", "works", resume_finished,
         "prints 'done: 117 iterations, final ' with nothing after"),
    Case("predict-no-amp", "predict --no-amp", "clean error", "works", predict_no_amp,
         "no flag for exact fp32 (an unknown option)"),
    Case("torchrun-error-once", "torchrun --nproc-per-node 2 -m resnet eval --checkpoint MISSING", "clean error",
         "clean error", torchrun_error_once, "an expected error is printed once per rank"),
    Case("suite-stuck", "reproduce table6, kill -9 after a run's final checkpoint, the same command again",
         "traceback", "works", suite_stuck, "KeyError: 'test_top1_error' (suite.py summarize)"),
    *[Case(f"suite-json-{kind}", f"suite.json {kind}", "traceback", "clean error",
           damage_suite_file("suite.json", text, words)) for kind, text, words in JSON_DAMAGE],
    Case("suite-json-missing-keys", "suite.json without 'budget' and 'recipe'", "traceback", "clean error",
         damage_suite_file("suite.json", '{"data": "fashion-mnist"}', "has no 'budget'")),
    *[Case(f"result-json-{kind}", f"resnet20-s0/result.json {kind}", "traceback", "clean error",
           damage_suite_file("resnet20-s0/result.json", text, words)) for kind, text, words in JSON_DAMAGE],
    Case("result-json-missing-keys", "resnet20-s0/result.json with only 'name'", "traceback", "clean error",
         damage_suite_file("resnet20-s0/result.json", '{"name": "resnet20-s0"}', "has no 'label'")),
    Case("config-unknown-field", "train --resume, config.json's recipe with an unknown field", "traceback",
         "clean error", damage_config(unknown_field, "bogus_field")),
    Case("config-corrupt", "train --resume, config.json corrupt", "clean error", "clean error",
         damage_config(lambda text: "\x00" + text[1:], "JSON"), "errors do not name the file"),
    Case("config-truncated", "train --resume, config.json truncated", "clean error", "clean error",
         damage_config(lambda text: text[: len(text) // 2], "JSON"), "errors do not name the file"),
    Case("config-list", "train --resume, config.json a list", "clean error", "clean error",
         damage_config(lambda text: "[1, 2]", "cannot be resumed"), "errors do not name the file"),
    Case("config-missing-keys", "train --resume, config.json without 'model'", "clean error", "clean error",
         damage_config(without_model, "no model in it"), "errors do not name the file"),
    Case("log-every-0", "train --log-every 0", "traceback", "clean error", log_every_0, "division by zero"),
    Case("input-mean-eval", "eval of a checkpoint whose input mean has shape (4, 16, 16)", "traceback",
         "clean error", lambda ws: wrong_mean(ws, "eval")),
    Case("input-mean-predict", "predict with that checkpoint", "traceback", "clean error",
         lambda ws: wrong_mean(ws, "predict")),
    Case("eval-batch-8192-ulimit", "eval --batch-size 8192 under ulimit -v (fresh process + 1.2 GiB)", "traceback",
         "works", eval_under_memory_limit, "dies with MemoryError/'internal error'", ),
    Case("class-names-short", "predict, checkpoint with 2 class_names for 3 outputs", "silent wrong result",
         "clean error", class_names_short, "prints a mix of names and indices"),
    Case("momentum-2", "train --momentum 2", "silent wrong result", "clean error", bad_train_value("--momentum", "2")),
    Case("base-width-0", "train --base-width 0", "silent wrong result", "clean error",
         bad_train_value("--base-width", "0"), "becomes 16"),
    Case("lr-drops-1.5", "train --lr-drops 1.5", "silent wrong result", "clean error",
         bad_train_value("--lr-drops", "1.5"), "never drops"),
    Case("lr-nan", "train --lr nan", "silent wrong result", "clean error", bad_train_value("--lr", "nan"),
         "caught only as a NaN loss"),
    Case("lr-inf", "train --lr inf", "silent wrong result", "clean error", bad_train_value("--lr", "inf"),
         "caught only as a NaN loss"),
    Case("reproduce-jobs-0", "reproduce --jobs 0", "silent wrong result", "clean error",
         bad_suite_value("--jobs", "0"), "becomes the default"),
    Case("reproduce-depths-21", "reproduce --depths 21", "silent wrong result", "clean error",
         bad_suite_value("--depths", "21"), "fails after writing suite.json and an empty run folder"),
    Case("init-nan", "train --init WEIGHTS holding a NaN", "silent wrong result", "clean error", init_nan,
         "trains, then blames the loss (exit 1); leaves a directory that blocks --out"),
    Case("resume-nan", "train --resume of a run whose last checkpoint holds a NaN", "silent wrong result",
         "clean error", resume_nan, "its hint calls the NaN checkpoint 'the last good checkpoint'"),
    Case("convert-nan", "convert --from akamaster of a .th holding a NaN", "silent wrong result", "clean error",
         convert_nan, "writes NaN weights without a word"),
    Case("convert-pickle", "convert --from torchvision of a .pth whose pickle runs a command", "clean error",
         "clean error", pickle_case("convert"), "malicious pickles ran no code"),
    Case("resume-pickle", "train --resume, state.pt whose pickle runs a command", "clean error", "clean error",
         pickle_case("resume"), "malicious pickles ran no code"),
    Case("out-read-only", "convert --out on a read-only filesystem", "clean error", "clean error",
         out_not_writable("read-only"), "names the hidden temporary file instead of the target"),
    Case("out-full", "convert --out on a full filesystem (64 KiB tmpfs)", "clean error", "clean error",
         out_not_writable("full"), "names the hidden temporary file instead of the target"),
    Case("reproduce-sigint", "SIGINT to the group of reproduce table6 --depths 20 --budget 0.002 --jobs 2",
         "hang", "works", signal_suite(signal.SIGINT), "hangs for good: deadlock on a multiprocessing lock"),
    Case("reproduce-sigterm", "SIGTERM to that group", "hang", "works", signal_suite(signal.SIGTERM),
         "orphans the workers: they save, never exit"),
    Case("torchrun-lost-rank", "torchrun --nproc-per-node 2 train, rank 1 killed with SIGKILL", "traceback",
         "clean error", torchrun_lost_rank, "a Gloo traceback and 'internal error'"),
    *[Case(f"data-gz-{kind}", f"resnet data fashion-mnist, a copy in $RESNET_DATA with one {kind} .gz",
           "silent wrong result", "works", damaged_gz(kind), GZ_NOTE) for kind in ("corrupt", "truncated", "empty")],
    *DET_CASES,
]


@dataclass
class Row:
    id: str
    what: str
    before: str
    after: str
    goal: str
    ok: bool
    rc: int | None
    seconds: float
    missing: list[str]
    output: str  # the error lines, or the last lines of the output
    issue: str


def run_case(case: Case, ws: Workspace) -> Row:
    started = time.monotonic()
    try:
        o = case.run(ws)
        after = classify(o, case.goal)
    except Exception as e:  # noqa: BLE001 - a fixture that could not be made (or a bug here): the case is not judged
        o, after = Outcome(None, missing=[f"set-up failed: {type(e).__name__}: {e}"]), "not run"
    seconds = o.seconds or time.monotonic() - started
    shown = " | ".join(error_lines(o)) or tail(o)
    return Row(case.id, case.what, case.before, after, case.goal, after == case.goal and not o.missing, o.rc,
               round(seconds, 1), o.missing, shown[:600], case.issue)


def counts(rows: list[Row], key: str) -> dict[str, int]:
    found = Counter(getattr(r, key) for r in rows)
    return {c: found[c] for c in (*CLASSES, "not run") if found[c]}


def print_row(row: Row) -> None:
    mark = "ok" if row.ok else "NOT OK"
    print(f"{row.id:26s} {row.before:20s} {row.after:20s} {mark:6s} {row.seconds:6.1f}s  {row.what}", flush=True)
    for what in row.missing:
        print(f"{'':26s} missing: {what}", flush=True)
    if not row.ok:
        print(f"{'':26s} output: {row.output}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these cases (no JSON unless --json)")
    p.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    p.add_argument("--json", type=Path, metavar="OUT", help=f"where to write the table (default, full runs: {RESULTS})")
    args = p.parse_args()
    if args.list:
        for case in CASES:
            print(f"{case.id:26s} {case.before:20s} -> {case.goal:12s} {case.what}")
        return
    unknown = set(args.only or ()) - {c.id for c in CASES}
    if unknown:
        p.error(f"unknown case(s): {', '.join(sorted(unknown))} (see --list)")
    cases = [c for c in CASES if not args.only or c.id in args.only]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fault-pass-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        ws = Workspace(root.resolve())
        print(f"{'case':26s} {'before':20s} {'after':20s} {'':6s} {'time':>7s}  what", flush=True)
        rows = []
        for case in cases:
            rows.append(run_case(case, ws))
            print_row(rows[-1])
    result = {"issue": 22, "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
              "python": platform.python_version(), "classes": list(CLASSES), "cases": len(rows),
              "not_ok": [r.id for r in rows if not r.ok], "counts": {"before": counts(rows, "before"),
                                                                     "after": counts(rows, "after")},
              "seconds": round(time.monotonic() - started, 1), "rows": [asdict(r) for r in rows]}
    print(f"\n{len(rows)} cases in {result['seconds']:.0f} s; {len(rows) - len(result['not_ok'])} as they must be")
    for key in ("before", "after"):
        print(f"{key:7s} " + ", ".join(f"{c}: {n}" for c, n in result["counts"][key].items()))
    target = args.json or (RESULTS if not args.only else None)
    if target:
        write_result(target, result, echo=False)
        print(f"wrote {target}")
    sys.exit(1 if result["not_ok"] else 0)


if __name__ == "__main__":
    main()
