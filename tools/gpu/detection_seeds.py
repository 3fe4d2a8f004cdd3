"""Run the detection suite's (seed, backbone) pairs as parallel processes on one GPU: boxes, then masks
reusing the box suite's backbones; the suite command itself then writes each report (every stage DONE)."""
import dataclasses
import multiprocessing as mp
import signal
import sys
import time
from pathlib import Path

import torch

from resnet.detection.scenes import make_fashion_scenes
from resnet.reproduce import detection as D
from resnet.reproduce.suite import check_suite


def pair(seed: int, kind: str, boxes: str, masks: str, device: str, budget: float) -> None:
    torch.set_num_threads(2)
    b = D.DetectionBudget()
    pretrain, detect = D.recipes(budget, device, b)
    stage = D.Stage(f"{kind}{b.depth}", seed, dataclasses.replace(pretrain, seed=seed),
                    dataclasses.replace(detect, seed=seed))
    t = time.time()
    D._train_pair(stage, kind, Path(boxes), "fashion-scenes", False, None, None, False)
    print(f"{kind} seed {seed}: boxes done in {time.time() - t:.0f} s", flush=True)
    t = time.time()
    D._train_pair(stage, kind, Path(masks), "fashion-scenes", True, None, boxes, False)
    print(f"{kind} seed {seed}: masks done in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    work, device, seeds, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    boxes, masks = f"{work}/det-boxes", f"{work}/det-masks"
    make_fashion_scenes(progress=False)
    b = D.DetectionBudget()
    _, detect = D.recipes(budget, device, b)
    for out in (boxes, masks):
        Path(out).mkdir(parents=True, exist_ok=True)
        check_suite(Path(out), "fashion-scenes", budget, detect)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=pair, args=(s, k, boxes, masks, device, budget)) for s in range(seeds) for k in ("plain", "resnet")]
    for p in procs:
        p.start()

    def stop(signum, frame):  # a time-out: each run saves and stops, as one `resnet train` does
        for p in procs:
            if p.is_alive():
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    for p in procs:
        p.join()
    print("exit codes", [p.exitcode for p in procs], flush=True)
