"""W&B sweeps: `painn-ablate sweep FILE --engine wandb`, the same sweep file run by W&B's own engine.

Two modes, chosen as every W&B run here is (`painn_ablate.training.sinks.wandb_mode`):

- online (an API key, or WANDB_MODE=online): `wandb.sweep` creates the sweep on the server
  and `wandb.agent` runs `agent_trial` for each run the server proposes. The server holds
  the state; its id is kept in `<out>/wandb_sweep.jsonl`, so re-running the command joins the
  same sweep, and `wandb agent <entity/project/id>` on other machines joins it too (they run
  the file's `command`, i.e. `painn-ablate train key=value ...`).
- offline (the default without a key): W&B's open-source engine (`sweeps.next_run`, the code
  the server runs) proposes each run from the file and the runs so far, so grid / random /
  bayes behave as on the server; every trial is logged as an offline W&B run in
  `<run_dir>/wandb/offline-run-*` (`wandb sync` uploads them later). One process: trials
  run one at a time (`--workers`, `--storage`, `--prune`, `--heartbeat` are the Optuna
  engine's). `early_terminate` (hyperband) acts on the server only.

Trials
------
A trial is what the Optuna engine's is (both take it from `painn_ablate.sweep.spec`): its parameters go through
`trial_overrides` (file's fixed values, the parameters, then the command-line overrides),
`name` is `trial_label` (`r2_full-s_msg-seed1`), `tracking.group` the sweep name, and it runs
`painn_ablate.training.trainer.run`. Run directory: `<out>/trials/<label>-t<number>` offline,
`<out>/trials/<label>-<W&B run id>` online (agents on several machines share no numbers).

The ledger (offline)
--------------------
`<out>/wandb_sweep.jsonl`, one JSON object per line, appended and fsync'ed as things happen:

    {"event": "sweep", "engine": "wandb-offline", "name": ..., "settings": {...}}   first line
    {"event": "start", "number": 3, "params": {...}, "label": ..., "run_dir": ..., "retry_of": null}
    {"event": "end", "number": 3, "state": "finished", "attrs": {"status": "stable", ...}, "wandb_run": ...}

It is the engine's whole state: re-running the command reads it and goes on; a finished
trial never runs again. A trial with a start and no end (its process was killed) or ended
`killed` (Ctrl-C) is run again first, with the same parameters, under a new number
(`retry_of`); the engine sees only the retry. `pandas.read_json(path, lines=True)` reads it.
A resumed sweep must have the same file and overrides (`Sweep.settings`); `--n-trials` may
grow. One process at a time per folder (a lock file).

Outcomes, as W&B run states
---------------------------
- stable -> `finished` with the metric (`metric.name`, the run summary's value).
- exploded (a NaN/Inf event) -> `finished` *without* the metric: a result, never an error.
  W&B's bayes engine then imputes it by the file's `metric.impute` (default `worst`: the
  worst value any finished run reached), as it does for a run that logged no finite value,
  so the search stays away from exploding regions. Decided here because the run's W&B
  summary may hold a finite validation MSE from before the explosion, and the Optuna engine
  scores an exploded trial worst too. Online the server reads the run as logged (history and
  summary), so an exploded run that validated before blowing up counts with that value.
- an exception -> `failed` with its one-line `error`; imputed alike; the sweep goes on.
Grid search, as on the server, runs each point once whatever its outcome.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from painn_ablate.core import runfolder
from painn_ablate.core.config import compose
from painn_ablate.core.outcome import Status
from painn_ablate.sweep import spec as sf
from painn_ablate.sweep.spec import Sweep, SweepError, pick_best
from painn_ablate.training.sinks import wandb_online

log = logging.getLogger(__name__)

LEDGER = "wandb_sweep.jsonl"
LOCK = ".wandb_sweep.lock"
ENGINE_OFFLINE, ENGINE_ONLINE = "wandb-offline", "wandb-online"
WANDB_SETTINGS = {"silent": True, "console": "off", "x_disable_stats": True}  # as the WandbSink's runs


online = wandb_online


def _sweeps_engine():
    """W&B's open-source sweep engine (the `sweeps` package)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydantic 2 on its pydantic-1 style model config
            import sweeps
    except ImportError:
        raise SweepError("the offline W&B engine needs W&B's sweep engine: pip install sweeps") from None
    return sweeps


# ----------------------------------------------------------------------------- the ledger


@dataclass
class Trial:
    """One trial of an offline W&B sweep, as the ledger tells it."""

    number: int
    params: dict[str, Any]  # the swept parameters
    label: str
    run_dir: str
    retry_of: Optional[int] = None  # the killed trial this one runs again
    state: str = "running"  # W&B's run state: running | finished | failed | killed
    attrs: dict[str, Any] = field(default_factory=dict)  # painn_ablate.sweep.spec.result_attrs, or status/error
    wandb_run: Optional[str] = None  # the offline W&B run folder

    @property
    def status(self) -> str:
        """running, stable, exploded, error or interrupted."""
        return str(self.attrs.get("status", self.state))


class Ledger:
    """The JSON-lines file holding an offline sweep's state; `append` writes and applies one event."""

    def __init__(self, path: Path):
        self.path = path
        self.header: Optional[dict] = None
        self.trials: dict[int, Trial] = {}
        if path.exists():
            self._read()

    def _read(self) -> None:
        for i, line in enumerate(self.path.read_text().splitlines()):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # torn by a kill mid-write: that event never happened
                log.warning("%s: line %d is incomplete; skipped", self.path, i + 1)
                continue
            self._apply(event)

    def _apply(self, event: dict) -> None:
        kind = event["event"]
        if kind == "sweep":
            self.header = event
        elif kind == "start":
            self.trials[event["number"]] = Trial(event["number"], event["params"], event["label"], event["run_dir"],
                                                 event.get("retry_of"))
        elif kind == "end":
            t = self.trials[event["number"]]
            t.state, t.attrs, t.wandb_run = event["state"], event["attrs"], event.get("wandb_run")

    def append(self, event: dict) -> None:
        line = json.dumps({**event, "time": dt.datetime.now().isoformat(timespec="seconds")}, default=str)
        with self.path.open("a+b") as f:  # appends go to the end whatever the read position
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # ends a line torn by a kill, so that it stays alone and is skipped
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._apply(event)

    def current(self) -> list[Trial]:
        """The trials that count, in order: a killed trial that was run again is left out."""
        retried = {t.retry_of for t in self.trials.values() if t.retry_of is not None}
        return [t for n, t in sorted(self.trials.items()) if n not in retried]


def check_header(ledger: Ledger, sweep: Sweep, engine: str) -> None:
    """A folder resumes only the sweep it was started with."""
    h = ledger.header
    if h.get("engine") != engine:
        raise SweepError(f"{ledger.path} belongs to an {h.get('engine')} sweep, not {engine}; "
                         "use another --out (or the WANDB_MODE it was started with)")
    sf.check_resume(sweep, f"{ledger.path} (sweep '{h.get('name')}')", h.get("settings"), h.get("name"))


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """One process per sweep folder: two would propose and run the same points."""
    with (out / LOCK).open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another painn-ablate process is running the sweep in {out}") from None
        yield


def check_usable(sweep: Sweep, out: Path) -> None:
    if (out / "study.db").exists():
        raise SweepError(f"{out} holds an Optuna sweep (study.db); give the W&B engine another --out")
    if not sf.trial_config(sweep, sf.check_points(sweep)[0]).tracking.wandb:
        raise SweepError("--engine wandb logs every trial to W&B; remove tracking.wandb=false or use --engine optuna")


def open_ledger(sweep: Sweep, out: Path, engine: str) -> Ledger:
    """The folder's ledger, started for this sweep or checked to belong to it."""
    ledger = Ledger(out / LEDGER)
    if ledger.header is None:
        ledger.append({"event": "sweep", "engine": engine, "name": sweep.name, "file": sweep.path,
                       "settings": sweep.settings()})
    else:
        check_header(ledger, sweep, engine)
    return ledger


# ----------------------------------------------------------------------------- W&B's engine, offline


def engine_config(sweep: Sweep) -> dict:
    """What W&B's engine reads of the file to propose a run: method, metric and parameters."""
    return {k: copy.deepcopy(sweep.raw[k]) for k in ("method", "metric", "parameters") if k in sweep.raw}


def all_params(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """Fixed and swept values: a W&B run's config holds both."""
    return {**{n: p.values[0] for n, p in sweep.params.items() if p.fixed}, **params}


def trial_table(sweep: Sweep, trials: list[Trial]):
    """The ledger's trials as rows with the columns of painn_ablate.sweep.studies.trial_rows that a frontier's
    analysis reads (preset, ablate, status, the frontier's attributes and every parameter), one row each."""
    import pandas as pd

    rows = []
    for t in trials:
        params = all_params(sweep, t.params)
        rows.append({"number": t.number, "label": t.label, "preset": params.get("model", "original"),
                     "ablate": params.get("ablate", "none"), **t.attrs, "status": t.status, **params})
    return pd.DataFrame(rows)


def as_sweep_run(sweep: Sweep, trial: Trial):
    """A ledger trial as W&B's engine sees a run: state, config, and the metric where it counts."""
    sweeps = _sweeps_engine()
    value = trial.attrs.get(sweep.metric) if trial.status == Status.STABLE else None
    summary = {sweep.metric: value} if value is not None and math.isfinite(value) else {}
    # By its alias: sweeps' pydantic-1 style config does not let pydantic 2 fill it by field name.
    return sweeps.SweepRun(name=trial.label, state=trial.state, summaryMetrics=summary,
                           config={k: {"value": v} for k, v in all_params(sweep, trial.params).items()})


def _plain(value: Any) -> Any:
    """numpy scalars from the engine as Python values (their repr is not a config value)."""
    return value.item() if hasattr(value, "item") else value


def propose(sweep: Sweep, trials: list[Trial]) -> Optional[dict[str, Any]]:
    """The next parameters from W&B's engine; None when a grid is exhausted."""
    sweeps = _sweeps_engine()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the Gaussian process's fitting notes; nothing a user can act on
            run = sweeps.next_run(engine_config(sweep), [as_sweep_run(sweep, t) for t in trials])
    except ValueError as exc:
        raise SweepError(f"{sweep.path}: W&B's sweep engine refused it: {str(exc).splitlines()[0]}") from None
    if run is None:
        return None
    return {name: _plain(run.config[name]["value"]) for name in sweep.swept}


def next_params(sweep: Sweep, ledger: Ledger, total: Optional[int]) -> Optional[tuple[dict, Optional[int]]]:
    """(parameters, retry_of) of the next trial, or None when the sweep is done.

    A killed trial goes first, with its own parameters; then grid points until W&B's engine
    has none left, or random/bayes proposals until `total` trials exist.
    """
    trials = ledger.current()
    for t in trials:
        if t.state in ("running", "killed"):
            return t.params, t.number
    if sweep.method != "grid" and len(trials) >= total:
        return None
    params = propose(sweep, trials)
    return None if params is None else (params, None)


# ----------------------------------------------------------------------------- one trial, offline


def run_trial(sweep: Sweep, ledger: Ledger, out: Path, params: dict[str, Any], retry_of: Optional[int]) -> Trial:
    """Train one trial with its W&B run (offline) and record its outcome in the ledger."""
    from painn_ablate.training.trainer import run  # torch and the model load only where trials run

    number = len(ledger.trials)
    label = sf.trial_label(sweep, params)
    run_dir = runfolder.trial_dir(out, label, number)
    ledger.append({"event": "start", "number": number, "params": params, "label": label, "run_dir": str(run_dir),
                   "retry_of": retry_of})
    log.info("trial %d (%s) starts in %s", number, label, run_dir)
    end = {"event": "end", "number": number}
    try:
        summary = run(sf.trial_config(sweep, params, run_dir, label))
    except KeyboardInterrupt:
        with sf.signals_ignored():  # a second Ctrl-C must not tear the record of the first
            ledger.append({**end, "state": "killed", "attrs": {"status": "interrupted"}})
        raise
    except Exception as exc:  # a real error: the trial failed, the sweep goes on
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("trial %d (%s) failed: %s", number, label, error)
        ledger.append({**end, "state": "failed", "attrs": {"status": "error", "error": error}})
    else:
        offline = sorted((run_dir / "wandb").glob("offline-run-*"))
        ledger.append({**end, "state": "finished", "attrs": sf.result_attrs(summary),
                       "wandb_run": str(offline[-1]) if offline else None})
    return ledger.trials[number]


# ----------------------------------------------------------------------------- the sweep, offline


@dataclass
class OfflineSweep:
    """Where an offline W&B sweep stands."""

    name: str
    metric: str
    goal: str
    total: int  # grid size or number of trials
    trials: list[Trial]  # those that count, in order
    ran: int = 0  # trials run by this call

    @property
    def done(self) -> int:
        return sum(t.state in ("finished", "failed") for t in self.trials)

    @property
    def exploded(self) -> int:
        return sum(t.status == Status.EXPLODED for t in self.trials)

    @property
    def diverged(self) -> int:
        return sum(t.status == Status.DIVERGED for t in self.trials)

    @property
    def transient(self) -> int:
        return sum(t.status == Status.TRANSIENT for t in self.trials)

    @property
    def errors(self) -> int:
        return sum(t.state == "failed" for t in self.trials)

    @property
    def best(self) -> Optional[Trial]:
        """The best trial by the metric (sweep_file.pick_best: stable, with a finite value)."""
        return pick_best(((t, t.status, t.attrs.get(self.metric)) for t in self.trials), self.goal)


def run_offline(sweep: Sweep, out: Optional[Path] = None, n_trials: Optional[int] = None,
                threads: Optional[int] = None, on_trial: Optional[Callable[[Trial], None]] = None,
                on_start: Optional[Callable[[OfflineSweep], None]] = None) -> OfflineSweep:
    """Run (or resume) the sweep with W&B's engine in this process until no trial is left.

    n_trials: trials of a random/bayes sweep (default: the file's run_cap, else 20).
    on_start(state) is called once before the first trial, on_trial(trial) after each.
    """
    sf.check_run_options(sweep, n_trials, threads)
    out = Path(out) if out is not None else sf.default_out(sweep.path)
    out.mkdir(parents=True, exist_ok=True)
    total = sf.trial_budget(sweep, n_trials)
    check_usable(sweep, out)
    if "early_terminate" in sweep.raw:
        log.warning("early_terminate acts on the W&B server only; offline every trial runs to its end")
    with exclusive(out):
        ledger = open_ledger(sweep, out, ENGINE_OFFLINE)
        sf.warm_data_cache(sweep)  # bad data fails here, before any trial
        if on_start is not None:
            on_start(OfflineSweep(sweep.name, sweep.metric, sweep.goal, total, ledger.current()))
        ran = 0
        with sf.torch_threads(threads):
            while (nxt := next_params(sweep, ledger, total)) is not None:
                trial = run_trial(sweep, ledger, out, *nxt)
                ran += 1
                if on_trial is not None:
                    on_trial(trial)
        return OfflineSweep(sweep.name, sweep.metric, sweep.goal, total, ledger.current(), ran)


# ----------------------------------------------------------------------------- online


def wandb_sweep_config(sweep: Sweep, n_trials: Optional[int]) -> dict:
    """The file as W&B's server gets it: the command-line overrides become fixed parameters.

    The server locks its parameters in each run's config (a later update is ignored), and
    `wandb agent` on another machine knows only the file: both must see the overrides.
    A random/bayes sweep gets `run_cap` = --n-trials, else the file's, else 20. painn-ablate's own keys
    (`frontier`) are left out: W&B's engine runs every rung of a frontier.
    """
    config = {k: v for k, v in copy.deepcopy(sweep.raw).items() if k not in sf.OWN_KEYS}  # W&B's schema refuses them
    cfg = compose(sf.trial_overrides(sweep, sf.check_points(sweep)[0]))  # typed values, as the trials get them
    for item in sweep.overrides:
        key, text = item.split("=", 1)
        value = text if key == "model" else OmegaConf.select(cfg, key)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        if value is not None:  # `wandb agent` would pass None as the string 'None'
            config["parameters"][key] = {"value": value}
    if sweep.method != "grid":
        config["run_cap"] = sf.trial_budget(sweep, n_trials)
    config["name"] = sweep.name
    return config


def agent_trial(sweep: Sweep, out: Path) -> None:
    """What `wandb.agent` calls for each run: the run the agent made is the trial's W&B run.

    `wandb.init()` here becomes the agent's run and holds the proposed parameters; the
    trial's WandbSink logs into it (see `tracking.WandbSink.start`) instead of starting one.
    """
    import wandb

    from painn_ablate.training.trainer import run

    agent_run = wandb.init(group=sweep.name, dir=str(out), settings=wandb.Settings(**WANDB_SETTINGS))
    params = {name: agent_run.config[name] for name in sweep.swept}
    label = sf.trial_label(sweep, params)
    run(sf.trial_config(sweep, params, runfolder.trial_dir(out, label, agent_run.id), label))


def run_online(sweep: Sweep, out: Optional[Path] = None, n_trials: Optional[int] = None,
               threads: Optional[int] = None) -> str:
    """Create the sweep on W&B (or join the one this folder started) and run an agent; returns its path.

    The agent runs until the server has nothing left for it: the grid is done, or run_cap
    runs exist. The server holds the trials' state; the ledger here holds only the sweep's id.
    """
    import wandb

    sf.check_run_options(sweep, n_trials)
    out = Path(out) if out is not None else sf.default_out(sweep.path)
    out.mkdir(parents=True, exist_ok=True)
    check_usable(sweep, out)
    tracking = sf.trial_config(sweep, sf.check_points(sweep)[0]).tracking
    config = wandb_sweep_config(sweep, n_trials)
    with exclusive(out):  # only while the sweep is made: agents in one folder may run side by side
        ledger = Ledger(out / LEDGER)
        if ledger.header is None:
            sf.warm_data_cache(sweep)
            try:
                sweep_id = wandb.sweep(sweep=config, project=tracking.project, entity=tracking.entity)
            except Exception as exc:  # no network, bad key, a config the server refuses: one line
                raise SweepError(f"W&B did not create the sweep: {' '.join(str(exc).split())[:300]}") from None
            ledger.append({"event": "sweep", "engine": ENGINE_ONLINE, "name": sweep.name, "file": sweep.path,
                           "settings": sweep.settings(), "sweep_id": sweep_id, "project": tracking.project,
                           "entity": tracking.entity, "run_cap": config.get("run_cap")})
        else:
            check_header(ledger, sweep, ENGINE_ONLINE)
            if config.get("run_cap") != ledger.header.get("run_cap"):
                raise SweepError(f"the W&B sweep of {out} has run_cap {ledger.header.get('run_cap')}; change it "
                                 "on W&B (wandb sweep --update) or choose another --out")
        h = ledger.header
    path = "/".join(p for p in (h.get("entity"), h.get("project"), h["sweep_id"]) if p)
    with sf.torch_threads(threads):
        wandb.agent(h["sweep_id"], function=lambda: agent_trial(sweep, out), entity=h.get("entity"),
                    project=h.get("project"), count=config.get("run_cap"))
    return path


# ----------------------------------------------------------------------------- W&B's schema

# Keys W&B's server documents and accepts that the open-source `sweeps` package's JSON schema rejects.
SERVER_ONLY_KEYS = {"run_cap": "the most runs a sweep makes"}


def schema_check(raw: dict) -> tuple[list[str], list[str]]:
    """A sweep file against W&B's sweep schema (the `sweeps` package's): (violations, notes).

    Keys only W&B's server accepts (SERVER_ONLY_KEYS) are left out of the schema check and named
    in the notes instead of failing it.
    """
    _sweeps_engine()  # imported quietly, with its error message when missing
    from sweeps.config.cfg import schema_violations_from_proposed_config

    notes = [f"'{key}' is accepted by W&B's server ({what}) but not by the open-source sweeps schema"
             for key, what in SERVER_ONLY_KEYS.items() if key in raw]
    notes += [f"'{key}' is painn-ablate's own (W&B's engine runs every rung of the frontier; the Optuna engine walks it)"
              for key in sf.OWN_KEYS if key in raw]
    checked = {k: v for k, v in raw.items() if k not in SERVER_ONLY_KEYS and k not in sf.OWN_KEYS}
    try:
        violations = schema_violations_from_proposed_config(copy.deepcopy(checked))
    except ValueError as exc:
        violations = [str(exc)]
    return [" ".join(v.split()) for v in violations], notes


def agent_arguments(sweep: Sweep, params: dict[str, Any]) -> list[str]:
    """The `key=value` words W&B's agent passes for ${args_no_hyphens}: the file's fixed values and the
    run's parameters, each value formatted by Python's str (None, True, [1, 2] as such)."""
    fixed = {name: p.values[0] for name, p in sweep.params.items() if p.fixed}
    return [f"{name}={value}" for name, value in {**fixed, **params}.items()]
