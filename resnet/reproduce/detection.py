"""The paper's detection comparison (Tables 7-8, Appendix A) in miniature, from one call.

The paper swaps VGG-16 for ResNet-101 in Faster R-CNN and COCO's mAP@[.5,.95] goes from 21.2 to 27.2 (+28%
relative). Here the same detector (the paper's C4 design) goes on a plain backbone and on its residual
counterpart of the same depth; each is pretrained by classification on Fashion-MNIST (the `fast` recipe), then
trained for detection on the Fashion-MNIST scenes with one recipe (`detection-cpu`: BN frozen, as the paper).
Every stage is an ordinary run directory under `out`: calling again skips finished stages and resumes stopped
ones; another budget is refused. The report puts box (and mask) AP of both beside the paper's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resnet import strictjson
from resnet.atomic import atomic_write_text
from resnet.detection.scenes import make_fashion_scenes
from resnet.detection.train import train_detector
from resnet.reproduce.suite import check_suite
from resnet.train.curves import read_metrics
from resnet.train.loop import train
from resnet.train.recipes import Recipe, get_recipe

# Table 8 (COCO val, mAP@.5 / mAP@[.5,.95]) and Table 7 (PASCAL VOC 2007 test mAP), Faster R-CNN.
PAPER = {"VGG-16": {"coco_AP50": 41.5, "coco_AP": 21.2, "voc07_mAP": 73.2},
         "ResNet-101": {"coco_AP50": 48.4, "coco_AP": 27.2, "voc07_mAP": 76.4}}
DONE = "result.json"  # in a stage's run directory once it has finished


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
                        masks: bool = False, out: str | Path | None = None, device: str = "auto",
                        data_dir: str | None = None, pretrained: str | Path | None = None,
                        progress: bool | None = None, command: str = "") -> dict:
    """Pretrain (or reuse) plain and residual backbones, train a C4 detector on each, and report both.

    `pretrained`: a table6 suite folder whose `{plain,resnet}{depth}-s0` runs are used as the backbones.
    """
    if data == "fashion-scenes" and data_dir is None:  # generated offline once (kept when already there)
        make_fashion_scenes(progress=progress is not False)
    b = DetectionBudget(depth=depth or DetectionBudget.depth)
    pretrain, detect = recipes(budget, device, b)
    out = Path(out or f"runs/detection-{data}")
    check_suite(out, data, budget, detect)
    print(f"detection on {data}: plain{b.depth} and resnet{b.depth} backbones, {pretrain.iters} classification and "
          f"{detect.iters} detection iterations each (budget {budget}) -> {out}")
    results = []
    for kind in ("plain", "resnet"):
        model = f"{kind}{b.depth}"
        backbone = Path(pretrained) / f"{model}-s0" if pretrained else out / f"{model}-classify"
        if not pretrained:
            classify = _stage(backbone, lambda d: train(model, "fashion-mnist", recipe=pretrain, out=d,
                                                        progress=progress),
                              lambda d: train(resume=d, progress=progress))
        else:
            classify = read_metrics(backbone / "metrics.jsonl")[-1]
        detect_dir = out / f"{model}-detect{'-masks' if masks else ''}"
        row = _stage(detect_dir, lambda d: train_detector(model, data, head="c4", masks=masks, backbone_weights=backbone,
                                                          recipe=detect, out=d, data_dir=data_dir, progress=progress),
                     lambda d: train_detector(resume=d, progress=progress))
        results.append({"backbone": model, "kind": kind, "classification_test_error": classify["test_top1_error"],
                        **{k[4:]: v for k, v in row.items() if k.startswith("val_") and k != "val_images"},
                        "detection_seconds": row["wall_time"], "iterations": row["step"]})
        write_report(out, data, budget, results, command)
    return write_report(out, data, budget, results, command)


def relative_gain(plain: float | None, residual: float | None) -> float | None:
    return None if not plain or residual is None else residual / plain - 1


def percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def write_report(out: Path, data: str, budget: float, results: list[dict], command: str) -> dict:
    """report.json and report.md: box (and mask) AP of both backbones, the relative gain, the paper's."""
    by = {r["kind"]: r for r in results}
    gains = {}
    if len(by) == 2:
        gains = {k: relative_gain(by["plain"][k], by["resnet"][k]) for k in by["plain"] if k.endswith(("AP", "AP50"))}
    paper_gain = {"coco_AP": PAPER["ResNet-101"]["coco_AP"] / PAPER["VGG-16"]["coco_AP"] - 1,
                  "coco_AP50": PAPER["ResNet-101"]["coco_AP50"] / PAPER["VGG-16"]["coco_AP50"] - 1}
    report = {"experiment": "detection", "data": data, "budget": budget, "command": command, "results": results,
              "relative_gain": gains, "paper": PAPER, "paper_relative_gain": paper_gain}
    atomic_write_text(out / "report.json", strictjson.dumps(report, indent=2))
    atomic_write_text(out / "report.md", format_report(report))
    return report


def format_report(report: dict) -> str:
    masks = any("mask_AP" in r for r in report["results"])
    head = "| backbone | classification test err % | box AP | box AP50 | box AP75 |" + (" mask AP |" if masks else "")
    lines = [f"# Detection on {report['data']} (budget {report['budget']})", "", f"`{report['command']}`", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["results"]:
        cells = [r["backbone"], percent(r["classification_test_error"], 2),
                 *(percent(r.get(k)) for k in ("box_AP", "box_AP50", "box_AP75"))]
        if masks:
            cells.append(percent(r.get("mask_AP")))
        lines.append("| " + " | ".join(cells) + " |")
    gains = report["relative_gain"]
    if gains and None not in (gains["box_AP"], gains["box_AP50"]):
        lines += ["", f"Residual over plain: box AP {100 * gains['box_AP']:+.0f}% relative, AP50 "
                      f"{100 * gains['box_AP50']:+.0f}% relative."]
    paper = report["paper"]
    lines += ["", "The paper (Faster R-CNN on COCO val, Table 8): VGG-16 "
              f"{paper['VGG-16']['coco_AP']} AP / {paper['VGG-16']['coco_AP50']} AP50, ResNet-101 "
              f"{paper['ResNet-101']['coco_AP']} / {paper['ResNet-101']['coco_AP50']}: "
              f"{100 * report['paper_relative_gain']['coco_AP']:+.0f}% / "
              f"{100 * report['paper_relative_gain']['coco_AP50']:+.0f}% relative. "
              "(There the backbones differ in depth too; here only the shortcuts differ.)", ""]
    return "\n".join(lines)
