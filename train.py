"""Deep clustering, end to end: pretrain -> K-means -> DEC/IDEC refinement -> evaluate -> export.

python train.py                                    # the default job: scikit-learn's digits, CPU
python train.py data=npz data.path=usps.npz seed=3 # any config value is a Hydra override
python train.py resume=outputs/2026-11-27/10-00-00 # continue an interrupted run in its folder
"""

import time

START = time.perf_counter()

import json
import logging
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deep_clustering import runs
from deep_clustering.callbacks import AtomicCheckpointIO, FiniteLoss, LastCheckpoint
from deep_clustering.config import check_config
from deep_clustering.data import ImageDataModule, ImageSet
from deep_clustering.errors import InputError, TrainingError
from deep_clustering.export import load_autoencoder, save_autoencoder, write_metrics, write_predictions
from deep_clustering.metrics import external_metrics, internal_metrics
from deep_clustering.pretrain import AutoencoderModule
from deep_clustering.refine import DECModule

log = logging.getLogger("deep_clustering")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
OmegaConf.register_new_resolver("dc.run_dir", runs.run_dir)
OmegaConf.register_new_resolver("dc.config_subdir", runs.config_subdir)


def train(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Run every stage, each continuing from what an interrupted run left in `run_dir`.

    Returns the final metrics (None on processes other than the first).
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data: ImageSet = instantiate(cfg.data, _convert_="all")
    if cfg.n_clusters > len(data):
        raise InputError(f"n_clusters={cfg.n_clusters} is more than the {len(data)} images of the data set")
    labelled = "labelled" if data.labels is not None else "no labels"
    log.info("data: %d images of %s, %s", len(data), data.image_size, labelled)
    for bad in data.skipped:
        log.warning("skipped %s", bad)
    autoencoder = instantiate(cfg.model, in_channels=data.channels, image_size=data.image_size, _convert_="all")
    logger = TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)
    seconds = {}

    # 1. pretrain the autoencoder (or load one pretrained earlier, or by this run before it was interrupted)
    start = time.perf_counter()
    pretrained = cfg.pretrained or (run_dir / "autoencoder.pt" if (run_dir / "autoencoder.pt").exists() else None)
    if pretrained:
        load_autoencoder(str(pretrained), autoencoder)
        log.info("stage 1/4: loaded the pretrained autoencoder %s", pretrained)
    else:
        log.info("stage 1/4: pretraining the autoencoder for %d epochs", cfg.pretrain.epochs)
        trainer = _trainer(cfg, run_dir, "pretrain", logger, max_epochs=cfg.pretrain.epochs)
        module = AutoencoderModule(autoencoder, instantiate(cfg.pretrain.optimizer))
        datamodule = ImageDataModule(data, cfg.pretrain.batch_size, cfg.seed)
        trainer.fit(module, datamodule, ckpt_path=runs.latest_checkpoint(run_dir / "checkpoints" / "pretrain"))
        if trainer.is_global_zero:
            model_cfg = OmegaConf.to_container(cfg.model)
            save_autoencoder(run_dir / "autoencoder.pt", autoencoder, model_cfg, data.channels, data.image_size)
    seconds["pretrain"] = time.perf_counter() - start

    # 2-3. K-means on the codes gives the centres; refine encoder and centres on KL(P || Q)
    log.info("stage 2-3/4: K-means (%d restarts, manifold %s), then refinement", cfg.init.n_init, cfg.init.manifold)
    start = time.perf_counter()
    dec = DECModule(
        autoencoder.encoder,
        autoencoder.decoder if cfg.refine.recon else None,
        instantiate(cfg.refine.optimizer),
        instantiate(cfg.init, n_clusters=cfg.n_clusters, seed=cfg.seed),
        n_clusters=cfg.n_clusters,
        latent_dim=cfg.model.latent_dim,
        gamma=cfg.refine.gamma,
        alpha=cfg.refine.alpha,
        update_interval=cfg.refine.update_interval,
        tol=cfg.refine.tol,
    )
    trainer = _trainer(cfg, run_dir, "refine", logger, max_steps=cfg.refine.max_iters, max_epochs=-1)
    datamodule = ImageDataModule(data, cfg.refine.batch_size, cfg.seed)
    trainer.fit(dec, datamodule, ckpt_path=runs.latest_checkpoint(run_dir / "checkpoints" / "refine"))
    seconds["kmeans"] = dec.kmeans_seconds
    seconds["refine"] = time.perf_counter() - start - dec.kmeans_seconds

    # 4. evaluate on the predictions for the whole split
    start = time.perf_counter()
    device = trainer.strategy.root_device
    codes, q = dec.to(device).predict_all(data.on(device))
    confidence, pred = q.max(1)
    scores = external_metrics(pred, data.labels) if data.labels is not None else {}
    scores.update(internal_metrics(codes, pred, seed=cfg.seed))
    seconds["evaluate"] = time.perf_counter() - start

    # 5. export
    if not trainer.is_global_zero:
        return None
    seconds["total"] = time.perf_counter() - START
    metrics = {
        **scores,
        "n_samples": len(data),
        "n_clusters": cfg.n_clusters,
        "refine_iterations": trainer.global_step,
        "refreshes_of_p": dec.n_refresh,
        "stopped_by": "tol" if dec.delta_label < cfg.refine.tol else "max_iters",
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "device": _device_name(device),
        "processes": trainer.world_size,
        "resumed": bool(cfg.resume),
    }
    write_predictions(run_dir / "predictions.csv", pred.cpu(), confidence.cpu(), data.files, data.labels)
    write_metrics(run_dir / runs.FINISHED, metrics)  # last: its presence marks the run finished
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in _flat(cfg).items()}
    logger.log_hyperparams(hparams, {f"hp/{k}": v for k, v in scores.items()})
    logger.finalize("success")
    return metrics


def _trainer(cfg: DictConfig, run_dir: Path, stage: str, logger: TensorBoardLogger, **limits) -> L.Trainer:
    """The Lightning Trainer of one stage; its checkpoints go to run_dir/checkpoints/STAGE."""
    folder = run_dir / "checkpoints" / stage
    every = {"every_n_epochs": 1} if stage == "pretrain" else {"every_n_steps": cfg.refine.update_interval}
    callbacks = [
        LastCheckpoint(**every),
        FiniteLoss(stage),
        LearningRateMonitor(),
    ]
    return instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=folder,  # where last.ckpt and SLURM's pre-emption checkpoint go
        enable_checkpointing=False,  # LastCheckpoint keeps the one checkpoint
        use_distributed_sampler=False,  # ImageDataModule shards the batches itself
        **limits,
    )


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


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.resume:
            cfg = runs.resumed_config(cfg, list(HydraConfig.get().overrides.task), run_dir)
            log.info("resuming the run in %s", run_dir)
        else:
            choices = HydraConfig.get().runtime.choices
            overrides = [f"{k}={v}" for k, v in choices.items() if v is not None and not k.startswith("hydra")]
            check_config(cfg, hydra.compose(config_name="train", overrides=overrides))
        metrics = train(cfg, run_dir)
    except Exception as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) else e
        if isinstance(cause, (InputError, TrainingError, OmegaConfBaseException)):
            sys.exit(f"error: {str(cause).splitlines()[0]}")
        raise
    except BaseException as e:  # SIGTERM: Lightning raises this after CheckpointOnSignal saved
        if type(e).__name__ == "SIGTERMException":
            sys.exit(f"stopped by SIGTERM; continue with: python train.py resume={run_dir}")
        raise
    if metrics is None:
        return float("nan")
    print(f"run folder: {run_dir}")
    if "acc" in metrics:
        print(f"ACC {metrics['acc']:.4f}  NMI {metrics['nmi']:.4f}  ARI {metrics['ari']:.4f}")
        return metrics["acc"]
    print(json.dumps({k: metrics[k] for k in ("silhouette", "davies_bouldin", "calinski_harabasz")}))
    return metrics["silhouette"]


if __name__ == "__main__":
    try:
        runs.check_resume(sys.argv[1:])
    except InputError as e:
        sys.exit(f"error: {e}")
    main()
