"""Stages 2 and 3: K-means on the codes gives the centres, then DEC / IDEC refine encoder and centres.

DEC (Xie et al. 2016): loss = KL(P || Q), the decoder dropped.
IDEC / DCEC (Guo et al. 2017): loss = gamma * KL(P || Q) + reconstruction.
P is recomputed over the WHOLE data set every `update_interval` steps and looked up by sample
index; training stops when fewer than `tol` of the labels changed between two refreshes.
"""

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deep_clustering.distributed import embed_all
from deep_clustering.losses import kl_divergence, target_distribution
from deep_clustering.metrics import external_metrics
from deep_clustering.models import ClusteringLayer


class DECModule(L.LightningModule):
    """Encoder, cluster centres and (for IDEC/DCEC) the decoder, trained on the clustering loss."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module | None,
        optimizer: Callable[..., torch.optim.Optimizer],
        initializer: Callable[[Tensor], Tensor],
        n_clusters: int,
        latent_dim: int,
        gamma: float = 0.1,
        alpha: float = 1.0,
        update_interval: int = 140,
        tol: float = 1e-3,
        embed_batch_size: int = 4096,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer", "initializer"])
        self.encoder = encoder
        self.decoder = decoder
        self.head = ClusteringLayer(torch.zeros(n_clusters, latent_dim), alpha)
        self.optimizer = optimizer
        self.initializer = initializer  # (N, D) codes -> (K, D) initial centres
        self.p: Tensor | None = None  # (N, K) target, indexed by sample id
        self.last_labels: Tensor | None = None  # (N,) labels at the last refresh of P
        self.n_refresh = 0  # refreshes of P so far
        self.initial_centers: Tensor | None = None  # (K, D) what the initializer gave
        self.delta_label = float("nan")  # fraction of labels changed at the last refresh
        self.kmeans_seconds = 0.0

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, K) log q."""
        return self.head(self.encoder(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, idx = batch
        z = self.encoder(x)
        kl = kl_divergence(self.p[idx], self.head(z))
        self.log("refine/kl", kl, prog_bar=True)
        if self.decoder is None:
            return kl
        recon = F.mse_loss(self.decoder(z), x)
        self.log("refine/recon", recon, prog_bar=True)
        return self.hparams.gamma * kl + recon

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())

    def on_fit_start(self) -> None:
        if self.last_labels is None:  # a fresh run, not one resumed from a checkpoint
            self.init_centers()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self.global_step % self.hparams.update_interval == 0 and self.refresh_target():
            self.trainer.should_stop = True
            return -1  # ends the epoch here; should_stop ends the fit
        return None

    @torch.no_grad()
    def init_centers(self) -> None:
        """The initializer (K-means) on the codes of every sample; the same centres on every process."""
        start = time.perf_counter()
        z = embed_all(self.encoder, self._images(), self.hparams.embed_batch_size)
        centers = None
        if self.trainer.is_global_zero:
            centers = self.initializer(z)
        centers = self.trainer.strategy.broadcast(centers, src=0).to(self.device)
        self.head.centers.copy_(centers)
        self.initial_centers = centers.cpu()
        self.last_labels = self.head(z).argmax(1)
        self.kmeans_seconds = time.perf_counter() - start

    @torch.no_grad()
    def refresh_target(self) -> bool:
        """Recompute P over the whole data set; True when the stop rule is met."""
        z = embed_all(self.encoder, self._images(), self.hparams.embed_batch_size)
        q = self.head(z).exp()
        self.p = target_distribution(q)
        labels = q.argmax(1)
        self.delta_label = float((labels != self.last_labels).float().mean())
        self.last_labels = labels
        self.n_refresh += 1
        self._log_refresh(labels)
        return self.n_refresh > 1 and self.delta_label < self.hparams.tol

    @torch.no_grad()
    def predict_all(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) images -> ((N, D) codes, (N, K) q) for the whole set, equal on every process."""
        z = embed_all(self.encoder, images, self.hparams.embed_batch_size)
        return z, self.head(z).exp()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dec"] = {
            "p": self.p.cpu() if self.p is not None else None,
            "last_labels": self.last_labels.cpu() if self.last_labels is not None else None,
            "initial_centers": self.initial_centers,
            "n_refresh": self.n_refresh,
            "delta_label": self.delta_label,
            "kmeans_seconds": self.kmeans_seconds,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["dec"]
        self.p, self.last_labels = state["p"], state["last_labels"]
        self.initial_centers = state["initial_centers"]
        self.n_refresh, self.delta_label = state["n_refresh"], state["delta_label"]
        self.kmeans_seconds = state["kmeans_seconds"]

    def _images(self) -> Tensor:
        return self.trainer.datamodule.data.on(self.device)

    def _log_refresh(self, labels: Tensor) -> None:
        sizes = torch.bincount(labels, minlength=self.hparams.n_clusters)
        metrics = {
            "refine/delta_label": self.delta_label,
            "refine/largest_cluster": float(sizes.max()) / labels.numel(),
        }
        targets = self.trainer.datamodule.data.labels
        if targets is not None:
            metrics.update({f"val/{k}": v for k, v in external_metrics(labels, targets).items()})
        self.log("delta", self.delta_label, prog_bar=True, logger=False)
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_step)
            if self.trainer.is_global_zero and hasattr(self.logger.experiment, "add_histogram"):
                self.logger.experiment.add_histogram(
                    "refine/cluster_sizes", labels.cpu(), self.global_step, bins=self.hparams.n_clusters
                )
