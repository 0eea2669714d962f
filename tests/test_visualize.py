import sys
import types

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from deep_clustering.visualize import (
    confident_grid,
    confusion_figure,
    hungarian_order,
    log_final,
    log_refresh,
    most_confident,
)


def test_confident_grid_has_one_row_per_cluster():
    images = torch.rand(30, 1, 8, 8)
    q = torch.softmax(torch.randn(30, 4), 1)
    grid = confident_grid(images, q, per_cluster=5)
    assert grid.shape == (3, 4 * 10 + 2, 5 * 10 + 2)  # rows of 8 + 2 padding, plus the outer border


def test_most_confident_ranks_each_clusters_members_and_pads():
    q = torch.tensor([[0.6, 0.4, 0.0], [0.95, 0.05, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0]])
    # cluster 0: samples 1 (0.95), 3 (0.7), 0 (0.6); cluster 1: sample 2; cluster 2: none
    expected = torch.tensor([[1, 3, 0, -1, -1], [2, -1, -1, -1, -1], [-1, -1, -1, -1, -1]])
    assert torch.equal(most_confident(q, per_cluster=5), expected)


def test_confident_grid_puts_the_most_confident_first():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (0.1, 0.9, 0.5)])
    q = torch.tensor([[0.6, 0.4], [0.95, 0.05], [0.8, 0.2]])  # all in cluster 0
    grid = confident_grid(images, q, per_cluster=3)
    firsts = [grid[0, 2, 2 + 4 * i].item() for i in range(3)]  # top-left pixel of each tile
    assert firsts == [0.8999999761581421, 0.5, 0.10000000149011612]


def test_hungarian_order_puts_matches_on_the_diagonal():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([2, 2, 0, 0, 1, 1])
    counts, clusters, classes = hungarian_order(pred, target)
    assert torch.equal(counts, 2 * torch.eye(3, dtype=torch.long))
    assert [(c, t) for c, t in zip(clusters, classes)] == [(0, 1), (1, 2), (2, 0)]
    # the classes by their labels, those present only (labels 3, 5, 9 had columns 0 to 9)
    counts, clusters, classes = hungarian_order(pred, torch.tensor([3, 3, 5, 5, 9, 9]))
    assert counts.shape == (3, 3) and [(c, t) for c, t in zip(clusters, classes)] == [(0, 5), (1, 9), (2, 3)]


def test_views_land_in_tensorboard(tmp_path):
    images, labels = torch.rand(60, 1, 8, 8), torch.arange(60) % 3
    codes = torch.randn(60, 5) + labels[:, None] * 5
    q = torch.softmax(-torch.cdist(codes, codes[:3]), 1)
    with SummaryWriter(str(tmp_path)) as writer:
        log_refresh(writer, images, q, 0)
        log_final(writer, images, codes, q.argmax(1), labels, 7)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    shown = set(events.Tags()["images"])
    assert {"refine/most_confident", "final/confusion", "final/latent_pca", "final/latent_tsne"} <= shown
    assert "refine/cluster_sizes" in events.Tags()["histograms"]
    assert (tmp_path / "projector_config.pbtxt").exists()
    meta = (tmp_path / "00007" / "latent" / "metadata.tsv").read_text().splitlines()
    assert meta[0] == "cluster\tlabel" and len(meta) == 61


def test_labels_are_shown_by_their_class_names_where_given(tmp_path):
    codes, labels = torch.randn(40, 4), torch.arange(40) % 2
    with SummaryWriter(str(tmp_path)) as writer:
        log_final(writer, torch.rand(40, 1, 8, 8), codes, labels, labels, 3, class_names=["cats", "dogs"])
    meta = [line.split("\t") for line in (tmp_path / "00003" / "latent" / "metadata.tsv").read_text().splitlines()]
    assert meta[0] == ["cluster", "label"] and {label for _, label in meta[1:]} == {"cats", "dogs"}
    assert all(label == ["cats", "dogs"][int(cluster)] for cluster, label in meta[1:])  # clusters = labels here
    figure = confusion_figure(labels, labels, ["cats", "dogs"])
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["cats", "dogs"]


def test_a_umap_package_without_umap_learn_in_it_only_drops_that_map(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", types.ModuleType("umap"))  # what `pip uninstall` can leave behind
    codes, labels = torch.randn(40, 4), torch.arange(40) % 2
    with SummaryWriter(str(tmp_path)) as writer:
        log_final(writer, torch.rand(40, 1, 8, 8), codes, labels, labels, 1)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    shown = {tag for tag in events.Tags()["images"] if tag.startswith("final/latent_")}
    assert shown == {"final/latent_pca", "final/latent_tsne"}


def test_images_that_are_not_square_get_their_thumbnails(tmp_path):
    # until 2026-12-06 16x12 images crashed the run at its end, in the projector's sprite, after all training
    codes, labels = torch.randn(40, 4), torch.arange(40) % 2
    with SummaryWriter(str(tmp_path)) as writer:
        log_final(writer, torch.rand(40, 1, 16, 12), codes, labels, labels, 3)
    assert (tmp_path / "00003" / "latent" / "sprite.png").exists()
