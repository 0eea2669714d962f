"""Other clusterers on the pretrained latent codes, reported beside DEC with the same metrics."""

import numpy as np
import torch
from torch import Tensor

from deep_clustering.errors import InputError
from deep_clustering.metrics import external_metrics, internal_metrics

NAMES = ("kmeans", "gmm", "hdbscan")


def cluster_codes(name: str, codes: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """(N, D) codes -> (N,) labels by scikit-learn's K-means (20 restarts), a Gaussian mixture
    (full covariances, 3 restarts) or HDBSCAN (which picks its own number of clusters; noise
    points get a cluster of their own)."""
    from sklearn.cluster import HDBSCAN, KMeans
    from sklearn.mixture import GaussianMixture

    if name == "kmeans":
        return KMeans(n_clusters, n_init=20, random_state=seed).fit_predict(codes)
    if name == "gmm":
        return GaussianMixture(n_clusters, n_init=3, random_state=seed).fit_predict(codes)
    if name == "hdbscan":
        labels = HDBSCAN(min_cluster_size=max(5, len(codes) // (20 * n_clusters))).fit_predict(codes)
        return np.where(labels < 0, labels.max() + 1, labels)
    raise InputError(f"baselines: unknown clusterer {name!r} (known: {', '.join(NAMES)})")


def run_baselines(names: list[str], codes: Tensor, labels: Tensor | None, n_clusters: int, seed: int = 0) -> dict:
    """{name: metrics} for each clusterer on the codes: ACC / NMI / ARI where labels exist, and the
    internal scores, as for DEC's own predictions."""
    out = {}
    for name in names:
        pred = torch.from_numpy(cluster_codes(name, codes.float().cpu().numpy(), n_clusters, seed)).long()
        scores = external_metrics(pred, labels) if labels is not None else {}
        scores.update(internal_metrics(codes, pred, seed=seed))
        scores["n_clusters_found"] = int(pred.unique().numel())
        out[name] = scores
    return out
