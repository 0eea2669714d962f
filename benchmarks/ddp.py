"""Throughput per process under DDP, beside the same processes run independently.

    OMP_NUM_THREADS=1 python benchmarks/ddp.py --npz usps.npz --name cpu

Three ways of running the same short pretraining (DCEC's autoencoder, batch 256 per process):
  one          one process alone;
  independent  two ordinary single-process runs at the same time (what the machine itself gives
               two processes: shared cores, caches and memory bandwidth, no communication);
  ddp          `trainer=ddp`: two processes of one run, gradients all-reduced at every step.
Images per second per process from the wall times of the epochs (TensorBoard's `pretrain/recon`,
the first epoch left out). ddp / independent is what DDP costs in the trainer; independent / one
is what the machine costs. For reference, the same with a bare PyTorch loop (no Lightning, no
trainer; the same autoencoder, fused Adam, batch and epochs): bare_one, one process, and bare_ddp,
two processes under torchrun with DistributedDataParallel over gloo: bare_ddp / bare_one is what
DDP itself costs on this machine. Of that, allreduce_ms is the all-reduce alone: after its epochs,
bare_ddp sums one tensor as long as the gradients over the two processes 200 times (gloo, each
after a barrier, so without any wait for the slower process). Rounds alternate; medians are reported.
Writes benchmarks/results/ddp-NAME.json.
"""

import argparse
import datetime
import json
import math
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
SCRATCH = tempfile.TemporaryDirectory(prefix="dc-ddp-")  # runs' folders (33 MB checkpoints), removed at exit


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


def bare_worker(npz: str, epochs: int) -> None:
    """The bare loop (run by `bare`): prints this process's images/s, the median epoch after the first."""
    import time

    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT))
    from deep_clustering.data import load_npz
    from deep_clustering.models import ConvAutoencoder

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    data = load_npz(npz)
    model = ConvAutoencoder(data.channels, data.image_size)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))[rank::world]
        for idx in order.split(256):
            x = data.images[idx]
            adam.zero_grad()
            torch.nn.functional.mse_loss(model(x)[1], x).backward()
            adam.step()
        seconds.append(time.perf_counter() - start)
    out = {"images_per_s": math.ceil(len(data) / world) / statistics.median(seconds[1:])}
    if world > 1:  # the all-reduce alone: as many floats as the gradients, after a barrier (no wait for the slower)
        grads, seconds = torch.cat([p.detach().flatten() for p in model.parameters()]), []
        for _ in range(210):  # the first 10 warm up
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(grads)
            seconds.append(time.perf_counter() - start)
        out.update(allreduce_ms=1000 * statistics.median(seconds[10:]), allreduce_floats=grads.numel())
    if rank == 0:
        print(json.dumps(out))


def worker(args: list[str], ddp: bool) -> dict:
    """The last line of rank 0's output, as JSON, of this script run as one process, or as two under
    torchrun."""
    launch = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if ddp else [])]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([*launch, __file__, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({'ddp' if ddp else 'one'}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(npz: str, epochs: int, way: str, n: int) -> list[float]:
    """Images/s of each process of one way of running."""
    folders = [Path(tempfile.mkdtemp(dir=SCRATCH.name)) / "run" for _ in range(2 if way == "independent" else 1)]
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
    parser.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:  # images/s is read between two epochs' ends
        parser.error(f"--epochs {args.epochs}: at least 2")
    if args.bare_worker:
        return bare_worker(args.npz, args.epochs)
    with np.load(args.npz) as arrays:
        n = sum(len(arrays[k]) for k in ("x_train", "x_test") if k in arrays)
    ways = ("one", "independent", "ddp", "bare_one", "bare_ddp")
    rows, allreduces = {w: [] for w in ways}, []
    bare = ["--npz", args.npz, "--name", "bare", "--epochs", str(args.epochs), "--bare-worker"]
    for _ in range(args.rounds):
        for way in ways:
            if way.startswith("bare"):
                out = worker(bare, ddp=way == "bare_ddp")
                rows[way].append(out["images_per_s"])
                allreduces += [out] if way == "bare_ddp" else []
            else:
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
        "bare_ddp_over_bare_one": median["bare_ddp"] / median["bare_one"],
        "allreduce_ms": statistics.median(o["allreduce_ms"] for o in allreduces),  # no wait for the slower process
        "allreduce_floats": allreduces[0]["allreduce_floats"],
        "step_ms": {w: 1000 * 256 / median[w] for w in ("one", "ddp", "bare_one", "bare_ddp")},  # batch 256
    }
    out = ROOT / "benchmarks" / "results" / f"ddp-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for way in ways:
        print(f"{way:<12} {median[way]:8.0f} images/s per process")
    for key in ("ddp_over_independent", "independent_over_one", "ddp_over_one", "bare_ddp_over_bare_one"):
        print(f"{key:<22} {result[key]:.3f}")
    print(
        f"all-reduce of {result['allreduce_floats']} floats: {result['allreduce_ms']:.2f} ms; a step of 256 images: "
        f"{result['step_ms']['one']:.1f} ms alone, {result['step_ms']['ddp']:.1f} ms under DDP"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
