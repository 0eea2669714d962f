"""Every config option composes and instantiates; bad keys and values are refused by name."""

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException, MissingConfigException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from PIL import Image

from deep_clustering.config import check_config, reference_config
from deep_clustering.data import ImageSet
from deep_clustering.errors import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_every_group_has_options():
    assert {"digits", "mnist", "fashion_mnist", "usps", "npz", "image_folder"} <= set(options("data"))
    assert {"conv", "fc"} <= set(options("model"))
    assert {"default", "gpu", "ddp"} <= set(options("trainer"))


@pytest.mark.parametrize("name", options("data"))
def test_data_options_name_real_parameters(name, tmp_path):
    cfg = composed(f"data={name}").data
    params = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    inspect.signature(get_object(cfg._target_)).bind(**params)  # raises on an unknown or missing parameter
    if name == "digits":
        assert isinstance(instantiate(cfg), ImageSet)
    elif name == "npz":
        np.savez(tmp_path / "a.npz", x_train=np.zeros((3, 4, 4), np.uint8))
        assert len(instantiate(cfg, path=str(tmp_path / "a.npz"))) == 3
    elif name == "image_folder":
        Image.new("L", (5, 5)).save(tmp_path / "a.png")
        assert instantiate(cfg, path=str(tmp_path), _convert_="all").images.shape == (1, 3, 32, 32)
    else:  # torchvision sets: offline here, so the error must name the folder
        with pytest.raises(InstantiationException) as err:
            instantiate(cfg, root=str(tmp_path), download=False)
        assert isinstance(err.value.__cause__, InputError) and f"data.root={tmp_path}" in str(err.value.__cause__)


@pytest.mark.parametrize("name", options("model"))
@pytest.mark.parametrize("shape", [(1, (8, 8)), (3, (32, 32))])
def test_model_options_instantiate(name, shape):
    cfg = composed(f"model={name}").model
    offline = {"weights": None, "input_size": 32} if "weights" in cfg else {}  # tests never download
    model = instantiate(cfg, in_channels=shape[0], image_size=shape[1], _convert_="all", **offline)
    z, _ = model(torch.rand(2, *shape[:1], *shape[1]))
    assert z.shape == (2, model.latent_dim)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options_instantiate(name):
    cfg = composed(f"trainer={name}").trainer
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(InstantiationException, match="No supported gpu backend"):
            instantiate(cfg, logger=False)
        return
    assert isinstance(instantiate(cfg, logger=False), L.Trainer)


def test_optimizers_and_init_instantiate():
    cfg = composed()
    for opt in (cfg.pretrain.optimizer, cfg.refine.optimizer):
        assert callable(instantiate(opt))
    assert callable(instantiate(cfg.init, n_clusters=10, seed=0))
    with pytest.raises(InstantiationException, match="init.backend='gpu'"):
        instantiate(cfg.init, n_clusters=10, seed=0, backend="gpu")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+model.foo=1", "unknown config key 'model.foo'"),
        ("+bogus=1", "unknown config key 'bogus'"),
        ("refine.tol=abc", "refine.tol='abc': expected float, got str"),
        ("model.latent_dim=1.5", "model.latent_dim=1.5: expected int"),
        ("pretrain.optimizer.lr=-0.1", r"pretrain.optimizer.lr=-0.1 is out of range"),
        ("n_clusters=1", "n_clusters=1 is out of range: it must be at least 2"),
        # until 2026-12-06 Lightning's seed_everything traceback
        ("seed=-1", r"seed=-1 is out of range: it must be between 0 and 4294967295"),
        ("refine.recon=3", "refine.recon=3: expected bool"),
        ("init.manifold=umap", "init.manifold=umap is out of range: it must be auto, none or tsne"),
        ("refine.first_target=gmm", "refine.first_target=gmm is out of range: it must be q or labels"),
        ("init.tsne_iters=100", "init.tsne_iters=100 is out of range: it must be a whole number, at least 250"),
        ("init.tsne_lr_scale=0", "init.tsne_lr_scale=0 is out of range: it must be positive"),
        ("init.tsne_angle=1.5", "init.tsne_angle=1.5 is out of range: it must be more than 0, at most 1"),
        # deleted keys: until 2026-12-06 ~baselines failed after pretraining, ~data.path in Hydra's traceback
        ("~baselines", "~baselines: the run needs this key; give it another value instead"),
        ("~refine.tol", "~refine.tol: the run needs this key"),
        # Trainer arguments each stage sets: until 2026-12-06 accepted, then overridden without a word
        (
            "+trainer.max_epochs=1",
            r"trainer.max_epochs: each stage of a run sets it \(pretraining's length is pretrain",
        ),
        ("+trainer.fast_dev_run=true", r"trainer.fast_dev_run: each stage .* \(for a quick run, pretrain.epochs=1"),
    ],
)
def test_check_config_refuses(override, message):
    with pytest.raises(InputError, match=message):
        check_config(composed(override), composed())


@pytest.mark.parametrize(
    ("group", "override", "message"),
    [
        (
            "data=digits",
            "baselines=[kmeans,dbscan]",
            r"baselines=\['kmeans', 'dbscan'\] is out of range: it must be a list of kmeans, gmm, hdbscan",
        ),
        (
            "data=image_folder",
            "data.image_size=[32]",
            r"data.image_size=\[32\] is out of range: it must be \[height, width\]",
        ),
        ("data=image_folder", "data.image_size=[0,10]", r"data.image_size=\[0, 10\] is out of range"),
        ("model=resnet18", "model.head_dim=x", "model.head_dim=x is out of range: it must be null or a whole number"),
        ("model=resnet18", "model.head_dim=-3", "model.head_dim=-3 is out of range"),
        (
            "model=resnet18",
            "model.input_size=0",
            "model.input_size=0 is out of range: it must be a whole number, at least 32",
        ),
    ],
)
def test_check_config_refuses_values_of_a_group(group, override, message):
    # refused before any data is read or network built (they failed there, with tracebacks)
    with pytest.raises(InputError, match=message):
        check_config(composed(group, override), composed(group))


def test_check_config_accepts_defaults_and_trainer_arguments():
    check_config(composed(), composed())
    check_config(composed("+trainer.gradient_clip_val=1.0", "refine.gamma=1"), composed())
    check_config(composed("~trainer.log_every_n_steps"), composed())  # the Trainer has its own default
    with pytest.raises(InputError, match="~data.path: the run needs this key"):  # load_npz(path) has none
        check_config(composed("data=npz", "data.path=x.npz", "~data.path"), composed("data=npz"))


def checked(*overrides: str, config_dir: Path = CONFIGS, config_name: str = "train"):
    """The config as train.py composes and checks it: against the groups it chose, experiments' keys
    and values too."""
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        full = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        cfg = compose(config_name, overrides=list(overrides))
        check_config(cfg, reference_config(full.hydra.runtime.choices, config_name))
    return cfg


def test_an_experiments_keys_and_values_are_checked(tmp_path):
    # a user's experiment file, as --config-dir finds it: until 2026-12-06 it was its own reference,
    # so a misspelt key passed unnoticed and a value of the wrong type met a TypeError
    shutil.copytree(CONFIGS, tmp_path / "configs")
    mine = tmp_path / "configs" / "experiment" / "mine.yaml"
    mine.write_text("# @package _global_\ndefaults:\n  - override /data: usps\nrefine:\n  gama: 0.5\n")
    with pytest.raises(InputError, match=r"unknown config key 'refine.gama' \(known keys under 'refine': "):
        checked("experiment=mine", config_dir=tmp_path / "configs")
    mine.write_text("# @package _global_\nrefine:\n  tol: abc\n")
    with pytest.raises(InputError, match="refine.tol='abc': expected float, got str"):
        checked("experiment=mine", config_dir=tmp_path / "configs")
    mine.write_text("# @package _global_\ndefaults:\n  - override /data: usps\nrefine:\n  gamma: 0.5\n")
    cfg = checked("experiment=mine", config_dir=tmp_path / "configs")
    assert cfg.data.name == "USPS" and cfg.refine.gamma == 0.5
    # a misspelt experiment is Hydra's error (until 2026-12-06 the group was optional: the default job ran)
    with pytest.raises(MissingConfigException, match="Could not find 'experiment/mien'"):
        checked("experiment=mien")
    # a user's own top-level config (--config-name) may add keys of its own
    (tmp_path / "configs" / "mine.yaml").write_text("defaults:\n  - train\n  - _self_\nnote: hello\n")
    assert checked(config_dir=tmp_path / "configs", config_name="mine").note == "hello"


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_presets_compose_and_instantiate(name):
    cfg = checked(f"experiment={name}")
    size = {"USPS": (16, 16)}.get(cfg.data.get("name"), (28, 28))
    model = instantiate(cfg.model, in_channels=1, image_size=size, _convert_="all")
    assert model(torch.rand(2, 1, *size))[1].shape == (2, 1, *size)
    for opt in (cfg.pretrain.optimizer, cfg.refine.optimizer):
        instantiate(opt)(model.parameters())
    header = (CONFIGS / "experiment" / f"{name}.yaml").read_text().splitlines()[1]
    assert header.startswith("# ") and " on " in header  # each preset names its method and data


# DEC-DA's run_exp.py, which gives the paper's Table 3: SGD (lr 0.01 / 1, momentum 0.9) for FcDEC-DA / FcIDEC-DA,
# Adam for the conv methods, P every 140 steps on MNIST and Fashion-MNIST and every 30 on USPS and MNIST-test.
# Until 2026-12-06 every DA recipe refreshed P every 140 steps and FcDEC-DA / FcIDEC-DA refined with Adam.
RUN_EXP_REFINE = {
    "dec_da": ("SGD", 0.01),
    "idec_da": ("SGD", 1.0),
    "convdec_da": ("Adam", 0.001),
    "dcec_da": ("Adam", 0.001),
}


@pytest.mark.parametrize("method", sorted(RUN_EXP_REFINE))
@pytest.mark.parametrize("data", ["mnist", "mnist_test", "usps", "fashion_mnist"])
def test_dec_da_recipes_refine_as_run_exp_does(method, data):
    cfg = checked(f"experiment={method}_{data}")
    assert cfg.refine.update_interval == (140 if data in ("mnist", "fashion_mnist") else 30)
    optimizer, lr = RUN_EXP_REFINE[method]
    assert cfg.refine.optimizer._target_ == f"torch.optim.{optimizer}" and cfg.refine.optimizer.lr == lr
    if optimizer == "SGD":
        assert cfg.refine.optimizer.momentum == 0.9


@pytest.mark.parametrize("name", [n for n in options("experiment") if n.startswith(("dcec_", "convdec_da_"))])
def test_conv_recipes_pad_the_third_convolution_as_dcec(name):
    # DCEC's ConvAE.py and DEC-DA's ConvDEC.py: pad3 = 'same' if the side is a multiple of 8, else 'valid';
    # until 2026-12-06 the USPS recipes (16x16) pinned 'valid', a 1x1x128 bottom where Keras' has 2x2x128
    cfg = checked(f"experiment={name}")
    usps = cfg.data.get("name") == "USPS"
    assert list(cfg.model.paddings) == ([2, 2, 1] if usps else [2, 2, 0])
    model = instantiate(cfg.model, in_channels=1, image_size=(16, 16) if usps else (28, 28), _convert_="all")
    assert model.encoder[-1].in_features == 128 * (2 * 2 if usps else 3 * 3)


def test_printing_the_resolved_config_makes_no_folder(tmp_path):
    # until 2026-12-06 --cfg all --resolve made empty outputs/ and multirun/ folders, and --cfg hydra
    # --resolve ended in a traceback (`resume` is not in Hydra's own node)
    for what in ("all", "hydra"):
        cmd = [sys.executable, str(CONFIGS.parent / "train.py"), "--cfg", what, "--resolve"]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "dir: outputs/" in proc.stdout, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
