"""The path of captured training steps (deep_clustering.graphs): manual optimization, Lightning's step
count, checkpoints. On the CPU nothing is captured, so the same code runs its steps eagerly and must
train exactly as the ordinary path does; tests/test_gpu.py compares captured and eager on a GPU."""

import itertools
import math
import os
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from deep_clustering.data import ImageDataModule, ImageSet, load_digits
from deep_clustering.kmeans import KMeansInit
from deep_clustering.models import ConvAutoencoder
from deep_clustering.pretrain import AutoencoderModule
from deep_clustering.refine import DECModule
from tests.conftest import free_port, spawn


def _fit(module: L.LightningModule, data, tmp_path, accelerator: str, **options) -> L.Trainer:
    """`options`: the stage's limits and any more Trainer arguments."""
    trainer = L.Trainer(
        **{"accelerator": accelerator, "devices": 1, **options},
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, ImageDataModule(data, 64, seed=0))
    return trainer


def train_both_stages(tmp_path, graphed: bool, accelerator: str = "cpu", n: int = 1797, steps: int = 25, **trainer):
    """One pretraining epoch on the first `n` digits, then `steps` refinement steps (P refreshed every
    10): (trainers, DECModule).

    `trainer`: more Trainer arguments: `precision`; `strategy` and `devices` for a process of a DDP
    run launched from outside."""
    digits = load_digits()
    data = ImageSet(digits.images[:n], digits.labels[:n])
    torch.manual_seed(0)
    autoencoder = ConvAutoencoder(1, (8, 8))
    adam = partial(torch.optim.Adam, lr=1e-3, capturable=accelerator == "gpu")
    pre_module = AutoencoderModule(autoencoder, adam, graphed)
    pre = _fit(pre_module, data, tmp_path / "pre", accelerator, max_epochs=1, **trainer)
    dec = DECModule(
        autoencoder.encoder,
        autoencoder.decoder,
        adam,
        KMeansInit(10, n_init=3, manifold="none", seed=0),
        n_clusters=10,
        latent_dim=autoencoder.latent_dim,
        update_interval=10,
        tol=0.0,
        graphed=graphed,
    )
    ref = _fit(dec, data, tmp_path / "ref", accelerator, max_steps=steps, max_epochs=-1, **trainer)
    return pre, ref, dec


@pytest.mark.parametrize(
    ("precision", "n", "steps"),
    # bf16 steps take about 1 s on a CPU without AVX-512 (40 times the float32 ones): fewer of them
    [("32-true", 1797, 25), ("bf16-mixed", 320, 12)],
)
def test_graphed_steps_train_as_the_ordinary_steps(tmp_path, precision, n, steps):
    # under bf16-mixed, the step's backward must run outside autocast, as Lightning's does: on the
    # CPU it runs on the thread that holds the autocast state
    pre_a, ref_a, dec_a = train_both_stages(tmp_path / "a", graphed=False, n=n, steps=steps, precision=precision)
    pre_b, ref_b, dec_b = train_both_stages(tmp_path / "b", graphed=True, n=n, steps=steps, precision=precision)
    assert not dec_b.automatic_optimization and dec_b.captured is not None and not dec_b.captured.capture
    assert pre_a.global_step == pre_b.global_step == math.ceil(n / 64)  # 29 steps an epoch for all 1,797 digits
    assert ref_a.global_step == ref_b.global_step == steps
    assert int(dec_b.n_refresh) == math.ceil(steps / 10)  # at steps 0, 10, 20
    for (name, a), b in zip(dec_a.state_dict().items(), dec_b.state_dict().values()):
        if name != "kmeans_seconds":
            torch.testing.assert_close(b, a, msg=name)
    opt_a, opt_b = ref_a.optimizers[0].state_dict(), ref_b.optimizers[0].state_dict()
    for s_a, s_b in zip(opt_a["state"].values(), opt_b["state"].values()):
        torch.testing.assert_close(s_b["exp_avg"], s_a["exp_avg"])
    assert all(p.grad is None for p in dec_b.parameters())  # the update happened in the step, once


def _ddp_worker(rank: int, port: int, out: str) -> None:
    """One of two processes of a DDP run (gloo) started here, not by Lightning: both paths, both stages."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0")
    result = {}
    for graphed in (False, True):
        pre, ref, dec = train_both_stages(Path(out, f"{graphed}-{rank}"), graphed, strategy="ddp", devices=2)
        losses = float(pre.callback_metrics["pretrain/recon"]), float(ref.callback_metrics["kl"])
        result[graphed] = pre.global_step, ref.global_step, dec.state_dict(), int(dec.n_refresh), losses
    torch.save(result, f"{out}/result.{rank}")


def test_graphed_steps_under_ddp_average_the_gradients_as_ddp_does(tmp_path):
    # two processes, each on its half of the digits: the graphed path leaves Lightning's DDP wrapper
    # idle and all-reduces the gradients itself; without that the two processes drift apart
    spawn(_ddp_worker, free_port(), str(tmp_path))
    results = [torch.load(tmp_path / f"result.{rank}") for rank in range(2)]
    for result in results:
        assert result[False][:2] == result[True][:2] == (15, 25)  # 899 digits a process at 64 a batch
        assert result[False][3] == result[True][3] == 3
    for graphed in (False, True):  # the losses logged are over both processes' batches, not this one's
        assert results[0][graphed][4] == results[1][graphed][4]
    ordinary = results[0][False][2]
    for name, a in ordinary.items():
        if name == "kmeans_seconds":
            continue
        for (rank, result), graphed in itertools.product(enumerate(results), (True, False)):
            # the same weights on both processes, and as Lightning's DDP gives
            where = f"{name}, rank {rank}, graphed {graphed}"
            torch.testing.assert_close(result[graphed][2][name], a, msg=lambda m, where=where: f"{where}: {m}")


@pytest.mark.parametrize("option", [{}, {"gradient_clip_val": 1.0}, {"accumulate_grad_batches": 2}])
def test_lightnings_clipping_and_accumulation_take_eager_steps(monkeypatch, option):
    # captured steps are manual optimization, which Lightning refuses to clip or accumulate: with
    # either the steps stay eager (until 2026-12-06 +trainer.gradient_clip_val=1.0 on a GPU ended
    # in Lightning's MisconfigurationException). Where capture is possible is pretended here.
    from omegaconf import OmegaConf

    from deep_clustering import graphs, pipeline

    monkeypatch.setattr(graphs, "possible", lambda *args: True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **option)
    data = ImageSet(torch.rand(4, 1, 8, 8))
    assert pipeline.use_graphs(OmegaConf.create({"cuda_graphs": True}), trainer, data) == (not option)
