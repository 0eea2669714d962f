"""Pictures of a clustering for TensorBoard: pure functions from tensors to images and figures."""

import matplotlib

matplotlib.use("Agg")  # no display: render to memory

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from deep_clustering.kmeans import tsne_map  # noqa: E402
from deep_clustering.metrics import contingency  # noqa: E402


def most_confident(q: Tensor, per_cluster: int) -> Tensor:
    """(K, per_cluster) indices of each cluster's most confident members, most confident first, -1
    where a cluster has fewer; computed where `q` is (one top-k over the (N, K) table).

    Args:
        q: (N, K) soft assignments.
    """
    confidence, pred = q.max(1)
    own = pred[:, None] == torch.arange(q.shape[1], device=q.device)
    scores = torch.where(own, confidence[:, None], torch.full_like(q, -1.0))  # -1: not a member
    values, best = scores.topk(min(per_cluster, q.shape[0]), dim=0)
    best = torch.where(values >= 0, best, -1).T
    return torch.nn.functional.pad(best, (0, per_cluster - best.shape[1]), value=-1)


def viewable(images: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, 3, H, W) to show: RGB as it is, RGBA's RGB, any other channel count's first channel
    in gray (TensorBoard's and PNG's images hold 1, 3 or 4 channels, and a fourth is transparency)."""
    return images[:, :3] if images.shape[1] in (3, 4) else images[:, :1].expand(-1, 3, -1, -1)


def confident_grid(images: Tensor, q: Tensor, per_cluster: int = 10) -> Tensor:
    """The most confident samples of every cluster, one row per cluster (blank where a cluster has
    fewer members). Only those samples' indices leave q's device.

    Args:
        images: (N, C, H, W) in [0, 1].
        q: (N, K) soft assignments.

    Returns:
        (3, rows * (H + 2) + 2, per_cluster * (W + 2) + 2) image for `add_image`.
    """
    best = most_confident(q, per_cluster).flatten().cpu()
    tiles = torch.zeros(len(best), 3, *images.shape[2:])
    tiles[best >= 0] = viewable(images[best[best >= 0]].float())
    return make_grid(tiles, nrow=per_cluster, padding=2, pad_value=0.5).clamp(0, 1)


def contact_sheet(images: Tensor, confidence: Tensor, max_images: int = 64, per_row: int = 8) -> Tensor:
    """One cluster's most confident images, most confident first, `per_row` to a row.

    Args:
        images: (N, C, H, W) the cluster's images; confidence: (N,) their q for the cluster.
    """
    best = confidence.argsort(descending=True)[:max_images]
    return make_grid(viewable(images[best].float()), nrow=per_row, padding=2, pad_value=1.0).clamp(0, 1)


def hungarian_order(pred: Tensor, target: Tensor) -> tuple[Tensor, list[int], list[int]]:
    """The cluster x class count matrix, with clusters and classes ordered by their best one-to-one
    matching, so that a good clustering is heavy on the diagonal; the classes by their labels, those
    present only."""
    counts = contingency(pred.cpu(), target.cpu())
    k, c = counts.shape
    rows, cols = linear_sum_assignment(-counts.numpy())
    clusters = [int(r) for r in rows] + [r for r in range(k) if r not in rows]
    columns = [int(col) for col in cols] + [col for col in range(c) if col not in cols]
    labels = target.unique().tolist()
    return counts[clusters][:, columns], clusters, [labels[col] for col in columns]


def confusion_figure(pred: Tensor, target: Tensor, class_names: list[str] | None = None) -> plt.Figure:
    """Cluster versus label counts, ordered by the Hungarian matching; the labels named by
    `class_names` where given (an image folder's subfolders)."""
    counts, clusters, classes = hungarian_order(pred, target)
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(classes), 1 + 0.45 * len(clusters)), dpi=100)
    ax.imshow(counts.numpy(), cmap="Blues")
    names = [class_names[c] if class_names else str(c) for c in classes]
    ax.set_xticks(range(len(classes)), names, rotation=90 if class_names else 0)
    ax.set_yticks(range(len(clusters)), [str(c) for c in clusters])
    ax.set_xlabel("label")
    ax.set_ylabel("cluster")
    top = counts.max().item()
    for (i, j), n in zip(
        torch.cartesian_prod(torch.arange(len(clusters)), torch.arange(len(classes))).tolist(),
        counts.flatten().tolist(),
    ):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n > top / 2 else "black")
    fig.tight_layout()
    return fig


def latent_map_figure(points: Tensor, pred: Tensor, title: str) -> plt.Figure:
    """A 2-D map of the latent codes (already projected to (N, 2)), coloured by cluster."""
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), c=pred.numpy(), cmap="tab20", s=3)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def pca_2d(codes: Tensor) -> Tensor:
    """(N, D) -> (N, 2): the codes on their two principal axes."""
    centred = codes.float() - codes.float().mean(0)
    _, _, v = torch.pca_lowrank(centred, q=min(2, codes.shape[1]), center=False)
    return centred @ v[:, :2]


def log_refresh(experiment, images: Tensor, q: Tensor, step: int) -> None:
    """At each refresh of P: the most confident samples of every cluster and the cluster sizes."""
    experiment.add_image("refine/most_confident", confident_grid(images, q), step)
    k = q.shape[1]
    sizes = torch.bincount(q.argmax(1), minlength=k).cpu().double()
    values = torch.arange(k, dtype=torch.float64)  # a histogram of the cluster ids, one bucket each
    experiment.add_histogram_raw(
        "refine/cluster_sizes",
        min=0,
        max=k - 1,
        num=int(sizes.sum()),
        sum=float((sizes * values).sum()),
        sum_squares=float((sizes * values**2).sum()),
        bucket_limits=(values + 0.5).tolist(),
        bucket_counts=sizes.tolist(),
        global_step=step,
    )


def log_final(
    experiment,
    images: Tensor,
    codes: Tensor,
    pred: Tensor,
    labels: Tensor | None,
    step: int,
    class_names: list[str] | None = None,
    max_points: int = 2000,
    tsne: dict[str, float] | None = None,
) -> None:
    """At the end: the confusion matrix ordered by the Hungarian matching (all samples), the
    embedding projector (codes with cluster and label as metadata, thumbnails as sprites) and 2-D
    maps of the codes coloured by cluster (PCA; t-SNE on at most 500 of them, `tsne` the keyword
    arguments of `kmeans.tsne_map`; UMAP where umap-learn is installed), the last three
    on a fixed random subsample of at most `max_points`. Labels are shown by their `class_names`
    where given."""
    if labels is not None:
        experiment.add_figure("final/confusion", confusion_figure(pred, labels, class_names), step)
    sample = torch.randperm(len(codes), generator=torch.Generator().manual_seed(0))[:max_points]
    codes, few_pred, thumbs = codes[sample].float(), pred[sample], viewable(images[sample].float())
    height, width = thumbs.shape[-2:]  # the projector's sprite sheet takes square thumbnails: pad the short side
    thumbs = torch.nn.functional.pad(thumbs, (0, max(height, width) - width, 0, max(height, width) - height))
    if labels is None:
        experiment.add_embedding(codes, few_pred.tolist(), thumbs, step, tag="latent")
    else:
        meta = [[int(c), class_names[int(t)] if class_names else int(t)] for c, t in zip(few_pred, labels[sample])]
        header = ["cluster", "label"]
        experiment.add_embedding(codes, meta, thumbs, step, tag="latent", metadata_header=header)
    maps = {"pca": pca_2d(codes)}
    n = min(len(codes), 500)  # t-SNE costs seconds per thousand points
    maps["tsne"] = torch.from_numpy(tsne_map(codes[:n].numpy(), 0, **(tsne or {})))
    try:  # a package folder named umap without umap-learn in it (left by an uninstall) fails here too
        from umap import UMAP
    except ImportError:
        pass
    else:
        maps["umap"] = torch.from_numpy(UMAP(random_state=0).fit_transform(codes.numpy()))
    for name, points in maps.items():
        figure = latent_map_figure(points, few_pred[: len(points)], f"latent codes, {name.upper()}")
        experiment.add_figure(f"final/latent_{name}", figure, step)
