"""The data-set-wide gather under two real processes (gloo), with unequal shares."""

import os

import torch
import torch.distributed as dist

from deep_clustering.data import DiskImages, ImageSet
from deep_clustering.distributed import embed_all, gather_rows
from tests.conftest import free_port, spawn

IMAGES = torch.arange(7 * 4, dtype=torch.uint8).view(7, 1, 2, 2) * 9  # 7 images of 2x2 pixels


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # rank 0 holds samples 0, 2, 4 (3 rows); rank 1 holds sample 1 only: unequal sizes
        index = torch.tensor([0, 2, 4]) if rank == 0 else torch.tensor([1])
        rows = gather_rows(index.float()[:, None] * 10, index, 5)
        torch.manual_seed(0)
        encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        cpu = torch.device("cpu")
        codes = embed_all(encoder, ImageSet(IMAGES.float() / 255), 2, cpu)
        on_disk = ImageSet(DiskImages(f"{out}.u8", IMAGES.shape), workers=rank)  # rank 1 reads with a worker
        disk_codes = embed_all(encoder, on_disk, 2, cpu)
        torch.save({"rows": rows, "codes": codes, "disk_codes": disk_codes}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_gather_rows_and_embed_all_across_two_processes(tmp_path):
    out = str(tmp_path / "result")
    IMAGES.numpy().tofile(f"{out}.u8")
    spawn(_worker, 2, free_port(), out)
    results = [torch.load(f"{out}.{r}") for r in range(2)]
    for r in results:
        # sample 3 belongs to nobody: its row is whatever was there, the others are in place
        assert r["rows"][[0, 1, 2, 4], 0].tolist() == [0.0, 10.0, 20.0, 40.0]
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    expected = encoder(IMAGES.float() / 255).detach()
    for r in results:  # the same codes from a tensor in memory and from a uint8 file
        torch.testing.assert_close(r["codes"], expected)
        torch.testing.assert_close(r["disk_codes"], expected)


def test_embed_all_without_a_batch_size_takes_batches_of_a_fixed_pixel_count(monkeypatch):
    monkeypatch.setattr("deep_clustering.distributed.EMBED_VALUES", 12)  # 3 images of 2x2 pixels a batch
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    sizes = []
    encoder = torch.nn.Sequential(torch.nn.Identity(), linear)
    encoder[0].register_forward_hook(lambda module, args, out: sizes.append(len(out)))
    codes = embed_all(encoder, ImageSet(IMAGES.float() / 255), None, torch.device("cpu"))
    assert sizes == [3, 3, 1]
    torch.testing.assert_close(codes, linear(IMAGES.float() / 255).detach())
