"""GPU training throughput: our ResNet-50 training step against torchvision's resnet50 driven by a plain step,
and concurrent small-net trainings on one GPU (what `resnet reproduce --jobs` should default to there).

Part 1, ResNet-50 at 224, batch 256, synthetic images and labels made once on the device, bf16 autocast +
channels_last, SGD (momentum 0.9, weight decay 1e-4): "ours" is `resnet.create_model("resnet50")` under the
step our trainer runs (resnet/train/engine.py `Trainer.run_step` with classification's `train_step`: the lr set
per group, autocast forward and loss, the error statistics kept on the device, GradScaler (a no-op in bf16),
zero_grad(set_to_none), backward, step); "torchvision" is `torchvision.models.resnet50()` under a plain step
(forward, loss, zero_grad, backward, step). Each eager and under `torch.compile`, run back to back; images/s
from the median of --rounds timed blocks (CUDA-synchronised). Public anchors: NVIDIA's ResNet-50 2,470
images/s on an A100 80GB with AMP; about 2,790 on an H100 SXM (Lambda).
Part 2, the Fashion-MNIST ResNet-20 and ResNet-56 (width 16, 1x28x28, batch 128): 1, 4 and 8 processes training
at once on the one GPU, each its own synthetic data on the device; aggregate images/s and the ratio to 1 process.
Each part is guarded: a failure is recorded as one line and the run goes on. Writes benchmarks/results/gpu.json.
Usage: python benchmarks/bench_gpu.py [--device cuda] [--batch-size 256] [--jobs 1 4 8] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from record import write_result  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gpu.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def our_step(model, optimizer, scaler, x, y, lr: float, device: torch.device):
    """What Trainer.run_step + ClassificationTask.train_step do for one batch (no EMA, mixing or erasing)."""
    from resnet import precision

    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    x = x.contiguous(memory_format=torch.channels_last)
    with precision.autocast(device, torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    with torch.no_grad():
        wrong = (logits.argmax(1) != y).sum()
        stats = torch.stack([loss.detach().double() * len(y), wrong.double(),
                             torch.full((), len(y), dtype=torch.float64, device=y.device)])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return stats


def plain_step(model, optimizer, x, y, device: torch.device):
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_step(step, device: torch.device, warmup: int, steps: int, rounds: int) -> float:
    """Median seconds per step over `rounds` blocks of `steps` steps after `warmup` steps."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def resnet50_part(args, device: torch.device) -> dict:
    import torchvision

    from resnet import create_model

    b = args.batch_size
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, 3, 224, 224, device=device, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (b,), device=device, generator=gen)
    rows = []
    for compiled in ([False, True] if args.compile else [False]):
        for impl in ("ours", "torchvision"):
            name = f"{impl}{' compiled' if compiled else ''}"
            model = None
            try:
                model = create_model("resnet50", num_classes=1000) if impl == "ours" else torchvision.models.resnet50()
                model = model.to(device).to(memory_format=torch.channels_last).train()
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
                net = torch.compile(model) if compiled else model
                if impl == "ours":
                    scaler = torch.amp.GradScaler(device.type, enabled=False)
                    step = lambda: our_step(net, optimizer, scaler, x, y, 0.1, device)  # noqa: E731
                else:
                    step = lambda: plain_step(net, optimizer, x, y, device)  # noqa: E731
                warmup = args.warmup * (3 if compiled else 1)
                seconds = time_step(step, device, warmup, args.steps, args.rounds)
                row = {"impl": name, "images_per_s": round(b / seconds, 1), "ms_per_step": round(1000 * seconds, 2)}
            except Exception as error:  # noqa: BLE001 - recorded, the next case runs
                first = str(error).splitlines()[0] if str(error) else ""
                row = {"impl": name, "error": f"{type(error).__name__}: {first}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    by = {r["impl"]: r.get("images_per_s") for r in rows}
    ratios = {k: round(by[f"ours{k}"] / by[f"torchvision{k}"], 3) for k in ("", " compiled")
              if by.get(f"ours{k}") and by.get(f"torchvision{k}")}
    return {"model": "resnet50", "batch": b, "image": "3x224x224 synthetic on the device", "precision":
            "bf16 autocast + channels_last", "rows": rows, "ours_over_torchvision": ratios}


def child(model_name: str, batch: int, steps: int, device: str, start_at: float) -> None:
    """One of the concurrent trainings: prints its images/s."""
    from resnet import create_model

    dev = torch.device(device)
    model = create_model(model_name, num_classes=10, in_channels=1).to(dev).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    x = torch.randn(batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    for _ in range(20):
        our_step(model, optimizer, scaler, x, y, 0.1, dev)
    sync(dev)
    time.sleep(max(0.0, start_at - time.time()))  # all start together
    start = time.perf_counter()
    for _ in range(steps):
        our_step(model, optimizer, scaler, x, y, 0.1, dev)
    sync(dev)
    print(json.dumps({"images_per_s": batch * steps / (time.perf_counter() - start)}), flush=True)


def jobs_part(args, model_name: str) -> dict:
    rows = []
    for jobs in args.jobs:
        start_at = time.time() + 20 + 2 * jobs  # time for every process to start and warm up
        cmd = [sys.executable, __file__, "--child", model_name, str(args.small_batch_size), str(args.small_steps),
               args.device, str(start_at)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
        rates = []
        for p in procs:
            out, _ = p.communicate(timeout=300)
            rates += [json.loads(line)["images_per_s"] for line in out.splitlines() if line.startswith("{")]
        row = {"jobs": jobs, "finished": len(rates), "images_per_s": round(sum(rates), 1),
               "per_process": [round(r, 1) for r in rates]}
        rows.append(row)
        print(json.dumps({"model": model_name, **row}), flush=True)
    base = rows[0]["images_per_s"] if rows and rows[0]["jobs"] == 1 else None
    for row in rows:
        row["ratio_to_1"] = round(row["images_per_s"] / base, 2) if base else None
    return {"model": model_name, "batch": args.small_batch_size, "steps": args.small_steps, "rows": rows}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks (the median is kept)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--small-batch-size", type=int, default=128)
    p.add_argument("--small-steps", type=int, default=300)
    p.add_argument("--parts", nargs="+", default=["resnet50", "resnet20", "resnet56"])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    device = torch.device(args.device)
    result = {"benchmark": "GPU training throughput (bench_gpu.py)", "device": args.device,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "command": " ".join(["python", "benchmarks/bench_gpu.py", *sys.argv[1:]]),
              "parts": {}}
    for part in args.parts:
        try:
            result["parts"][part] = resnet50_part(args, device) if part == "resnet50" else jobs_part(args, part)
        except Exception as error:  # noqa: BLE001 - recorded, the next part runs
            result["parts"][part] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
        write_result(args.out, result, echo=False)
    print(json.dumps(result["parts"], indent=1))


if __name__ == "__main__":
    main()
