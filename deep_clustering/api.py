"""DEC / IDEC / DCEC as a scikit-learn style estimator for notebooks, on the same configs and
pipeline as `python train.py` (each fit is a run, with its own folder under outputs/).

    from deep_clustering.api import DeepClustering

    model = DeepClustering(n_clusters=10, overrides=["pretrain.epochs=50"])
    labels = model.fit_predict(x)          # x: (N, H, W), (N, H, W, C) or (N, C, H, W), numpy or torch
    codes = model.transform(x)             # (N, latent_dim) latent codes
    model = DeepClustering.load("outputs/2026-11-27/10-00-00")
    model.predict(new_images)
"""

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from sklearn.base import BaseEstimator

from deep_clustering import pipeline, runs
from deep_clustering.config import check_config, reference_config
from deep_clustering.data import as_labels, from_arrays
from deep_clustering.errors import InputError
from deep_clustering.pipeline import pick_device
from deep_clustering.refine import DECModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the repository's configs/ (an editable install)


class DeepClustering(BaseEstimator):
    """Deep embedded clustering of images (scikit-learn's `get_params`, `set_params` and `clone` work on it).

    Args:
        n_clusters: K.
        overrides: any other config value, in the command line's syntax (`model=fc`,
            `refine.gamma=0.5`, `trainer=gpu`, ...).
        seed: seeds the whole run.
        run_dir: where the run's files go (`~` expanded; `run_dir_` is it as an absolute path); None
            makes a new outputs/DATE/TIME folder. A folder
            that holds a finished run is refused; one an interrupted fit left is continued from its
            checkpoints.
        device: where predict and transform run: 'auto' (a GPU when there is one), 'cpu', 'cuda', ...;
            checked by fit and load, before training or loading
    """

    def __init__(
        self,
        n_clusters: int = 10,
        overrides: Sequence[str] = (),
        seed: int = 0,
        run_dir: str | None = None,
        device: str = "auto",
    ) -> None:
        # stored as given, as scikit-learn asks of an estimator (clone checks that they are the same objects)
        self.n_clusters, self.overrides, self.seed = n_clusters, overrides, seed
        self.run_dir, self.device = run_dir, device

    def fit(self, X, y=None) -> "DeepClustering":
        """Train on images X; labels y, where known, only add ACC / NMI / ARI to `metrics_`."""
        runs.register_resolvers()
        pick_device(self.device)  # predict's and transform's: a bad one is refused now, not after training
        if isinstance(self.overrides, str):  # Hydra would read it letter by letter: 'p' missing EQUAL
            raise InputError(f"overrides={self.overrides!r}: a list of KEY=VALUE strings, as [{self.overrides!r}]")
        for given in self.overrides:  # they would win over the parameters, which get_params would still report
            key = given.lstrip("+~").split("=")[0]
            if key in ("n_clusters", "seed"):
                raise InputError(f"overrides: {given}: give it as the parameter {key}= instead")
        overrides = [f"n_clusters={self.n_clusters}", f"seed={self.seed}", *self.overrides]
        with initialize_config_dir(str(CONFIGS), version_base="1.3", job_name="api"):
            full = compose("train", overrides=overrides, return_hydra_config=True)
            cfg = compose("train", overrides=overrides)
            check_config(cfg, reference_config(full.hydra.runtime.choices))
        data = from_arrays(_numpy(X), None, "X")
        data.labels = None if y is None else as_labels(_numpy(y), len(data), "y")
        # made here (new_folder makes it): removed if nothing comes into it
        new = self.run_dir is None or not Path(self.run_dir).expanduser().exists()
        # absolute, ~ expanded: one folder for the pipeline and load(), wherever the process moves
        run_dir = Path(self.run_dir or runs.new_folder("outputs")).expanduser().absolute()
        if (run_dir / runs.FINISHED).is_file():
            raise InputError(f"run_dir={run_dir} holds a finished run ({run_dir / runs.FINISHED}): choose a new folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        # the run seeds the process's generators (Lightning's seed_everything) and sets Lightning's
        # variables: the caller's own draws and environment go on afterwards as they were
        states, environ = (random.getstate(), np.random.get_state()), dict(os.environ)
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=cuda):
                result = pipeline.train(cfg, data, run_dir)
        except InputError:  # refused before anything was written (K above the images, a pretrained= that does not fit)
            if new and not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise
        except (KeyboardInterrupt, SystemExit) as e:
            if runs.stopped_by_ctrl_c(e):  # rather than Lightning's SystemExit(1)
                raise KeyboardInterrupt(
                    f"stopped by Ctrl-C; fit again with run_dir={str(run_dir)!r} to continue"
                ) from None
            raise
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            os.environ.clear()
            os.environ.update(environ)
        self.model_: DECModule = result.model
        self.labels_ = result.q.argmax(1).numpy()  # clusters of the training images
        self.metrics_ = result.metrics  # what metrics.json holds
        self.run_dir_ = run_dir
        return self

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X, y).labels_

    def predict(self, X) -> np.ndarray:
        """(N,) cluster of each image."""
        return self.predict_proba(X).argmax(1)

    def predict_proba(self, X) -> np.ndarray:
        """(N, K) soft assignments q."""
        return self._forward(X)[1]

    def transform(self, X) -> np.ndarray:
        """(N, latent_dim) latent codes."""
        return self._forward(X)[0]

    @classmethod
    def load(cls, path: str, device: str = "auto") -> "DeepClustering":
        """A trained model from a finished run's folder or its refinement checkpoint."""
        pick_device(device)  # refused here rather than at the first predict
        self, given = cls(device=device), f"DeepClustering.load({str(path)!r})"
        self.model_ = pipeline.load_trained(path, given)
        self.n_clusters = self.model_.hparams.n_clusters
        folder = Path(path).expanduser().absolute()  # as a fit sets it (until 2026-12-06 as given)
        if (folder / runs.FINISHED).is_file():  # a run's folder: as a fit leaves them (not labels_: no data here)
            try:
                self.run_dir_, self.metrics_ = folder, json.loads((folder / runs.FINISHED).read_text())
            except ValueError as e:
                raise InputError(
                    f"{given}: {folder / runs.FINISHED} is damaged ({e}); load "
                    f"{folder / 'checkpoints' / 'refine' / 'last.ckpt'} for the model alone"
                ) from None
        return self

    def _forward(self, X) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "model_"):
            raise InputError("this DeepClustering is not fitted: call fit(X) or DeepClustering.load(run_dir) first")
        # scaled as the training images were (older checkpoints record no range: X's own)
        data = from_arrays(_numpy(X), None, "X", self.model_.hparams.get("pixel_range"))
        expected = list(self.model_.hparams.input_shape)
        if list(data.images.shape[1:]) != expected:
            got = "x".join(map(str, data.images.shape[1:]))
            raise InputError(
                f"X holds {got} images; the model was trained on {'x'.join(map(str, expected))} (C x H x W)"
            )
        device = pick_device(self.device)
        codes, q = self.model_.to(device).predict_all(data)
        return codes.cpu().numpy(), q.cpu().numpy()


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
