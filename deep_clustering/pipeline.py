"""The stages of a run, top to bottom: pretrain -> K-means -> DEC/IDEC refinement -> evaluate -> export.

`train` is what `python train.py` runs after Hydra composed the config, and what the Python API
(`deep_clustering.api`) runs on arrays: one implementation for both.
"""

import ctypes
import logging
import os
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from deep_clustering import graphs, runs
from deep_clustering.baselines import run_baselines
from deep_clustering.callbacks import AtomicCheckpointIO, FiniteLoss, LastCheckpoint, LearningRate
from deep_clustering.data import DiskImages, ImageDataModule, ImageSet, check_same_data
from deep_clustering.distributed import embed_all
from deep_clustering.errors import InputError
from deep_clustering.export import load_autoencoder, save_autoencoder, write_metrics, write_predictions, write_skipped
from deep_clustering.kmeans import chosen_manifold
from deep_clustering.metrics import external_metrics, internal_metrics
from deep_clustering.pretrain import AutoencoderModule
from deep_clustering.refine import DECModule, warn_if_collapsed
from deep_clustering.visualize import log_final

log = logging.getLogger("deep_clustering")
# Lightning 2.6 advertises a cloud logger (litlogger) at every Trainer it makes: twice a run, in the
# console and train.log, and in a notebook's output at every fit
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "litlogger" not in str(record.msg))


@dataclass
class Result:
    model: DECModule  # encoder, centres (and decoder): the trained clustering model
    codes: Tensor  # (N, D) latent codes of every sample
    q: Tensor  # (N, K) soft assignments
    metrics: dict  # what metrics.json holds


def train(cfg: DictConfig, data: ImageSet, run_dir: Path, started: float | None = None) -> Result | None:
    """Run every stage on `data`, each continuing from what an interrupted run left in `run_dir`.

    Returns the trained model with its codes, assignments and metrics (None on processes other than
    the first). `started`: when the run began (perf_counter), for the total in metrics.json.
    """
    started = time.perf_counter() if started is None else started
    # startup: the imports (in a process's first run only), the config, reading the data
    seconds = {"startup": time.perf_counter() - started}
    skip_missing_nvml()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # torch checks an optimizer's settings as it makes one: make each now, not after pretraining
    for stage in ("pretrain", "refine"):
        try:
            instantiate(cfg[stage].optimizer)([torch.nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError, RuntimeError) as e:
            raise InputError(f"{stage}.optimizer: {e}") from None
    try:  # the initializer checks its settings as it is made: now, not after pretraining
        instantiate(cfg.init, n_clusters=cfg.n_clusters, seed=cfg.seed)
    except InstantiationException as e:
        raise (e.__cause__ if isinstance(e.__cause__, InputError) else e) from None
    if cfg.n_clusters > len(data):
        images = f"{len(data)} image{'s' if len(data) > 1 else ''}"
        raise InputError(f"n_clusters={cfg.n_clusters} is more than the {images} of the data set")
    labelled = "labelled" if data.labels is not None else "no labels"
    log.info("data: %d images of %s, %s", len(data), data.image_size, labelled)
    if data.skipped and rank_zero_only.rank == 0:
        write_skipped(run_dir, data.skipped)
    autoencoder = instantiate(cfg.model, in_channels=data.channels, image_size=data.image_size, _convert_="all")
    logger = TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)

    # 1. pretrain the autoencoder (or load one pretrained earlier, or by this run before it was interrupted)
    start = time.perf_counter()
    pretrained = cfg.pretrained or (run_dir / "autoencoder.pt" if (run_dir / "autoencoder.pt").exists() else None)
    if autoencoder.decoder is None:
        log.info("stage 1/4: %s has no decoder: nothing to pretrain, DEC's loss alone", cfg.model._target_)
    elif pretrained:
        finished = runs.latest_checkpoint(run_dir / "checkpoints" / "pretrain")
        if not cfg.pretrained and finished:  # the run's own: its pretraining's data must be this data
            check_resumable(finished, data)
        load_autoencoder(str(pretrained), autoencoder, resumed=not cfg.pretrained)
        log.info("stage 1/4: loaded the pretrained autoencoder %s", pretrained)
    else:
        log.info("stage 1/4: pretraining the autoencoder for %d epochs", cfg.pretrain.epochs)
        trainer = make_trainer(cfg, run_dir, "pretrain", logger, max_epochs=cfg.pretrain.epochs)
        module = pretrain_module(cfg, autoencoder, use_graphs(cfg, trainer, data))
        datamodule = ImageDataModule(data, cfg.pretrain.batch_size, cfg.seed, **cfg.augment)
        fit(trainer, module, datamodule, run_dir / "checkpoints" / "pretrain")
    if autoencoder.decoder is not None and rank_zero_only.rank == 0 and not (run_dir / "autoencoder.pt").exists():
        # pretrained here or loaded from pretrained=: the run's folder holds it either way, for pretrained=RUN_DIR
        model_cfg = OmegaConf.to_container(cfg.model)
        save_autoencoder(run_dir / "autoencoder.pt", autoencoder, model_cfg, data.channels, data.image_size)
    seconds["pretrain"] = time.perf_counter() - start

    # 2-3. K-means on the codes gives the centres; refine encoder and centres on KL(P || Q)
    trainer = make_trainer(cfg, run_dir, "refine", logger, max_steps=cfg.refine.max_iters, max_epochs=-1)
    baselines, codes, start = {}, None, time.perf_counter()
    if cfg.baselines:  # other clusterers on the same pretrained codes, for comparison
        device = trainer.strategy.root_device
        codes = embed_all(autoencoder.encoder.to(device), data, None, device)
        if trainer.is_global_zero:
            baselines = run_baselines(list(cfg.baselines), codes, data.labels, cfg.n_clusters, cfg.seed)
    seconds["baselines"] = time.perf_counter() - start
    clusterer = "K-means" if cfg.init.clusterer == "kmeans" else "a Gaussian mixture"
    on = "a t-SNE map of the codes" if chosen_manifold(cfg.init.manifold, len(data)) == "tsne" else "the codes"
    log.info("stage 2-3/4: %s on %s (%d restarts), then refinement", clusterer, on, cfg.init.n_init)
    start = time.perf_counter()
    graphed = use_graphs(cfg, trainer, data)
    dec = dec_module(cfg, autoencoder, [data.channels, *data.image_size], graphed, codes, list(data.pixel_range))
    datamodule = ImageDataModule(data, cfg.refine.batch_size, cfg.seed, **(cfg.augment if cfg.refine.augment else {}))
    fit(trainer, dec, datamodule, run_dir / "checkpoints" / "refine")
    # ddp_spawn's launcher hands back the weights and buffers, not the loop's counters: the step the
    # final checkpoint holds (until 2026-12-06 metrics.json said 0 steps under ddp_spawn)
    steps = (
        trainer.global_step
        or torch.load(
            run_dir / "checkpoints" / "refine" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True
        )["global_step"]
    )
    if dec.converged:
        changed = round(float(dec.delta_label) * len(data))
        why = (
            f"{changed} of {len(data)} labels ({float(dec.delta_label):.4f}) changed at the last refresh of P, "
            f"fewer than refine.tol={cfg.refine.tol}"
        )
    else:
        why = f"refine.max_iters={cfg.refine.max_iters} reached"
    log.info("refinement stopped at step %d: %s", steps, why)
    seconds["kmeans"] = float(dec.kmeans_seconds)
    seconds["refine"] = time.perf_counter() - start - seconds["kmeans"]

    # 4. evaluate on the predictions for the whole split
    start = time.perf_counter()
    device = trainer.strategy.root_device
    codes, q = dec.to(device).predict_all(data)
    confidence, pred = q.max(1)
    sizes = torch.bincount(pred, minlength=cfg.n_clusters).tolist()
    if trainer.is_global_zero:
        warn_if_collapsed(sizes, "the final clustering")
    scores = external_metrics(pred, data.labels) if data.labels is not None else {}
    scores.update(internal_metrics(codes, pred, seed=cfg.seed))
    seconds["evaluate"] = time.perf_counter() - start

    # 5. export
    if not trainer.is_global_zero:
        return None
    start = time.perf_counter()
    metrics = {
        **scores,
        "n_samples": len(data),
        "n_clusters": cfg.n_clusters,
        "n_clusters_found": sum(size > 0 for size in sizes),  # fewer when refinement left clusters empty
        # the trainer's, restored from the checkpoint: a run resumed at its last step skips the fit
        # loop and its on_train_end (DECModule's steps buffer, set there, stayed 0 until 2026-12-06)
        "refine_iterations": steps,
        "refreshes_of_p": int(dec.n_refresh),
        "stopped_by": "tol" if dec.converged else "max_iters",
        "seconds": None,  # filled in last, with the export's
        "device": _device_name(device),
        "processes": trainer.world_size,
        "cuda_graphs": graphs.replayed(dec),  # refinement's steps replayed
        "peak_memory_mb": _peak_memory_mb(device),
        "resumed": bool(cfg.resume),
        "baselines": baselines,
        **({"class_names": data.class_names} if data.class_names else {}),  # label i is class_names[i]
    }
    write_predictions(
        run_dir / "predictions.csv", pred.cpu(), confidence.cpu(), data.files, data.labels, data.class_names
    )
    tsne = {"iters": cfg.init.tsne_iters, "lr_scale": cfg.init.tsne_lr_scale, "angle": cfg.init.tsne_angle}
    log_final(
        logger.experiment,
        data.images,
        codes.cpu(),
        pred.cpu(),
        data.labels,
        steps,
        data.class_names,
        tsne=tsne,
    )
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in _flat(cfg).items()}
    logger.log_hyperparams(hparams, {f"hp/{k}": v for k, v in scores.items()})
    # Lightning's save() keeps the hparams.yaml it wrote first, before any was logged: {} (until 2026-12-06)
    save_hparams_to_yaml(Path(logger.log_dir) / logger.NAME_HPARAMS_FILE, hparams)
    logger.finalize("success")
    # the export too (the TensorBoard views' t-SNE: seconds; until 2026-12-06 total ended before it)
    seconds["export"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - started
    metrics["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    write_metrics(run_dir / runs.FINISHED, metrics)  # last: its presence marks the run finished
    return Result(dec, codes.cpu(), q.cpu(), metrics)


def skip_missing_nvml() -> None:
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1: torch.cuda.is_available() then asks NVML (which
    leaves CUDA uninitialised, safe to fork) and falls back to the CUDA runtime's count where NVML
    fails. Where NVML's library is missing (no NVIDIA driver, a CUDA build of torch) every call tries
    to load it again before falling back, and the optimizers call it at every step (0.1-0.4 ms on a
    2-core CPU). There the check goes straight to the runtime's count: the answer it gave anyway."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1":
        try:
            ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule: ImageDataModule, checkpoints: Path) -> None:
    """`trainer.fit`, resumed from the newest checkpoint in `checkpoints` if there is one.

    Lightning warns that a run resumed mid-epoch with a loader that has no `state_dict` may give
    unreliable results. ImageDataModule's sampler leaves out the batches the run already trained on,
    so a resumed run matches an uninterrupted one (tests/test_reliability.py): the warning is silenced,
    as are three others that ask nothing of the user, here rather than in train.py so that a notebook's
    `DeepClustering.fit` does not show them either.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")
        # the data are in memory or read by the workers data.loader_workers asks for
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        # Lightning 2.6 calls a pytree API that torch 2.14 deprecates: its own internals
        warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated")
        # nothing is logged per step (losses per epoch or refresh of P): an epoch below the interval loses nothing
        warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
        checkpoint = runs.latest_checkpoint(checkpoints)
        if checkpoint is not None:
            # the data and the settings first: Lightning loads the weights before the DataModule's
            # state, and images of another size or another K would meet a size-mismatch traceback there
            check_resumable(checkpoint, datamodule.data, module)
        trainer.fit(module, datamodule, ckpt_path=checkpoint)


def check_resumable(checkpoint: str, data: ImageSet, module: L.LightningModule | None = None) -> None:
    """Refuse to resume from `checkpoint` where it is damaged, was trained on other data (its
    DataModule's fingerprint), or (`module`) recorded other settings (a DeepClustering fit continued
    with other overrides; `resume=` takes the run's own config)."""
    if not zipfile.is_zipfile(checkpoint):  # torch.save writes a zip archive
        raise InputError(
            f"resume: {checkpoint} is damaged (not a whole checkpoint): delete it, and resume again to "
            f"redo this stage from its start"
        )
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    state = saved.get(ImageDataModule.__qualname__)
    if state is not None:  # in every checkpoint of this trainer
        check_same_data(state, data)
    then = saved.get("hyper_parameters", {}) if module is not None else {}
    changed = [k for k, v in then.items() if k in module.hparams and module.hparams[k] != v]
    if changed:
        was = ", ".join(f"{k}={then[k]}" for k in changed)
        now = ", ".join(f"{k}={module.hparams[k]}" for k in changed)
        raise InputError(
            f"resume: {checkpoint} was saved with {was}, this run has {now}: continue it with the settings "
            "it started with, or start a new run"
        )


def pretrain_module(cfg: DictConfig, autoencoder: torch.nn.Module, graphed: bool = False) -> AutoencoderModule:
    """The pretraining stage's LightningModule, as the config says."""
    optimizer = instantiate(cfg.pretrain.optimizer)
    return AutoencoderModule(autoencoder, graphs.capturable(optimizer) if graphed else optimizer, graphed)


def dec_module(
    cfg: DictConfig,
    autoencoder: torch.nn.Module,
    input_shape: list[int],
    graphed: bool = False,
    codes: Tensor | None = None,
    pixel_range: list[float] | None = None,
) -> DECModule:
    """The refinement stage's LightningModule around the (pre)trained encoder, as the config says;
    `codes`: the encoder's codes of the data, where already computed; `pixel_range`: the data's
    (`ImageSet.pixel_range`), recorded for prediction."""
    optimizer = instantiate(cfg.refine.optimizer)
    return DECModule(
        autoencoder.encoder,
        autoencoder.decoder if cfg.refine.recon else None,
        graphs.capturable(optimizer) if graphed else optimizer,
        instantiate(cfg.init, n_clusters=cfg.n_clusters, seed=cfg.seed),
        n_clusters=cfg.n_clusters,
        latent_dim=autoencoder.latent_dim,
        gamma=cfg.refine.gamma,
        alpha=cfg.refine.alpha,
        update_interval=cfg.refine.update_interval,
        tol=cfg.refine.tol,
        first_target=cfg.refine.first_target,
        model=OmegaConf.to_container(cfg.model),
        input_shape=input_shape,
        pixel_range=pixel_range,
        graphed=graphed,
        codes=codes,
    )


def use_graphs(cfg: DictConfig, trainer: L.Trainer, data: ImageSet) -> bool:
    """Whether this stage captures its training steps as CUDA graphs (`cuda_graphs`, where possible)."""
    in_memory = not isinstance(data.images, DiskImages)
    device = trainer.strategy.root_device
    if not (cfg.cuda_graphs and graphs.possible(device, trainer.precision, in_memory)):
        return False
    if trainer.gradient_clip_val or trainer.accumulate_grad_batches > 1:  # Lightning's, in its own steps
        log.info("cuda_graphs: eager steps, for Lightning's gradient clipping or accumulation")
        return False
    return True


def make_trainer(cfg: DictConfig, run_dir: Path, stage: str, logger: TensorBoardLogger | bool, **limits) -> L.Trainer:
    """The Lightning Trainer of one stage; its checkpoints go to run_dir/checkpoints/STAGE."""
    folder = run_dir / "checkpoints" / stage
    every = {"every_n_epochs": 1} if stage == "pretrain" else {"every_n_steps": cfg.refine.update_interval}
    bar = limits.get("enable_progress_bar", cfg.trainer.enable_progress_bar)
    callbacks = [
        FiniteLoss(stage),  # before LastCheckpoint (Lightning calls it last): a save sees its step's loss checked
        LastCheckpoint(**every, min_interval_s=cfg.checkpoint.min_interval_s),
        *([LearningRate(stage)] if logger else []),
        # a redraw is host time in the step (its values are host numbers): every 10 steps rather than every step
        *([TQDMProgressBar(refresh_rate=10)] if bar else []),
    ]
    try:
        return instantiate(
            cfg.trainer,
            logger=logger,
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=folder,  # where last.ckpt and SLURM's pre-emption checkpoint go
            enable_checkpointing=True,  # through LastCheckpoint, which keeps the one checkpoint (no ModelCheckpoint)
            use_distributed_sampler=False,  # ImageDataModule shards the batches itself
            **limits,
        )
    except InstantiationException as e:  # trainer=gpu without a GPU, more devices than there are: one line
        if isinstance(e.__cause__, MisconfigurationException):
            asked = f"trainer.accelerator={cfg.trainer.accelerator} trainer.devices={cfg.trainer.devices}"
            raise InputError(f"{asked}: {e.__cause__}") from None
        # an unknown trainer.strategy or trainer.precision, in Lightning's words (Hydra's many lines until 2026-12-06)
        if isinstance(e.__cause__, ValueError):
            raise InputError(f"trainer: {str(e.__cause__).splitlines()[0]}") from None
        raise


def _peak_memory_mb(device: torch.device) -> dict[str, float | None]:
    """This process's peak resident host memory, from Linux's VmHWM (ru_maxrss, used elsewhere,
    also counts the memory of the process that started this one, up to its exec), and the peak
    memory torch allocated on the GPU (None on a CPU), in MB."""
    try:
        with open("/proc/self/status") as f:
            host = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        try:
            import resource

            host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
        except ImportError:  # Windows
            host = None
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"host": None if host is None else round(host, 1), "device": None if gpu is None else round(gpu, 1)}


def _device_name(device: torch.device) -> str:
    return f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def _flat(cfg: DictConfig) -> dict:
    rows = [(k, v) for k, v in OmegaConf.to_container(cfg).items()]
    out = {}
    while rows:
        key, value = rows.pop()
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            out[key] = value
    return out


def load_trained(path: str | Path, given: str | None = None) -> DECModule:
    """The clustering model of a finished run: its folder, or a refinement checkpoint; `given`: how the
    user gave `path`, for the errors (`checkpoint=PATH` unless said)."""
    file = runs.trained_checkpoint(path, given)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        hparams, weights = dict(checkpoint["hyper_parameters"]), checkpoint["state_dict"]
        weights.pop("steps", None)  # a buffer of checkpoints before 2026-12-06, never read
        model_cfg, shape = hparams.pop("model"), hparams.pop("input_shape")
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        given = f"{given}: {file}" if given else f"checkpoint={file}"
        raise InputError(f"{given}: not a refinement checkpoint of this trainer ({reason})") from None
    if "weights" in model_cfg:
        model_cfg["weights"] = None  # the checkpoint holds them; nothing to download
    net = instantiate(model_cfg, in_channels=shape[0], image_size=tuple(shape[1:]), _convert_="all")
    decoder = net.decoder if any(k.startswith("decoder.") for k in weights) else None
    model = DECModule(net.encoder, decoder, None, None, **hparams, model=model_cfg, input_shape=shape)
    model.load_state_dict(weights)
    return model.eval()


def pick_device(name: str) -> torch.device:
    """'auto' (a GPU when there is one), or any torch device name (an InputError for an unknown name, a
    CUDA device on a machine without one, or a device torch cannot compute on here: mps, meta, ...)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"device={name!r}: not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={name}: no CUDA GPU is available here")
    try:  # a name torch knows, on hardware or a build without it (mps), or holding no data (meta)
        torch.ones(1, device=device).cpu()
    except (RuntimeError, NotImplementedError):
        raise InputError(f"device={name}: torch cannot compute there on this machine and build") from None
    return device
