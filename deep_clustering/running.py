"""Running means kept on the device: added to at every step without waiting for a GPU, read once."""

from typing import Any

from lightning.pytorch.strategies import Strategy
from torch import Tensor


class RunningMean:
    """The weighted mean of a tensor of values over the `add` calls since the last `pop`."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.weight = 0

    def add(self, values: Tensor, weight: int = 1) -> None:
        weighted = values.detach() * weight
        if self.total is None:
            self.total = weighted
        else:  # .to: a sum loaded from a checkpoint is on the CPU; a no-op after the first add
            self.total = self.total.to(weighted.device) + weighted
        self.weight += weight

    def pop(self) -> Tensor | None:
        """The mean (None when nothing was added), and a fresh start."""
        mean = self.total / self.weight if self.weight else None
        self.total, self.weight = None, 0
        return mean

    def state_dict(self, strategy: Strategy | None = None) -> dict[str, Any]:
        """The sum so far (on the CPU) and its weight, for a checkpoint: a run resumed mid-way then
        logs the same mean as one never stopped. With a Lightning `strategy`, the sum is the mean of
        every process's (a collective: every process calls it, as every process saves a checkpoint):
        each process adds as many values of the same weights, so every process resuming from that
        mean gives the same mean over processes as an uninterrupted run."""
        total = self.total
        if total is not None and strategy is not None:
            total = strategy.reduce(total.clone(), reduce_op="mean")  # clone: the reduction is in place
        return {"total": total.cpu() if total is not None else None, "weight": self.weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.weight = state["total"], state["weight"]
