#!/usr/bin/env bash
# The one device-machine check of the CUDA kernels: build the extension, run the GPU tests, run the benchmark
# (tools/bench_layer.py --device cuda: B=2^20 512x512 at G=20 and G=8, then the CPU shapes), optionally a
# compute-sanitizer pass, then print a short summary last. Full logs go under $OUT (default /tmp/gpu_check_out).
# The whole script stays inside $GPU_CHECK_BUDGET_S seconds (default 470): every step gets a `timeout` of at most
# the time left. Usage, from the repository root:
#     tools/gpu_check.sh                       # e.g. through the device tool: run(command="tools/gpu_check.sh")
#     GPU_CHECK_BUDGET_S=300 tools/gpu_check.sh
# Python: the project's .venv when it exists and sees a GPU; otherwise the machine's python3 and its own torch (the
# device machine has no package index, so nothing is installed there).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET_S:-470}
START=$(date +%s)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # the GPU's arch only: a faster build
export LMKAN_CACHE_DIR=${LMKAN_CACHE_DIR:-/tmp/lmkan_build_cache}
declare -A STATUS

left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME CAP_S CMD...: run CMD with a timeout of min(CAP_S, time left), log to $OUT/NAME.log, record the status.
step() {
  local name=$1 cap=$2 limit
  shift 2
  limit=$(left)
  ((cap < limit)) && limit=$cap
  if ((limit < 10)); then
    STATUS[$name]="skipped (out of time)"
    return 1
  fi
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  case $rc in
    0) STATUS[$name]="ok (${dt}s)" ;;
    124 | 137) STATUS[$name]="TIMED OUT after ${limit}s" ;;
    *) STATUS[$name]="FAILED rc=$rc (${dt}s)" ;;
  esac
  echo "[gpu_check] $name: ${STATUS[$name]}"
  return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version; } \
  >"$OUT/machine.log" 2>&1

PY=.venv/bin/python
if ! { [ -x "$PY" ] && "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; }; then
  # The machine's python3 and its torch; the package goes on the path as a symlink tree that mirrors
  # pyproject's package-dir mapping (lmkan_surgery.kernels = kernels/, lmkan_surgery.passes = passes/).
  PY=python3
  SITE=/tmp/lmkan_gpu_site/lmkan_surgery
  rm -rf /tmp/lmkan_gpu_site && mkdir -p "$SITE"
  for f in lmkan_surgery/*; do ln -s "$PWD/$f" "$SITE/"; done
  ln -s "$PWD/kernels" "$SITE/kernels" && ln -s "$PWD/passes" "$SITE/passes"
  export PYTHONPATH=/tmp/lmkan_gpu_site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0))" >>"$OUT/machine.log" 2>&1

step ptxas 60 bash -c "nvcc -c -O3 -gencode=arch=compute_90,code=sm_90 -Xptxas -v kernels/cuda/lmkan_cuda.cu \
  -o /tmp/lmkan_cuda_sm90.o && { cuobjdump -sass /tmp/lmkan_cuda_sm90.o > '$OUT/lmkan_cuda_sm90.sass' || true; }"
step build 240 "$PY" -c "from lmkan_surgery.kernels import build; print(build.load_native('cuda'))"
step tests 180 "$PY" -m pytest -q -ra -p no:cacheprovider tests/test_cuda_kernels.py -k "not emulated"
# The goal shapes first (their own run, so a timeout in one run keeps the other's table), then the CPU shapes.
step bench_big 170 "$PY" tools/bench_layer.py --device cuda --warmup 2 --rounds 10 --no-reference \
  --shapes "1048576,512,512,20;1048576,512,512,8"
step bench_small 100 "$PY" tools/bench_layer.py --device cuda --warmup 2 --rounds 10 \
  --shapes "4096,128,128,8;4096,128,128,26;4096,512,512,16;65536,32,32,16;1024,1024,1024,8"
if command -v compute-sanitizer >/dev/null; then
  step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" -m pytest -q -x -p no:cacheprovider \
    tests/test_cuda_kernels.py -k "ragged and 5-3 or grid_sweep and (40 or 42)"
fi

{
  echo
  echo "== gpu_check summary ($(($(date +%s) - START))s; logs in $OUT)"
  head -n 2 "$OUT/machine.log"
  for name in ptxas build tests bench_big bench_small memcheck; do
    [ -n "${STATUS[$name]:-}" ] && printf '%-9s %s\n' "$name" "${STATUS[$name]}"
  done
  echo "-- tests:"
  tail -n 3 "$OUT/tests.log" 2>/dev/null
  echo "-- bench (ratios to fp32 nn.Linear, TF32 off):"
  grep -hE '^\||^GPU:' "$OUT/bench_big.log" "$OUT/bench_small.log" 2>/dev/null
} | tee "$OUT/summary.txt"
