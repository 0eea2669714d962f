import pytest
import torch

from deep_clustering.models import ClusteringLayer, ConvAutoencoder, MLPAutoencoder


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32), (3, 30, 17), (1, 64, 64)])
def test_conv_autoencoder_gives_back_the_input_shape(shape):
    ae = ConvAutoencoder(shape[0], shape[1:], latent_dim=10)
    x = torch.rand(4, *shape)
    z, x_hat = ae(x)
    assert z.shape == (4, 10) and x_hat.shape == x.shape


@pytest.mark.parametrize(("size", "bottom"), [((28, 28), (3, 3)), ((16, 16), (1, 1))])
def test_conv_autoencoder_with_dcec_paddings(size, bottom):
    ae = ConvAutoencoder(1, size, paddings=(2, 2, 0))  # 'same', 'same', 'valid' as in DCEC
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
