"""K-means in torch: k-means++ seeding and Lloyd iterations, every restart run at once.

Written by hand because scikit-learn's runs on the CPU only; it is kept as the reference
(tests compare inertias) and stays the default for codes that live on the CPU. Also KMeansInit, the
initial centres (K-means or gmm.py's Gaussian mixture, on the codes or on a t-SNE map of them).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from deep_clustering.config import INIT_CHOICES, is_whole
from deep_clustering.errors import InputError, TrainingError, either


@dataclass
class KMeansResult:
    centers: Tensor  # (K, D) the best restart's centres
    labels: Tensor  # (N,) index of each sample's nearest centre
    inertia: float  # sum of squared distances of the samples to their centres


def kmeans(
    x: Tensor,
    n_clusters: int,
    n_init: int = 20,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    chunk_size: int = 65536,
) -> KMeansResult:
    """Lloyd's K-means with k-means++ seeding, `n_init` restarts run as one batched computation.

    Args:
        x: (N, D) points, on any device.
        n_clusters: K.
        n_init: restarts; the one with the lowest inertia wins.
        max_iter: Lloyd iterations at most.
        tol: stop when the squared centre shift falls under tol * mean feature variance
            (scikit-learn's rule).
        seed: seeds a generator of its own; the global random state is untouched.
        chunk_size: samples per distance computation, to bound memory at (n_init, chunk, K)
            (distances as |x|^2 - 2 x.c + |c|^2, as scikit-learn's: never (n_init, N, D)).
    """
    centers, labels, dist2 = kmeans_restarts(x, n_clusters, n_init, max_iter, tol, seed, chunk_size)
    inertia = dist2.sum(dim=1)
    best = int(inertia.argmin())
    return KMeansResult(centers[best], labels[best], float(inertia[best]))


def kmeans_restarts(
    x: Tensor,
    n_clusters: int,
    n_init: int,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    chunk_size: int = 65536,
) -> tuple[Tensor, Tensor, Tensor]:
    """Every restart of `kmeans` (same arguments): (R, K, D) centres, (R, N) labels and (R, N) squared
    distances of the samples to their centres."""
    x = x.float()
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise InputError(f"n_clusters={n_clusters} must be between 1 and the number of samples ({n})")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    centers = _kmeans_plus_plus(x, n_clusters, n_init, gen, chunk_size)
    threshold = tol * x.var(dim=0, unbiased=False).mean()
    for _ in range(max_iter):
        labels, _ = _assign(x, centers, chunk_size)
        new_centers = _means(x, labels, centers, chunk_size)
        shift = (new_centers - centers).pow(2).sum(dim=(1, 2))
        centers = new_centers
        if bool((shift <= threshold).all()):
            break
    labels, dist2 = _assign(x, centers, chunk_size)
    return centers, labels, dist2


def _assign(x: Tensor, centers: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """(N, D) points, (R, K, D) centres -> (R, N) nearest centre, (R, N) squared distance to it."""
    labels, dists = [], []
    c_norm = centers.pow(2).sum(-1).unsqueeze(1)  # (R, 1, K)
    for xc in x.split(chunk_size):
        d2 = xc.pow(2).sum(-1)[None, :, None] - 2 * xc @ centers.transpose(1, 2) + c_norm
        d, i = d2.clamp_min_(0).min(dim=2)
        labels.append(i)
        dists.append(d)
    return torch.cat(labels, 1), torch.cat(dists, 1)


def _means(x: Tensor, labels: Tensor, old: Tensor, chunk_size: int) -> Tensor:
    """The mean of each cluster's points, per restart; an empty cluster keeps its old centre.

    The sums are one matrix product of the one-hot assignments with the points, a chunk of points at
    a time (on a GPU, scattered adds into R x K rows would queue on the same few addresses)."""
    r, k, d = old.shape
    sums = torch.zeros(r * k, d, device=x.device, dtype=x.dtype)
    counts = torch.zeros(r * k, device=x.device, dtype=x.dtype)
    for xc, lc in zip(x.split(chunk_size), labels.split(chunk_size, dim=1)):
        onehot = torch.zeros(r, k, xc.shape[0], device=x.device, dtype=x.dtype).scatter_(1, lc[:, None], 1.0)
        sums += onehot.view(r * k, -1) @ xc
        counts += onehot.view(r * k, -1).sum(1)
    means = (sums / counts.clamp_min(1)[:, None]).view(r, k, d)
    return torch.where(counts.view(r, k, 1) > 0, means, old)


def _kmeans_plus_plus(x: Tensor, k: int, r: int, gen: torch.Generator, chunk_size: int) -> Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii 2007) for r restarts at once -> (r, k, D)."""
    n = x.shape[0]
    first = torch.randint(n, (r,), generator=gen, device=x.device)
    centers = [x[first]]  # each (r, D)
    closest = _squared_distances(x, x[first], chunk_size)  # (r, N)
    for _ in range(1, k):
        weights = closest.clamp_min(0)
        total = weights.sum(dim=1, keepdim=True)
        # all points equal to chosen centres: fall back to uniform picks
        weights = torch.where(total > 0, weights, torch.ones_like(weights))
        pick = torch.multinomial(weights, 1, generator=gen).squeeze(1)
        new = x[pick]
        centers.append(new)
        closest = torch.minimum(closest, _squared_distances(x, new, chunk_size))
    return torch.stack(centers, dim=1)


def _squared_distances(x: Tensor, points: Tensor, chunk_size: int) -> Tensor:
    """(N, D) samples, (r, D) points -> (r, N) squared distances, a chunk of samples at a time, as
    |x|^2 - 2 x.p + |p|^2 (the differences themselves would take r x N x D: gigabytes for wide codes)."""
    p_norm = points.pow(2).sum(-1, keepdim=True)  # (r, 1)
    return torch.cat([(xc.pow(2).sum(-1) - 2 * points @ xc.T + p_norm).clamp_min_(0) for xc in x.split(chunk_size)], 1)


class KMeansInit:
    """The initial cluster centres for DEC: K-means (or a Gaussian mixture) on the codes, optionally on a map of them.

    Args:
        n_clusters: K.
        n_init: K-means restarts; the lowest inertia wins.
        backend: 'torch' (this module or gmm.py, on the codes' device), 'sklearn', or 'auto' (torch
            for codes on a GPU, scikit-learn on the CPU).
        manifold: 'none' clusters the codes themselves (DEC, IDEC, DCEC as published); 'tsne'
            clusters a 2-D t-SNE map of them (the manifold step of N2D, McConville et al. 2020,
            with t-SNE in place of UMAP) and returns the mean code of each cluster; 'auto' is
            'tsne' up to MANIFOLD_MAX_SAMPLES samples and 'none' above, where t-SNE takes minutes.
        seed: seeds K-means, t-SNE, the mixture and the subset below.
        clusterer: 'kmeans', or 'gmm' (a Gaussian mixture with `n_init` restarts, as N2D clusters
            its manifold); with 'gmm' the centres are the mean code of each component's samples.
        manifold_samples: t-SNE maps at most this many codes, a random subset (its cost grows
            faster than the number of points: minutes for 70,000 on a CPU); the centres are then
            the mean codes of each cluster of the subset.
        tsne_iters, tsne_lr_scale, tsne_angle: t-SNE's iterations, step size and Barnes-Hut angle
            (`tsne_map`); the defaults are scikit-learn's, configs/train.yaml sets the trainer's own.
    """

    def __init__(
        self,
        n_clusters: int,
        n_init: int = 20,
        backend: str = "auto",
        manifold: str = "auto",
        seed: int = 0,
        clusterer: str = "kmeans",
        manifold_samples: int = 20000,
        tsne_iters: int = 1000,
        tsne_lr_scale: float = 1.0,
        tsne_angle: float = 0.5,
    ):
        for key, value in (("backend", backend), ("manifold", manifold), ("clusterer", clusterer)):
            if value not in INIT_CHOICES[key]:
                raise InputError(f"init.{key}={value!r} must be {either(INIT_CHOICES[key])}")
        if not (is_whole(manifold_samples) and manifold_samples >= n_clusters):  # a subset to cluster into K
            raise InputError(
                f"init.manifold_samples={manifold_samples!r} must be a whole number, at least n_clusters={n_clusters}"
            )
        self.n_clusters, self.n_init, self.seed = n_clusters, n_init, seed
        self.backend, self.manifold, self.clusterer = backend, manifold, clusterer
        self.manifold_samples, self.tsne_iters, self.tsne_lr_scale = manifold_samples, tsne_iters, tsne_lr_scale
        self.tsne_angle = tsne_angle

    def __call__(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D) latent codes of every sample -> the (n_clusters, D) centres and the clusterer's (N,)
        labels, both on z's device. Where t-SNE mapped a subset, the other samples take their nearest
        centre's label."""
        distinct = torch.unique(z, dim=0).shape[0]
        if distinct < self.n_clusters:
            raise TrainingError(
                f"K-means: the codes of the {len(z)} samples take only {distinct} distinct values, fewer than "
                f"n_clusters={self.n_clusters}: the autoencoder collapsed (see pretrain/recon) or the images repeat"
            )
        manifold = chosen_manifold(self.manifold, z.shape[0])
        codes, points, subset = z, z, None
        if manifold == "tsne":
            if z.shape[0] > self.manifold_samples:
                order = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(self.seed))
                subset = order[: self.manifold_samples].to(z.device)
                z = z[subset]
            mapped = tsne_map(z.cpu().numpy(), self.seed, self.tsne_iters, self.tsne_lr_scale, self.tsne_angle)
            points = torch.from_numpy(mapped).float().to(z.device)
        centers, labels = fit_clusters(points, self.clusterer, self.n_clusters, self.n_init, self.seed, self.backend)
        if manifold != "none" or self.clusterer != "kmeans":
            counts = torch.bincount(labels, minlength=self.n_clusters).clamp_min(1)
            sums = torch.zeros(self.n_clusters, z.shape[1], device=z.device).index_add_(0, labels, z.float())
            centers = sums / counts[:, None]
        if subset is not None:
            labels = torch.cdist(codes.float(), centers).argmin(1).index_copy_(0, subset, labels)
        return centers, labels


def fit_clusters(
    points: Tensor, clusterer: str, n_clusters: int, n_init: int, seed: int, backend: str = "auto"
) -> tuple[Tensor | None, Tensor]:
    """K-means' or a Gaussian mixture's partition of (N, D) points -> (the K-means centres, None for
    the mixture; (N,) labels), on the points' device. `backend`: 'torch' (this module, gmm.py),
    'sklearn', or 'auto' (torch for points on a GPU, scikit-learn's on the CPU)."""
    if backend == "auto":
        backend = "torch" if points.is_cuda else "sklearn"
    if backend == "torch" and clusterer == "gmm":
        from deep_clustering.gmm import gaussian_mixture

        return None, gaussian_mixture(points, n_clusters, n_init=n_init, seed=seed).labels
    if backend == "torch":
        result = kmeans(points, n_clusters, n_init=n_init, seed=seed)
        return result.centers, result.labels
    x = points.float().cpu().numpy()
    if clusterer == "gmm":
        from sklearn.mixture import GaussianMixture

        labels = GaussianMixture(n_clusters, n_init=n_init, random_state=seed).fit_predict(x)
        return None, torch.from_numpy(labels).long().to(points.device)
    from sklearn.cluster import KMeans

    fit = KMeans(n_clusters, n_init=n_init, random_state=seed).fit(x)
    centers = torch.from_numpy(fit.cluster_centers_).float().to(points.device)
    return centers, torch.from_numpy(fit.labels_).long().to(points.device)


def tsne_map(x: np.ndarray, seed: int, iters: int = 1000, lr_scale: float = 1.0, angle: float = 0.5) -> np.ndarray:
    """scikit-learn's 2-D t-SNE map of (N, D) points; its perplexity, 30, lowered under N for tiny sets.

    `iters`: iterations (scikit-learn's max_iter, at least 250: the first 250 exaggerate early).
    `lr_scale`: the step size in multiples of scikit-learn's 'auto', max(N / 48, 50); 1 is 'auto' itself.
    `angle`: Barnes-Hut's trade of accuracy for speed (scikit-learn's default 0.5; larger is faster).
    """
    from sklearn.manifold import TSNE

    rate = "auto" if lr_scale == 1 else lr_scale * max(len(x) / 48, 50.0)
    perplexity = min(30.0, len(x) - 1.0)
    tsne = TSNE(
        2, perplexity=perplexity, max_iter=iters, learning_rate=rate, random_state=seed, init="pca", angle=angle
    )
    return tsne.fit_transform(x)


def reseed_empty(z: Tensor, centers: Tensor) -> tuple[Tensor, list[int]]:
    """Move each centre that no sample is nearest to onto the sample farthest from its own centre
    (scikit-learn's relocation of empty K-means clusters), so no cluster stays empty.

    Args:
        z: (N, D) codes; centers: (K, D).

    Returns:
        The new (K, D) centres and the indices of the clusters that were empty.
    """
    dist = torch.cdist(z, centers)
    nearest = dist.min(1)
    counts = torch.bincount(nearest.indices, minlength=len(centers))
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return centers, []
    farthest = nearest.values.argsort(descending=True)[: len(empty)]
    centers = centers.clone()
    centers[empty] = z[farthest].to(centers.dtype)
    return centers, empty


MANIFOLD_MAX_SAMPLES = 20000  # above this, 'auto' skips the t-SNE map (minutes on a CPU)


def chosen_manifold(manifold: str, n_samples: int) -> str:
    """`init.manifold` for `n_samples` codes: 'auto' is 'tsne' up to MANIFOLD_MAX_SAMPLES, 'none' above."""
    if manifold != "auto":
        return manifold
    return "tsne" if n_samples <= MANIFOLD_MAX_SAMPLES else "none"
