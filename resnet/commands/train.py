"""Train a network with one of the paper's recipes; every recipe field can be overridden.

Examples:
  resnet train --model resnet20 --data cifar10 --recipe paper-cifar --out runs/r20
  resnet train --model resnet20 --data fashion-mnist --epochs 3 --subset 5000
  resnet train --model resnet20 --data fashion-mnist --recipe fast               # 94% in 8.6 minutes on 2 CPU cores
  resnet train --model resnet20 --data folder --data-dir my-images      # small images: CIFAR protocol, native size
  resnet train --resume runs/r20
  resnet train --model resnet50 --init torchvision-v2 --data folder --data-dir DIR --recipe finetune --freeze 1
  resnet train --model resnet50 --data coco --data-dir ~/coco --head fpn --backbone-weights torchvision-v2
  resnet train --model resnet20 --data fashion-scenes --recipe detection-cpu --head c4     # detection (Appendix A)
  torchrun --nproc_per_node=4 -m resnet train --model resnet50 --data imagenet --data-dir /data/imagenet --recipe paper-imagenet
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from resnet.commands.options import add_model_options, model_options
from resnet.train.recipes import (AUTO_FIELDS, CHOICES, PAPER_TRAIN_IMAGES, RECIPES, Recipe, get_recipe,
                                  paper_epochs, scaled_lr)

FIELD_HELP = {
    "batch_size": "global batch over all processes",
    "lr": "initial learning rate (without --lr, a --batch-size other than the recipe's scales it linearly)",
    "momentum": "SGD momentum", "weight_decay": "L2 weight decay",
    "iters": "total iterations (folder/imagenet data: epochs unless given)",
    "epochs": "total epochs (instead of --iters; folder/imagenet data default: the recipe's length in epochs of "
              "the paper's data, 182 for paper-cifar, 120 for paper-imagenet)",
    "schedule": "step: lr/10 at --lr-drops; plateau: lr/10 when validation error stalls; cosine: to 0; "
                "onecycle: linear to 0 after the --warmup-fraction ramp",
    "lr_drops": "fractions of training where lr is divided by 10",
    "plateau_patience": "evaluations without improvement before lr/10 (plateau schedule)",
    "warmup": "lr --warmup-lr until training error < --warmup-error (auto: ResNet-110 and deeper, as the paper)",
    "warmup_lr": "learning rate during the warm-up", "warmup_error": "training error that ends the warm-up",
    "val_split": "hold out part of the training set for model selection (45k/5k on CIFAR)",
    "eval_every": "iterations between evaluations, and one after the last iteration (default: once per epoch)",
    "eval_subset": "evaluate during training on a seeded, class-balanced sample of N held-out images "
                   "(the last evaluation reads them all)",
    "seed": "random seed (data order, augmentation, init)",
    "subset": "train on a seeded, class-balanced sample of N images", "device": "where to train",
    "amp": "mixed precision (auto: on CUDA and on CPUs with native bf16)", "amp_dtype": "autocast dtype",
    "channels_last": "NHWC activations (auto: where mixed precision is on by default)",
    "compile": "torch.compile the model", "sync_bn": "BN statistics over the global batch (several processes)",
    "num_workers": "data-loader workers per process (auto: from the CPU count)",
    "device_loader": "hold a small dataset as one tensor on the device (auto: small datasets)",
    "log_every": "iterations between log lines when output is not a terminal",
    "style": "folder/imagenet data: auto (small-image protocol for images up to 64 px), small (CIFAR protocol at "
             "native size: pad 4, random crop, flip) or imagenet (scale augmentation, 224 crops)",
    "image_size": "folder/imagenet data: the network's input side (auto: the images' size, or 224)",
    "crop_pad": "small images: pixels of zeros padded on each side before the random crop (the paper: 4; 0: no "
                "crop)",
    "warmup_fraction": "linear lr warm-up over this fraction of training",
    "nesterov": "Nesterov momentum", "label_smoothing": "cross-entropy against one-hot targets smoothed by this",
    "mixup_alpha": "mixup on the batch with Beta(alpha, alpha) (0: off)",
    "cutmix_alpha": "cutmix on the batch with Beta(alpha, alpha) (0: off; with mixup on, one of the two per batch)",
    "mix_prob": "fraction of batches mixed by mixup/cutmix",
    "random_erasing": "probability that an image gets a random rectangle erased (to the mean)",
    "low_res_size": "progressive resizing: train the first --low-res-fraction of the iterations on batches "
                    "resized to this side (bilinear; none: off)",
    "low_res_fraction": "the fraction of the iterations trained at --low-res-size",
    "ema_decay": "keep an EMA of the weights with this decay; the EMA is evaluated and saved (0: off)",
    "tta": "test-time views in the evaluations (mean softmax): none; flip (the image and its mirror); flip-shift (also copies moved one pixel down-right and up-left, and their mirrors)",
    "tensorboard": "also write TensorBoard event files into RUN_DIR/tensorboard (needs the tensorboard package)",
    "decay_bn_bias": "weight decay on BN parameters and biases too", "freeze": "keep the stem and the first N "
    "stages fixed, BN included (fine-tuning)", "head_lr_mult": "the classifier's lr is --lr times this",
}


def _defaults(name: str) -> str:
    """Each recipe's value of a field, for --help: 'paper-cifar: 0.1, paper-imagenet: 0.1'."""
    values = {recipe: getattr(r, name) for recipe, r in RECIPES.items()}
    shown = {k: "auto" if v is None and name in AUTO_FIELDS else ("none" if v is None else v) for k, v in values.items()}
    if len(set(map(str, shown.values()))) == 1:
        return f"default: {next(iter(shown.values()))}"
    return "default: " + ", ".join(f"{k} {v}" for k, v in shown.items())


def _field_type(annotation: str) -> type:
    """The argparse type for a Recipe field annotation such as 'int | None'."""
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("tuple", float)):
        if annotation.startswith(name):
            return kind
    return str


def add_recipe_overrides(p: argparse.ArgumentParser) -> None:
    """One option per Recipe field, default None so that only what is given overrides the recipe."""
    group = p.add_argument_group("recipe overrides (defaults come from --recipe)")
    for f in fields(Recipe):
        if f.name == "name":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(str(f.type))
        choices = CHOICES.get(f.name)
        help_text = f"{FIELD_HELP.get(f.name, f.name.replace('_', ' '))} ({_defaults(f.name)})"
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif str(f.type).startswith("tuple"):
            group.add_argument(flag, dest=f.name, type=float, nargs="+", default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, choices=choices, help=help_text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="network name (see `resnet summary`)")
    p.add_argument("--data", help="dataset: cifar10, cifar100, fashion-mnist, imagenet, folder, synthetic; "
                                  "detection: fashion-scenes, coco (COCO-format folder in --data-dir)")
    p.add_argument("--data-dir", help="dataset folder (default: the usual places for the dataset)")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="hyperparameters (default: paper-cifar; detection data: detection, torchvision's)")
    p.add_argument("--out", help="run directory (default: runs/MODEL-DATA-TIME); must not hold another run")
    p.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run where it stopped (in RUN_DIR)")
    p.add_argument("--init", metavar="NAME_OR_PATH",
                   help="start from pretrained weights: a name from `resnet weights` (e.g. torchvision-v2), our "
                        "checkpoint or run directory, or a torchvision/timm state dict; a classifier of another "
                        "size is re-initialised")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    add_model_options(p)
    detection = p.add_argument_group("detection (with --data fashion-scenes or coco; see resnet/detection)")
    detection.add_argument("--head", choices=["c4", "fpn"], default="c4",
                           help="c4: the paper's (conv5_x per RoI); fpn: a feature pyramid (default: c4)")
    detection.add_argument("--masks", action="store_true", help="Mask R-CNN: instance masks too")
    detection.add_argument("--backbone-weights", metavar="NAME_OR_PATH",
                           help="classification weights for the backbone (our run or checkpoint, a `resnet weights` "
                                "name, a torchvision/timm file); BN is then frozen")
    detection.add_argument("--trainable-stages", type=int, metavar="N",
                           help="with --backbone-weights: how many of the last stages train (default: all but one)")
    detection.add_argument("--min-size", type=int, metavar="PX",
                           help="the detector's input: images scaled so their shorter side is PX (default: from the "
                                "data: small images keep their scale, photographs 800 as torchvision's)")
    detection.add_argument("--max-size", type=int, metavar="PX",
                           help="... and their longer side at most PX (default: from the data, 1333 for photographs)")
    detection.add_argument("--max-pixels", type=int, metavar="N",
                           help="refuse images with more pixels than this (default: 64 million)")
    add_recipe_overrides(p)


DETECTION_DATA = ("fashion-scenes", "coco")


def default_recipe(args: argparse.Namespace) -> str:
    return args.recipe or ("detection" if getattr(args, "data", None) in DETECTION_DATA else "paper-cifar")


def defaults_for_data(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """Overrides that fit the data when not given (lr scaled with the batch; length in epochs for image
    folders) and one line saying each."""
    name = default_recipe(args)
    base, overrides, notes = RECIPES[name], {}, []
    batch = getattr(args, "batch_size", None)
    if batch is not None and args.lr is None and batch != base.batch_size:
        overrides = scaled_lr(name, batch)
        if args.warmup_lr is not None:
            del overrides["warmup_lr"]
        notes.append(f"lr {overrides['lr']:g}: {name}'s {base.lr:g} at batch {base.batch_size} scaled linearly "
                     f"to batch {batch} (--lr to set it)")
    in_epochs = base.epochs is not None or name not in PAPER_TRAIN_IMAGES  # finetune, fast: their own length
    if getattr(args, "data", None) in ("folder", "imagenet") and args.iters is None and args.epochs is None \
            and not in_epochs:
        overrides["epochs"] = paper_epochs(name)
        notes.append(f"length: {overrides['epochs']} epochs, {name}'s {base.iters:,} iterations at batch "
                     f"{base.batch_size} over the paper's {PAPER_TRAIN_IMAGES[name]:,} images "
                     f"(--epochs or --iters to set it)")
    return overrides, notes


def recipe_and_notes(args: argparse.Namespace) -> tuple[Recipe, list[str]]:
    """The recipe the options ask for, and the notes on defaults fitted to the data."""
    overrides = {f.name: getattr(args, f.name) for f in fields(Recipe) if f.name != "name"}
    if overrides.get("lr_drops") is not None:
        overrides["lr_drops"] = tuple(overrides["lr_drops"])
    fitted, notes = defaults_for_data(args)
    overrides.update(fitted)
    return get_recipe(default_recipe(args), **overrides), notes


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return recipe_and_notes(args)[0]


def run(args: argparse.Namespace) -> int:
    import sys

    # imported here, not at the top: `resnet train --help` loads this module only, and stays fast
    from resnet.train.loop import Interrupted, TrainingDiverged, train

    if args.resume:
        given = [f"--{f.name.replace('_', '-')}" for f in fields(Recipe) if getattr(args, f.name, None) is not None]
        if given:
            print(f"resnet train: warning: a resumed run keeps its saved recipe; ignoring {' '.join(given)}",
                  file=sys.stderr)
        if args.init:
            print("resnet train: warning: a resumed run continues from its own checkpoint; ignoring --init",
                  file=sys.stderr)
    recipe = None
    if not args.resume:
        recipe, notes = recipe_and_notes(args)
        for note in notes:
            print(note)
    try:
        if is_detection(args):
            from resnet.detection.train import train_detector

            train_detector(args.model, args.data, head=args.head, masks=args.masks,
                           trainable_stages=args.trainable_stages, backbone_weights=args.backbone_weights,
                           recipe=recipe, out=args.out, data_dir=args.data_dir, resume=args.resume,
                           model_options=model_options(args), progress=args.progress, overwrite=args.overwrite,
                           min_size=args.min_size, max_size=args.max_size, max_pixels=args.max_pixels)
        else:
            given = [f"--{k.replace('_', '-')}" for k in ("min_size", "max_size", "max_pixels") if getattr(args, k)]
            if given:
                raise ValueError(f"{' '.join(given)}: for detection data only (--data fashion-scenes or coco)")
            train(args.model, args.data, recipe=recipe, out=args.out,
                  data_dir=args.data_dir, resume=args.resume, model_options=model_options(args),
                  download=args.download, progress=args.progress, overwrite=args.overwrite,
                  init=None if args.resume else args.init)
    except Interrupted as e:
        return e.exit_code
    except TrainingDiverged as e:
        print(f"resnet train: error: {e}", file=sys.stderr)
        return 1
    return 0


def is_detection(args: argparse.Namespace) -> bool:
    """A detection run: detection data, or a resumed run whose config.json says so."""
    if args.resume:
        from pathlib import Path

        # imported here, not at the top: `resnet train --help` loads this module only, and stays fast
        from resnet.train.loop import read_config

        return read_config(Path(args.resume), args.out)[1].get("task") == "detection"
    return args.data in DETECTION_DATA
