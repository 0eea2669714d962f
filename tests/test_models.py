import pytest
import torch

from deep_clustering.errors import InputError
from deep_clustering.export import load_autoencoder, save_autoencoder
from deep_clustering.models import ClusteringLayer, Conv2d, ConvAutoencoder, ConvTranspose2d, MLPAutoencoder


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32), (3, 30, 17), (1, 64, 64)])
def test_conv_autoencoder_gives_back_the_input_shape(shape):
    ae = ConvAutoencoder(shape[0], shape[1:], latent_dim=10)
    x = torch.rand(4, *shape)
    z, x_hat = ae(x)
    assert z.shape == (4, 10) and x_hat.shape == x.shape


@pytest.mark.parametrize(("size", "bottom"), [((28, 28), (3, 3)), ((16, 16), (1, 1))])
def test_conv_autoencoder_with_dcec_paddings(size, bottom):
    ae = ConvAutoencoder(1, size, paddings=(2, 2, 0))  # 'same', 'same', 'valid': DCEC's at 28x28, not at 16x16
    assert ae.encoder[-1].in_features == 128 * bottom[0] * bottom[1]
    x = torch.rand(2, 1, *size)
    assert ae(x)[1].shape == x.shape


def test_conv_autoencoder_refuses_layers_that_shrink_to_nothing():
    with pytest.raises(ValueError, match=r"shrink \(8, 8\) images to nothing"):
        ConvAutoencoder(1, (8, 8), paddings=(2, 2, 0))


def test_conv_autoencoder_has_dcec_layout():
    ae = ConvAutoencoder(1, (28, 28))
    convs = [m for m in ae.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert [c.stride for c in convs] == [(2, 2)] * 3
    assert ae.encoder[-1].out_features == 10


def test_mlp_autoencoder_has_dec_layout():
    ae = MLPAutoencoder(1, (28, 28))
    widths = [m.out_features for m in ae.encoder if isinstance(m, torch.nn.Linear)]
    assert widths == [500, 500, 2000, 10]
    z, x_hat = ae(torch.rand(2, 1, 28, 28))
    assert z.shape == (2, 10) and x_hat.shape == (2, 1, 28, 28)


def test_clustering_layer_rows_sum_to_one():
    layer = ClusteringLayer(torch.randn(3, 5))
    q = layer(torch.randn(7, 5)).exp()
    torch.testing.assert_close(q.sum(1), torch.ones(7))
    assert layer.centers.requires_grad


# (in channels, out channels, kernel, stride, padding, output padding, input size, bias): the default
# job's layers, odd sizes, no padding, no bias
UNROLLED = [
    (1, 32, 5, 2, 2, 1, (8, 8), True),
    (32, 64, 5, 2, 2, 1, (4, 4), True),
    (64, 128, 3, 2, 1, 0, (2, 2), True),
    (3, 4, 3, 1, 1, 0, (5, 7), False),
    (2, 3, 3, 2, 0, 1, (7, 6), True),
]


def _assert_same_layer(ours, torchs, x):
    ours.load_state_dict(torchs.state_dict())
    x = x.requires_grad_(True)
    y, y_ref = ours(x), torchs(x)
    torch.testing.assert_close(y, y_ref)
    # any loss: the gradients of the input and the parameters must be the convolution's
    grads = torch.autograd.grad(y.square().sum(), [x, *ours.parameters()])
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, *torchs.parameters()])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    return y.detach()


@pytest.mark.parametrize(("c_in", "c_out", "k", "stride", "pad", "out_pad", "size", "bias"), UNROLLED)
def test_unrolled_convolutions_are_torchs_convolutions(c_in, c_out, k, stride, pad, out_pad, size, bias):
    torch.manual_seed(0)
    conv = Conv2d(c_in, c_out, k, stride, pad, bias=bias)
    y = _assert_same_layer(conv, torch.nn.Conv2d(c_in, c_out, k, stride, pad, bias=bias), torch.randn(4, c_in, *size))
    back = ConvTranspose2d(c_out, c_in, k, stride, pad, output_padding=out_pad, bias=bias)
    ref = torch.nn.ConvTranspose2d(c_out, c_in, k, stride, pad, output_padding=out_pad, bias=bias)
    _assert_same_layer(back, ref, y)
    # both took the matrix product, not torch's kernel
    assert conv._unroll_cache[(c_in, *size)] is not None and back._unroll_cache[tuple(y.shape[1:])] is not None


def test_only_small_layers_on_a_cpu_are_unrolled():
    digits, usps = ConvAutoencoder(1, (8, 8)), ConvAutoencoder(1, (16, 16))
    digits(torch.rand(2, 1, 8, 8)), usps(torch.rand(2, 1, 16, 16))

    def unrolled(ae):
        layers = [m for m in [*ae.encoder, *ae.decoder] if isinstance(m, (Conv2d, ConvTranspose2d))]
        return [v is not None for m in layers for v in m._unroll_cache.values()]

    assert unrolled(digits) == [True] * 6  # matrices of 32,768-131,072 entries
    assert unrolled(usps) == [False] * 6  # 524,288-2,097,152 entries: over the default 262,144
    off = ConvAutoencoder(1, (8, 8), unroll_below=0)
    off(torch.rand(2, 1, 8, 8))
    assert unrolled(off) == []  # 0: torch's convolution, nothing computed


def test_an_autoencoder_trains_the_same_unrolled_or_not():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    models = [ConvAutoencoder(1, (8, 8), unroll_below=b) for b in (2**18, 0)]
    models[1].load_state_dict(models[0].state_dict())  # the same parameter names and shapes
    for model in models:
        adam = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(20):
            adam.zero_grad()
            torch.nn.functional.mse_loss(model(x)[1], x).backward()
            adam.step()
    for p, p_ref in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-4, atol=1e-5)


def test_a_resumed_runs_autoencoder_that_no_longer_fits_is_named_as_resumes(tmp_path):
    # the run's own autoencoder.pt, met on resume= by images of another size or (a fit continued with
    # other overrides) another model: until 2026-12-06 it was named as pretrained='s ("its shapes do
    # not fit"), a setting the user never gave
    save_autoencoder(tmp_path / "autoencoder.pt", ConvAutoencoder(1, (8, 8), channels=(4, 4, 4)), {}, 1, (8, 8))
    other = ConvAutoencoder(1, (12, 12), channels=(4, 4, 4))
    with pytest.raises(InputError, match=r"^pretrained=.*: its shapes do not fit this model and data \(encoder\.7"):
        load_autoencoder(str(tmp_path), other)
    with pytest.raises(InputError, match=r"^resume: .*autoencoder\.pt no longer fits this model and data \(encoder\.7"):
        load_autoencoder(str(tmp_path), other, resumed=True)
