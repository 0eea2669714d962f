"""Host time per training step: what Lightning, the callbacks and the modules add around a step.

    python benchmarks/overhead.py --name cpu

On a GPU a captured step takes well under a millisecond, so the host work around it (Lightning's
loop, hooks, logging, callbacks) sets the pace. This measures that work on any machine: the
trainer's pretraining stage (its module, data module and the callbacks a run uses) on an
autoencoder too small to cost anything (2x2 images, 4 -> 2 -> 4), beside a bare PyTorch loop over
the same batches; then the same for the refinement stage (IDEC's loss, 4 clusters, P refreshed
every 140 steps over all 102,400 images, the refresh's metrics against labels included; no
TensorBoard logger in either). Ordinary steps (automatic optimization) and the path of captured
steps (manual optimization; on a CPU the step runs uncaptured) are both timed, in alternating rounds.
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
SCRATCH = tempfile.TemporaryDirectory(prefix="dc-overhead-")  # runs' folders (33 MB checkpoints), removed at exit
sys.path.insert(0, str(ROOT))

from deep_clustering.callbacks import FiniteLoss, LastCheckpoint  # noqa: E402
from deep_clustering.data import ImageDataModule, ImageSet  # noqa: E402
from deep_clustering.losses import kl_divergence, soft_assignment, target_distribution  # noqa: E402
from deep_clustering.pretrain import AutoencoderModule  # noqa: E402
from deep_clustering.refine import DECModule  # noqa: E402

STEPS_PER_EPOCH, BATCH, CLUSTERS, INTERVAL = 400, 256, 4, 140


class Tiny(nn.Module):
    """An autoencoder whose arithmetic is negligible: 4 pixels -> 2 -> 4."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        self.decoder = nn.Sequential(nn.Linear(2, 4), nn.Unflatten(1, (1, 2, 2)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)


def first_codes(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An initializer that costs nothing: the first codes as centres, each sample labelled by the nearest."""
    centers = z[:CLUSTERS].clone()
    return centers, torch.cdist(z, centers).argmin(1)


def trainer_step_ms(data: ImageSet, graphed: bool, epochs: int, stage: str) -> float:
    """Milliseconds per step of the trainer's `stage` ("pretrain" or "refine") over `epochs` epochs."""
    steps = epochs * STEPS_PER_EPOCH
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=epochs,
        max_steps=steps,
        logger=False,
        enable_checkpointing=True,  # through LastCheckpoint, as the trainer has it
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FiniteLoss(stage), LastCheckpoint(every_n_epochs=10**6)],
        use_distributed_sampler=False,
        default_root_dir=tempfile.mkdtemp(dir=SCRATCH.name),  # where LastCheckpoint writes
    )
    adam = partial(torch.optim.Adam, lr=1e-3, capturable=graphed and torch.cuda.is_available())
    model = Tiny()
    if stage == "pretrain":
        module = AutoencoderModule(model, adam, graphed)
    else:  # the first codes as centres, and a tol no refresh reaches: every step is run
        module = DECModule(model.encoder, model.decoder, adam, first_codes, CLUSTERS, 2, tol=-1.0, graphed=graphed)
    start = time.perf_counter()
    trainer.fit(module, ImageDataModule(data, BATCH))
    return 1000 * (time.perf_counter() - start) / steps


def bare_step_ms(data: ImageSet, steps: int, stage: str) -> float:
    """The same steps in a plain PyTorch loop; for "refine", P refreshed every INTERVAL steps."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, images = Tiny().to(device), data.images.to(device)
    centers = nn.Parameter(model.encoder(images[:CLUSTERS]).detach())
    opt = torch.optim.Adam([*model.parameters(), centers], lr=1e-3)
    order = torch.randperm(len(images), device=device).split(BATCH)
    start = time.perf_counter()
    for i in range(steps):
        idx = order[i % len(order)]
        x = images[idx]
        if stage == "refine" and i % INTERVAL == 0:
            with torch.no_grad():
                p = target_distribution(soft_assignment(model.encoder(images), centers).exp())
        opt.zero_grad()
        z, recon = model(x)
        loss = nn.functional.mse_loss(recon, x)
        if stage == "refine":
            loss = loss + 0.1 * kl_divergence(p[idx], soft_assignment(z, centers))
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
    n = BATCH * STEPS_PER_EPOCH
    data = ImageSet(torch.rand(n, 1, 2, 2), torch.randint(CLUSTERS, (n,)))
    rows = {f"{stage}_{way}": [] for stage in ("pretrain", "refine") for way in ("bare", "ordinary", "graphed_path")}
    for _ in range(args.rounds):
        for stage in ("pretrain", "refine"):
            rows[f"{stage}_bare"].append(bare_step_ms(data, args.epochs * STEPS_PER_EPOCH, stage))
            rows[f"{stage}_ordinary"].append(trainer_step_ms(data, False, args.epochs, stage))
            rows[f"{stage}_graphed_path"].append(trainer_step_ms(data, True, args.epochs, stage))
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
        print(f"{k:<22} {v:.3f} ms per step")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
