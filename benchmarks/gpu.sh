#!/usr/bin/env bash
# The GPU run: one prepared script for a machine with an NVIDIA GPU and PyTorch but without Hydra
# (this workplace's lent H100 / H200). It installs what is missing, runs the GPU checks, times
# every stage on MNIST (70,000 images) and runs DCEC's recipe end to end, printing a short table;
# the JSON results land in $OUT (or benchmarks/results).
#
# Prepare on a machine with pip (run from the repository root):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.1 torch-linear-assignment==0.1.0
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#   mkdir -p .bench-data && cp ../shared/data/mnist.npz .bench-data/
# Then carry .whl and .bench-data and run: bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== GPU checks"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py

echo "== every stage on MNIST, DCEC's autoencoder, batch 256 (and DCEC's recipe end to end)"
python3 benchmarks/speed.py --npz .bench-data/mnist.npz --model conv --epochs 6 --refine-iters 1400 \
    --name mnist-conv-gpu --e2e experiment=dcec_mnist data=npz data.path=.bench-data/mnist.npz \
    trainer=gpu | tee "$RESULTS/speed-mnist-conv-gpu.txt"
cp benchmarks/results/speed-mnist-conv-gpu.json "$RESULTS/" 2>/dev/null || true
