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
        line = next(line for line in text.splitlines() if line.startswith(f"| {row['backbone']} | {row['seed']} |"))
        assert f"| {100 * row['box_AP']:.1f} | {100 * row['box_AP50']:.1f} |" in line
    for row in detection["summary"]:
        line = next(line for line in text.splitlines() if line.startswith(f"| {row['backbone']} | {row['seeds']} |"))
        assert f"| {100 * row['box_AP_mean']:.1f} ± {100 * row['box_AP_std']:.1f} |" in line
    gain = detection["gains"]["box_AP"]
    assert f"- box_AP: {100 * gain['mean']:+.0f}% ± {100 * gain['std']:.0f}% over 3 seeds" in text
    assert "![detection](../results/detection-fashion-scenes-b1/detection.png)" in text
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


def test_seeds_claims_figures_and_wall_time_are_shown(tmp_path):
    """A detection suite over seeds gets its mean ± std, each gain with its spread and verdict, and its wall time; a
    reproduce suite its claims as judged; each results folder's figures are on the page."""
    results = [{"backbone": f"{k}20", "kind": k, "seed": s, "classification_test_error": 0.07, "box_AP": ap,
                "classification_seconds": 600.0, "detection_seconds": 300.0}
               for (k, s), ap in {("plain", 0): 0.2, ("resnet", 0): 0.3, ("plain", 1): 0.25, ("resnet", 1): 0.27}.items()]
    write_json(tmp_path / "results/det/report.json", {
        "experiment": "detection", "command": "resnet reproduce detection --seeds 2", "budget": 1, "results": results,
        "summary": [{"backbone": "plain20", "kind": "plain", "seeds": 2, "box_AP_mean": 0.225, "box_AP_std": 0.0354},
                    {"backbone": "resnet20", "kind": "resnet", "seeds": 2, "box_AP_mean": 0.285, "box_AP_std": 0.0212}],
        "gains": {"box_AP": {"mean": 0.29, "std": 0.297, "per_seed": [0.5, 0.08], "residual_better": 2,
                             "beyond_spread": False}},
        "relative_gain": {"box_AP": 0.29}, "paper_relative_gain": {"coco_AP": 0.283}})
    (tmp_path / "results/det/detection.png").write_bytes(b"\x89PNG")
    write_json(tmp_path / "results/fig6/report.json", {"degradation": {
        "command": "resnet reproduce degradation", "budget": 1, "data": "fashion-mnist",
        "rows": [{"net": "resnet20", "seeds": 2, "test_error_mean": 0.12, "paper_cifar10_test_error": 0.0875}],
        "claims": [{"statement": "plain nets: error rises with depth", "metric": "test_error", "holds": "mean",
                    "exceptions": ["seed 1 plain20 -> plain32"]}],
        "runs": [{"train_seconds": 1800.0}, {"train_seconds": 3600.0}]}})
    page = results_page().render(tmp_path)
    text = section(page, "det")
    assert "| plain20 | 2 | 22.5 ± 3.5 |" in text and "| resnet20 | 2 | 28.5 ± 2.1 |" in text
    assert ("- box_AP: +29% ± 30% over 2 seeds, residual better in 2/2: within the seed-to-seed spread" in text)
    assert "coco_AP +28%" in text and "Wall time: 1.0 h over 4 backbone runs" in text
    assert "![detection](../results/det/detection.png)" in text
    text = section(page, "fig6")
    assert "| resnet20 | 2 | 12.00% | 8.75% |" in text and "Table 6 (CIFAR-10), beside these for shape only" in text
    assert ("- plain nets: error rises with depth, test error: **holds on the mean only** (not at: seed 1 plain20 -> "
            "plain32)") in text
    assert "Wall time: 1.5 h of training over 2 runs" in text


def test_a_damaged_record_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "benchmarks/results/broken.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"cpu": ')
    with pytest.raises(SystemExit) as error:
        results_page().render(tmp_path)
    message = str(error.value)
    assert str(bad) in message and "python tools/results_page.py" in message and "\n" not in message
