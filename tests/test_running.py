"""The device-side running mean the modules log from."""

import torch

from deep_clustering.running import RunningMean


def test_running_mean_weights_its_values_and_starts_afresh_after_pop():
    mean = RunningMean()
    assert mean.pop() is None
    mean.add(torch.tensor([1.0, 2.0]))
    mean.add(torch.tensor([3.0, 4.0]), weight=3)
    torch.testing.assert_close(mean.pop(), torch.tensor([2.5, 3.5]))  # (1 + 9) / 4, (2 + 12) / 4
    assert mean.pop() is None
    mean.add(torch.tensor(5.0, requires_grad=True))
    popped = mean.pop()
    assert popped.item() == 5.0 and not popped.requires_grad
