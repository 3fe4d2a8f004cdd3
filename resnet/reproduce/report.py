"""The suite's report beside the paper's numbers: report.json, report.md, figure6.png (and fig7.png).

Several seeds of one net are summarised the way the paper reports ResNet-110: "best (mean±std)",
the std being the sample standard deviation over seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from resnet.atomic import atomic_write_text
from resnet.reproduce import experiments
from resnet.reproduce.experiments import PAPER_ITERS, PAPER_PLAIN, PAPER_TABLE6
from resnet.train.curves import plot_panels, read_metrics


def aggregate(results: list[dict], data: str) -> list[dict]:
    """One row per net (its seeds together), in the order the nets first appear."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["label"], []).append(r)
    rows = []
    for label, runs in groups.items():
        test = [r["test_error"] for r in runs]
        table6 = PAPER_TABLE6.get(label)  # CIFAR-10: a target on CIFAR-10, beside other data for shape only
        paper = table6 if data == "cifar10" else None
        mean = statistics.fmean(test)
        rows.append({
            "net": label, "kind": runs[0]["kind"], "depth": runs[0]["depth"], "seeds": len(runs),
            "test_error_mean": mean, "test_error_std": _std(test),
            "test_error_best": min(test),
            "best_val_test_error_mean": statistics.fmean(r["best_val_test_error"] for r in runs),
            "train_error_mean": statistics.fmean(r["train_error"] for r in runs),
            "train_error_std": _std([r["train_error"] for r in runs]),
            "iterations": runs[0]["iterations"], "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs),
            "paper_test_error": None if paper is None else paper / 100,
            "paper_cifar10_test_error": None if table6 is None else table6 / 100,
            "difference": None if paper is None else mean - paper / 100,
        })
    return rows


def _std(values: list[float]) -> float:
    """The sample standard deviation over seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


# The paper's two statements about depth (Fig. 6, Table 6), as (kind, direction of error with depth).
CLAIMS = (("plain", "rises", "plain nets: error rises with depth (the degradation problem)"),
          ("resnet", "falls", "residual nets: error falls with depth"))


def depth_trend(results: list[dict], kind: str, direction: str, metric: str) -> dict:
    """Whether `metric` rises (or falls) at every step from one depth to the next of `kind`'s nets.

    `holds` is "every seed" when it does in each seed (seeds trained at every depth), "mean" when only the means
    over seeds do, "no" otherwise (or "n/a" with fewer than two depths); `exceptions` names each step where the
    mean goes the other way and, for seeds, the steps and seeds that do.
    """
    runs = [r for r in results if r["kind"] == kind and r["label"] == r["model"]]
    depths = sorted({r["depth"] for r in runs})
    values = {(r["depth"], r["seed"]): r[metric] for r in runs}
    seeds = sorted({s for _, s in values if all((d, s) in values for d in depths)})
    steps = list(zip(depths, depths[1:]))
    if not steps or not seeds:
        return {"kind": kind, "metric": metric, "direction": direction, "holds": "n/a", "exceptions": []}

    def right_way(a: float, b: float) -> bool:
        return b > a if direction == "rises" else b < a

    mean = {d: statistics.fmean(values[d, s] for s in seeds) for d in depths}
    exceptions = [f"mean {kind}{a} -> {kind}{b}: {100 * mean[a]:.2f} -> {100 * mean[b]:.2f}"
                  for a, b in steps if not right_way(mean[a], mean[b])]
    by_seed = [f"seed {s} {kind}{a} -> {kind}{b}" for s in seeds for a, b in steps
               if not right_way(values[a, s], values[b, s])]
    holds = "every seed" if not by_seed else "mean" if not exceptions else "no"
    return {"kind": kind, "metric": metric, "direction": direction, "depths": depths, "seeds": len(seeds),
            "holds": holds, "exceptions": exceptions + by_seed}


def claims(results: list[dict]) -> list[dict]:
    """Each of the paper's statements about depth, on training and on test error (`depth_trend`)."""
    return [{**depth_trend(results, kind, direction, metric), "statement": statement}
            for kind, direction, statement in CLAIMS for metric in ("train_error", "test_error")]


def format_claims(found: list[dict]) -> str:
    """One line per statement and error: holds on every seed / on the mean only / does not hold, and where not."""
    words = {"every seed": "holds on every seed", "mean": "holds on the mean only", "no": "does not hold",
             "n/a": "not measured (fewer than two depths)"}
    lines = []
    for c in found:
        line = f"- {c['statement']}, {c['metric'].replace('_', ' ')}: **{words[c['holds']]}**"
        if c["holds"] != "n/a":
            line += f" ({', '.join(map(str, c['depths']))} layers, {c['seeds']} seed{'s' * (c['seeds'] > 1)})"
        if c["exceptions"]:
            line += "; not at: " + "; ".join(c["exceptions"])
        lines.append(line)
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def format_table(rows: list[dict], data: str = "cifar10") -> str:
    """A markdown table: errors in %, "best (mean±std)" where a net has several seeds; on other data than
    CIFAR-10 the paper's CIFAR-10 numbers stand beside ours for shape, with no difference taken."""
    paper_key = "paper_test_error" if data == "cifar10" else "paper_cifar10_test_error"
    head = ("net", "seeds", "test err %", "best-on-val test err %", "train err %", "iterations", "train time",
            "paper %" if data == "cifar10" else "paper CIFAR-10 %", "ours - paper")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        test = _pct(r["test_error_mean"])
        if r["seeds"] > 1:
            test = f"{_pct(r['test_error_best'])} ({test}±{_pct(r['test_error_std'])})"
        train = _pct(r["train_error_mean"])
        if r["seeds"] > 1:
            train = f"{train}±{_pct(r.get('train_error_std'))}"
        diff = "" if r["difference"] is None else f"{100 * r['difference']:+.2f}"
        minutes = r["train_seconds_mean"] / 60
        cells = (r["net"], str(r["seeds"]), test, _pct(r["best_val_test_error_mean"]), train,
                 str(r["iterations"]), f"{minutes:.1f} min", _pct(r.get(paper_key)), diff)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, experiment: str, data: str, budget: float, results: list[dict],
                 command: str = "") -> dict:
    """Update out/report.json with this experiment's rows and re-render out/report.md from it."""
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report[experiment] = {"data": data, "budget": budget, "command": command, "rows": aggregate(results, data),
                          "claims": claims(results) if experiment in ("table6", "degradation") else [],
                          "runs": results}
    atomic_write_text(path, json.dumps(report, indent=2))
    parts = [f"# Reproduction report ({out})", ""]
    for name, entry in report.items():
        base = (f"the demo's {experiments.DEGRADATION.iters:,}" if name == "degradation"
                else f"the paper's {PAPER_ITERS // 1000}k")
        parts += [f"## {name} on {entry['data']}, budget {entry['budget']} of {base} iterations", ""]
        if entry.get("command"):
            parts += [f"Command: `{entry['command']}`", ""]
        parts += [format_table(entry["rows"], entry["data"]), ""]
        if entry.get("claims"):
            parts += ["The paper's statements about depth (each step from one depth to the next):", "",
                      format_claims(entry["claims"]), ""]
        parts += ["Test error: the final model on the whole test set; train error: over the last epoch's training "
                  "batches (augmented, in training mode).", ""]
        if entry["data"] != "cifar10":
            parts += ["The paper reports CIFAR-10 only: its Table 6 errors stand beside these for shape, not as "
                      "targets (no difference is taken).", ""]
        if any(r["kind"] == "plain" for r in entry["rows"]):
            parts += [PAPER_PLAIN, ""]
    atomic_write_text(out / "report.md", "\n".join(parts))
    return report


def plot_figure6(out: Path, results: list[dict], path: Path, title: str) -> Path | None:
    """Fig. 6 layout: plain nets left, residual right, same y axis, one colour per depth (seed 0 curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in results if r["seed"] == min(x["seed"] for x in results if x["label"] == r["label"])]
    depths = sorted({r["depth"] for r in first})
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours, panels = {}, {"plain": {}, "residual": {}}
    for r in first:
        label = f"{r['kind']}-{r['depth']}" + (r["label"][len(r["model"]):] if r["label"] != r["model"] else "")
        colours[label] = cycle[depths.index(r["depth"]) % len(cycle)]
        panels["plain" if r["kind"] == "plain" else "residual"][label] = read_metrics(out / r["name"] / "metrics.jsonl")
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return None
    if len(colours) > len(depths) * len(panels):  # several nets of one depth in a panel (shortcuts A/B/C)
        colours = {label: cycle[i % len(cycle)] for i, label in enumerate(colours)}
    return plot_panels(panels, path, title=title, colours=colours)
