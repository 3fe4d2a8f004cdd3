"""The paper's CIFAR experiments from one command, resumable, with the paper's numbers beside ours.

Experiments:
  table6       plain 20/32/44/56/110 and residual 20/32/44/56/110 (add 1202 with --depths), paper-cifar recipe
  shortcuts    options A, B, C at one depth (default 32): the CIFAR-scale analog of Table 3
  fig7         layer responses of plain/residual 20 and 56 and residual 110 (reuses table6 runs in --out)
  degradation  the CPU miniature that `make demo` runs
  detection    Tables 7-8 in miniature: a C4 Faster R-CNN on plain-20 and on ResNet-20, each pretrained on
               Fashion-MNIST, trained on the Fashion-MNIST scenes (about 30 CPU minutes at budget 1)

Runs are ordinary run directories under --out. Running the same command again skips finished runs and
resumes stopped ones exactly (Ctrl-C safe); another --budget or recipe on an existing --out is refused.
After every finished run, --out gets report.md, report.json and figure6.png.

Examples:
  resnet reproduce table6 --data cifar10 --download            # the paper: 64k iterations per net
  resnet reproduce table6 --data fashion-mnist --depths 20 56 --budget 0.1
  resnet reproduce shortcuts --data cifar10 --seeds 3 --jobs 3
  resnet reproduce fig7 --data cifar10 --out runs/table6-cifar10
  resnet reproduce detection --data fashion-scenes             # run `resnet data fashion-scenes` first
  resnet reproduce detection --data fashion-scenes --seeds 3   # mean±std of AP, the gain against its spread
"""

from __future__ import annotations

import argparse
import shlex
import sys

from resnet.commands.options import positive_float, positive_int

EXPERIMENTS = ("table6", "shortcuts", "fig7", "degradation", "detection")


def cifar_depth(text: str) -> int:
    """A depth with a CIFAR net in the registry (6n+2: 20, 32, 44, 56, 110, 1202)."""
    # imported here, not at the top: `resnet reproduce --help` loads this module only, and stays fast
    from resnet.models.registry import CIFAR_N

    value = positive_int(text)
    if value not in CIFAR_N:
        raise argparse.ArgumentTypeError(f"no CIFAR net of depth {value}; choose from "
                                         f"{', '.join(map(str, sorted(CIFAR_N)))}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", choices=EXPERIMENTS, help="which experiment")
    p.add_argument("--data", choices=["cifar10", "fashion-mnist", "fashion-scenes", "coco"],
                   help="dataset (default: cifar10, the paper's numbers are for CIFAR-10; detection: fashion-scenes)")
    p.add_argument("--depths", type=cifar_depth, nargs="+",
                   help="depths to run (6n+2: 20, 32, 44, 56, 110, 1202; default: the experiment's)")
    p.add_argument("--budget", type=positive_float, default=1.0,
                   help="fraction of the paper's 64k iterations, lr drops scaled with it (default: 1, the paper)")
    p.add_argument("--seeds", type=positive_int, default=1, help="runs per net (detection: per backbone, each seed with its own pretraining); the report "
                        "gives mean±std (default: 1)")
    p.add_argument("--jobs", type=positive_int,
                   help="runs trained at once in separate processes (default: 1 on the CPU, 4 on a GPU)")
    p.add_argument("--out", help="suite folder (default: runs/EXPERIMENT-DATA; with --masks: runs/detection-DATA-masks)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train (default: auto)")
    p.add_argument("--data-dir", help="dataset folder (default: the usual places)")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar for each run (default: when stderr is a terminal)")
    p.add_argument("--warmup", choices=["auto", "on", "off"],
                   help="the paper's warm-up (lr 0.01 until training error < 80%%): auto = ResNet-110 and deeper "
                        "(default: auto; degradation: off, the demo's)")
    p.add_argument("--masks", action="store_true", help="detection: Mask R-CNN, mask AP too")
    p.add_argument("--pretrained", metavar="SUITE",
                   help="detection: a table6 suite folder whose plain/resnet runs are the backbones")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `resnet reproduce --help` loads this module only, and stays fast
    from resnet.reproduce import reproduce
    from resnet.train.loop import Interrupted

    command = "resnet " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else ""
    detection = args.experiment == "detection"
    data = args.data or ("fashion-scenes" if detection else "cifar10")
    if detection != (data in ("fashion-scenes", "coco")):
        raise ValueError(f"--data {data}: the detection experiment runs on fashion-scenes or coco, the others on "
                         f"cifar10 or fashion-mnist")
    masks, pretrained = getattr(args, "masks", False), getattr(args, "pretrained", None)  # `resnet demo` has neither
    warmup = getattr(args, "warmup", None)
    if not detection and (masks or pretrained):
        raise ValueError("--masks and --pretrained apply to the detection experiment only")
    if detection and warmup:
        raise ValueError("--warmup applies to the CIFAR experiments (the detection recipes set their own)")
    try:
        if detection:
            from resnet.reproduce.detection import reproduce_detection

            if args.depths and len(args.depths) > 1:
                raise ValueError("--depths: the detection experiment compares one depth (plain vs residual)")
            reproduce_detection(data, budget=args.budget, depth=args.depths[0] if args.depths else None,
                                masks=masks, seeds=args.seeds, out=args.out, device=args.device,
                                data_dir=args.data_dir, pretrained=pretrained, progress=args.progress, command=command)
            return 0
        reproduce(args.experiment, data, depths=args.depths, budget=args.budget, seeds=args.seeds,
                  jobs=args.jobs, out=args.out, device=args.device, data_dir=args.data_dir,
                  download=args.download, progress=args.progress, warmup=warmup, command=command)
    except Interrupted as e:
        again = f"continue with: {command}" if command else "run the same command again to continue"
        print(f"resnet reproduce: stopped; checkpoints saved; {again}", file=sys.stderr)
        return e.exit_code
    return 0
