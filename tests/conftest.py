import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DC_TEST_DATA", ROOT.parent / "shared" / "data"))

# At most 2 threads a process, as the tests' figures were measured with. Under pytest-xdist (make test)
# the cores are shared among the workers: on 2 cores each worker, and each train.py it starts, gets one
# (2 workers of 2 threads each on 2 cores wait on each other's threads). Outside xdist, train.py and
# Lightning choose theirs (Lightning's DDP: the cores divided among its processes).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, torch.get_num_threads() // WORKERS))
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)  # the processes the tests start


# the processes of spawn() below fork from one server process per pytest worker that has imported these
multiprocessing.set_forkserver_preload(["torch", "lightning", "deep_clustering.pipeline"])


def spawn(fn, *args) -> None:
    """fn(rank, *args) in two processes, as torch.multiprocessing.spawn starts them but forked from a
    server that imported torch and Lightning once: each test's processes skip those 9 s of imports."""
    mp.start_processes(_as_launched, args=(fn, *args), nprocs=2, start_method="forkserver")


def _as_launched(rank: int, fn, *args) -> None:
    """fn in a process that starts its own (DataLoader workers) by fork, as one that Lightning's DDP or
    torchrun launched does on Linux; a forkserver's child would start another server (8 s of imports)."""
    multiprocessing.set_start_method("fork", force=True)
    fn(rank, *args)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_npz(name: str) -> Path:
    """A benchmark data set from ../shared/data (or $DC_TEST_DATA); the test is skipped without it."""
    path = DATA / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} is missing (set DC_TEST_DATA to the folder holding the benchmark .npz files)")
    return path


def sigint_as_in_a_terminal() -> None:
    """preexec_fn of a process a test sends Ctrl-C (SIGINT): the default handling, whatever this
    process's (a child inherits an ignored SIGINT, and Python then leaves it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_train(
    run_dir: Path, *overrides: str, check: bool = True, timeout: int = 900, warnings: str = "ignore"
) -> subprocess.CompletedProcess:
    """`python train.py` with Hydra overrides in a fresh process, its run folder set to `run_dir`;
    `warnings` is the process's PYTHONWARNINGS ('default' shows each warning once)."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]
    env = {**os.environ, "PYTHONWARNINGS": warnings}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as arrays: (N, 8, 8) floats in [0, 1] (what data=digits gives train.py), labels."""
    from deep_clustering.data import load_digits  # here: Lightning stays out of pytest-xdist's main process

    d = load_digits()
    return d.images[:, 0].numpy(), d.labels.numpy()


@pytest.fixture(scope="session")
def pretrained_digits(tmp_path_factory) -> Path:
    """One short pretraining on digits, shared by the tests that start from a pretrained autoencoder."""
    run_dir = tmp_path_factory.mktemp("pretrained") / "run"
    run_train(run_dir, "pretrain.epochs=30", "refine.max_iters=1", "init.manifold=none")
    return run_dir
