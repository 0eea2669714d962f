"""Accuracy over seeds: run one recipe N times (seeds F..F+N-1) and record mean +- std, min and max.

    python benchmarks/seeds.py --name digits_default                       # the default job, 5 seeds
    python benchmarks/seeds.py --name usps_dcec --seeds 5 -- experiment=dcec_usps data=npz data.path=usps.npz
    python benchmarks/seeds.py --name usps_dcec --from-sweep multirun/seeds-usps_dcec-DATE -- OVERRIDES  # no runs
    python benchmarks/seeds.py --name usps_dcec_5-9 --first-seed 5 -- OVERRIDES  # seeds 5..9, held out

Runs `python train.py -m seed=F,...,F+N-1 OVERRIDES` (F is --first-seed, 0 unless given): one Hydra
multirun, each seed a full run in a folder named by the seed. Then it writes
benchmarks/results/seeds-NAME.json: the command, the device, the date, the seeds, and for ACC, NMI,
ARI and the seconds per run their mean, std, min, max and the values of every seed.
"""

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the result's name: benchmarks/results/seeds-NAME.json")
    parser.add_argument("--seeds", type=int, default=5, help="runs, with seeds F .. F+N-1 (default 5)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="F, the first seed (default 0; seeds a choice never saw)"
    )
    parser.add_argument(
        "--from-sweep",
        type=Path,
        help="run nothing: read the seed folders F..F+N-1 of this sweep folder (one whose runs were "
        "interrupted and finished with resume=, say); give the same overrides, for the record",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe (after --)")
    args = parser.parse_args()
    seed_list = range(args.first_seed, args.first_seed + args.seeds)
    seeds = ",".join(str(s) for s in seed_list)
    sweep = args.from_sweep or ROOT / "multirun" / f"seeds-{args.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    # the code the sweep runs (its jobs import it once, as it starts): HEAD now, not when they end
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if not args.from_sweep:
        cmd = [sys.executable, "train.py", "-m", f"seed={seeds}", *args.overrides, f"hydra.sweep.dir={sweep}"]
        cmd += ["hydra.sweep.subdir=${seed}", "trainer.enable_progress_bar=false"]
        subprocess.run(cmd, cwd=ROOT, check=True)
    runs = [json.loads((sweep / str(s) / "metrics.json").read_text()) for s in seed_list]
    result = {
        "benchmark": "seeds",
        "name": args.name,
        "command": " ".join(["python", "train.py", "-m", f"seed={seeds}", *args.overrides]),
        "device": runs[0]["device"]
        if runs[0]["device"] != "cpu"
        else f"cpu: {cpu_name()}, {torch.get_num_threads()} threads",
        "date": datetime.date.today().isoformat(),
        # the last digits depend on the CPU's vector unit (AVX-512 or AVX2) and on the code
        "commit": commit.stdout.strip(),
        "n_samples": runs[0]["n_samples"],
        "seeds": list(seed_list),
        "refine_iterations": [r["refine_iterations"] for r in runs],  # fewer where tol stopped a run early
    }
    for key in ("acc", "nmi", "ari", "seconds"):
        values = [r["seconds"]["total"] if key == "seconds" else r[key] for r in runs]
        result[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "values": values,
        }
    out = ROOT / "benchmarks" / "results" / f"seeds-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    acc = result["acc"]
    spread = f"{acc['mean']:.4f} +- {acc['std']:.4f} [{acc['min']:.4f}, {acc['max']:.4f}]"
    print(f"{args.name}: ACC {spread} over seeds {seed_list.start}-{seed_list.stop - 1}")
    print(f"wrote {out}")


def cpu_name() -> str:
    """The CPU's model and its widest vector unit (Linux's /proc/cpuinfo), else what Python knows."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model or platform.machine()}, {vector}"


if __name__ == "__main__":
    main()
