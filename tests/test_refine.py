"""The refinement's first target (refine.first_target): sharpened Q of the initial centres, as DEC, or the
initializer's own partition, one-hot; the losses it logs across a resume."""

import os
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger

from deep_clustering.callbacks import LastCheckpoint
from deep_clustering.data import ImageDataModule, load_digits
from deep_clustering.errors import InputError
from deep_clustering.metrics import external_metrics
from deep_clustering.models import ConvAutoencoder
from deep_clustering.pretrain import AutoencoderModule
from deep_clustering.refine import DECModule, stop_rule, warn_if_collapsed
from tests.conftest import free_port, spawn


def _fit(module: L.LightningModule, data, **limits) -> None:
    L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **limits,
    ).fit(module, ImageDataModule(data, 64, seed=0))


class TrueClasses:
    """An initializer giving the digits' true classes and their mean codes as centres: nearest-centre (Q's)
    partition of the codes is not the true one."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = self.labels.to(z.device)
        sums = torch.zeros(10, z.shape[1], device=z.device).index_add_(0, labels, z)
        return sums / torch.bincount(labels, minlength=10)[:, None], labels


@pytest.fixture(scope="module")
def digits_autoencoder():
    """Digits and the state of a convolutional autoencoder pretrained on them for 10 epochs."""
    data = load_digits()
    torch.manual_seed(0)
    autoencoder = ConvAutoencoder(1, (8, 8))
    _fit(AutoencoderModule(autoencoder, partial(torch.optim.Adam, lr=1e-3)), data, max_epochs=10)
    return data, autoencoder.state_dict()


def refinement(data, state: dict, **options) -> DECModule:
    """A DECModule on the digits autoencoder `state`, initialised to the true classes, P refreshed
    every 30 steps; `options`: more DECModule arguments."""
    autoencoder = ConvAutoencoder(1, (8, 8))
    autoencoder.load_state_dict(state)
    torch.manual_seed(0)
    return DECModule(
        autoencoder.encoder,
        autoencoder.decoder,
        partial(torch.optim.Adam, lr=1e-3),
        TrueClasses(data.labels),
        n_clusters=10,
        latent_dim=autoencoder.latent_dim,
        **{"update_interval": 30, "tol": 0.0, **options},
    )


def refine(digits_autoencoder, first_target: str) -> DECModule:
    """40 refinement steps from the same autoencoder, P refreshed at steps 0 and 30."""
    data, state = digits_autoencoder
    dec = refinement(data, state, gamma=1.0, first_target=first_target)
    _fit(dec, data, max_steps=40, max_epochs=-1)
    return dec


def test_the_first_target_can_be_the_initializers_own_labels(digits_autoencoder):
    data = digits_autoencoder[0]
    from_q, from_labels = refine(digits_autoencoder, "q"), refine(digits_autoencoder, "labels")
    assert torch.equal(from_q.initial_centers, from_labels.initial_centers)
    assert int(from_q.n_refresh) == int(from_labels.n_refresh) == 2
    # the same centres; 30 steps towards the true classes pull Q's partition to them (ACC 0.81 at the
    # second refresh), 30 steps towards Q's own sharpened partition much less (0.72)
    acc_q = external_metrics(from_q.last_labels, data.labels)["acc"]
    acc_labels = external_metrics(from_labels.last_labels, data.labels)["acc"]
    assert acc_labels > acc_q + 0.05, (acc_labels, acc_q)
    # what changed at the second refresh is counted against the first target's labels
    changed = float((from_labels.last_labels != data.labels).float().mean())
    assert float(from_labels.delta_label) == pytest.approx(changed)


def test_an_unknown_first_target_is_refused():
    with pytest.raises(InputError, match="refine.first_target='gmm' must be q or labels"):
        DECModule(torch.nn.Identity(), None, None, None, n_clusters=2, latent_dim=2, first_target="gmm")


class Recorded(Logger):
    """A logger that keeps what it is given: {name: {step: value}}."""

    def __init__(self):
        super().__init__()
        self.metrics: dict[str, dict[int, float]] = {}

    name, version = "recorded", 0

    def log_metrics(self, metrics, step=None):
        for key, value in metrics.items():
            self.metrics.setdefault(key, {})[step] = value

    def log_hyperparams(self, *args, **kwargs):
        pass


class Crashed(Exception):
    pass


class Crash(L.Callback):
    """Stops the run with an error at step `at`, before the step."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.at:
            raise Crashed(f"step {self.at}")


def resumable_run(
    state: dict, folder, ckpt_path=None, crash_at: int | None = None, **trainer
) -> tuple[dict, torch.Tensor]:
    """70 refinement steps from the autoencoder `state`, P refreshed every 30 (from `ckpt_path` if
    given), folder/last.ckpt saved at step 40: (what it logged, the final labels). `crash_at`: the
    step where the run stops with an error, as if killed. `trainer`: more Trainer arguments
    (`strategy` and `devices` for a process of a DDP run)."""
    data = load_digits()
    dec = refinement(data, state)
    logger = Recorded()
    trainer = L.Trainer(
        **{"accelerator": "cpu", "devices": 1, **trainer},
        logger=logger,
        callbacks=[LastCheckpoint(every_n_steps=40), *([Crash(crash_at)] if crash_at else [])],
        default_root_dir=folder,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,  # as configs/trainer/default.yaml
        use_distributed_sampler=False,  # ImageDataModule shards the batches itself
        max_steps=70,
        max_epochs=-1,
    )
    try:
        trainer.fit(dec, ImageDataModule(data, 64, seed=0), ckpt_path=ckpt_path)
    except Crashed:
        assert crash_at is not None
    return logger.metrics, dec.last_labels


def assert_resumed_as_whole(whole: tuple[dict, torch.Tensor], resumed: tuple[dict, torch.Tensor]) -> None:
    assert sorted(whole[0]["refine/kl"]) == [30, 60, 70]
    for key in ["refine/kl", "refine/recon"]:  # at 60: the mean over steps 30-59, 10 of them before the checkpoint
        assert resumed[0][key][60] == pytest.approx(whole[0][key][60], rel=1e-5), key
        assert resumed[0][key][70] == pytest.approx(whole[0][key][70], rel=1e-5), key
    assert torch.equal(resumed[1], whole[1])


# the sampler skips the batches already trained on, as the pipeline (which silences it too) relies on
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_a_run_resumed_between_refreshes_logs_the_losses_of_one_never_stopped(digits_autoencoder, tmp_path):
    """The mean losses logged at a refresh cover the whole interval, also the steps before a checkpoint."""
    state = digits_autoencoder[1]
    whole = resumable_run(state, tmp_path / "whole")
    resumable_run(state, tmp_path / "part", crash_at=45)  # between the refreshes at steps 30 and 60, mid-epoch
    assert_resumed_as_whole(whole, resumable_run(state, tmp_path / "part", tmp_path / "part" / "last.ckpt"))


def _ddp_worker(rank: int, port: int, state: dict, out: str) -> None:
    """One of two processes of a DDP run (gloo) started here, not by Lightning."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0")
    ddp = {"strategy": "ddp", "devices": 2}
    whole = resumable_run(state, Path(out, "whole"), **ddp)
    resumable_run(state, Path(out, "part"), crash_at=45, **ddp)
    resumed = resumable_run(state, Path(out, "part"), Path(out, "part", "last.ckpt"), **ddp)
    torch.save((whole, resumed), f"{out}/result.{rank}")


def test_under_ddp_a_run_resumed_between_refreshes_logs_and_predicts_as_one_never_stopped(digits_autoencoder, tmp_path):
    """Two processes, each its half of the digits, one checkpoint (process 0 writes it): both resume
    from it to the same labels and log the same mean losses (over both processes) as an uninterrupted run."""
    spawn(_ddp_worker, free_port(), digits_autoencoder[1], str(tmp_path))
    for rank in range(2):
        whole, resumed = torch.load(tmp_path / f"result.{rank}")
        assert_resumed_as_whole(whole, resumed)


def _ddp_tol_worker(rank: int, port: int, state: dict, out: str) -> None:
    """One of two processes of a DDP refinement (gloo) run until fewer than 5% of the labels change."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0")
    data = load_digits()
    dec = refinement(data, state, tol=0.05)
    # 64 images a process; ImageDataModule shards the batches itself
    _fit(dec, data, strategy="ddp", devices=2, use_distributed_sampler=False, max_steps=600, max_epochs=-1)
    torch.save((dec.global_step, int(dec.n_refresh), float(dec.delta_label)), f"{out}/tol.{rank}")


def test_under_ddp_both_processes_stop_by_tol_at_the_same_refresh(digits_autoencoder, tmp_path):
    """The share of labels changed is taken over the whole data set (every process embeds its share
    and gathers all codes), so both processes stop at the same refresh, before max_steps. In one
    process of 64 images a step it stops at step 60 (the third refresh), 3.2% of the labels changed."""
    spawn(_ddp_tol_worker, free_port(), digits_autoencoder[1], str(tmp_path))
    ends = [torch.load(tmp_path / f"tol.{rank}") for rank in range(2)]
    assert ends[0] == ends[1], ends
    step, refreshes, delta = ends[0]
    assert refreshes >= 2 and step == 30 * (refreshes - 1) < 600 and delta < 0.05, ends[0]


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_a_run_resumed_after_its_stop_by_tol_stops_again_without_another_refresh(digits_autoencoder, tmp_path):
    """A run killed after refinement stopped by tol (in evaluation) resumes from the checkpoint saved at
    the stop: the stop holds, and P is not refreshed again (which would count one more refresh, log a
    second point at the last step, with no labels changed, and cost a pass over the data)."""
    data, state = digits_autoencoder

    def run(ckpt_path=None) -> tuple[DECModule, Recorded]:
        dec, logger = refinement(data, state, tol=0.05), Recorded()
        trainer = L.Trainer(
            accelerator="cpu",
            logger=logger,
            callbacks=[LastCheckpoint()],
            default_root_dir=tmp_path,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=10,  # as configs/trainer/default.yaml
            max_steps=600,
            max_epochs=-1,
        )
        trainer.fit(dec, ImageDataModule(data, 64, seed=0), ckpt_path=ckpt_path)
        return dec, logger

    whole, logged = run()
    step, refreshes, delta = whole.global_step, int(whole.n_refresh), float(whole.delta_label)
    assert step == 60 and refreshes == 3 and delta < 0.05, (step, refreshes, delta)  # as the DDP test above
    resumed, relogged = run(tmp_path / "last.ckpt")
    assert (resumed.global_step, int(resumed.n_refresh), float(resumed.delta_label)) == (step, refreshes, delta)
    assert torch.equal(resumed.last_labels, whole.last_labels)
    assert "refine/delta_label" not in relogged.metrics, relogged.metrics  # no refresh logged


def test_the_stop_rule_needs_two_refreshes_and_fewer_changed_than_tol():
    assert not stop_rule(1, 0.0, 0.001)  # the first refresh has nothing to compare with
    assert stop_rule(2, 0.0009, 0.001)
    assert not stop_rule(2, 0.001, 0.001)  # fewer than tol, not as many
    assert not stop_rule(5, float("nan"), 0.001)


@pytest.mark.parametrize(
    ("sizes", "warning"),
    [
        ([40, 30, 30], None),
        ([60, 20, 20], "here: collapse? cluster 0 holds 60% of the samples"),
        ([0, 100, 0], "here: collapse? cluster 1 holds 100% of the samples; 2 of 3 clusters are empty"),
        ([70, 30], None),  # K=2: a big cluster is no sign
        (
            [0, 100],
            "here: collapse? cluster 1 holds 100% of the samples; 1 of 2 clusters are empty",
        ),  # until 2026-12-06 unsaid
    ],
)
def test_a_collapse_is_a_warning_for_two_clusters_too(sizes, warning, caplog):
    warn_if_collapsed(sizes, "here")
    assert [r.getMessage() for r in caplog.records] == ([warning] if warning else [])
