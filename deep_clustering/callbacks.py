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

    def __init__(self, stage: str, every: int = 50) -> None:
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


class LastCheckpoint(Checkpoint):
    """Keeps one checkpoint, last.ckpt in the trainer's default_root_dir: every `every_n_steps`
    steps or `every_n_epochs` epochs, but at most once in `min_interval_s` seconds after the first
    (a save costs a write of the weights and the optimizer state); always at the end of training,
    and on SIGTERM (a pre-empted or cancelled job) at the step reached. `resume=RUN_DIR` continues
    from it. A Checkpoint callback, so Lightning calls it after the other callbacks and, at an
    epoch's end, after the LightningModule's on_train_epoch_end, as it does ModelCheckpoint: the
    saved epoch is complete.

    Ctrl-C (SIGINT) in a single-process run's training steps stops as SIGTERM does: after the step
    under way, saved there, then a KeyboardInterrupt (Lightning's own handling would stop in the
    middle of the step, with nothing saved since the last checkpoint); a second Ctrl-C stops at once.
    Before the first step (K-means) and under DDP, where every process gets the Ctrl-C at its own
    point of a step, Lightning's handling stays: the run stops at once and resumes from its last
    checkpoint. Whatever ends the fit, SIGINT's handler is the one it had before."""

    def __init__(self, every_n_steps: int = 0, every_n_epochs: int = 0, min_interval_s: float = 0.0) -> None:
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.min_interval_s = min_interval_s
        self.saved_step = -1
        self.saved_at = -math.inf
        self.interrupted = False  # a Ctrl-C came: stop after the step under way
        self._sigint: Any = None  # SIGINT's handler before this stage's, while this stage's is set

    def save(self, trainer: L.Trainer) -> None:
        if trainer.global_step != self.saved_step:
            for logger in trainer.loggers:  # what was logged before the checkpoint is on disk when it is
                logger.save()
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "last.ckpt", weights_only=False)
            self.saved_step, self.saved_at = trainer.global_step, time.monotonic()

    def _due(self) -> bool:
        return time.monotonic() - self.saved_at >= self.min_interval_s

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # here, after Lightning took note of the signal handlers it restores when the fit ends (however
        # it ends); before it (K-means in on_fit_start) a Ctrl-C stops at once, as it always did
        self.interrupted = False
        before = signal.getsignal(signal.SIGINT)
        ignored = before in (signal.SIG_IGN, None)  # as in a job started in the background: stays ignored
        if trainer.world_size == 1 and not ignored and threading.current_thread() is threading.main_thread():
            self._sigint = before
            signal.signal(signal.SIGINT, self._on_sigint)

    def _restore_sigint(self) -> None:
        if self._sigint is not None:
            signal.signal(signal.SIGINT, self._sigint)
            self._sigint = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        log.warning(
            "Ctrl-C: the run stops at the end of the training step under way, saved there; Ctrl-C again stops at once"
        )

    def _stop_if_interrupted(self, trainer: L.Trainer) -> None:
        if self.interrupted:
            self.save(trainer)
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._stop_if_interrupted(trainer)
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and self._due():
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0 and self._due():
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)
        self._restore_sigint()
        self._stop_if_interrupted(trainer)  # a Ctrl-C in the last step must not start the next stage

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if isinstance(exception, SIGTERMException):
            self.save(trainer)
