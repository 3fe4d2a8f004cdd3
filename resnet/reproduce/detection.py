"""The paper's detection comparison (Tables 7-8, Appendix A) in miniature, from one call.

The paper swaps VGG-16 for ResNet-101 in Faster R-CNN and COCO's mAP@[.5,.95] goes from 21.2 to 27.2 (+28%
relative). Here the same detector (the paper's C4 design) goes on a plain backbone and on its residual
counterpart of the same depth; each is pretrained by classification on Fashion-MNIST (the `fast` recipe), then
trained for detection on the Fashion-MNIST scenes with one recipe (`detection-cpu`: BN frozen, as the paper).
Every stage is an ordinary run directory under `out`: calling again skips finished stages and resumes stopped
ones; another budget is refused. The report puts box (and mask) AP of both beside the paper's numbers.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

from resnet import strictjson
from resnet.atomic import atomic_write, atomic_write_text
from resnet.detection.scenes import make_fashion_scenes
from resnet.detection.train import train_detector
from resnet.reproduce.suite import check_suite, recipe_fields
from resnet.train.curves import read_metrics
from resnet.train.loop import train
from resnet.train.recipes import Recipe, get_recipe

# Table 8 (COCO val, mAP@.5 / mAP@[.5,.95]) and Table 7 (PASCAL VOC 2007 test mAP), Faster R-CNN.
PAPER = {"VGG-16": {"coco_AP50": 41.5, "coco_AP": 21.2, "voc07_mAP": 73.2},
         "ResNet-101": {"coco_AP50": 48.4, "coco_AP": 27.2, "voc07_mAP": 76.4}}
DONE = "result.json"  # in a stage's run directory once it has finished
FIGURE = "detection.png"  # beside report.md: AP per backbone over seeds


@dataclass(frozen=True)
class DetectionBudget:
    """Budget 1: about 30 minutes on 2 CPU cores for both backbones (README, "Detection", says why these)."""

    depth: int = 20  # plain-20 / ResNet-20: the CIFAR family; its C4 head is conv4_x (the third stage) per RoI
    pretrain_epochs: float = 6  # `fast` recipe on Fashion-MNIST's 60k images
    detection_epochs: float = 2  # `detection-cpu` on the 2,000 training scenes
    eval_subset: int = 200  # validation scenes scored at each evaluation during training; the last scores all 500


def recipes(budget: float, device: str = "auto", b: DetectionBudget = DetectionBudget()) -> tuple[Recipe, Recipe]:
    """(classification pretraining recipe, detection recipe) at `budget` (iterations scale with it)."""
    if not budget > 0:
        raise ValueError(f"invalid --budget {budget}; must be positive")
    pretrain = get_recipe("fast", epochs=None, iters=max(1, round(b.pretrain_epochs * 60_000 // 256 * budget)),
                          device=device)
    detect = get_recipe("detection-cpu", epochs=None, iters=max(2, round(b.detection_epochs * 2_000 // 4 * budget)),
                        eval_subset=b.eval_subset, device=device)
    return pretrain, detect


def _stage(run_dir: Path, start, resume) -> dict:
    """A stage's final evaluation: recorded, or resumed (a finished run returns its last row), or trained now."""
    done = run_dir / DONE
    if done.exists():
        return strictjson.read_object(done, ("row",), fix=f"delete it (rm {done}) to finish that stage again")["row"]
    row = resume(run_dir) if (run_dir / "config.json").exists() else start(run_dir)
    atomic_write_text(done, strictjson.dumps({"row": row}, indent=2))
    return row


def reproduce_detection(data: str = "fashion-scenes", *, budget: float = 1.0, depth: int | None = None,
                        masks: bool = False, seeds: int = 1, out: str | Path | None = None, device: str = "auto",
                        data_dir: str | None = None, pretrained: str | Path | None = None,
                        progress: bool | None = None, command: str = "") -> dict:
    """Pretrain (or reuse) plain and residual backbones, train a C4 detector on each, and report both.

    Each seed pretrains its own pair of backbones and trains its own detectors (both stages seeded), so the
    spread over seeds is the whole pipeline's. `pretrained`: a folder whose runs are reused as the backbones,
    seed by seed: a table6 suite (`{plain,resnet}{depth}-s{seed}`) or another detection suite (its
    `-classify` runs, e.g. the box suite's for the `--masks` suite).
    """
    if seeds < 1:
        raise ValueError(f"invalid --seeds {seeds}; must be at least 1")
    if data == "fashion-scenes" and data_dir is None:  # generated offline once (kept when already there)
        make_fashion_scenes(progress=progress is not False)
    b = DetectionBudget(depth=depth or DetectionBudget.depth)
    pretrain, detect = recipes(budget, device, b)
    out = Path(out or f"runs/detection-{data}{'-masks' if masks else ''}")  # its report beside the box suite's
    check_suite(out, data, budget, detect)
    print(f"detection on {data}: plain{b.depth} and resnet{b.depth} backbones x {seeds} seed(s), {pretrain.iters} "
          f"classification and {detect.iters} detection iterations each (budget {budget}) -> {out}")
    results: list[dict] = []
    for seed in range(seeds):
        for kind in ("plain", "resnet"):
            stage = Stage(f"{kind}{b.depth}", seed, dataclasses.replace(pretrain, seed=seed),
                          dataclasses.replace(detect, seed=seed))
            results.append(_train_pair(stage, kind, out, data, masks, data_dir, pretrained, progress))
            write_report(out, data, budget, results, command)
    return write_report(out, data, budget, results, command)


@dataclass(frozen=True)
class Stage:
    """One backbone of one seed: its model name and the two recipes, seeded."""

    model: str
    seed: int
    pretrain: Recipe
    detect: Recipe

    @property
    def suffix(self) -> str:  # seed 0 keeps the names of suites from before --seeds, so they resume as they are
        return f"-s{self.seed}" if self.seed else ""


def backbone_run(pretrained: Path, model: str, seed: int) -> Path:
    """The run reused as `model`'s backbone for `seed`: a table6 run, else a detection suite's classify run."""
    candidates = [pretrained / f"{model}-s{seed}", pretrained / f"{model}-classify{f'-s{seed}' if seed else ''}"]
    for run in candidates:
        if (run / "metrics.jsonl").exists():
            return run
    raise FileNotFoundError(f"--pretrained {pretrained}: no finished backbone run for {model} seed {seed} "
                            f"(looked for {candidates[0].name} and {candidates[1].name})")


def check_backbone_recipe(run: Path, recipe: Recipe) -> None:
    """Refuse (one line) a suite's own pretraining run begun with another recipe than this code's: a suite resumed
    across a change of the `fast` recipe would otherwise average two pipelines over its seeds."""
    path = run / "config.json"
    if not path.exists():
        return
    have = recipe_fields(strictjson.read_object(path, ("recipe",), fix=f"move {run} away to train it again")["recipe"])
    want = recipe_fields(recipe)
    changed = [f"{k} {have[k]!r} -> {want[k]!r}" for k in want if have[k] != want[k]]
    if changed:
        raise ValueError(f"{run} was pretrained with another recipe than this suite's ({', '.join(changed)}); move it "
                         f"and its -detect run(s) away to train that seed again, or give another --out")


def _train_pair(stage: Stage, kind: str, out: Path, data: str, masks: bool, data_dir: str | None,
                pretrained: str | Path | None, progress: bool | None) -> dict:
    """Classification pretraining (or the reused backbone), then detection training: the report's row."""
    model = stage.model
    if pretrained:
        backbone = backbone_run(Path(pretrained), model, stage.seed)
        classify = read_metrics(backbone / "metrics.jsonl")[-1]
    else:
        backbone = out / f"{model}-classify{stage.suffix}"
        check_backbone_recipe(backbone, stage.pretrain)
        classify = _stage(backbone, lambda d: train(model, "fashion-mnist", recipe=stage.pretrain, out=d,
                                                    progress=progress),
                          lambda d: train(resume=d, progress=progress))
    detect_dir = out / f"{model}-detect{'-masks' if masks else ''}{stage.suffix}"
    row = _stage(detect_dir, lambda d: train_detector(model, data, head="c4", masks=masks, backbone_weights=backbone,
                                                      recipe=stage.detect, out=d, data_dir=data_dir,
                                                      progress=progress),
                 lambda d: train_detector(resume=d, progress=progress))
    return {"backbone": model, "kind": kind, "seed": stage.seed,
            "classification_test_error": classify["test_top1_error"],
            **{k[4:]: v for k, v in row.items() if k.startswith("val_") and k != "val_images"},
            "classification_seconds": None if pretrained else classify.get("wall_time"),  # reused: not this suite's
            "detection_seconds": row["wall_time"],
            "iterations": row["step"]}


def relative_gain(plain: float | None, residual: float | None) -> float | None:
    return None if not plain or residual is None else residual / plain - 1


def percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[dict]) -> tuple[list[dict], dict]:
    """(per backbone: mean and std over seeds of each AP and the classification error; per AP metric: the
    residual backbone's relative gain over the plain one of the same seed, its mean, std and sign count)."""
    metrics = [k for k in ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75")
               if any(r.get(k) is not None for r in results)]
    summary = []
    for kind in ("plain", "resnet"):
        runs = [r for r in results if r["kind"] == kind]
        if not runs:
            continue
        row = {"backbone": runs[0]["backbone"], "kind": kind, "seeds": len(runs)}
        for key in ("classification_test_error", *metrics):
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        summary.append(row)
    by = {(r["kind"], r.get("seed", 0)): r for r in results}
    paired = sorted(seed for kind, seed in by if kind == "plain" and ("resnet", seed) in by)
    gains = {}
    for key in metrics:
        per_seed = [relative_gain(by["plain", s].get(key), by["resnet", s].get(key)) for s in paired]
        per_seed = [g for g in per_seed if g is not None]
        if per_seed:
            mean, std = _mean_std(per_seed)
            gains[key] = {"mean": mean, "std": std, "per_seed": per_seed, "residual_better": sum(g > 0 for g in per_seed),
                          "beyond_spread": len(per_seed) > 1 and abs(mean) > std and len(set(g > 0 for g in per_seed)) == 1}
    return summary, gains


def _mean_gains(results: list[dict], gains: dict) -> dict:
    """The mean relative gain of each AP metric of the report (None where it is undefined: a plain AP of 0)."""
    if {r["kind"] for r in results} != {"plain", "resnet"}:
        return {}
    keys = {k for r in results for k in r if k.endswith(("AP", "AP50", "AP75"))}
    return {k: gains[k]["mean"] if k in gains else None for k in sorted(keys)}


def write_report(out: Path, data: str, budget: float, results: list[dict], command: str) -> dict:
    """report.json and report.md: box (and mask) AP of both backbones per seed, mean±std, the relative gain with
    its spread over seeds, and the paper's gain."""
    summary, gains = summarise(results)
    paper_gain = {"coco_AP": PAPER["ResNet-101"]["coco_AP"] / PAPER["VGG-16"]["coco_AP"] - 1,
                  "coco_AP50": PAPER["ResNet-101"]["coco_AP50"] / PAPER["VGG-16"]["coco_AP50"] - 1}
    report = {"experiment": "detection", "data": data, "budget": budget, "command": command, "results": results,
              "summary": summary, "gains": gains, "relative_gain": _mean_gains(results, gains),
              "paper": PAPER, "paper_relative_gain": paper_gain}
    atomic_write_text(out / "report.json", strictjson.dumps(report, indent=2))
    atomic_write_text(out / "report.md", format_report(report))
    if {r["kind"] for r in results} == {"plain", "resnet"}:
        plot_detection(report, out / FIGURE)
    return report


def plot_detection(report: dict, path: Path) -> Path:
    """One panel per AP metric: each backbone's mean ± std over seeds as a bar, each seed a dot, a seed's plain
    and residual dots joined (the gain is paired by seed), and the mean relative gain in the panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, gains = report["results"], report.get("gains", {})
    keys = [k for k in ("box_AP", "box_AP50", "box_AP75", "mask_AP") if any(r.get(k) is not None for r in results)]
    kinds = [k for k in ("plain", "resnet") if any(r["kind"] == k for r in results)]
    names = {k: next(r["backbone"] for r in results if r["kind"] == k) for k in kinds}
    seeds = sorted({r.get("seed", 0) for r in results})
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys) + 0.6, 3.6), dpi=120, squeeze=False)
    for ax, key in zip(axes[0], keys):
        per = {k: {r.get("seed", 0): 100 * r[key] for r in results if r["kind"] == k and r.get(key) is not None}
               for k in kinds}
        means = [statistics.fmean(per[k].values()) for k in kinds]
        stds = [statistics.stdev(per[k].values()) if len(per[k]) > 1 else 0.0 for k in kinds]
        ax.bar(range(len(kinds)), means, yerr=stds, capsize=4, color=["#b0b0b0", "#4c72b0"][:len(kinds)], alpha=0.8)
        for seed in seeds:
            xs = [i for i, k in enumerate(kinds) if seed in per[k]]
            ax.plot(xs, [per[kinds[i]][seed] for i in xs], "o-", color="black", ms=3, lw=0.6, alpha=0.7)
        ax.set_xticks(range(len(kinds)), [names[k] for k in kinds])
        gain = gains.get(key)
        spread = f" ± {100 * gain['std']:.0f}" if gain and len(gain["per_seed"]) > 1 else ""
        ax.set_title(key.replace("_", " ") + (f"\n{100 * gain['mean']:+.0f}{spread}% relative" if gain else ""),
                     fontsize=9)
    axes[0][0].set_ylabel("AP (x100)")
    fig.suptitle(f"Detection on {report['data']}, budget {report['budget']}: {len(seeds)} seed(s), "
                 "bars mean ± std", fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def _pm(mean: float | None, std: float | None, seeds: int, digits: int = 1) -> str:
    if mean is None:
        return "-"
    return percent(mean, digits) + (f"±{percent(std, digits)}" if seeds > 1 else "")


def format_report(report: dict) -> str:
    results, seeds = report["results"], max((r.get("seed", 0) for r in report["results"]), default=0) + 1
    keys = [k for k in ("box_AP", "box_AP50", "box_AP75", "mask_AP") if any(k in r for r in results)]
    head = "| backbone | seed | classification test err % | " + " | ".join(k.replace("_", " ") for k in keys) + " |"
    lines = [f"# Detection on {report['data']} (budget {report['budget']})", "", f"`{report['command']}`", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        cells = [r["backbone"], str(r.get("seed", 0)), percent(r["classification_test_error"], 2),
                 *(percent(r.get(k)) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    if seeds > 1:
        lines += ["", "Mean ± std over seeds (sample std):", "", head.replace(" seed |", " seeds |"),
                  "|" + "---|" * (head.count("|") - 1)]
        for row in report.get("summary", []):
            cells = [row["backbone"], str(row["seeds"]),
                     _pm(row.get("classification_test_error_mean"), row.get("classification_test_error_std"),
                         row["seeds"], 2),
                     *(_pm(row.get(f"{k}_mean"), row.get(f"{k}_std"), row["seeds"]) for k in keys)]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_gain_lines(report.get("gains", {}), keys), *_time_lines(results)]
    paper = report["paper"]
    lines += ["", "The paper (Faster R-CNN on COCO val, Table 8): VGG-16 "
              f"{paper['VGG-16']['coco_AP']} AP / {paper['VGG-16']['coco_AP50']} AP50, ResNet-101 "
              f"{paper['ResNet-101']['coco_AP']} / {paper['ResNet-101']['coco_AP50']}: "
              f"{100 * report['paper_relative_gain']['coco_AP']:+.0f}% / "
              f"{100 * report['paper_relative_gain']['coco_AP50']:+.0f}% relative. "
              "(There the backbones differ in depth too; here only the shortcuts differ.)", ""]
    return "\n".join(lines)


def _time_lines(results: list[dict]) -> list[str]:
    """The wall time of each stage per backbone, mean over seeds (runs recorded before it was kept are left out)."""
    lines = []
    for stage in ("classification", "detection"):
        times = [r[f"{stage}_seconds"] for r in results if r.get(f"{stage}_seconds") is not None]
        if times:
            lines.append(f"- Wall time of {stage} per backbone and seed: {statistics.fmean(times) / 60:.1f} min "
                         f"(mean of {len(times)}; {sum(times) / 60:.0f} min in all).")
    return ["", *lines] if lines else []


def _gain_lines(gains: dict, keys: list[str]) -> list[str]:
    """Residual over plain per AP metric: the relative gain (mean ± std of the per-seed gains) and whether it is
    larger than that spread (same sign in every seed and |mean| above one std)."""
    lines = []
    for key in (k for k in keys if k in gains):
        g, n = gains[key], len(gains[key]["per_seed"])
        text = f"- Residual over plain, {key.replace('_', ' ')}: {100 * g['mean']:+.0f}% relative"
        if n > 1:
            verdict = "larger than the seed-to-seed spread" if g["beyond_spread"] else "within the seed-to-seed spread"
            text += (f" (±{100 * g['std']:.0f}% over {n} seeds; residual better in {g['residual_better']}/{n}): "
                     f"{verdict}")
        lines.append(text + ".")
    return lines
