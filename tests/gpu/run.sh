#!/usr/bin/env bash
# One-shot check on a machine with an NVIDIA GPU (H100/H200): builds essence
# with the CUDA backend and runs the GPU test suite, which checks every CUDA op
# against the CPU backend and prints its table last. Downloads nothing; CUDA
# libraries found only inside PyTorch's site-packages are used from there.
# Usage: tests/gpu/run.sh [build-dir]   (default build-gpu)
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${1:-build-gpu}"
start=$(date +%s)

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# The toolkit is often installed without being put on PATH.
for d in /usr/local/cuda/bin /opt/cuda/bin; do
    [ -x "$d/nvcc" ] && PATH="$PATH:$d"
done
export PATH
for tool in nvcc meson ninja python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "run.sh: $tool not found; the GPU check needs it on PATH" >&2
        exit 1
    fi
done
nvcc --version | tail -n 1

echo "== build ($build)"
if [ -f "$build/build.ninja" ]; then
    meson setup --reconfigure "$build" -Dcuda=enabled -Dbuildtype=release
else
    meson setup "$build" -Dcuda=enabled -Dbuildtype=release
fi
timeout 300 ninja -C "$build" -j "$(nproc)"

echo "== GPU tests"
status=0
timeout 240 meson test -C "$build" --suite gpu --verbose --print-errorlogs || status=$?

echo "== done in $(( $(date +%s) - start )) s, status $status"
exit "$status"
