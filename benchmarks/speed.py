"""Speed of every stage, through the trainer itself, beside ClustPy's IDEC on the same arrays.

    python benchmarks/speed.py                                        # digits: a CPU-sized run
    python benchmarks/speed.py --npz usps.npz --model fc --clustpy 3  # against ClustPy, 3 rounds in turn

Times, on the device the trainer picks (a GPU when there is one):
  pretraining  seconds per epoch and images/s (median over epochs after the first), the real
               Trainer, callbacks and data path of train.py;
  embedding    one pass over the whole data set (what init and each refresh of P do);
  kmeans       torch K-means on the codes (20 restarts) and scikit-learn's, with both inertias;
  gmm          the Gaussian mixture of the `gmm` baseline (3 restarts), torch's and scikit-learn's,
               with both mean log-likelihoods;
  refresh      a refresh of P: embedding pass, Student-t q, P, labels; and apart, the metrics
               against the labels and the TensorBoard views the trainer adds to each refresh;
  refinement   iterations/s of DEC/IDEC refinement with its refreshes of P;
  end to end   `python train.py` with the same settings, process start to metrics.json;
  memory       peak host RSS and peak device memory;
  eager        on a GPU with cuda_graphs on: pretraining and refinement again with eager steps;
  clustpy      ClustPy's IDEC (fully connected autoencoder) and ours with the same autoencoder
               (model=fc), in turn: seconds per pretraining and per clustering epoch, and ratios.
Writes benchmarks/results/speed-NAME.json and prints a table.
"""

import argparse
import datetime
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = tempfile.TemporaryDirectory(prefix="dc-speed-")  # runs' folders (33 MB checkpoints), removed at exit
sys.path.insert(0, str(ROOT))

from deep_clustering import graphs, runs  # noqa: E402
from deep_clustering.data import ImageDataModule, load_digits, load_npz  # noqa: E402
from deep_clustering.distributed import embed_all  # noqa: E402
from deep_clustering.gmm import gaussian_mixture  # noqa: E402
from deep_clustering.kmeans import kmeans  # noqa: E402
from deep_clustering.losses import soft_assignment, target_distribution  # noqa: E402
from deep_clustering.metrics import external_metrics  # noqa: E402
from deep_clustering.pipeline import dec_module, make_trainer, pretrain_module, use_graphs  # noqa: E402
from deep_clustering.visualize import log_refresh  # noqa: E402


class Clock(L.Callback):
    """Wall time of every epoch, and at the end of the steps `marks` (global step counts), waiting
    for the GPU only there: a wait at every step would add the host's time per step to the GPU's
    instead of letting them overlap, as they do in a run."""

    def __init__(self, marks: tuple[int, ...] = ()) -> None:
        self.epochs: list[float] = []
        self.marks = dict.fromkeys(marks, math.nan)
        self._start = 0.0

    def _now(self, trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._now(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(self._now(trainer) - self._start)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step in self.marks:
            self.marks[trainer.global_step] = self._now(trainer)


def timed(fn, device: torch.device, repeat: int = 5) -> tuple[float, object]:
    """Median seconds of `repeat` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def fit_seconds(estimator, x) -> tuple[float, object]:
    """Seconds of one scikit-learn fit, and the fitted estimator."""
    start = time.perf_counter()
    estimator.fit(x)
    return time.perf_counter() - start, estimator


def our_pretrain(cfg, data, epochs: int):
    """`epochs` pretraining epochs through the trainer: (module, device, median epoch seconds after
    the first)."""
    autoencoder = instantiate(cfg.model, in_channels=data.channels, image_size=data.image_size, _convert_="all")
    clock = Clock()
    trainer = make_trainer(
        cfg, Path(tempfile.mkdtemp(dir=SCRATCH.name)), "pretrain", False, max_epochs=epochs, enable_progress_bar=False
    )
    trainer.callbacks.append(clock)
    module = pretrain_module(cfg, autoencoder, use_graphs(cfg, trainer, data))
    trainer.fit(module, ImageDataModule(data, cfg.pretrain.batch_size, cfg.seed))
    return module, trainer.strategy.root_device, statistics.median(clock.epochs[1:] or clock.epochs)


def our_refine(cfg, data, autoencoder, iters: int):
    """`iters` refinement iterations (K-means init, refreshes of P included; cfg sets refine.tol=0,
    so all of them run) through the trainer: (module, iterations per second after the first
    refresh interval, which holds the warm-up and K-means)."""
    first = min(cfg.refine.update_interval, iters - 1)  # from the end of the first interval
    clock = Clock(marks=(first, iters))
    folder = Path(tempfile.mkdtemp(dir=SCRATCH.name))
    trainer = make_trainer(cfg, folder, "refine", False, max_steps=iters, max_epochs=-1, enable_progress_bar=False)
    trainer.callbacks.append(clock)
    dec = dec_module(cfg, autoencoder, [data.channels, *data.image_size], use_graphs(cfg, trainer, data))
    trainer.fit(dec, ImageDataModule(data, cfg.refine.batch_size, cfg.seed))
    return dec, (iters - first) / (clock.marks[iters] - clock.marks[first])


def ours(cfg, data, epochs: int, refine_iters: int) -> dict:
    """Pretraining epochs, embedding, K-means, a refresh of P and refinement, through the trainer."""
    module, device, epoch_s = our_pretrain(cfg, data, epochs)
    autoencoder = module.autoencoder
    out = {"device": device.type, "processes": module.trainer.world_size}
    out.update({"pretrain_epoch_s": epoch_s, "pretrain_images_per_s": len(data) / epoch_s})
    encoder = autoencoder.encoder.to(device).eval()
    out["embed_s"], codes = timed(lambda: embed_all(encoder, data, None, device), device)
    host = codes.cpu().numpy()
    out["kmeans_torch_s"], km = timed(lambda: kmeans(codes, cfg.n_clusters, n_init=20, seed=0), device, repeat=3)
    out["kmeans_torch_inertia"] = km.inertia
    out["kmeans_sklearn_s"], fit = fit_seconds(KMeans(cfg.n_clusters, n_init=20, random_state=0), host)
    out["kmeans_sklearn_inertia"] = float(fit.inertia_)
    mixture = lambda: gaussian_mixture(codes, cfg.n_clusters, n_init=3, seed=0)  # noqa: E731
    out["gmm_torch_s"], mix = timed(mixture, device, repeat=1)
    out["gmm_torch_log_likelihood"] = mix.log_likelihood
    out["gmm_sklearn_s"], fit = fit_seconds(GaussianMixture(cfg.n_clusters, n_init=3, random_state=0), host)
    out["gmm_sklearn_log_likelihood"] = float(fit.lower_bound_)

    def refresh():
        q = soft_assignment(embed_all(encoder, data, None, device), km.centers).exp()
        return target_distribution(q), q.argmax(1), q

    out["refresh_s"], (_, _, q) = timed(refresh, device)
    if data.labels is not None:  # what the trainer adds at each refresh: metrics, TensorBoard views
        with tempfile.TemporaryDirectory() as folder, SummaryWriter(folder) as writer:
            views = lambda: (external_metrics(q.argmax(1), data.labels), log_refresh(writer, data.images, q, 0))  # noqa: E731
            out["refresh_views_s"], _ = timed(views, device)
    dec, out["refine_iters_per_s"] = our_refine(cfg, data, autoencoder, refine_iters)
    out["cuda_graphs"] = graphs.replayed(module) and graphs.replayed(dec)  # both stages' steps replayed
    out["refine_epoch_s"] = -(-len(data) // cfg.refine.batch_size) / out["refine_iters_per_s"]
    out["peak_device_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return out


def against_clustpy(cfg, data, epochs: int, rounds: int) -> dict:
    """Seconds per pretraining and per clustering epoch, ours and ClustPy's IDEC (fully connected
    autoencoder d-500-500-2000-10, Adam, the same batch), measured in turn `rounds` times so that
    drift of a shared machine hits both alike; the ratios are medians of the per-round ratios."""
    from clustpy.deep import IDEC
    from clustpy.deep.neural_networks import FeedforwardAutoencoder

    flat = data.images.reshape(len(data), -1).numpy()
    batch, steps_per_epoch = cfg.pretrain.batch_size, -(-len(data) // cfg.refine.batch_size)
    rows = []
    for r in range(rounds):
        module, _, our_pre = our_pretrain(cfg, data, epochs + 1)
        iters = cfg.refine.update_interval + epochs * steps_per_epoch
        our_ref = steps_per_epoch / our_refine(cfg, data, module.autoencoder, iters)[1]
        net = FeedforwardAutoencoder(layers=[flat.shape[1], 500, 500, 2000, 10], random_state=r)
        net.fit(n_epochs=1, batch_size=batch, data=flat, optimizer_params={"lr": 1e-3})  # warm-up
        start = time.perf_counter()
        net.fit(n_epochs=epochs, batch_size=batch, data=flat, optimizer_params={"lr": 1e-3})
        their_pre = (time.perf_counter() - start) / epochs
        seconds = []
        for n in (1, 1 + epochs):  # the difference leaves out K-means and set-up
            algo = IDEC(
                cfg.n_clusters,
                batch_size=batch,
                pretrain_epochs=0,
                clustering_epochs=n,
                neural_network=net,
                random_state=r,
            )
            start = time.perf_counter()
            algo.fit(flat)
            seconds.append(time.perf_counter() - start)
        their_ref = (seconds[1] - seconds[0]) / epochs
        rows.append((our_pre, their_pre, our_ref, their_ref))
    ours_pre, theirs_pre, ours_ref, theirs_ref = (statistics.median(c) for c in zip(*rows))
    return {
        "clustpy_rounds": [
            dict(
                zip(
                    (
                        "ours_pretrain_epoch_s",
                        "clustpy_pretrain_epoch_s",
                        "ours_refine_epoch_s",
                        "clustpy_cluster_epoch_s",
                    ),
                    r,
                )
            )
            for r in rows
        ],
        "ours_pretrain_epoch_s_median": ours_pre,
        "clustpy_pretrain_epoch_s_median": theirs_pre,
        "ours_refine_epoch_s_median": ours_ref,
        "clustpy_cluster_epoch_s_median": theirs_ref,
        "ratio_pretrain_epoch_ours_over_clustpy": statistics.median(r[0] / r[1] for r in rows),
        "ratio_refine_epoch_ours_over_clustpy": statistics.median(r[2] / r[3] for r in rows),
    }


def end_to_end(overrides: list[str]) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=SCRATCH.name)) / "run"
    start = time.perf_counter()
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *overrides]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {  # the run's own peaks (a child's ru_maxrss would count this process's memory too)
        "end_to_end_s": wall,
        "end_to_end_acc": metrics.get("acc"),
        "end_to_end_stages_s": metrics["seconds"],
        "peak_host_rss_mb_e2e": metrics["peak_memory_mb"]["host"],
        "peak_device_memory_mb_e2e": metrics["peak_memory_mb"]["device"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", help="an .npz data set (x_train, y_train, x_test, y_test); default: digits")
    parser.add_argument("--model", default="conv", help="model config: conv (DCEC) or fc (DEC, as ClustPy's)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch of both stages (ClustPy's default: 256)")
    parser.add_argument("--epochs", type=int, default=5, help="pretraining epochs timed (the first is warm-up)")
    parser.add_argument("--refine-iters", type=int, default=300, help="refinement iterations timed")
    parser.add_argument("--e2e", nargs="*", help="overrides of an end-to-end train.py run to time (none: skip)")
    parser.add_argument(
        "--clustpy",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also time ClustPy's IDEC, ROUNDS times in turn with ours (pip install clustpy)",
    )
    parser.add_argument("--name", help="result name (default: DATA-MODEL-DEVICE)")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for the timed stages")
    args = parser.parse_args()

    runs.register_resolvers()
    overrides = [f"model={args.model}", "init.manifold=none", f"pretrain.batch_size={args.batch_size}"]
    overrides += [f"refine.batch_size={args.batch_size}", "refine.tol=0", *args.overrides]
    if args.npz:
        overrides += ["data=npz", f"data.path={args.npz}"]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data = load_npz(args.npz) if args.npz else load_digits()
    L.seed_everything(0, verbose=False)
    result = {
        "benchmark": "speed",
        "date": datetime.date.today().isoformat(),
        "data": f"{args.npz or 'digits'}: {len(data)} images of {'x'.join(map(str, data.images.shape[1:]))}",
        "model": args.model,
        "batch_size": cfg.pretrain.batch_size,
        "host": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    result.update(ours(cfg, data, args.epochs, args.refine_iters))
    result["device_name"] = torch.cuda.get_device_name() if result["device"] == "cuda" else "cpu"
    if cfg.cuda_graphs and result["device"] == "cuda":  # the same stages with eager steps, for the gain of capture
        eager = OmegaConf.merge(cfg, {"cuda_graphs": False})
        module, _, result["eager_pretrain_epoch_s"] = our_pretrain(eager, data, args.epochs)
        _, result["eager_refine_iters_per_s"] = our_refine(eager, data, module.autoencoder, args.refine_iters)
    if args.clustpy:
        result.update(against_clustpy(cfg, data, args.epochs, args.clustpy))
    if args.e2e is not None:
        result.update(end_to_end(args.e2e))
    result["peak_host_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    name = args.name or f"{Path(args.npz).stem if args.npz else 'digits'}-{args.model}-{result['device']}"
    out = ROOT / "benchmarks" / "results" / f"speed-{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
