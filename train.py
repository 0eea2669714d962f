"""Deep clustering, end to end: pretrain -> K-means -> DEC/IDEC refinement -> evaluate -> export.

python train.py                                  # the default job: scikit-learn's digits, CPU
python train.py data=usps data.path=usps.npz     # any config value is a Hydra override
"""

import time

START = time.perf_counter()

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import InstantiationException  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from deep_clustering.config import InputError, check_config  # noqa: E402
from deep_clustering.data import ImageDataModule, ImageSet  # noqa: E402
from deep_clustering.export import load_autoencoder, save_autoencoder, write_metrics, write_predictions  # noqa: E402
from deep_clustering.metrics import external_metrics, internal_metrics  # noqa: E402
from deep_clustering.pretrain import AutoencoderModule  # noqa: E402
from deep_clustering.refine import DECModule  # noqa: E402

log = logging.getLogger("deep_clustering")
warnings.filterwarnings("ignore", ".*does not have many workers.*")


def train(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Run every stage; returns the final metrics (None on processes other than the first)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data: ImageSet = instantiate(cfg.data, _convert_="all")
    if cfg.n_clusters > len(data):
        raise InputError(f"n_clusters={cfg.n_clusters} is more than the {len(data)} images of the data set")
    log.info(
        "data: %d images of %s, %s", len(data), data.image_size, "labelled" if data.labels is not None else "no labels"
    )
    autoencoder = instantiate(cfg.model, in_channels=data.channels, image_size=data.image_size, _convert_="all")
    logger = TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)
    seconds = {}

    # 1. pretrain the autoencoder (or load one pretrained earlier)
    start = time.perf_counter()
    if cfg.pretrained:
        load_autoencoder(cfg.pretrained, autoencoder)
        log.info("stage 1/4: loaded the pretrained autoencoder %s", cfg.pretrained)
    else:
        log.info("stage 1/4: pretraining the autoencoder for %d epochs", cfg.pretrain.epochs)
        trainer = _trainer(cfg, run_dir, "pretrain", logger, max_epochs=cfg.pretrain.epochs)
        module = AutoencoderModule(autoencoder, instantiate(cfg.pretrain.optimizer))
        trainer.fit(module, ImageDataModule(data, cfg.pretrain.batch_size, cfg.seed))
        if trainer.is_global_zero:
            save_autoencoder(
                run_dir / "autoencoder.pt",
                autoencoder,
                OmegaConf.to_container(cfg.model),
                data.channels,
                data.image_size,
            )
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
    trainer.fit(dec, ImageDataModule(data, cfg.refine.batch_size, cfg.seed))
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
    }
    write_metrics(run_dir / "metrics.json", metrics)
    write_predictions(run_dir / "predictions.csv", pred.cpu(), confidence.cpu(), data.files, data.labels)
    hparams = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in _flatten(OmegaConf.to_container(cfg)).items()
    }
    logger.log_hyperparams(hparams, {f"hp/{k}": v for k, v in scores.items()})
    logger.finalize("success")
    return metrics


def _trainer(cfg: DictConfig, run_dir: Path, stage: str, logger: TensorBoardLogger, **limits) -> L.Trainer:
    every = {"every_n_epochs": 1} if stage == "pretrain" else {"every_n_train_steps": cfg.refine.update_interval}
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints" / stage, save_last=True, save_top_k=0, **every),
        LearningRateMonitor(),
    ]
    return instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=run_dir,
        use_distributed_sampler=False,
        **limits,
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        choices = HydraConfig.get().runtime.choices
        overrides = [f"{k}={v}" for k, v in choices.items() if v is not None and not k.startswith("hydra")]
        check_config(cfg, hydra.compose(config_name="train", overrides=overrides))
        metrics = train(cfg, run_dir)
    except Exception as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) else e
        if isinstance(cause, (InputError, OmegaConfBaseException)):
            sys.exit(f"error: {str(cause).splitlines()[0]}")
        raise
    if metrics is None:
        return float("nan")
    if "acc" in metrics:
        print(f"run folder: {run_dir}\nACC {metrics['acc']:.4f}  NMI {metrics['nmi']:.4f}  ARI {metrics['ari']:.4f}")
        return metrics["acc"]
    print(f"run folder: {run_dir}\n" + json.dumps(metrics))
    return metrics.get("silhouette", float("nan"))


if __name__ == "__main__":
    main()
