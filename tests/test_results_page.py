"""docs/results.md is what tools/results_page.py writes from the recorded runs, its numbers are those of the JSON
(read here independently), and records of shapes it does not know (added later by others) get a section with
their provenance instead of breaking the page."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "results_page.py"


def results_page():
    spec = importlib.util.spec_from_file_location("results_page", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section(page: str, title: str) -> str:
    """The text of `### title` up to the next heading of that level or above."""
    start = page.index(f"\n### {title}\n")
    ends = [i for i in (page.find("\n### ", start + 1), page.find("\n## ", start + 1)) if i != -1]
    return page[start:min(ends) if ends else len(page)]


def test_committed_page_is_what_the_script_writes():
    expected = results_page().render(ROOT)
    committed = (ROOT / "docs" / "results.md").read_text()
    assert committed == expected, "docs/results.md is out of date: run `python tools/results_page.py` and commit it"


def test_every_record_has_a_section_with_its_command():
    page = (ROOT / "docs" / "results.md").read_text()
    for path in sorted(ROOT.glob("results/*/report.json")):
        text = section(page, path.parent.name)
        report = json.loads(path.read_text())
        commands = [report["command"]] if "command" in report else [p["command"] for p in report.values()]
        assert all(f"- command: `{c}`" in text for c in commands), path
    for path in sorted(ROOT.glob("benchmarks/results/*.json")):
        assert "- command: `python benchmarks/" in section(page, path.stem), path


def test_the_numbers_are_the_records():
    """Each known record's headline numbers, formatted here from the JSON, are in its section."""
    page = (ROOT / "docs" / "results.md").read_text()
    table6 = json.loads((ROOT / "results/table6-fashion-mnist-b1/report.json").read_text())["table6"]
    text = section(page, "table6-fashion-mnist-b1")
    for row in table6["rows"]:
        line = next(line for line in text.splitlines() if line.startswith(f"| {row['net']} |"))
        assert f"| {100 * row['test_error_mean']:.2f}% |" in line and f"| {row['iterations']} |" in line
    assert "recipe paper-cifar (64,000 iterations of batch 128 per run)" in text
    detection = json.loads((ROOT / "results/detection-fashion-scenes-b1/report.json").read_text())
    text = section(page, "detection-fashion-scenes-b1")
    for row in detection["results"]:
        line = next(line for line in text.splitlines() if line.startswith(f"| {row['backbone']} |"))
        assert f"| {100 * row['box_AP']:.1f} | {100 * row['box_AP50']:.1f} |" in line
    assert f"box_AP {100 * detection['relative_gain']['box_AP']:+.0f}%" in text  # +24%
    xeon = json.loads((ROOT / "benchmarks/results/time_to_accuracy-xeon.json").read_text())
    text = section(page, "time_to_accuracy-xeon")
    assert "- machine: cpu Intel(R) Xeon(R) Processor, cores 2, threads 2" in text
    for run in xeon["runs"]:
        line = next(line for line in text.splitlines() if " ".join(run["options"]) + "`" in line)
        assert f"{100 * run['best_test_accuracy']:.2f}% ({run['best_at_seconds'] / 60:.1f} min)" in line
    assert "| 95.06% (29.1 min) |" in text  # the README's headline


def test_missing_fields_read_not_recorded():
    page = (ROOT / "docs" / "results.md").read_text()
    text = section(page, "table6-fashion-mnist-b1")  # its report and configs hold no machine and no date
    assert "- machine: not recorded" in text and "- date: not recorded" in text


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def test_unknown_shapes_get_a_section_each(tmp_path):
    """Records of shapes the script does not know: a section each, their fields where they have them, "not
    recorded" where not, and the page stays current under --check once written."""
    write_json(tmp_path / "results/degradation-fashion-mnist-b1/report.json",
               {"degradation": {"command": "resnet reproduce degradation --depths 20 32 44 56 110", "budget": 1,
                                "rows": [{"net": "plain110", "test_error": 0.1234}]}})
    write_json(tmp_path / "results/degradation-fashion-mnist-b1/plain110-s0/config.json",
               {"model": "plain110", "provenance": {"cpu": "Some CPU", "torch": "2.14.1", "date": "2026-12-05"}})
    write_json(tmp_path / "results/odd/report.json", [1, 2, 3])
    write_json(tmp_path / "benchmarks/results/inference-onnx.json",
               {"cpu": "Other CPU", "runs": {"int8": {"ms_per_image": 1.25}, "fp32": {"ms_per_image": 3.5}}})
    write_json(tmp_path / "benchmarks/results/serve-load.json", {"rows": [{"clients": 8, "p99_ms": 41.5}]})
    write_json(tmp_path / "benchmarks/results/empty.json", {})
    module = results_page()
    page = module.render(tmp_path)
    text = section(page, "degradation-fashion-mnist-b1")
    assert "`resnet reproduce degradation --depths 20 32 44 56 110`" in text and "| plain110 | 12.34% |" in text
    assert "- machine: cpu Some CPU" in text and "- date: date 2026-12-05" in text and "torch 2.14.1" in text
    assert "(a list of 3 values)" in section(page, "odd")
    text = section(page, "inference-onnx")
    assert "| int8 | 1.25 |" in text and "- machine: cpu Other CPU" in text and "- date: not recorded" in text
    assert "- command: not recorded" in text  # no benchmark script names this file
    assert "| 8 | 41.5 |" in section(page, "serve-load")
    assert "- machine: not recorded" in section(page, "empty")
    assert module.main(["--root", str(tmp_path), "--check"]) == 1  # no page yet
    assert module.main(["--root", str(tmp_path)]) == 0
    assert module.main(["--root", str(tmp_path), "--check"]) == 0
    assert (tmp_path / "docs/results.md").read_text() == page


def test_a_damaged_record_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "benchmarks/results/broken.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"cpu": ')
    with pytest.raises(SystemExit) as error:
        results_page().render(tmp_path)
    message = str(error.value)
    assert str(bad) in message and "python tools/results_page.py" in message and "\n" not in message
