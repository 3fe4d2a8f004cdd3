"""`resnet demo` (the degradation suite): results.json with every net, the Fig. 6 figure, the verdict line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import resnet.reproduce.experiments as experiments
import resnet.reproduce.suite as suite
from resnet.cli import main
from resnet.reproduce import verdict


def rows(plain: list[tuple[float, float]], residual: list[tuple[float, float]]) -> list[dict]:
    """Results for depths 20 and 56, one seed per (shallow, deep) pair of (train, test) errors, both kinds."""
    out = []
    for kind, pairs in (("plain", plain), ("resnet", residual)):
        for seed, (shallow, deep) in enumerate(pairs):
            out += [{"net": f"{kind}{d}", "kind": kind, "depth": d, "seed": seed, "train_error": e[0],
                     "test_error": e[1]} for d, e in ((20, shallow), (56, deep))]
    return out


def test_verdict_says_as_in_the_paper_when_both_halves_hold_in_every_seed():
    plain = [((0.10, 0.11), (0.25, 0.24)), ((0.12, 0.12), (0.30, 0.29))]
    residual = [((0.12, 0.115), (0.119, 0.110)), ((0.125, 0.12), (0.12, 0.113))]
    line = verdict(rows(plain, residual))
    gap = np.mean([d[0] - s[0] for s, d in plain]) * 100  # +16.50 points
    assert f"plain-56 vs plain-20: training error {gap:+.2f}" in line
    gap = np.mean([d[1] - s[1] for s, d in residual]) * 100
    assert f"test error {gap:+.2f} points (mean of 2 seeds; deeper lower in 2/2 on training, 2/2 on test)" in line
    assert line.endswith("as in the paper") and "not as" not in line


def test_verdict_names_the_half_that_fails():
    plain = [((0.10, 0.11), (0.25, 0.24))] * 3
    residual = [((0.12, 0.11), (0.11, 0.10)), ((0.12, 0.11), (0.13, 0.10)), ((0.12, 0.11), (0.11, 0.10))]
    line = verdict(rows(plain, residual))
    assert "deeper lower in 2/3 on training, 3/3 on test" in line
    assert line.endswith("not as in the paper: the deeper residual net did not do better")
    line = verdict(rows([((0.20, 0.2), (0.19, 0.2))], [((0.12, 0.11), (0.11, 0.10))]))
    assert line.endswith("not as in the paper: the deeper plain net did not train worse")


def test_demo_writes_results_and_figure(tiny_fashion, tmp_path, monkeypatch, capsys):
    """The demo at a tiny budget (4 iterations, narrow nets of 20 and 32 layers), two runs at a time."""
    tiny = experiments.Degradation(depths=(20, 32), iters=4, eval_every=2, base_width=2, eval_subset=32)
    monkeypatch.setattr(experiments, "DEGRADATION", tiny)
    monkeypatch.setattr(suite, "PROGRESS_SECONDS", 0.05)  # progress lines while the workers train
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data-dir", str(tiny_fashion), "--jobs", "2", "--no-progress"]) == 0
    written = json.loads((out / "results.json").read_text())
    assert written["config"]["iters"] == 4  # the budget it ran with
    results = written["results"]
    assert [(r["net"], r["kind"], r["depth"]) for r in results] == [
        ("plain20", "plain", 20), ("resnet20", "resnet", 20), ("plain32", "plain", 32), ("resnet32", "resnet", 32)]
    for r in results:
        metrics = [json.loads(line) for line in (out / f"{r['net']}-s0" / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [2, 4]
        assert r["test_error"] == metrics[-1]["test_top1_error"] and 0 <= r["train_error"] <= 1
        assert metrics[-1]["test_images"] == 128  # the last evaluation reads every test image
    assert "budget 1.0 of the demo's 4 iterations" in (out / "report.md").read_text()
    for run in json.loads((out / "report.json").read_text())["degradation"]["runs"]:  # no val split: no selection
        assert run["best_val_test_error"] == run["test_error"]  # (picking the best test error would leak)
    assert (out / "figure6.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert verdict(results) in printed and "plain-32 vs plain-20" in printed
    progress = [line for line in printed.splitlines() if line.startswith("  ")]
    where = r"\w+-s0 (starting|step [24]/4(, eta 0:00:00)?( \(test err [\d.]+% at step [24]\))?)"
    assert progress and all(re.fullmatch(rf"  {where}(, .*)?", line) for line in progress)
    assert any("waiting" in line for line in progress)  # four runs, two at a time


@pytest.mark.parametrize("budget", [1.0, 0.5])
def test_demo_budget_scales_iterations_and_evaluations(budget):
    recipe = experiments.recipe_for("degradation", budget, "cpu")
    d = experiments.DEGRADATION
    assert recipe.iters == round(d.iters * budget) and recipe.eval_every == round(d.eval_every * budget)
    assert (recipe.batch_size, recipe.lr, recipe.lr_drops, recipe.weight_decay, recipe.momentum) == \
           (d.batch_size, d.lr, (0.5, 0.75), 1e-4, 0.9)  # the paper's recipe shape
