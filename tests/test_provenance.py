"""Provenance: every run's config.json (and every benchmark's JSON) says which code, machine and command made it."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch

import resnet
from resnet import provenance
from resnet.train.loop import train
from resnet.train.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
GIT = shutil.which("git")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.mark.skipif(GIT is None, reason="needs the git program")
def test_git_commit_is_the_checked_out_commit(tmp_path):
    """The hash is the one the branch file in .git names (read here without git); `dirty` follows the tracked
    files; outside a checkout there is no commit and no error."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("one")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "first")
    branch_file = (repo / ".git" / "HEAD").read_text().split(": ", 1)[1].strip()
    expected = (repo / ".git" / branch_file).read_text().strip()
    assert provenance.git_commit(repo) == {"commit": expected, "dirty": False}
    (repo / "a.txt").write_text("two")
    assert provenance.git_commit(repo) == {"commit": expected, "dirty": True}
    assert provenance.git_commit(tmp_path / "elsewhere") is None


def test_no_git_program_is_no_commit(tmp_path, monkeypatch):
    """A checkout on a machine without git: the record says nothing of the commit, and nothing fails."""
    (tmp_path / ".git").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert provenance.git_commit(tmp_path) is None


def test_cpu_model_is_what_lscpu_says():
    """/proc/cpuinfo's model name agrees with lscpu's "Model name" (the name the benchmarks have recorded)."""
    lscpu = shutil.which("lscpu")
    if lscpu is None:
        pytest.skip("no lscpu here to compare with")
    names = [line.split(":", 1)[1].strip() for line in subprocess.run([lscpu], capture_output=True, text=True)
             .stdout.splitlines() if line.strip().startswith("Model name:")]
    if not names:
        pytest.skip("lscpu gives no model name here")
    assert provenance.cpu_model() == names[0]


def test_the_record_names_versions_machine_and_command():
    record = provenance.provenance("cpu", argv=["resnet", "train", "--out", "runs/a b"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert record["version"] == resnet.__version__ == version
    assert record["torch"] == torch.__version__ and record["python"] == platform.python_version()
    assert record["command"] == "resnet train --out 'runs/a b'"  # shell-quoted: it can be pasted back
    assert record["gpu"] is None and record["device"] == "cpu"  # a CPU run does not ask CUDA
    assert record["cpu"] == provenance.cpu_model() and record["cpu"]
    if (ROOT / ".git").exists() and GIT is not None:  # this checkout: the commit git names
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert record["commit"] == head.strip() and isinstance(record["dirty"], bool)
    json.dumps(record)  # plain JSON values only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_names_its_gpu():
    assert provenance.provenance("cuda:0")["gpu"] == torch.cuda.get_device_name(0)


def test_a_run_records_its_provenance_in_config_json(tiny_fashion, tmp_path, monkeypatch):
    """A training run (4 steps) writes the record into its config.json beside the model, data and recipe."""
    monkeypatch.setattr("sys.argv", ["resnet", "train", "--model", "resnet20"])
    recipe = get_recipe("paper-cifar", iters=4, batch_size=32, val_split=False, eval_every=4, device="cpu")
    train("resnet20", "fashion-mnist", data_dir=str(tiny_fashion), recipe=recipe, out=tmp_path / "run",
          model_options={"base_width": 4}, progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "resnet20" and config["recipe"]["iters"] == 4
    record = config["provenance"]
    assert record["command"] == "resnet train --model resnet20"
    assert record["version"] == resnet.__version__ and record["torch"] == torch.__version__
    assert record["device"] == "cpu" and record["cpu"] == provenance.cpu_model()


def test_benchmarks_write_their_results_through_one_writer(tmp_path, monkeypatch):
    """benchmarks/record.py writes a result with its provenance and load average; no benchmark writes its result
    file another way (each did its own json.dumps + atomic write before)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import record

    path = record.write_result(tmp_path / "bench.json", {"speedup": 1.5}, echo=False)
    written = json.loads(path.read_text())
    assert written["speedup"] == 1.5 and len(written["load_average"]) == 3
    assert written["provenance"]["cpu"] == provenance.cpu_model()
    assert written["provenance"]["version"] == resnet.__version__
    for script in (ROOT / "benchmarks").glob("*.py"):
        if script.name != "record.py":
            assert "atomic_write_text(" not in script.read_text(), f"{script.name} writes a result by itself"
