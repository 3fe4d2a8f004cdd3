"""Write docs/results.md from the recorded runs: results/*/report.json (with suite.json and the runs' config.json
beside them) and benchmarks/results/*.json.

Every number on the page comes from those files, each with its provenance: the command, the budget, the machine
and the date. A field a record does not hold is printed as "not recorded", never guessed. Known shapes (the
reports of `resnet reproduce`, the detection reports, the time-to-accuracy benchmark) get their own tables; any
other JSON gets a generic section (its provenance and its main table), so records added later never break the
page. Standard library only, so it runs without the package: `python tools/results_page.py` (writes the page),
`python tools/results_page.py --check` (exit status 1 when the committed page differs; tests/test_results_page.py
runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = Path("docs") / "results.md"
COMMAND = "python tools/results_page.py"
NOT_RECORDED = "not recorded"
DATE_KEYS = ("date", "finished", "started", "timestamp", "created", "time_utc")
MACHINE_KEYS = ("cpu", "gpu", "device_name", "machine", "cores", "cpu_count", "threads", "torch_threads")
VERSION_KEYS = ("torch", "python", "version", "git_commit", "commit")
BUDGET_KEYS = ("budget", "iters", "epochs", "rounds", "steps", "repeats", "images", "subset", "cases")
MAX_CELL = 90
CLAIM_WORDS = {"every seed": "holds on every seed", "mean": "holds on the mean only", "no": "does not hold",
               "n/a": "not measured"}


# ----------------------------------------------------------------------------- reading


def load(path: Path) -> Any:
    """A JSON file; a damaged one is one line naming it (the page is not written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path}: not readable JSON ({error}); fix or remove it, then run {COMMAND}") from None


def provenance_sources(record: Any) -> list[dict]:
    """The dicts that may hold provenance: the record and its `provenance`, `machine`, `versions` parts."""
    if not isinstance(record, dict):
        return []
    found = [record]
    for key in ("provenance", "machine", "versions", "environment"):
        if isinstance(record.get(key), dict):
            found.append(record[key])
    return found


def first_of(records: list[Any], keys: tuple[str, ...]) -> list[str]:
    """`key: value` for each of `keys` found in the records' provenance (first record that has it wins)."""
    out = []
    for key in keys:
        for source in (s for r in records for s in provenance_sources(r)):
            value = source.get(key)
            if value is not None and not isinstance(value, (dict, list)):
                out.append(f"{key} {value}")
                break
    return out


def described(records: list[Any], keys: tuple[str, ...]) -> str:
    found = first_of(records, keys)
    return ", ".join(found) if found else NOT_RECORDED


# ----------------------------------------------------------------------------- formatting


def number(key: str, value: Any) -> str:
    """A cell: errors and accuracies as %, COCO APs x100, seconds with one decimal, other floats to 4 digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        name = key.lower()
        if ("error" in name or "accuracy" in name) and 0 <= value <= 1:
            return f"{100 * value:.2f}%"
        if "ap" in name.split("_") or name.startswith(("box_ap", "mask_ap")):
            return f"{100 * value:.1f}"
        if "seconds" in name:
            return f"{value:,.1f}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 3] + "..."


def table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    """A markdown table of dict rows over their scalar (or given) columns."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k, v in row.items() if k not in columns and not isinstance(v, (dict, list))]
    if not rows or not columns:
        return ["(no rows)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(number(c, row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def provenance(command: str, budget: str, machine: str, date: str, versions: str, source: str) -> list[str]:
    return [f"- command: {command}", f"- budget: {budget}", f"- machine: {machine}", f"- date: {date}",
            f"- versions: {versions}", f"- recorded in: {source}", ""]


def code(text: str | None) -> str:
    return f"`{text}`" if text else NOT_RECORDED


# ----------------------------------------------------------------------------- results/*/report.json


def run_configs(folder: Path) -> list[dict]:
    """The config.json of each run in a results folder (they may carry the run's provenance)."""
    return [load(p) for p in sorted(folder.glob("*/config.json"))]


def recipe_budget(suite: dict, budget: Any) -> str:
    recipe = suite.get("recipe") or {}
    parts = [f"budget {budget}" if budget is not None else None]
    if recipe:
        length = f"{recipe['iters']:,} iterations" if recipe.get("iters") else f"{recipe.get('epochs')} epochs"
        parts.append(f"recipe {recipe.get('name', '?')} ({length} of batch {recipe.get('batch_size', '?')} per run)")
    found = [p for p in parts if p]
    return ", ".join(found) if found else NOT_RECORDED


def suite_tables(name: str, part: dict) -> list[str]:
    """A `resnet reproduce` experiment (table6, fig7, shortcuts, degradation): its rows, one per net; the paper's
    statements about depth as the report judged them; the runs' training time in all."""
    rows = part.get("rows") or []
    if rows and "test_error_mean" in rows[0]:
        columns = ["net", "seeds", "test_error_mean", "test_error_std", "test_error_best", "best_val_test_error_mean",
                   "train_error_mean", "train_error_std", "iterations", "train_seconds_mean", "paper_test_error",
                   "difference", "paper_cifar10_test_error"]
        lines = table(rows, [c for c in columns if any(r.get(c) is not None for r in rows)])
    else:
        lines = table(rows) if rows else table(part.get("runs") or [])
    if rows and part.get("data") not in (None, "cifar10") and any("paper_cifar10_test_error" in r for r in rows):
        lines += ["", "paper_cifar10_test_error: the paper's Table 6 (CIFAR-10), beside these for shape only."]
    claims = [c for c in part.get("claims") or [] if isinstance(c, dict) and "holds" in c]
    if claims:
        lines += ["", "The paper's statements about depth, as the report judges them:", ""]
        lines += [f"- {c.get('statement', c.get('kind'))}, {str(c.get('metric', '')).replace('_', ' ')}: "
                  f"**{CLAIM_WORDS.get(c['holds'], c['holds'])}**" +
                  (f" (not at: {'; '.join(c['exceptions'])})" if c.get("exceptions") else "") for c in claims]
    seconds = [r["train_seconds"] for r in part.get("runs") or [] if isinstance(r.get("train_seconds"), (int, float))]
    if seconds:
        lines += ["", f"Wall time: {sum(seconds) / 3600:.1f} h of training over {len(seconds)} runs "
                      "(the sum of the runs' times; runs trained side by side overlap)."]
    return lines


def report_section(path: Path, root: Path) -> list[str]:
    """One results folder: each experiment of its report.json with its provenance and table."""
    folder = path.parent
    report, suite = load(path), (load(folder / "suite.json") if (folder / "suite.json").is_file() else {})
    configs = run_configs(folder)
    records = [report, suite, *configs]
    parts = {k: v for k, v in report.items() if isinstance(v, dict) and "command" in v} if isinstance(report, dict) \
        else {}
    if not parts:
        parts = {report.get("experiment", folder.name) if isinstance(report, dict) else folder.name: report}
    out = [f"### {folder.name}", ""]
    for name, part in parts.items():
        budget = part.get("budget", suite.get("budget")) if isinstance(part, dict) else None
        if len(parts) > 1:
            out += [f"#### {name}", ""]
        out += provenance(code(part.get("command") if isinstance(part, dict) else None), recipe_budget(suite, budget),
                          described(records, MACHINE_KEYS), described(records, DATE_KEYS),
                          described(records, VERSION_KEYS), f"[{rel(path, root)}]({link(path, root)})")
        out += experiment_table(name, part) + [""]
    out += [f"![{png.stem}]({link(png, root)})" for png in sorted(folder.glob("*.png"))]
    return out + [""] if out[-1] != "" else out


def experiment_table(name: str, part: Any) -> list[str]:
    if isinstance(part, dict) and isinstance(part.get("results"), list) and part.get("experiment") == "detection":
        return detection_table(part)
    if isinstance(part, dict) and isinstance(part.get("rows"), list):
        return suite_tables(name, part)
    return generic_table(part)


def detection_table(report: dict) -> list[str]:
    """`resnet reproduce detection`: one row per backbone and seed, mean ± std over seeds, the residual backbone's
    relative gain with its spread, the paper's gain, and the stages' wall time."""
    rows = report["results"]
    columns = ["backbone", "seed", "classification_test_error", "box_AP", "box_AP50", "box_AP75", "mask_AP",
               "mask_AP50", "iterations", "classification_seconds", "detection_seconds"]
    lines = table(rows, [c for c in columns if any(c in r for r in rows)])
    summary = [r for r in report.get("summary") or [] if r.get("seeds", 1) > 1]
    if summary:
        keys = [k for k in ("classification_test_error", "box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50")
                if any(f"{k}_mean" in r for r in summary)]
        lines += ["", "Mean ± std over seeds (sample std):", ""]
        lines += table([{"backbone": r["backbone"], "seeds": r["seeds"],
                         **{k: f"{number(k, r.get(f'{k}_mean'))} ± {number(k, r.get(f'{k}_std'))}" for k in keys}}
                        for r in summary])
    gains = {k: g for k, g in (report.get("gains") or {}).items() if isinstance(g, dict) and "mean" in g}
    if gains:
        lines += ["", "Relative gain of the residual backbone (mean ± std of the per-seed gains):", ""]
        for key, g in gains.items():
            n = len(g.get("per_seed") or [])
            spread = (f" ± {100 * g['std']:.0f}% over {n} seeds, residual better in {g.get('residual_better')}/{n}: "
                      f"{'larger than' if g.get('beyond_spread') else 'within'} the seed-to-seed spread") if n > 1 else ""
            lines.append(f"- {key}: {100 * g['mean']:+.0f}%{spread}")
    elif report.get("relative_gain"):
        lines += ["", "Relative gain of the residual backbone: " +
                  ", ".join(f"{k} {100 * v:+.0f}%" for k, v in report["relative_gain"].items()
                            if isinstance(v, (int, float)))]
    paper = report.get("paper_relative_gain") or {}
    if paper:
        lines += ["", "The paper's (VGG-16 -> ResNet-101, Faster R-CNN on COCO, Table 8): " +
                  ", ".join(f"{k} {100 * v:+.0f}%" for k, v in paper.items() if isinstance(v, (int, float)))]
    seconds = [r.get(k) for r in rows for k in ("classification_seconds", "detection_seconds")]
    if any(isinstance(t, (int, float)) for t in seconds):
        lines += ["", f"Wall time: {sum(t for t in seconds if isinstance(t, (int, float))) / 3600:.1f} h over "
                      f"{len(rows)} backbone runs (classification pretraining and detection, where recorded)."]
    return lines


def generic_table(record: Any) -> list[str]:
    """The main table of an unknown record: `runs`/`rows`/`results` (a list or a dict of dicts), else its first
    list of dicts, else its scalar fields; then its other parts that are dicts of numbers, as one more table."""
    if isinstance(record, list):
        return table([r for r in record if isinstance(r, dict)]) if any(isinstance(r, dict) for r in record) \
            else ["(a list of " + str(len(record)) + " values)"]
    if not isinstance(record, dict):
        return [f"value: {number('value', record)}"]
    for key in ("runs", "rows", "results", *record):
        value = record.get(key)
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            return table(short_columns(value)) + parts_table(record, key)
        if isinstance(value, dict) and value and all(isinstance(r, dict) for r in value.values()):
            return table([{"name": k, **v} for k, v in value.items()]) + parts_table(record, key)
    scalars = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
    return table([{"field": k, "value": number(k, v)} for k, v in scalars.items()], ["field", "value"]) + \
        parts_table(record, None)


def short_columns(rows: list[dict]) -> list[dict]:
    """Rows without their long text fields (a command's captured output), which do not fit a table cell."""
    long = {k for row in rows for k, v in row.items() if isinstance(v, str) and ("\n" in v or len(v) > 3 * MAX_CELL)}
    return [{k: v for k, v in row.items() if k not in long} for row in rows]


def parts_table(record: dict, used: str | None) -> list[str]:
    """The record's parts that are dicts of scalars (e.g. `ours` and `torchvision`), as rows of one table."""
    skip = {used, "provenance", "machine", "versions", "environment"}
    rows = [{"part": k, **v} for k, v in record.items() if k not in skip and isinstance(v, dict) and v
            and all(not isinstance(x, (dict, list)) for x in v.values())]
    return ["", *table(rows)] if rows else []


# ----------------------------------------------------------------------------- benchmarks/results/*.json


def writer(path: Path, root: Path) -> str:
    """The benchmark script that names this JSON file (or its stem before a `-` suffix, written with --out)."""
    scripts = sorted((root / "benchmarks").glob("*.py"))
    for name in (path.name, path.stem.split("-")[0] + ".json"):
        for script in scripts:
            if name in script.read_text():
                suffix = "" if name == path.name else f" --out {rel(path, root)}"
                return f"python {rel(script, root)}{suffix}"
    return ""


def minutes(seconds: Any) -> str:
    return f"{seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else "not reached"


def time_to_accuracy_table(record: dict) -> list[str]:
    """bench_time_to_accuracy.py: one row per `resnet train` process, the minutes to each target."""
    targets = [str(t) for t in record.get("targets", [])]
    head = ["command", "TTA", "epochs run", "raw step, img/s"] + [f"first >= {100 * float(t):.0f}%" for t in targets]
    lines = ["| " + " | ".join(head + ["best test accuracy (at)"]) + " |", "|" + "---|" * (len(head) + 1)]
    for run in record.get("runs", []):
        command = " ".join(["resnet train --model", str(run.get("model")), "--data fashion-mnist --recipe",
                            str(run.get("recipe")), *map(str, run.get("options", []))])
        reached = [minutes((run.get("seconds_to") or {}).get(t)) for t in targets]
        raw = run.get("raw_step_images_per_sec")
        best = f"{100 * run['best_test_accuracy']:.2f}% ({minutes(run.get('best_at_seconds'))})" \
            if isinstance(run.get("best_test_accuracy"), (int, float)) else NOT_RECORDED
        cells = [f"`{command}`", str(run.get("tta", NOT_RECORDED)), number("epochs", run.get("epochs_run")),
                 f"{raw:,.0f}" if isinstance(raw, (int, float)) else NOT_RECORDED, *reached, best]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def benchmark_budget(record: Any) -> str:
    found = first_of([record], BUDGET_KEYS)
    if isinstance(record, dict) and isinstance(record.get("runs"), list):
        caps = sorted({r.get("cap_minutes") for r in record["runs"] if isinstance(r, dict) and r.get("cap_minutes")})
        found += [f"time cap {', '.join(f'{c:g}' for c in caps)} min per run"] if caps else []
    return ", ".join(found) if found else NOT_RECORDED


def benchmark_section(path: Path, root: Path) -> list[str]:
    record = load(path)
    is_tta = isinstance(record, dict) and isinstance(record.get("runs"), list) and "targets" in record
    command = (record.get("command") if isinstance(record, dict) else None) or writer(path, root)
    out = [f"### {path.stem}", ""]
    out += provenance(code(command), benchmark_budget(record), described([record], MACHINE_KEYS),
                      described([record], DATE_KEYS), described([record], VERSION_KEYS),
                      f"[{rel(path, root)}]({link(path, root)})")
    if isinstance(record, dict) and record.get("baseline"):
        out += [f"Baseline: {number('baseline', record['baseline'])}.", ""]
    if is_tta:
        out += ["Each command lists the options it was given; the recipe's own defaults are those of the day it ran",
                "(the record does not hold them: the `fast` recipe's crop padding went from 4 to 2 to 1, see",
                "[the notes](notes/2026-12-time-to-accuracy.md)).", ""]
    return out + (time_to_accuracy_table(record) if is_tta else generic_table(record)) + [""]


# ----------------------------------------------------------------------------- the page


def rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def link(path: Path, root: Path) -> str:
    """A link from docs/results.md to the file."""
    return os.path.relpath(path, root / PAGE.parent).replace(os.sep, "/")


def render(root: Path = ROOT) -> str:
    """The whole page, from the files under `root`."""
    reports = sorted(root.glob("results/*/report.json"))
    benchmarks = sorted(root.glob("benchmarks/results/*.json"))
    lines = ["# Results", "",
             f"Generated by `{COMMAND}` from `results/*/report.json` (with `suite.json` and the runs' `config.json`)",
             "and `benchmarks/results/*.json`; do not edit by hand: change or add a record, run the command and commit",
             "both. Each section gives the command that produced the numbers, its budget, the machine, the date and",
             f"the versions as the record holds them; a field the record lacks reads \"{NOT_RECORDED}\". Errors and",
             "accuracies are in %, COCO APs x100, times in seconds unless a column says otherwise. What the numbers",
             "mean is discussed in [reproducing](reproducing.md), [detection](detection.md) and",
             "[training](training.md); superseded runs and options tried are in the [notes](notes/). When a record",
             "holds no date, `git log --format=%as -- FILE` says when it was committed.", "",
             "## Reproductions (`results/`)", ""]
    for path in reports:
        lines += report_section(path, root)
    lines += ["## Benchmarks (`benchmarks/results/`)", ""]
    for path in benchmarks:
        lines += benchmark_section(path, root)
    return "\n".join(lines).rstrip("\n") + "\n"


def write(path: Path, text: str) -> None:
    """Atomically: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this script's)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page differs from what it would be")
    args = parser.parse_args(argv)
    text, page = render(args.root), args.root / PAGE
    if args.check:
        if not page.is_file() or page.read_text() != text:
            print(f"{page}: out of date; run `{COMMAND}` and commit it", file=sys.stderr)
            return 1
        return 0
    write(page, text)
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
