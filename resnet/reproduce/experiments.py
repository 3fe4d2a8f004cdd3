"""The paper's CIFAR experiments as lists of runs: which nets, with which recipe, at which budget.

- `table6`: plain and residual nets of 6n+2 layers (section 4.2, Table 6, Fig. 6), the paper-cifar recipe.
- `shortcuts`: options A, B, C at one depth, the CIFAR-scale analog of Table 3.
- `fig7`: layer responses of plain/residual 20 and 56 and residual 110 (Fig. 7), from the table6 runs.
- `degradation`: the CPU miniature that `make demo` runs (Fig. 1 / Fig. 6 in ten minutes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from resnet.train.recipes import Recipe, get_recipe

PAPER_ITERS = 64_000  # section 4.2: stop at 64k iterations (lr drops at 32k and 48k scale with it)
TABLE6_DEPTHS = (20, 32, 44, 56, 110)
PLAIN_DEPTHS = (20, 32, 44, 56, 110)  # the paper trains no plain-1202
# Table 6, CIFAR-10 test error (%); ResNet-110 is "best (mean±std)" over 5 runs: 6.43 (6.61±0.16).
PAPER_TABLE6 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43,
                "resnet1202": 7.93}
PAPER_PLAIN = ("The paper gives no table for plain nets: in Fig. 6 (left) their error rises from 20 to 56 layers, "
               "and plain-110's error is \"higher than 60%\" (not drawn).")
CURVE_POINTS = 20  # evaluations per run, for the curves (each one reads the 5k val and 10k test images)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a suite: a net, its options, a seed; its directory is `name`."""

    name: str
    model: str
    kind: str  # "plain" or "resnet"
    depth: int
    seed: int
    model_options: dict = field(default_factory=dict)
    label: str = ""  # how the report names it (e.g. "resnet32 (B)")


@dataclass(frozen=True)
class Degradation:
    """The miniature's budget (`make demo`): four nets in ten minutes on 2 CPU cores, both halves of the claim.

    Narrow nets (width 8) on all training images at batch 64: the most iterations ten CPU minutes give, because
    a deeper residual net overtakes a shallower one only after a few thousand of them (README, "What `make demo`
    shows", has the measurements that chose these numbers).
    """

    depths: tuple[int, ...] = (20, 56)
    iters: int = 3_000  # 3.2 epochs of Fashion-MNIST's 60k images
    batch_size: int = 64
    lr: float = 0.05  # the paper's 0.1 at batch 128, scaled with the batch
    base_width: int = 8  # half the paper's 16 filters: a quarter of the compute per image
    subset: int | None = None  # training images (None: all of them)
    eval_subset: int = 2_000  # test images at each evaluation during training; the last one reads all
    eval_every: int = 200  # iterations between evaluations: about five per epoch


DEGRADATION = Degradation()
EXPERIMENTS = ("table6", "shortcuts", "fig7", "degradation")


def recipe_for(experiment: str, budget: float, device: str = "auto", warmup: str | None = None) -> Recipe:
    """The recipe every run of `experiment` shares (the seed is set per run). `warmup`: the paper's lr 0.01 until
    training error < 80% ("auto": ResNet-110 and deeper, as the paper; "on"; "off"); None: the experiment's own
    (the paper's "auto", the degradation demo's "off")."""
    if budget <= 0:
        raise ValueError(f"invalid --budget {budget}; must be positive (1 = the paper's 64k iterations)")
    if experiment == "degradation":
        d = DEGRADATION
        return get_recipe("paper-cifar", iters=max(1, round(d.iters * budget)), subset=d.subset,
                          eval_subset=d.eval_subset, batch_size=d.batch_size, lr=d.lr, val_split=False,
                          warmup=warmup or "off", device=device, eval_every=max(1, round(d.eval_every * budget)))
    iters = max(1, round(PAPER_ITERS * budget))
    return get_recipe("paper-cifar", iters=iters, eval_every=max(1, iters // CURVE_POINTS), device=device,
                      **({"warmup": warmup} if warmup else {}))


def plan(experiment: str, depths: tuple[int, ...] | None = None, seeds: int = 1) -> list[RunSpec]:
    """The runs of an experiment, shallow nets first (so a partial suite already compares plain and residual)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    if seeds < 1:
        raise ValueError(f"invalid --seeds {seeds}; must be at least 1")
    nets: list[tuple[str, int, dict, str]] = []  # (kind, depth, options, label suffix)
    if experiment == "shortcuts":
        for depth in depths or (32,):
            nets += [("resnet", depth, {} if s == "A" else {"shortcut": s}, f" ({s})") for s in "ABC"]
    else:
        default = {"table6": TABLE6_DEPTHS, "fig7": (20, 56, 110), "degradation": DEGRADATION.depths}[experiment]
        for depth in depths or default:
            plain = depth in PLAIN_DEPTHS and not (experiment == "fig7" and depths is None and depth == 110)
            nets += [("plain", depth, {}, "")] * plain + [("resnet", depth, {}, "")]
    if experiment == "degradation":
        nets = [(k, d, {**o, "base_width": DEGRADATION.base_width}, s) for k, d, o, s in nets]
    runs = []
    for kind, depth, options, suffix in sorted(nets, key=lambda n: (n[1], n[0] != "plain")):
        model = f"{kind}{depth}"
        tag = "".join(f"-{k}{v}" for k, v in sorted(options.items()) if k != "base_width")
        for seed in range(seeds):
            runs.append(RunSpec(f"{model}{tag}-s{seed}", model, kind, depth, seed, options, model + suffix))
    return runs


def with_seed(recipe: Recipe, seed: int) -> Recipe:
    return dataclasses.replace(recipe, seed=seed)
