"""Steady-state training steps on CUDA under torch.cuda.set_sync_debug_mode("error"): any host sync raises."""
import sys

import torch

from resnet.train import engine
from resnet.train.loop import train
from resnet.train.recipes import get_recipe

seen = {"steps": 0, "checked": 0}
original = engine.Trainer.run_step


def run_step(self, batch):
    seen["steps"] += 1
    if 20 <= seen["steps"] < 80:
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
            seen["checked"] += 1
    return original(self, batch)


engine.Trainer.run_step = run_step
options = dict(iters=120, device="cuda", eval_every=10_000)
for extra in ({}, {"compile": True}):
    seen.update(steps=0, checked=0)
    try:
        train("resnet20", "fashion-mnist", recipe=get_recipe("fast", **options, **extra), out=f"{sys.argv[1]}-{len(extra)}",
              progress=False)
        print(f"sync check {extra or 'eager'}: {seen['checked']} steady-state steps under sync debug mode 'error': no sync",
              flush=True)
    except Exception as error:  # noqa: BLE001 - reported, the next case runs
        print(f"sync check {extra or 'eager'}: FAILED at step {seen['steps']}: {type(error).__name__}: "
              f"{str(error).splitlines()[0] if str(error) else ''}", flush=True)
