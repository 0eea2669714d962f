"""Stage 1: the autoencoder learns to reconstruct the images."""

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deep_clustering import graphs


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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.autoencoder(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        (loss,) = self.losses(x) if self.automatic_optimization else graphs.step(self, self.losses, x)
        self.log("pretrain/recon", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def losses(self, x: Tensor) -> tuple[Tensor]:
        return (F.mse_loss(self.autoencoder(x)[1], x),)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())
