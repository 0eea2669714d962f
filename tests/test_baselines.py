import pytest
import torch

from deep_clustering.baselines import cluster_codes, run_baselines
from deep_clustering.errors import InputError


def blobs(n_per: int = 100, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(n_per)
    return torch.randn(k * n_per, 5, generator=gen) * 0.3 + 6 * torch.randn(k, 5, generator=gen)[labels], labels


def test_every_baseline_recovers_separate_blobs():
    codes, labels = blobs()
    scores = run_baselines(["kmeans", "gmm", "hdbscan"], codes, labels, n_clusters=4)
    for name, s in scores.items():
        assert s["acc"] == 1.0 and s["n_clusters_found"] == 4, name
        assert s["silhouette"] > 0.8, name


def test_baseline_labels_come_back_on_the_codes_device():
    codes, _ = blobs()
    pred = cluster_codes("gmm", codes, 4)
    assert pred.device == codes.device and pred.dtype == torch.long and pred.shape == (400,)


def test_unknown_baseline_is_named():
    with pytest.raises(InputError, match="'spectral'"):
        cluster_codes("spectral", blobs()[0], 4)
