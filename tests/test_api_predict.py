"""Using a trained model: the Python estimator, the predict command, pretrained backbones, baselines."""

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from deep_clustering import pipeline, refine
from deep_clustering.api import DeepClustering
from deep_clustering.data import load_digits
from deep_clustering.distributed import embed_all
from deep_clustering.errors import InputError
from tests.conftest import ROOT, run_train, sigint_as_in_a_terminal

QUICK = ["pretrain.epochs=10", "refine.max_iters=40", "refine.update_interval=10", "init.manifold=none"]


def test_estimator_fit_predict_transform_load(digits, tmp_path):
    x, y = digits
    x = (x * 255).round().astype(np.uint8)  # 8-bit images, as most arrays of images are
    model = DeepClustering(n_clusters=10, overrides=QUICK, run_dir=str(tmp_path / "run"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # as a notebook shows them
        labels = model.fit_predict(x, y)
    assert labels.shape == (1797,) and model.metrics_["acc"] > 0.5
    # none of Lightning's warnings that ask nothing of the user (until 2026-12-06: its pytree
    # deprecation and the logging interval; train.py alone filtered some)
    assert [str(w.message) for w in caught if "lightning" in w.filename] == []
    assert (tmp_path / "run" / "metrics.json").exists()  # a fit is a run like the command line's
    np.testing.assert_array_equal(model.predict(x), labels)
    assert model.transform(torch.from_numpy(x)).shape == (1797, 10)
    proba = model.predict_proba(x[:5])
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    again = DeepClustering.load(str(tmp_path / "run"))
    np.testing.assert_array_equal(again.predict(x), labels)
    assert again.run_dir_ == tmp_path / "run" and again.metrics_ == model.metrics_
    # new images are scaled as the training images were, whatever their dtype or their own range:
    # dimmer images (at most 178) as int64, as floats in 0-255, one at a time
    dim = (x * 0.7).astype(np.uint8)
    expected = again.predict(dim)
    assert (expected != labels).any()  # the dimming matters to the model
    for other in (dim.astype(np.int64), dim.astype(np.float32), torch.from_numpy(dim).double()):
        np.testing.assert_array_equal(again.predict(other), expected)
    np.testing.assert_array_equal([int(model.predict(dim[i : i + 1])[0]) for i in range(40)], expected[:40])
    with pytest.raises(InputError, match="X holds 1x16x16 images; the model was trained on 1x8x8"):
        again.predict(np.zeros((3, 16, 16)))


def test_load_names_what_is_wrong_with_a_run_folder(pretrained_digits, tmp_path):
    # until 2026-12-06 a cut-short metrics.json was a JSONDecodeError traceback, and a finished run
    # without its model was "neither a finished run's folder ..." under the command line's checkpoint=
    cut, no_model, pretraining = tmp_path / "cut", tmp_path / "no_model", tmp_path / "pretraining"
    for run in (cut, no_model, pretraining):
        shutil.copytree(pretrained_digits, run, ignore=shutil.ignore_patterns("tensorboard"))
    (cut / "metrics.json").write_text((cut / "metrics.json").read_text()[:50])
    (no_model / "checkpoints" / "refine" / "last.ckpt").unlink()
    # a run stopped in pretraining: until 2026-12-06 "neither a finished run's folder ..."
    for done in ("metrics.json", "autoencoder.pt", "checkpoints/refine"):
        shutil.rmtree(pretraining / done) if (pretraining / done).is_dir() else (pretraining / done).unlink()
    predicted = tmp_path / "predictions"  # a predict's folder
    (predicted / ".hydra").mkdir(parents=True)
    shutil.copy(pretrained_digits / ".hydra" / "config.yaml", predicted / ".hydra")
    for run, message in [
        (
            pretraining,
            f"that run has not finished (no metrics.json): continue it with python train.py resume={pretraining}; "
            "it stopped before refinement saved a model",
        ),
        (cut, f"{cut / 'metrics.json'} is damaged (Expecting"),
        (
            no_model,
            f"a finished run's folder without its model ({no_model / 'checkpoints/refine/last.ckpt'} is missing)",
        ),
        (tmp_path, "neither a finished run's folder nor a refinement checkpoint"),
        (predicted, "neither a finished run's folder nor a refinement checkpoint"),  # its config alone: not a run
    ]:
        with pytest.raises(InputError) as err:
            DeepClustering.load(str(run))
        assert str(err.value).startswith(f"DeepClustering.load({str(run)!r}): {message}"), str(err.value)
    model = DeepClustering.load(str(cut / "checkpoints" / "refine" / "last.ckpt"))  # as the error says
    run_dir = DeepClustering.load(os.path.relpath(pretrained_digits)).run_dir_  # absolute, as a fit's (it was as given)
    assert run_dir.is_absolute() and run_dir.resolve() == pretrained_digits.resolve()
    assert model.predict(np.zeros((2, 8, 8))).shape == (2,)
    # a checkpoint written before 2026-12-06 holds a "steps" buffer the model no longer has: it loads
    old = torch.load(cut / "checkpoints" / "refine" / "last.ckpt", weights_only=True)
    old["state_dict"]["steps"] = torch.tensor(1)
    torch.save(old, tmp_path / "old.ckpt")
    np.testing.assert_array_equal(
        DeepClustering.load(str(tmp_path / "old.ckpt")).predict(np.zeros((2, 8, 8))), model.predict(np.zeros((2, 8, 8)))
    )


@pytest.mark.parametrize(
    ("y", "message"),
    [  # until 2026-12-06 these named X, and a (N, 2) y was read as 2N labels
        (np.zeros(299), "y: 300 images but 299 labels"),
        (np.zeros((300, 2)), r"y: labels of shape \(300, 2\): one label per image, shape \(300,\)"),
        (np.array(["a"] * 300), "y: labels must be whole numbers"),
    ],
)
def test_bad_labels_are_named_as_y(tmp_path, y, message):
    with pytest.raises(InputError, match=f"^{message}"):
        DeepClustering(run_dir=str(tmp_path / "run")).fit(np.zeros((300, 8, 8)), y)
    assert not (tmp_path / "run").exists()


def test_a_bad_device_or_overrides_is_refused_before_training_or_loading(tmp_path):
    # device is predict's and transform's; until 2026-12-06 fit trained to the end and load accepted it
    with pytest.raises(InputError, match="^device='bogus': not a device"):
        DeepClustering(device="bogus", run_dir=str(tmp_path / "run")).fit(np.zeros((30, 8, 8)))
    # one string for the list: until 2026-12-06 Hydra's "Error parsing override 'p' missing EQUAL"
    with pytest.raises(InputError, match=r"^overrides='pretrain.epochs=1': a list of KEY=VALUE strings"):
        DeepClustering(overrides="pretrain.epochs=1", run_dir=str(tmp_path / "run")).fit(np.zeros((30, 8, 8)))
    # the estimator's own parameters: until 2026-12-06 the override won while get_params said otherwise
    with pytest.raises(InputError, match=r"^overrides: seed=5: give it as the parameter seed= instead"):
        DeepClustering(overrides=["seed=5"], run_dir=str(tmp_path / "run")).fit(np.zeros((30, 8, 8)))
    with pytest.raises(InputError, match="^device='bogus': not a device"):
        DeepClustering.load(str(tmp_path), device="bogus")
    assert not (tmp_path / "run").exists()


def test_unfitted_estimator_says_so():
    with pytest.raises(InputError, match="not fitted"):
        DeepClustering().predict(np.zeros((2, 8, 8)))


def test_the_estimator_has_scikit_learns_parameters():
    from sklearn.base import clone

    model = DeepClustering(n_clusters=5, overrides=["model=fc"], seed=3)
    assert model.get_params() == {
        "n_clusters": 5,
        "overrides": ["model=fc"],
        "seed": 3,
        "run_dir": None,
        "device": "auto",
    }
    copy = clone(model.set_params(seed=4))
    assert copy is not model and copy.seed == 4 and copy.overrides == ["model=fc"] and not hasattr(copy, "model_")


def test_a_refused_fit_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = np.full((3, 8, 8), 0.5)
    x[1, 2, 3] = np.nan
    with pytest.raises(InputError, match=r"X: 1 NaN or infinite pixel values \(first in image 1\)"):  # as read
        DeepClustering().fit(x)
    with pytest.raises(InputError, match="n_clusters=10 is more than the 3 images"):  # refused by the pipeline
        DeepClustering(overrides=["init.manifold=none"]).fit(np.zeros((3, 8, 8)))
    assert list((tmp_path / "outputs").glob("*/*")) == []  # no empty outputs/DATE/TIME left behind


def test_a_run_dir_under_home_is_one_folder(digits, tmp_path, monkeypatch):
    # until 2026-12-06 run_dir="~/run" put the checkpoints in the home folder and metrics.json and the
    # rest in a literal ./~/run; run_dir_ was relative, so load() missed it after a chdir
    (tmp_path / "home").mkdir(), (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    quick = ["pretrain.epochs=1", "refine.max_iters=2", "init.manifold=none", "baselines=[]"]
    model = DeepClustering(overrides=quick, run_dir="~/run").fit(digits[0][:200])
    run = tmp_path / "home" / "run"
    assert model.run_dir_ == run and list((tmp_path / "cwd").iterdir()) == []
    assert {"metrics.json", "predictions.csv", "autoencoder.pt", "checkpoints"} <= {p.name for p in run.iterdir()}


def test_a_fit_continued_on_other_data_or_settings_is_refused(digits, tmp_path):
    # an interrupted fit whose pretraining had finished (killed in K-means, say) and no refinement
    # checkpoint yet: until 2026-12-06 its autoencoder.pt, pretrained on other images, went on silently
    quick = ["pretrain.epochs=1", "refine.max_iters=2", "init.manifold=none", "baselines=[]"]
    run = tmp_path / "run"
    DeepClustering(overrides=quick, run_dir=str(run)).fit(digits[0][:200])
    for done in ("metrics.json", "predictions.csv", "checkpoints/refine"):
        shutil.rmtree(run / done) if (run / done).is_dir() else (run / done).unlink()
    with pytest.raises(InputError, match=r"^resume: the data set changed since the run started \(other files, labels"):
        DeepClustering(overrides=quick, run_dir=str(run)).fit(digits[0][200:400])
    DeepClustering(overrides=quick, run_dir=str(run)).fit(digits[0][:200])  # the same data continues
    # continued from a refinement checkpoint with another K: until 2026-12-06 a size-mismatch traceback
    (run / "metrics.json").unlink()
    with pytest.raises(
        InputError, match=r"^resume: .*last\.ckpt was saved with n_clusters=10, this run has n_clusters=5"
    ):
        DeepClustering(n_clusters=5, overrides=quick, run_dir=str(run)).fit(digits[0][:200])


def test_a_fit_leaves_the_callers_random_generators_and_environment_as_they_were(digits, tmp_path):
    # until 2026-12-06 a fit re-seeded numpy's, Python's and torch's generators (the same draws after
    # every fit, whatever the notebook had seeded) and left Lightning's PL_GLOBAL_SEED set
    quick = ["pretrain.epochs=1", "refine.max_iters=2", "init.manifold=none", "baselines=[]"]
    draws = []
    for fit in (False, True):
        np.random.seed(123), random.seed(123), torch.manual_seed(123)
        environ = dict(os.environ)
        if fit:
            DeepClustering(overrides=quick, run_dir=str(tmp_path / "run"), seed=5).fit(digits[0][:200])
        draws.append((np.random.rand(), random.random(), torch.rand(1).item()))
        assert dict(os.environ) == environ
    assert draws[0] == draws[1]


def predict_cli(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "deep_clustering.predict", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_predict_command_sorts_a_folder(pretrained_digits, tmp_path):
    digits = load_digits()
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(100):  # larger than the 8x8 the model saw: converted back on load
        img = Image.fromarray((digits.images[i, 0].numpy() * 255).astype(np.uint8)).resize((16, 16), Image.NEAREST)
        img.save(folder / f"{i:03d}.png")
    out = tmp_path / "out"
    proc = predict_cli(f"checkpoint={pretrained_digits}", f"data.path={folder}", "folders=link", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100 and list(rows[0]) == ["file", "cluster", "confidence", "distance"]
    assert np.load(out / "codes.npy").shape == (100, 10)
    clusters = {r["cluster"] for r in rows}
    assert {p.stem for p in (out / "contact_sheets").iterdir()} == {f"cluster_{k}" for k in clusters}
    linked = sorted(str(p.relative_to(out / "clusters")) for p in (out / "clusters").rglob("*.png"))
    assert linked == sorted(f"{r['cluster']}/{r['file']}" for r in rows)
    # the same images as the training run saw them: mostly the same clusters (PNG rounding aside)
    with open(pretrained_digits / "predictions.csv") as f:
        trained = [r["cluster"] for r in csv.DictReader(f)][:100]
    agree = np.mean([r["cluster"] == t for r, t in zip(rows, trained)])
    assert agree >= 0.9, agree
    # the same command again into the same folder: refused, the first predictions left as they were
    before = {p: p.stat().st_mtime for p in out.rglob("*") if p.is_file()}
    proc = predict_cli(f"checkpoint={pretrained_digits}", f"data.path={folder}", "folders=link", f"hydra.run.dir={out}")
    refused = proc.stderr.strip().splitlines()[-1]
    assert refused.startswith(f"error: hydra.run.dir={out} already holds a run") and "resume=" not in refused
    assert {p: p.stat().st_mtime for p in out.rglob("*") if p.is_file()} == before
    # an output folder inside the image folder (predict started there, or hydra.run.dir=IMAGES/sorted):
    # until 2026-12-06 it wrote there, and a second predict sorted the first one's copies with the images
    listed = sorted(folder.rglob("*"))
    (tmp_path / "link").symlink_to(folder)  # through a linked folder or '..': until later on 2026-12-06 let by
    for args in (
        [f"hydra.run.dir={folder / 'sorted'}"],
        ["data.path=."],  # predictions/DATE/TIME
        [f"data.path={tmp_path / 'link'}", f"hydra.run.dir={folder / 'sorted'}"],
        [f"data.path={tmp_path / 'out' / '..' / 'new'}", f"hydra.run.dir={folder / 'sorted'}"],
    ):
        cmd = [
            sys.executable,
            "-m",
            "deep_clustering.predict",
            f"checkpoint={pretrained_digits}",
            f"data.path={folder}",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([*cmd, *args], cwd=folder, capture_output=True, text=True, timeout=600, env=env)
        said = proc.stderr.strip().splitlines()[-1]
        assert said.startswith("error: hydra.run.dir=") and f"is inside data.path={folder}: the run would" in said, said
        assert sorted(folder.rglob("*")) == listed  # nothing written there, not even the new folder


def test_predict_refuses_images_of_another_shape(pretrained_digits, tmp_path):
    np.savez(tmp_path / "rgb.npz", x_train=np.zeros((4, 8, 8, 3), np.uint8))
    proc = predict_cli(
        f"checkpoint={pretrained_digits}",
        "data=npz",
        f"data.path={tmp_path / 'rgb.npz'}",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert proc.returncode != 0
    error = "error: the data holds 3x8x8 images (C x H x W); the model in"
    assert proc.stderr.strip().splitlines()[-1].startswith(error)
    assert error in (tmp_path / "out" / "predict.log").read_text()  # the log keeps why (it was empty)


def test_predict_refuses_a_bad_setting_or_checkpoint_before_importing_torch(tmp_path):
    # torch takes about 9 s to import on 2 cores: these answer in about one (until 2026-12-06 ten or more)
    script = (
        "import runpy, sys\n"
        "try:\n"
        "    runpy.run_module('deep_clustering.predict', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print(e)\n"
        "    print('torch' in sys.modules)\n"
    )
    (tmp_path / "images").mkdir()
    for setting, error in [
        ("folders=move", "error: folders='move' must be none, link or copy"),
        (f"checkpoint={tmp_path}", f"error: checkpoint={tmp_path}: neither a finished run's folder nor a refinement"),
        ("folders=none", "error: checkpoint=/no/such/run: no such file or folder"),  # until 2026-12-06 "neither ..."
    ]:
        out = tmp_path / setting.replace("=", "_")
        args = ["checkpoint=/no/such/run", f"data.path={tmp_path / 'images'}", setting, f"hydra.run.dir={out}"]
        proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True)
        *_, said, torch_imported = proc.stdout.splitlines()
        assert said.startswith(error) and torch_imported == "False", proc.stdout + proc.stderr
        assert error in (out / "predict.log").read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["device=gpu"], "device='gpu': not a device (auto, cpu, cuda, cuda:1, ...)"),
        # until 2026-12-06 torch's NotImplementedError (meta) or a RuntimeError a page long (mps off a Mac)
        (["device=meta"], "device=meta: torch cannot compute there on this machine and build"),
        (["contact_sheets=-1"], "contact_sheets=-1 must be a whole number, 0 or more"),
        (
            ["checkpoint={unfinished}"],
            "checkpoint={unfinished}: that run has not finished (no metrics.json): continue it with "
            "python train.py resume={unfinished}, or",
        ),
        (  # a fit's folder has no Hydra config: resume= would refuse it
            ["checkpoint={unfinished_fit}"],
            "checkpoint={unfinished_fit}: that run has not finished (no metrics.json): continue it with "
            "DeepClustering(..., run_dir='{unfinished_fit}').fit(X) on the same X, or",
        ),
    ],
)
def test_predict_refuses_bad_settings(pretrained_digits, tmp_path, overrides, message):
    # in this process (the command's one-line form of an InputError: test_predict_refuses_images_of_another_shape)
    from hydra import compose, initialize_config_dir

    from deep_clustering.predict import predict

    unfinished = tmp_path / "unfinished"  # a run killed in refinement: its last checkpoint, no metrics.json
    shutil.copytree(pretrained_digits, unfinished, ignore=shutil.ignore_patterns("metrics.json", "tensorboard"))
    unfinished_fit = tmp_path / "unfinished_fit"
    shutil.copytree(unfinished, unfinished_fit, ignore=shutil.ignore_patterns(".hydra", "train.log"))
    fill = {"unfinished": unfinished, "unfinished_fit": unfinished_fit}
    (tmp_path / "new").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "new" / "a.png")
    args = [f"checkpoint={pretrained_digits}", f"data.path={tmp_path / 'new'}"]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("predict", overrides=[*args, *(o.format(**fill) for o in overrides)])
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError) as err:
        predict(cfg, tmp_path / "out")
    assert str(err.value).startswith(message.format(**fill)), str(err.value)
    assert list((tmp_path / "out").iterdir()) == []  # refused before writing anything


def test_resnet_backbone_end_to_end(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "small.npz", x_train=x[:300], y_train=y[:300])
    overrides = [
        "model=resnet18",
        "model.weights=null",
        "model.input_size=32",
        "data=npz",
        f"data.path={tmp_path / 'small.npz'}",
    ]
    run_train(tmp_path / "run", *overrides, "refine.max_iters=20", "refine.update_interval=10", "init.manifold=none")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_samples"] == 300 and metrics["seconds"]["pretrain"] < 1  # nothing to pretrain
    state = torch.load(tmp_path / "run" / "checkpoints" / "refine" / "last.ckpt", weights_only=True)["state_dict"]
    assert not any(k.startswith("decoder.") for k in state) and state["head.centers"].shape == (10, 512)
    assert DeepClustering.load(str(tmp_path / "run")).predict(x[:300]).shape == (300,)


def test_backbone_weights_file_must_fit(tmp_path):
    torch.save({"not": torch.zeros(1)}, tmp_path / "w.pth")
    proc = run_train(tmp_path / "run", "model=resnet18", f"model.weights={tmp_path / 'w.pth'}", check=False)
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: model.weights={tmp_path / 'w.pth'}: not resnet18 weights")
    )


def test_baselines_are_reported_beside_dec(pretrained_digits):
    metrics = json.loads((pretrained_digits / "metrics.json").read_text())
    assert set(metrics["baselines"]) == {"kmeans", "gmm"}
    for scores in metrics["baselines"].values():
        assert 0.5 < scores["acc"] <= 1 and scores["n_clusters_found"] == 10


def test_baselines_and_the_initial_centres_share_one_embedding_pass(pretrained_digits, digits, tmp_path, monkeypatch):
    passes = []

    def counted(*args, **kwargs):
        passes[-1] += 1
        return embed_all(*args, **kwargs)

    monkeypatch.setattr(pipeline, "embed_all", counted)
    monkeypatch.setattr(refine, "embed_all", counted)
    centres = []
    for baselines in ("[]", "[kmeans]"):
        passes.append(0)
        overrides = [f"pretrained={pretrained_digits}", f"baselines={baselines}", *QUICK[1:]]
        model = DeepClustering(overrides=overrides, run_dir=str(tmp_path / f"run{len(passes)}")).fit(*digits)
        centres.append(model.model_.initial_centers)
    assert passes[0] == passes[1] > 0  # the baselines' pass is the initialisation's: no pass of their own
    torch.testing.assert_close(centres[0], centres[1], rtol=0, atol=0)  # from the same codes
    assert model.metrics_["baselines"]["kmeans"]["acc"] > 0.5


CTRL_C_FIT = """
import os, signal, sys, threading, time
from pathlib import Path
import numpy as np
from deep_clustering.api import DeepClustering
from deep_clustering.data import load_digits

x = load_digits().images[:, 0].numpy()
run, again = Path(sys.argv[1]), Path(sys.argv[2])
overrides = sys.argv[3:]

def ctrl_c():  # once pretraining saved its first checkpoint: a Ctrl-C mid-epoch a few steps later
    ckpt = run / "checkpoints" / "pretrain" / "last.ckpt"
    while not ckpt.exists():
        time.sleep(0.01)
    time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=ctrl_c, daemon=True).start()
model = DeepClustering(n_clusters=10, overrides=overrides, run_dir=str(run))
try:
    model.fit(x)
    print("not interrupted")
except KeyboardInterrupt as e:
    print("interrupted:", e)
print("handler restored:", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
labels = model.fit(x).labels_  # the same folder: continues the run
uninterrupted = DeepClustering(n_clusters=10, overrides=overrides, run_dir=str(again)).fit(x).labels_
print("same labels:", np.array_equal(labels, uninterrupted), model.metrics_["refine_iterations"])
"""


def test_ctrl_c_stops_a_fit_that_fit_continues(tmp_path):
    """In a notebook, Ctrl-C (the kernel's interrupt) ends the fit after the step under way with a
    KeyboardInterrupt that names its folder (not Lightning's SystemExit(1)), leaves SIGINT as it was,
    and fitting again in that folder ends with the uninterrupted fit's labels."""
    overrides = [
        *QUICK,
        "pretrain.epochs=20",
        "checkpoint.min_interval_s=0",
        "baselines=[]",
        "trainer.enable_progress_bar=false",
    ]
    run, again = tmp_path / "run", tmp_path / "again"
    proc = subprocess.run(
        [sys.executable, "-c", CTRL_C_FIT, str(run), str(again), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=sigint_as_in_a_terminal,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    expected = f"interrupted: stopped by Ctrl-C; fit again with run_dir={str(run)!r} to continue"
    assert expected in lines, proc.stdout[-2000:]
    assert "handler restored: True" in lines and "same labels: True 40" in lines, proc.stdout[-2000:]
