"""A sweep in one table: python -m deep_clustering.summarize multirun/DATE/TIME [--metric acc] [--over KEY ...]

Reads every job's metrics.json and .hydra/overrides.yaml, groups the jobs by their overrides
(all but the ones averaged over: `seed`, and the keys --over names), and writes summary.csv and summary.md into the
sweep folder: mean +- std, min and max of each metric per group, best group first, and the runs a
metric is over where some report none (null or NaN: a silhouette with one cluster found).
"""

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

METRICS = ["acc", "nmi", "ari", "silhouette", "davies_bouldin", "calinski_harabasz", "n_clusters_found", "seconds"]
LOWER_IS_BETTER = {"davies_bouldin", "seconds"}


def setting(override: str) -> tuple[str, str]:
    """key, value of a job's override as the user meant it: `data.path=my\\ photos` is `my photos`."""
    key, text = override.lstrip("+").split("=", 1)
    try:
        value = OverridesParser.create().parse_override(override).value()
    except HydraException:  # not Hydra's grammar: as written
        return key, text
    return key, value if isinstance(value, str) else text


def collect(sweep_dir: Path) -> list[dict]:
    """One row per finished job: its overrides (key -> value) and its metrics."""
    rows = []
    for metrics_file in sorted(sweep_dir.rglob("metrics.json")):
        job = metrics_file.parent
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        metrics = json.loads(metrics_file.read_text())
        values = {m: metrics[m] for m in METRICS if isinstance(metrics.get(m), (int, float))}
        # the job's own time, each job's startup left out alike: the first job's also holds the imports
        values["seconds"] = metrics["seconds"]["total"] - metrics["seconds"].get("startup", 0.0)
        settings = dict(setting(o) for o in overrides if "=" in o)
        rows.append({"job": str(job.relative_to(sweep_dir)), "settings": settings, "metrics": values})
    return rows


def summarize(rows: list[dict], metric: str, over: tuple[str, ...] = ("seed",)) -> list[dict]:
    """Groups of jobs that differ only in the `over` keys, with mean, std, min and max of each
    metric and the runs it is over (fewer than the group's where a run reports none), sorted best
    first by `metric`."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = tuple(sorted((k, v) for k, v in row["settings"].items() if k not in over))
        groups.setdefault(key, []).append(row)
    table = []
    for key, members in groups.items():
        entry = {"settings": dict(key), "n": len(members)}
        for m in METRICS:
            values = [r["metrics"][m] for r in members if m in r["metrics"] and not math.isnan(r["metrics"][m])]
            if values:
                entry[m] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else None,  # none for one run
                    "min": min(values),
                    "max": max(values),
                    "runs": len(values),  # the group's runs that report it
                }
        table.append(entry)
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return sorted(table, key=lambda e: sign * e[metric]["mean"] if metric in e else math.inf)


def reported(entry: dict, metric: str) -> int:
    """How many of a group's runs report the metric (not null, not NaN)."""
    return entry[metric]["runs"] if metric in entry else 0


def varying(table: list[dict]) -> tuple[list[str], dict]:
    """The settings that differ between groups, and those all groups share."""
    keys = sorted({k for e in table for k in e["settings"]})
    common = {k: table[0]["settings"].get(k) for k in keys if len({e["settings"].get(k) for e in table}) == 1}
    return [k for k in keys if k not in common], common


def to_markdown(table: list[dict], metric: str) -> str:
    keys, common = varying(table)
    shown = [m for m in METRICS if any(m in e for e in table)]
    head = [*keys, "runs", *(f"{m} mean ± std [min, max]" for m in shown)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for e in table:
        cells = [str(e["settings"].get(k, "")) for k in keys] + [str(e["n"])]
        for m in shown:
            s = e.get(m)
            if s is None:
                cells.append("")
            elif s["std"] is None:  # one run: its value
                cells.append(f"{s['mean']:.4f}")
            else:
                cells.append(f"{s['mean']:.4f} ± {s['std']:.4f} [{s['min']:.4f}, {s['max']:.4f}]")
            if s is not None and s["runs"] < e["n"]:  # some runs report none: say over how many
                cells[-1] += f" ({s['runs']} of {e['n']} runs)"
        lines.append("| " + " | ".join(cells) + " |")
    order = "lowest" if metric in LOWER_IS_BETTER else "highest"
    shared = " ".join(f"{k}={v}" for k, v in common.items())
    note = f"Sorted by {metric}, {order} first." + (f" Common to all: {shared}" if shared else "")
    return "\n".join(lines) + f"\n\n{note}\n"


def write(table: list[dict], metric: str, sweep_dir: Path) -> None:
    keys = sorted({k for e in table for k in e["settings"]})
    shown = [m for m in METRICS if any(m in e for e in table)]  # no acc columns without labels
    # a metric's own count of runs only where some group's runs do not all report it
    columns = [
        (m, s)
        for m in shown
        for s in ("mean", "std", "min", "max", "runs")
        if s != "runs" or any(reported(e, m) < e["n"] for e in table)
    ]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*keys, "runs", *(f"{m}_{s}" for m, s in columns)])
        for e in table:
            cells = [e["settings"].get(k, "") for k in keys] + [e["n"]]
            cells += [
                reported(e, m) if s == "runs" else "" if m not in e or e[m][s] is None else e[m][s] for m, s in columns
            ]
            out.writerow(cells)
    (sweep_dir / "summary.md").write_text(to_markdown(table, metric))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder (or any folder holding run folders)")
    parser.add_argument("--metric", help="sort by this metric (default: acc where labels exist, else silhouette)")
    parser.add_argument("--over", nargs="*", default=[], help="settings averaged over, beside seed")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    jobs = sorted(config.parent.parent for config in args.sweep_dir.glob("**/.hydra/config.yaml"))
    unfinished = [str(job.relative_to(args.sweep_dir)) for job in jobs if not (job / "metrics.json").exists()]
    if unfinished:  # refused for their input, failed, or still running: not in the table
        print(f"{len(unfinished)} of {len(jobs)} jobs left out, with no metrics.json: {', '.join(unfinished)}")
    if not rows:
        parser.exit(2, f"error: no finished runs (metrics.json) under {args.sweep_dir}\n")
    metric = args.metric or ("acc" if all("acc" in r["metrics"] for r in rows) else "silhouette")
    if not any(metric in r["metrics"] for r in rows):
        names = ", ".join(m for m in METRICS if any(m in r["metrics"] for r in rows))  # acc only with labels
        parser.exit(2, f"error: --metric {metric}: no run reports it (the runs report: {names})\n")
    unknown = [k for k in args.over if not any(k in r["settings"] for r in rows)]
    if unknown:
        known = sorted({k for r in rows for k in r["settings"]})
        parser.exit(2, f"error: --over {' '.join(unknown)}: no job sets it (the jobs set: {', '.join(known)})\n")
    table = summarize(rows, metric, ("seed", *args.over))
    write(table, metric, args.sweep_dir)
    print(to_markdown(table, metric))
    best = table[0]
    keys, _ = varying(table)
    # the keys the best group sets (a folder of several sweeps: keys that only others set are not its)
    setting = " ".join(f"{k}={best['settings'][k]}" for k in keys if k in best["settings"]) or "(no settings varied)"
    found = best.get("n_clusters_found")  # a K sweep's best K may have left clusters empty
    occupied = ""
    if found:  # the fewest to the most over the group's runs
        spread = f"{found['min']:g}" + (f" to {found['max']:g}" if found["max"] > found["min"] else "")
        occupied = f"; {spread} clusters occupied"
    runs = reported(best, metric)
    over = f"{runs} of {best['n']}" if runs < best["n"] else str(runs)  # the group's runs that report it
    print(f"best: {setting}  {metric} {best[metric]['mean']:.4f} over {over} run(s){occupied}")
    print(f"wrote {args.sweep_dir / 'summary.csv'} and {args.sweep_dir / 'summary.md'}")


if __name__ == "__main__":
    main()
