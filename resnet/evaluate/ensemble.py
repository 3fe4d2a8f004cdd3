"""Ensembles (section 3.4 / Table 4): the members' softmax scores averaged."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def ensemble_scores(member_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of the members' class probabilities, each [N, K]."""
    if not member_probs:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(p.shape) for p in member_probs}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on the score shape: {sorted(shapes)}")
    return torch.stack(list(member_probs)).mean(dim=0)
