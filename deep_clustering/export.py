"""What a run leaves in its folder: metrics.json, predictions.csv and the pretrained autoencoder."""

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deep_clustering.errors import InputError

log = logging.getLogger("deep_clustering")


def atomic_write(path: Path, write: Any, mode: str = "w") -> None:
    """Write `path` through `write(file)` into a temporary file, then rename it over the target,
    so a reader never sees a partial file. Text keeps a file name that is not UTF-8 (a Windows
    zip's Latin-1, which Python reads as surrogates) as its bytes, the name the file system has."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, mode, **({"newline": "", "errors": "surrogateescape"} if mode == "w" else {})) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """As JSON, with null for scores that are NaN (e.g. silhouette with one cluster: bare NaN is not JSON)."""
    atomic_write(path, lambda f: json.dump(_finite(metrics), f, indent=2, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_skipped(folder: Path, skipped: list[str]) -> None:
    """skipped_files.txt: the bad files data.on_bad_file=skip left out, with the reason; and a warning naming it."""
    listed = folder / "skipped_files.txt"
    listed.write_text("".join(f"{bad}\n" for bad in skipped), errors="surrogateescape")  # names as their bytes
    files = f"{len(skipped)} bad file{'s' if len(skipped) > 1 else ''}"
    log.warning("skipped %s (data.on_bad_file=skip), listed in %s", files, listed)


def write_predictions(
    path: Path,
    pred: Tensor,
    confidence: Tensor,
    files: list[str] | None,
    labels: Tensor | None,
    class_names: list[str] | None = None,
) -> None:
    """One row per sample: its index (or file), cluster, confidence (max q) and, where known, label
    (and the label's class name, an image folder's subfolder)."""

    def write(f: Any) -> None:
        out = csv.writer(f)
        header = ["file" if files else "index", "cluster", "confidence"]
        cols = [files or range(len(pred)), pred.tolist(), [f"{c:.6f}" for c in confidence.tolist()]]
        if labels is not None:
            header.append("label")
            cols.append(labels.tolist())
        if labels is not None and class_names is not None:
            header.append("class")
            cols.append([class_names[y] for y in labels.tolist()])
        out.writerow(header)
        out.writerows(zip(*cols))

    atomic_write(path, write)


def save_autoencoder(
    path: Path, autoencoder: nn.Module, model_cfg: dict[str, Any], in_channels: int, image_size: tuple[int, int]
) -> None:
    """The pretrained weights, for `pretrained=PATH`, which loads them into the network its run's
    config builds (a mismatch is named by shape); the model config and the input it was trained on
    go with them, a record for whoever opens the file."""
    state = {
        "state_dict": autoencoder.state_dict(),
        "model": model_cfg,
        "in_channels": in_channels,
        "image_size": list(image_size),
    }
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_autoencoder(path: str, autoencoder: nn.Module, resumed: bool = False) -> None:
    """Load weights saved by `save_autoencoder` (or a run folder holding them) into `autoencoder`;
    `resumed`: the run's own, which `resume=` continues from, rather than `pretrained=`'s."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "autoencoder.pt"
    if not file.is_file():
        raise InputError(
            f"pretrained={path}: {file} does not exist (a run folder holds autoencoder.pt once its pretraining "
            "finished; models without a decoder, such as model=resnet18, have none)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        weights = state["state_dict"]
        if "pytorch-lightning_version" in state:  # a checkpoint: its weights are named for another module
            raise ValueError("a Lightning checkpoint: give the run's folder or its autoencoder.pt")
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        if resumed:
            raise InputError(
                f"resume: {file} is damaged ({reason}): delete it, and resume again to save it anew from "
                "the pretraining's last checkpoint"
            ) from None
        raise InputError(f"pretrained={file}: not an autoencoder saved by this trainer ({reason})") from None
    own = autoencoder.state_dict()
    wrong = [
        f"{k} is {list(v.shape)} in the file but {list(own[k].shape)} here"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = sorted(set(own) ^ set(weights))
    if wrong or missing:
        detail = "; ".join(wrong + ([f"parameters that only one side has: {', '.join(missing)}"] if missing else []))
        if resumed:
            raise InputError(
                f"resume: {file} no longer fits this model and data ({detail}): the run's model or images "
                "changed since it started; resume it as it started, or start a new run"
            )
        raise InputError(f"pretrained={file}: its shapes do not fit this model and data ({detail})")
    autoencoder.load_state_dict(weights)
