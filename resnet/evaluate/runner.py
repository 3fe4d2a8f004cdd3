"""Top-1/top-5 error of one checkpoint or an ensemble on a dataset split, under one test protocol."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from resnet import precision
from resnet.data.loaders import default_workers
from resnet.evaluate.ensemble import ensemble_scores
from resnet.evaluate.metrics import ErrorMeter
from resnet.evaluate.preprocess import InputNorm, input_norm
from resnet.evaluate.protocols import Protocol


@torch.no_grad()
def evaluate_models(models: Sequence[nn.Module], norms: Sequence[InputNorm], dataset, protocol: Protocol, *,
                    batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0,
                    progress: bool = True) -> dict:
    """Each member's errors and loss, and, for several members, the ensemble's (mean of softmax scores)."""
    device = torch.device(device)
    layout = torch.channels_last if precision.channels_last(device, None) else torch.contiguous_format
    models = [m.to(device, memory_format=layout).eval() for m in models]
    norms = [n.to(device) for n in norms]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=protocol.collate, pin_memory=device.type == "cuda")
    meters = [ErrorMeter() for _ in models]
    ensemble = ErrorMeter()
    bar = tqdm(loader, desc=f"eval {protocol.name}", unit="batch", disable=None if progress else True, dynamic_ncols=True)
    for views, labels in bar:
        labels = torch.as_tensor(labels).to(device)
        member_probs = [protocol.scores(m, n, views, device) for m, n in zip(models, norms)]
        for meter, probs in zip(meters, member_probs):
            meter.update(probs, labels)
        ensemble.update(ensemble_scores(member_probs), labels)
        bar.set_postfix(top1=f"{100 * ensemble.wrong1 / max(ensemble.n, 1):.2f}%")
    result = {"protocol": protocol.name, "members": [m.result() for m in meters]}
    if len(models) > 1:
        result["ensemble"] = ensemble.result()
    return result


def check_compatible(model: nn.Module, source: str, num_classes: int, channels: int) -> None:
    """A clear error when a checkpoint's classifier or input channels do not fit the data."""
    out = model.fc.out_features if hasattr(model, "fc") else None
    if out is not None and out != num_classes:
        raise ValueError(f"{source}: the network has {out} classes but the data has {num_classes}")
    in_channels = model.conv1.in_channels if hasattr(model, "conv1") else None
    if in_channels is not None and in_channels != channels:
        raise ValueError(f"{source}: the network takes {in_channels}-channel images but the data has {channels}")


def evaluate_checkpoints(checkpoints: Sequence[str | Path], data: str, *, data_dir: str | None = None,
                         split: str = "test", protocol: str = "center", scales: Sequence[int] | None = None,
                         batch_size: int = 64, device: str = "cpu", limit: int | None = None,
                         num_workers: int | None = None, progress: bool = True, download: bool = False,
                         data_options: dict | None = None) -> dict:
    """`resnet eval`: load the checkpoints and the split, then evaluate them alone and as an ensemble."""
    from resnet.data import dataset_info, get_dataset
    from resnet.evaluate.protocols import get_protocol
    from resnet.checkpoint import load_model

    models = [load_model(path, device) for path in checkpoints]
    options = dict(data_options or {})
    info = dataset_info(data, data_dir, download=download, **options)
    image_size = models[0].meta.get("image_size") or info.image_size
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[-1]
    chosen = get_protocol(protocol, info.style, int(image_size) if image_size else None, scales)
    dataset = get_dataset(data, split, data_dir, transform=chosen.prepare, download=download, **options)
    fallback = None
    if any(getattr(m, "input_mean", None) is None for m in models):
        from resnet.data import pixel_mean

        fallback = pixel_mean(data, data_dir, download=download, **options)
    for path, model in zip(checkpoints, models):
        check_compatible(model, str(path), len(info.classes), info.channels)
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    norms = [input_norm(m, fallback) for m in models]
    workers = default_workers() if num_workers is None else num_workers
    result = evaluate_models(models, norms, dataset, chosen, batch_size=batch_size, device=device,
                             num_workers=workers, progress=progress)
    result.update({"data": data, "split": split, "scales": list(getattr(chosen, "scales", ())) or None})
    for path, model, member in zip(checkpoints, models, result["members"]):
        member.update({"checkpoint": str(path), "model": model.meta.get("model")})
    return result


def format_results(result: dict) -> str:
    """A fixed-width table: one row per member, then the ensemble; errors in percent."""
    rows = [(m.get("checkpoint", f"member {i}"), m.get("model") or "", m) for i, m in enumerate(result["members"])]
    if "ensemble" in result:
        rows.append((f"ensemble of {len(result['members'])}", "", result["ensemble"]))
    header = ("checkpoint", "model", "top-1 err %", "top-5 err %", "loss", "images")
    body = [(name, model, f"{100 * r['top1_error']:.2f}", f"{100 * r['top5_error']:.2f}", f"{r['loss']:.4f}",
             str(r["images"])) for name, model, r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    title = f"{result.get('data', '')} {result.get('split', '')} ({result['protocol']})".strip()
    lines = [title, fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join(lines + [fmt.format(*row) for row in body])
