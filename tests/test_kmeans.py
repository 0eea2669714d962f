import os
import subprocess
import sys

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


@pytest.mark.parametrize(
    "backend,clusterer", [("torch", "kmeans"), ("sklearn", "kmeans"), ("auto", "gmm"), ("torch", "gmm")]
)
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


def test_tsne_runs_the_iterations_step_size_and_angle_asked_for(monkeypatch):
    from sklearn.manifold import TSNE

    ran = []
    fit_transform = TSNE.fit_transform

    def recorded(self, a):
        mapped = fit_transform(self, a)
        ran.append((self.n_iter_, self.learning_rate_, self.angle))
        return mapped

    monkeypatch.setattr(TSNE, "fit_transform", recorded)
    x, y = blobs(n=300)  # scikit-learn's 'auto' step size: max(300 / 48, 50) = 50
    for iters, scale, angle in ((300, 3.0, 0.7), (1000, 1.0, 0.5)):
        init = KMeansInit(5, n_init=5, manifold="tsne", tsne_iters=iters, tsne_lr_scale=scale, tsne_angle=angle)
        assert external_metrics(init(x)[1], y)["acc"] == 1.0
    assert ran[0] == (299, 150.0, 0.7)  # n_iter_: the last iteration's number, from 0
    assert ran[1][0] > 299 and ran[1][1:] == (50.0, 0.5)


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


PEAK_SCRIPT = """
import re, torch
from deep_clustering.kmeans import kmeans
def peak_mb():  # this process's peak resident memory (ru_maxrss would count the parent's before exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) / 1024
x = torch.randn(20_000, 128, generator=torch.Generator().manual_seed(0))
before = peak_mb()
kmeans(x, 5, n_init=20, max_iter=2, chunk_size=1024)
print(peak_mb() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak memory from Linux's /proc")
def test_memory_is_bounded_by_the_chunks_not_the_restarts():
    # 20 restarts of 20,000 x 128 codes (ResNet features are wider still): one (restarts, N, D)
    # temporary would be 205 MB; chunks of 1,024 samples keep every temporary at (20, 1,024, 128), 10 MB
    # glibc's malloc keeps freed blocks of a few MB for reuse, by as much as thread scheduling makes it:
    # with every block over 1 MB mapped and unmapped on its own, the peak is what was live at once
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1000000"}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, check=True, env=env)
    grown_mb = float(out.stdout.split()[-1])
    assert grown_mb < 150, f"K-means' peak memory grew by {grown_mb:.0f} MB"


def test_chunks_do_not_change_the_result():
    x, _ = make_blobs(3000, 6, centers=7, cluster_std=3.0, random_state=0)
    x = torch.from_numpy(x).float()
    whole, chunked = kmeans(x, 7, n_init=4, seed=1), kmeans(x, 7, n_init=4, seed=1, chunk_size=256)
    # the same partition, but perhaps another restart's labelling of it: two restarts here reach it with
    # inertias 153784.45 and 153784.44, which of them is lower depends on the order of the sums (on the CPU)
    pairs = torch.unique(torch.stack([whole.labels, chunked.labels]), dim=1)  # (2, pairs), sorted by whole's
    assert pairs.shape[1] == 7, "a cluster of one run is split in the other"
    torch.testing.assert_close(whole.centers, chunked.centers[pairs[1]], rtol=0, atol=1e-5)  # sums in another order
    assert chunked.inertia == pytest.approx(whole.inertia, rel=1e-6)
