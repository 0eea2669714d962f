"""The run's options, in this process through the estimator: the same config checks and
`pipeline.train` as `python train.py`, without a fresh process's 9 s of imports."""

import ctypes

import numpy as np
import pytest
import torch

from deep_clustering.api import DeepClustering


def fit(digits, run_dir, *overrides: str) -> DeepClustering:
    return DeepClustering(overrides=["init.manifold=none", *overrides], run_dir=str(run_dir)).fit(*digits)


def test_pretrained_autoencoder_is_reused(digits, pretrained_digits, tmp_path):
    model = fit(digits, tmp_path / "run", f"pretrained={pretrained_digits}", "refine.max_iters=20")
    assert model.metrics_["seconds"]["pretrain"] < 1
    assert model.metrics_["acc"] > 0.5
    # the run's folder holds the autoencoder it started from, so that it can be pretrained= in turn
    given, kept = (torch.load(d / "autoencoder.pt", weights_only=True) for d in (pretrained_digits, tmp_path / "run"))
    assert given["state_dict"].keys() == kept["state_dict"].keys() and given["model"] == kept["model"]
    assert all(torch.equal(given["state_dict"][k], kept["state_dict"][k]) for k in given["state_dict"])


def test_two_channel_images_channels_last_run_to_the_end(digits, tmp_path):
    """Images of a channel count that is neither gray nor RGB, channels last: read as such, and
    shown in TensorBoard by their first channel (the projector's sprites took 3 channels only)."""
    x, y = digits
    two = np.stack([x, x**2], -1)  # (N, 8, 8, 2)
    model = fit((two, y), tmp_path / "run", "pretrain.epochs=10", "refine.max_iters=20", "baselines=[]")
    assert list(model.model_.hparams.input_shape) == [2, 8, 8] and model.metrics_["acc"] > 0.5
    np.testing.assert_array_equal(model.predict(two.transpose(0, 3, 1, 2)), model.labels_)  # channels first
    assert list((tmp_path / "run" / "tensorboard").rglob("sprite.png"))


def test_refinement_without_augmentation_refines_on_clean_images(digits, pretrained_digits, tmp_path):
    """refine.augment=false: the refinement sees the clean images whatever augment.* says."""
    quick = [f"pretrained={pretrained_digits}", "refine.max_iters=30", "baselines=[]"]
    augment = ["augment.shift=0.2", "augment.rotation=20"]
    runs = {
        name: fit(digits, tmp_path / name, *quick, *extra).labels_
        for name, extra in [("off", [*augment, "refine.augment=false"]), ("clean", []), ("on", augment)]
    }
    np.testing.assert_array_equal(runs["off"], runs["clean"])
    assert (runs["off"] != runs["on"]).any()


def test_dec_mode_drops_the_decoder(digits, pretrained_digits, tmp_path):
    fit(digits, tmp_path / "run", f"pretrained={pretrained_digits}", "refine.recon=false", "refine.max_iters=20")
    state = torch.load(tmp_path / "run" / "checkpoints" / "refine" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("encoder.") for k in state) and not any(k.startswith("decoder.") for k in state)


def test_a_missing_nvml_is_not_looked_for_at_every_step(digits, pretrained_digits, tmp_path, monkeypatch):
    """Without NVIDIA's driver, the optimizer's steps never try to load NVML (under Lightning's CUDA
    check each step did), and CUDA's availability reads as before."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        pytest.skip("NVML is installed here: torch asks it, as Lightning wants")
    except OSError:
        pass
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as importing Lightning left it
    available = torch.cuda.is_available()
    tries = []
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: tries.append(1) or -1)
    assert torch.cuda.is_available() == available and len(tries) == 1  # the check, as it was, tries NVML
    fit(digits, tmp_path / "run", f"pretrained={pretrained_digits}", "refine.max_iters=40", "baselines=[]")
    # Lightning's own device count when it makes the stage's Trainer (3 tries); none at the 40 steps
    assert len(tries) - 1 <= 5, len(tries) - 1
    assert torch.cuda.is_available() == available
