"""Stage 1: the autoencoder learns to reconstruct the images."""

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deep_clustering import graphs
from deep_clustering.running import RunningMean

log = logging.getLogger("deep_clustering")


class AutoencoderModule(L.LightningModule):
    """Trains any autoencoder whose forward gives (codes, reconstructions) on the mean squared error."""

    def __init__(
        self, autoencoder: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], graphed: bool = False
    ) -> None:
        """`graphed`: each step through `graphs.step` (captured as a CUDA graph on a GPU)."""
        super().__init__()
        self.autoencoder = autoencoder
        self.optimizer = optimizer
        self.automatic_optimization = not graphed
        self.captured: graphs.CapturedStep | None = None
        # the epoch's mean loss over its images, kept here rather than through self.log at every
        # step: a self.log call costs about as much host time as a captured step
        self.epoch_loss = RunningMean()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.autoencoder(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        (loss,) = self.losses(x) if self.automatic_optimization else graphs.step(self, self.losses, x)
        self.epoch_loss.add(loss, x.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        mean = self.epoch_loss.pop()  # the mean over the epoch's images, as self.log(on_epoch=True) gives
        if mean is None:
            return
        mean = float(self.trainer.strategy.reduce(mean, reduce_op="mean"))  # under DDP, over all processes' images
        # already the processes' mean: sync_dist averages equal values (and spares every DDP run
        # Lightning's warning that an epoch-level value is not synced)
        self.log("pretrain/recon", mean, prog_bar=True, logger=False, sync_dist=True)
        # to the logger here, not through self.log: Lightning logs an epoch's self.log values after the
        # epoch-end checkpoint, so a run killed between the two would never log this epoch's loss;
        # LastCheckpoint flushes the loggers before it saves. The step and epoch are Lightning's own.
        for logger in self.loggers:
            logger.log_metrics({"pretrain/recon": mean, "epoch": self.current_epoch}, self.global_step - 1)
        if self.trainer.is_global_zero:
            log.info("pretrain epoch %d/%d: recon %.5f", self.current_epoch + 1, self.trainer.max_epochs, mean)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint saved mid-epoch (SIGTERM) carries the epoch's sum so far; one saved at an
        # epoch's end (LastCheckpoint runs after on_train_epoch_end) an empty one; under DDP, the
        # processes' mean sum, which every process resumes from
        checkpoint["epoch_loss"] = self.epoch_loss.state_dict(self.trainer.strategy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "epoch_loss" in checkpoint:  # checkpoints written before it was saved have none
            self.epoch_loss.load_state_dict(checkpoint["epoch_loss"])

    def losses(self, x: Tensor) -> tuple[Tensor]:
        return (F.mse_loss(self.autoencoder(x)[1], x),)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())
