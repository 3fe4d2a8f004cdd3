"""Training recipes: the paper's hyperparameters as typed dataclasses, overridable field by field."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields


CHOICES = {"schedule": ("step", "plateau", "cosine", "onecycle"), "tta": ("none", "flip", "flip-shift"), "warmup": ("auto", "on", "off"), "device": ("auto", "cpu", "cuda"),
           "amp_dtype": ("bf16", "fp16"), "device_loader": ("auto", "on", "off"), "style": ("auto", "small", "imagenet")}


@dataclass
class Recipe:
    """Everything a training run needs besides the model and data names."""

    name: str = "paper-cifar"
    batch_size: int = 128  # global batch, over all processes
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    iters: int | None = 64_000  # total iterations; `epochs` instead when set
    epochs: int | None = None
    schedule: str = "step"  # "step": lr / 10 at `lr_drops`; "plateau": lr / 10 when val error stalls; "cosine"
    # or "onecycle": linear decay to 0 after the `warmup_fraction` ramp (the ramp then decay of one-cycle)
    lr_drops: tuple[float, ...] = (0.5, 0.75)  # fractions of training: 32k and 48k of 64k
    plateau_patience: int = 3  # evaluations without improvement before lr / 10
    warmup: str = "auto"  # "auto" (ResNet-110 and deeper, as the paper), "on" or "off"
    warmup_lr: float = 0.01  # used until training error < warmup_error
    warmup_error: float = 0.8
    warmup_fraction: float = 0.0  # lr rises linearly from 0 over this fraction of training
    decay_bn_bias: bool = True  # weight decay on BN parameters and biases too (the paper decays everything)
    freeze: int | None = None  # fine-tuning: keep the stem and the first N stages fixed (their BN in eval mode)
    head_lr_mult: float = 1.0  # fine-tuning: the classifier's lr is lr times this
    val_split: bool = True  # the paper's 45k/5k train/val split for model selection
    eval_every: int | None = None  # iterations between evaluations; default once per epoch
    eval_subset: int | None = None  # evaluate on N held-out images during training (quick runs); the last reads all
    seed: int = 0
    subset: int | None = None  # train on N training images, a seeded class-balanced sample
    device: str = "auto"  # "auto", "cpu" or "cuda"
    amp: bool | None = None  # mixed precision; None: on CUDA and on CPUs with native bf16 (resnet.precision)
    amp_dtype: str = "bf16"  # "bf16" or "fp16" (with a grad scaler)
    channels_last: bool | None = None  # NHWC activations; None: wherever amp is on by default
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # synchronise BN statistics across processes
    num_workers: int | None = None  # data-loader workers per process (default: from the CPU count)
    device_loader: str = "auto"  # hold small datasets as a tensor on the device: "auto", "on", "off"
    log_every: int = 50  # iterations between plain log lines when output is not a terminal
    style: str = "auto"  # folder/imagenet data: "small" (CIFAR protocol, native size), "imagenet", or from the images
    image_size: int | None = None  # folder/imagenet data: the network's input side (default: from the data)
    crop_pad: int = 4  # small images: zeros padded on each side before the random crop ("4 pixels", section 4.2)
    # The modern recipe (not in the paper; each off in the paper's recipes)
    nesterov: bool = False  # Nesterov momentum
    label_smoothing: float = 0.0  # cross-entropy against (1 - e) one-hot + e / classes
    mixup_alpha: float = 0.0  # mixup's Beta(alpha, alpha); 0: off
    cutmix_alpha: float = 0.0  # cutmix's Beta(alpha, alpha); 0: off (both on: one of the two per batch)
    mix_prob: float = 1.0  # fraction of batches mixed when mixup or cutmix is on
    random_erasing: float = 0.0  # probability that an image gets a random rectangle erased
    low_res_size: int | None = None  # small images: the first --low-res-fraction of training at this side; None: off
    low_res_fraction: float = 0.5  # the fraction of the iterations trained at --low-res-size
    ema_decay: float = 0.0  # EMA of the weights (evaluated, saved, used by eval/predict/export); 0: off
    tta: str = "none"  # test-time views in evaluations: "none", "flip" or "flip-shift" (data/loaders.TTA_VIEWS)
    tensorboard: bool = False  # also write TensorBoard event files into RUN_DIR/tensorboard

    def total_steps(self, steps_per_epoch: int) -> int:
        """The run's length in iterations: --iters, or --epochs of `steps_per_epoch`."""
        return self.iters if self.iters else self.epochs * steps_per_epoch

    def validate(self) -> Recipe:
        """Check every option's value (choices, ranges, NaN and infinity), raising one line that names the option."""
        for option, allowed in CHOICES.items():
            if getattr(self, option) not in allowed:
                raise ValueError(f"invalid --{_flag(option)} {getattr(self, option)!r}; allowed: {', '.join(allowed)}")
        for option, (low, high, low_open, high_open) in RANGES.items():
            value = getattr(self, option)
            if value is not None:
                _check_range(option, value, low, high, low_open, high_open)
        for drop in self.lr_drops:
            _check_range("lr_drops", drop, 0.0, 1.0, True, True)
        if list(self.lr_drops) != sorted(self.lr_drops):
            raise ValueError(f"invalid --lr-drops {' '.join(map(str, self.lr_drops))}; give them in increasing order")
        if self.nesterov and self.momentum == 0:
            raise ValueError("--nesterov needs a --momentum above 0")
        if self.mix_prob < 1 and not (self.mixup_alpha or self.cutmix_alpha):
            raise ValueError(f"--mix-prob {self.mix_prob:g} does nothing without --mixup-alpha or --cutmix-alpha "
                             f"(no batch is mixed)")
        if (self.iters is None) == (self.epochs is None):
            raise ValueError(f"give one of --iters or --epochs (iters={self.iters}, epochs={self.epochs})")
        return self


# Valid values of numeric fields: (low, high, low excluded, high excluded); None: unbounded on that side.
POSITIVE = (1, None, False, False)
RANGES = {
    **{name: POSITIVE for name in ("batch_size", "iters", "epochs", "subset", "eval_every", "eval_subset",
                                   "plateau_patience", "image_size", "log_every", "low_res_size")},
    "seed": (0, None, False, False), "crop_pad": (0, None, False, False), "num_workers": (0, None, False, False), "freeze": (0, None, False, False),
    "lr": (0.0, None, True, False), "warmup_lr": (0.0, None, True, False), "head_lr_mult": (0.0, None, True, False),
    "momentum": (0.0, 1.0, False, True), "weight_decay": (0.0, None, False, False),
    "warmup_error": (0.0, 1.0, True, False), "warmup_fraction": (0.0, 1.0, False, True),
    "label_smoothing": (0.0, 1.0, False, True), "mixup_alpha": (0.0, None, False, False),
    "cutmix_alpha": (0.0, None, False, False), "mix_prob": (0.0, 1.0, False, False),
    "random_erasing": (0.0, 1.0, False, False), "ema_decay": (0.0, 1.0, False, True),
    "low_res_fraction": (0.0, 1.0, True, True),
}


def _flag(option: str) -> str:
    return option.replace("_", "-")


def _check_range(option: str, value, low, high, low_open: bool, high_open: bool) -> None:
    """One line naming the option when `value` is NaN, infinite, of the wrong kind or outside its range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"invalid --{_flag(option)} {value!r}; must be a finite number")
    if isinstance(low, int) and not isinstance(low, bool) and not float(value).is_integer():
        raise ValueError(f"invalid --{_flag(option)} {value!r}; must be a whole number")
    below = value <= low if low_open else value < low
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        interval = f"{'(' if low_open else '['}{low}, {'inf)' if high is None else str(high) + (')' if high_open else ']')}"
        raise ValueError(f"invalid --{_flag(option)} {value}; must be in {interval}")


RECIPES: dict[str, Recipe] = {
    # Section 4.2: batch 128, lr 0.1 / 10 at 32k and 48k, stop at 64k, 45k/5k split.
    "paper-cifar": Recipe(),
    # Section 3.4: batch 256, lr 0.1 / 10 when error plateaus, 60x10^4 iterations.
    "paper-imagenet": Recipe(name="paper-imagenet", batch_size=256, iters=600_000, schedule="plateau",
                             val_split=False, eval_every=5_000, warmup="off"),
    # Fine-tuning pretrained weights on a few thousand images (`--init`): not in the paper; common practice
    # (timm, fastai): smaller lr with cosine decay after a short linear warm-up, few epochs, no decay on BN
    # and biases, a 10x lr for the new classifier.
    "finetune": Recipe(name="finetune", batch_size=64, lr=0.01, iters=None, epochs=10, schedule="cosine",
                       warmup="off", warmup_fraction=0.05, decay_bn_bias=False, head_lr_mult=10.0,
                       val_split=False),
    # Time to accuracy on small images (Fashion-MNIST, CIFAR) on a CPU or one GPU: not the paper's; the modern
    # recipe (torchvision's and timm's references, airbench, Page's ResNet-9): a one-cycle schedule (linear ramp
    # over 15%, then linear decay to 0) at 2x the linearly scaled lr, Nesterov, label smoothing 0.1, no weight
    # decay on BN and biases, all 60k/50k training images. Measured on the 55k/5k validation split (README, "Time
    # to accuracy"): crops padded by 1 (pad 2, airbench's translate-2, gave 6.20% against 6.50% with the paper's 4
    # at 12 epochs; pad 1 4.80% against pad 2's 4.94% at 40 epochs, lower on every view); flip-shift TTA (at 45
    # epochs 4.90% against 5.22% with flip alone, 5.66% with none); no label smoothing was worse (5.22% at 40
    # epochs); EMA of the weights (5.34% at 0.999) and random erasing (5.12% at p=0.5) did not help and are off.
    # 13 epochs, the most that fit 10 minutes of a 2-core CPU with these evaluations, every 1,170 iterations (5
    # epochs of Fashion-MNIST: the one-cycle schedule peaks at its end) and after the last.
    "fast": Recipe(name="fast", batch_size=256, lr=0.4, weight_decay=5e-4, iters=None, epochs=13,
                   eval_every=1170, schedule="onecycle", warmup="off", warmup_fraction=0.15, decay_bn_bias=False,
                   nesterov=True, label_smoothing=0.1, tta="flip-shift", crop_pad=1, val_split=False),
    # Detection, torchvision's references (references/detection, Faster R-CNN on COCO): SGD lr 0.02 for 16 images
    # (scaled linearly with the batch), momentum 0.9, wd 1e-4, a linear warm-up (1,000 of ~190k iterations),
    # lr / 10 at epochs 16 and 22 of 26. The paper (Appendix A) trained Faster R-CNN in Caffe, lr 0.001 for 240k
    # then 0.0001 for 80k iterations on COCO, with 8 GPUs (one image each).
    "detection": Recipe(name="detection", batch_size=16, lr=0.02, iters=None, epochs=26, schedule="step",
                        lr_drops=(16 / 26, 22 / 26), warmup="off", warmup_fraction=0.005, val_split=False),
    # Detection on the Fashion-MNIST scenes on a 2-core CPU: torchvision's recipe at batch 4 with twice its linearly
    # scaled lr (0.005) for a short run, a warm-up over the first 2%, lr / 10 at 3/4.
    "detection-cpu": Recipe(name="detection-cpu", batch_size=4, lr=0.01, iters=None, epochs=6, schedule="step",
                            lr_drops=(0.75,), warmup="off", warmup_fraction=0.02, val_split=False),
}

# The training sets the paper's iteration counts were set for: CIFAR-10's 45k (after the 5k val split), ImageNet's.
PAPER_TRAIN_IMAGES = {"paper-cifar": 45_000, "paper-imagenet": 1_281_167}


def paper_epochs(name: str) -> int:
    """A named recipe's length as epochs of the paper's data: 64k x 128 / 45k = 182 (CIFAR), 600k x 256 / 1.28M = 120."""
    base = RECIPES[name]
    return round(base.iters * base.batch_size / PAPER_TRAIN_IMAGES[name])


def scaled_lr(name: str, batch_size: int) -> dict[str, float]:
    """lr and warm-up lr scaled linearly with the batch from a named recipe's (0.1 at 128 for CIFAR, at 256 for ImageNet)."""
    base = RECIPES[name]
    factor = batch_size / base.batch_size
    return {"lr": base.lr * factor, "warmup_lr": base.warmup_lr * factor}


def get_recipe(name: str, **overrides) -> Recipe:
    """A copy of a named recipe with `overrides` applied (None values are ignored)."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list(RECIPES), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown recipe {name!r}.{hint} Available: {', '.join(RECIPES)}")
    names = {f.name for f in fields(Recipe)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown recipe field(s) {', '.join(unknown)}; fields: {', '.join(sorted(names))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "epochs" in given and "iters" in given:
        raise ValueError(f"--epochs {given['epochs']} and --iters {given['iters']} both set the length of the run; "
                         f"give one of them")
    if "epochs" in given:
        given["iters"] = None  # --epochs replaces the recipe's iteration count
    elif "iters" in given:
        given["epochs"] = None  # and --iters a recipe's epoch count (finetune is in epochs)
    return dataclasses.replace(RECIPES[name], **given).validate()


def recipe_from_dict(data: dict) -> Recipe:
    """Rebuild a saved recipe (JSON turns tuples into lists); an unknown field is one line naming it."""
    if not isinstance(data, dict):
        raise ValueError(f"the recipe is a {type(data).__name__}, not an object of fields")
    unknown = sorted(set(data) - {f.name for f in fields(Recipe)})
    if unknown:
        raise ValueError(f"unknown recipe field(s) {', '.join(unknown)} (written by another version of resnet?)")
    data = dict(data)
    if "lr_drops" in data:
        data["lr_drops"] = tuple(data["lr_drops"])
    return Recipe(**data).validate()


def describe(recipe: Recipe) -> str:
    """The recipe as aligned `field: value` lines, printed at the start of a run."""
    width = max(len(f.name) for f in fields(Recipe))

    def shown(name: str):
        value = getattr(recipe, name)
        return value if value is not None else ("auto" if name in AUTO_FIELDS else "-")

    return "\n".join(f"  {f.name:<{width}}  {shown(f.name)}" for f in fields(Recipe))


AUTO_FIELDS = ("amp", "channels_last", "num_workers")  # None means: chosen for the device at run time


__all__ = ["Recipe", "RECIPES", "get_recipe", "recipe_from_dict", "describe", "paper_epochs", "scaled_lr"]
