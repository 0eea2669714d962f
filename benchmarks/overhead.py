"""Host time per pretraining step: what Lightning, the callbacks and the module add around a step.

    python benchmarks/overhead.py --name cpu

On a GPU a captured step takes well under a millisecond, so the host work around it (Lightning's
loop, hooks, logging, callbacks) sets the pace. This measures that work on any machine: the
trainer's pretraining stage (its module, data module and the callbacks a run uses) on an
autoencoder too small to cost anything (2x2 images, 4 -> 2 -> 4), beside a bare PyTorch loop over
the same batches. Ordinary steps (automatic optimization) and the path of captured steps (manual
optimization; on a CPU the step runs uncaptured) are both timed, in alternating rounds.
Writes benchmarks/results/overhead-NAME.json.
"""

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deep_clustering.callbacks import FiniteLoss, LastCheckpoint  # noqa: E402
from deep_clustering.data import ImageDataModule, ImageSet  # noqa: E402
from deep_clustering.pretrain import AutoencoderModule  # noqa: E402

STEPS_PER_EPOCH, BATCH = 400, 256


class Tiny(nn.Module):
    """An autoencoder whose arithmetic is negligible: 4 pixels -> 2 -> 4."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        self.decoder = nn.Sequential(nn.Linear(2, 4), nn.Unflatten(1, (1, 2, 2)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)


def trainer_step_ms(data: ImageSet, graphed: bool, epochs: int) -> float:
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FiniteLoss("pretrain"), LastCheckpoint(every_n_epochs=10**6)],
        use_distributed_sampler=False,
        default_root_dir=tempfile.mkdtemp(),  # where LastCheckpoint writes
    )
    adam = partial(torch.optim.Adam, lr=1e-3, capturable=graphed and torch.cuda.is_available())
    module = AutoencoderModule(Tiny(), adam, graphed)
    start = time.perf_counter()
    trainer.fit(module, ImageDataModule(data, BATCH))
    return 1000 * (time.perf_counter() - start) / (epochs * STEPS_PER_EPOCH)


def bare_step_ms(data: ImageSet, steps: int) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, images = Tiny().to(device), data.images.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(images), device=device).split(BATCH)
    start = time.perf_counter()
    for i in range(steps):
        x = images[order[i % len(order)]]
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x)[1], x)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the result's name: benchmarks/results/overhead-NAME.json")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of 400 steps per timed fit")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = ImageSet(torch.rand(BATCH * STEPS_PER_EPOCH, 1, 2, 2))
    rows = {"bare": [], "ordinary": [], "graphed_path": []}
    for _ in range(args.rounds):
        rows["bare"].append(bare_step_ms(data, args.epochs * STEPS_PER_EPOCH))
        rows["ordinary"].append(trainer_step_ms(data, graphed=False, epochs=args.epochs))
        rows["graphed_path"].append(trainer_step_ms(data, graphed=True, epochs=args.epochs))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {
        "benchmark": "overhead",
        "date": datetime.date.today().isoformat(),
        "device": device,
        "host": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "ms_per_step_median": {k: statistics.median(v) for k, v in rows.items()},
        "ms_per_step_rounds": rows,
    }
    out = ROOT / "benchmarks" / "results" / f"overhead-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result["ms_per_step_median"].items():
        print(f"{k:<14} {v:.3f} ms per step")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
