#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md (issue 15) on a lent GPU machine, in one call of its `run`
# tool: the region losses' share of a 512² step, our step against HF MaskFormer's (when the
# machine has transformers), and step time, memory and schedule hours of every config with
# supervised, rc2l and unimatch, all under bf16 autocast. Needs no carry (synthetic images,
# random-init models). Set RC2L_COMMIT to the commit it runs (the machine has no git).
# Writes $OUT/docs/benchmarks.{md,json}: the committed files with the cuda blocks replaced —
# copy them over docs/ and read the diff. PER_SCRIPT: seconds each script may take.
# A dry run here: PY=.venv/bin/python BENCH_ARGS="--device cpu --quick" OUT=/tmp/bench bash scripts/device_bench.sh
set -u
PY=${PY:-python3}
read -ra ARGS <<<"${BENCH_ARGS:---device cuda --amp}"
OUT=${OUT:-/tmp/out}
PER_SCRIPT=${PER_SCRIPT:-150}
mkdir -p "$OUT/docs"
cp docs/benchmarks.md docs/benchmarks.json "$OUT/docs/"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/device.txt"

bench() { # name, args...: one script, its own time limit, its exit status in the log
  local name=$1
  shift
  echo "== $name $*"
  timeout "$PER_SCRIPT" "$PY" "benchmarks/$name.py" "${ARGS[@]}" --out "$OUT/docs" "$@"
  echo "== $name: exit $?"
}
{
  bench region_vs_pixel
  bench memory --methods supervised rc2l unimatch
  if "$PY" -c "import transformers" 2>/dev/null; then
    bench vs_hf_maskformer --size 512 --no-onnx
  else
    echo "== vs_hf_maskformer: skipped, transformers is not installed on this machine"
  fi
} 2>&1 | tee "$OUT/bench.log"
