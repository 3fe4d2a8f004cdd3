"""CPU inference engines side by side: torch eager fp32, torch bf16 autocast + channels_last (where the CPU computes
bf16 natively), torch.compile, ONNX Runtime fp32 and ONNX Runtime int8 (QDQ, per-channel, `resnet export --int8`'s
quantiser), on ResNet-50 at 224 (batch 1 and 32) and ResNet-20 on Fashion-MNIST at 28 (batch 1 and 256).

Each engine is timed in the same run (warm-up, then the median latency of --repeats batches; images/s = batch /
median), with its ratio to torch eager fp32 at the same batch, and scored on the same held-out images: a trained
ResNet-20 (--r20-checkpoint, e.g. a `resnet train --recipe fast` run) on the 10,000 Fashion-MNIST test images; a
ResNet-50 (--r50-checkpoint) trained on a folder task (--r50-data, e.g. benchmarks/fashion_folder.py's) on its
val images, else torchvision's resnet50 with random weights, whose accuracy is "not measured" (and its int8
calibrated on random inputs). ONNX Runtime's profiler names the kernels that ran.
The load average is recorded beside every measurement: on a shared machine the ratios, not the absolute figures,
are what a run shows. Writes benchmarks/results/inference.json.

    python benchmarks/bench_inference.py --r20-checkpoint runs/r20-fast          # the full run (~20 min, 2 cores)
    python benchmarks/bench_inference.py --quick --out /tmp/inference.json        # seconds: the test suite's run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from resnet import precision
from record import write_result

RESULTS = Path(__file__).parent / "results" / "inference.json"
ENGINES = ("torch-fp32", "torch-bf16", "torch-compile", "onnxruntime-fp32", "onnxruntime-int8")


def cpu_description() -> dict:
    """lscpu's model name and the instruction sets that decide the fast paths (bf16, VNNI, AMX)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni")
    return {"model_name": fields.get("Model name", platform.processor()).strip(), "cores": os.cpu_count(),
            "flags": [f for f in wanted if f in flags], "native_bf16": precision.cpu_has_native_bf16()}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- engines

def torch_runner(model: torch.nn.Module, engine: str):
    """A function batch -> logits for a torch engine, and its set-up seconds (torch.compile's compile time)."""
    model = model.eval()
    if engine == "torch-bf16":
        model = model.to(memory_format=torch.channels_last)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x.contiguous(memory_format=torch.channels_last)).float()
        return run, 0.0
    net = torch.compile(model) if engine == "torch-compile" else model

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)
    return run, 0.0


SPIN = {"ort": True}  # --no-spin: ONNX Runtime's threads wait without spinning (a shared, oversubscribed CPU)


def ort_options(threads: int):
    from resnet.inference.onnx_net import session_options

    options = session_options(threads)
    if not SPIN["ort"]:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def ort_runner(path: Path, threads: int):
    """A function batch -> logits for an ONNX file under ONNX Runtime with `threads` intra-op threads."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), ort_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])
    return run


def ort_kernels(path: Path, x: torch.Tensor, threads: int) -> list[dict]:
    """ONNX Runtime's profile of one batch: time share per kernel (op type and provider), largest first."""
    import onnxruntime as ort

    options = ort_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "resnet-ort-profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {session.get_inputs()[0].name: x.numpy()})
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink(missing_ok=True)
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event["args"].get("op_name", "?")] += event.get("dur", 0)
    whole = sum(totals.values()) or 1.0
    return [{"op": op, "share": round(us / whole, 3)} for op, us in sorted(totals.items(), key=lambda kv: -kv[1])][:6]


def time_batches(run, x: torch.Tensor, repeats: int, warmup: int = 2) -> dict:
    """Median latency (ms) of `repeats` calls after `warmup`, images/s at that latency, the load average."""
    for _ in range(warmup):
        run(x)
    before, times = load(), []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"latency_ms": round(1000 * median, 2), "latency_min_ms": round(1000 * min(times), 2),
            "images_per_sec": round(len(x) / median, 2), "repeats": repeats, "load_before": before,
            "load_after": load()}


def top1_error(run, x: torch.Tensor | None, y: torch.Tensor | None, batch: int) -> float | None:
    """Top-1 error of an engine on normalised images x with labels y (None: not measured)."""
    if x is None:
        return None
    wrong = 0
    for i in range(0, len(x), batch):
        wrong += int((run(x[i:i + batch]).argmax(1) != y[i:i + batch]).sum())
    return wrong / len(x)


# ----------------------------------------------------------------------------- models and held-out images

def resnet20_setup(checkpoint: str | None, data_dir: str | None, eval_images: int | None, quick: bool) -> dict:
    """The Fashion-MNIST ResNet-20: a trained checkpoint with its test images and 512 calibration images of its
    training set, or (no checkpoint) random weights, random calibration and no accuracy."""
    from resnet import create_model

    if checkpoint is None:
        model = create_model("resnet20", num_classes=10, in_channels=1).eval()
        return {"model": model, "name": "resnet20 (random weights)", "size": 28, "channels": 1, "eval": None,
                "calibration": torch.randn(32 if quick else 256, 1, 28, 28), "calibration_source": "random normal",
                "accuracy": "not measured (random weights)"}
    from resnet.data import get_dataset
    from resnet.data.sampling import balanced_subset
    from resnet.inference import load_classifier
    from resnet.inference.quantize import calibration_views

    classifier = load_classifier(checkpoint, engine="torch-fp32")
    test = balanced_subset(get_dataset("fashion-mnist", "test", data_dir, transform=classifier.prepare),
                           eval_images, seed=0)
    x = classifier.norm(torch.stack([test[i][0][0] for i in range(len(test))]))
    y = torch.tensor([int(test[i][1]) for i in range(len(test))])
    calibration = calibration_views(classifier, None, "fashion-mnist", data_dir, 512)
    return {"model": classifier.net, "name": f"resnet20 ({checkpoint})", "size": 28, "channels": 1, "eval": (x, y),
            "calibration": calibration, "calibration_source": "512 Fashion-MNIST training images",
            "accuracy": f"{len(x)} Fashion-MNIST test images, centre view"}


def resnet50_setup(checkpoint: str | None, folder: str | None = None, eval_images: int | None = None) -> dict:
    """ResNet-50 at 224: a checkpoint trained on a folder task (--r50-data: its val/ split scored, 512 of its train/
    images for int8 calibration; benchmarks/fashion_folder.py makes one), a checkpoint alone (accuracy not
    measured), or torchvision's architecture (stride in the 3x3) with random weights, calibrated on random inputs."""
    if checkpoint is None:
        from resnet import create_model

        return {"model": create_model("resnet50", bottleneck_stride="3x3").eval(), "name": "resnet50 (random weights)",
                "size": 224, "channels": 3, "eval": None, "calibration": torch.randn(32, 3, 224, 224),
                "calibration_source": "random normal", "accuracy": "not measured (random weights)"}
    from resnet.inference import load_classifier

    classifier = load_classifier(checkpoint, engine="torch-fp32")
    setup = {"model": classifier.net, "name": f"resnet50 ({checkpoint})", "size": 224, "channels": 3, "eval": None,
             "calibration": torch.randn(32, 3, 224, 224), "calibration_source": "random normal",
             "accuracy": "not measured (no --r50-data)"}
    if folder is not None:
        from resnet.data import get_dataset
        from resnet.data.sampling import balanced_subset
        from resnet.inference.quantize import calibration_views

        val = get_dataset("folder", "val", folder, transform=classifier.prepare)
        if eval_images:
            val = balanced_subset(val, eval_images, seed=0)
        x = classifier.norm(torch.stack([val[i][0][0] for i in range(len(val))]))
        y = torch.tensor([int(val[i][1]) for i in range(len(val))])
        setup.update(eval=(x, y), calibration=calibration_views(classifier, None, "folder", folder, 512),
                     calibration_source=f"512 images of {folder}/train",
                     accuracy=f"{len(x)} images of {folder}/val, centre view")
    return setup


def onnx_files(setup: dict, folder: Path) -> tuple[Path, Path]:
    """The model exported as `resnet export` does (fp32, BN folded, checked), and its int8 QDQ file."""
    from resnet.export import export_onnx
    from resnet.inference.quantize import quantize_onnx

    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    style = "small" if setup["size"] < 64 else "imagenet"
    export_onnx(setup["model"], fp32, image_size=setup["size"], meta={"model": setup["name"], "style": style})
    quantize_onnx(fp32, int8, setup["calibration"])
    return fp32, int8


# ----------------------------------------------------------------------------- the run

def bench_model(setup: dict, batches: list[int], engines: list[str], threads: int, repeats: int,
                eval_batch: int) -> dict:
    """Every engine on one model: timings per batch (with the ratio to torch fp32), top-1 error, ORT kernels."""
    rows, notes, kernels = [], {}, {}
    shape = (setup["channels"], setup["size"], setup["size"])
    inputs = {b: torch.randn(b, *shape, generator=torch.Generator().manual_seed(b)) for b in batches}
    x_eval, y_eval = setup["eval"] or (None, None)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        files = dict(zip(("onnxruntime-fp32", "onnxruntime-int8"), onnx_files(setup, Path(tmp))))
        for engine in engines:
            if engine == "torch-bf16" and not precision.cpu_has_native_bf16():
                notes[engine] = "skipped: this CPU has no native bf16 (AVX512-BF16 or AMX)"
                continue
            start = time.perf_counter()
            if engine in files:
                run = ort_runner(files[engine], threads)
                kernels[engine] = ort_kernels(files[engine], inputs[batches[-1]], threads)
            else:
                run, _ = torch_runner(setup["model"], engine)
            run(inputs[batches[0]])  # torch.compile compiles here (and per new batch size in the warm-up)
            setup_s = time.perf_counter() - start
            error = top1_error(run, x_eval, y_eval, eval_batch)
            for b in batches:
                row = {"model": setup["name"], "engine": engine, "batch": b, **time_batches(run, inputs[b], repeats),
                       "top1_error": error, "setup_s": round(setup_s, 1)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    for row in rows:
        base = next((r for r in rows if r["engine"] == "torch-fp32" and r["batch"] == row["batch"]), None)
        row["ratio_to_torch_fp32"] = round(row["images_per_sec"] / base["images_per_sec"], 2) if base else None
    return {"rows": rows, "notes": notes, "ort_kernels_at_largest_batch": kernels,
            "accuracy": setup["accuracy"], "int8_calibration": setup["calibration_source"]}


def provenance(args: argparse.Namespace, threads: int) -> dict:
    import onnxruntime

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    return {"command": command, "commit": commit, "threads": threads,
            "ort_spinning": SPIN["ort"], "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "python": platform.python_version()}, "cpu": cpu_description(), "quick": args.quick}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--r20-checkpoint", help="a trained Fashion-MNIST ResNet-20 (run directory or checkpoint)")
    p.add_argument("--r50-checkpoint", help="a ResNet-50 checkpoint (default: random weights)")
    p.add_argument("--r50-data", help="the ResNet-50's folder task (train/, val/): its val images are scored")
    p.add_argument("--r50-eval-images", type=int, default=1000,
                   help="score the ResNet-50 on a balanced sample of N val images (default: 1000; 0: all)")
    p.add_argument("--data-dir", help="Fashion-MNIST folder (default: the usual places)")
    p.add_argument("--eval-images", type=int, help="score the ResNet-20 on a balanced sample of N test images "
                                                  "(default: all 10,000)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads (default: the cores)")
    p.add_argument("--repeats", type=int, default=10, help="timed batches per engine and batch size")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--models", nargs="+", default=["resnet50", "resnet20"], choices=["resnet50", "resnet20"])
    p.add_argument("--quick", action="store_true", help="seconds: ResNet-20 only, random weights, batches 1 and 8, "
                                                        "no torch.compile (the test suite's run)")
    p.add_argument("--no-spin", action="store_true",
                   help="ONNX Runtime threads wait without spinning; run with OMP_WAIT_POLICY=PASSIVE for torch's "
                        "(on a shared CPU spinning threads fight the other load: both are recorded)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    SPIN["ort"] = not args.no_spin
    threads = args.threads
    torch.set_num_threads(threads)
    result = {"benchmark": "CPU inference engines (bench_inference.py)", **provenance(args, threads),
              "load_start": load(), "models": {}}
    if args.quick:
        setups = [(resnet20_setup(None, None, None, True), [1, 8], 256)]
        engines, repeats = [e for e in args.engines if e != "torch-compile"], 2
    else:
        setups = []
        if "resnet20" in args.models:
            setups.append(lambda: (resnet20_setup(args.r20_checkpoint, args.data_dir, args.eval_images, False),
                                   [1, 256], 256))
        if "resnet50" in args.models:
            setups.append(lambda: (resnet50_setup(args.r50_checkpoint, args.r50_data, args.r50_eval_images), [1, 32], 32))
        engines, repeats = args.engines, args.repeats
    for make in setups:
        setup, batches, eval_batch = make() if callable(make) else make
        result["models"][setup["name"]] = bench_model(setup, batches, engines, threads, repeats, eval_batch)
        result["load_end"] = load()
        write_result(args.out, result, echo=False)  # each model's rows as soon as they exist
    print(table(result))
    return result


def table(result: dict) -> str:
    """Markdown: model, engine, batch, images/s and ratio to torch fp32 at the median latency and at the best one
    (on a shared CPU the best is the closer estimate of the engine's own cost), top-1 error."""
    lines = [f"CPU: {result['cpu']['model_name']} ({', '.join(result['cpu']['flags'])}), {result['threads']} threads, "
             f"load {result['load_start']} -> {result.get('load_end')}", "",
             "| model | engine | batch | images/s | latency ms (median / best) | x torch fp32 (median / best) "
             "| top-1 err % |", "|---|---|---|---|---|---|---|"]
    for model in result["models"].values():
        rows = model["rows"]
        for r in rows:
            base = next((b for b in rows if b["engine"] == "torch-fp32" and b["batch"] == r["batch"]), None)
            best = f"{base['latency_min_ms'] / r['latency_min_ms']:.2f}" if base else "-"
            error = "-" if r["top1_error"] is None else f"{100 * r['top1_error']:.2f}"
            lines.append(f"| {r['model'].split(' (')[0]} | {r['engine']} | {r['batch']} | {r['images_per_sec']:.1f} | "
                         f"{r['latency_ms']:.1f} / {r['latency_min_ms']:.1f} | {r['ratio_to_torch_fp32']} / {best} "
                         f"| {error} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
