"""Stages 2 and 3: K-means on the codes gives the centres, then DEC / IDEC refine encoder and centres.

DEC (Xie et al. 2016): loss = KL(P || Q), the decoder dropped.
IDEC / DCEC (Guo et al. 2017): loss = gamma * KL(P || Q) + reconstruction.
P is recomputed over the WHOLE data set every `update_interval` steps and looked up by sample
index (the first P: sharpened Q of the initial centres, or the initializer's own labels); training
stops when fewer than `tol` of the labels changed between two refreshes.
"""

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from deep_clustering import graphs
from deep_clustering.config import FIRST_TARGETS
from deep_clustering.data import ImageSet
from deep_clustering.distributed import embed_all
from deep_clustering.errors import InputError, either
from deep_clustering.kmeans import reseed_empty
from deep_clustering.losses import kl_divergence, target_distribution
from deep_clustering.metrics import external_metrics
from deep_clustering.models import ClusteringLayer
from deep_clustering.running import RunningMean
from deep_clustering.visualize import log_refresh

log = logging.getLogger("deep_clustering")


def stop_rule(n_refresh: int, delta_label: float, tol: float) -> bool:
    """Whether refinement stops: fewer than `tol` of the labels changed at the last of `n_refresh`
    refreshes of P, never at the first (which has nothing to compare with)."""
    return n_refresh > 1 and delta_label < tol


def warn_if_collapsed(sizes: list[int], where: str) -> None:
    """A warning in the log when one of more than two clusters holds over half the samples, or when
    clusters are empty (for K=2 too, where half is no sign); `sizes`: K counts."""
    largest = max(sizes) / sum(sizes)
    empty = sizes.count(0)
    if (largest > 0.5 and len(sizes) > 2) or empty:
        log.warning(
            "%s: collapse? cluster %d holds %.0f%% of the samples%s",
            where,
            sizes.index(max(sizes)),
            100 * largest,
            f"; {empty} of {len(sizes)} clusters are empty" if empty else "",
        )


class DECModule(L.LightningModule):
    """Encoder, cluster centres and (for IDEC/DCEC) the decoder, trained on the clustering loss."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module | None,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        initializer: Callable[[Tensor], tuple[Tensor, Tensor]] | None,
        n_clusters: int,
        latent_dim: int,
        gamma: float = 0.1,
        alpha: float = 1.0,
        update_interval: int = 140,
        tol: float = 1e-3,
        embed_batch_size: int | None = None,
        model: dict | None = None,
        input_shape: list[int] | None = None,
        pixel_range: list[float] | None = None,
        graphed: bool = False,
        codes: Tensor | None = None,
        first_target: str = "q",
    ) -> None:
        """`model` (the network's config) and `input_shape` (C, H, W) are only recorded, so that a
        checkpoint can rebuild the network (`deep_clustering.pipeline.load_trained`, which gives
        no optimizer or initializer: such a model predicts, it does not train); so is `pixel_range`,
        the raw pixel values that became 0 and 1 in training (`ImageSet.pixel_range`), which new
        arrays are scaled by. `graphed`: each step
        through `graphs.step` (captured as a CUDA graph on a GPU). `embed_batch_size`: images per
        batch of the passes over the whole data set (None: `distributed.EMBED_VALUES` pixel values).
        `codes`: the encoder's (N, D) codes of the data, where the caller already has them (the
        baselines'): the initializer clusters them rather than embedding the data again.
        `first_target`: the target of the first `update_interval` steps: 'q' (DEC: P from Q of the
        initial centres) or 'labels' (the initializer's own partition, one-hot, which Q's distances
        to the centres need not reproduce: a Gaussian mixture's, a t-SNE map's). The defaults of
        `gamma`, `update_interval` and `tol` are DCEC's; configs/train.yaml sets the trainer's own."""
        if first_target not in FIRST_TARGETS:
            raise InputError(f"refine.first_target={first_target!r} must be {either(FIRST_TARGETS)}")
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer", "initializer", "graphed", "codes"])
        self.automatic_optimization = not graphed
        self.captured: graphs.CapturedStep | None = None
        self.encoder = encoder
        self.decoder = decoder
        self.head = ClusteringLayer(torch.zeros(n_clusters, latent_dim), alpha)
        self.optimizer = optimizer
        self.initializer = initializer  # (N, D) codes -> (K, D) initial centres, (N,) labels
        self.codes = codes  # the initializer's input, if given; dropped once used
        self.p: Tensor | None = None  # (N, K) target, indexed by sample id
        self.last_labels: Tensor | None = None  # (N,) labels at the last refresh of P
        # small state kept as buffers: it travels with the weights (checkpoints, ddp_spawn's hand-back)
        self.register_buffer("initial_centers", torch.zeros(n_clusters, latent_dim))  # what the initializer gave
        self.register_buffer("n_refresh", torch.tensor(0))  # refreshes of P so far
        self.register_buffer("delta_label", torch.tensor(float("nan")))  # labels changed at the last refresh
        self.register_buffer("kmeans_seconds", torch.tensor(0.0))  # time the initializer took in this process
        # the loss parts' mean over the steps since the last refresh of P, logged at the next one,
        # rather than through self.log at every step, which costs as much host time as a step
        self.interval_losses = RunningMean()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, K) log q."""
        return self.head(self.encoder(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, idx = batch
        target = self.p[idx]
        losses = self.losses(x, target) if self.automatic_optimization else graphs.step(self, self.losses, x, target)
        self.interval_losses.add(torch.stack(losses[1:]))
        return losses[0]

    def losses(self, x: Tensor, target: Tensor) -> tuple[Tensor, ...]:
        """(loss, KL) for DEC, (loss, KL, reconstruction) for IDEC/DCEC, on images `x` with target rows of P."""
        z = self.encoder(x)
        kl = kl_divergence(target, self.head(z))
        if self.decoder is None:
            return kl, kl
        recon = F.mse_loss(self.decoder(z), x)
        return self.hparams.gamma * kl + recon, kl, recon

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())

    def on_fit_start(self) -> None:
        if self.last_labels is None:  # a fresh run, not one resumed from a checkpoint
            self.init_centers()
        else:  # resumed: the checkpoint's P and labels come back on the CPU; K-means ran in the interrupted process
            self.kmeans_seconds.fill_(0.0)
            self.last_labels = self.last_labels.to(self.device)
            self.p = self.p.to(self.device) if self.p is not None else None

    def on_train_end(self) -> None:
        if self.logger is not None:  # the steps after the last refresh (a run that ends at max_iters)
            self.logger.log_metrics(self._interval_means(), step=self.global_step)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self.global_step % self.hparams.update_interval == 0:
            # P is refreshed at steps 0, T, 2T, ...: more refreshes than T's multiples before this step
            # means this step's is done (a run resumed from the checkpoint saved at its stop)
            if int(self.n_refresh) <= self.global_step // self.hparams.update_interval:
                self.refresh_target()
            if self.converged:
                self.trainer.should_stop = True
                return -1  # ends the epoch here; should_stop ends the fit
        return None

    @property
    def converged(self) -> bool:
        """Whether the stop rule held at the last refresh of P."""
        return stop_rule(int(self.n_refresh), float(self.delta_label), self.hparams.tol)

    @torch.no_grad()
    def init_centers(self) -> None:
        """The initializer (K-means) on the codes of every sample; the same centres on every process."""
        start = time.perf_counter()
        if self.codes is None:
            z = embed_all(self.encoder, self._data(), self.hparams.embed_batch_size, self.device)
        else:
            z, self.codes = self.codes.to(self.device), None
        result = None
        if self.trainer.is_global_zero:
            result = self.initializer(z)
        centers, labels = (t.to(self.device) for t in self.trainer.strategy.broadcast(result, src=0))
        self.head.centers.copy_(centers)
        self.initial_centers.copy_(centers)
        self.last_labels = labels if self.hparams.first_target == "labels" else self.head(z).argmax(1)
        self.kmeans_seconds.fill_(time.perf_counter() - start)

    @torch.no_grad()
    def refresh_target(self) -> None:
        """Recompute P over the whole data set. With first_target='labels' the first P is the
        initializer's labels, one-hot."""
        if self.n_refresh == 0 and self.hparams.first_target == "labels":
            q = F.one_hot(self.last_labels, self.hparams.n_clusters).float()
        else:
            z = embed_all(self.encoder, self._data(), self.hparams.embed_batch_size, self.device)
            centers, empty = reseed_empty(z, self.head.centers)
            if empty:
                self.head.centers.copy_(centers)
                log.warning("refine step %d: clusters %s were empty and were reseeded", self.global_step, empty)
            q = self.head(z).exp()
        self.p = target_distribution(q)
        labels = q.argmax(1)
        # the first refresh has no earlier one to compare with (its labels are the initial centres' own): NaN
        changed = (labels != self.last_labels).float().mean() if self.n_refresh > 0 else float("nan")
        self.delta_label.copy_(changed)
        self.last_labels = labels
        self.n_refresh += 1
        self._log_refresh(q)

    @torch.no_grad()
    def predict_all(self, data: ImageSet) -> tuple[Tensor, Tensor]:
        """The ((N, D) codes, (N, K) q) of every image of `data`, on this module's device, equal on every process."""
        z = embed_all(self.encoder, data, self.hparams.embed_batch_size, self.device)
        return z, self.head(z).exp()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dec"] = {
            "p": self.p.cpu() if self.p is not None else None,
            "last_labels": self.last_labels.cpu() if self.last_labels is not None else None,
            # the loss parts' sums since the last refresh: the next refresh logs the same means as an
            # uninterrupted run's (under DDP, the processes' mean sums, which every process resumes from)
            "interval_losses": self.interval_losses.state_dict(self.trainer.strategy),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"].pop("steps", None)  # a buffer of checkpoints before 2026-12-06, never read
        self.p, self.last_labels = checkpoint["dec"]["p"], checkpoint["dec"]["last_labels"]
        if "interval_losses" in checkpoint["dec"]:  # checkpoints written before it was saved have none
            self.interval_losses.load_state_dict(checkpoint["dec"]["interval_losses"])

    def _interval_means(self) -> dict[str, float]:
        """The mean of each loss part over the steps since the last call ({} if none), under DDP over
        all processes' steps (each process takes as many); resets the sums. Every process calls it."""
        means = self.interval_losses.pop()
        if means is None:
            return {}
        means = self.trainer.strategy.reduce(means, reduce_op="mean")
        return dict(zip(["refine/kl", "refine/recon"], means.tolist()))

    def _data(self) -> ImageSet:
        return self.trainer.datamodule.data

    def _log_refresh(self, q: Tensor) -> None:
        labels = q.argmax(1)
        sizes = torch.bincount(labels, minlength=self.hparams.n_clusters).tolist()  # one read from the device
        largest = max(sizes) / labels.numel()
        delta = float(self.delta_label)
        metrics = {"refine/largest_cluster": largest}
        if not math.isnan(delta):  # from the second refresh on (NaN at the first: nothing to compare with)
            metrics["refine/delta_label"] = delta
            self.log("delta", torch.tensor(delta), prog_bar=True, logger=False)
        metrics.update(self._interval_means())
        # the bar's values as tensors on the host: Lightning reads them at every step's end, which
        # for a tensor on a GPU would wait for it at every step
        if "refine/kl" in metrics:
            self.log("kl", torch.tensor(metrics["refine/kl"]), prog_bar=True, logger=False)
        if self.trainer.is_global_zero:
            warn_if_collapsed(sizes, f"refine step {self.global_step}")
        targets = self.trainer.datamodule.data.labels
        if targets is not None:
            metrics.update({f"val/{k}": v for k, v in external_metrics(labels, targets).items()})
        if self.trainer.is_global_zero:  # train.log's line for this refresh: TensorBoard's scalars, in short
            said = ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in metrics.items())
            log.info("refine step %d: P refreshed (%d): %s", self.global_step, int(self.n_refresh), said)
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_step)
            if self.trainer.is_global_zero and isinstance(self.logger, TensorBoardLogger):
                log_refresh(self.logger.experiment, self.trainer.datamodule.data.images, q, self.global_step)
