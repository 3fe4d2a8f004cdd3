"""Top-k error and loss from averaged class scores (probabilities), as the paper reports them."""

from __future__ import annotations

import torch


def topk_errors(probs: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, torch.Tensor]:
    """Per-sample 0/1 errors for each k: 1 where the label is not among the k highest scores."""
    k_max = min(max(ks), probs.shape[1])
    top = probs.topk(k_max, dim=1).indices
    hits = top == labels[:, None]
    return {k: (~hits[:, : min(k, k_max)].any(dim=1)).long() for k in ks}


def nll(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample -log p(label) of averaged probabilities (clamped so that 0 gives a finite loss)."""
    p = probs.gather(1, labels[:, None]).squeeze(1)
    return -p.clamp_min(1e-12).log()


class ErrorMeter:
    """Running totals of top-1/top-5 errors and loss over batches of (probabilities, labels)."""

    def __init__(self) -> None:
        self.n = 0
        self.wrong1 = 0
        self.wrong5 = 0
        self.loss_sum = 0.0

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        probs, labels = probs.detach().float().cpu(), labels.detach().cpu()
        errors = topk_errors(probs, labels)
        self.n += len(labels)
        self.wrong1 += int(errors[1].sum())
        self.wrong5 += int(errors[5].sum())
        self.loss_sum += float(nll(probs, labels).double().sum())

    def result(self) -> dict[str, float | int]:
        """Errors as fractions (0..1), mean loss and the number of images."""
        n = max(self.n, 1)
        return {"top1_error": self.wrong1 / n, "top5_error": self.wrong5 / n, "loss": self.loss_sum / n,
                "images": self.n}
