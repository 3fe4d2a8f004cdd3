"""The paper's Table 1 view of a network: each stage's output size, blocks, parameters, multiply-adds.

Multiply-adds are counted by running the model under torch.utils.flop_counter (FLOPs / 2),
one piece at a time, so every number comes from the real modules rather than a formula.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet.models import build_model


@dataclass
class Row:
    name: str
    output_size: str
    layers: str
    params: int
    macs: int


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _count_macs(fn, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    with FlopCounterMode(display=False) as counter:
        y = fn(x)
    return y, counter.get_total_flops() // 2


def _describe_stage(stage: nn.Sequential) -> str:
    block = stage[0]
    kernels = [getattr(block, c) for c in ("conv1", "conv2", "conv3") if hasattr(block, c)]
    inner = ", ".join(f"{c.kernel_size[0]}x{c.kernel_size[1]} {c.out_channels}" for c in kernels)
    return f"[{inner}] x{len(stage)}"


def summarize(model: nn.Module, input_size: int | None = None) -> list[Row]:
    """Rows for conv1, each stage, the pooled classifier and the total, on a 1-image input."""
    family = model.spec.family
    size = input_size or (224 if family == "imagenet" else 32)
    in_channels = model.conv1.in_channels
    x = torch.zeros(1, in_channels, size, size)
    was_training = model.training
    model.eval()
    rows = []
    with torch.no_grad():
        x, macs = _count_macs(model.stem, x)
        stem = f"{model.conv1.kernel_size[0]}x{model.conv1.kernel_size[0]} {model.conv1.out_channels}"
        stem += f", stride {model.conv1.stride[0]}" + (", 3x3 max pool /2" if family == "imagenet" else "")
        stem_params = count_params(model.conv1) + count_params(model.bn1)
        rows.append(Row("conv1", _hw(x), stem, stem_params, macs))
        for name, stage in zip(model.stage_names, model.stages):
            x, macs = _count_macs(stage, x)
            rows.append(Row(name, _hw(x), _describe_stage(stage), count_params(stage), macs))
        _, macs = _count_macs(model.classify, x)
        rows.append(Row("fc", "1x1", f"average pool, {model.fc.out_features}-d fc", count_params(model.fc), macs))
    model.train(was_training)
    rows.append(Row("total", "", "", sum(r.params for r in rows), sum(r.macs for r in rows)))
    return rows


def _hw(x: torch.Tensor) -> str:
    return f"{x.shape[-2]}x{x.shape[-1]}"


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_table(name: str, rows: list[Row]) -> str:
    """A fixed-width text table in the order of the paper's Table 1."""
    header = ("layer", "output", "blocks", "params", "mult-adds")
    body = [(r.name, r.output_size, r.layers, f"{r.params:,}", _human(r.macs)) for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [name, fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in body[:-1]]
    lines += [fmt.format(*("-" * w for w in widths)), fmt.format(*body[-1])]
    return "\n".join(lines)


def summary(name: str, input_size: int | None = None, as_json: bool = False, **options) -> str:
    """The `resnet summary` output for a registered model name."""
    model = build_model(name, **options)
    rows = summarize(model, input_size)
    if as_json:
        return json.dumps({"model": name, "options": model.options, "rows": [asdict(r) for r in rows]}, indent=2)
    return format_table(name, rows)
