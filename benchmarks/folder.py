"""An image folder held in memory against the same folder read from its cache file on disk.

    python benchmarks/folder.py --npz ../shared/data/mnist.npz --n 60000 --size 32 --channels 3

Writes N PNG files (the .npz's images, resized and, for 3 channels, tinted by class) into a scratch
folder, then runs the same short job twice, `data.in_memory=true` and `data.in_memory=false`, each in
a fresh process, and records the peak resident memory of the training process (its DataLoader
workers aside), the seconds of each stage from metrics.json, and whether the two runs predicted
the same clusters. Writes benchmarks/results/folder-NAME.json.
"""

import argparse
import csv
import datetime
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINTS = np.array([[1, 1, 1], [1, 0.3, 0.3], [0.3, 1, 0.3], [0.3, 0.3, 1], [1, 1, 0.3]])


def write_folder(npz: Path, n: int, size: int, channels: int, folder: Path) -> None:
    with np.load(npz) as arrays:
        x, y = arrays["x_train"], arrays["y_train"]
    x = x.reshape(len(x), x.shape[1], x.shape[2])
    x = (x * 255).astype(np.uint8) if x.dtype != np.uint8 else x
    for i in range(n):
        img = Image.fromarray(x[i % len(x)]).resize((size, size), Image.BILINEAR)
        if channels == 3:
            rgb = np.asarray(img, np.float32)[:, :, None] * TINTS[int(y[i % len(y)]) % len(TINTS)]
            img = Image.fromarray(rgb.astype(np.uint8))
        path = folder / f"class{int(y[i % len(y)])}" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)


def run(run_dir: Path, overrides: list[str]) -> dict:
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "predictions.csv") as f:
        clusters = [row["cluster"] for row in csv.DictReader(f)]
    # the run's own peak (the child's ru_maxrss would also count this process's memory before exec)
    peak = metrics["peak_memory_mb"]["host"]
    return {"peak_rss_mb": peak, "seconds": metrics["seconds"], "acc": metrics.get("acc")}, clusters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, required=True, help="where the images come from (x_train, y_train)")
    parser.add_argument("--n", type=int, default=60000, help="images in the folder")
    parser.add_argument("--size", type=int, default=32, help="their height and width")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--name", default="mnist", help="the result's name: benchmarks/results/folder-NAME.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the job (after --)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dc-folder-"))
    try:
        write_folder(args.npz, args.n, args.size, args.channels, scratch / "images")
        job = [
            "data=image_folder",
            f"data.path={scratch / 'images'}",
            f"data.image_size=[{args.size},{args.size}]",
            f"data.channels={args.channels}",
            f"data.cache_dir={scratch / 'cache'}",
            "pretrain.epochs=1",
            "pretrain.batch_size=256",
            "refine.batch_size=256",
            "refine.max_iters=100",
            "refine.update_interval=50",
            "init.manifold=none",
            "baselines=[]",
            *args.overrides,
        ]
        memory, memory_clusters = run(scratch / "memory", [*job, "data.in_memory=true"])
        disk, disk_clusters = run(scratch / "disk", [*job, "data.in_memory=false"])
        cached, _ = run(scratch / "disk_again", [*job, "data.in_memory=false"])  # the cache built, reused
        result = {
            "benchmark": "folder",
            "name": args.name,
            "command": " ".join(["python", "benchmarks/folder.py", *sys.argv[1:]]),
            "device": f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "date": datetime.date.today().isoformat(),
            "images": f"{args.n} PNG files of {args.size}x{args.size}x{args.channels}",
            "job": job,
            "in_memory": memory,
            "on_disk_building_the_cache": disk,
            "on_disk_cache_reused": cached,
            "same_predictions": memory_clusters == disk_clusters,
        }
        out = ROOT / "benchmarks" / "results" / f"folder-{args.name}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        for key in ("in_memory", "on_disk_building_the_cache", "on_disk_cache_reused"):
            r = result[key]
            print(f"{key}: peak RSS {r['peak_rss_mb']:.0f} MB, seconds {r['seconds']}")
        print(f"same predictions: {result['same_predictions']}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
