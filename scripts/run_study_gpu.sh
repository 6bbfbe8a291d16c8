#!/usr/bin/env bash
# Runs the GPU work of the docs on one CUDA machine, from the repository root:
#
#   bench  the GPU rows of docs/benchmarks.md: benchmarks/region_vs_pixel.py, benchmarks/memory.py
#          (supervised, rc2l, unimatch) and benchmarks/vs_hf_maskformer.py (--size 512 --no-onnx; only
#          when transformers is installed), each with $BENCH_ARGS (default "--device cuda --amp").
#          They write into copies of docs/benchmarks.{md,json} in OUT/bench/ (only their own blocks
#          change there): copy those over docs/ to keep the new rows.
#   study  rc2l compare CONFIG --preset study --out OUT/study --jobs N [--budget S] [COMPARE_ARGS...]:
#          the region-vs-pixel study's rows (docs/results.md), N runs at once on the GPU.
#
# Usage:
#   scripts/run_study_gpu.sh [--bench] [--study] [--config FILE] [--out DIR] [--jobs N]
#                            [--budget SECONDS] [--mps] [--archive] [-- COMPARE_ARGS...]
#
#   --bench / --study  which parts to run (default: both; bench first, so its timings have the GPU to
#                      themselves)
#   --config FILE      the study's training config (default configs/camvid.yaml)
#   --out DIR          where everything goes (default runs/study_gpu): bench/, study/, *.log, device.txt
#   --jobs N           study runs at once (default 4); each gets train.threads = CPU cores / N
#   --budget SECONDS   start a study run only if it is projected to finish in time; stop (with a
#                      checkpoint) what still runs at the end: the same command later resumes them
#   --mps              start the CUDA MPS daemon for the study (runs sharing the GPU then execute their
#                      kernels concurrently) and stop it at the end
#   --archive          also write OUT/study.tar.gz: every study run's metrics, config and log (no weights)
#   COMPARE_ARGS       for rc2l compare: key=value overrides of every row first (data.root=/data/camvid
#                      data.split=1_8), then its options (--only, --seeds, --row 'NAME: k=v ...',
#                      --run ROW:SEED, --preset fair)
#
# Environment: PY (the Python with rc2l installed, default python3), BENCH_ARGS, PER_SCRIPT (seconds
# each benchmark script may take, default 0 = no limit). Exit status: 1 if any part failed.
#
# Examples:
#   scripts/run_study_gpu.sh --study --jobs 8 --budget 3000 -- data.root=/data/camvid data.split=1_8
#   scripts/run_study_gpu.sh --study -- data.root=/data/camvid data.split=1_8 --run 'rc2l:1' --run 'unimatch:1'
#   PY=.venv/bin/python BENCH_ARGS="--device cpu --quick" scripts/run_study_gpu.sh --bench --out /tmp/gpu  # a dry run on a CPU
set -u

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

PY=${PY:-python3}
read -ra BENCH <<<"${BENCH_ARGS:---device cuda --amp}"
PER_SCRIPT=${PER_SCRIPT:-0}
CONFIG=configs/camvid.yaml
OUT=runs/study_gpu
JOBS=4
BUDGET=
RUN_BENCH=0
RUN_STUDY=0
MPS=0
ARCHIVE=0
while [ $# -gt 0 ]; do
  case $1 in
    --bench) RUN_BENCH=1 ;;
    --study) RUN_STUDY=1 ;;
    --config) CONFIG=$2; shift ;;
    --out) OUT=$2; shift ;;
    --jobs) JOBS=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --mps) MPS=1 ;;
    --archive) ARCHIVE=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown argument '$1' (arguments for rc2l compare go after --)" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
OVERRIDES=() # rc2l compare takes its key=value overrides right after the config, options after them
while [ $# -gt 0 ] && [[ $1 != -* ]]; do
  OVERRIDES+=("$1")
  shift
done
COMPARE_OPTIONS=("$@")
if [ $RUN_BENCH = 0 ] && [ $RUN_STUDY = 0 ]; then RUN_BENCH=1 RUN_STUDY=1; fi
if [ ! -f rc2l/__init__.py ]; then echo "error: run from the repository root" >&2; exit 2; fi

mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FAILED=0

{
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  else
    echo "gpu: none found (no nvidia-smi)"
  fi
  echo "cpu cores: $(nproc)"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'unknown (no git here)')"
} | tee "$OUT/device.txt"

bench() { # name, args...: one benchmark script with its own time limit; its exit status in the log
  local name=$1 rc
  shift
  echo "== $name $*"
  timeout "$PER_SCRIPT" "$PY" "benchmarks/$name.py" "${BENCH[@]}" --out "$OUT/bench" "$@"
  rc=$?
  echo "== $name: exit $rc"
  [ $rc = 0 ] || FAILED=1
}

if [ $RUN_BENCH = 1 ]; then
  mkdir -p "$OUT/bench"
  cp docs/benchmarks.md docs/benchmarks.json "$OUT/bench/"
  {
    bench region_vs_pixel
    bench memory --methods supervised rc2l unimatch
    if "$PY" -c "import transformers" 2>/dev/null; then
      bench vs_hf_maskformer --size 512 --no-onnx
    else
      echo "== vs_hf_maskformer: skipped, transformers is not installed"
    fi
  } > >(tee "$OUT/bench.log") 2>&1
fi

if [ $RUN_STUDY = 1 ]; then
  if [ $MPS = 1 ]; then
    if nvidia-cuda-mps-control -d && timeout 60 "$PY" -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
      trap 'echo quit | nvidia-cuda-mps-control' EXIT
      echo "MPS: on" | tee -a "$OUT/device.txt"
    else
      echo quit | nvidia-cuda-mps-control 2>/dev/null
      echo "MPS: could not be started, off" | tee -a "$OUT/device.txt"
    fi
  fi
  "$PY" -m rc2l compare "$CONFIG" "${OVERRIDES[@]}" --preset study --out "$OUT/study" --jobs "$JOBS" \
    ${BUDGET:+--budget "$BUDGET"} "${COMPARE_OPTIONS[@]}" > >(tee "$OUT/study.log") 2>&1 || FAILED=1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv | tee -a "$OUT/device.txt"
  fi
  if [ $ARCHIVE = 1 ]; then
    tar czf "$OUT/study.tar.gz" --exclude='*.safetensors' --exclude='state.pt' --exclude='events.*' \
      -C "$OUT" study || FAILED=1
  fi
fi
exit $FAILED
