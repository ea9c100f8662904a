#!/usr/bin/env bash
# Installs what essence needs to build and test on a fresh Debian/Ubuntu
# machine: compilers and meson, OpenBLAS, cJSON, OpenMPI (apt), and the
# pinned Python packages of tools/ (pip), and where nvcc is present the pinned
# cuDNN frontend headers (pip) for the CUDA backend's cuDNN attention. Safe to
# run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(build-essential meson ninja-build pkg-config libopenblas-openmp-dev libcjson-dev
          openmpi-bin libopenmpi-dev python3 python3-pip)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! python3 -c 'import tokenizers, numpy, safetensors, pytest, matplotlib' 2>/dev/null ||
   ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as md, pathlib, sys
want = {}
for line in pathlib.Path("tools/requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if "==" in line:
        name, ver = line.split("==")
        want[name.strip().lower()] = ver.strip()
sys.exit(any(md.version(n) != v for n, v in want.items()))
PY
then
    echo "setup: installing Python packages from tools/requirements.txt"
    python3 -m pip install -q -r tools/requirements.txt
fi

# The cuDNN frontend is header-only; cuda/find_cuda_libs.py finds its headers
# in this Python's site-packages/include.
CUDNN_FRONTEND_VERSION=1.16.0
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
    have=$(python3 -c 'import importlib.metadata as m; print(m.version("nvidia-cudnn-frontend"))' 2>/dev/null || true)
    if [ "$have" != "$CUDNN_FRONTEND_VERSION" ]; then
        echo "setup: installing nvidia-cudnn-frontend==$CUDNN_FRONTEND_VERSION (cuDNN attention headers)"
        python3 -m pip install -q "nvidia-cudnn-frontend==$CUDNN_FRONTEND_VERSION"
    fi
fi
