"""The package's shape (DESIGN.md, "Layout"): no import cycles, imports inside functions counted; library code
never imports the command line; a lazy import stays only where it keeps `resnet COMMAND --help` fast."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cycles_tool():
    """tools/import_cycles.py, loaded from its file (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "tools" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_cycles"] = module
    spec.loader.exec_module(module)
    return module


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_tool_finds_cycles_hidden_in_functions(tmp_path, cycles_tool):
    """A small package with the kinds of edge the tool must resolve: an import inside a function, a
    `from pkg.sub import module`, a name re-exported by a package's __init__ (an edge to the package), relative
    imports, and module names that importlib.import_module looks up at run time."""
    package = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nfrom pkg import b\n",
        "pkg/b.py": "def f():\n    from pkg.a import thing\n    return thing\n",
        "pkg/sub/__init__.py": "from pkg.sub.c import C\n",
        "pkg/sub/c.py": "class C: ...\n",
        "pkg/d.py": "from pkg.sub import C\n",
        "pkg/e.py": "from . import f\n",
        "pkg/f.py": "import pkg.e\n",
        "pkg/g.py": "import importlib\nLAZY = {'x': 'pkg.a'}\ndef get(n):\n    return importlib.import_module(LAZY[n])\n",
    })
    edges = cycles_tool.all_edges(package)
    pairs = {(e.source, e.target, e.lazy) for e in edges}
    assert ("pkg.b", "pkg.a", True) in pairs and ("pkg.a", "pkg.b", False) in pairs
    assert ("pkg.d", "pkg.sub", False) in pairs  # the re-export is an edge to the package
    assert ("pkg.sub", "pkg.sub.c", False) in pairs
    assert ("pkg.g", "pkg.a", True) in pairs  # a table of names imported at run time
    assert not any(e.target == "os" for e in edges)  # other libraries are not ours
    assert cycles_tool.cycles(edges) == [["pkg.a", "pkg.b"], ["pkg.e", "pkg.f"]]
    assert cycles_tool.main(["--package", str(package)]) == 1


def test_no_import_cycles(cycles_tool, capsys):
    """No cycle between resnet's modules, counting the imports inside functions."""
    edges = cycles_tool.all_edges(ROOT / "resnet")
    assert len(edges) > 150  # the tool read the package (about 250 internal imports)
    assert cycles_tool.cycles(edges) == []
    assert cycles_tool.main([]) == 0
    assert "0 cycles" in capsys.readouterr().out


def test_library_never_imports_the_command_line(cycles_tool):
    """Only resnet/cli.py, resnet/commands/* (and `python -m resnet`'s __main__.py) may import resnet.cli or
    resnet.commands, inside functions too."""
    command_line = lambda name: name == "resnet.cli" or name.split(".")[:2] == ["resnet", "commands"]  # noqa: E731
    offenders = [f"{e.source}:{e.line} imports {e.target}" for e in cycles_tool.all_edges(ROOT / "resnet")
                 if command_line(e.target) and not (command_line(e.source) or e.source == "resnet.__main__")]
    assert offenders == []


# imports inside functions left in files that others are rewriting now (moved to the top when they settle)
NOT_YET_MOVED = {"resnet.detection.cli", "resnet.detection.coco"}
# the front doors that import by name on first use, so that `resnet --help` never loads torch: the package's and
# resnet.train's __getattr__ (their _LAZY tables) and the CLI, which imports only the chosen command's module
FRONT_DOORS = {"resnet", "resnet.train", "resnet.cli"}


def test_lazy_imports_only_where_they_keep_help_fast(cycles_tool):
    """An internal import inside a function is in a command's module (`resnet CMD --help` imports that module and
    nothing heavy), under a comment that says so; everywhere else imports sit at the top of the module."""
    modules = cycles_tool.module_names(ROOT / "resnet")
    elsewhere, uncommented = [], []
    for edge in cycles_tool.all_edges(ROOT / "resnet"):
        if not edge.lazy:
            continue
        if not edge.source.startswith("resnet.commands."):
            if edge.source not in NOT_YET_MOVED | FRONT_DOORS:
                elsewhere.append(f"{edge.source}:{edge.line} -> {edge.target}")
            continue
        lines = modules[edge.source].read_text().splitlines()[: edge.line - 1]
        body = lines[max(i for i, line in enumerate(lines) if line.lstrip().startswith("def ")):]
        if not any("--help" in line and line.lstrip().startswith("#") for line in body):
            uncommented.append(f"{edge.source}:{edge.line} -> {edge.target}")
    assert elsewhere == []
    assert uncommented == []
