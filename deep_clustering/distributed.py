"""Data-set-wide passes that give every process the same answer as one process would.

Each sample is handled by exactly one process (process r takes samples r, r + world, ...), the
results are gathered with padding (gloo aborts on gathers of unequal sizes) and put back in sample
order, so P, K-means and the metrics see every sample once, in the same order, on every rank.
"""

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from deep_clustering.data import ImageSet


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(values: Tensor, index: Tensor, n: int) -> Tensor:
    """Rows computed on each process for the samples `index` -> (n, ...) rows of all samples, on every process.

    Processes may hold different numbers of rows (none, too); each row's sample index says where it goes.
    """
    _, world = rank_and_world()
    if world == 1:
        out = values.new_empty((n, *values.shape[1:]))
        out[index] = values
        return out
    size = torch.tensor([values.shape[0]], device=values.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(sizes))
    pad_values = values.new_zeros((longest, *values.shape[1:]))
    pad_values[: values.shape[0]] = values
    pad_index = torch.full((longest,), -1, dtype=torch.long, device=values.device)
    pad_index[: index.shape[0]] = index
    all_values = [torch.empty_like(pad_values) for _ in range(world)]
    all_index = [torch.empty_like(pad_index) for _ in range(world)]
    dist.all_gather(all_values, pad_values)
    dist.all_gather(all_index, pad_index)
    values, index = torch.cat(all_values), torch.cat(all_index)
    keep = index >= 0
    out = values.new_empty((n, *values.shape[1:]))
    out[index[keep]] = values[keep]
    return out


# pixel values in one batch of an embedding pass when no batch size is given: 64 MB of float32
# input (21,399 MNIST images, 111 of 3 x 224 x 224). On an H100 a pass over MNIST took 11.5 ms in
# batches of 16,384 or more in plain PyTorch (shared STACK-NOTES), ours 17.4 ms in batches of 4,096
EMBED_VALUES = 2**24


@torch.no_grad()
def embed_all(encoder: nn.Module, data: ImageSet, batch_size: int | None, device: torch.device) -> Tensor:
    """The (N, D) codes of every image of `data` on `device`, each computed once, equal on every process.

    `batch_size` None: as many images a batch as hold EMBED_VALUES pixel values.
    """
    rank, world = rank_and_world()
    batch_size = batch_size or max(1, EMBED_VALUES // math.prod(data.images.shape[1:]))
    mine = torch.arange(rank, len(data), world, device=device)
    was_training = encoder.training
    encoder.eval()
    try:
        codes = [encoder(x) for x in data.batches(mine, batch_size, device)]
        codes = torch.cat(codes or [encoder(data.images[:0].to(device))])
    finally:
        encoder.train(was_training)
    return gather_rows(codes.float(), mine, len(data))
