"""Hydra multiruns: one folder per job, a summary that matches them, K chosen by internal scores,
Optuna, and the SLURM launcher config."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deep_clustering.summarize import main as summarize
from tests.conftest import ROOT

# short jobs: what a sweep does with them is tested here, not their accuracy
QUICK = ["pretrain.epochs=3", "refine.max_iters=40", "refine.update_interval=10", "init.manifold=none"]


def multirun(sweep_dir: Path, *overrides: str, returncode: int = 0) -> str:
    """Runs the sweep; returns its stderr."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        "trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([*cmd, *overrides], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == returncode, proc.stderr[-3000:]
    return proc.stderr


def test_two_job_sweep_and_its_summary(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    multirun(sweep, "seed=0,1", *QUICK)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    accs = []
    for job in jobs:
        for path in ["metrics.json", "predictions.csv", "checkpoints/refine/last.ckpt", ".hydra/overrides.yaml"]:
            assert (job / path).exists(), (job, path)
        accs.append(json.loads((job / "metrics.json").read_text())["acc"])
        events = EventAccumulator(str(job / "tensorboard"))
        events.Reload()
        assert "_hparams_/session_end_info" in events.PluginTagToContent("hparams")  # the hparams tab lists the job
    summarize([str(sweep)])
    assert "best:" in capsys.readouterr().out
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["runs"] == "2"  # one group: the jobs differ only in the seed
    assert float(rows[0]["acc_mean"]) == pytest.approx(np.mean(accs))
    assert float(rows[0]["acc_std"]) == pytest.approx(np.std(accs, ddof=1))
    assert float(rows[0]["acc_min"]) == min(accs) and float(rows[0]["acc_max"]) == max(accs)
    assert (sweep / "summary.md").read_text().startswith("| runs | acc mean ± std [min, max]")


def test_summary_averages_over_seed_and_the_keys_over_names(tmp_path, capsys):
    for job, (seed, gamma, acc) in enumerate([(0, 0.1, 0.5), (1, 0.1, 0.6), (0, 1, 0.7), (1, 1, 0.8)]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        overrides = f"- seed={seed}\n- refine.gamma={gamma}\n- data.path=my\\ photos\n"  # as Hydra escapes it
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(overrides)
        # the first job of a sweep also imports torch and Lightning: no startup (imports, config checks,
        # reading the data) is the job's time, the first's (9 s) or a later one's (0.5 s)
        seconds = {"total": 10.0, "startup": 9.0} if job == 0 else {"total": 1.5, "startup": 0.5}
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"acc": acc, "seconds": seconds}))
    summarize([str(tmp_path)])
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["acc_mean"]) for r in rows) == pytest.approx([0.55, 0.75])
    assert [float(r["seconds_mean"]) for r in rows] == [1.0, 1.0]
    assert {r["data.path"] for r in rows} == {"my photos"}  # not Hydra's escaped my\\ photos
    assert "nmi_mean" not in rows[0]  # no empty columns for metrics no job reports
    with pytest.raises(SystemExit, match="2"):
        summarize([str(tmp_path), "--over", "refine.gama"])
    said = capsys.readouterr().err
    assert "error: --over refine.gama: no job sets it (the jobs set: data.path, refine.gamma, seed)" in said
    summarize([str(tmp_path), "--over", "refine.gamma"])  # and seed still
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["runs"] == "4" and float(rows[0]["acc_mean"]) == pytest.approx(0.65)
    capsys.readouterr()
    # a group of one run has no spread (until 2026-12-06 "± 0.0000"); a job of another sweep in the
    # same folder that sets a key no other sets is no key=None on the best line
    (tmp_path / "4" / ".hydra").mkdir(parents=True)
    (tmp_path / "4" / ".hydra" / "overrides.yaml").write_text("- seed=0\n- n_clusters=5\n")
    (tmp_path / "4" / "metrics.json").write_text(json.dumps({"acc": 0.9, "seconds": {"total": 1.0}}))
    summarize([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| 5 |  | 1 | 0.9000 | 1.0000 |" in out and "None" not in out, out
    assert out.splitlines()[-2].startswith("best: n_clusters=5  acc 0.9000 over 1 run(s)"), out
    with open(tmp_path / "summary.csv") as f:
        assert next(r for r in csv.DictReader(f) if r["n_clusters"] == "5")["acc_std"] == ""


def test_summary_says_over_how_many_runs_a_metric_is(tmp_path, capsys):
    # no labels; seed 1 collapsed to one cluster: its internal scores are NaN, null in metrics.json
    scores = [
        {"silhouette": 0.4737, "davies_bouldin": 0.8112, "calinski_harabasz": 412.5, "n_clusters_found": 10},
        {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None, "n_clusters_found": 1},
    ]
    for seed, metrics in enumerate(scores):
        (tmp_path / str(seed) / ".hydra").mkdir(parents=True)
        (tmp_path / str(seed) / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
        (tmp_path / str(seed) / "metrics.json").write_text(json.dumps({**metrics, "seconds": {"total": 1.0}}))
    summarize([str(tmp_path)])
    out = capsys.readouterr().out
    # until 2026-12-06 "| 2 | 0.4737 | ...": the lone run's value as the group's, over "2 run(s)"
    assert "| 2 | 0.4737 (1 of 2 runs) | 0.8112 (1 of 2 runs) | 412.5000 (1 of 2 runs) | 5.5000 ± 6.3640" in out, out
    assert (
        out.splitlines()[-2]
        == "best: (no settings varied)  silhouette 0.4737 over 1 of 2 run(s); 1 to 10 clusters occupied"
    )
    with open(tmp_path / "summary.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["runs"] == "2" and row["silhouette_runs"] == "1" and row["silhouette_std"] == ""
    assert "n_clusters_found_runs" not in row  # every run reports it: no column
    # a metric no run reports is refused with the ones they do (until 2026-12-06 the fixed list, acc first)
    with pytest.raises(SystemExit, match="2"):
        summarize([str(tmp_path), "--metric", "acc"])
    said = capsys.readouterr().err
    assert "error: --metric acc: no run reports it (the runs report: silhouette, davies_bouldin, " in said
    assert "calinski_harabasz, n_clusters_found, seconds)" in said


def test_k_sweep_finds_the_true_number_of_clusters(tmp_path, capsys):
    # four well-separated 8x8 prototypes, 60 noisy copies each, no labels
    gen = np.random.default_rng(0)
    prototypes = gen.random((4, 8, 8)) > 0.5
    x = np.concatenate([np.clip(p + gen.normal(0, 0.05, (60, 8, 8)), 0, 1) for p in prototypes]).astype(np.float32)
    np.savez(tmp_path / "blobs.npz", x_train=x)
    sweep = tmp_path / "sweep"
    # 30 pretraining epochs (4 steps each): after 10, codes this raw let DEC's refinement merge
    # blobs that K-means on the codes had apart (silhouette 0.64-0.84 at K=4 for seeds 0-2, 0.98 after 30)
    quick = [o for o in QUICK if not o.startswith("pretrain.epochs=")] + ["pretrain.epochs=30"]
    # a job refused for its input (K above the 240 images) does not stop the others; the sweep fails at its end
    err = multirun(
        sweep, "n_clusters=300,3,4,5,6", "data=npz", f"data.path={tmp_path / 'blobs.npz'}", *quick, returncode=1
    )
    refused = "error: n_clusters=300 is more than the 240 images of the data set"
    assert refused in err.splitlines() and "'n_clusters=300'" in err, err[-2000:]  # Hydra's words at the end
    assert refused in (sweep / "0" / "train.log").read_text() and not (sweep / "0" / "metrics.json").exists()
    summarize([str(sweep), "--metric", "silhouette"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "1 of 5 jobs left out, with no metrics.json: 0"  # the refused job, said
    # the best K by silhouette occupies the 4 true clusters (a larger K can leave its extra clusters
    # empty, the same partition), and 3 clusters rank below it
    best = next(line for line in out.splitlines() if line.startswith("best: "))
    assert best.endswith("; 4 clusters occupied") and "n_clusters=3 " not in best, out
    for job in ("1", "2", "3", "4"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["n_clusters_found"] <= metrics["n_clusters"]


@pytest.mark.slow  # 75 s on the 2-core CPU; the DDP path itself is in test_train.py::test_two_processes_match_one
def test_two_processes_per_job_inside_a_sweep(tmp_path):
    """ddp_spawn starts each job's processes itself: no duplicated jobs, no stray folders."""
    sweep = tmp_path / "sweep"
    multirun(sweep, "seed=0,1", "trainer=ddp", "trainer.strategy=ddp_spawn", *QUICK)
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["processes"] == 2 and metrics["refine_iterations"] == 40


def test_optuna_search_reports_the_best_trial(tmp_path):
    sweep = tmp_path / "study"
    multirun(sweep, "hparams_search=optuna", "hydra.sweeper.n_trials=2", *QUICK)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    accs = [json.loads((sweep / j / "metrics.json").read_text())["acc"] for j in ("0", "1")]
    assert best["best_value"] == pytest.approx(max(accs))
    # the command line fixes refine.update_interval, which takes it out of the search space
    assert set(best["best_params"]) == {"refine.gamma", "refine.optimizer.lr"}


def test_slurm_launcher_config_composes():
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"], return_hydra_config=True
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 4 and cfg.hydra.launcher.gpus_per_node == 4


# the refreshes of P that seed 0 of `benchmarks/seeds.py -- data=npz data.path=MNIST_1000.npz pretrain.epochs=2
# refine.max_iters=150 refine.update_interval=5 refine.tol=0.01 init.manifold=none baselines=[]` logged
# (the first 1,000 MNIST test images; steps 0, 5, ..., 145: delta_label from the second on), and its metrics.json
DELTA = [0.913, 0.28, 0.467, 0.204, 0.286, 0.412, 0.538, 0.38, 0.34, 0.177, 0.156, 0.12, 0.108, 0.107, 0.13]
DELTA += [0.067, 0.112, 0.049, 0.079, 0.112, 0.049, 0.228, 0.035, 0.058, 0.091, 0.068, 0.096, 0.039, 0.062]
ACC = [0.209, 0.24, 0.241, 0.239, 0.238, 0.236, 0.233, 0.244, 0.243, 0.252, 0.255, 0.26, 0.257, 0.263, 0.265]
ACC += [0.261, 0.257, 0.262, 0.262, 0.264, 0.266, 0.261, 0.261, 0.264, 0.264, 0.262, 0.262, 0.266, 0.264, 0.27]
MAX_ITERS_RUN = {"acc": 0.269, "nmi": 0.1726, "ari": 0.1226, "refine_iterations": 150, "stopped_by": "max_iters"}


def test_tol_benchmark_ends_a_run_that_no_refresh_stops_at_max_iters():
    from benchmarks.tol import disagrees, outcome, stop  # Lightning only in the test that needs it

    steps = range(0, 150, 5)
    found = {"refine/delta_label": dict(zip(steps[1:], DELTA)), "val/acc": dict(zip(steps, ACC))}
    found |= {"val/nmi": {90: 0.153}, "val/ari": {90: 0.1126}}  # read at the refresh a tol stops at only
    # no refresh had fewer than 1% of the labels changed: max_iters stopped it, at step 150, 5 steps after
    # the last refresh (until 2026-12-06: step 145 with that refresh's ACC 0.270, and no check against metrics.json)
    assert stop(found, 0.01) is None
    assert outcome(found, MAX_ITERS_RUN, 0.01) == {"steps": 150, "acc": 0.269, "nmi": 0.1726, "ari": 0.1226}
    assert disagrees(found, MAX_ITERS_RUN, 0.01) is None
    # a larger tol stops it at the refresh after the first with fewer than 5% changed (step 90: 4.9%)
    assert outcome(found, MAX_ITERS_RUN, 0.05) == {"steps": 90, "acc": 0.262, "nmi": 0.153, "ari": 0.1126}
    # the second refresh (the first with labels to compare) can stop it: 91% changed, under a tol of 95%
    # (until 2026-12-06 counted as the first, whose delta_label is not logged: the third, step 10)
    assert stop(found, 0.95) == 5
    # logs that do not give back the run's own end are said
    said = disagrees(found, MAX_ITERS_RUN, 0.05)
    assert said == "its logs stop at step 90 (tol, ACC 0.2620), its metrics.json at 150 (max_iters, ACC 0.2690)"
    assert disagrees(found, {**MAX_ITERS_RUN, "stopped_by": "tol"}, 0.01).startswith("its logs stop at step 150 (max")
