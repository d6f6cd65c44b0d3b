#!/usr/bin/env bash
# Every GPU check in one go, for a CUDA machine lent for a few minutes: the CUDA tests, then the
# streaming benchmark, the kernels side by side, and last the kernels under torch.compile (its
# compilation can take minutes). Each step has its own time limit, so a slow one cannot starve the
# rest. Logs and JSON results go to $OUT (default /tmp/lpdask-gpu).
#
# Where torch and the scientific stack are installed but lpdask's pure-Python dependencies are not,
# put their wheels in .whl/ first: they are installed into /tmp/site without touching the system.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/lpdask-gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
export LPDASK_CACHE_DIR=${LPDASK_CACHE_DIR:-/tmp/lpdask-cache} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"

step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

step cuda-tests 150 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_kernels.py tests/test_device.py
step stream 200 "$python" -m benchmarks.stream --gpu
step kernels 60 "$python" -m benchmarks.kernels --gpu --repeat 3
cp benchmarks/results/stream_gpu.json benchmarks/results/kernels_gpu.json "$out"/ 2>/dev/null
step compile 120 "$python" -m benchmarks.kernels --gpu --compile --repeat 3
cp benchmarks/results/kernels_gpu.json "$out"/kernels_gpu_compile.json 2>/dev/null
exit 0
