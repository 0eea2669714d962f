"""Checks that need a GPU; benchmarks/gpu.sh runs them on one. Skipped on machines without CUDA."""

import json

import lightning as L
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from deep_clustering.baselines import run_baselines
from deep_clustering.callbacks import FiniteLoss
from deep_clustering.data import ImageSet
from deep_clustering.distributed import embed_all
from deep_clustering.gmm import gaussian_mixture
from deep_clustering.kmeans import KMeansInit, kmeans
from deep_clustering.metrics import external_metrics, internal_metrics
from deep_clustering.models import ConvAutoencoder
from tests.conftest import run_train
from tests.test_graphs import train_both_stages

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh)")


def test_torch_kmeans_on_the_gpu_matches_scikit_learn():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(7000, 10, generator=gen) + 4 * torch.randn(1, 10, generator=gen) for _ in range(10)])
    ours = kmeans(x.cuda(), 10, n_init=20, seed=0)
    theirs = KMeans(10, n_init=20, random_state=0).fit(x.numpy()).inertia_
    assert abs(ours.inertia - theirs) / theirs < 0.01
    assert all(t.device.type == "cuda" for t in KMeansInit(10, manifold="none")(x.cuda()))


def test_metrics_and_baselines_on_the_gpu_match_the_cpu():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (20000,), generator=gen)
    codes = torch.randn(20000, 10, generator=gen) + 3 * torch.randn(10, 10, generator=gen)[labels]
    pred = torch.where(torch.rand(20000, generator=gen) < 0.8, labels, torch.randint(10, (20000,), generator=gen))
    assert external_metrics(pred.cuda(), labels) == external_metrics(pred, labels)
    gpu, cpu = internal_metrics(codes.cuda(), pred.cuda()), internal_metrics(codes, pred)
    for key in cpu:
        assert abs(gpu[key] - cpu[key]) <= 1e-4 * abs(cpu[key]), key
    scores = run_baselines(["kmeans", "gmm"], codes.cuda(), labels, 10)  # torch K-means and mixture on the GPU
    assert scores["kmeans"]["acc"] > 0.95 and scores["gmm"]["acc"] > 0.95


def test_the_mixture_on_the_gpu_matches_the_cpu_and_scikit_learn():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (20000,), generator=gen)
    codes = torch.randn(20000, 10, generator=gen) + 3 * torch.randn(10, 10, generator=gen)[labels]
    gpu, cpu = gaussian_mixture(codes.cuda(), 10, n_init=3, seed=0), gaussian_mixture(codes, 10, n_init=3, seed=0)
    assert gpu.labels.device.type == "cuda"
    assert gpu.log_likelihood == pytest.approx(cpu.log_likelihood, rel=1e-6)
    assert (gpu.labels.cpu() == cpu.labels).float().mean() > 0.999  # K-means' starts in float32 on both
    theirs = GaussianMixture(10, n_init=3, random_state=0).fit(codes.numpy()).lower_bound_
    assert gpu.log_likelihood > theirs - 0.01 * abs(theirs)
    init = KMeansInit(10, manifold="none", clusterer="gmm", n_init=3)(codes.cuda())
    assert all(t.device.type == "cuda" for t in init)


def test_embedding_on_the_gpu_matches_the_cpu():
    torch.manual_seed(0)
    model = ConvAutoencoder(1, (28, 28))
    images = torch.rand(5000, 1, 28, 28)
    cpu = embed_all(model.encoder, ImageSet(images), 1024, torch.device("cpu"))
    gpu = embed_all(model.encoder.cuda(), ImageSet(images), 1024, torch.device("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)


def _deterministic(monkeypatch) -> None:
    """Deterministic kernels without TF32: otherwise two eager runs already drift apart over 54 steps."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _assert_same_training(eager, captured) -> None:
    """Two results of train_both_stages, eager and captured: the same steps, weights and labels."""
    (pre_a, ref_a, dec_a), (pre_b, ref_b, dec_b) = eager, captured
    assert dec_b.captured.graph is not None  # captured, and replayed from the 5th step on
    assert pre_a.global_step == pre_b.global_step == 29 and ref_a.global_step == ref_b.global_step == 25
    for (name, a), b in zip(dec_a.state_dict().items(), dec_b.state_dict().values()):
        if name != "kmeans_seconds":
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3, msg=lambda m, name=name: f"{name}: {m}")
    assert (dec_a.last_labels == dec_b.last_labels).float().mean() > 0.99


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_captured_steps_train_as_eager_steps_on_the_gpu(tmp_path, monkeypatch, precision):
    _deterministic(monkeypatch)
    on_gpu = {"accelerator": "gpu", "precision": precision}
    eager = train_both_stages(tmp_path / "a", graphed=False, **on_gpu)
    _assert_same_training(eager, train_both_stages(tmp_path / "b", graphed=True, **on_gpu))


def test_a_run_on_the_gpu_with_and_without_graphs(tmp_path):
    for graphs in ("true", "false"):
        run_train(
            tmp_path / graphs, "trainer=gpu", f"cuda_graphs={graphs}", "pretrain.epochs=20", "refine.max_iters=300"
        )
        metrics = json.loads((tmp_path / graphs / "metrics.json").read_text())
        assert metrics["device"].startswith("cuda: ") and metrics["cuda_graphs"] == (graphs == "true")
        assert metrics["acc"] > 0.7


class NoWaitForTheGpu(L.Callback):
    """Makes any wait for the GPU an error (torch.cuda.set_sync_debug_mode) from the start of each
    step of `steps[stage]` to the start of the next: the steps must hold no refresh of P, no
    checkpoint and no read of the loss check (every FiniteLoss.EVERY steps)."""

    def __init__(self, steps: dict[str, range]) -> None:
        self.steps, self.checked = steps, {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        stage = type(pl_module).__name__
        watched = trainer.global_step in self.steps[stage]
        self.checked[stage] = self.checked.get(stage, 0) + watched
        torch.cuda.set_sync_debug_mode("error" if watched else "default")

    def on_train_end(self, *args) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("graphed", [False, True])
def test_no_training_step_waits_for_the_gpu(tmp_path, graphed):
    # between the refreshes of P (every 10 steps here) and the loss check's reads, a step queues its
    # work and returns: a read of a GPU tensor on the host (a value logged for the progress bar,
    # which Lightning reads at every step's end; a flag) would make every step wait for the GPU
    window = NoWaitForTheGpu({"AutoencoderModule": range(5, 25), "DECModule": range(12, 19)})
    try:
        train_both_stages(tmp_path, graphed, accelerator="gpu", callbacks=[FiniteLoss("test"), window])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert window.checked == {"AutoencoderModule": 20, "DECModule": 7}


def test_captured_steps_under_ddp_train_as_ddp_on_the_gpu(tmp_path, monkeypatch):
    # DDP of one process (NCCL): the captured step holds the gradients' all-reduce, which NCCL lets
    # a CUDA graph capture; the eager steps go through Lightning's DDP wrapper. Last in this file:
    # the process group it starts is destroyed at its end
    _deterministic(monkeypatch)
    ddp = {"accelerator": "gpu", "strategy": "ddp", "devices": 1}
    try:
        eager = train_both_stages(tmp_path / "a", graphed=False, **ddp)
        captured = train_both_stages(tmp_path / "b", graphed=True, **ddp)
        assert torch.distributed.get_backend() == "nccl" and captured[2].captured.world == 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    _assert_same_training(eager, captured)
