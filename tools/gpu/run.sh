#!/bin/bash
# The script of the first H200 call (docs/notes/2026-12-h200-first-run.md), for the next GPU session to adapt.
# Needs, in an ignored folder carried with the call (`carry: [".gpu"]`): .gpu/whl/*.whl (pycocotools, fastapi,
# starlette, uvicorn, python-multipart, pydantic, pydantic-core, annotated-types, typing-inspection, captum for
# Python 3.12) and .gpu/data/fashion-mnist/*.gz. It ran past 575 s: give the benchmark its own call, or less to do.
# One device call. Background: detection over seeds (issue 38) and the device-neutral tests on cuda (issue 39).
# Foreground: ResNet-50 on a Fashion-MNIST folder at 224 (issue 35's trained net), the CUDA training variants and
# the sync check (issue 39). Then, alone on the GPU, the training benchmark. Records to $OUT (8 files at most).
set -u
export PYTHONUNBUFFERED=1 RESNET_DATA=/tmp/rd MPLBACKEND=Agg
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
W=/tmp/w; mkdir -p $W /tmp/rd/fashion-mnist
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
cp .gpu/data/fashion-mnist/*.gz /tmp/rd/fashion-mnist/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $W/device.txt
python3 -c "import torch,torchvision,os;print('torch',torch.__version__,'torchvision',torchvision.__version__,torch.cuda.get_device_name(),'cpus',os.cpu_count())" | tee -a $W/device.txt
python3 -c "from resnet.detection.scenes import make_fashion_scenes; print(make_fashion_scenes())"
el "detection suites and cuda tests start (background)"
timeout -k 30 -s TERM ${DET_S:-280} python3 tools/gpu/detection_seeds.py $W cuda 3 1.0 > $W/det.log 2>&1 &
DET=$!
(RESNET_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider -n 4 -m "not slow" tests/test_train.py \
  tests/test_detection_train.py tests/test_modern_recipe.py > $W/tests_cuda.log 2>&1; echo "rc=$?" >> $W/tests_cuda.log) &
TESTS=$!
python3 benchmarks/fashion_folder.py /tmp/ff --train 12000 --val 2000
el "resnet50 on the folder at 224"
timeout 170 python3 -m resnet train --model resnet50 --data folder --data-dir /tmp/ff --recipe fast --style imagenet \
  --image-size 224 --epochs 8 --batch-size 256 --device cuda --out $W/r50 --no-progress > $W/r50.log 2>&1
el "r50 rc=$? $(grep -E '^(device|done)' $W/r50.log)"
python3 - <<'PY'
import os, subprocess
from safetensors import safe_open
from safetensors.torch import load_file, save_file
p = "/tmp/w/r50/checkpoints/last.safetensors"
if os.path.exists(p):
    meta = safe_open(p, "pt").metadata()
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in load_file(p).items()}, "/tmp/r50h.safetensors", metadata=meta)
    subprocess.run(["split", "-b", "15M", "-d", "/tmp/r50h.safetensors", os.environ["OUT"] + "/r50h.part"], check=True)
    print("r50 weights in fp16 for the trip back:", os.path.getsize("/tmp/r50h.safetensors"))
PY
for v in "bf16:" "fp16:--amp-dtype fp16" "fp32:--no-amp" "nocl:--no-channels-last" "compile:--compile"; do
  n=${v%%:*}; o=${v#*:}
  timeout 100 python3 -m resnet train --model resnet20 --data fashion-mnist --recipe fast --iters 400 --eval-every 400 \
    --device cuda --no-progress --out $W/t-$n $o > $W/t-$n.log 2>&1; rc=$?
  el "train $n rc=$rc $(tail -1 $W/t-$n/metrics.jsonl 2>/dev/null | python3 -c 'import json,sys;r=json.loads(sys.stdin.read() or "{}");print({k:r.get(k) for k in ("step","test_top1_error","images_per_sec","wall_time")})')"
  [ $rc = 0 ] || tail -3 $W/t-$n.log
done
timeout 120 python3 tools/gpu/sync_check.py $W/sync 2>&1 | grep -v Warning | tail -4
wait $DET; el "detection driver rc=$?"; sleep 5; pkill -f spawn_main; tail -8 $W/det.log
for m in "" "--masks --pretrained $W/det-boxes"; do
  o=$W/det-boxes; [ -n "$m" ] && o=$W/det-masks
  timeout 40 python3 -m resnet reproduce detection --data fashion-scenes --seeds 3 --device cuda --out $o --no-progress $m 2>&1 | tail -12
done
wait $TESTS; el "tests: $(tail -2 $W/tests_cuda.log | tr '\n' ' ')"
el "gpu benchmark (alone)"
timeout ${BENCH_S:-150} python3 benchmarks/bench_gpu.py --parts resnet56 resnet50 --small-steps 200 --out $OUT/gpu.json 2>&1 | grep "^{" | tail -12
tar czf $OUT/records.tgz -C $W --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoints' . 2>/dev/null
ls -la $OUT; el done
