"""Deep clustering, end to end: pretrain -> K-means -> DEC/IDEC refinement -> evaluate -> export.

Usage:
    python train.py                                     # the default job: scikit-learn's digits, CPU
    python train.py data=npz data.path=usps.npz seed=3  # any config value is a Hydra override
    python train.py resume=outputs/2026-11-27/10-00-00  # continue an interrupted run in its folder
"""

import time

START = time.perf_counter()

import gc
import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deep_clustering import runs
from deep_clustering.config import check_config, reference_config
from deep_clustering.errors import InputError, TrainingError

log = logging.getLogger("deep_clustering")
runs.register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    global START
    started = START if START is not None else time.perf_counter()
    START = None  # each later job of a multirun starts its clock when it starts
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    runs.back_to_launch_dir()
    runs.log_any_file_name()
    runs.say_when_stopped(run_dir)
    if runs.started_for_another_rank():  # the first process says what the run does; the others, errors only
        log.setLevel(logging.ERROR)
    try:
        choices = dict(HydraConfig.get().runtime.choices)
        if cfg.resume:
            cfg, choices = runs.resumed_config(cfg, list(HydraConfig.get().overrides.task), run_dir, choices)
            if HydraConfig.get().output_subdir:  # the config it resumes with, where Hydra saved the defaults'
                OmegaConf.save(cfg, run_dir / HydraConfig.get().output_subdir / "config.yaml")  # (until 2026-12-06)
            log.info("resuming the run in %s", run_dir)
        check_config(cfg, reference_config(choices, HydraConfig.get().job.config_name))
        # torch and Lightning (about 9 s to import on 2 cores) only now: a mistyped key, a refused
        # resume= or a bad config value answers in seconds
        # Their some 750,000 objects live as long as the process: no garbage collection while they
        # are made (the import took 8.3 s with it on, 6.9 s off), then out of the collector's sight (gc.freeze), so
        # that its full passes in training and its pass at exit (about 1.4 s) skip them. The import
        # leaves some 13,000 objects of garbage in cycles, which stay. Once a process (a multirun's
        # later jobs import nothing, and must not freeze what the earlier jobs left).
        first = "deep_clustering.pipeline" not in sys.modules
        if first:
            gc.disable()
        from deep_clustering import pipeline

        if first:
            gc.freeze()
            gc.enable()
        # the `lightning` package prints its lines through a console handler of its own, and Hydra's
        # handlers print them too: each twice on the console. Hydra's keep them, in train.log as well
        logging.getLogger("lightning").handlers.clear()

        result = pipeline.train(cfg, instantiate(cfg.data, _convert_="all"), run_dir, started)
    except Exception as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) else e
        if isinstance(cause, (InputError, TrainingError, OmegaConfBaseException)):
            message = f"error: {str(cause).splitlines()[0]}"
            if HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep's other jobs run; Hydra says it at the end
                log.error(message)
                raise CompactHydraException(message) from None
            runs.log_to_file(log, message)  # train.log keeps it; the console gets it once, below
            subdir = HydraConfig.get().output_subdir or ""
            if isinstance(cause, InputError) and subdir.startswith(".hydra/resumed-"):
                shutil.rmtree(
                    run_dir / subdir
                )  # a refused resume= leaves no config of its own (it did until 2026-12-06)
            sys.exit(message)
        runs.log_to_file(log, f"error: {type(e).__name__}: {e}", error=e)  # a fault of ours: its traceback too
        raise
    except BaseException as e:  # SIGTERM or Ctrl-C: LastCheckpoint saved the step reached and stopped the fit
        stop = "SIGTERM" if type(e).__name__ == "SIGTERMException" else "Ctrl-C" if runs.stopped_by_ctrl_c(e) else None
        if stop and runs.started_for_another_rank():
            sys.exit(1)  # the first process of a DDP run says it
        if stop:
            message = runs.stopped(stop, run_dir)
            runs.log_to_file(log, message, logging.WARNING)
            sys.exit(message)
        raise
    if result is None:
        return float("nan")
    metrics = result.metrics
    if "acc" in metrics:
        scores = f"ACC {metrics['acc']:.4f}  NMI {metrics['nmi']:.4f}  ARI {metrics['ari']:.4f}"
    else:  # the scores without labels (nan where one cluster holds every sample: null in metrics.json)
        sil, db, ch = (metrics[k] for k in ("silhouette", "davies_bouldin", "calinski_harabasz"))
        scores = f"silhouette {sil:.4f}  Davies-Bouldin {db:.4f}  Calinski-Harabasz {ch:.1f}"
    runs.log_to_file(log, f"finished: {scores}", logging.INFO)
    print(f"run folder: {run_dir}")
    print(scores)
    return metrics["acc"] if "acc" in metrics else metrics["silhouette"]


if __name__ == "__main__":
    try:
        runs.check_resume(sys.argv[1:])
    except InputError as e:
        sys.exit(f"error: {e}")
    main()
