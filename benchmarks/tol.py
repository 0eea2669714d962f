"""Where each seed of a finished sweep would have stopped under a larger `refine.tol`, read from its logs.

    python benchmarks/tol.py --sweep multirun/seeds-digits_default-DATE --name digits_default

A run with a larger tol follows the same steps as the one logged and stops at the first refresh of
P after the first where fewer than tol of the labels changed; the clustering it would then report
is the one that refresh logged (`val/acc`, `val/nmi`, `val/ari`: the labels of Q at that refresh,
which the final evaluation recomputes from the same weights). A tol that no refresh meets runs on to
refine.max_iters, as the logged run did: its result is the run's own end (`metrics.json`: its last
steps came after the last refresh). So one sweep at the smallest tol gives the accuracy and the
refinement steps of every larger one, without running them again. Needs the refreshes' metrics
against labels in each seed's TensorBoard logs (`SWEEP/SEED/tensorboard`). Checks that the logs
reproduce each run's own `metrics.json` at the tol it ran with, whether tol or max_iters stopped it.
Writes benchmarks/results/tol-NAME.json.
"""

import argparse
import datetime
import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deep_clustering.refine import stop_rule

ROOT = Path(__file__).resolve().parents[1]
TAGS = ("refine/delta_label", "val/acc", "val/nmi", "val/ari")


def refreshes(run: Path) -> dict[str, dict[int, float]]:
    """Each tag of TAGS: {step: value} over every refresh of P the run logged."""
    found: dict[str, dict[int, float]] = {tag: {} for tag in TAGS}
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        log = EventAccumulator(str(events), size_guidance={"scalars": 0})
        log.Reload()
        for tag in set(TAGS) & set(log.Tags()["scalars"]):
            found[tag].update({e.step: e.value for e in log.Scalars(tag)})
    missing = [tag for tag, values in found.items() if not values]
    if missing:
        raise SystemExit(f"{run}: no {', '.join(missing)} in its TensorBoard logs (a run without labels?)")
    return found


def stop(found: dict[str, dict[int, float]], tol: float) -> int | None:
    """The step of the refresh at which a run with this tol stops: the first after the first with
    fewer than tol of the labels changed, or None if no logged refresh meets it (max_iters stops it)."""
    delta = found["refine/delta_label"]  # from the second refresh on (logs before 2026-12-06: 0 at the first)
    steps = sorted(found["val/acc"])  # every refresh: the n-th refresh of P is the n-th of these
    return next((s for n, s in enumerate(steps, 1) if s in delta and stop_rule(n, delta[s], tol)), None)


def outcome(found: dict[str, dict[int, float]], ran: dict, tol: float) -> dict[str, float]:
    """The steps, ACC, NMI and ARI a run with this tol reports: those of the refresh it stops at, or,
    if it stops at none, the logged run's own end (`ran`, its metrics.json)."""
    step = stop(found, tol)
    if step is None:  # the steps after the last refresh count, and the final evaluation's scores
        return {"steps": ran["refine_iterations"], **{key: ran[key] for key in ("acc", "nmi", "ari")}}
    return {"steps": step, **{key: found[f"val/{key}"][step] for key in ("acc", "nmi", "ari")}}


def disagrees(found: dict[str, dict[int, float]], ran: dict, tol: float) -> str | None:
    """How the logs fail to give back the run's own end at the tol it ran with, whether tol or
    max_iters stopped it (None where they do)."""
    by = "max_iters" if stop(found, tol) is None else "tol"
    end = outcome(found, ran, tol)
    if by != ran["stopped_by"] or end["steps"] != ran["refine_iterations"] or abs(end["acc"] - ran["acc"]) > 1e-6:
        return (
            f"its logs stop at step {end['steps']} ({by}, ACC {end['acc']:.4f}), its metrics.json at "
            f"{ran['refine_iterations']} ({ran['stopped_by']}, ACC {ran['acc']:.4f})"
        )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, required=True, help="a seeds sweep: one folder per seed")
    parser.add_argument("--name", required=True, help="the result's name: benchmarks/results/tol-NAME.json")
    parser.add_argument("--tols", type=float, nargs="+", default=[0.001, 0.002, 0.003, 0.005, 0.01])
    args = parser.parse_args()
    runs = sorted((p for p in args.sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    rows = {tol: {"steps": [], "acc": [], "nmi": [], "ari": []} for tol in args.tols}
    for run in runs:
        found = refreshes(run)
        ran = json.loads((run / "metrics.json").read_text())
        ran_tol = OmegaConf.load(run / ".hydra" / "config.yaml").refine.tol
        if min(args.tols) < ran_tol:
            raise SystemExit(f"{run} ran with refine.tol={ran_tol}: it says nothing of a smaller tol")
        for tol in args.tols:
            for key, value in outcome(found, ran, tol).items():
                rows[tol][key].append(value)
        if disagreement := disagrees(found, ran, ran_tol):
            raise SystemExit(f"{run}: {disagreement}")
    result = {
        "benchmark": "tol",
        "name": args.name,
        "command": f"python benchmarks/tol.py --sweep {args.sweep} --name {args.name}",
        "date": datetime.date.today().isoformat(),
        "seeds": [int(run.name) for run in runs],
        "tol": {},
    }
    for tol, row in rows.items():
        means = {f"{key}_mean": statistics.fmean(values) for key, values in row.items()}
        std = statistics.stdev(row["acc"]) if len(row["acc"]) > 1 else 0.0
        result["tol"][str(tol)] = {**means, "acc_std": std, **row}
        print(
            f"tol {tol:<6} ACC {means['acc_mean']:.4f}  NMI {means['nmi_mean']:.4f}  "
            f"ARI {means['ari_mean']:.4f}  refinement steps {means['steps_mean']:,.0f}"
        )
    out = ROOT / "benchmarks" / "results" / f"tol-{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
