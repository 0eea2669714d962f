"""The run folder: a new one for every run, never one an earlier run used, and what an interrupted
run left in it to resume from."""

import logging
import os
import re
import signal
import sys
import threading
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from deep_clustering.errors import InputError

CONFIG = ".hydra/config.yaml"  # the composed config Hydra saves in every run folder
FINISHED = "metrics.json"  # written last: its presence means the run completed
RUN_FILES = (CONFIG, "checkpoints", FINISHED, "predictions.csv")  # any of them: a folder an earlier run used


def stopped_by_ctrl_c(e: BaseException) -> bool:
    """Whether `e` ends a run that Ctrl-C stopped: a KeyboardInterrupt outside training, or the
    sys.exit(1) that Lightning raises while handling one inside it."""
    return isinstance(e, KeyboardInterrupt) or (
        isinstance(e, SystemExit) and isinstance(e.__context__, KeyboardInterrupt)
    )


def register_resolvers() -> None:
    """The resolvers configs/*.yaml use for Hydra's folders."""
    OmegaConf.register_new_resolver("dc.run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("dc.config_subdir", config_subdir, replace=True)


@cache  # resolved once per process: the folder must not move once Hydra made it
def run_dir(base: str, resume: str | None = None) -> str:
    """Hydra's run folder (resolver `dc.run_dir`): `resume` if set (`check_resume` vetted it before
    Hydra started), else `new_folder(base)`."""
    return str(Path(resume).expanduser()) if resume else new_folder(base)


def new_folder(base: str) -> str:
    """A new folder under `base` that no earlier run used: DATE/TIME, then -1, -2, ... if taken. The
    processes of one SLURM step or torchrun job share one (slurm-JOB.STEP, torchrun-ID), the same
    again when the job is requeued."""
    if "SLURM_JOB_ID" in os.environ and "SLURM_STEP_ID" in os.environ:
        return f"{base}/slurm-{os.environ['SLURM_JOB_ID']}.{os.environ['SLURM_STEP_ID']}"
    if os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"{base}/torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    stem = f"{base}/{datetime.now():%Y-%m-%d/%H-%M-%S}"
    if any(a in ("--cfg", "-c") for a in sys.argv):  # Hydra prints the config (--cfg all --resolve): no run, no folder
        return stem
    path, n = stem, 0
    while True:
        try:
            os.makedirs(path)  # fails if taken, also by a run that started in the same second
            return path
        except FileExistsError:
            n += 1
            path = f"{stem}-{n}"


@cache
def config_subdir(resume: str | None = None) -> str | None:
    """Where Hydra saves this run's config (resolver `dc.config_subdir`): .hydra, or for a resumed
    run a folder of its own inside it, so the original config stays as it was. Nowhere for a rank
    other than the first that SLURM or torchrun started beside it: the first saves the run's config,
    and the config another rank wrote first would mark the folder as an earlier run's to the first."""
    if started_for_another_rank():
        return None
    return f".hydra/resumed-{datetime.now():%Y-%m-%d_%H-%M-%S}" if resume else ".hydra"


def _value(args: list[str], key: str) -> str | None:
    """The last `key=VALUE` of the command line, without the quotes Hydra's grammar allows around it
    (Lightning's DDP launcher passes `hydra.run.dir="DIR"`); None if not given."""
    given = [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")]
    if not given:
        return None
    value = given[-1]
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value


def _resume(args: list[str]) -> str | None:
    """The folder `resume=` names on the command line; None where it is not given, empty or null."""
    value = _value(args, "resume")
    return None if value in (None, "", "null") else value


def started_for_another_rank() -> bool:
    """Whether a launcher started this process for a rank other than the first: Lightning's DDP (which
    re-runs the command line with LOCAL_RANK set), torchrun (RANK) or SLURM (SLURM_PROCID). The
    first process vets the folders; the others follow it into the folder it made or resumed."""
    return any(os.environ.get(name, "0") != "0" for name in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))


def check_resume(args: list[str]) -> None:
    """Vet `resume=RUN_DIR` on the command line before Hydra creates or writes anything: the folder
    holds an unfinished run, and nothing but the trainer group is overridden beside it."""
    resume = _resume(args)
    if resume is None or started_for_another_rank():
        return
    folder = Path(resume).expanduser()
    if any(a in ("-m", "--multirun") for a in args):
        raise InputError(f"resume={folder} continues one run: leave out -m (a sweep's jobs continue one by one)")
    if not (folder / CONFIG).is_file():
        jobs = sorted(p.parent.parent.name for p in folder.glob(f"*/{CONFIG}"))
        if jobs:
            raise InputError(
                f"resume={folder}: a sweep's folder; continue each of its unfinished jobs, "
                f"{override('resume', folder / jobs[0])} and so on (jobs: {', '.join(jobs)})"
            )
        raise InputError(f"resume={folder}: not a run folder (it has no {CONFIG})")
    if (folder / FINISHED).is_file():
        raise InputError(f"resume={folder}: that run already finished ({folder / FINISHED} exists)")
    changed = [a for a in args if "=" in a and not a.lstrip("+~").startswith(("resume=", "hydra.", "trainer"))]
    if changed:
        raise InputError(
            f"resume={folder} continues with the run's own config ({folder / CONFIG}); leave out: {' '.join(changed)}"
        )
    elsewhere = _value(args, "hydra.run.dir")
    if elsewhere is not None and Path(elsewhere).resolve() != folder.resolve():
        raise InputError(f"resume={folder} continues in its own folder: leave out hydra.run.dir={elsewhere}")


def override(key: str, value: object) -> str:
    """`key=value` as a shell and Hydra's override grammar read it back: quoted where the value holds
    anything but letters, digits and _ . / ~ : @ + - (spaces, for one)."""
    text = str(value)
    return f"{key}={text}" if re.fullmatch(r"[A-Za-z0-9_./~:@+-]+", text) else f"\"{key}='{text}'\""


def earlier_run(folder: Path) -> Path | None:
    """What marks `folder` as an earlier run's (a training run's or a predict's), if anything does."""
    return next((folder / f for f in RUN_FILES if (folder / f).exists()), None)


class FreshFolder(Callback):
    """Hydra callback (`hydra.callbacks` in configs/train.yaml and predict.yaml): refuses, before Hydra
    writes anything, a `hydra.run.dir` (under -m: a `hydra.sweep.dir` one of whose job folders) that
    already holds a run, as Hydra resolves it (`${seed}`, `${now:%H-%M}` and the like included): the
    new run would write over that run's config and outputs, and pick up its checkpoints. An
    interrupted run continues with `resume=` (vetted by `check_resume`), the one way back into a used
    folder; the project's own folders (`dc.run_dir`) are new, or the shared folder of a SLURM or
    torchrun job, which a requeued job continues. Also refuses `hydra.output_subdir=null` for a
    training run, whose config `resume=` needs, and (`reads`: data.path) an output folder inside the
    image folder the run reads."""

    def __init__(self, reads: str | None = None) -> None:
        self.reads = reads  # data.path, which the output may not be inside

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.reads:  # not into the image folder the run reads
            self._outside(self.reads, config, "run")
        self._check(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # a swept data.path=a,b is not in the sweep's config (??? there): each of its values
        given = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        swept = [
            v for o in given if o.key_or_group == "data.path" and o.is_choice_sweep() for v in o.sweep_string_iterator()
        ]
        for folder in [self.reads] if self.reads else swept:
            self._outside(folder, config, "sweep")
        self._check(config, "sweep")

    @staticmethod
    def _check(config: DictConfig, mode: str) -> None:
        if started_for_another_rank():
            return
        if config.get("resume"):
            hold(Path(config.resume).expanduser())
            return
        if "resume" in config and config.hydra.output_subdir is None:
            sys.exit("error: hydra.output_subdir=null: a run keeps its config in .hydra, which resume= needs")
        if str(OmegaConf.to_container(config.hydra[mode], resolve=False)["dir"]).startswith("${dc.run_dir:"):
            return
        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the folder's name
        folder = Path(config.hydra[mode].dir)
        used = [earlier_run(folder)] if mode == "run" else [earlier_run(job) for job in sorted(folder.glob("*/"))]
        used = [f for f in used if f is not None]
        if used:
            sys.exit(
                f"error: hydra.{mode}.dir={folder} already holds a run ({used[0]}): a run never writes over "
                f"another's outputs; choose a new folder"
                + (", or continue an interrupted run with resume=FOLDER" if "resume" in config else "")
            )
        hold(folder)

    @staticmethod
    def _outside(reads: str, config: DictConfig, mode: str) -> None:
        """Refuse a run whose output folder is inside the image folder it reads, `reads` (compared
        resolved): it wrote its files into the user's folder, and the next run there read them as
        images (a training run its sprites, a predict the first one's copies and contact sheets; until
        2026-12-06, and through a linked folder or `..` until later that day)."""
        source = Path(reads).expanduser().resolve()
        if not source.is_dir() or started_for_another_rank():
            return
        HydraConfig.instance().set_config(config)
        out = Path(config.hydra[mode].dir).resolve()  # a new folder (dc.run_dir) is made as it resolves
        if out.is_relative_to(source):
            for empty in (out, *out.parents):  # the new folder, made just now, goes again
                if empty == source or not empty.is_dir() or any(empty.iterdir()):
                    break
                empty.rmdir()
            sys.exit(
                f"error: hydra.{mode}.dir={out} is inside data.path={source}: the run would write into the "
                f"image folder it reads; run it from another folder, or give hydra.{mode}.dir=FOLDER outside it"
            )


HELD = []  # the lock files this process holds, open until it ends


def hold(folder: Path) -> None:
    """An exclusive lock on folder/.lock for as long as this process runs (the OS releases it when the
    process ends, however it ends): a second process started in the same folder at the same time (the
    same resume=, or the same hydra.run.dir before either wrote) is refused rather than writing over
    the first's files."""
    try:
        import fcntl
    except ImportError:  # not on Windows
        return
    folder.mkdir(parents=True, exist_ok=True)
    file = open(folder / ".lock", "w")  # held open until the process ends
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        sys.exit(f"error: {folder} is in use by another process of this trainer, started there at the same time")
    except OSError:  # a file system without locks (Lustre mounted without flock, some NFS): no guard
        file.close()
        return
    HELD.append(file)


def resumed_config(cfg: DictConfig, overrides: list[str], run_dir: Path, choices: dict) -> tuple[DictConfig, dict]:
    """The interrupted run's own config and config-group choices (for `check_config`, as for a fresh
    run). Only the trainer may change (another machine): `trainer=NAME` takes that group as a fresh
    run would, `trainer.KEY=VALUE` changes that one value of the run's own trainer settings.
    `choices`: this command's group choices."""
    folder = Path(cfg.resume).expanduser()
    if folder.resolve() != run_dir.resolve():
        raise InputError(f"resume={folder} continues in its own folder: leave out hydra.run.dir={run_dir}")
    try:
        saved = OmegaConf.load(folder / CONFIG)
    except Exception as e:
        raise InputError(f"resume={folder}: {folder / CONFIG} cannot be read ({type(e).__name__})") from None
    missing = [str(k) for k in cfg if not isinstance(saved, DictConfig) or k not in saved]
    if missing:  # cut short or edited: the groups and keys a run's config holds
        raise InputError(
            f"resume={folder}: {folder / CONFIG} lacks {', '.join(missing)}: damaged, or not a run's config"
        )
    hydra_file = folder / ".hydra" / "hydra.yaml"
    saved_choices = dict(OmegaConf.load(hydra_file).hydra.runtime.choices) if hydra_file.is_file() else dict(choices)
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key == "trainer":
            saved.trainer, saved_choices["trainer"] = cfg.trainer, choices["trainer"]
        elif key.startswith("trainer.") and override.startswith("~"):
            parent, _, name = key.rpartition(".")
            OmegaConf.select(saved, parent).pop(name, None)
        elif key.startswith("trainer."):
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    saved.resume = cfg.resume
    return saved, saved_choices


def latest_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint a stage left: its periodic last.ckpt or the hpc_ckpt_N.ckpt Lightning
    writes on SLURM's pre-emption signal."""
    found = [p for p in folder.glob("*.ckpt") if p.name == "last.ckpt" or p.name.startswith("hpc_ckpt_")]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def trained_checkpoint(path: str | Path, given: str | None = None) -> Path:
    """The refinement checkpoint of `checkpoint=` / `DeepClustering.load`: a finished run's folder, or
    the checkpoint file itself (an unfinished run's model as last saved). `given`: how the user gave
    `path`, for the errors (`checkpoint=PATH` unless said)."""
    given = given or f"checkpoint={path}"
    file = Path(path).expanduser()
    if not file.exists():
        raise InputError(f"{given}: no such file or folder")
    if file.is_dir():
        model = file / "checkpoints" / "refine" / "last.ckpt"
        # a training run's (a predict's folder, or a run refused before pretraining, has its config alone)
        started = model.is_file() or (file / "checkpoints").is_dir() or (file / "autoencoder.pt").is_file()
        if not (file / FINISHED).is_file() and started:
            again = (  # a command-line run has its Hydra config; a DeepClustering.fit's has not
                f"python train.py {override('resume', path)}"
                if (file / CONFIG).is_file()
                else f"DeepClustering(..., run_dir={str(path)!r}).fit(X) on the same X"
            )
            # stopped before refinement saved a model (in pretraining): no model to offer (until
            # 2026-12-06 "neither a finished run's folder nor a refinement checkpoint")
            raise InputError(
                f"{given}: that run has not finished (no {FINISHED}): continue it with {again}"
                + (
                    ", or give its checkpoints/refine/last.ckpt for the model as last saved"
                    if model.is_file()
                    else "; it stopped before refinement saved a model"
                )
            )
        if (file / FINISHED).is_file() and not model.is_file():
            raise InputError(f"{given}: a finished run's folder without its model ({model} is missing)")
        file = model
    if not file.is_file():
        raise InputError(f"{given}: neither a finished run's folder nor a refinement checkpoint")
    return file


def log_to_file(
    log: logging.Logger, message: str, level: int = logging.ERROR, error: BaseException | None = None
) -> None:
    """Log to the run's log file only (train.log, predict.log) what the command prints once on the
    console itself (an error as it exits, the final scores); with `error`, its traceback too."""
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    record = log.makeRecord(log.name, level, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def stopped(by: str, run_dir: Path) -> str:
    """The line a run stopped by a signal ends with: what stopped it, and the command that continues it."""
    return f"stopped by {by}; continue with: python train.py {override('resume', run_dir)}"


class StoppedBySigterm:
    """SIGTERM's handler outside Lightning's training loop (the data, the embedding pass and the
    baselines, the K-means or t-SNE initialisation in on_fit_start, which comes before Lightning sets
    its handlers, the evaluation), where a cancelled or pre-empted job ended without a word (until
    2026-12-06): the run says, on the console and in train.log, that SIGTERM stopped it and how to
    continue it, then ends as SIGTERM's default does, at once, unwinding nothing (under DDP no
    process waits in a collective for one that ended). Inside the loop Lightning's handler, which
    calls this one too, and then LastCheckpoint's stop the run after a step, saved there."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def __call__(self, signum: int, frame: Any) -> None:
        if signal.getsignal(signal.SIGTERM) is not self:  # called by Lightning's handler: it took note
            return
        message = stopped("SIGTERM", self.run_dir)
        log_to_file(logging.getLogger("deep_clustering"), message, logging.WARNING)
        print(message, file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def say_when_stopped(run_dir: Path) -> None:
    """SIGTERM, where its handler is the default one (or this run's for an earlier job of a sweep),
    ends the run in `run_dir` saying so (StoppedBySigterm); the first process of a DDP run says it."""
    if started_for_another_rank() or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is signal.SIG_DFL or isinstance(current, StoppedBySigterm):
        signal.signal(signal.SIGTERM, StoppedBySigterm(run_dir))


def log_any_file_name() -> None:
    """The run's log file (train.log, predict.log) writes a file name that is not UTF-8 as the console
    does (\\udce9), where Python's strict encoding dropped the line, even the run's last error, with
    '--- Logging error ---' (until 2026-12-06). Set here rather than in the configs' hydra.job_logging,
    which would give Hydra's other logging options (disabled, stdout) a file handler of one key."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None:
            handler.stream.reconfigure(errors="backslashreplace")


def back_to_launch_dir() -> None:
    """Paths on the command line (data.path, resume=, pretrained=, checkpoint=) are relative to where
    the command ran, as Hydra's to_absolute_path reads them, whatever `hydra.job.chdir` says: where
    chdir=true moved Hydra into the run folder, move back (the run writes into its folder by absolute
    paths). Until 2026-12-06 chdir=true broke every relative path."""
    os.chdir(HydraConfig.get().runtime.cwd)
