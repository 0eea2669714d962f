import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from deep_clustering.errors import TrainingError
from deep_clustering.kmeans import KMeansInit, kmeans, reseed_empty
from deep_clustering.metrics import external_metrics


def blobs(n=600, k=5, d=4, std=0.5, seed=0):
    x, y = make_blobs(n, d, centers=k, cluster_std=std, center_box=(-20, 20), random_state=seed)
    return torch.from_numpy(x).float(), torch.from_numpy(y)


def test_recovers_well_separated_blobs():
    x, y = blobs()
    result = kmeans(x, 5, n_init=5, seed=0)
    assert external_metrics(result.labels, y)["acc"] == 1.0
    assert result.centers.shape == (5, 4)


@pytest.mark.parametrize("seed", [0, 1])
def test_inertia_matches_scikit_learn(seed):
    # overlapping clusters, where the restarts matter: the inertia within 1% of scikit-learn's
    x, _ = make_blobs(3000, 10, centers=10, cluster_std=4.0, random_state=seed)
    ours = kmeans(torch.from_numpy(x).float(), 10, n_init=20, seed=seed).inertia
    theirs = KMeans(10, n_init=20, random_state=seed).fit(x).inertia_
    assert abs(ours - theirs) / theirs < 0.01


def test_inertia_is_sum_of_squared_distances():
    x, _ = blobs()
    r = kmeans(x, 5, n_init=3)
    expected = float((x - r.centers[r.labels]).pow(2).sum())
    assert np.isclose(r.inertia, expected, rtol=1e-4)


def test_same_seed_same_result():
    x, _ = blobs(std=3.0)
    a, b = kmeans(x, 5, seed=3), kmeans(x, 5, seed=3)
    torch.testing.assert_close(a.centers, b.centers)


def test_more_clusters_than_points_is_refused():
    with pytest.raises(ValueError, match="n_clusters=5"):
        kmeans(torch.randn(3, 2), 5)


@pytest.mark.parametrize("backend,clusterer", [("torch", "kmeans"), ("sklearn", "kmeans"), ("auto", "gmm")])
@pytest.mark.parametrize("manifold", ["none", "tsne"])
def test_initial_centers_recover_blobs(backend, clusterer, manifold):
    x, y = blobs(n=300)
    centers, labels = KMeansInit(5, n_init=5, backend=backend, manifold=manifold, clusterer=clusterer)(x)
    nearest = torch.cdist(x, centers).argmin(1)
    assert centers.shape == (5, 4)
    assert external_metrics(nearest, y)["acc"] == 1.0
    assert external_metrics(labels, y)["acc"] == 1.0  # the clusterer's own partition, of every sample


def test_manifold_on_a_subset_still_recovers_blobs(monkeypatch):
    from sklearn.manifold import TSNE

    mapped = []
    fit_transform = TSNE.fit_transform
    monkeypatch.setattr(TSNE, "fit_transform", lambda self, a: mapped.append(len(a)) or fit_transform(self, a))
    x, y = blobs(n=300)
    init = KMeansInit(5, n_init=5, manifold="tsne", clusterer="gmm", manifold_samples=120)
    centers, labels = init(x)
    assert mapped == [120]
    nearest = torch.cdist(x, centers).argmin(1)
    assert external_metrics(nearest, y)["acc"] == 1.0
    assert labels.shape == (300,) and external_metrics(labels, y)["acc"] == 1.0  # the rest: their nearest centre
    assert torch.equal(centers, init(x)[0])  # the subset is seeded


def test_initial_centers_refuses_unknown_options():
    with pytest.raises(ValueError, match="init.manifold='umap'"):
        KMeansInit(2, manifold="umap")
    with pytest.raises(ValueError, match="init.clusterer='dbscan'"):
        KMeansInit(2, clusterer="dbscan")


def test_reseed_empty_moves_the_empty_centre_to_the_worst_fit_sample():
    z = torch.tensor([[0.0], [0.1], [10.0], [13.0]])
    centers = torch.tensor([[0.0], [10.0], [100.0]])  # nobody is nearest to 100
    new, empty = reseed_empty(z, centers)
    assert empty == [2]
    assert new[:, 0].tolist() == [0.0, 10.0, 13.0]  # 13 is the farthest from its centre (10)
    assert reseed_empty(z, new)[1] == []


def test_collapsed_codes_are_a_clear_error():
    z = torch.ones(50, 4)
    z[:2] = 0  # two distinct codes for three clusters
    with pytest.raises(TrainingError, match="take only 2 distinct values, fewer than n_clusters=3"):
        KMeansInit(3)(z)
