"""Top-1/top-5 error of one checkpoint or an ensemble on a dataset split, under one test protocol."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from resnet import precision
from resnet.data.folder import Unreadable
from resnet.data.loaders import default_workers, ignore_stop_signals
from resnet.evaluate.confusion import MAX_TABLE_CLASSES
from resnet.evaluate.ensemble import ensemble_scores
from resnet.evaluate.metrics import ErrorMeter
from resnet.evaluate.preprocess import InputNorm, input_norm
from resnet.evaluate.protocols import Protocol


class ReadableCollate:
    """The protocol's collation over the readable items of a batch; unreadable ones are returned apart."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol

    def __call__(self, batch: list) -> tuple:
        unreadable = [item[0] for item in batch if isinstance(item[0], Unreadable)]
        readable = [item for item in batch if not isinstance(item[0], Unreadable)]
        return (*(self.protocol.collate(readable) if readable else (None, None)), unreadable)


@torch.no_grad()
def evaluate_models(models: Sequence[nn.Module], norms: Sequence[InputNorm], dataset, protocol: Protocol, *,
                    batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0,
                    progress: bool = True) -> dict:
    """Each member's errors and loss, and, for several members, the ensemble's (mean of softmax scores).

    Unreadable files (`Unreadable` items) are left out, warned about by name and listed under "skipped".
    """
    device = torch.device(device)
    layout = torch.channels_last if precision.channels_last(device, None) else torch.contiguous_format
    # networks that are not torch modules (resnet.inference.OnnxNet) run where they are, in their own precision
    models = [m.to(device, memory_format=layout).eval() if isinstance(m, nn.Module) else m for m in models]
    norms = [n.to(device) for n in norms]
    batch_size = _batch_that_fits(dataset, batch_size, device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=ReadableCollate(protocol), pin_memory=device.type == "cuda",
                                         worker_init_fn=ignore_stop_signals)
    meters = [ErrorMeter() for _ in models]
    ensemble = ErrorMeter()
    skipped = []
    bar = tqdm(loader, desc=f"eval {protocol.name}", unit="batch", disable=None if progress else True, dynamic_ncols=True)
    for views, labels, unreadable in bar:
        for item in unreadable:
            warnings.warn(f"skipped unreadable image: {item.reason}", stacklevel=2)
            skipped.append({"image": item.path, "error": item.reason})
        if views is None:
            continue
        labels = torch.as_tensor(labels).to(device)
        member_probs = [protocol.scores(m, n, views, device, getattr(m, "amp", None)) for m, n in zip(models, norms)]
        for meter, probs in zip(meters, member_probs):
            meter.update(probs, labels)
        ensemble.update(ensemble_scores(member_probs), labels)
        bar.set_postfix(top1=f"{100 * ensemble.wrong1 / max(ensemble.n, 1):.2f}%")
    result = {"protocol": protocol.name, "members": [m.result() for m in meters]}
    if len(models) > 1:
        result["ensemble"] = ensemble.result()
    result["skipped"] = skipped
    return result


def _batch_that_fits(dataset, batch_size: int, device: torch.device) -> int:
    """`batch_size`, or fewer images per loader batch when that many prepared images (views) would not fit in
    memory (resnet/evaluate/memory.py), said in one line; measured on the first readable item. The errors are the
    same, as they are sums over images."""
    import sys

    from resnet.evaluate.memory import batch_that_fits, views_bytes

    for index in range(min(len(dataset), 8)) if batch_size > 1 else ():
        views = dataset[index][0]
        if isinstance(views, Unreadable):
            continue
        fits = batch_that_fits(batch_size, views_bytes(views), device)
        if fits < batch_size:
            print(f"eval: --batch-size {batch_size} does not fit in the memory there is; reading {fits} images at "
                  f"a time (the same results)", file=sys.stderr)
        return fits
    return batch_size


def check_compatible(model: nn.Module, source: str, num_classes: int, channels: int) -> None:
    """A clear error when a checkpoint's classifier or input channels do not fit the data."""
    out = model.fc.out_features if hasattr(model, "fc") else getattr(model, "num_classes", None)
    if out is not None and out != num_classes:
        raise ValueError(f"{source}: the network has {out} classes but the data has {num_classes}")
    in_channels = model.conv1.in_channels if hasattr(model, "conv1") else getattr(model, "in_channels", None)
    if in_channels is not None and in_channels != channels:
        raise ValueError(f"{source}: the network takes {in_channels}-channel images but the data has {channels}")


def run_config(path: str | Path) -> dict | None:
    """The config.json of a run directory (None for a checkpoint file or name); a damaged one is one line naming it."""
    from resnet import strictjson

    path = Path(path)
    if not (path.is_dir() and (path / "config.json").exists()):
        return None
    return strictjson.read_object(path / "config.json", fix="it is written when the run starts; restore it or "
                                  "evaluate the run's checkpoint file (checkpoints/last.safetensors) instead")


def resolve_split(data: str, split: str, config: dict | None = None) -> tuple[str, dict]:
    """(the split's name as it is, get_dataset options for it).

    An image tree holds train/ and val/ only: its held-out images are val/ and are called "val", also when asked
    for "test". A small dataset's "val" is the held-out part of its training set (45k/5k for CIFAR-10, by the
    run's seed), not its test set; a run trained without that split has no val images.
    """
    from resnet.data.datasets import TREES, VAL_FRACTION

    if data in TREES:
        return ("val" if split == "test" else split), {}
    if split == "val" and data in VAL_FRACTION:
        recipe = (config or {}).get("recipe") or {}
        if recipe.get("val_split") is False:
            raise ValueError(f"--split val: this run trained on every {data} training image (no val split), so it "
                             f"has no held-out val images; use --split test")
        return "val", {"val_split": True, "seed": int(recipe.get("seed") or 0)}
    return split, {}


def evaluate_checkpoints(checkpoints: Sequence[str | Path], data: str, *, data_dir: str | None = None,
                         split: str = "test", protocol: str = "center", scales: Sequence[int] | None = None,
                         batch_size: int = 64, device: str = "cpu", limit: int | None = None,
                         num_workers: int | None = None, progress: bool = True, download: bool = False,
                         data_options: dict | None = None, which: str = "last", load: Callable | None = None) -> dict:
    """`resnet eval`: load the checkpoints and the split, then evaluate them alone and as an ensemble.

    A run directory gives its final weights (`which="last"`) or `checkpoints/best` (`which="best"`: selected on
    the held-out split, so scoring it there is optimistic). Images get the first checkpoint's own test
    preprocessing (its style, image size and resize); `limit` evaluates a seeded, class-balanced sample of that
    many images. The result names the split as it is (see `resolve_split`). `load(path, device, which)` reads a
    network (default `resnet.checkpoint.load_model`; `resnet eval` passes `resnet.inference.load_network`, which
    also reads ONNX files).
    """
    from resnet.data import dataset_info, get_dataset
    from resnet.data.datasets import TREES
    from resnet.data.sampling import balanced_subset
    from resnet.evaluate.protocols import checkpoint_protocol
    from resnet.checkpoint import load_model, weights_path

    if which not in ("best", "last"):
        raise ValueError(f"invalid --which {which!r}; choose best or last")
    split, split_options = resolve_split(data, split, run_config(checkpoints[0]))
    models = [(load or load_model)(path, device, which) for path in checkpoints]
    options = dict(data_options or {})
    info = dataset_info(data, data_dir, download=download, **options)
    chosen = checkpoint_protocol(models[0], protocol, scales, info.style)
    if data in TREES:
        options["draft"] = chosen.min_side
    dataset = get_dataset(data, split, data_dir, transform=chosen.prepare, download=download, skip_unreadable=True,
                          **options, **split_options)
    options.pop("draft", None)
    fallback = None
    if any(getattr(m, "input_mean", None) is None for m in models):
        from resnet.data import pixel_mean

        fallback = pixel_mean(data, data_dir, download=download, **options)
    for path, model in zip(checkpoints, models):
        check_compatible(model, str(path), len(info.classes), info.channels)
    if limit:
        dataset = balanced_subset(dataset, limit, seed=0)
    norms = [input_norm(m, fallback) for m in models]
    workers = default_workers() if num_workers is None else num_workers
    result = evaluate_models(models, norms, dataset, chosen, batch_size=batch_size, device=device,
                             num_workers=workers, progress=progress)
    result.update({"data": data, "split": split, "scales": list(getattr(chosen, "scales", ())) or None})
    for member in [*result["members"], *([result["ensemble"]] if "ensemble" in result else [])]:
        for row in member["per_class"]:
            row["class"] = str(info.classes[row["index"]]) if row["index"] < len(info.classes) else row["class"]
    result["classes"] = [str(c) for c in info.classes]
    for path, model, member in zip(checkpoints, models, result["members"]):
        member.update({"checkpoint": str(path), "model": model.meta.get("model")})
        if Path(path).is_dir():  # which weights of the run were scored
            member["weights"] = str(weights_path(path, which))
    return result


def _member_name(member: dict, index: int) -> str:
    """The checkpoint as given; for a run directory also which of its weights (`runs/r56 (checkpoints/last)`)."""
    name = member.get("checkpoint", f"member {index}")
    weights = member.get("weights")
    if weights:
        name += f" ({Path(weights).parent.name}/{Path(weights).name})"
    return name


def format_results(result: dict) -> str:
    """A fixed-width table: one row per member, then the ensemble; errors in percent."""
    rows = [(_member_name(m, i), m.get("model") or "", m) for i, m in enumerate(result["members"])]
    if "ensemble" in result:
        rows.append((f"ensemble of {len(result['members'])}", "", result["ensemble"]))
    header = ("checkpoint", "model", "top-1 err %", "top-5 err %", "loss", "images")
    body = [(name, model, f"{100 * r['top1_error']:.2f}", f"{100 * r['top5_error']:.2f}", f"{r['loss']:.4f}",
             str(r["images"])) for name, model, r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    title = f"{result.get('data', '')} {result.get('split', '')} ({result['protocol']})".strip()
    lines = [title, fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in body]
    scored = result.get("ensemble") or result["members"][0]
    if scored.get("per_class") and len(scored["per_class"]) <= MAX_TABLE_CLASSES:
        from resnet.evaluate.confusion import format_per_class

        lines += ["", f"per class ({'ensemble' if 'ensemble' in result else rows[0][0]}):",
                  format_per_class(scored["per_class"])]
    skipped = result.get("skipped") or []
    if skipped:
        lines.append(f"skipped {len(skipped)} unreadable image(s): " + ", ".join(s["image"] for s in skipped))
    return "\n".join(lines)
