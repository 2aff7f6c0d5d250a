"""Sweep throughput: trials per hour of `painn-ablate sweep` on a slice of sweeps/stabilizers.yaml.

    bash scripts/in-venv python benchmarks/sweep_throughput.py --before GIT_REF   # ~10 min on 2 cores
    bash scripts/in-venv python benchmarks/sweep_throughput.py --before GIT_REF --compile false,auto   # eager and compiled
    bash scripts/in-venv python benchmarks/sweep_throughput.py --before GIT_REF --workers 2 --warm   # 2 workers, warm

The slice is both presets with no ablation (original and R2_full, the cheapest and the dearest
step), seeds 0-1, at train.steps=1000 (issue 13's setting): 2 trials with 1 worker (seed 0) and
4 with 2 workers, each worker with cores/workers torch threads (the sweep's default). --before
runs the same sweeps with painn_ablate as it was at a git ref (extracted with `git archive`, first
on PYTHONPATH), one version after the other, so run it on an otherwise idle machine. Besides the
wall time it prints the share of it the trials spent training (the runs' own wall_seconds): the
rest is per-trial start-up (process spawn, imports, data, W&B) and the sweep's bookkeeping.

--compile runs the working tree once per model.compile setting (auto, the default, compiles these
1000-step trials). Compiled trials use the project's inductor cache (core.process.use_inductor_cache):
the first sweep on a machine compiles each configuration cold (~90-280 s), later ones warm (~6 s);
--warm runs every timed sweep once beforehand, untimed, so that each is timed with a warm cache (a
sweep's steady state), or point PAINN_ABLATE_CACHE at an empty folder to time the cold one.

Trials per hour compare only where the trials do the same work: a trial that blows up ends early, and
two versions may classify the same seed differently (a spike that ended a trial before may now be a
transient that trains on). So steps per hour (the trials' completed steps over the wall time) are
printed beside them, with each version's outcomes: read trials per hour where the outcomes agree,
steps per hour where they do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from git_tree import extract_package

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "painn-ablate"


def slice_of(sweep: Path, seeds: list[int], steps: int, out: Path) -> Path:
    spec = yaml.safe_load(sweep.read_text())
    spec.pop("frontier", None)  # a fixed-size slice: no walk up the ladder, one trial per seed and preset
    params = spec["parameters"]
    params["train.lr"] = {"value": 1e-3}  # the config's default, where the file stood before it became a frontier
    params["ablate"] = {"value": "none"}
    params["seed"] = {"values": seeds}
    params["train.steps"] = {"value": steps}
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def run(tree: Path, workers: int, seeds: list[int], steps: int, overrides: tuple[str, ...] = ()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep = slice_of(ROOT / "sweeps" / "stabilizers.yaml", seeds, steps, tmp / "slice.yaml")
        env = {**os.environ, "PYTHONPATH": str(tree), "WANDB_MODE": "offline"}
        t0 = time.perf_counter()
        proc = subprocess.run([str(CLI), "sweep", str(sweep), *overrides, "--workers", str(workers),
                               "--out", str(tmp / "out")],
                              capture_output=True, text=True, env=env, cwd=tmp)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"sweep failed ({tree}): {proc.stderr.strip().splitlines()[-1:]}")
        summaries = [json.loads(p.read_text()) for p in (tmp / "out").rglob("summary.json")]
    training = sum(s.get("wall_seconds") or 0.0 for s in summaries)
    return {"trials": len(summaries), "wall": wall, "training": training,
            "steps": sum(s.get("steps_completed") or 0 for s in summaries),
            "statuses": sorted(s["status"] for s in summaries)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=None, metavar="GIT_REF", help="also time painn_ablate at this git ref")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--compile", default="auto", help="model.compile settings to run the working tree with,"
                                                      " comma-separated (default auto; e.g. false,auto)")
    ap.add_argument("--warm", action="store_true", help="run each compiling version's sweep once untimed first (a warm"
                                                        " inductor cache; an eager version has nothing to warm)")
    ap.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated (default 1,2; seeds 0 to"
                                                     " workers - 1, one trial per preset and seed)")
    args = ap.parse_args()
    settings = args.compile.split(",")
    # version label -> (tree, overrides); the before tree runs as it was (its own model.compile default)
    trees = {("after" if len(settings) == 1 else f"after, compile={c}"): (ROOT, (f"model.compile={c}",))
             for c in settings}
    if args.before:
        trees = {"before": (extract_package(args.before), ()), **trees}
    print(f"sweep throughput: slice of sweeps/stabilizers.yaml (original and r2_full, no ablation), "
          f"train.steps={args.steps}, {os.cpu_count()} cores; load average at start: {os.getloadavg()[0]:.2f}")
    if args.warm:
        for version, (tree, overrides) in trees.items():
            if not any(o.startswith("model.compile=") and o != "model.compile=false" for o in overrides):
                continue
            t0 = time.perf_counter()
            run(tree, 2, [0, 1], args.steps, overrides)
            print(f"  warmed {version} ({time.perf_counter() - t0:.0f} s, untimed)", flush=True)
    rows = []
    for workers, seeds in ((w, list(range(w))) for w in map(int, args.workers.split(","))):
        for version, (tree, overrides) in trees.items():
            r = run(tree, workers, seeds, args.steps, overrides)
            rows.append([version, workers, r["trials"], f"{r['wall']:.0f}", f"{3600 * r['trials'] / r['wall']:.0f}",
                         r["steps"], f"{3600 * r['steps'] / r['wall']:.0f}",
                         f"{100 * r['training'] / (r['wall'] * workers):.0f}%", ", ".join(r["statuses"])])
            print("  " + " | ".join(map(str, rows[-1])), flush=True)
    header = ["version", "workers", "trials", "wall s", "trials/hour", "steps", "steps/hour", "training share",
              "outcomes"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for k, r in enumerate([header] + rows):
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
