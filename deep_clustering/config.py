"""Checks of what the user gave us, made before any training starts."""

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import hydra
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from deep_clustering.errors import InputError, either

# the values of some keys, here so that checking a config imports neither torch nor Lightning (their
# modules check them too, for use from Python)
BASELINES = ("kmeans", "gmm", "hdbscan")  # baselines: the clusterers baselines.py runs on the codes
INIT_CHOICES = {  # init.*: what kmeans.KMeansInit accepts
    "backend": ("auto", "torch", "sklearn"),
    "manifold": ("auto", "none", "tsne"),
    "clusterer": ("kmeans", "gmm"),
}
FIRST_TARGETS = ("q", "labels")  # refine.first_target
STAGE_SETS = {  # Lightning Trainer arguments each stage sets itself: +trainer.KEY would be overridden
    "max_epochs": "pretraining's length is pretrain.epochs",
    "max_steps": "refinement's length is refine.max_iters",
    "fast_dev_run": "for a quick run, pretrain.epochs=1 refine.max_iters=10",
    "logger": "TensorBoard's, in the run folder",
    "callbacks": "the run's own",
    "plugins": "the run's own checkpoint writer",
    "default_root_dir": "the run folder (hydra.run.dir)",
    "enable_checkpointing": "each stage keeps its last.ckpt, for resume=",
    "use_distributed_sampler": "the run's own sampler",
}


def check_config(cfg: DictConfig, reference: DictConfig) -> None:
    """Refuse keys that the config files do not define (also ones added with `+`, unless they name a
    parameter of the group's `_target_`), values of the wrong type, and values out of range.

    Args:
        cfg: the composed config of this run.
        reference: the same config groups composed without the command line's value overrides.
    """
    _check_keys(OmegaConf.to_container(cfg, resolve=False), OmegaConf.to_container(reference, resolve=False), "")
    for key, instead in STAGE_SETS.items():
        if key in cfg.get("trainer", {}):
            raise InputError(f"trainer.{key}: each stage of a run sets it ({instead})")
    for key, (ok, meaning) in RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            raise InputError(f"{key}={value} is out of range: it must be {meaning}")


RECIPES = ("experiment", "hparams_search")  # groups that set values of the others: checked as the command line's are


def reference_config(choices: Mapping[str, str | None], config_name: str = "train") -> DictConfig:
    """The config groups that were chosen (data=..., model=...; also those an experiment chose),
    composed without the command line's value overrides and without the experiment's, whose keys
    and values are checked against it as the command line's are: what `check_config` compares
    against. Needs Hydra initialised (with the run's search path, so a user's --config-dir too)."""
    groups = [
        f"{k}={v}" for k, v in choices.items() if v is not None and not k.startswith("hydra") and k not in RECIPES
    ]
    return hydra.compose(config_name=config_name, overrides=groups)


def is_whole(v: Any) -> bool:
    """Whether a config value is a whole number (an int, not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_clusters": (lambda v: v >= 2, "at least 2"),
    "seed": (lambda v: 0 <= v < 2**32, "between 0 and 4294967295 (numpy's seeds)"),
    "baselines": (lambda v: all(name in BASELINES for name in v), f"a list of {', '.join(BASELINES)}"),
    "data.image_size": (
        lambda v: len(v) == 2 and all(is_whole(s) and s >= 1 for s in v),
        "[height, width], each 1 or more",
    ),
    "model.head_dim": (lambda v: is_whole(v) and v >= 1, "null or a whole number, at least 1"),
    "model.input_size": (lambda v: is_whole(v) and v >= 32, "a whole number, at least 32"),
    "model.latent_dim": (lambda v: v >= 1, "at least 1"),
    "checkpoint.min_interval_s": (lambda v: v >= 0, "0 or more"),
    "augment.shift": (lambda v: 0 <= v <= 0.5, "between 0 and 0.5"),
    "augment.rotation": (lambda v: 0 <= v <= 180, "between 0 and 180 degrees"),
    "pretrain.epochs": (lambda v: v >= 0, "0 or more"),
    "pretrain.batch_size": (lambda v: v >= 1, "at least 1"),
    "pretrain.optimizer.lr": (lambda v: v > 0, "positive"),
    "init.n_init": (lambda v: v >= 1, "at least 1"),
    "init.tsne_iters": (lambda v: is_whole(v) and v >= 250, "a whole number, at least 250 (scikit-learn's least)"),
    "init.tsne_lr_scale": (lambda v: v > 0, "positive"),
    "init.tsne_angle": (lambda v: 0 < v <= 1, "more than 0, at most 1"),
    **{f"init.{key}": (lambda v, c=choices: v in c, either(choices)) for key, choices in INIT_CHOICES.items()},
    "refine.batch_size": (lambda v: v >= 1, "at least 1"),
    "refine.optimizer.lr": (lambda v: v > 0, "positive"),
    "refine.gamma": (lambda v: v >= 0, "0 or more"),
    "refine.alpha": (lambda v: v > 0, "positive"),
    "refine.update_interval": (lambda v: v >= 1, "at least 1"),
    "refine.tol": (lambda v: 0 <= v <= 1, "a fraction between 0 and 1"),
    "refine.max_iters": (lambda v: v >= 1, "at least 1"),
    "refine.first_target": (lambda v: v in FIRST_TARGETS, either(FIRST_TARGETS)),
}


def _check_keys(value: Any, ref: Any, path: str) -> None:
    if isinstance(ref, dict):
        if not isinstance(value, dict):
            raise InputError(f"{path}={value!r}: expected a group of settings, not a single value")
        for key in value:
            if key not in ref and _is_parameter(ref.get("_target_"), key):
                continue
            if key not in ref:
                where = f"'{path}'" if path else "the top level"
                known = ", ".join(sorted(str(k) for k in ref)) or "none"
                raise InputError(f"unknown config key '{_join(path, key)}' (known keys under {where}: {known})")
            _check_keys(value[key], ref[key], _join(path, key))
        for key in ref:  # deleted with ~KEY: only where the group's _target_ has a default for it
            if key not in value and not _is_parameter(ref.get("_target_"), key, with_default=True):
                raise InputError(f"~{_join(path, key)}: the run needs this key; give it another value instead")
    elif isinstance(ref, list):
        if not isinstance(value, list):
            raise InputError(f"{path}={value!r}: expected a list")
    elif ref is not None and not _same_type(value, ref):
        raise InputError(f"{path}={value!r}: expected {type(ref).__name__}, got {type(value).__name__}")


def _is_parameter(target: Any, key: str, with_default: bool = False) -> bool:
    """Whether `key` is a named parameter of the callable `target` names (`with_default`: one with a
    default value)."""
    if not isinstance(target, str):
        return False
    try:
        params = inspect.signature(get_object(target)).parameters
    except (ImportError, ValueError, TypeError):
        return False
    named = key in params and params[key].kind in (params[key].POSITIONAL_OR_KEYWORD, params[key].KEYWORD_ONLY)
    return named and not (with_default and params[key].default is inspect.Parameter.empty)


def _same_type(value: Any, ref: Any) -> bool:
    if isinstance(value, str) and value.startswith("${"):  # an interpolation: checked when resolved
        return True
    if value is None:  # null stands for "none" where a name or path is expected (weights, paths)
        return isinstance(ref, str)
    if isinstance(ref, bool) or isinstance(value, bool):
        return type(value) is type(ref)
    if isinstance(ref, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(ref))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
