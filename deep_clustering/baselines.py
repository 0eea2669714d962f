"""Other clusterers on the pretrained latent codes, reported beside DEC with the same metrics."""

import numpy as np
import torch
from torch import Tensor

from deep_clustering.config import BASELINES
from deep_clustering.errors import InputError
from deep_clustering.kmeans import fit_clusters
from deep_clustering.metrics import external_metrics, internal_metrics

RESTARTS = {"kmeans": 20, "gmm": 3}  # the restarts of the baselines that kmeans.fit_clusters runs


def cluster_codes(name: str, codes: Tensor, n_clusters: int, seed: int = 0) -> Tensor:
    """(N, D) codes -> (N,) labels on the codes' device, by K-means (20 restarts) or a Gaussian mixture
    (full covariances, 3 restarts), each in torch for codes on a GPU and scikit-learn's otherwise, as
    the initialisation; or by HDBSCAN (which picks its own number of clusters; noise points
    get a cluster of their own)."""
    from sklearn.cluster import HDBSCAN

    if name in RESTARTS:
        return fit_clusters(codes, name, n_clusters, RESTARTS[name], seed)[1]
    x = codes.float().cpu().numpy()
    if name == "hdbscan":
        labels = HDBSCAN(min_cluster_size=max(5, len(x) // (20 * n_clusters)), copy=True).fit_predict(x)
        labels = np.where(labels < 0, labels.max() + 1, labels)
    else:
        raise InputError(f"baselines: unknown clusterer {name!r} (known: {', '.join(BASELINES)})")
    return torch.from_numpy(labels).long().to(codes.device)


def run_baselines(names: list[str], codes: Tensor, labels: Tensor | None, n_clusters: int, seed: int = 0) -> dict:
    """{name: metrics} for each clusterer on the codes: ACC / NMI / ARI where labels exist, and the
    internal scores, as for DEC's own predictions (computed on the codes' device)."""
    out = {}
    for name in names:
        pred = cluster_codes(name, codes, n_clusters, seed)
        scores = external_metrics(pred, labels) if labels is not None else {}
        scores.update(internal_metrics(codes, pred, seed=seed))
        scores["n_clusters_found"] = int(pred.unique().numel())
        out[name] = scores
    return out
