"""Time per training step of DCEC's autoencoder with its convolutions unrolled into matrix products
(`deep_clustering.models.Conv2d`) and with torch's convolution kernels, on the CPU.

    python benchmarks/unroll.py --name cpu

A bare PyTorch loop (the same forward, loss, backward and fused Adam step as pretraining) over random
batches of 64 images, for the 8x8 digits and USPS-sized 16x16 images, in three variants:
  torch     model.unroll_below=0: torch's (oneDNN's) convolution in every layer;
  default   model.unroll_below at its default (262,144): layers whose matrix is at most that large unrolled;
  all       every layer unrolled, whatever its size (the 16x16 rows say whether a higher bound would pay).
Rounds alternate the variants; the median step of each round is kept and the medians of the rounds are
reported. Writes benchmarks/results/unroll-NAME.json.
"""

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deep_clustering.models import ConvAutoencoder  # noqa: E402

VARIANTS = {"torch": 0, "default": 2**18, "all": 2**62}


def step_ms(size: int, unroll_below: int, steps: int, batch: int) -> float:
    """Median milliseconds of a training step, after 10 unmeasured ones."""
    torch.manual_seed(0)
    model = ConvAutoencoder(1, (size, size), unroll_below=unroll_below)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    images = torch.rand(512, 1, size, size)
    times = []
    for i in range(steps + 10):
        start = time.perf_counter()
        x = images[torch.randint(0, len(images), (batch,))]
        loss = F.mse_loss(model(x)[1], x)
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        if i >= 10:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="cpu", help="results go to benchmarks/results/unroll-NAME.json")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each timing every variant once")
    parser.add_argument("--steps", type=int, default=100, help="measured steps per variant and round")
    parser.add_argument("--batch", type=int, default=64, help="images per step (the default job's)")
    args = parser.parse_args()

    rounds: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for size in (8, 16):
            for variant, bound in VARIANTS.items():
                rounds.setdefault(f"{size}x{size} {variant}", []).append(step_ms(size, bound, args.steps, args.batch))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rounds.items()), flush=True)
    medians = {k: statistics.median(v) for k, v in rounds.items()}
    threads = torch.get_num_threads()
    print(f"\nms per training step, batch {args.batch}, {threads} threads (median of {args.rounds} rounds)")
    for size in (8, 16):
        row = {v: medians[f"{size}x{size} {v}"] for v in VARIANTS}
        ratio = ", ".join(f"{v} / torch {row[v] / row['torch']:.2f}" for v in ("default", "all"))
        print(f"{size}x{size}: " + "  ".join(f"{v} {ms:.2f}" for v, ms in row.items()) + f"  ({ratio})")
    out = ROOT / "benchmarks" / "results" / f"unroll-{args.name}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "unroll",
                "date": datetime.date.today().isoformat(),
                "device": "cpu",
                "host": f"{platform.machine()}, {torch.get_num_threads()} threads",
                "batch": args.batch,
                "ms_per_step_median": medians,
                "ms_per_step_rounds": rounds,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
