"""Clustering metrics on the predictions for a whole split, as pure functions."""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics.functional.clustering import calinski_harabasz_score, davies_bouldin_score


def external_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """ACC (best one-to-one matching of clusters to classes, Hungarian), NMI and ARI.

    Args:
        pred: (N,) cluster of each sample.
        target: (N,) true class of each sample (counted on pred's device).
    """
    return contingency_scores(contingency(pred, target))


def contingency(pred: Tensor, target: Tensor) -> Tensor:
    """(K, C) counts of the samples of each cluster and of each class present, the classes in
    increasing order of their label (any whole numbers: -1, 3, 10**9), K the largest cluster plus
    one. Counted where `pred` is (one bincount: on a GPU only the small table comes back to the host)."""
    pred = pred.long()
    classes, target = torch.unique(target.long().to(pred.device), return_inverse=True)
    k, c = int(pred.max()) + 1, len(classes)
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
    """Label-free scores of a clustering of the latent codes, computed where the codes are.

    silhouette (higher is better, in [-1, 1]; on a random subsample of `max_samples`, since it is
    quadratic in N), davies_bouldin (lower is better) and calinski_harabasz (higher is better).
    NaN where fewer than two clusters are occupied or each sample is alone in one (scikit-learn's
    scores are defined for 2 to N - 1 clusters).

    Args:
        codes: (N, D) latent codes.
        pred: (N,) cluster of each sample.
    """
    codes, pred = codes.float(), pred.long().to(codes.device)
    n = codes.shape[0]
    if not 2 <= pred.unique().numel() < n:
        return {"silhouette": float("nan"), "davies_bouldin": float("nan"), "calinski_harabasz": float("nan")}
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples].to(codes.device)
    sil = float("nan")
    if 2 <= pred[sample].unique().numel() < len(sample):
        sil = silhouette(codes[sample], pred[sample])
    return {
        "silhouette": sil,
        "davies_bouldin": float(davies_bouldin_score(codes, pred)),
        "calinski_harabasz": float(calinski_harabasz_score(codes, pred)),
    }


def silhouette(codes: Tensor, pred: Tensor, chunk_size: int = 1024) -> float:
    """The mean silhouette coefficient as scikit-learn defines it (0 for a sample alone in its
    cluster), computed where the codes are, `chunk_size` rows of the distance matrix at a time.

    Args:
        codes: (N, D) points.
        pred: (N,) cluster of each point; at least two clusters occupied.
    """
    pred = pred.long()
    onehot = F.one_hot(pred, int(pred.max()) + 1).to(codes.dtype)  # (N, K)
    sizes = onehot.sum(0)
    total = codes.new_zeros((), dtype=torch.float64)
    for rows in torch.arange(codes.shape[0], device=codes.device).split(chunk_size):
        sums = torch.cdist(codes[rows], codes) @ onehot  # (chunk, K) summed distances to each cluster
        own = pred[rows]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None]).squeeze(1) / (own_size - 1).clamp_min(1)  # mean to its own, itself left out
        others = torch.where(sizes > 0, sums / sizes.clamp_min(1), torch.inf)
        b = others.scatter(1, own[:, None], torch.inf).min(1).values  # mean to the nearest other cluster
        s = torch.nan_to_num((b - a) / torch.maximum(a, b))  # 0 / 0 where points coincide: 0, as scikit-learn
        total += torch.where(own_size > 1, s, 0.0).sum().double()
    return float(total / codes.shape[0])
