"""Every network of the project: the two autoencoders and the clustering layer. No training code."""

import math

from torch import Tensor, nn

from deep_clustering.errors import InputError
from deep_clustering.losses import soft_assignment


class ConvAutoencoder(nn.Module):
    """DCEC's convolutional autoencoder (Guo et al. 2017, figure 1), for any image size and channel count.

    Encoder: stride-2 convolutions (default 32-64-128 channels, kernels 5-5-3, ReLU), flatten, a
    linear embedding. Decoder: the mirror image with transposed convolutions, each sized to give
    back exactly the encoder's input shape (8x8, 16x16, 28x28, 32x32, ...).

    paddings: per convolution; None pads k // 2 everywhere (Keras' 'same': each layer halves the
    size, rounding up). DCEC itself uses 'same', 'same', 'valid': [2, 2, 0].
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        latent_dim: int = 10,
        channels: tuple[int, ...] = (32, 64, 128),
        kernels: tuple[int, ...] = (5, 5, 3),
        paddings: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        paddings = tuple(k // 2 for k in kernels) if paddings is None else tuple(paddings)
        if not len(channels) == len(kernels) == len(paddings):
            raise InputError(
                f"model.channels {list(channels)}, model.kernels {list(kernels)} and model.paddings "
                f"{list(paddings)} differ in length"
            )
        sizes = [tuple(image_size)]
        for k, p in zip(kernels, paddings):
            sizes.append(tuple((s + 2 * p - k) // 2 + 1 for s in sizes[-1]))
            if min(sizes[-1]) < 1:
                raise InputError(
                    f"model.kernels {list(kernels)} with model.paddings {list(paddings)} shrink "
                    f"{tuple(image_size)} images to nothing: pad more or use fewer layers"
                )
        widths = [in_channels, *channels]
        encoder: list[nn.Module] = []
        for c_in, c_out, k, p in zip(widths[:-1], widths[1:], kernels, paddings):
            encoder += [nn.Conv2d(c_in, c_out, k, stride=2, padding=p), nn.ReLU(inplace=True)]
        bottom = (channels[-1], *sizes[-1])
        encoder += [nn.Flatten(), nn.Linear(math.prod(bottom), latent_dim)]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [
            nn.Linear(latent_dim, math.prod(bottom)),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, bottom),
        ]
        layers = list(zip(widths[:-1], widths[1:], kernels, paddings, sizes[:-1], sizes[1:]))
        for i, (c_out, c_in, k, pad, out_size, in_size) in enumerate(reversed(layers)):
            extra = tuple(o - ((s - 1) * 2 - 2 * pad + k) for o, s in zip(out_size, in_size))
            decoder.append(nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=pad, output_padding=extra))
            if i < len(layers) - 1:
                decoder.append(nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images -> ((B, latent_dim) codes, (B, C, H, W) reconstructions)."""
        z = self.encoder(x)
        return z, self.decoder(z)


class MLPAutoencoder(nn.Module):
    """DEC's fully connected autoencoder d-500-500-2000-10 (Xie et al. 2016, section 4.3), ReLU inside.

    The images are flattened; the decoder mirrors the encoder and ends linear.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        latent_dim: int = 10,
        hidden: tuple[int, ...] = (500, 500, 2000),
    ) -> None:
        super().__init__()
        shape = (in_channels, *image_size)
        dims = [math.prod(shape), *hidden, latent_dim]
        self.encoder = nn.Sequential(nn.Flatten(), *_mlp(dims))
        self.decoder = nn.Sequential(*_mlp(dims[::-1]), nn.Unflatten(1, shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images -> ((B, latent_dim) codes, (B, C, H, W) reconstructions)."""
        z = self.encoder(x)
        return z, self.decoder(z)


def _mlp(dims: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return layers


class ClusteringLayer(nn.Module):
    """DEC's clustering layer: K trainable centres and the Student-t soft assignment to them."""

    def __init__(self, centers: Tensor, alpha: float = 1.0) -> None:
        super().__init__()
        self.centers = nn.Parameter(centers.detach().clone().float())
        self.alpha = alpha

    def forward(self, z: Tensor) -> Tensor:
        """(B, D) codes -> (B, K) log q."""
        return soft_assignment(z, self.centers, self.alpha)
