"""Top-k error and loss from averaged class scores (probabilities), as the paper reports them; per-class error,
precision and recall from the confusion matrix (what a net gets wrong, before deploying it)."""

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
        self.confusion: torch.Tensor | None = None  # [K, K] counts, true class x top-1 prediction

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        probs, labels = probs.detach().float().cpu(), labels.detach().cpu()
        errors = topk_errors(probs, labels)
        self.n += len(labels)
        self.wrong1 += int(errors[1].sum())
        self.wrong5 += int(errors[5].sum())
        self.loss_sum += float(nll(probs, labels).double().sum())
        counts = confusion_counts(probs, labels, probs.shape[1])
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def result(self) -> dict[str, float | int]:
        """Errors as fractions (0..1), mean loss, the number of images, per-class error, precision and recall, and
        the confusion matrix (rows: true class, columns: prediction)."""
        n = max(self.n, 1)
        confusion = [] if self.confusion is None else self.confusion.tolist()
        return {"top1_error": self.wrong1 / n, "top5_error": self.wrong5 / n, "loss": self.loss_sum / n,
                "images": self.n, "per_class": per_class(confusion) if confusion else [], "confusion": confusion}


def confusion_counts(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [K, K] (int64, on the scores' device): row = true class, column = top-1 prediction."""
    predicted = scores.argmax(dim=1)
    return torch.bincount(labels.long() * num_classes + predicted, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def per_class(confusion: torch.Tensor | list, names: list[str] | None = None) -> list[dict]:
    """For each class: its images, top-1 error on them (1 - recall), precision (of the predictions of that class;
    None when it was never predicted) and recall (None when it has no images), from a confusion matrix."""
    counts = torch.as_tensor(confusion, dtype=torch.float64)
    hits, truths, predictions = counts.diagonal(), counts.sum(dim=1), counts.sum(dim=0)
    rows = []
    for k in range(len(counts)):
        recall = float(hits[k] / truths[k]) if truths[k] > 0 else None
        rows.append({"index": k, "class": names[k] if names and k < len(names) else str(k), "images": int(truths[k]),
                     "top1_error": None if recall is None else 1.0 - recall, "recall": recall,
                     "precision": float(hits[k] / predictions[k]) if predictions[k] > 0 else None})
    return rows
