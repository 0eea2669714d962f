"""Clustering metrics on the predictions for a whole split, as pure functions."""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import silhouette_score
from torch import Tensor
from torchmetrics.functional.clustering import calinski_harabasz_score, davies_bouldin_score


def external_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """ACC (best one-to-one matching of clusters to classes, Hungarian), NMI and ARI.

    Args:
        pred: (N,) cluster of each sample.
        target: (N,) true class of each sample (counted on pred's device).
    """
    return contingency_scores(contingency(pred, target))


def contingency(pred: Tensor, target: Tensor, n_clusters: int | None = None, n_classes: int | None = None) -> Tensor:
    """(K, C) counts of the samples of each cluster and class, counted where `pred` is (one bincount:
    on a GPU only the small table comes back to the host). K and C default to the largest cluster
    and class present, plus one (reading them waits for a GPU)."""
    pred, target = pred.long(), target.long().to(pred.device)
    k = n_clusters if n_clusters is not None else int(pred.max()) + 1
    c = n_classes if n_classes is not None else int(target.max()) + 1
    return torch.bincount(pred * c + target, minlength=k * c).reshape(k, c)


def contingency_scores(counts: Tensor) -> dict[str, float]:
    """ACC, NMI (arithmetic mean of the entropies) and ARI from a (K, C) contingency table, as
    scikit-learn computes them from the labels (its special cases included)."""
    table = counts.cpu().double().numpy()
    n = table.sum()
    rows, cols = linear_sum_assignment(table, maximize=True)
    acc = float(table[rows, cols].sum() / n)
    a, b = table.sum(1), table.sum(0)  # cluster sizes, class sizes
    occupied = (a > 0).sum(), (b > 0).sum()
    if occupied[0] == occupied[1] == 1:  # neither side splits the data: a perfect match
        nmi = 1.0
    else:
        nz = table > 0
        mi = float((table[nz] / n * np.log(n * table[nz] / np.outer(a, b)[nz])).sum())
        entropy = [float(-(v[v > 0] / n * np.log(v[v > 0] / n)).sum()) for v in (a, b)]
        nmi = 0.0 if mi <= 0 else mi / max((entropy[0] + entropy[1]) / 2, np.finfo(np.float64).eps)
    squares = (table**2).sum()
    pairs_together_both = squares - n  # ordered pairs in the same cluster and the same class
    pairs_cluster_only = (a**2).sum() - squares
    pairs_class_only = (b**2).sum() - squares
    pairs_neither = n**2 - pairs_cluster_only - pairs_class_only - squares
    if pairs_cluster_only == 0 and pairs_class_only == 0:
        ari = 1.0
    else:
        tp, tn, fp, fn = pairs_together_both, pairs_neither, pairs_cluster_only, pairs_class_only
        ari = float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))
    return {"acc": acc, "nmi": float(nmi), "ari": ari}


def internal_metrics(codes: Tensor, pred: Tensor, max_samples: int = 10000, seed: int = 0) -> dict[str, float]:
    """Label-free scores of a clustering of the latent codes.

    silhouette (higher is better, in [-1, 1]; on a random subsample of `max_samples`, since it is
    quadratic in N), davies_bouldin (lower is better) and calinski_harabasz (higher is better).
    NaN where fewer than two clusters are occupied.

    Args:
        codes: (N, D) latent codes.
        pred: (N,) cluster of each sample.
    """
    codes, pred = codes.float().cpu(), pred.long().cpu()
    if pred.unique().numel() < 2:
        return {"silhouette": float("nan"), "davies_bouldin": float("nan"), "calinski_harabasz": float("nan")}
    n = codes.shape[0]
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples]
    sil = float("nan")
    if pred[sample].unique().numel() >= 2:
        sil = float(silhouette_score(codes[sample].numpy(), pred[sample].numpy()))
    return {
        "silhouette": sil,
        "davies_bouldin": float(davies_bouldin_score(codes, pred)),
        "calinski_harabasz": float(calinski_harabasz_score(codes, pred)),
    }
