"""Running means kept on the device: added to at every step without waiting for a GPU, read once."""

from torch import Tensor


class RunningMean:
    """The weighted mean of a tensor of values over the `add` calls since the last `pop`."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.weight = 0

    def add(self, values: Tensor, weight: int = 1) -> None:
        weighted = values.detach() * weight
        self.total = weighted if self.total is None else self.total + weighted
        self.weight += weight

    def pop(self) -> Tensor | None:
        """The mean (None when nothing was added), and a fresh start."""
        mean = self.total / self.weight if self.weight else None
        self.total, self.weight = None, 0
        return mean
