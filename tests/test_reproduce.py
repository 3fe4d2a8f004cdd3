"""`resnet reproduce`: suites of runs on tiny data, skipping, resuming, seeds, jobs, and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from resnet.cli import main
from resnet.reproduce import reproduce
from resnet.reproduce.experiments import plan, recipe_for
from resnet.reproduce.report import aggregate, claims, depth_trend, format_claims, format_table
from resnet.reproduce.runs import last_epoch_train_error

BUDGET = 6 / 64_000  # 6 iterations of batch 128 (the lr drops scale with it)


def suite(out, data_dir, **options):
    return reproduce("table6", "fashion-mnist", depths=(20,), budget=BUDGET, out=out, device="cpu",
                     data_dir=str(data_dir), progress=False, **options)


def weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "last.safetensors"))


def test_plans_follow_the_paper():
    names = [s.model for s in plan("table6")]
    assert names == ["plain20", "resnet20", "plain32", "resnet32", "plain44", "resnet44", "plain56", "resnet56",
                     "plain110", "resnet110"]
    assert [s.model for s in plan("table6", (1202,))] == ["resnet1202"]  # the paper has no plain-1202
    shortcuts = plan("shortcuts", seeds=2)
    assert [(s.label, s.seed) for s in shortcuts] == [(f"resnet32 ({o})", k) for o in "ABC" for k in (0, 1)]
    assert shortcuts[0].name == "resnet32-s0"  # option A is the table6 run, shared in one --out
    assert [s.model for s in plan("fig7")] == ["plain20", "resnet20", "plain56", "resnet56", "resnet110"]
    full, tenth = recipe_for("table6", 1.0), recipe_for("table6", 0.1)
    assert (full.iters, full.lr_drops, full.batch_size, full.lr, full.weight_decay) == (64_000, (0.5, 0.75), 128, 0.1, 1e-4)
    assert tenth.iters == 6_400 and tenth.val_split  # 45k/5k-style held-out split for model selection
    assert full.warmup == "auto" and recipe_for("degradation", 1.0).warmup == "off"  # the paper's; the demo's
    assert recipe_for("degradation", 1.0, warmup="auto").warmup == "auto"
    assert recipe_for("table6", 1.0, warmup="off").warmup == "off"


def test_seeds_are_summarised_as_best_mean_std():
    runs = [{"label": "resnet20", "kind": "resnet", "depth": 20, "test_error": e, "best_val_test_error": e + 0.01,
             "train_error": 0.02, "iterations": 100, "train_seconds": 1.0} for e in (0.0875, 0.0910, 0.0851)]
    (row,) = aggregate(runs, "cifar10")
    errors = np.array([0.0875, 0.0910, 0.0851])
    assert row["seeds"] == 3
    assert row["test_error_mean"] == pytest.approx(errors.mean())
    assert row["test_error_std"] == pytest.approx(errors.std(ddof=1))
    assert row["test_error_best"] == pytest.approx(errors.min())
    assert row["paper_test_error"] == pytest.approx(0.0875)  # Table 6
    assert row["difference"] == pytest.approx(errors.mean() - 0.0875)
    other = aggregate(runs, "fashion-mnist")[0]
    assert other["paper_test_error"] is None and other["difference"] is None  # no invented paper number
    assert other["paper_cifar10_test_error"] == pytest.approx(0.0875)  # Table 6 beside it, for shape only
    text = format_table([other], "fashion-mnist")
    assert "| paper CIFAR-10 % | ours - paper |" in text and text.splitlines()[-1].endswith("| 8.75 |  |")
    plain = aggregate([dict(r, label="plain20", kind="plain") for r in runs], "fashion-mnist")[0]
    assert plain["paper_cifar10_test_error"] is None  # the paper has no table for plain nets


def _runs(kind: str, errors: dict[int, list[float]]) -> list[dict]:
    """Results of `kind` nets: {depth: [test error of seed 0, seed 1, ...]}, training error 1 point lower."""
    return [{"label": f"{kind}{d}", "model": f"{kind}{d}", "kind": kind, "depth": d, "seed": s, "test_error": e,
             "train_error": e - 0.01} for d, per_seed in errors.items() for s, e in enumerate(per_seed)]


def test_depth_trend_holds_on_every_seed_on_the_mean_or_not():
    rising = _runs("plain", {20: [0.10, 0.11], 32: [0.12, 0.13], 56: [0.15, 0.14]})
    assert depth_trend(rising, "plain", "rises", "test_error")["holds"] == "every seed"
    assert depth_trend(rising, "plain", "falls", "test_error")["holds"] == "no"
    # seed 1 rises from 32 to 56 (0.10 -> 0.105) but the mean still falls (0.095 -> 0.0925)
    mixed = _runs("resnet", {20: [0.10, 0.11], 32: [0.09, 0.10], 56: [0.08, 0.105]})
    trend = depth_trend(mixed, "resnet", "falls", "test_error")
    assert trend["holds"] == "mean" and trend["exceptions"] == ["seed 1 resnet32 -> resnet56"]
    assert trend["depths"] == [20, 32, 56] and trend["seeds"] == 2
    broken = _runs("resnet", {20: [0.10, 0.10], 56: [0.09, 0.09], 110: [0.095, 0.092]})
    trend = depth_trend(broken, "resnet", "falls", "test_error")
    assert trend["holds"] == "no"
    assert trend["exceptions"][0] == "mean resnet56 -> resnet110: 9.00 -> 9.35"
    assert depth_trend(_runs("plain", {20: [0.1]}), "plain", "rises", "test_error")["holds"] == "n/a"


def test_claims_cover_both_statements_on_training_and_test_error():
    found = claims(_runs("plain", {20: [0.10], 56: [0.20]}) + _runs("resnet", {20: [0.10], 56: [0.12]}))
    assert [(c["kind"], c["metric"], c["holds"]) for c in found] == [
        ("plain", "train_error", "every seed"), ("plain", "test_error", "every seed"),
        ("resnet", "train_error", "no"), ("resnet", "test_error", "no")]
    text = format_claims(found)
    assert "plain nets: error rises with depth (the degradation problem), test error: **holds on every seed**" in text
    assert "not at: mean resnet20 -> resnet56: 10.00 -> 12.00" in text


def test_training_error_is_over_the_last_epoch():
    """Windows of 5, 5, 5 and 1 steps ending at epochs 0.625 .. 2.0: the last epoch holds the final three."""
    rows = [{"step": 5, "epoch": 0.625, "train_error": 0.5}, {"step": 10, "epoch": 1.25, "train_error": 0.4},
            {"step": 15, "epoch": 1.875, "train_error": 0.2}, {"step": 16, "epoch": 2.0, "train_error": 0.1}]
    assert last_epoch_train_error(rows) == pytest.approx((5 * 0.4 + 5 * 0.2 + 1 * 0.1) / 11)
    assert last_epoch_train_error(rows[:1]) == 0.5


def test_suite_reports_then_skips_finished_runs(tiny_fashion, tmp_path, monkeypatch):
    out = tmp_path / "suite"
    entry = suite(out, tiny_fashion)
    assert [r["net"] for r in entry["rows"]] == ["plain20", "resnet20"]
    for r in entry["runs"]:
        metrics = [json.loads(line) for line in (out / r["name"] / "metrics.jsonl").read_text().splitlines()]
        assert r["iterations"] == 6 == metrics[-1]["step"]
        assert r["test_error"] == metrics[-1]["test_top1_error"]
        best = min(metrics, key=lambda m: m["val_top1_error"])
        assert r["best_val_test_error"] == best["test_top1_error"]
    report = (out / "report.md").read_text()
    assert "| plain20 |" in report and "| resnet20 |" in report
    assert (out / "figure6.png").stat().st_size > 0

    import resnet.train.loop

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(resnet.train.loop, "train", no_training)
    again = suite(out, tiny_fashion)
    assert again["rows"] == entry["rows"]

    import resnet.reproduce

    titles = []
    monkeypatch.setattr(resnet.reproduce, "plot_figure6", lambda out, results, path, title: titles.append(title))
    fig7 = reproduce("fig7", "fashion-mnist", depths=(20,), budget=BUDGET, out=out, device="cpu",
                     data_dir=str(tiny_fashion), progress=False)  # reuses table6's trained nets
    assert fig7["rows"] == entry["rows"] and (out / "fig7.png").stat().st_size > 0
    assert titles and all(t.startswith("table6 on fashion-mnist") for t in titles)  # figure6.png stays table6's


def test_other_budget_on_the_same_out_is_refused(tiny_fashion, tmp_path, capsys):
    out = tmp_path / "suite"
    suite(out, tiny_fashion)
    code = main(["reproduce", "table6", "--data", "fashion-mnist", "--depths", "20", "--budget", "0.5",
                 "--out", str(out), "--data-dir", str(tiny_fashion), "--device", "cpu"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "budget" in error and str(out) in error
    code = main(["reproduce", "table6", "--data", "fashion-mnist", "--depths", "20", "--budget", str(BUDGET),
                 "--warmup", "off", "--out", str(out), "--data-dir", str(tiny_fashion), "--device", "cpu"])
    assert code == 2 and "another recipe" in capsys.readouterr().err  # the suite began with the paper's warm-up
    assert main(["reproduce", "detection", "--warmup", "on"]) == 2
    assert "--warmup applies to the CIFAR experiments" in capsys.readouterr().err


def test_interrupted_run_resumes_exactly(tiny_fashion, tmp_path):
    from resnet.train.loop import Interrupted, train

    (plain, resnet) = plan("table6", (20,))
    recipe = recipe_for("table6", BUDGET, "cpu")
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    with pytest.raises(Interrupted):  # as if Ctrl-C after 4 of 6 steps
        train(resnet.model, "fashion-mnist", recipe=recipe, out=stopped / resnet.name, data_dir=str(tiny_fashion),
              progress=False, stop_after=4)
    suite(stopped, tiny_fashion)
    suite(whole, tiny_fashion)
    a, b = weights(stopped / resnet.name), weights(whole / resnet.name)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.mark.slow
def test_two_jobs_give_the_same_runs_as_one(tiny_fashion, tmp_path):
    one = suite(tmp_path / "one", tiny_fashion, jobs=1)
    two = suite(tmp_path / "two", tiny_fashion, jobs=2)
    for a, b in zip(one["runs"], two["runs"]):
        assert (a["name"], a["iterations"], a["test_error"], a["train_error"]) == \
               (b["name"], b["iterations"], b["test_error"], b["train_error"])
        wa, wb = weights(tmp_path / "one" / a["name"]), weights(tmp_path / "two" / b["name"])
        assert all(np.allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-5) for k in wa)
