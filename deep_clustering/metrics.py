"""Clustering metrics on the predictions for a whole split, as pure functions."""

import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import silhouette_score
from torch import Tensor
from torchmetrics.functional.clustering import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
)


def external_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """ACC (best one-to-one matching of clusters to classes, Hungarian), NMI and ARI.

    Args:
        pred: (N,) cluster of each sample.
        target: (N,) true class of each sample.
    """
    pred, target = pred.long().cpu(), target.long().cpu()
    num_classes = int(max(pred.max(), target.max())) + 1
    return {
        "acc": _cluster_accuracy(pred, target, num_classes),
        "nmi": float(normalized_mutual_info_score(pred, target)),
        "ari": float(adjusted_rand_score(pred, target)),
    }


def _cluster_accuracy(pred: Tensor, target: Tensor, n: int) -> float:
    """The fraction of samples right under the best one-to-one map of clusters to classes (scipy's
    Hungarian; torchmetrics' needs the optional torch_linear_assignment package)."""
    counts = torch.bincount(pred * n + target, minlength=n * n).reshape(n, n)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    return float(counts[rows, cols].sum()) / pred.numel()


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
