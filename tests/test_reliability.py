"""Interrupted runs resume to the same predictions; faults stop cleanly; bad resumes are refused."""

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deep_clustering import runs
from deep_clustering.callbacks import LastCheckpoint
from deep_clustering.data import ImageDataModule, load_digits
from deep_clustering.models import ConvAutoencoder
from deep_clustering.pretrain import AutoencoderModule
from tests.conftest import ROOT, free_port, run_train, sigint_as_in_a_terminal, spawn


def start(
    run_dir: Path, *overrides: str, warnings: str = "ignore", env: dict | None = None, process_group: int | None = None
) -> subprocess.Popen:
    """`python train.py` started in `run_dir`; `env`: more environment variables; `process_group`:
    0 for a group of its own (os.killpg signals it with every process it starts), a process's id
    for that one's group, None for this process's."""
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
    return subprocess.Popen(
        [*cmd, *overrides],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": warnings, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=partial(as_in_a_terminal, process_group),
    )


def as_in_a_terminal(process_group: int | None) -> None:
    """preexec_fn of `start`: SIGINT's default handling, and the process group (Popen's process_group
    is Python 3.11's)."""
    sigint_as_in_a_terminal()
    if process_group is not None:
        os.setpgid(0, process_group)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the point to interrupt it:\n{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the point to interrupt the run")
        time.sleep(0.05)


def in_log(run_dir: Path, text: str):
    return lambda: (run_dir / "train.log").exists() and text in (run_dir / "train.log").read_text()


def saved_at(ckpt: Path) -> float:
    """When `ckpt` was last written (0 while it does not exist)."""
    return ckpt.stat().st_mtime if ckpt.exists() else 0.0


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of a scalar in the run's TensorBoard log (all its event files: a resumed run adds one)."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def killed(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> str:
    """Send `sig` to the run; its stderr once it has ended."""
    proc.send_signal(sig)
    return proc.communicate(timeout=120)[1]


def test_a_run_interrupted_in_each_stage_resumes_to_the_uninterrupted_run(tmp_path):
    """One run, resumed after each of five interruptions: SIGKILL after pretraining's first epoch,
    SIGTERM in the middle of a later epoch (the run saves there), SIGKILL inside the t-SNE + K-means
    initialisation, SIGKILL mid-epoch in refinement, Ctrl-C (SIGINT) later in refinement (the run
    saves there). It ends with the uninterrupted run's predictions
    and logged losses. (The first resume repeats all but the first epoch of the uninterrupted run: the
    same seed gives the same run twice.)

    The first 900 of scikit-learn's digits (15 batches an epoch), pretraining long enough and a t-SNE
    initialisation (seconds) to interrupt each stage reliably."""
    digits = load_digits()
    np.savez(tmp_path / "digits900.npz", x_train=digits.images[:900, 0].numpy(), y_train=digits.labels[:900].numpy())
    settings = [
        "data=npz",
        f"data.path={tmp_path / 'digits900.npz'}",
        "pretrain.epochs=12",
        "refine.update_interval=10",
        "refine.max_iters=120",
        "refine.tol=0",
        "init.manifold=tsne",
        "checkpoint.min_interval_s=0",  # last.ckpt at every epoch's end, not at most every 30 s
    ]
    uninterrupted = tmp_path / "uninterrupted"
    run_train(uninterrupted, *settings)
    run_dir, resume = tmp_path / "run", f"resume={tmp_path / 'run'}"
    ckpt = run_dir / "checkpoints" / "pretrain" / "last.ckpt"
    refine_ckpt = run_dir / "checkpoints" / "refine" / "last.ckpt"

    proc = start(run_dir, *settings)
    wait_for(lambda: saved_at(ckpt) > 0, proc)  # the first epoch's checkpoint, long before the 12th epoch
    killed(proc)
    assert not (run_dir / "autoencoder.pt").exists() and not (run_dir / "metrics.json").exists()

    proc, previous = start(run_dir, resume), saved_at(ckpt)
    wait_for(lambda: saved_at(ckpt) > previous + 0.05, proc)  # this run's first save, not the last one's
    first = saved_at(ckpt)
    wait_for(lambda: saved_at(ckpt) > first + 0.05, proc)  # the next epoch's save, not the same save's last write
    second = saved_at(ckpt)
    # halfway through the epoch after: the signal's checkpoint lands mid-epoch however fast epochs run
    time.sleep(max(0.0, second + (second - first) / 2 - time.time()))
    err = killed(proc, signal.SIGTERM)
    assert proc.returncode != 0
    assert err.strip().splitlines()[-1] == f"stopped by SIGTERM; continue with: python train.py {resume}"
    assert f"stopped by SIGTERM; continue with: python train.py {resume}" in (run_dir / "train.log").read_text()
    assert torch.load(ckpt, weights_only=True)["global_step"] % 15 != 0  # mid-epoch: 900 images, 15 batches of 64

    proc = start(run_dir, resume, warnings="default")
    wait_for(in_log(run_dir, "stage 2-3/4"), proc)  # inside the t-SNE + K-means initialisation
    time.sleep(1.0)
    err = killed(proc)
    assert (run_dir / "autoencoder.pt").exists() and not refine_ckpt.exists()
    # resumed mid-epoch, no warnings at all; in particular not Lightning's "ended before the epoch
    # ended ... unreliable results", which is wrong here: the sampler skips the batches already trained on
    warned = [line for line in err.splitlines() if re.match(r"\S+\.py:\d+: ", line)]
    assert not warned, warned

    proc = start(run_dir, resume)
    wait_for(lambda: saved_at(refine_ckpt) > 0, proc)  # mid-epoch of refinement: saves every 10 steps
    time.sleep(0.5)
    killed(proc)
    assert refine_ckpt.exists() and not (run_dir / "metrics.json").exists()

    proc, previous = start(run_dir, resume), saved_at(refine_ckpt)
    wait_for(lambda: saved_at(refine_ckpt) > previous + 0.05, proc)  # this run's first save
    time.sleep(0.2)
    sent = time.time()
    err = killed(proc, signal.SIGINT)
    assert err.strip().splitlines()[-1] == f"stopped by Ctrl-C; continue with: python train.py {resume}"
    assert in_log(run_dir, "Ctrl-C: the run stops after the training step under way, saved there")()
    # saved at the step reached, not only at the last of the saves every 10 steps (a save after the
    # signal when the step reached is one of those)
    step = torch.load(refine_ckpt, weights_only=True)["global_step"]
    assert step % 10 != 0 or saved_at(refine_ckpt) > sent, (step, saved_at(refine_ckpt), sent)
    assert not (run_dir / "metrics.json").exists()

    run_train(run_dir, resume)
    assert (run_dir / "predictions.csv").read_text() == (uninterrupted / "predictions.csv").read_text()
    assert (run_dir / ".hydra" / "config.yaml").read_text() == (uninterrupted / ".hydra" / "config.yaml").read_text()
    # the mean losses logged: the same, the interrupted epochs' too (not only their second part)
    for tag in ["pretrain/recon", "refine/kl", "refine/recon"]:
        assert scalars(run_dir, tag) == pytest.approx(scalars(uninterrupted, tag), rel=1e-5), tag
    # the last segment's own seconds: it resumed past K-means (which the uninterrupted run timed)
    seconds = json.loads((run_dir / "metrics.json").read_text())["seconds"]
    assert json.loads((uninterrupted / "metrics.json").read_text())["seconds"]["kmeans"] > 0
    assert seconds["kmeans"] == 0 and min(seconds.values()) >= 0, seconds


def still_running(run_dir: Path) -> list[str]:
    """The command lines of processes still running in `run_dir`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # ended meanwhile
            continue
        if "train.py" in line and str(run_dir) in line:
            found.append(line)
    return found


def as_srun_starts(run_dir: Path, tmp_path: Path, port: int, *overrides: str) -> list[subprocess.Popen]:
    """The two processes of a DDP run as SLURM's srun starts them: each `python train.py` with its
    SLURM_* variables, in one process group, rank 0's process first in the list. `scontrol` is a
    script that notes its arguments in tmp_path/scontrol.log (Lightning calls `scontrol requeue JOB`
    on SLURM's pre-emption signal). srun starts them at once, in no set order: here rank 1 starts
    first and rank 0 once rank 1's Hydra has begun its job in the folder (train.log), the order in
    which rank 0 took rank 1's files for an earlier run's and refused the folder (CI, 2026-12-06).
    Rank 1 leads the process group: signal it with os.killpg(procs[-1].pid, ...)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242"}
    slurm |= {"SLURM_STEP_ID": "0", "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_NAME": "train", "MASTER_PORT": str(port)}
    slurm["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    second = start(run_dir, *overrides, env={**slurm, "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}, process_group=0)
    wait_for(lambda: (run_dir / "train.log").exists(), second, 120)
    time.sleep(1.0)  # Hydra saves the config right after it opens the log
    return [
        start(run_dir, *overrides, env={**slurm, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, process_group=second.pid),
        second,
    ]


def ended(procs: list[subprocess.Popen], timeout: float = 120) -> list[str]:
    """The stderr of each of `procs` once all have ended; all killed if they have not within `timeout` s
    (the last of `procs` leads their process group)."""
    try:
        return [proc.communicate(timeout=timeout)[1] for proc in procs]
    except subprocess.TimeoutExpired:
        os.killpg(procs[-1].pid, signal.SIGKILL)
        raise AssertionError(f"the processes did not stop within {timeout} s") from None


def test_sigterm_outside_the_training_steps_says_how_to_continue(pretrained_digits, tmp_path):
    """SIGTERM in the t-SNE and K-means initialisation (on_fit_start, which Lightning runs before it
    sets its signal handlers) ends the run at once, as SIGTERM's default does, now saying so on the
    console and in train.log with the command that continues it (until 2026-12-06 without a word)."""
    run = tmp_path / "run"
    proc = start(run, f"pretrained={pretrained_digits}", process_group=0)
    wait_for(in_log(run, "stage 2-3/4: K-means on a t-SNE map of the codes"), proc)
    time.sleep(0.3)  # into the t-SNE map (some 3 s)
    os.killpg(proc.pid, signal.SIGTERM)
    said = ended([proc])[0].strip().splitlines()[-1]
    assert (
        proc.returncode == -signal.SIGTERM
        and said == f"stopped by SIGTERM; continue with: python train.py resume={run}"
    )
    assert (run / "train.log").read_text().strip().endswith(said)
    assert not (run / "checkpoints" / "refine").exists()  # before any refinement step


def test_a_ddp_run_stopped_by_signals_resumes_to_the_uninterrupted_run(tmp_path):
    """Two processes (`trainer=ddp trainer.devices=2`), each signal sent to both, as SLURM and torchrun
    send it, each process at its own point of a step; each time the run resumes to the uninterrupted
    run's predictions. Until 2026-12-06 Lightning's handlers acted inside the signal handler, with
    collectives that met other collectives of the other process: the run hung (SIGTERM always here;
    SIGUSR1 one time in five).

    - Lightning's launcher, SIGTERM: both stop after the same step, saved there; the run says so
      once. `resume=RUN` continues: Lightning starts the second process by running the command line
      again with `hydra.run.dir="RUN"` added, quoted, and that process follows the first into the
      run's folder (it used to refuse it and end the job).
    - Started as srun starts them, SIGUSR1 (SLURM's pre-emption warning): Lightning's handler saves
      hpc_ckpt_1.ckpt and calls `scontrol requeue 4242`, once, after a step; then SIGKILL, and the
      run resumes from that checkpoint."""
    settings = ["pretrain.epochs=40", "refine.max_iters=20", "init.manifold=none", "baselines=[]"]
    settings += ["trainer=ddp", "trainer.devices=2"]
    uninterrupted = tmp_path / "uninterrupted"
    said = run_train(uninterrupted, *settings)
    predictions = (uninterrupted / "predictions.csv").read_text()
    # the run's lines once, from the first process (until 2026-12-06 the second printed them too)
    assert (said.stdout + said.stderr).count("stage 2-3/4: K-means on the codes") == 1, said.stdout[-3000:]

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "pretrain" / "last.ckpt"
    proc = start(run, *settings, "checkpoint.min_interval_s=0", process_group=0)
    wait_for(lambda: saved_at(ckpt) > 0, proc)  # the first epoch's end; 40 epochs take some 10 s
    time.sleep(1.0)
    sent = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    lines = ended([proc])[0].strip().splitlines()
    assert lines[-1] == f"stopped by SIGTERM; continue with: python train.py resume={run}", lines[-20:]
    assert sum(line.startswith("stopped by") for line in lines) == 1, lines
    assert in_log(run, f"SIGTERM: the run stops after at most {LastCheckpoint.DDP_EVERY} steps, saved there")()
    assert saved_at(ckpt) >= sent and not (run / "autoencoder.pt").exists()
    deadline = time.monotonic() + 30
    while still_running(run) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not still_running(run)
    proc = run_train(run, f"resume={run}", "trainer=ddp", "trainer.devices=2", warnings="default")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["resumed"] and metrics["refine_iterations"] == 20
    assert (run / "predictions.csv").read_text() == predictions
    # no warnings either (each pretraining epoch's loss warned that it was not synced)
    warned = [line for line in proc.stderr.splitlines() if re.match(r"\S+\.py:\d+: ", line)]
    assert not warned, warned

    run = tmp_path / "slurm"
    folder = run / "checkpoints" / "pretrain"
    # last.ckpt at the first epoch's end only: the requeue's checkpoint is the newest
    procs = as_srun_starts(run, tmp_path, free_port(), *settings, "checkpoint.min_interval_s=600")
    wait_for(lambda: saved_at(folder / "last.ckpt") > 0, procs[0])
    time.sleep(1.0)
    os.killpg(procs[-1].pid, signal.SIGUSR1)
    wait_for(lambda: (tmp_path / "scontrol.log").exists(), procs[0], 60)  # after the save
    os.killpg(procs[-1].pid, signal.SIGKILL)
    ended(procs)
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    hpc, last = (
        torch.load(folder / name, weights_only=True)["global_step"] for name in ("hpc_ckpt_1.ckpt", "last.ckpt")
    )
    assert hpc > last == 15, (hpc, last)  # 1,797 images, 15 steps an epoch of 64 a process
    procs = as_srun_starts(run, tmp_path, free_port(), f"resume={run}", "trainer=ddp", "trainer.devices=2")
    errors = ended(procs, 300)
    assert [proc.returncode for proc in procs] == [0, 0], errors[0][-3000:]
    assert json.loads((run / "metrics.json").read_text())["resumed"]
    assert (run / "predictions.csv").read_text() == predictions


class OnDiskAtEachSave(L.Callback):
    """At each checkpoint save: its step, and the steps of `tag` that the TensorBoard files on disk
    hold then (what a SIGKILL right after the save would leave)."""

    def __init__(self, tag: str):
        self.tag, self.seen = tag, []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        events = EventAccumulator(trainer.logger.log_dir)
        events.Reload()
        steps = [e.step for e in events.Scalars(self.tag)] if self.tag in events.Tags()["scalars"] else []
        self.seen.append((checkpoint["global_step"], steps))


def _two_process_trainer(out: str, strategy: Any, checkpoint: LastCheckpoint, steps: int) -> L.Trainer:
    """The Trainer of one of two DDP processes (gloo) refining for `steps` steps with `checkpoint`."""
    return L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        logger=False,
        callbacks=[checkpoint],
        default_root_dir=out,
        max_steps=steps,
        max_epochs=-1,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # ImageDataModule shards the batches itself
    )


def _ddp_collectives_worker(rank: int, port: int, out: str) -> None:
    """One of two processes of a DDP refinement (gloo) with LastCheckpoint: the steps at which its
    training steps broadcast and all-reduce, and whether Lightning's loop is as it was after the fit."""
    from tests.test_refine import refinement

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0")
    steps, trainer = {"broadcast": [], "all_reduce": []}, None
    for name in steps:  # in this process only
        original = getattr(torch.distributed, name)

        def noted(*args, _original=original, _name=name, **kwargs):
            if trainer is not None and trainer.training and trainer.global_step > 0:
                steps[_name].append(trainer.global_step)
            return _original(*args, **kwargs)

        setattr(torch.distributed, name, noted)
    data = load_digits()
    trainer = _two_process_trainer(out, "ddp", LastCheckpoint(), 100)
    trainer.fit(refinement(data, ConvAutoencoder(1, (8, 8)).state_dict()), ImageDataModule(data, 64, seed=0))
    restored = "_broadcast_sigterm_tensor" not in vars(trainer.fit_loop.epoch_loop)
    torch.save((steps, restored), f"{out}/collectives.{rank}")


def test_ddp_training_steps_agree_on_signals_every_ddp_every_steps_not_at_every_step(tmp_path):
    # Lightning's loop broadcasts at every DDP step whether its SIGTERM handler ran (99 broadcasts in
    # these 100 steps), and reading the answer waits for the GPU; LastCheckpoint handles SIGTERM in
    # the steps, and its processes agree on signals every DDP_EVERY steps (the refreshes of P, every
    # 30 steps, all-reduce their own sums)
    spawn(_ddp_collectives_worker, free_port(), str(tmp_path))
    for rank in range(2):
        steps, restored = torch.load(tmp_path / f"collectives.{rank}")
        assert steps["broadcast"] == []
        every = LastCheckpoint.DDP_EVERY
        assert {s for s in steps["all_reduce"] if s % 30} == set(range(every, 101, every)), steps["all_reduce"]
        assert restored


def _skewed_clock_worker(rank: int, port: int, out: str) -> None:
    """One of two DDP processes (gloo) whose clocks disagree: the second's runs 1,000 times fast, so
    by its own clock a checkpoint is due at every step, by the first's never after the first."""
    from datetime import timedelta
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy

    from deep_clustering import callbacks
    from tests.test_refine import refinement

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0")
    if rank == 1:
        callbacks.time = SimpleNamespace(monotonic=lambda: time.monotonic() * 1000)
    data = load_digits()
    strategy = DDPStrategy(timeout=timedelta(seconds=30))  # a hang fails the test rather than stalling it
    trainer = _two_process_trainer(out, strategy, LastCheckpoint(every_n_steps=1, min_interval_s=60), 20)
    trainer.fit(refinement(data, ConvAutoencoder(1, (8, 8)).state_dict()), ImageDataModule(data, 64, seed=0))
    torch.save(trainer.global_step, f"{out}/steps.{rank}")


def test_ddp_processes_whose_clocks_disagree_save_together(tmp_path):
    # a save is collective: until 2026-12-06 each process asked its own clock whether one was due, and
    # where they disagreed one saved while the other stepped on: the run hung (SIGTERM could not stop it)
    spawn(_skewed_clock_worker, free_port(), str(tmp_path))
    assert [torch.load(tmp_path / f"steps.{rank}") for rank in range(2)] == [20, 20]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 20


def test_each_epochs_loss_is_on_disk_before_its_checkpoint(tmp_path):
    """A run killed just after a checkpoint resumes from it and never logs again what came before it,
    so every epoch's mean loss must be written before the checkpoint of that epoch's end. (Lightning
    logs an epoch's self.log values after the epoch-end checkpoint: a SIGKILL between the two lost one
    point of pretrain/recon.)"""
    on_disk = OnDiskAtEachSave("pretrain/recon")
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        log_every_n_steps=10,  # as configs/trainer/default.yaml
        logger=TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=[LastCheckpoint(every_n_epochs=1), on_disk],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = AutoencoderModule(ConvAutoencoder(1, (8, 8)), partial(torch.optim.Adam, lr=1e-3))
    trainer.fit(module, ImageDataModule(load_digits(), 64, seed=0))  # 29 batches an epoch
    assert on_disk.seen == [(29, [28]), (58, [28, 57]), (87, [28, 57, 86])]


def test_nan_loss_stops_at_that_step_naming_the_stage(tmp_path):
    proc = run_train(tmp_path / "run", "pretrain.optimizer.lr=1e30", check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pretrain: the loss is") and "at step" in last, proc.stderr[-2000:]
    folder = tmp_path / "run" / "checkpoints" / "pretrain"  # the folder it names holds the checkpoint
    assert last.endswith(f"stays in {folder}" if any(folder.glob("*.ckpt")) else "no checkpoint was saved"), last
    for ckpt in (tmp_path / "run" / "checkpoints").rglob("*.ckpt"):  # whatever was saved is still good
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize(
    ("setup", "overrides", "message"),
    [
        ("nothing", [], "resume={run}: not a run folder"),
        ("finished", [], "resume={run}: that run already finished"),
        ("interrupted", ["seed=5"], "resume={run} continues with the run's own config"),
        # until 2026-12-06: "leave out hydra.run.dir=...", a setting never given, and a new sweep folder
        ("interrupted", ["-m"], "resume={run} continues one run: leave out -m"),
        ("sweep", [], "resume={run}: a sweep's folder; continue each of its unfinished jobs, resume={run}/0 and so on"),
    ],
)
def test_bad_resume_is_refused(pretrained_digits, tmp_path, setup, overrides, message):
    run = {"nothing": tmp_path / "nothing", "finished": pretrained_digits}.get(setup, tmp_path / "cut")
    config = run / ("0" if setup == "sweep" else "") / ".hydra" / "config.yaml"
    if setup in ("interrupted", "sweep"):
        config.parent.mkdir(parents=True)
        config.write_text((pretrained_digits / ".hydra" / "config.yaml").read_text())
    before = sorted(p.name for p in run.iterdir()) if run.exists() else None
    proc = run_train(None, f"resume={run}", *overrides, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: " + message.format(run=run)), proc.stderr[-2000:]
    assert (sorted(p.name for p in run.iterdir()) if run.exists() else None) == before  # nothing written


def test_a_run_resumed_after_its_last_step_counts_its_steps(pretrained_digits, tmp_path):
    # refinement ended (at its last step, or SIGTERM there) but the run did not finish: the resumed
    # fit has no step left and Lightning skips its loop; until 2026-12-06 metrics.json said 0 steps
    run = tmp_path / "run"
    shutil.copytree(pretrained_digits, run, ignore=shutil.ignore_patterns("metrics.json", "tensorboard"))
    run_train(run, f"resume={run}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed"] and metrics["refine_iterations"] == 1  # pretrained_digits: refine.max_iters=1
    # the resume's own record holds the config it ran with (until 2026-12-06 the defaults': max_iters 20000)
    [resumed] = [OmegaConf.load(f) for f in (run / ".hydra").glob("resumed-*/config.yaml")]
    assert resumed.resume == str(run)
    resumed.resume = None
    assert resumed == OmegaConf.load(run / ".hydra" / "config.yaml")


@pytest.mark.parametrize("damage", ["config", "checkpoint", "pretraining", "autoencoder"])
def test_a_damaged_run_is_named_in_one_line(pretrained_digits, tmp_path, damage):
    # until 2026-12-06 a cut-short checkpoint or config ended in a traceback that named neither file,
    # and the run's own autoencoder.pt was named as pretrained='s
    run = tmp_path / "run é 1"  # a space and an accent: Hydra's grammar takes it quoted
    shutil.copytree(pretrained_digits, run, ignore=shutil.ignore_patterns("metrics.json", "tensorboard"))
    damaged = run / {
        "config": ".hydra/config.yaml",
        "checkpoint": "checkpoints/refine/last.ckpt",
        "pretraining": "checkpoints/pretrain/last.ckpt",  # read beside autoencoder.pt (until 2026-12-06 a traceback)
    }.get(damage, "autoencoder.pt")
    damaged.write_bytes(damaged.read_bytes()[:100])
    message = {
        "config": f"error: resume={run}: {damaged} lacks ",
        "checkpoint": f"error: resume: {damaged} is damaged (not a whole checkpoint): delete it, and resume again",
        "pretraining": f"error: resume: {damaged} is damaged (not a whole checkpoint): delete it, and resume again",
        "autoencoder": f"error: resume: {damaged} is damaged (RuntimeError: ",
    }[damage]
    cmd = [sys.executable, str(ROOT / "train.py"), f"resume='{run}'"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert not list((run / ".hydra").glob("resumed-*"))  # the refused resume= left no config (until 2026-12-06 it did)


def no_locks(code: int, *args) -> None:
    """fcntl.flock on a file system without locks."""
    raise OSError(code, os.strerror(code))


def test_a_folder_in_use_is_refused_and_hints_quote_their_paths(tmp_path, monkeypatch):
    # a second process in a folder one holds (the same resume=, or the same hydra.run.dir before either
    # wrote, at once) is refused; until 2026-12-06 both ran and wrote over each other's files
    runs.hold(tmp_path)
    # a file system without locks (ENOLCK: Lustre mounted without flock) runs unguarded; it was
    # refused as "in use" until 2026-12-06
    with monkeypatch.context() as patched:
        patched.setattr(fcntl, "flock", partial(no_locks, errno.ENOLCK))
        runs.hold(tmp_path / "lustre")
    script = f"from pathlib import Path; from deep_clustering import runs; runs.hold(Path({str(tmp_path)!r}))"
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        == f"error: {tmp_path} is in use by another process of this trainer, started there at the same time"
    )
    # the "continue with" hint pastes back into a shell and Hydra's grammar, spaces and all
    assert runs.override("resume", "outputs/2026-12-06/10-00-00") == "resume=outputs/2026-12-06/10-00-00"
    assert runs.override("resume", "/tmp/runs é/run 2") == "\"resume='/tmp/runs é/run 2'\""


def test_resume_elsewhere_is_refused(pretrained_digits, tmp_path):
    run = tmp_path / "cut"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text((pretrained_digits / ".hydra" / "config.yaml").read_text())
    proc = run_train(tmp_path / "elsewhere", f"resume={run}", check=False)
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"error: resume={run} continues in its own folder: leave out hydra.run.dir={tmp_path / 'elsewhere'}"
    )
    assert not (run / "checkpoints").exists()
    assert not (tmp_path / "elsewhere").exists()  # refused before Hydra made the folder


def tree(folder: Path) -> dict[str, float]:
    """Every file under `folder`, with when it was last written."""
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("way", ["run", "quoted", "interpolated", "no_config", "sweep"])
def test_a_new_run_into_a_used_folder_is_refused(pretrained_digits, tmp_path, way):
    """A finished run's folder named as hydra.run.dir (also in quotes, as Hydra allows, or through an
    interpolation, as Hydra resolves it), or a sweep's job folder under hydra.sweep.dir, is refused
    before Hydra writes anything: the run would write over it and pick up its checkpoints."""
    used, config = pretrained_digits, pretrained_digits / ".hydra" / "config.yaml"
    if way == "sweep":
        used = tmp_path / "sweep"
        (used / "0" / ".hydra").mkdir(parents=True)
        (used / "0" / ".hydra" / "config.yaml").write_text(config.read_text())
        args = ["-m", f"hydra.sweep.dir={used}", "seed=1,2"]
        message = f"error: hydra.sweep.dir={used} already holds a run ({used / '0' / '.hydra' / 'config.yaml'})"
    elif way == "interpolated":  # until 2026-12-06 the text as typed was checked: this run took the folder over
        used = tmp_path / "seed_0"
        shutil.copytree(pretrained_digits, used)
        args = [f"hydra.run.dir={tmp_path}/seed_${{seed}}"]
        message = f"error: hydra.run.dir={used} already holds a run ({used / '.hydra' / 'config.yaml'})"
    elif way == "no_config":  # a run made with hydra.output_subdir=null: its checkpoints mark it
        used = tmp_path / "run"
        shutil.copytree(pretrained_digits, used, ignore=shutil.ignore_patterns(".hydra"))
        args = [f"hydra.run.dir={used}"]
        message = f"error: hydra.run.dir={used} already holds a run ({used / 'checkpoints'})"
    else:
        args = [f'hydra.run.dir="{used}"' if way == "quoted" else f"hydra.run.dir={used}"]
        message = f"error: hydra.run.dir={used} already holds a run ({config})"
    before = tree(used)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert tree(used) == before  # nothing written, nothing touched


def test_a_run_without_its_config_is_refused(tmp_path):
    # resume= needs the config in .hydra: hydra.output_subdir=null would make a run that cannot resume
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path / 'run'}", "hydra.output_subdir=null"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "error: hydra.output_subdir=null: a run keeps its config in .hydra, which resume= needs"
    )
    assert not (tmp_path / "run").exists()


def test_the_api_refuses_a_finished_runs_folder(pretrained_digits, digits):
    from deep_clustering.api import DeepClustering
    from deep_clustering.errors import InputError

    before = tree(pretrained_digits)
    with pytest.raises(InputError, match=f"run_dir={pretrained_digits} holds a finished run"):
        DeepClustering(run_dir=str(pretrained_digits)).fit(*digits)
    assert tree(pretrained_digits) == before


def test_a_resumed_config_is_checked_as_a_fresh_one(tmp_path):
    # the folder a refused run left (its config saved, nothing trained): resuming it is refused alike
    run = tmp_path / "run"
    message = "error: refine.tol='abc': expected float, got str"
    assert run_train(run, "refine.tol=abc", check=False).stderr.strip().splitlines()[-1] == message
    proc = run_train(run, f"resume={run}", check=False)
    assert proc.stderr.strip().splitlines()[-1] == message
    assert not (run / "checkpoints").exists()


def test_resume_changes_only_the_trainer_values_it_names(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from deep_clustering import runs

    runs.register_resolvers()
    run = tmp_path / "run"
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        saved = compose("train", overrides=["trainer.precision=bf16-mixed", "+trainer.gradient_clip_val=1.0"])
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(saved, run / ".hydra" / "config.yaml")
        args = [f"resume={run}", "trainer.enable_progress_bar=false", "~trainer.gradient_clip_val"]
        cfg = compose("train", overrides=args[:2])
        resumed, choices = runs.resumed_config(cfg, args, run, {"trainer": "default"})
        assert resumed.trainer.precision == "bf16-mixed"  # the run's own, kept
        assert resumed.trainer.enable_progress_bar is False and "gradient_clip_val" not in resumed.trainer
        assert choices == {"trainer": "default"}  # no hydra.yaml here: this command's choices
        cfg = compose("train", overrides=[f"resume={run}", "trainer=ddp", "trainer.devices=3"])
        resumed, choices = runs.resumed_config(
            cfg, [f"resume={run}", "trainer=ddp", "trainer.devices=3"], run, {"trainer": "ddp"}
        )
        assert resumed.trainer.strategy == "ddp" and resumed.trainer.devices == 3 and choices["trainer"] == "ddp"
