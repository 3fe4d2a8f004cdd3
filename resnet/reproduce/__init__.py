"""The paper's experiments from one call: `reproduce("table6", data="cifar10", budget=1)`.

Each run is an ordinary run directory under `out`; calling again skips finished runs and resumes
stopped ones. After every finished run the report (report.md/json, figure6.png) is rewritten.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from resnet.atomic import atomic_write_text
from resnet.evaluate.analysis import analyze_responses, plot_responses
from resnet.models import get_spec
from resnet.reproduce import experiments
from resnet.reproduce.experiments import EXPERIMENTS, PAPER_TABLE6, plan, recipe_for
from resnet.reproduce.report import aggregate, format_table, plot_figure6, write_report
from resnet.reproduce.runs import finished
from resnet.reproduce.suite import check_suite, run_all

DATA = ("cifar10", "fashion-mnist")


def default_jobs(device: str) -> int:
    """1 on the CPU (one run already uses every core); 4 on a GPU, where one CIFAR run at batch 128 leaves
    most of a large GPU idle (a guess until measured on one: see README)."""
    import torch

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return 4 if cuda else 1


def reproduce(experiment: str, data: str = "cifar10", *, depths: tuple[int, ...] | None = None,
              budget: float = 1.0, seeds: int = 1, jobs: int | None = None, out: str | Path | None = None,
              device: str = "auto", data_dir: str | None = None, download: bool = False,
              progress: bool | None = None, warmup: str | None = None, command: str = "") -> dict:
    """Train what is missing of `experiment`, then write and return its report entry."""
    if data not in DATA:
        raise ValueError(f"invalid --data {data!r}; the CIFAR experiments run on: {', '.join(DATA)}")
    specs = plan(experiment, tuple(depths) if depths else None, seeds)
    for spec in specs:  # an unknown depth is refused before suite.json or any run folder is written
        get_spec(spec.model)
    recipe = recipe_for(experiment, budget, device, warmup)
    out = Path(out or f"runs/{experiment}-{data}")
    jobs = default_jobs(device) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"invalid --jobs {jobs}; must be at least 1")
    check_suite(out, data, budget, recipe)
    print(f"{experiment} on {data}: {len(specs)} runs of {recipe.iters} iterations (budget {budget}) -> {out}")
    curves = "table6" if experiment == "fig7" else experiment  # fig7 reuses (or trains) table6's nets
    title = f"{curves} on {data} (budget {budget})"

    def on_result(_: dict) -> None:  # a partial suite already has its report
        done = _collect(out, specs)
        write_report(out, experiment, data, budget, done, command)
        plot_figure6(out, done, out / "figure6.png", title)

    results = run_all(specs, recipe, out, data, data_dir=data_dir, download=download, jobs=jobs,
                      progress=progress, on_result=on_result)
    report = write_report(out, experiment, data, budget, results, command)
    plot_figure6(out, results, out / "figure6.png", title)
    if experiment == "fig7":
        _fig7(out, results, data, data_dir, download)
    if experiment == "degradation":
        _degradation_summary(out, results)
    print("\n" + format_table(aggregate(results, data), data))
    print(f"\nreport: {out / 'report.md'}; figure: {out / 'figure6.png'}")
    return report[experiment]


def _collect(out: Path, specs) -> list[dict]:
    return [r for r in (finished(out / s.name) for s in specs) if r is not None]


def _fig7(out: Path, results: list[dict], data: str, data_dir: str | None, download: bool) -> None:
    """Layer responses (Fig. 7) of the trained nets, seed 0 of each: out/fig7.png and out/fig7/responses.json."""
    chosen = [out / r["name"] for r in results if r["seed"] == 0]
    result = analyze_responses(chosen, data, data_dir=data_dir, out=out / "fig7", download=download, progress=None)
    plot_responses(result["networks"], out / "fig7.png")


def _degradation_summary(out: Path, results: list[dict]) -> None:
    """The demo's results.json (net, kind, depth, train_error, test_error as fractions) and its verdict line."""
    rows = [{"net": r["model"], "kind": r["kind"], "depth": r["depth"], "seed": r["seed"],
             "train_error": r["train_error"], "test_error": r["test_error"]} for r in results]
    summary = {"config": experiments.DEGRADATION.__dict__, "results": rows}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    print("\n" + verdict(rows))


def verdict(rows: list[dict]) -> str:
    """One line: how training and test error change from the shallowest to the deepest net of each kind
    (mean over seeds, and in how many seeds the deeper net is lower), and whether that is the paper's result:
    deeper plain nets train worse (Fig. 1), deeper residual nets do better on both (Fig. 6, Table 6)."""
    shallow, deep = min(r["depth"] for r in rows), max(r["depth"] for r in rows)
    by = {(r["kind"], r["depth"], r.get("seed", 0)): r for r in rows}
    parts, as_paper = [], []
    for kind in ("plain", "resnet"):
        seeds = sorted(seed for k, d, seed in by if k == kind and d == deep and (kind, shallow, seed) in by)
        if shallow == deep or not seeds:
            continue
        gaps = {m: [by[kind, deep, s][m] - by[kind, shallow, s][m] for s in seeds]
                for m in ("train_error", "test_error")}
        mean = {m: 100 * statistics.fmean(g) for m, g in gaps.items()}
        text = (f"{kind}-{deep} vs {kind}-{shallow}: training error {mean['train_error']:+.2f}, "
                f"test error {mean['test_error']:+.2f} points")
        lower = {m: sum(g < 0 for g in gaps[m]) for m in gaps}
        if len(seeds) > 1:
            text += (f" (mean of {len(seeds)} seeds; deeper lower in {lower['train_error']}/{len(seeds)} on training, "
                     f"{lower['test_error']}/{len(seeds)} on test)")
        parts.append(text)
        if kind == "plain":
            as_paper.append(lower["train_error"] == 0)
        else:
            as_paper.append(lower["train_error"] == lower["test_error"] == len(seeds))
    if len(as_paper) == 2:
        parts.append("as in the paper" if all(as_paper) else
                     "not as in the paper: " + " and ".join(
                         what for what, ok in zip(("the deeper plain net did not train worse",
                                                   "the deeper residual net did not do better"), as_paper) if not ok))
    return "; ".join(parts)


__all__ = ["DATA", "EXPERIMENTS", "PAPER_TABLE6", "reproduce", "verdict"]
