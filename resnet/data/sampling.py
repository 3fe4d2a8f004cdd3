"""Seeded, class-balanced samples of a dataset (`--subset`, `--eval-subset`, `eval --limit`, `analyze --images`).

The first N files of a class-ordered folder would all be of the first classes; instead each class
gives an equal share, drawn at random (fixed by the seed), and classes with too few images give all
they have while the others fill the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def balanced_sample(targets: Sequence[int] | torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of n samples (all if n >= len), as equal per class as the class sizes allow, chosen by seed."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    if n >= len(targets):
        return torch.arange(len(targets))
    g = torch.Generator().manual_seed(seed)
    classes = targets.unique()
    classes = classes[torch.randperm(len(classes), generator=g)]  # which classes get the remainder
    per_class = [(targets == c).nonzero().flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    # round-robin: the k-th pick of every class comes before the (k+1)-th of any
    rank = torch.empty(len(targets), dtype=torch.long)
    order = torch.empty(len(targets), dtype=torch.long)
    for position, idx in enumerate(per_class):
        rank[idx] = torch.arange(len(idx))
        order[idx] = position
    chosen = (rank * len(classes) + order).argsort()[:n]
    return chosen.sort().values


def balanced_subset(dataset, n: int | None, seed: int = 0):
    """`dataset` itself when n is None or covers it, else a torch Subset of a balanced sample (uses `.targets`)."""
    if n is None or n >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, balanced_sample(dataset.targets, n, seed).tolist())
