"""Lightning plugins and callbacks that keep a run safe to interrupt."""

import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from deep_clustering.errors import TrainingError

log = logging.getLogger("deep_clustering")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, then renames it over the old one: a run killed
    while saving leaves the previous checkpoint whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class FiniteLoss(L.Callback):
    """Stops at the first NaN or infinite loss, naming stage and step; no checkpoint ever holds its weights.

    On the CPU each loss is checked before its backward pass, so it never reaches the weights. On a
    GPU a check waits for the GPU to catch up, which would stall every step: there the first bad
    step is noted on the device and read every `every` steps, at each epoch's end and before every
    checkpoint (so a few bad updates may reach the weights in memory, never a checkpoint).
    """

    EVERY = 50  # on a GPU, steps between two reads of the bad-loss flag

    def __init__(self, stage: str, every: int = EVERY) -> None:
        self.stage, self.every = stage, every
        self.first_bad: torch.Tensor | None = None  # on the GPU: (step, loss) of the first bad loss; step -1 if none

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if loss.device.type == "cpu" and not torch.isfinite(loss):
            self._stop(trainer, float(loss.detach()), trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        step = trainer.global_step - 1  # the step just taken
        if loss.device.type == "cpu":
            if not pl_module.automatic_optimization and not torch.isfinite(loss):  # no backward hook: check now
                self._stop(trainer, float(loss.detach()), step)
            return
        loss = loss.detach().float()
        if self.first_bad is None:
            self.first_bad = torch.tensor([-1.0, 0.0], device=loss.device)
        new = (self.first_bad[0] < 0) & ~torch.isfinite(loss)
        step_and_loss = torch.stack([torch.full_like(loss, step), loss])  # full_like: a fill, no copy from the host
        self.first_bad = torch.where(new, step_and_loss, self.first_bad)
        if trainer.global_step % self.every == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Stop if a bad loss was noted on the GPU (waits for the GPU)."""
        if self.first_bad is not None:
            step, loss = self.first_bad.tolist()
            if step >= 0:
                self._stop(trainer, loss, int(step))

    def _stop(self, trainer: L.Trainer, loss: float, step: int) -> None:
        folder = Path(trainer.default_root_dir)
        saved = any(folder.glob("*.ckpt"))
        kept = f"its last good checkpoint stays in {folder}" if saved else "no checkpoint was saved"
        raise TrainingError(f"{self.stage}: the loss is {loss} at step {step}; the run stops here and {kept}")


def _no_sigterm_broadcast() -> None:
    """Stands in for Lightning's per-step SIGTERM broadcast under DDP while LastCheckpoint handles SIGTERM."""


class LastCheckpoint(Checkpoint):
    """Keeps one checkpoint, last.ckpt in the trainer's default_root_dir: every `every_n_steps`
    steps or `every_n_epochs` epochs, but at most once in `min_interval_s` seconds after the first
    (a save costs a write of the weights and the optimizer state); always at the end of training,
    and on SIGTERM (a cancelled or pre-empted job) or Ctrl-C (SIGINT) at the step reached.
    `resume=RUN_DIR` continues from it. A Checkpoint callback, so Lightning calls it after the other
    callbacks and, at an epoch's end, after the LightningModule's on_train_epoch_end, as it does
    ModelCheckpoint: the saved epoch is complete.

    In the training steps SIGTERM and SIGINT only take note; at the end of the step under way the
    run saves there and stops (SIGTERMException, KeyboardInterrupt); a second Ctrl-C stops at once.
    So does SIGUSR1, SLURM's warning before a pre-emption (`sbatch --signal`), where a handler is
    set for it (Lightning's, on SLURM: it saves hpc_ckpt_N.ckpt and requeues the job): that handler
    runs at the end of the step under way, in every process. Under DDP the processes agree every
    DDP_EVERY steps whether any of them got a signal (one all-reduce of two numbers), so all act
    after the same step, whichever got it and whenever; Lightning's own broadcast of its SIGTERM flag
    at every step is off meanwhile. (Lightning's handlers act mid-step, inside
    the signal handler: under DDP its SIGTERM handler broadcasts there and its SIGUSR1 handler saves
    a checkpoint, whose collectives met other collectives of the other process: the run hung. Lightning
    issue #21406.) Before the first step (K-means) Lightning's handling stays: the run stops at once
    and resumes from its last checkpoint. Whatever ends the fit, each signal's handler is the one it
    had before."""

    STOPS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}  # signals that stop the run, as the log names them
    REQUEUE = signal.SIGUSR1  # Lightning's SLURM requeue signal (SLURMEnvironment.requeue_signal's default)
    # under DDP, steps between two checks for a signal; reading the check's result waits for the GPU,
    # so on the steps where FiniteLoss waits for it anyway (an all-reduce took 0.4 ms with gloo on 2 cores)
    DDP_EVERY = FiniteLoss.EVERY

    def __init__(self, every_n_steps: int = 0, every_n_epochs: int = 0, min_interval_s: float = 0.0) -> None:
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.min_interval_s = min_interval_s
        self.saved_step = -1
        self.saved_at = -math.inf
        self.stop = 0  # the signal that came in a training step: stop after the step under way
        self.requeue = False  # SIGUSR1 came in a training step: run its handler after the step under way
        self._handlers: dict[int, Any] = {}  # each signal's handler before this stage's, while this stage's is set
        self._when = ""  # how soon a signal is acted on, for its log line
        self._loop: Any = None  # Lightning's training epoch loop, while its per-step SIGTERM broadcast is off

    def save(self, trainer: L.Trainer) -> None:
        if trainer.global_step != self.saved_step:
            for logger in trainer.loggers:  # what was logged before the checkpoint is on disk when it is
                logger.save()
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "last.ckpt", weights_only=False)
            self.saved_step, self.saved_at = trainer.global_step, time.monotonic()

    def _due(self, trainer: L.Trainer) -> bool:
        due = time.monotonic() - self.saved_at >= self.min_interval_s
        if trainer.world_size > 1:  # a save is collective: one decision, the first process's clock (as
            # Lightning's ModelCheckpoint does); until 2026-12-06 each process's, and where they differed
            # one saved while the other stepped on, and the run hung
            due = trainer.strategy.broadcast(due, src=0)
        return due

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # here, after Lightning set its handlers and took note of those it restores when the fit ends
        # (however it ends); before it (K-means in on_fit_start) a signal stops the run at once
        self.stop, self.requeue = 0, False
        self._when = "the training step under way" if trainer.world_size == 1 else f"at most {self.DDP_EVERY} steps"
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in [*self.STOPS, self.REQUEUE]:
            before = signal.getsignal(signum)
            # an ignored signal (SIGINT in a job started in the background) stays so; SIGUSR1 only
            # where a handler is set for it (its default ends the process)
            if before not in (signal.SIG_IGN, None) and (signum != self.REQUEUE or before != signal.SIG_DFL):
                self._handlers[signum] = before
                signal.signal(signum, self._on_signal)
        if trainer.world_size > 1 and signal.SIGTERM in self._handlers:
            # Lightning's loop broadcasts at every step whether its SIGTERM handler ran and reads the
            # answer, which waits for the GPU at every step; that handler is this one now, and
            # _act_on_signals agrees on signals every DDP_EVERY steps
            self._loop = trainer.fit_loop.epoch_loop
            self._loop._broadcast_sigterm_tensor = _no_sigterm_broadcast

    def _restore_handlers(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}
        if self._loop is not None:
            vars(self._loop).pop("_broadcast_sigterm_tensor", None)
            self._loop = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == self.REQUEUE:
            self.requeue = True
            log.warning("SIGUSR1: its handler (SLURM: save, requeue) runs after %s", self._when)
        elif signum == signal.SIGINT and self.stop == signal.SIGINT:
            raise KeyboardInterrupt
        elif not self.stop:
            self.stop = signum
            again = "; Ctrl-C again stops at once" if signum == signal.SIGINT else ""
            log.warning("%s: the run stops after %s, saved there%s", self.STOPS[signum], self._when, again)

    def _act_on_signals(self, trainer: L.Trainer, last: bool = False) -> None:
        stop, requeue = self.stop, int(self.requeue)
        if trainer.world_size > 1:  # every process acts after the same step, whichever got the signal
            if trainer.global_step % self.DDP_EVERY and not last:
                return
            flags = torch.tensor([stop, requeue], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            stop, requeue = flags.tolist()
        if requeue and self.REQUEUE in self._handlers:
            self.requeue = False
            self._handlers[self.REQUEUE](self.REQUEUE, None)
        if stop:
            self.save(trainer)
            raise SIGTERMException if stop == signal.SIGTERM else KeyboardInterrupt

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._act_on_signals(trainer)
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and self._due(trainer):
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0 and self._due(trainer):
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)
        self._act_on_signals(trainer, last=True)  # a signal in the last step must not start the next stage
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        # Lightning's own SIGTERM (one before the first step): saved where it stopped, in one process;
        # under DDP the other processes need not be at a save (its collectives), so none
        if isinstance(exception, SIGTERMException) and trainer.world_size == 1:
            self.save(trainer)


class LearningRate(L.Callback):
    """The optimizer's learning rate as `STAGE/lr` in TensorBoard, at the start of each epoch: one curve
    per stage, each counting its own steps from 0 (Lightning's LearningRateMonitor put both stages'
    under one `lr-Adam`, whose steps went back to 0 where refinement began, and logged some steps
    twice, until 2026-12-06)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        trainer.logger.log_metrics({f"{self.stage}/lr": float(lr)}, step=trainer.global_step)
