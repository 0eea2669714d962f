import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as sk

from deep_clustering.metrics import contingency, external_metrics, internal_metrics, silhouette


def test_permuted_labelling_scores_one():
    target = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    pred = torch.tensor([2, 2, 0, 0, 3, 3, 1])  # the same partition, other names
    m = external_metrics(pred, target)
    assert m["acc"] == 1.0 and math.isclose(m["nmi"], 1.0, rel_tol=1e-6) and math.isclose(m["ari"], 1.0, rel_tol=1e-6)


def test_acc_uses_one_to_one_matching():
    # clusters 0 -> class 1 (2 right), 1 -> class 0 (2 right); the last sample is wrong: 4/5
    target = torch.tensor([1, 1, 0, 0, 0])
    pred = torch.tensor([0, 0, 1, 1, 0])
    assert math.isclose(external_metrics(pred, target)["acc"], 0.8, rel_tol=1e-6)


def test_more_clusters_than_classes():
    target = torch.tensor([0, 0, 0, 1, 1, 1])
    pred = torch.tensor([0, 0, 2, 1, 1, 1])  # the best matching leaves cluster 2 unmatched: 5/6
    assert math.isclose(external_metrics(pred, target)["acc"], 5 / 6, rel_tol=1e-6)


def test_internal_metrics_prefer_the_true_partition():
    gen = torch.Generator().manual_seed(0)
    codes = torch.cat([torch.randn(50, 2, generator=gen), torch.randn(50, 2, generator=gen) + 10])
    good = torch.tensor([0] * 50 + [1] * 50)
    bad = torch.arange(100) % 2
    g, b = internal_metrics(codes, good), internal_metrics(codes, bad)
    assert g["silhouette"] > 0.8 > b["silhouette"]
    assert g["davies_bouldin"] < b["davies_bouldin"]
    assert g["calinski_harabasz"] > b["calinski_harabasz"]


def test_internal_metrics_one_cluster_or_one_sample_each_is_nan():
    m = internal_metrics(torch.randn(10, 2), torch.zeros(10, dtype=torch.long))
    assert all(math.isnan(v) for v in m.values())
    # n_clusters equal to the images: scikit-learn's Davies-Bouldin raised, and the run ended in a traceback
    m = internal_metrics(torch.randn(10, 2), torch.arange(10))
    assert all(math.isnan(v) for v in m.values())
    m = internal_metrics(torch.randn(10, 2), torch.arange(10) % 9)  # one pair: defined
    assert not any(math.isnan(v) for v in m.values())


@pytest.mark.parametrize(
    "n, k, c",
    [(1000, 10, 10), (500, 3, 7), (300, 12, 4), (50, 1, 5), (50, 5, 1), (10, 10, 10)],
)
def test_nmi_and_ari_match_scikit_learn(n, k, c):
    gen = torch.Generator().manual_seed(n + k + c)
    target = torch.randint(c, (n,), generator=gen)
    noise = torch.randint(k, (n,), generator=gen)
    pred = torch.where(torch.rand(n, generator=gen) < 0.6, target % k, noise)  # partly right, partly not
    pred[pred == k // 2] = k - 1  # an empty cluster between occupied ones (where k > 2)
    m = external_metrics(pred, target)
    assert math.isclose(m["nmi"], sk.normalized_mutual_info_score(target, pred), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(m["ari"], sk.adjusted_rand_score(target, pred), rel_tol=1e-9, abs_tol=1e-12)


def test_single_cluster_and_single_class_score_as_scikit_learn():
    ones, mixed = torch.zeros(20, dtype=torch.long), torch.arange(20) % 4
    for pred, target in [(ones, ones), (ones, mixed), (mixed, ones)]:
        m = external_metrics(pred, target)
        assert m["nmi"] == sk.normalized_mutual_info_score(target, pred)
        assert m["ari"] == sk.adjusted_rand_score(target, pred)


def test_contingency_counts_clusters_by_classes():
    pred, target = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([1, 1, 0, 0, 1, 1])
    expected = torch.tensor([[0, 2], [1, 0], [1, 2]])
    assert torch.equal(contingency(pred, target), expected)
    # any whole numbers as labels, in their order: a -1 crashed the bincount, IDs made a huge table
    assert torch.equal(contingency(pred, target * (10**9 + 1) - 1), expected)


@pytest.mark.parametrize("labels", [[-1, 1], [3, 5, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [0, 10**12]])
def test_labels_of_any_whole_numbers_score_as_scikit_learn(labels):
    gen = torch.Generator().manual_seed(len(labels))
    values = torch.tensor(labels)
    target = values[torch.randint(len(labels), (400,), generator=gen)]
    pred = torch.where(
        torch.rand(400, generator=gen) < 0.7, target.remainder(5), torch.randint(5, (400,), generator=gen)
    )
    pred[pred == 0] = 1  # cluster 0 left empty
    m = external_metrics(pred, target)
    table = sk.cluster.contingency_matrix(target, pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    assert math.isclose(m["acc"], table[rows, cols].sum() / 400, rel_tol=1e-12)
    assert math.isclose(m["nmi"], sk.normalized_mutual_info_score(target, pred), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(m["ari"], sk.adjusted_rand_score(target, pred), rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("k", [2, 5, 12])
def test_silhouette_matches_scikit_learn(k):
    gen = torch.Generator().manual_seed(k)
    pred = torch.randint(k, (700,), generator=gen)
    pred[:3] = k + 1  # an empty cluster k, and cluster k + 1 ...
    pred[3] = k + 2  # ... and a cluster of one sample (silhouette 0)
    codes = torch.randn(700, 6, generator=gen) + 3 * torch.randn(k + 3, 6, generator=gen)[pred]
    codes[10] = codes[11]  # coinciding points
    expected = sk.silhouette_score(codes.double().numpy(), pred.numpy())
    assert math.isclose(silhouette(codes, pred, chunk_size=64), expected, rel_tol=1e-5)


def test_silhouette_of_a_subsample_is_scikit_learns_on_the_same_samples():
    # above max_samples the silhouette is taken on a seeded subsample; the other two scores on all
    gen = torch.Generator().manual_seed(0)
    codes, pred = torch.randn(600, 3, generator=gen), torch.randint(0, 4, (600,), generator=gen)
    m = internal_metrics(codes, pred, max_samples=150, seed=7)
    sample = torch.randperm(600, generator=torch.Generator().manual_seed(7))[:150]
    assert m["silhouette"] == pytest.approx(sk.silhouette_score(codes[sample], pred[sample]), abs=1e-5)
    assert m["silhouette"] != pytest.approx(sk.silhouette_score(codes, pred), abs=1e-5)
    assert m["davies_bouldin"] == pytest.approx(sk.davies_bouldin_score(codes, pred), rel=1e-5)
    # a subsample inside one cluster has no silhouette; the scores over all samples stand
    one = internal_metrics(codes, (torch.arange(600) == 599).long(), max_samples=3, seed=7)
    assert math.isnan(one["silhouette"]) and not math.isnan(one["davies_bouldin"])
