#!/usr/bin/env bash
# The GPU run: one prepared script for a machine with an NVIDIA GPU and PyTorch but without Hydra
# (this workplace's lent H100 / H200), built to finish inside one 10-minute call. Each phase runs
# under its own time limit, so a slow one cannot take the others' results with it:
#   1. the GPU tests (captured and eager steps agree, in 32-bit and bf16-mixed, alone and under
#      DDP of one process, K-means and embedding on the GPU, whole runs);
#   2. benchmarks/speed.py on MNIST (70,000 images): every stage, captured steps and eager steps;
#   3. DCEC's recipe on MNIST end to end, alone on the GPU: process start to metrics.json, ACC;
#   then the rest of phase 2, each step skipped when under 30 s are left (the issue's headline
#   figures come first): 2b. benchmarks/overhead.py, the host time per step around a negligible
#      model; 2c. ClustPy's IDEC beside ours with DEC's autoencoder (where ClustPy and its
#      matplotlib and pandas import); 2d. the stages again under DDP (`trainer=ddp`, one process,
#      NCCL): steps captured with their all-reduce, against phase 2's single-device figures;
#      2e. the same in bf16-mixed precision;
#   4. accuracy seeds, two queues side by side on the GPU until the deadline: ConvIDEC-DA with
#      the t-SNE manifold step on MNIST (the best-preset candidate, seeds 0-4) and DCEC on MNIST
#      (seeds 1-4; seed 0 is phase 3).
#      (MNIST-test, USPS and Fashion-MNIST are measured on the CPU: benchmarks/results/seeds-*.json.)
# PHASES picks the phases (default "1 2 3 4"): a 10-minute call does not hold five seeds of
# each queue, so a later session can run PHASES=4 (SEEDS="2 3 4" to go on where one stopped).
# Everything lands in $OUT/gpu-results.tgz (rewritten after each phase; benchmarks/results without
# $OUT) and a table is printed.
#
# Prepare on a machine with pip (run from the repository root):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.1
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#   python3.12 -m pip wheel --no-deps -w .whl clustpy==0.0.3   # phase 2c; its C module is optional
#   mkdir -p .bench-data && cp ../shared/data/mnist.npz .bench-data/
# Then carry .whl and .bench-data and run: bash benchmarks/gpu.sh   (DEADLINE=seconds, default 540)
# To try the script itself on a CPU: DEADLINE=300 MNIST=usps.npz TRAINER=default EPOCHS=2 ITERS=40 \
#   QUICK="pretrain.epochs=1 refine.max_iters=20" bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
DEADLINE=${DEADLINE:-540}
PHASES=${PHASES:-1 2 3 4}
SEEDS=${SEEDS:-0 1 2 3 4}
MNIST=${MNIST:-.bench-data/mnist.npz}
TRAINER=${TRAINER:-gpu}
QUICK=${QUICK:-}  # extra overrides for every run (to try this script on a CPU)
OUTDIR=${OUT:-benchmarks/results}
RESULTS=/tmp/gpu-results
rm -rf "$RESULTS" /tmp/runs && mkdir -p "$RESULTS" "$OUTDIR"
exec > >(tee "$OUTDIR/gpu-log.txt") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
left() { echo $((DEADLINE - (SECONDS - START))); }
phase() { [[ " $PHASES " == *" $1 "* ]]; }
step() {  # HEADING: prints it; false (the step is skipped) when less than 30 s are left
  echo "== $1 ($(left) s left)"
  (( $(left) >= 30 )) || { echo "skipped: $(left) s left"; return 1; }
}
capped() { local t; t=$(left); (( t > $1 )) && t=$1; echo "$t"; }  # N: N seconds, or the time left if less
pack() { tar czf "$OUTDIR/gpu-results.tgz" -C "$RESULTS" . 2>/dev/null; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import torch, lightning, torchmetrics, sklearn; print('torch', torch.__version__, 'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__, 'sklearn', sklearn.__version__)"
} | tee "$RESULTS/env.txt"
GRAPHS=true GRAPHS_BF16=true  # phase 1 sets them false where capture fails its test

phase 1 && echo "== 1. GPU tests ($(left) s left)" && {
timeout 180 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py tests/test_graphs.py 2>&1 \
  | tail -25 | tee "$RESULTS/tests.txt"
grep -q "FAILED.*test_captured_steps_train_as_eager_steps_on_the_gpu\[32-true\]" "$RESULTS/tests.txt" \
  && GRAPHS=false && echo "capture failed its test: cuda_graphs=false from here on"
[ $GRAPHS = false ] && GRAPHS_BF16=false
grep -q "FAILED.*test_captured_steps_train_as_eager_steps_on_the_gpu\[bf16-mixed\]" "$RESULTS/tests.txt" \
  && GRAPHS_BF16=false && echo "capture in bf16-mixed failed its test: cuda_graphs=false for phase 2e"
pack
}

phase 2 && echo "== 2. every stage on MNIST, DCEC's autoencoder, batch 256 ($(left) s left)" && {
timeout 170 python3 benchmarks/speed.py --npz "$MNIST" --model conv --epochs "${EPOCHS:-3}" --refine-iters "${ITERS:-700}" \
  --name mnist-conv-gpu cuda_graphs=$GRAPHS $QUICK 2>&1 | grep -v Warning | tail -32 | tee "$RESULTS/speed.txt"
cp benchmarks/results/speed-mnist-conv-gpu.json "$RESULTS/" 2>/dev/null && cp "$RESULTS/speed-mnist-conv-gpu.json" "$OUTDIR/"
pack

}

run() {  # NAME SECONDS OVERRIDES...: one train.py run into $RESULTS/runs/NAME (metrics.json, train.log)
  local name=$1 limit=$2 dir=/tmp/runs/$1
  shift 2
  local t0=$SECONDS
  timeout "$limit" python3 train.py hydra.run.dir="$dir" trainer="$TRAINER" trainer.enable_progress_bar=false \
    cuda_graphs=$GRAPHS "$@" $QUICK >"/tmp/runs-$name.log" 2>&1
  local rc=$?
  mkdir -p "$RESULTS/runs/$name"
  cp "$dir/metrics.json" "$dir/train.log" "$RESULTS/runs/$name/" 2>/dev/null
  tail -5 "/tmp/runs-$name.log" >"$RESULTS/runs/$name/tail.txt"
  echo "$name rc=$rc wall=$((SECONDS - t0))s" | tee -a "$RESULTS/runs.txt"
}

phase 3 && echo "== 3. DCEC's recipe on MNIST, end to end, alone ($(left) s left)" && {
if [ $GRAPHS = true ]; then
  run dcec_mnist-seed0 240 experiment=dcec_mnist data=npz data.path="$MNIST" seed=0
else  # eager steps take about 1.5 s an epoch: the issue's 50-epoch variant fits
  run dcec_mnist_50epochs-seed0 240 experiment=dcec_mnist data=npz data.path="$MNIST" seed=0 pretrain.epochs=50
fi
pack
}

# phase 2's other measurements, after phase 3: each skipped when too little time is left
phase 2 && {
step "2b. host time per step around a negligible model" && {
  timeout "$(capped 120)" python3 benchmarks/overhead.py --name gpu 2>&1 | tail -7 | tee "$RESULTS/overhead.txt"
  cp benchmarks/results/overhead-gpu.json "$RESULTS/" 2>/dev/null
  pack
}

step "2c. ClustPy's IDEC beside ours, DEC's autoencoder, on MNIST" && {
  if python3 -c "import clustpy.deep" >"$RESULTS/clustpy.txt" 2>&1; then
    timeout "$(capped 120)" python3 benchmarks/speed.py --npz "$MNIST" --model fc --epochs 2 --refine-iters 100 --clustpy 1 \
      --name mnist-fc-gpu cuda_graphs=$GRAPHS $QUICK 2>&1 | grep -v Warning | grep "clustpy\|ratio\|ours_" | tee "$RESULTS/clustpy.txt"
    cp benchmarks/results/speed-mnist-fc-gpu.json "$RESULTS/" 2>/dev/null
  else
    echo "ClustPy does not import here (it imports matplotlib and pandas): $(tail -1 "$RESULTS/clustpy.txt")"
  fi
  pack
}

step "2d. the stages under DDP, one process (NCCL): captured steps with their all-reduce" && {
  timeout "$(capped 120)" python3 benchmarks/speed.py --npz "$MNIST" --model conv --epochs "${EPOCHS:-3}" --refine-iters 300 \
    --name mnist-conv-gpu-ddp1 trainer=ddp trainer.devices=1 cuda_graphs=$GRAPHS $QUICK 2>&1 | grep -v Warning \
    | grep "processes\|cuda_graphs\|pretrain_epoch_s\|refine_iters_per_s\|wrote" | tee "$RESULTS/speed-ddp1.txt"
  cp benchmarks/results/speed-mnist-conv-gpu-ddp1.json "$RESULTS/" 2>/dev/null
  pack
}

step "2e. the stages in bf16-mixed precision, captured and eager" && {
  timeout "$(capped 120)" python3 benchmarks/speed.py --npz "$MNIST" --model conv --epochs "${EPOCHS:-3}" --refine-iters 300 \
    --name mnist-conv-gpu-bf16 trainer.precision=bf16-mixed cuda_graphs=$GRAPHS_BF16 $QUICK 2>&1 | grep -v Warning \
    | grep "cuda_graphs\|pretrain_epoch_s\|refine_iters_per_s\|refresh_s\|peak_device\|wrote" | tee "$RESULTS/speed-bf16.txt"
  cp benchmarks/results/speed-mnist-conv-gpu-bf16.json "$RESULTS/" 2>/dev/null
  pack
}
}

phase 4 && echo "== 4. accuracy seeds, two queues side by side ($(left) s left)" && {
queue() {  # PRESET DATA SEEDS...: one run after another while time is left
  local preset=$1 npz=$2
  shift 2
  for seed in "$@"; do
    local budget=$(($(left) - 20))
    [ "$budget" -lt 30 ] && break
    run "$preset-seed$seed" "$budget" experiment="$preset" data=npz data.path="$npz" seed="$seed"
  done
}
queue dcec_da_tsne_mnist "$MNIST" $SEEDS &
queues=($!)
queue dcec_mnist "$MNIST" $(for s in $SEEDS; do phase 3 && [ "$s" = 0 ] || echo "$s"; done) &  # phase 3 ran seed 0
queues+=($!)
wait "${queues[@]}"  # these only: a bare wait would also wait for the tee of the log, which never ends
pack
}

echo "== summary ($((SECONDS - START)) s)"
cat "$RESULTS/env.txt"
python3 - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path

root = Path(sys.argv[1])
speed = root / "speed-mnist-conv-gpu.json"
if speed.exists():
    s = json.loads(speed.read_text())
    keys = ["cuda_graphs", "pretrain_epoch_s", "eager_pretrain_epoch_s", "embed_s", "kmeans_torch_s",
            "kmeans_torch_inertia", "kmeans_sklearn_s", "kmeans_sklearn_inertia", "gmm_torch_s", "gmm_sklearn_s", "refresh_s", "refresh_views_s",
            "refine_iters_per_s", "eager_refine_iters_per_s", "peak_device_memory_mb", "peak_host_rss_mb"]
    for k in keys:
        print(f"{k:<24} {s.get(k)}")
# DDP of one process beside one device (what DDP itself costs a GPU on the fast path), and bf16
for name in ("ddp1", "bf16"):
    path = root / f"speed-mnist-conv-gpu-{name}.json"
    if path.exists():
        d = json.loads(path.read_text())
        for k in ["cuda_graphs", "pretrain_epoch_s", "eager_pretrain_epoch_s", "refine_iters_per_s"]:
            print(f"{name} {k:<19} {d.get(k)}")
print(f"{'run':<28} {'acc':>6} {'nmi':>6} {'ari':>6} {'total s':>8}  stages")
for m in sorted((root / "runs").glob("*/metrics.json")):
    r = json.loads(m.read_text())
    print(f"{m.parent.name:<28} {r['acc']:.4f} {r['nmi']:.4f} {r['ari']:.4f} {r['seconds']['total']:8.1f}  "
          f"{r['seconds']} graphs={r.get('cuda_graphs')} iters={r['refine_iterations']} "
          f"peak_mb={r.get('peak_memory_mb')}")
EOF
cat "$RESULTS/runs.txt" 2>/dev/null
