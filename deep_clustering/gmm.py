"""Gaussian mixtures in torch: EM with full covariances, every restart run at once.

Written by hand because scikit-learn's GaussianMixture runs on the CPU only, where codes on a GPU
would wait for it (the `gmm` baseline and `init.clusterer=gmm`). It is scikit-learn's algorithm,
which the tests keep as the reference: each restart starts from the partition of one K-means
restart, every covariance gets `reg_covar` on its diagonal, a restart stops once its mean
log-likelihood per sample gains less than `tol`, and the restart with the highest wins.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from deep_clustering.errors import InputError, TrainingError
from deep_clustering.kmeans import kmeans_restarts

# log weights (R, K), means (R, K, D), Cholesky factor of the precision (R, K, D, D), its log-determinant (R, K)
Params = tuple[Tensor, Tensor, Tensor, Tensor]
# sum r (R, K), sum r d (R, K, D), sum r d d^T (R, K, D, D) over samples, d = x - centre; centre (R, K, D)
Sums = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass
class MixtureResult:
    means: Tensor  # (K, D) the best restart's component means, in x's dtype
    labels: Tensor  # (N,) each sample's most probable component under the best restart
    log_likelihood: float  # the best restart's mean log-likelihood per sample (scikit-learn's lower_bound_)


def gaussian_mixture(
    x: Tensor,
    n_components: int,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    seed: int = 0,
    chunk_elements: int = 2**24,
) -> MixtureResult:
    """A mixture of `n_components` Gaussians with full covariances, fitted by EM from `n_init` starts.

    Args:
        x: (N, D) points, on any device; computed in float64.
        n_components: K.
        n_init: restarts, run as one batched computation; the highest log-likelihood wins.
        max_iter: EM iterations at most, per restart.
        tol: a restart stops when its mean log-likelihood gains less than this.
        reg_covar: added to every covariance's diagonal.
        seed: seeds the K-means starts (kmeans.kmeans_restarts); the global random state is untouched.
        chunk_elements: samples are taken in chunks, so that no temporary holds more than this many
            values ((n_init, K, chunk, D)).
    """
    n, d = x.shape
    if not 1 <= n_components <= n:
        raise InputError(f"n_components={n_components} must be between 1 and the number of samples ({n})")
    centres, starts, _ = kmeans_restarts(x, n_components, n_init, seed=seed)  # (R, K, D), (R, N)
    xs = x.double()
    chunk = max(1, chunk_elements // (n_init * n_components * d))
    params = _m_step(_sums_of_partitions(xs, starts, centres.double(), chunk), n, reg_covar)
    bound = torch.full((n_init,), -math.inf, dtype=xs.dtype, device=xs.device)
    done = torch.zeros(n_init, dtype=torch.bool, device=xs.device)
    for _ in range(max_iter):
        new_bound, sums = _e_step(xs, params, chunk)
        new = _m_step(sums, n, reg_covar)
        params = tuple(torch.where(done.view(-1, *[1] * (p.dim() - 1)), p, q) for p, q in zip(params, new))
        done, bound = done | ((new_bound - bound).abs() < tol), torch.where(done, bound, new_bound)
        if bool(done.all()):
            break
    best = int(bound.argmax())
    params = tuple(p[best : best + 1] for p in params)
    labels = torch.cat([_log_prob(xc, params)[0][0].argmax(dim=0) for xc in xs.split(chunk)])
    return MixtureResult(params[1][0].to(x.dtype), labels, float(bound[best]))


def _log_prob(xc: Tensor, params: Params) -> tuple[Tensor, Tensor]:
    """(n, D) samples -> (R, K, n) log of weight_k N(x | mean_k, cov_k), per restart, and the (R, K, n, D)
    differences x - mean_k."""
    log_w, means, prec, log_det = params
    diff = xc - means.unsqueeze(-2)
    y = diff @ prec
    return log_w[..., None] + log_det[..., None] - 0.5 * (xc.shape[1] * math.log(2 * math.pi) + y.pow(2).sum(-1)), diff


def _e_step(xs: Tensor, params: Params, chunk: int) -> tuple[Tensor, Sums]:
    """The (R,) mean log-likelihood per sample under `params`, and the responsibility-weighted sums
    that the M-step turns into the next parameters."""
    total, sums = 0.0, None
    for xc in xs.split(chunk):
        logp, diff = _log_prob(xc, params)
        norm = torch.logsumexp(logp, dim=1)  # (R, n)
        total = total + norm.sum(dim=1)
        sums = _add(sums, (logp - norm.unsqueeze(1)).exp(), diff)
    return total / xs.shape[0], (*sums, params[1])


def _sums_of_partitions(xs: Tensor, labels: Tensor, centres: Tensor, chunk: int) -> Sums:
    """The sums of `_e_step` for responsibilities that are each start's (R, N) partition, around its
    K-means centres (R, K, D). An empty cluster adds nothing to them, so its centre becomes 0, and
    with it its mean, as scikit-learn's."""
    r, k = centres.shape[:2]
    sums = None
    for xc, lc in zip(xs.split(chunk), labels.split(chunk, dim=1)):
        h = torch.zeros(r, k, len(xc), dtype=xs.dtype, device=xs.device).scatter_(1, lc.unsqueeze(1), 1.0)
        sums = _add(sums, h, xc - centres.unsqueeze(-2))
    return (*sums, centres * (sums[0] > 0).unsqueeze(-1))


def _add(sums: tuple[Tensor, Tensor, Tensor] | None, resp: Tensor, diff: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """sums + (sum_n r, sum_n r d, sum_n r d d^T) of (R, K, n) responsibilities and (R, K, n, D) differences."""
    weighted = resp.unsqueeze(-1) * diff
    part = (resp.sum(dim=-1), weighted.sum(dim=-2), weighted.transpose(-1, -2) @ diff)
    return part if sums is None else tuple(a + b for a, b in zip(sums, part))


def _m_step(sums: Sums, n: int, reg_covar: float) -> Params:
    """Weights, means and covariances from the weighted sums around `centre`, as scikit-learn's M-step
    (10 eps added to every component's weight, so an empty one stays defined)."""
    nk, s1, s2, centre = sums
    nk = nk + 10 * torch.finfo(nk.dtype).eps
    shift = s1 / nk.unsqueeze(-1)  # the new means less the centre
    eye = torch.eye(s1.shape[-1], dtype=s1.dtype, device=s1.device)
    cov = s2 / nk[..., None, None] - shift.unsqueeze(-1) * shift.unsqueeze(-2) + reg_covar * eye
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info > 0).any()):
        raise TrainingError(
            "Gaussian mixture: a component's covariance is singular (its samples span fewer dimensions than the "
            "codes'): use fewer clusters, or K-means (init.clusterer=kmeans, baselines without gmm)"
        )
    prec = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).mT
    weights = nk / n
    log_w = (weights / weights.sum(dim=-1, keepdim=True)).log()
    return log_w, centre + shift, prec, prec.diagonal(dim1=-2, dim2=-1).log().sum(-1)
