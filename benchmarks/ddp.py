"""Throughput per process under DDP, beside the same processes run independently.

    OMP_NUM_THREADS=1 python benchmarks/ddp.py --npz usps.npz --name cpu

Three ways of running the same short pretraining (DCEC's autoencoder, batch 256 per process):
  one          one process alone;
  independent  two ordinary single-process runs at the same time (what the machine itself gives
               two processes: shared cores, caches and memory bandwidth, no communication);
  ddp          `trainer=ddp`: two processes of one run, gradients all-reduced at every step.
Images per second per process from the wall times of the epochs (TensorBoard's `pretrain/recon`,
the first epoch left out). ddp / independent is what DDP itself costs; independent / one is what
the machine costs. Rounds alternate; medians are reported.
Writes benchmarks/results/ddp-NAME.json.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def start(npz: str, epochs: int, folder: Path, ddp: bool) -> subprocess.Popen:
    """A short run of train.py into `folder`: pretraining, one refinement step."""
    cmd = [sys.executable, "train.py", "data=npz", f"data.path={npz}", "model=conv", f"pretrain.epochs={epochs}"]
    cmd += ["pretrain.batch_size=256", "refine.max_iters=1", "init.manifold=none", f"hydra.run.dir={folder}"]
    cmd += ["trainer.enable_progress_bar=false", *(["trainer=ddp"] if ddp else [])]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def images_per_s(folder: Path, images: float) -> float:
    """`images` (those one process sees an epoch) over the median epoch time after the first."""
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    times = [e.wall_time for e in events.Scalars("pretrain/recon")]
    return images / statistics.median(b - a for a, b in zip(times, times[1:]))


def run(npz: str, epochs: int, way: str, n: int) -> list[float]:
    """Images/s of each process of one way of running."""
    folders = [Path(tempfile.mkdtemp()) / "run" for _ in range(2 if way == "independent" else 1)]
    procs = [start(npz, epochs, f, ddp=way == "ddp") for f in folders]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"train.py failed ({way}):\n{err[-2000:]}")
    if way == "ddp":  # rank 0 logs; both ranks see half the images an epoch
        return [images_per_s(folders[0], n / 2)] * 2
    return [images_per_s(f, n) for f in folders]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", required=True, help="the data (.npz with x_train[, x_test])")
    parser.add_argument("--name", required=True, help="the result's name: benchmarks/results/ddp-NAME.json")
    parser.add_argument("--epochs", type=int, default=6, help="pretraining epochs per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians are reported")
    args = parser.parse_args()
    with np.load(args.npz) as arrays:
        n = sum(len(arrays[k]) for k in ("x_train", "x_test") if k in arrays)
    ways = ("one", "independent", "ddp")
    rows = {w: [] for w in ways}
    for _ in range(args.rounds):
        for way in ways:
            rows[way].append(statistics.fmean(run(args.npz, args.epochs, way, n)))
    median = {w: statistics.median(v) for w, v in rows.items()}
    result = {
        "benchmark": "ddp",
        "date": datetime.date.today().isoformat(),
        "host": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 1)}",
        "data": f"{args.npz}: {n} images",
        "images_per_s_per_process_median": median,
        "images_per_s_per_process_rounds": rows,
        "ddp_over_independent": median["ddp"] / median["independent"],
        "independent_over_one": median["independent"] / median["one"],
        "ddp_over_one": median["ddp"] / median["one"],
    }
    out = ROOT / "benchmarks" / "results" / f"ddp-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for way in ways:
        print(f"{way:<12} {median[way]:8.0f} images/s per process")
    for key in ("ddp_over_independent", "independent_over_one", "ddp_over_one"):
        print(f"{key:<22} {result[key]:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
