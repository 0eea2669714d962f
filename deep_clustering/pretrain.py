"""Stage 1: the autoencoder learns to reconstruct the images."""

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AutoencoderModule(L.LightningModule):
    """Trains any autoencoder whose forward gives (codes, reconstructions) on the mean squared error."""

    def __init__(self, autoencoder: nn.Module, optimizer: Callable[..., torch.optim.Optimizer]) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.optimizer = optimizer

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.autoencoder(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        loss = F.mse_loss(self.autoencoder(x)[1], x)
        self.log("pretrain/recon", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())
