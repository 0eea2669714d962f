"""Sort new images with a trained model:

    python -m deep_clustering.predict checkpoint=RUN_DIR data.path=DIR [folders=link] [device=cuda]

Writes into predictions/DATE/TIME: predictions.csv (file, cluster, confidence, distance to the
centre), codes.npy (the latent codes), contact_sheets/cluster_K.png (the most confident images of
each cluster) and, with folders=link or copy, clusters/K/ holding each cluster's images.
"""

import csv
import inspect
import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from deep_clustering import runs
from deep_clustering.config import is_whole
from deep_clustering.errors import InputError

log = logging.getLogger("deep_clustering")
runs.register_resolvers()


def predict(cfg: DictConfig, out: Path) -> dict:
    """Assign every image of cfg.data to a cluster of the model in cfg.checkpoint; returns counts."""
    if cfg.folders not in ("none", "link", "copy"):
        raise InputError(f"folders={cfg.folders!r} must be none, link or copy")
    if not (is_whole(cfg.contact_sheets) and cfg.contact_sheets >= 0):
        raise InputError(f"contact_sheets={cfg.contact_sheets!r} must be a whole number, 0 or more")
    if cfg.batch_size is not None and not (is_whole(cfg.batch_size) and cfg.batch_size >= 1):
        raise InputError(f"batch_size={cfg.batch_size!r} must be null or a whole number, at least 1")
    checkpoint = runs.trained_checkpoint(cfg.checkpoint)
    # torch (about 9 s to import on 2 cores) only now: a mistyped setting or checkpoint answers in a second
    import numpy as np
    import torch
    from torchvision.utils import save_image

    from deep_clustering.export import atomic_write, write_skipped
    from deep_clustering.pipeline import load_trained, pick_device
    from deep_clustering.visualize import contact_sheet

    device = pick_device(cfg.device)
    model = load_trained(checkpoint)
    shape = list(model.hparams.input_shape)
    fill = {"channels": shape[0], "image_size": shape[1:]}  # image folders: converted to what the model expects
    fill = {k: v for k, v in fill.items() if k in cfg.data}
    if "pixel_range" in inspect.signature(get_object(cfg.data._target_)).parameters:  # arrays (.npz)
        fill["pixel_range"] = model.hparams.get("pixel_range")  # scaled as the training images were
    data = instantiate(cfg.data, **fill, _convert_="all")
    if data.skipped:
        write_skipped(out, data.skipped)
    if list(data.images.shape[1:]) != shape:
        got, want = "x".join(map(str, data.images.shape[1:])), "x".join(map(str, shape))
        raise InputError(f"the data holds {got} images (C x H x W); the model in {cfg.checkpoint} expects {want}")
    model.hparams.embed_batch_size = cfg.batch_size
    codes, q = model.to(device).predict_all(data)
    confidence, pred = q.max(1)
    distance = (codes - model.head.centers[pred]).norm(dim=1)
    codes, q, confidence, pred, distance = (t.cpu() for t in (codes, q, confidence, pred, distance))

    names = data.files or [str(i) for i in range(len(data))]

    def write(f) -> None:
        rows = csv.writer(f)
        rows.writerow(["file" if data.files else "index", "cluster", "confidence", "distance"])
        rows.writerows(
            zip(
                names, pred.tolist(), (f"{c:.6f}" for c in confidence.tolist()), (f"{d:.6f}" for d in distance.tolist())
            )
        )

    atomic_write(out / "predictions.csv", write)
    if cfg.codes:
        np.save(out / "codes.npy", codes.numpy())
    if cfg.contact_sheets:
        (out / "contact_sheets").mkdir()
        for k in range(q.shape[1]):
            members = pred == k
            if members.any():
                best = members.nonzero()[:, 0][confidence[members].argsort(descending=True)[: cfg.contact_sheets]]
                sheet = contact_sheet(data.images[best], confidence[best], max_images=cfg.contact_sheets)
                save_image(sheet, out / "contact_sheets" / f"cluster_{k}.png")
    if cfg.folders != "none" and data.files:
        root = Path(cfg.data.path).expanduser().resolve()
        for name, k in zip(data.files, pred.tolist()):
            target = out / "clusters" / str(k) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if cfg.folders == "link":
                os.symlink(root / name, target)
            else:
                shutil.copy2(root / name, target)
    return {int(k): int(n) for k, n in zip(*torch.unique(pred, return_counts=True))}


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    runs.back_to_launch_dir()
    runs.log_any_file_name()
    try:
        counts = predict(cfg, out)
    except Exception as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) else e
        if isinstance(cause, (InputError, OmegaConfBaseException)):
            message = f"error: {str(cause).splitlines()[0]}"
            runs.log_to_file(log, message)
            sys.exit(message)
        runs.log_to_file(log, f"error: {type(e).__name__}: {e}", error=e)  # a fault of ours: its traceback too
        raise
    sizes = ", ".join(f"{k}: {n}" for k, n in counts.items())
    log.info("%d images sorted by the model in %s; images per cluster: %s", sum(counts.values()), cfg.checkpoint, sizes)
    print(f"predictions: {out}")
    print(f"images per cluster: {sizes}")


if __name__ == "__main__":
    main()
