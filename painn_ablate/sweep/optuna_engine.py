"""The Optuna engine: a W&B sweep file run by Optuna. `painn-ablate sweep sweeps/stabilizers.yaml`.

The file format (parameters, metrics, checks) is `painn_ablate.sweep.spec`.

Engine
------
- Storage: any Optuna RDB URL; default SQLite `<out>/study.db`. SQLite runs every
  transaction as BEGIN IMMEDIATE (see `_serialize_sqlite`: without it Optuna's
  WAITING -> RUNNING update is not atomic on SQLite), in WAL mode with a 60 s lock timeout,
  so that a few local workers share it. `postgresql://` uses psycopg2 (the `postgres`
  extra). Study name: `name:` in the file, else the file's stem. State lives in the
  storage: re-running the same command resumes it. A study remembers its file and
  overrides; resuming it with others is refused.
- grid: the process that creates the study (creation is atomic in the storage) enqueues
  every grid point once as a WAITING trial, then marks the study ready; every worker, on
  any machine, only pops WAITING trials (WAITING -> RUNNING is an atomic update in the
  storage) and never asks the sampler for a new one. So no point runs twice and none is
  lost, with any number of workers. (Optuna's GridSampler hands out duplicates under
  concurrency near the end of the grid, as its documentation says.)
- random -> RandomSampler, bayes -> TPESampler (constant liar for parallel workers) with
  the constraint "no NaN/Inf event": trials are asked until `n_trials` trials exist
  (`--n-trials`, else the file's `run_cap`, else 20); concurrent workers may overshoot by
  at most one trial each.
- Heartbeat: each running trial records a heartbeat every `heartbeat` seconds (default
  20); a trial whose heartbeat is older than 3 x that (a worker killed by SIGKILL, a
  machine lost) is failed by whichever worker looks next and re-enqueued with the same
  parameters (`RetryHeartbeatStaleTrialCallback`, up to 3 times). Workers with nothing
  left to run wait while other trials are still running, so a resumed sweep re-runs a
  killed trial as soon as its heartbeat is stale. Ctrl-C re-enqueues the current trial.
- Workers: `workers=1` runs trials in this process; `workers=K` starts K spawned processes
  with cpu_count/K torch threads each (`threads` to choose). Several machines join one study through a shared
  PostgreSQL URL (`--storage postgresql://...`); each writes run directories under its
  own `out`.

Trials
------
A trial composes its config from: `tracking.progress=false` (the sweep shows its own
progress), the file's fixed values, the trial's parameters, then the command-line
overrides; `out` is `<out>/trials/<label>-t<number>` (unique per trial number, so a re-run
never meets the partial directory of a killed attempt), `name` is the label (e.g.
`r2_full-s_msg-seed1`, `original+g-seed0`, `r2_full-seed0`), `tracking.group` the study name. It
runs `painn_ablate.training.trainer.run`, the code of `painn-ablate train`.

User attributes of every trial: label, run_dir, status (painn_ablate.core.outcome.Status: 'running',
'stable', 'transient', 'diverged', 'exploded', 'pruned', 'error', 'interrupted'), first_nonfinite and
first_divergence (dicts or None), episodes, recovered, spikes, spike_steps, steps_to_recover (per episode),
sustained, blow_up_phase (init | training: the first blow-up's, outcome.Phase), val_pos_mse,
val_vel_mse, test_pos_mse, test_vel_mse, steps_completed, early_warning_step, pruned_step,
wall_seconds, error (for 'error'), worker (host:pid) and attempt (the trial's number, set
once its first heartbeat is recorded).

Outcomes: stable -> COMPLETE with the metric's value. Diverged -> COMPLETE with the metric's
value where it is finite (else the worst), exploded -> COMPLETE with the worst value (+inf when
minimising, -inf when maximising): results, never failures; a blow-up's Optuna constraint
`blow_up` is +1 (infeasible, for TPE and the dashboard; never the best trial), -1 for a stable
trial. With `prune=True` a trial whose monitoring early warning fires is stopped there -> PRUNED,
status 'pruned', pruned_step (a censored run, counted as neither outcome). A trial that raises ->
FAIL with its error kept in `error`; the sweep goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from painn_ablate.core import runfolder
from painn_ablate.core.config import STABILIZER_KEYS
from painn_ablate.core.outcome import WITH_METRIC, Status, is_blow_up, outcome_columns
from painn_ablate.core.process import keep_freed_memory, use_inductor_cache
from painn_ablate.sweep.progress import Progress, originals, progress, sweep_total
from painn_ablate.sweep.spec import (
    Sweep,
    SweepError,
    check_resume,
    check_run_options,
    default_out,
    grid_points,
    result_attrs,
    signals_ignored,
    torch_threads,
    trial_budget,
    trial_config,
    trial_label,
    warm_data_cache,
)
from painn_ablate.sweep.storage import (
    DEFAULT_HEARTBEAT,
    GRACE_FACTOR,
    open_storage,
    quiet_optuna,
    sqlite_url,
)
from painn_ablate.sweep.walk import trains, walk_key, walk_next, walk_starts
from painn_ablate.sweep.words import outcome_note

log = logging.getLogger(__name__)


# The config values every trial records as user attributes, swept or fixed: what it was (preset, design,
# cell, seed) and every stabilizer's resolved value, so that a study read without the run folders (from
# PostgreSQL on another machine) still says what each trial ran.
TRIAL_KEYS = ("model.preset", "ablate", "seed", "model.L", "model.F", "train.lr", "train.steps", *STABILIZER_KEYS)


# ----------------------------------------------------------------------------- the file format

READY_TIMEOUT = 120  # seconds a joining worker waits for the creator to enqueue the grid
CONSTRAINT = "blow_up"  # the trials' Optuna constraint: > 0 for a blow-up (transient, diverged or exploded)
# log10 of the objective, a user attribute optuna-dashboard can plot and sort: one diverged trial at 6e7
# no longer flattens the others (the History plot's own log scale drops nothing either, but is per view)
LOG_VALUE = "log10_value"


STUDY_NOTE = f"""## Reading this study

Every finished trial is *Complete* to Optuna: a blow-up is a result, not a failure. Its outcome is in

- the trial's **note** (stable, diverged or exploded; what fired and where),
- the user attributes `blew_up`, `diverged`, `exploded` (0/1) and `{LOG_VALUE}`: choose them as the
  History plot's *y Axis* (an exploded trial's value is inf, which no plot draws; one diverged trial's
  value can flatten the rest on a linear axis),
- the constraint `{CONSTRAINT}` (> 0: infeasible, never the best trial).
"""


def note(trial, body: str) -> None:
    """A trial's or the study's note in optuna-dashboard (its `save_note`; nothing where the `dashboard`
    extra is absent)."""
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    try:
        save_note(trial, body)
    except Exception as exc:  # noqa: BLE001 - a note is a courtesy; the trial's result must be told
        log.warning("optuna-dashboard note not saved (%s)", exc)


def suggest(trial: optuna.Trial, sweep: Sweep) -> dict[str, Any]:
    """The trial's parameters; enqueued (grid, re-run) trials return their fixed values."""
    params = {}
    for name, p in sweep.swept.items():
        if p.kind == "categorical":
            params[name] = trial.suggest_categorical(name, list(p.values))
        elif p.kind == "int_uniform":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high))
        elif p.kind == "log_uniform_values":
            params[name] = trial.suggest_float(name, p.low, p.high, log=True)
        elif p.kind == "q_uniform":
            params[name] = trial.suggest_float(name, p.low, p.high, step=p.q)
        else:
            params[name] = trial.suggest_float(name, p.low, p.high)
    return params


# ----------------------------------------------------------------------------- storage and study


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    if sweep.method == "bayes":
        # TPE reads each trial's constraints (CONSTRAINT, set when the trial ends) by itself.
        with quiet_optuna():
            return optuna.samplers.TPESampler(constant_liar=True)
    # grid: every trial is enqueued with all its parameters, so the sampler is never asked.
    return optuna.samplers.RandomSampler()


def _wait_until_ready(study: optuna.Study, sweep: Sweep) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while "ready" not in study.user_attrs:
        if time.monotonic() > deadline:
            raise SweepError(f"study '{sweep.name}' exists but was never marked ready (its creator died while "
                             "enqueueing?); delete it or use another name")
        time.sleep(1.0)


def prepare_study(sweep: Sweep, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study (and enqueue the grid) or join it; refuse a study made by other settings."""
    try:
        study = optuna.create_study(study_name=sweep.name, storage=storage, sampler=make_sampler(sweep),
                                    direction=sweep.direction, load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=make_sampler(sweep))
        _wait_until_ready(study, sweep)
        _check_same_settings(study, sweep)
        log.info("joined study %s (%d trials so far)", sweep.name, len(study.trials))
        return study
    study.set_user_attr("settings", sweep.settings())
    study.set_user_attr("sweep_file", sweep.raw)
    note(study, STUDY_NOTE)
    if sweep.method == "grid":
        points = grid_points(sweep)
        starts = walk_starts(sweep) if sweep.frontier else points
        for params in starts:
            _enqueue(study, sweep, params, points)
        study.set_user_attr("grid_size", len(points))  # a frontier's walks run at most this many
        log.info("created study %s: %d of %d grid points enqueued%s", sweep.name, len(starts), len(points),
                 f" (the first rung of each walk up {sweep.frontier})" if sweep.frontier else "")
    study.set_user_attr("ready", True)
    return study


def _enqueue(study: optuna.Study, sweep: Sweep, params: dict, points: Optional[list[dict]] = None) -> None:
    points = points if points is not None else grid_points(sweep)
    study.enqueue_trial(params, user_attrs={"label": trial_label(sweep, params), "grid_index": points.index(params)})


def advance_walks(study: optuna.Study, sweep: Sweep, only: Optional[dict] = None) -> None:
    """A frontier sweep's walks (sweep_file.walk_next): enqueue the next rung of every walk whose trials
    have all finished (`only`: of the walk of these parameters alone, which a worker does after its trial;
    all of them when a sweep starts or resumes, which also repairs a walk its worker died advancing)."""
    if not sweep.frontier:
        return
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    walks: dict[str, list] = {}
    for t in trials:
        if t._trial_id not in retried:  # a lost or interrupted trial's re-run stands in for it
            # a WAITING trial has no params yet, only those it was enqueued with: without them a resumed sweep
            # saw no waiting rung in any walk and enqueued every walk's next rung a second time
            params = t.params or t.system_attrs.get("fixed_params") or {}
            walks.setdefault(walk_key(sweep, params), []).append(t)
    wanted = None if only is None else walk_key(sweep, only)
    for key, trials in walks.items():
        if (wanted is not None and key != wanted) or any(t.state in (TrialState.WAITING, TrialState.RUNNING)
                                                           for t in trials):
            continue
        ran = [(t.params, t.state == TrialState.COMPLETE and trains(t.user_attrs)) for t in trials]
        following = walk_next(sweep, ran)
        if following is not None:
            _enqueue(study, sweep, following)


def _check_same_settings(study: optuna.Study, sweep: Sweep) -> None:
    check_resume(sweep, f"study '{sweep.name}'", study.user_attrs.get("settings"))


# ----------------------------------------------------------------------------- one trial


def stop_when_exploding(step: int, info: dict) -> Optional[str]:
    """The pruner: stop a run once the monitoring early warning fires."""
    signal_ = info.get("signal")
    return "early_warning" if signal_ and signal_.get("fires") else None


def objective_value(sweep: Sweep, attrs: dict) -> float:
    value = attrs.get(sweep.metric)
    if attrs["status"] not in WITH_METRIC or value is None or not math.isfinite(value):
        return sweep.worst
    return float(value)


class Heartbeat:
    """Records the trial's heartbeat every `interval` seconds while the trial runs."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while not self.stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # a missed beat is survivable; the grace period is several beats
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, exc)
            self.stop.wait(self.interval)

    def __enter__(self) -> "Heartbeat":
        self.storage.record_heartbeat(self.trial_id)  # at once: a trial without one is never found stale
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def requeue(study: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
    """Give an interrupted trial back: FAIL it and enqueue its re-run, as a lost heartbeat would."""
    try:
        storage.set_trial_user_attr(trial_id, "status", "interrupted")
        if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            callback = storage.get_heartbeat_stale_trial_callback()
            if callback is not None:
                callback(study, storage.get_trial(trial_id))
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def run_trial(study: optuna.Study, trial: optuna.Trial, sweep: Sweep, out: Path, prune: bool,
              storage: optuna.storages.RDBStorage) -> FrozenTrial:
    """Train one trial and record its outcome in the storage (see the module docstring)."""
    from painn_ablate.training.trainer import NoSpaceError, no_space, run  # torch loads only where trials run

    trial_id = trial._trial_id  # Optuna has no public accessor; heartbeats are keyed by it
    params = suggest(trial, sweep)
    label = trial_label(sweep, params)
    run_dir = runfolder.trial_dir(out, label, trial.number)
    try:
        with Heartbeat(storage, trial_id, storage.heartbeat_interval):
            # `attempt` (this trial's own number, also on a re-run that copied the attributes of
            # the lost one) says the first heartbeat is recorded; see fail_lost_trials.
            for key, value in (("attempt", trial.number), ("label", label), ("run_dir", str(run_dir)),
                               ("status", "running"), ("worker", f"{os.uname().nodename}:{os.getpid()}")):
                trial.set_user_attr(key, value)
            cfg = trial_config(sweep, params, run_dir, label)
            for key in TRIAL_KEYS:  # the resolved values, for readers of the study without the run folder
                trial.set_user_attr(key, OmegaConf.select(cfg, key))
            log.info("trial %d (%s) starts in %s", trial.number, label, run_dir)
            summary = run(cfg, should_stop=stop_when_exploding if prune else None)
    except KeyboardInterrupt:
        with signals_ignored():  # a second Ctrl-C must not cut the trial's return short
            requeue(study, storage, trial_id)
        raise
    except Exception as exc:
        if isinstance(exc, NoSpaceError) or no_space(exc):
            # A full disk fails every trial alike: stop the sweep, give this trial back (where the storage
            # still takes a write; else its heartbeat goes stale and a resumed sweep re-runs it).
            with contextlib.suppress(Exception):
                requeue(study, storage, trial_id)
            raise NoSpaceError(f"{out}: no space left on device (trial {trial.number}, {run_dir.name}); free "
                               "space and run the same command to resume") from None
        # a real error: FAIL with its message, and the sweep goes on
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("trial %d (%s) failed: %s", trial.number, label, error)
        return _finish(study, storage, trial, {"status": "error", "error": error}, state=TrialState.FAIL)
    attrs = result_attrs(summary)
    if attrs["status"] == Status.PRUNED:
        return _finish(study, storage, trial, attrs, state=TrialState.PRUNED)
    return _finish(study, storage, trial, attrs, value=objective_value(sweep, attrs))


def _finish(study: optuna.Study, storage: optuna.storages.BaseStorage, trial: optuna.Trial, attrs: dict,
            state: TrialState = TrialState.COMPLETE, value: Optional[float] = None) -> FrozenTrial:
    try:
        for key, v in attrs.items():
            trial.set_user_attr(key, v)
        if state != TrialState.FAIL:  # feasible (<= 0) means no NaN/Inf event
            blown = 1.0 if is_blow_up(attrs["status"]) else -1.0
            trial.set_constraint(CONSTRAINT, blown)
            # optuna-dashboard (0.21) reads only Optuna's older list form of the constraints: the same value
            # there shows the trial as infeasible in its plots (Optuna reads both forms)
            study._storage.set_trial_system_attr(trial._trial_id, "constraints", [blown])
        if state != TrialState.FAIL:  # numbers optuna-dashboard sorts and plots (History's y axis)
            for key, flag in outcome_columns(attrs["status"]).items():
                trial.set_user_attr(key, int(flag))
        if value is not None and math.isfinite(value) and value > 0:  # absent otherwise: a null is not sortable
            trial.set_user_attr(LOG_VALUE, math.log10(value))
        note(trial, outcome_note(attrs))
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker declared this trial lost (its heartbeat was late) and enqueued a re-run.
        log.warning("trial %d was declared lost while it ran; its re-run stands", trial.number)
    return storage.get_trial(trial._trial_id)


# ----------------------------------------------------------------------------- workers


@dataclass
class WorkerSettings:
    """What a worker process needs besides the sweep: plain data, so that it pickles."""

    storage_url: str
    out: str
    n_trials: Optional[int]
    prune: bool = False
    heartbeat: int = DEFAULT_HEARTBEAT
    threads: Optional[int] = None  # torch threads; None: torch's default
    log_level: int = logging.WARNING


def pop_waiting(study: optuna.Study, storage: optuna.storages.BaseStorage) -> Optional[optuna.Trial]:
    """Take one WAITING trial, the first in the grid's order (a re-run keeps its trial's place); the
    WAITING -> RUNNING update succeeds for exactly one worker. Grid order, not the order they were enqueued:
    a frontier walk's next rung, enqueued when its previous rung ends, goes before the first rung of a later
    walk, so the walks complete in the sweep file's order and a sweep stopped at a deadline holds whole walks
    of its first variants instead of the lowest rungs of every walk."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for frozen in sorted(waiting, key=lambda t: (t.user_attrs.get("grid_index", -1), t.number)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def next_trial(study: optuna.Study, storage, sweep: Sweep, n_trials: Optional[int]) -> Optional[optuna.Trial]:
    if sweep.method == "grid":
        return pop_waiting(study, storage)
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials) or originals(trials) < trial_budget(sweep, n_trials):
        with quiet_optuna():
            return study.ask()  # pops a WAITING re-run first, else samples a new trial
    return None


def fail_lost_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fail (and re-enqueue) running trials whose worker stopped sending heartbeats."""
    with quiet_optuna():
        optuna.storages.fail_stale_trials(study)
    # A worker killed between taking a trial and its first heartbeat leaves a RUNNING trial
    # that heartbeats can never find stale; `attempt` is set only after the first heartbeat.
    grace = dt.timedelta(seconds=GRACE_FACTOR * storage.heartbeat_interval)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start
        if t.user_attrs.get("attempt") != t.number and started and dt.datetime.now() - started > grace:
            log.warning("trial %d never sent a heartbeat; re-enqueueing it", t.number)
            requeue(study, storage, t._trial_id)


def work(sweep: Sweep, settings: WorkerSettings, on_trial_end: Optional[Callable[[FrozenTrial], None]] = None) -> int:
    """One worker: run trials of the study until none is left; returns how many it ran.

    With nothing to take but trials still running elsewhere, it waits and checks their
    heartbeats, so that it re-runs one whose worker died.
    """
    storage = open_storage(settings.storage_url, settings.heartbeat)
    study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=make_sampler(sweep))
    out = Path(settings.out)
    ran = 0
    while True:
        fail_lost_trials(study, storage)
        trial = next_trial(study, storage, sweep, settings.n_trials)
        if trial is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                return ran
            time.sleep(min(settings.heartbeat, 5))
            continue
        frozen = run_trial(study, trial, sweep, out, settings.prune, storage)
        advance_walks(study, sweep, only=frozen.params)
        ran += 1
        if on_trial_end is not None:
            on_trial_end(frozen)


def _interrupt_once(signum, frame):
    # Ctrl-C reaches the workers and their parent, whose terminate() follows with SIGTERM:
    # only the first signal may interrupt, so that the trial is given back whole.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def _worker_process(sweep: Sweep, settings: WorkerSettings) -> None:
    """Entry point of a spawned worker process."""
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s[%(process)d]: %(message)s")
    optuna.logging.set_verbosity(max(settings.log_level, logging.WARNING))
    for sig in (signal.SIGINT, signal.SIGTERM):  # terminate() gives the trial back like Ctrl-C
        signal.signal(sig, _interrupt_once)
    keep_freed_memory()  # a spawned process starts with glibc's defaults
    use_inductor_cache()  # the one shared torch.compile cache, also when the sweep was started from Python
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    try:
        work(sweep, settings)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        from painn_ablate.training.trainer import no_space

        if not no_space(exc):
            raise
        log.error("%s", str(exc).splitlines()[0] if "no space" in str(exc) else
                  f"{settings.out}: no space left on device; free space and run the same command to resume")
        sys.exit(2)


# ----------------------------------------------------------------------------- progress


# ----------------------------------------------------------------------------- the sweep


def run_sweep(sweep: Sweep, out: Optional[Path] = None, storage_url: Optional[str] = None, workers: int = 1,
              n_trials: Optional[int] = None, prune: bool = False, heartbeat: int = DEFAULT_HEARTBEAT,
              threads: Optional[int] = None, on_progress: Optional[Callable[[Progress], None]] = None,
              poll: float = 2.0) -> Progress:
    """Run (or resume, or join) the sweep until no trial is left; returns the final progress.

    threads: torch threads per worker; None: cpu_count / workers (torch's default for one worker).
    on_progress(Progress) is called at the start, after each finished trial and, with
    several workers, every `poll` seconds.
    """
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    check_run_options(sweep, n_trials, threads)
    if heartbeat < 1:
        raise SweepError(f"--heartbeat must be >= 1 second, got {heartbeat}")
    out = Path(out) if out is not None else default_out(sweep.path)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url or sqlite_url(out)
    storage = open_storage(url, heartbeat)
    warm_data_cache(sweep)  # bad data fails here, before the study exists
    study = prepare_study(sweep, storage)
    advance_walks(study, sweep)  # a resumed frontier sweep: walks whose worker died advancing them
    total = sweep_total(sweep, study, n_trials)
    default_steps = sweep_steps(sweep)
    report = (lambda *_: on_progress(progress(study, total, default_steps))) if on_progress else (lambda *_: None)
    report()
    settings = WorkerSettings(storage_url=url, out=str(out), n_trials=total if sweep.method != "grid" else None,
                              prune=prune, heartbeat=heartbeat, log_level=logging.getLogger().getEffectiveLevel())
    if workers == 1:
        with torch_threads(threads):
            work(sweep, settings, on_trial_end=report)
    else:
        settings.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        _run_processes(sweep, settings, workers, report, poll)
    final = progress(study, total, default_steps)
    report()
    return final


def sweep_steps(sweep: Sweep) -> Optional[int]:
    """The training steps of a trial where no parameter sets them (train.epochs: their steps)."""
    from painn_ablate.sweep.spec import check_points, trial_config

    cfg = trial_config(sweep, check_points(sweep, every_value=True)[0])
    if cfg.train.epochs is not None:
        return cfg.train.epochs * math.ceil(cfg.data.n_train / cfg.train.batch_size)
    return int(cfg.train.steps)


def _run_processes(sweep: Sweep, settings: WorkerSettings, workers: int, report: Callable, poll: float) -> None:
    ctx = multiprocessing.get_context("spawn")  # fork after torch/SQLAlchemy setup is not safe
    procs = [ctx.Process(target=_worker_process, args=(sweep, settings), name=f"sweep-worker-{i}")
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=poll / len(procs))
            report()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()  # each worker gives its trial back (SIGTERM -> KeyboardInterrupt)
        for p in procs:
            p.join()
        raise
    crashed = [p.exitcode for p in procs if p.exitcode]
    if crashed:
        log.warning("%d worker(s) exited with codes %s; their trials re-run when resumed", len(crashed), crashed)
