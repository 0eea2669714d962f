"""Q, P and the KL against values worked out by hand."""

import math

import torch

from deep_clustering.losses import kl_divergence, soft_assignment, target_distribution


def test_soft_assignment_two_centres_one_point():
    # z = (0, 0); centres (1, 0) and (0, 2): squared distances 1 and 4, alpha = 1
    # kernel (1 + d^2)^-1 = 1/2 and 1/5, so q = (1/2, 1/5) / (7/10) = (5/7, 2/7)
    z = torch.tensor([[0.0, 0.0]])
    centers = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    q = soft_assignment(z, centers, alpha=1.0).exp()
    torch.testing.assert_close(q, torch.tensor([[5 / 7, 2 / 7]]))


def test_soft_assignment_alpha():
    # alpha = 2: kernel (1 + d^2 / 2)^(-3/2) = (3/2)^(-3/2) and 3^(-3/2)
    z = torch.tensor([[0.0, 0.0]])
    centers = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    a, b = 1.5**-1.5, 3.0**-1.5
    q = soft_assignment(z, centers, alpha=2.0).exp()
    torch.testing.assert_close(q, torch.tensor([[a / (a + b), b / (a + b)]]))


def test_soft_assignment_stays_finite_far_away():
    # the direct formula underflows here: (1 + 1e8 / 100)^(-50.5) is about 1e-303, so q = 0 / 0
    z = torch.tensor([[1e4, 0.0]])
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    q = soft_assignment(z, centers, alpha=100.0).exp()
    assert torch.isfinite(q).all() and math.isclose(float(q.sum()), 1.0, abs_tol=1e-4)  # float32 at logits near -700
    assert q[0, 1] > q[0, 0]  # the nearer centre


def test_target_distribution_one_point_is_q():
    # one point: f_j = q_j, so p_j = q_j^2 / q_j / sum = q_j
    q = torch.tensor([[5 / 7, 2 / 7]])
    torch.testing.assert_close(target_distribution(q), q)


def test_target_distribution_two_points():
    # q = [[0.8, 0.2], [0.4, 0.6]]: f = (1.2, 0.8)
    # row 1: 0.64/1.2 = 0.5333, 0.04/0.8 = 0.05   -> p = (0.5333, 0.05) / 0.5833 = (0.9143, 0.0857)
    # row 2: 0.16/1.2 = 0.1333, 0.36/0.8 = 0.45   -> p = (0.1333, 0.45) / 0.5833 = (0.2286, 0.7714)
    q = torch.tensor([[0.8, 0.2], [0.4, 0.6]])
    expected = torch.tensor([[32 / 35, 3 / 35], [8 / 35, 27 / 35]])
    torch.testing.assert_close(target_distribution(q), expected)


def test_target_distribution_empty_cluster_is_not_nan():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = target_distribution(q)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p, q)


def test_kl_divergence_by_hand():
    # p = (1, 0), q = (5/7, 2/7): KL = 1 * log(1 / (5/7)) = log(7/5)
    p = torch.tensor([[1.0, 0.0]])
    log_q = torch.tensor([[5 / 7, 2 / 7]]).log()
    assert math.isclose(float(kl_divergence(p, log_q)), math.log(7 / 5), rel_tol=1e-6)


def test_kl_divergence_is_mean_over_rows():
    # rows: KL = log(7/5) and 0 (p = q): mean log(7/5) / 2
    p = torch.tensor([[1.0, 0.0], [5 / 7, 2 / 7]])
    log_q = torch.tensor([[5 / 7, 2 / 7], [5 / 7, 2 / 7]]).log()
    assert math.isclose(float(kl_divergence(p, log_q)), math.log(7 / 5) / 2, rel_tol=1e-6)
