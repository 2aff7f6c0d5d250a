"""`painn-ablate`: the command line. The only module that prints.

Bad input (config, data, sweep file, run directory) prints one line
`painn-ablate: error: ...` and exits with code 2; an exploded run is a result
and exits 0. Output into a pipe that closes early (`status DIR | head -1`) ends quietly with 141.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from painn_ablate.core.errors import InputError
from painn_ablate.core.process import keep_freed_memory, use_inductor_cache
from painn_ablate.reporting.text import describe, duration_text, experiment_table, first_divergence_cell, fmt_value, trial_line
from painn_ablate.sweep.words import where_nonfinite

if TYPE_CHECKING:  # annotations only: the CLI imports its modules where a command needs them
    pass

# OpenMP threads that find no work sleep instead of spinning (libgomp's default spins), set before
# torch loads its OpenMP runtime: beside a running sweep, a 2-thread `train` took 113 ms a step
# spinning and 40 ms sleeping (README, "Threads"). An explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141


def unwritable_reason(path: Path):
    from painn_ablate.training.sinks import unwritable_reason as reason

    return reason(path)


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from painn_ablate.core.config import ConfigError, compose
    from painn_ablate.training.trainer import run

    given = {item.split("=", 1)[0] for item in args.overrides}
    if {"train.epochs", "train.steps"} <= given:
        raise InputError("train.epochs and train.steps are both given; train.epochs sets the steps "
                         "(epochs x batches per epoch): give one of them")
    if args.config:
        try:
            compose(base=args.config)  # the file alone: its errors name it
        except ConfigError as exc:
            raise InputError(f"--config {args.config}: {exc}") from None
    cfg = compose(args.overrides, base=args.config)
    summary = run(cfg, overwrite=args.overwrite)
    print(describe(summary))
    return 0


# ----------------------------------------------------------------------------- sweep


class SweepProgressPrinter:
    """The live view of a sweep: a bar of trials done, a line per finished trial, and the time left by the
    trials' expected lengths (Progress.eta_seconds), not by trials per second."""

    def __init__(self, metric: str, workers: int = 1):
        self.metric = metric
        self.workers = workers
        self.bar = None
        self.seen: set[int] = set()

    def __call__(self, p) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.seen = {t.number for t in p.finished}
            if self.seen:
                print(f"resuming: {p.done}/{p.total} trials already done")
            # tqdm's own remaining time divides by trials per second, which blown-up trials (ending early) skew
            self.bar = tqdm(total=p.total, unit="trial", dynamic_ncols=True, desc="sweep",
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        for t in p.finished:
            if t.number not in self.seen:
                self.seen.add(t.number)
                self.bar.write(trial_line(t, self.metric))
        self.bar.n = min(p.done, p.total or p.done)
        post = {"running": p.running, "diverged": p.diverged, "exploded": p.exploded}
        if p.errors:
            post["errors"] = p.errors
        if p.best_value is not None:
            post["best"] = f"{p.best_value:.4g}"
        eta = p.eta_seconds(self.workers)
        if eta is not None:
            post["left"] = duration_text(eta)
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def next_commands(target: str, url: str) -> list[str]:
    """What to run after a sweep: its table, the registry, the trial tables, the dashboards."""
    return [f"painn-ablate status {target}", f"painn-ablate report {target}",
            f"painn-ablate export {target} --out results", f"painn-ablate dashboard {target}",
            f"optuna-dashboard {url}"]


def resume_command(args: argparse.Namespace, out: str) -> str:
    """The command that resumes this sweep: the same file, overrides and storage."""
    import shlex

    words = ["painn-ablate", "sweep", args.file, *args.overrides]
    words += ["--storage", args.storage] if args.storage else ["--out", out]
    for flag, value, default in (("--workers", args.workers, 1), ("--threads", args.threads, None),
                                 ("--heartbeat", args.heartbeat, None), ("--n-trials", args.n_trials, None)):
        if value != default:
            words += [flag, str(value)]
    return shlex.join(words + (["--prune"] if args.prune else []))


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    import optuna

    from painn_ablate.sweep import optuna_engine as sw
    from painn_ablate.sweep import spec as sf

    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.WARNING)
    spec = sf.load_sweep(args.file, args.overrides)
    out = args.out or str(sf.default_out(args.file))
    if not args.storage:
        reason = unwritable_reason(Path(out))
        if reason:
            raise InputError(f"--out {out} cannot be written: {reason}")
    if args.dry_run:
        from painn_ablate.sweep.wandb_engine import schema_check

        violations, notes = schema_check(spec.raw)
        if violations:
            raise InputError(f"{args.file}: W&B's sweep schema rejects it: {violations[0]}")
        for note in notes:
            print(f"{args.file}: note: {note}")
        points = sf.grid_points(spec) if spec.method == "grid" else []
        n = len(points) if points else (args.n_trials or spec.run_cap or sf.DEFAULT_N_TRIALS)
        from painn_ablate.sweep.dry_run import estimate_seconds

        seconds = estimate_seconds(spec, points) if points else estimate_seconds(spec, sf.check_points(spec)[:1]) * n
        workers = max(1, args.workers)
        print(f"{args.file}: valid; study '{spec.name}', {spec.method}, {n} trials, metric {spec.metric} "
              f"({spec.goal}), out {out}; estimated time at most {duration_text(seconds / workers)} with {workers} "
              f"worker(s) on this machine (blown-up trials end early)")
        for params in points:
            print(f"  {sf.trial_label(spec, params)}: " + " ".join(sf.trial_overrides(spec, params)))
        return 0
    if args.engine == "wandb":
        return cmd_sweep_wandb(args, spec, Path(out))
    printer = SweepProgressPrinter(spec.metric, args.workers)
    try:
        p = sw.run_sweep(spec, out=out, storage_url=args.storage, workers=args.workers, n_trials=args.n_trials,
                         prune=args.prune, heartbeat=sw.DEFAULT_HEARTBEAT if args.heartbeat is None else args.heartbeat,
                         threads=args.threads, on_progress=printer)
    except Exception as exc:
        from painn_ablate.training.trainer import NoSpaceError, no_space

        if isinstance(exc, NoSpaceError) or not no_space(exc):
            raise
        # the storage itself is full (Optuna's StorageInternalError over SQLite's "database or disk is full")
        raise InputError(f"{out}: no space left on device (the study's storage); free space and run the same "
                         "command to resume") from None
    except KeyboardInterrupt:
        printer.close()
        print(f"painn-ablate: sweep interrupted; running trials were given back. Resume with: {resume_command(args, out)}",
              file=sys.stderr)
        return 130
    finally:
        printer.close()
    url = args.storage or sw.sqlite_url(Path(out))
    best = f"best {spec.metric} {p.best_value:.4g} ({p.best_label})" if p.best_value is not None else "no finite result"
    print(f"{spec.name}: {p.done}/{p.total} trials done ({p.transient} transient, {p.diverged} diverged, {p.exploded} exploded, "
          f"{p.errors} errors, "
          f"{p.lost} interrupted and re-run); {best}. Run directories in {out}/trials.")
    if p.waiting or p.running:
        print(f"{p.waiting} trial(s) waiting, {p.running} running elsewhere: run the same command to resume.")
    from painn_ablate.sweep import studies

    frame = studies.trials_frame(studies.open_studies(url, spec.name)[0])
    table = experiment_table(frame)
    if len(table):
        print(table.to_string(index=False))
    if spec.frontier:
        from painn_ablate.reporting.text import frontier_text

        print(frontier_text(frame, spec.frontier, spec.swept[spec.frontier].values))
    print("Next:\n" + "\n".join(f"  {c}" for c in next_commands(args.storage or out, url)))
    return 0


def cmd_sweep_wandb(args: argparse.Namespace, spec, out) -> int:
    """`sweep --engine wandb`: W&B's own engine, through the server online or in this process offline."""
    from types import SimpleNamespace

    from painn_ablate.sweep import wandb_engine as ws

    for flag, given in (("--workers", args.workers != 1), ("--storage", args.storage), ("--prune", args.prune),
                        ("--heartbeat", args.heartbeat is not None)):
        if given:
            raise InputError(f"{flag} applies to --engine optuna; --engine wandb runs one trial at a time per "
                             "process (online, more agents join with `wandb agent <sweep>`)")
    if ws.online():  # no frontier table here: the sweep's runs are the server's, this agent knows only its own
        path = ws.run_online(spec, out=out, n_trials=args.n_trials, threads=args.threads)
        print(f"{spec.name}: W&B sweep {path}: this agent has nothing left to run. More agents: wandb agent {path}")
        return 0

    def on_start(state) -> None:
        if state.trials:
            print(f"resuming: {state.done}/{state.total} trials already done")

    def on_trial(t) -> None:  # trial_line reads an Optuna trial's number, state.name and user_attrs
        view = SimpleNamespace(number=t.number, state=SimpleNamespace(name=t.state),
                               user_attrs={"label": t.label, **t.attrs})
        print(trial_line(view, spec.metric), flush=True)

    s = ws.run_offline(spec, out=out, n_trials=args.n_trials, threads=args.threads, on_start=on_start,
                       on_trial=on_trial)
    best = s.best
    best = f"best {spec.metric} {best.attrs[spec.metric]:.4g} ({best.label})" if best else "no finite result"
    print(f"{spec.name}: {s.done}/{s.total} trials done ({s.transient} transient, {s.diverged} diverged, {s.exploded} exploded, "
          f"{s.errors} errors); {best}. "
          f"Run directories in {out}/trials, state in {out}/{ws.LEDGER}.")
    if spec.frontier:  # W&B's engine ran every rung of the ladder: the frontier is each seed's first failure
        from painn_ablate.reporting.text import frontier_text

        print(frontier_text(ws.trial_table(spec, s.trials), spec.frontier, spec.swept[spec.frontier].values))
    print(f"W&B runs are offline; upload them: wandb sync {out}/trials/*/wandb/offline-run-*")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import pandas as pd

    from painn_ablate.sweep import studies

    for study in studies.open_studies(args.target, args.study):
        s = studies.summarize(study)
        frame = s["frame"]
        grid = f"grid of {s['grid_size']} points, " if s["grid_size"] else ""
        print(f"study {s['study']}: {grid}{s['n_trials']} trials; states "
              + ", ".join(f"{k} {v}" for k, v in s["states"].items())
              + "; statuses " + ", ".join(f"{k} {v}" for k, v in s["statuses"].items()))
        if s["best"]:
            b = s["best"]
            print(f"best {s['metric'] or 'value'}: {b['value']:.4g} (#{b['number']} {b['label']}) "
                  + " ".join(f"{k}={v}" for k, v in b["params"].items()))
        table = experiment_table(frame)
        if len(table):
            print(table.to_string(index=False))
        frontier = studies.frontier_ladder(study)
        if frontier is not None:
            from painn_ablate.reporting.text import frontier_text

            print(frontier_text(frame, *frontier))
        if len(frame):
            nonfinite = frame.apply(lambda r: "-" if pd.isna(r["first_nonfinite_step"]) else where_nonfinite(
                {k: r[f"first_nonfinite_{k}"] for k in ("step", "layer", "block", "tensor")}), axis=1)
            diverged = frame.apply(first_divergence_cell, axis=1)
            table = pd.DataFrame({"#": frame["number"], "label": frame["label"], "status": frame["status"],
                                  "value": frame["value"].map(fmt_value), "val_pos_mse": frame["val_pos_mse"].map(fmt_value),
                                  "test_pos_mse": frame["test_pos_mse"].map(fmt_value), "first divergence": diverged,
                                  "first non-finite": nonfinite})
            print(table.to_string(index=False))
        print()
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from painn_ablate.reporting import dashboard as db

    kind, where = db.make(args.target, args.study, args.entity, args.project, args.experiment, args.out,
                          args.offline)
    if kind == "url":
        print(f"workspace saved: {where}")
    else:
        print(f"no W&B credentials (or --offline): wrote the workspace's specification to {where}; with a key, "
              f"run this again to save it to W&B")
    return 0


# ----------------------------------------------------------------------------- reproduce, report


def cmd_reproduce(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from painn_ablate.reporting import reproduce as rp

    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")

    def on_run(r: dict) -> None:
        o = r["origin"]
        where = (f" at step {o['step']} (layer {o['layer']}, {o['block']}, {o['stat']}, {o['criterion']})"
                 if o else "")
        print(f"{r['experiment']} seed {r['seed']}: {r['status']}{where}; {r['steps_completed']}/{r['steps_total']} "
              f"steps, test pos MSE {fmt_value(r['test_pos_mse'])} ({r['wall_seconds']:.0f} s)", flush=True)

    result = rp.reproduce(args.out, quick=args.quick, overrides=args.overrides, on_run=on_run,
                          workers=args.workers, map_path=args.map)
    print()
    print(rp.verdict_text(result), end="")
    print(f"\nWritten: {args.out}/reproduce.json, {args.out}/verdict.md, {args.out}/plots/*.png "
          f"({result['wall_seconds'] / 60:.1f} min). Registry: painn-ablate report {args.out}")
    return 1 if args.strict and not result["verdict"]["passed"] else 0


DEFAULT_RESULTS = "results"


def cmd_export(args: argparse.Namespace) -> int:
    from painn_ablate.analysis.tables import export

    for src in args.sources:
        if not os.path.exists(src):
            raise InputError(f"no such sweep or probe folder: {src}")
    reason = unwritable_reason(Path(args.out))  # checked, not created: a failing export leaves no empty --out
    if reason:
        raise InputError(f"cannot write to {args.out}: {reason}")
    for src in args.sources:
        unfinished = _unfinished_trials(src)
        if unfinished:
            print(f"painn-ablate: note: {src} is incomplete: {unfinished}; the table holds its finished trials "
                  "(export again when the sweep is done)", file=sys.stderr)
    for path in export(args.sources, args.out, curves=args.curves, test_errors=args.test_errors):
        print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KB)")
    return 0


def _unfinished_trials(src: str) -> str:
    """'3 of 8 trials waiting or running' for a sweep folder whose study is not done, else ''."""
    if not (Path(src) / "study.db").is_file():
        return ""
    from optuna.trial import TrialState

    from painn_ablate.sweep import studies

    counts = {"running": 0, "waiting": 0, "total": 0}
    for study in studies.open_studies(src):
        for t in study.get_trials(deepcopy=False):
            counts["total"] += 1
            counts["running"] += t.state == TrialState.RUNNING
            counts["waiting"] += t.state == TrialState.WAITING
    if not counts["running"] and not counts["waiting"]:
        return ""
    return f"{counts['running']} running and {counts['waiting']} waiting of {counts['total']} trials"


def cmd_report(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from painn_ablate.reporting import registry as rep

    if args.plots:
        plots = Path(args.plots)
        if plots.exists() and not plots.is_dir():
            raise InputError(f"--plots {plots} is a file; name a folder for the figures")
        reason = unwritable_reason(plots)
        if reason:
            raise InputError(f"--plots {plots} cannot be written: {reason}")
    if args.results or (not args.paths and not args.study and os.path.isdir(DEFAULT_RESULTS)):
        from painn_ablate.reporting.findings import DEFAULT_OUT as FINDINGS_OUT
        from painn_ablate.reporting.findings import write_findings

        results = args.results or DEFAULT_RESULTS
        if not os.path.isdir(results):
            raise InputError(f"no results folder '{results}'")
        plots = args.plots or "plots"
        command = " ".join(["painn-ablate report", *([f"--results {results}"] if args.results else []),
                            *([f"--out {args.out}"] if args.out else []),
                            *([f"--plots {args.plots}"] if args.plots else [])])
        out = write_findings(results, args.out or FINDINGS_OUT, plots, command=command)
        print(f"wrote {out} and plots in {plots}, from the trial tables in {results}")
        return 0
    paths = args.paths or [p for p in rep.DEFAULT_PATHS if os.path.exists(p)]
    if not paths and not args.study:
        raise InputError(f"no paths given and none of {', '.join(rep.DEFAULT_PATHS)} exists here")
    command = " ".join(["painn-ablate report", *paths, *(f"--study {s}" for s in args.study or []),
                        *([f"--out {args.out}"] if args.out else []),
                        *([f"--plots {args.plots}"] if args.plots else [])])
    out = rep.write_report(paths, tuple(args.study or ()), args.out or rep.DEFAULT_OUT, args.plots, command=command)
    print(f"wrote {out}" + (f" and plots in {args.plots}" if args.plots else ""))
    return 0


def _depths(text: str) -> list[int]:
    try:
        depths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--depths: expected comma-separated integers like 2,3,5, got {text!r}") from None
    if not depths or min(depths) < 1:
        raise InputError(f"--depths: every depth must be >= 1, got {text!r}")
    twice = sorted({d for d in depths if depths.count(d) > 1})
    if twice:  # each depth's seeds would be counted twice in its blow-up fraction
        raise InputError(f"--depths: {', '.join(map(str, twice))} given twice in {text!r}; give each depth once")
    return depths


def cmd_probe(args: argparse.Namespace) -> int:
    import pandas as pd

    from painn_ablate.core.config import compose
    from painn_ablate.training.probe import depth_table, layer_table, run_probe, seed_table

    if args.seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {args.seeds}")
    if args.steps < 0:
        raise InputError(f"--steps must be >= 0, got {args.steps}")
    if args.batches < 0:
        raise InputError(f"--batches must be >= 0, got {args.batches}")
    cfg = compose(args.overrides)
    depths = _depths(args.depths) if args.depths else None
    out = Path(args.out) if args.out else None
    if out is not None:
        _writable_folder(out)
    result = run_probe(cfg, args.seeds, args.steps, depths, args.batches)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(f"probe: {cfg.model.preset}" + (f" ablate={cfg.ablate}" if cfg.ablate != "none" else "")
              + f", {args.seeds} seeds, at initialisation" + (f" and {args.steps} steps" if args.steps else "")
              + f" ({result.seconds:.1f} s)")
        print(layer_table(result).to_string())
        print(f"per seed: blown up on batch 0, and the fraction of the first {args.batches} training batches on "
              "which the initial network crosses a criterion")
        print(seed_table(result).to_string(index=False))
        print(depth_table(result).to_string(index=False))
        if args.steps:
            print(f"after {args.steps} steps:")
            print(depth_table(result, step=args.steps).to_string(index=False))
    if out is not None:
        result.stats.to_parquet(out / "probe.parquet", index=False)
        result.seeds.to_parquet(out / "probe_seeds.parquet", index=False)
        print(f"wrote {out / 'probe.parquet'} and {out / 'probe_seeds.parquet'}")
    return 0


def _writable_folder(path: Path) -> None:
    """Fail with one line, before any work is done, when `path` cannot be created and written."""
    reason = unwritable_reason(path)
    if reason:
        raise InputError(f"cannot write to {path}: {reason}")
    path.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="painn-ablate",
                                     description="Ablation experiments on the training stabilizers of PaiNN.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one configuration",
                       description="Train one configuration: painn-ablate train model=r2_full train.lr=3e-3 seed=1")
    p.add_argument("--config", help="a saved config.yaml to start from (re-run a run)")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse an out= folder that holds an earlier or a crashed run (its records are removed "
                        "first); a folder another running process writes is always refused")
    p.add_argument("overrides", nargs="*", help="key=value overrides; model=<preset> selects a preset")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="run, resume or join a sweep file (Optuna, or W&B's engine with --engine wandb)",
                       description="Run a W&B sweep file with Optuna: painn-ablate sweep sweeps/stabilizers.yaml "
                                   "train.steps=20 --workers 2. Re-running the same command resumes.")
    p.add_argument("file", help="sweep file (W&B sweep configuration)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every trial, e.g. train.steps=20")
    p.add_argument("--workers", type=int, default=1, help="trial processes on this machine (default 1)")
    p.add_argument("--storage", help="Optuna RDB URL, e.g. postgresql://user:pw@host/db (default: SQLite in --out)")
    p.add_argument("--out", help="output folder: study.db and trials/ (default sweeps_out/<file stem>)")
    p.add_argument("--n-trials", type=int, help="trials of a random/bayes sweep (default: the file's run_cap, else 20)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: CPU cores / workers)")
    p.add_argument("--prune", action="store_true", help="stop a trial when the early warning says it is exploding")
    p.add_argument("--heartbeat", type=int,
                   help="seconds between heartbeats of a running trial (default 20); a trial silent for 3 "
                        "heartbeats is re-run")
    p.add_argument("--dry-run", action="store_true", help="validate the file and list the trials; run nothing")
    p.add_argument("--engine", choices=("optuna", "wandb"), default="optuna",
                   help="optuna (default): Optuna's samplers and storage; wandb: W&B's own sweep engine, on the "
                        "W&B server when online, else offline in this process (state in <out>/wandb_sweep.jsonl)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", help="summarise a sweep: counts, best trial, a table of trials",
                       description="Summarise a sweep: painn-ablate status sweeps_out/stabilizers")
    p.add_argument("target", help="sweep output folder, its study.db, or an Optuna storage URL")
    p.add_argument("--study", help="only this study (default: every study in the storage)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dashboard", help="a W&B workspace for a sweep: outcomes, MSEs, per-layer ||mu|| and |q|, "
                                         "first blow-ups, parallel coordinates",
                       description="Build a W&B workspace for a sweep with wandb-workspaces; online it is saved and "
                                   "its URL printed, offline its specification goes to <sweep folder>/dashboard.json.")
    p.add_argument("target", help="sweep output folder, its study.db, or an Optuna storage URL")
    p.add_argument("--study", help="the study, where the storage holds several")
    p.add_argument("--entity", help="W&B entity (default: the sweep file's, else your default entity)")
    p.add_argument("--project", help="W&B project (default: the sweep file's project)")
    p.add_argument("--experiment", help="narrow the panels to one experiment, by its name or slug: 'original', 'r2_full - s_msg', 'original+alpha'")
    p.add_argument("--out", help="folder for dashboard.json offline (default: the sweep folder)")
    p.add_argument("--offline", action="store_true", help="write the specification even with W&B credentials")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("reproduce", help="re-run the original vs r2_full comparison at the map's regime and judge it",
                       description="Re-run the document's two findings (the original blows up, starting in layers "
                                   "4-5; r2_full does not) with 10 paired seeds per preset at a regime chosen from the "
                                   "explosion map (~15-20 min on 2 cores; --quick: a smoke version), and write "
                                   "reproduce.json, verdict.md and plots.")
    p.add_argument("--quick", action="store_true", help="a small smoke version (3 seeds, 40 steps per run)")
    p.add_argument("--out", default="reproduce_out", help="output folder (default reproduce_out); re-running "
                                                          "reuses its finished runs")
    p.add_argument("--map", help="the explosion map's trial table that picks the learning rate "
                                 "(default results/map_original.parquet where it exists)")
    p.add_argument("--workers", type=int, default=2, help="runs at a time, one thread each (default 2)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the verdict is NOT REPRODUCED")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run, e.g. train.lr=3e-3 "
                                                "(model.L / train.lr replace the regime rule)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("probe", help="signal propagation at initialisation over many seeds (forward only)",
                       description="Probe PaiNN at initialisation: painn-ablate probe model=original --seeds 100 "
                                   "--depths 2,3,4,5,6,7,8 --out probe_out")
    p.add_argument("overrides", nargs="*", help="key=value overrides; model=<preset>, ablate=<names>")
    p.add_argument("--seeds", type=int, default=100, help="model seeds 0..N-1 (default 100)")
    p.add_argument("--steps", type=int, default=0, help="also train K steps per seed and record each (default 0)")
    p.add_argument("--depths", help="comma-separated depths L to probe instead of model.L, e.g. 2,3,4,5,6,7,8")
    p.add_argument("--batches", type=int, default=25,
                   help="per seed, judge the initial network on its first N training batches (default 25; 0: off)")
    p.add_argument("--out", help="folder for probe.parquet and probe_seeds.parquet")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("report", help="write runs.md (the findings, from results/) or registry.md (raw runs)",
                       description="Two documents. Without paths: runs.md, the findings (verdicts, intervals, "
                                   "tables) from the committed trial tables in results/. With paths (or "
                                   "--study): registry.md, the registry of raw run folders, reproductions and "
                                   "sweeps, one row per run with its re-run command: painn-ablate report "
                                   "reproduce_out sweeps_out --plots plots")
    p.add_argument("paths", nargs="*", help="run directories or folders holding them, reproduce outputs, sweep "
                                            "folders (default: reproduce_out and sweeps_out where present)")
    p.add_argument("--study", action="append", help="an Optuna storage URL to include (repeatable)")
    p.add_argument("--out", help="the Markdown file to write (default runs.md for the findings, registry.md for "
                                 "the registry of paths)")
    p.add_argument("--plots", help="also write each section's figures as PNG into this folder and link them")
    p.add_argument("--results", help="write runs.md from the trial tables in this folder (default: results/ "
                                     "when no paths are given and it exists)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="turn sweep folders and probe folders into compact trial tables",
                       description="Write one trial-level parquet table per sweep (and probe.parquet for probe "
                                   "folders) into results/: painn-ablate export sweeps_out/map_original --out results")
    p.add_argument("sources", nargs="+", help="sweep folders (study.db) and `painn-ablate probe --out` folders")
    p.add_argument("--out", default=DEFAULT_RESULTS, help="folder for the tables (default results)")
    p.add_argument("--curves", action="store_true", help="also write <study>_curves.parquet per sweep: the loss "
                                                         "and per-layer max ||mu|| of every step (short sweeps)")
    p.add_argument("--test-errors", action="store_true", help="also write <study>_test_errors.parquet per sweep: "
                                                              "each trial's pos MSE per test system (for intervals "
                                                              "with the test set's sampling error)")
    p.set_defaults(func=cmd_export)
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may also follow the options (`sweep FILE --out DIR train.steps=3`): argparse
    # stops filling a positional list at the first option, so the rest come back as extras here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)  # finalized like Ctrl-C: the run records `interrupted`
    # Every CPU step allocates and frees the same large activations: let glibc keep them (10-15% of a
    # step on 2 threads; core.process). Process-wide, so the entry point sets it, not a run.
    keep_freed_memory()
    use_inductor_cache()  # one torch.compile cache for every run and sweep worker (they inherit it)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return code
    except BrokenPipeError:
        # The reader went away (`status DIR | head -1`): Python's recipe, stdout to devnull so that the
        # interpreter's final flush meets no pipe either; 141 = 128 + SIGPIPE, as a shell tool's exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except InputError as exc:
        print(f"painn-ablate: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("painn-ablate: interrupted; records up to now are in the run directory", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
