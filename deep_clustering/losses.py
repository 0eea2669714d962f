"""The DEC clustering objective as pure functions (Xie et al. 2016, section 3.1).

Shapes: N samples, D latent dimensions, K clusters.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_assignment(z: Tensor, centers: Tensor, alpha: float = 1.0) -> Tensor:
    """log q, the Student-t soft assignment of DEC's equation (1), in log space.

    q_ij = (1 + |z_i - mu_j|^2 / alpha)^(-(alpha+1)/2) / sum_j' (...)

    The log-space form stays finite for distances where the direct formula underflows to 0/0.

    Args:
        z: (N, D) latent codes.
        centers: (K, D) cluster centres.
        alpha: degrees of freedom of the Student-t kernel.

    Returns:
        (N, K) log q; each row's exp sums to 1.
    """
    dist2 = torch.cdist(z, centers).pow(2)
    logits = -(alpha + 1.0) / 2.0 * torch.log1p(dist2 / alpha)
    return logits - torch.logsumexp(logits, dim=1, keepdim=True)


def target_distribution(q: Tensor, eps: float = 1e-12) -> Tensor:
    """P, the sharpened target of DEC's equation (3): p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j').

    f_j = sum_i q_ij is the soft frequency of cluster j, clamped at `eps` so that an empty
    cluster gives 0 rather than NaN.

    Args:
        q: (N, K) soft assignments over the WHOLE data set (f_j is a data-set-wide sum).

    Returns:
        (N, K) P; each row sums to 1.
    """
    weight = q.pow(2) / q.sum(dim=0).clamp_min(eps)
    return weight / weight.sum(dim=1, keepdim=True)


def kl_divergence(p: Tensor, log_q: Tensor) -> Tensor:
    """KL(P || Q) = sum_i sum_j p_ij log(p_ij / q_ij), averaged over the N rows (DEC's equation (2)).

    Args:
        p: (N, K) target rows for the samples of the batch.
        log_q: (N, K) log soft assignments of the same samples.
    """
    return F.kl_div(log_q, p, reduction="batchmean")
