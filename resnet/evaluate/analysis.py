"""Layer responses (the paper's Fig. 7): the std of each 3x3 layer's output after BN, before addition/ReLU.

The responses are read with forward hooks on the BN that follows each 3x3 conv of a block
(BasicBlock: bn1 and bn2; Bottleneck: bn2), in network order. The stem conv is not part of any
residual function and is left out, so a CIFAR net of 6n+2 layers gives 6n points. The std is taken
over all values (images, channels, positions) of a layer's response, accumulated in float64 over
batches, so it equals `torch.cat(responses).std()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from resnet import strictjson
from resnet.atomic import atomic_write, atomic_write_text
from resnet.data import dataset_info, get_dataset, pixel_mean
from resnet.data.sampling import balanced_subset
from resnet.evaluate.preprocess import input_norm
from resnet.evaluate.protocols import checkpoint_protocol
from resnet.evaluate.runner import check_compatible
from resnet.models.blocks import BasicBlock, Bottleneck
from resnet.weights import load_model


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(name, BN) for every 3x3 conv in the blocks, in network order."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            layers += [(f"{name}.bn1", module.bn1), (f"{name}.bn2", module.bn2)]
        elif isinstance(module, Bottleneck):
            layers.append((f"{name}.bn2", module.bn2))
    return layers


class _RunningStd:
    """Count, sum and sum of squares in float64: the unbiased std of everything seen."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        x = output.detach().double()
        self.n += x.numel()
        self.total += float(x.sum())
        self.squares += float((x * x).sum())

    def std(self) -> float:
        mean = self.total / self.n
        var = (self.squares - self.n * mean * mean) / max(self.n - 1, 1)
        return max(var, 0.0) ** 0.5


@torch.no_grad()
def layer_responses(model: nn.Module, batches: Iterable[torch.Tensor], device: str | torch.device = "cpu") -> list[dict]:
    """[{index, layer, std}] for each 3x3 layer of `model` over the (already normalised) input batches."""
    model = model.to(device).eval()
    layers = response_layers(model)
    if not layers:
        raise ValueError("the network has no residual or plain blocks with 3x3 convs to analyse")
    stats = [_RunningStd() for _ in layers]
    handles = [bn.register_forward_hook(s) for (_, bn), s in zip(layers, stats)]
    try:
        seen = 0
        for x in batches:
            model(x.to(device))
            seen += len(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("no images to measure the layer responses on")
    return [{"index": i + 1, "layer": name, "std": s.std()} for i, ((name, _), s) in enumerate(zip(layers, stats))]


def plot_responses(networks: Sequence[dict], path: str | Path) -> Path:
    """Fig. 7 style: std per layer in network order (top) and sorted by magnitude (bottom), a line per net."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7))
    for net in networks:
        stds = [layer["std"] for layer in net["layers"]]
        style = "-" if net.get("residual", True) else "--"
        top.plot(range(1, len(stds) + 1), stds, style, label=net["label"], linewidth=1.2)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), style, label=net["label"], linewidth=1.2)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    top.set_title("responses of the 3x3 layers (after BN, before addition/ReLU)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120))
    plt.close(fig)
    return path


def analyze_responses(checkpoints: Sequence[str | Path], data: str, *, data_dir: str | None = None,
                      split: str = "test", images: int = 1000, batch_size: int = 100, device: str = "cpu",
                      out: str | Path = "responses", progress: bool = True, download: bool = False,
                      data_options: dict | None = None) -> dict:
    """`resnet analyze responses`: each checkpoint's layer responses on `images` images of a split
    (a seeded, class-balanced sample).

    Images go through the `center` test protocol and the checkpoint's own normalisation.
    Writes `responses.json` and `responses.png` under `out`.
    """
    from tqdm import tqdm

    networks = []
    for path in checkpoints:
        model = load_model(path, device)
        meta = model.meta
        fallback = None
        if model.input_mean is None:
            fallback = pixel_mean(data, data_dir, download=download, **(data_options or {}))
        info = dataset_info(data, data_dir, download=download, **(data_options or {}))
        check_compatible(model, str(path), len(info.classes), info.channels)
        norm = input_norm(model, fallback).to(device)
        protocol = checkpoint_protocol(model, "center")
        dataset = get_dataset(data, split, data_dir, transform=protocol.prepare, download=download,
                              **(data_options or {}))
        dataset = balanced_subset(dataset, images, seed=0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        batches = (norm(views.flatten(0, 1).to(device)) for views, _ in
                   tqdm(loader, desc=f"responses {meta.get('model')}", disable=None if progress else True))
        layers = layer_responses(model, batches, device)
        networks.append({"checkpoint": str(path), "model": meta.get("model"), "label": meta.get("model") or str(path),
                         "residual": bool(model.spec.residual), "images": len(dataset), "layers": layers})
    labels = [n["label"] for n in networks]
    for net in networks:
        if labels.count(net["label"]) > 1:
            net["label"] = f"{net['label']} ({net['checkpoint']})"
    out = Path(out)
    result = {"data": data, "split": split, "networks": networks}
    atomic_write_text(out / "responses.json", strictjson.dumps(result, indent=2))
    plot_responses(networks, out / "responses.png")
    return result
