"""The README runs as written: its Python blocks execute, and each `resnet ...` command line parses."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from resnet.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    """The Python blocks, but the onnxruntime example: tests/test_export.py runs it on files it writes."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if "onnxruntime" not in b]


def command_lines() -> list[str]:
    """Every indented or fenced line that starts a `resnet` command (continuation lines joined)."""
    text = README.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [line.split("  #")[0].strip() for line in lines if line.startswith("resnet ")]


def test_readme_has_python_and_commands():
    assert python_blocks() and len(command_lines()) >= 8


@pytest.mark.parametrize("line", command_lines())
def test_readme_command_parses(line):
    argv = shlex.split(line)[1:]
    args = build_parser(argv).parse_args(argv)
    assert args.command == argv[0]


def test_readme_python_runs(tiny_fashion, tmp_path, monkeypatch):
    """Run on the tiny Fashion-MNIST in $RESNET_DATA, in an empty working directory."""
    home = tmp_path / "data"
    shutil.copytree(tiny_fashion, home / "fashion-mnist")
    monkeypatch.setenv("RESNET_DATA", str(home))
    monkeypatch.chdir(tmp_path)
    for block in python_blocks():
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
