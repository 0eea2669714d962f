"""Every network of the project: the two autoencoders, the ImageNet backbones and the clustering layer. No
training code."""

import math

import torch
import torch.nn.functional as F
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
    unroll_below: on a CPU, a (transposed) convolution whose unrolled matrix has at most this many
    entries runs as one matrix product (`Conv2d`); 0 keeps torch's convolution everywhere.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        latent_dim: int = 10,
        channels: tuple[int, ...] = (32, 64, 128),
        kernels: tuple[int, ...] = (5, 5, 3),
        paddings: tuple[int, ...] | None = None,
        unroll_below: int = 2**18,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
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
            encoder += [Conv2d(c_in, c_out, k, stride=2, padding=p, unroll_below=unroll_below), nn.ReLU(inplace=True)]
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
            decoder.append(
                ConvTranspose2d(c_in, c_out, k, stride=2, padding=pad, output_padding=extra, unroll_below=unroll_below)
            )
            if i < len(layers) - 1:
                decoder.append(nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images -> ((B, latent_dim) codes, (B, C, H, W) reconstructions)."""
        z = self.encoder(x)
        return z, self.decoder(z)


class Conv2d(nn.Conv2d):
    """torch's Conv2d (same parameters, same function) that, on a CPU, computes a convolution whose
    unrolled matrix (input size x output size) has at most `unroll_below` entries as one matrix product.

    On images as small as the 8x8 digits oneDNN's convolution kernels cost far more than their
    arithmetic: a training step of DCEC's autoencoder at batch 64 takes about a third less time this
    way on a 2-core CPU (benchmarks/unroll.py). The matrix is gathered from the weights at each call,
    so gradients reach the weights as a convolution's would. Larger images (and GPUs) keep torch's
    convolution.
    """

    def __init__(self, *args, unroll_below: int = 2**18, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unroll_below = unroll_below
        self._unroll_cache: dict[tuple[int, ...], tuple[Tensor, tuple[int, ...], int] | None] = {}

    def forward(self, x: Tensor) -> Tensor:
        y = _unrolled(self, x)
        return super().forward(x) if y is None else y


class ConvTranspose2d(nn.ConvTranspose2d):
    """torch's ConvTranspose2d, as one matrix product on a CPU where that matrix is small (`Conv2d`)."""

    def __init__(self, *args, unroll_below: int = 2**18, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unroll_below = unroll_below
        self._unroll_cache: dict[tuple[int, ...], tuple[Tensor, tuple[int, ...], int] | None] = {}

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        y = _unrolled(self, x) if output_size is None else None
        return super().forward(x, output_size) if y is None else y


def _unrolled(layer: Conv2d | ConvTranspose2d, x: Tensor) -> Tensor | None:
    """`layer(x)` as x.flatten(1) @ M, M the layer unrolled into a matrix; None where that does not
    apply (a GPU, an unbatched input, grouped or dilated layers, non-zero padding modes, M too large)."""
    if x.device.type != "cpu" or x.dim() != 4 or layer.unroll_below <= 0:
        return None
    key = tuple(x.shape[1:])
    if key not in layer._unroll_cache:
        layer._unroll_cache[key] = _unroll_index(layer, key)
    if layer._unroll_cache[key] is None:
        return None
    index, (c_out, h, w), width = layer._unroll_cache[key]
    # the weight's rows (a convolution's output channels, a transposed one's input channels), each
    # followed by a 0; one row of `rows` for each output value of the convolution (the transposed
    # convolution's input value), one column for each of its inputs: M, or for a transposed
    # convolution (the adjoint of the convolution with the same weight) M transposed
    kernels = F.pad(layer.weight.flatten(1), (0, 1))
    rows = kernels.index_select(1, index).view(-1, width)
    matrix = rows if isinstance(layer, nn.ConvTranspose2d) else rows.T
    if layer.bias is None:
        y = x.flatten(1) @ matrix
    else:
        y = torch.addmm(layer.bias[:, None].expand(c_out, h * w).reshape(-1), x.flatten(1), matrix)
    return y.view(-1, c_out, h, w)


def _unroll_index(
    layer: Conv2d | ConvTranspose2d, in_shape: tuple[int, ...]
) -> tuple[Tensor, tuple[int, ...], int] | None:
    """For inputs of `in_shape` (C, H, W): for the convolution (for a transposed convolution, the
    convolution with the same weight that it is the adjoint of, from its output back to its input)
    which entry of a weight row (C x k x k of it, flattened; its size for none) joins each output
    position to each input value, position by position; the layer's output shape; the number of
    the convolution's input values. None where the layer does not qualify."""
    if layer.groups != 1 or any(d != 1 for d in layer.dilation) or layer.padding_mode != "zeros":
        return None
    if isinstance(layer.padding, str):  # 'same' / 'valid': torch's convolution
        return None
    transposed = isinstance(layer, nn.ConvTranspose2d)
    n_in = math.prod(in_shape)
    conv = F.conv_transpose2d if transposed else F.conv2d
    extra = {"output_padding": layer.output_padding} if transposed else {}
    out_shape = tuple(
        conv(
            torch.zeros(1, *in_shape, dtype=torch.float64),
            torch.zeros(layer.weight.shape, dtype=torch.float64),
            None,
            layer.stride,
            layer.padding,
            **extra,
        ).shape[1:]
    )
    if n_in * math.prod(out_shape) > layer.unroll_below:
        return None
    # each basis image lights one input value of the convolution; its convolution with a weight row
    # numbered 1, 2, ... gives at each output position the number of the one entry joining the two
    # (0: none). Exact in float64.
    conv_in = out_shape if transposed else in_shape
    n = math.prod(conv_in)
    basis = torch.eye(n, dtype=torch.float64).view(n, *conv_in)
    numbers = torch.arange(1, layer.weight[0].numel() + 1, dtype=torch.float64).view(1, *layer.weight.shape[1:])
    index = F.conv2d(basis, numbers, None, layer.stride, layer.padding).flatten(1).T.round().long()
    index = torch.where(index > 0, index - 1, layer.weight[0].numel())
    return index.flatten(), out_shape, n


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
        self.latent_dim = latent_dim
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


class PretrainedBackbone(nn.Module):
    """A torchvision ImageNet network as the encoder, the classic alternative to an autoencoder.

    Images are converted to 3 channels, resized to `input_size` and normalised as ImageNet was;
    the codes are the network's penultimate features (ResNet: after pooling; VGG: the 4,096 of the
    second fully connected layer), optionally through a small trainable linear head. There is no
    decoder: the run skips pretraining and refines with DEC's loss alone.

    Args:
        arch: resnet18, resnet50 or vgg16.
        weights: 'DEFAULT' (torchvision's ImageNet weights, downloaded once into torch's cache),
            the path of a saved state dict, or None (random weights: for tests).
        head_dim: size of a linear head on the features, trained by DEC; None keeps the features.
        freeze: keep the network's weights fixed (only the head and the centres train).
    """

    ARCHS = ("resnet18", "resnet50", "vgg16")

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        arch: str = "resnet18",
        weights: str | None = "DEFAULT",
        head_dim: int | None = None,
        freeze: bool = True,
        input_size: int = 224,
    ) -> None:
        super().__init__()
        from torchvision.models import get_model

        if arch not in self.ARCHS:
            raise InputError(f"model.arch={arch!r} must be one of {', '.join(self.ARCHS)}")
        net = get_model(arch, weights=None)
        if weights == "DEFAULT":
            from torchvision.models import get_model_weights

            try:
                net.load_state_dict(get_model_weights(arch).DEFAULT.get_state_dict(progress=False))
            except Exception as e:
                raise InputError(
                    f"model.weights=DEFAULT: cannot fetch torchvision's {arch} weights ({type(e).__name__}); "
                    f"offline, give a saved state dict: model.weights=PATH"
                ) from None
        elif weights:
            try:
                net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            except Exception as e:
                raise InputError(f"model.weights={weights}: not {arch} weights ({type(e).__name__}: {e})") from None
        if arch == "vgg16":
            features, trunk = 4096, nn.Sequential(net.features, net.avgpool, nn.Flatten(), *net.classifier[:5])
        else:
            features, trunk = net.fc.in_features, nn.Sequential(*list(net.children())[:-1], nn.Flatten())
        if freeze:
            trunk.requires_grad_(False)
        head = nn.Linear(features, head_dim) if head_dim else nn.Identity()
        self.latent_dim = head_dim or features
        self.encoder = nn.Sequential(_ImageNetInput(input_size), _FrozenEval(trunk) if freeze else trunk, head)
        self.decoder = None

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        return self.encoder(x), None


class _ImageNetInput(nn.Module):
    """[0, 1] images with 1 or 3 channels -> 3 channels, resized, normalised as ImageNet."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class _FrozenEval(nn.Module):
    """A frozen network kept in eval mode (batch norm uses its running statistics) whatever the
    mode of the model around it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> "_FrozenEval":
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ClusteringLayer(nn.Module):
    """DEC's clustering layer: K trainable centres and the Student-t soft assignment to them."""

    def __init__(self, centers: Tensor, alpha: float = 1.0) -> None:
        super().__init__()
        self.centers = nn.Parameter(centers.detach().clone().float())
        self.alpha = alpha

    def forward(self, z: Tensor) -> Tensor:
        """(B, D) codes -> (B, K) log q."""
        return soft_assignment(z, self.centers, self.alpha)
