import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from deep_clustering.errors import InputError, TrainingError
from deep_clustering.gmm import gaussian_mixture
from deep_clustering.kmeans import kmeans_restarts
from deep_clustering.metrics import external_metrics


@pytest.fixture(scope="module")
def digits10():
    """scikit-learn's digits, 10 principal components: overlapping classes, where the starts matter."""
    d = load_digits()
    return PCA(10, random_state=0).fit_transform(d.data / 16.0), d.target


@pytest.mark.parametrize("seed", [0, 1])
def test_from_the_same_start_em_runs_as_scikit_learn(digits10, seed):
    # scikit-learn's GaussianMixture started from the parameters of our K-means start: every EM step
    # must then be the same, so the iterations, the likelihood, the means and the labels agree
    x, _ = digits10
    k = 10
    labels = kmeans_restarts(torch.from_numpy(x).float(), k, 1, seed=seed)[1][0].numpy()
    counts = np.bincount(labels, minlength=k)
    means = np.stack([x[labels == j].mean(0) for j in range(k)])
    covs = np.stack([np.cov(x[labels == j].T, bias=True) + 1e-6 * np.eye(10) for j in range(k)])
    theirs = GaussianMixture(
        k, weights_init=counts / len(x), means_init=means, precisions_init=np.linalg.inv(covs), max_iter=100
    ).fit(x)
    ours = gaussian_mixture(torch.from_numpy(x), k, n_init=1, seed=seed)
    assert theirs.converged_
    assert ours.log_likelihood == pytest.approx(theirs.lower_bound_, abs=1e-9)
    np.testing.assert_allclose(ours.means.numpy(), theirs.means_, atol=1e-7)
    assert np.array_equal(ours.labels.numpy(), theirs.predict(x))


def test_restarts_find_a_likelihood_as_high_as_scikit_learns(digits10):
    x, y = digits10
    ours = gaussian_mixture(torch.from_numpy(x).float(), 10, n_init=10, seed=0)
    theirs = GaussianMixture(10, n_init=10, random_state=0).fit(x)
    assert ours.log_likelihood > theirs.lower_bound_ - 0.01 * abs(theirs.lower_bound_)
    assert ours.log_likelihood > gaussian_mixture(torch.from_numpy(x).float(), 10, n_init=1, seed=0).log_likelihood
    assert external_metrics(ours.labels, torch.from_numpy(y))["acc"] > 0.78  # scikit-learn's: 0.81
    assert ours.means.dtype == torch.float32 and ours.labels.shape == (len(x),)


def test_chunks_do_not_change_the_result(digits10):
    x = torch.from_numpy(digits10[0])
    whole = gaussian_mixture(x, 10, n_init=3, seed=2)
    chunked = gaussian_mixture(x, 10, n_init=3, seed=2, chunk_elements=3 * 10 * 10 * 100)  # chunks of 100 samples
    assert torch.equal(whole.labels, chunked.labels)
    assert chunked.log_likelihood == pytest.approx(whole.log_likelihood, abs=1e-9)


def test_more_components_than_points_is_refused():
    with pytest.raises(InputError, match="n_components=5"):
        gaussian_mixture(torch.randn(3, 2), 5)


def test_clusters_far_from_the_origin_keep_their_precision():
    # two clusters of spread 1 a billion apart: sums of x x^T would lose the spread to rounding, sums
    # around each component's mean keep it, as scikit-learn's differences do
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    x[50:] += 1e9
    ours = gaussian_mixture(x, 2, seed=0)
    far = (torch.arange(100) >= 50).long()
    assert torch.equal(ours.labels, far) or torch.equal(ours.labels, 1 - far)
    theirs = GaussianMixture(2, random_state=0).fit(x.numpy())
    assert ours.log_likelihood == pytest.approx(theirs.lower_bound_, abs=1e-6)


def test_a_covariance_that_cannot_be_factored_names_the_way_out():
    # without reg_covar, a component of one sample has no spread at all
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    with pytest.raises(TrainingError, match="init.clusterer=kmeans"):
        gaussian_mixture(x, 2, reg_covar=0.0, seed=0)
