"""Runs, sweeps and W&B projects as pandas DataFrames, and the plots the notebooks share.

Loaders take a single run directory, a folder searched recursively for run directories
(any folder holding `summary.json`: `runs/`, `reproduce_out/`, a sweep's `sweeps_out/<name>/`),
or a list of such paths:

    load_runs(path)          one row per run: flattened config + flattened summary
    load_metrics(path)       metrics.parquet of every run (long in step)
    load_layer_stats(path)   layer_stats.parquet of every run: step, layer, block, stat, value
    load_events(path)        events.parquet of every run
    load_study(storage)      one row per Optuna trial: params, user attributes, run config
    load_wandb(project)      one row per W&B run, the same columns as load_runs

Column names are the ones used everywhere else: config keys as `config.flatten` spells
them (`model.stabilizers.s_msg`), metrics as in W&B and the trials' user attributes
(`val_pos_mse`, `test_pos_mse`), nested summary fields joined with dots
(`first_nonfinite.step`, `first_nonfinite.layer`, `last_finite_stats.mu_norm_max.5`).
The long tables carry `run_dir`, `name`, `experiment` and `seed` to join on.

`experiment` names what a run tests: its preset, with an ablation written as what it
does: `r2_full - s_msg` (leave-one-out: R2_full without the message saturation),
`original + alpha` (add-one-in: the original with residual scaling only).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from painn_ablate.analysis.stats import wilson
from painn_ablate.core import names, runfolder
from painn_ablate.core.config import STABILIZER_KEYS, experiment_name, flatten
from painn_ablate.core.errors import AnalysisError
from painn_ablate.core.outcome import (  # noqa: F401
    METRIC_SPLITS,
    OUTCOMES,
    SPLIT_METRICS,
    Phase,
    RunSummary,
    Status,
    first_blow_up,
    is_blow_up,
    is_sustained,
    metric_name,
    outcome_columns,
)
from painn_ablate.core.rerun import BOOKKEEPING_KEYS
from painn_ablate.sweep.spec import SweepError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Paths = Union[PathLike, Sequence[PathLike]]

ID_COLUMNS = ("run_dir", "name", "experiment", "seed")  # carried by every long table
# Nested summary fields that are None until something happens: their columns exist either way.
NESTED_FIELDS = {"first_nonfinite": ("step", "layer", "block", "tensor", "phase"),
                 "first_divergence": ("step", "layer", "block", "stat", "value", "criterion"),
                 "first_blow_up": ("step", "layer", "block", "stat", "criterion"),
                 "early_warning": ("step", "risk", "mu_ratio", "mu_growth"),
                 "stopped_early": ("step", "reason")}



# ----------------------------------------------------------------------------- naming


def flatten_summary(summary: dict) -> dict[str, Any]:
    """A run summary as flat columns: val/test metrics as `val_pos_mse`, the rest dotted."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if key in NESTED_FIELDS and not value:
            flat.update({f"{key}.{field}": None for field in NESTED_FIELDS[key]})
        elif key in METRIC_SPLITS:
            for metric, v in {**dict.fromkeys(SPLIT_METRICS), **(value or {})}.items():
                flat[metric_name(key, metric)] = v
        else:
            flat.update(flatten({key: value}))
    return flat


# ----------------------------------------------------------------------------- run directories


def find_run_dirs(paths: Paths) -> list[Path]:
    """Every run directory at or below `paths` (a folder holding summary.json), sorted, no repeats."""
    found: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else list(paths):
        p = Path(p).expanduser()
        if not p.exists():
            raise AnalysisError(f"no such file or folder: {p}")
        if (p / runfolder.SUMMARY).is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(s.parent for s in p.rglob(runfolder.SUMMARY) if not _hidden(s.relative_to(p)))
    seen, unique = set(), []
    for d in found:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") or part == "wandb" for part in rel.parts[:-1])


def _require(dirs: list[Path], paths: Paths) -> list[Path]:
    if not dirs:
        raise AnalysisError(f"no run directories (folders with {runfolder.SUMMARY}) under {paths}")
    return dirs


class UnreadableRun(AnalysisError):
    """A run folder whose summary.json is truncated, corrupt or not a painn-ablate summary."""


def read_summary(run_dir: Path) -> RunSummary:
    path = Path(run_dir) / runfolder.SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableRun(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})") from None
    missing = [k for k in ("status", "steps_completed") if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise UnreadableRun(f"{path}: not a painn-ablate run summary (no {', '.join(missing)})")
    return summary


def process_gone(summary: RunSummary) -> bool:
    """A "running" summary written on this machine by a process that no longer exists."""
    import platform

    pid, host = summary.get("pid"), summary.get("host")
    if not isinstance(pid, int) or host != platform.node():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def readable_run_dirs(dirs: list[Path]) -> list[Path]:
    """The run folders whose summary reads; each other one is skipped with one warning naming it."""
    kept = []
    for d in dirs:
        try:
            read_summary(d)
        except UnreadableRun as exc:
            log.warning("skipping %s", exc)
            continue
        kept.append(d)
    return kept


def read_run(run_dir: Path) -> dict[str, Any]:
    """One run as a flat row: config columns, summary columns, `run_dir`, `experiment`, `exploded`."""
    summary = read_summary(run_dir)
    if summary["status"] == Status.RUNNING and process_gone(summary):
        summary = {**summary, "status": Status.LOST.value}
    row: dict[str, Any] = {}
    config_file = run_dir / runfolder.CONFIG
    if config_file.is_file():
        from omegaconf import OmegaConf

        row.update(flatten(OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)))
    row.update(flatten_summary(summary))
    if "first_blow_up" not in summary:  # summaries written before it was recorded
        blow_up = first_blow_up(summary.get("first_divergence"), summary.get("first_nonfinite")) or {}
        row.update({f"first_blow_up.{k}": blow_up.get(k) for k in NESTED_FIELDS["first_blow_up"]})
    row["run_dir"] = str(run_dir)
    row["preset"] = row.get("model.preset", summary.get("preset"))
    row["ablate"] = row.get("ablate", "none")
    row["experiment"] = experiment_name(row["preset"], row["ablate"])
    row.update(outcome_columns(row.get("status")))
    return row


def load_runs(paths: Paths) -> pd.DataFrame:
    """One row per run under `paths` (see the module docstring); killed runs load as 'running'."""
    dirs = _require(readable_run_dirs(find_run_dirs(paths)), paths)
    frame = pd.DataFrame([read_run(d) for d in dirs])
    # presets first (original, r2_full), then the designs, each by seed
    order = frame.assign(_design=frame["ablate"] != "none", _seed=pd.to_numeric(frame.get("seed"), errors="coerce"))
    frame = frame.loc[order.sort_values(["_design", "preset", "ablate", "_seed", "run_dir"], kind="stable").index]
    frame = frame.reset_index(drop=True)
    first = ["run_dir", "name", "experiment", "preset", "ablate", "seed", "status", "blew_up", "steps_completed",
             "steps_total", "first_blow_up.step", "first_blow_up.layer", "first_blow_up.block", "first_blow_up.stat",
             "val_pos_mse", "test_pos_mse"]
    first = [c for c in first if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def _read_table(run_dir: Path, name: str, filters=None) -> pd.DataFrame:
    path = run_dir / name
    if not path.exists():
        return pd.DataFrame()
    from painn_ablate.training.sinks import read_records  # an unreadable part is skipped with a warning

    return read_records(path, filters=filters)


def _load_long(paths: Paths, table: str, filters=None) -> pd.DataFrame:
    dirs = _require(readable_run_dirs(find_run_dirs(paths)), paths)
    parts = []
    for d in dirs:
        frame = _read_table(d, table, filters)
        if frame.empty:
            continue
        ids = read_run(d)
        for k, col in enumerate(ID_COLUMNS):
            frame.insert(k, col, ids.get(col))
        parts.append(frame)
    if not parts:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values([*ID_COLUMNS[:1], "step"], kind="stable", ignore_index=True)


def load_metrics(paths: Paths) -> pd.DataFrame:
    """metrics.parquet of every run: step, loss, ..., val_pos_mse (at validation steps)."""
    return _load_long(paths, runfolder.METRICS)


def load_layer_stats(paths: Paths, stats: Optional[Iterable[str]] = None,
                     block: Optional[str] = None) -> pd.DataFrame:
    """layer_stats.parquet of every run, long: step, layer, block, stat, value.

    stats / block: read only these statistics (names in painn_ablate.training.monitor) or this block.
    """
    filters = []
    if stats is not None:
        filters.append(("stat", "in", list(stats)))
    if block is not None:
        filters.append(("block", "==", block))
    return _load_long(paths, runfolder.LAYER_STATS, filters or None)


def load_events(paths: Paths) -> pd.DataFrame:
    """events.parquet of every run: step, kind (nonfinite | early_warning), layer, block, tensor, ..."""
    return _load_long(paths, runfolder.EVENTS)


# ----------------------------------------------------------------------------- Optuna


def load_study(storage: PathLike, name: Optional[str] = None, configs: bool = True) -> pd.DataFrame:
    """One row per trial of an Optuna study: the rows of `painn_ablate.sweep.studies.trial_rows` (the one
    builder of a study's trials as a table), joined with their run folders.

    Columns: study, number, state, value, duration_s, the parameters under their config keys,
    the user attributes (status, label, run_dir, val_pos_mse, first_nonfinite.step, ...), and
    `exploded`/`experiment`. configs=True adds every flattened config key of the trial's run
    directory when it can be found (so `model.stabilizers.*` is there even when the sweep varied
    only `ablate`), and `run_dir` then points at it.
    """
    import optuna

    from painn_ablate.sweep.studies import resolve_storage, resolve_trial_dir, study_names, trial_rows

    try:
        url = resolve_storage(storage)
    except SweepError as exc:
        raise AnalysisError(str(exc)) from None
    names = study_names(url)
    if name is None:
        if len(names) != 1:
            raise AnalysisError(f"{url} holds {len(names)} studies ({', '.join(names) or 'none'}); pass name=")
        name = names[0]
    elif name not in names:
        raise AnalysisError(f"no study '{name}' in {url}; it holds: {', '.join(names) or 'nothing'}")
    study = optuna.load_study(study_name=name, storage=url)
    rows = []
    for t, base in trial_rows(study):
        # the status as a Status value (a lost trial's re-run is its own row)
        status = str(base["status"]).removesuffix(" (re-run)") if base["status"] is not None else None
        row: dict[str, Any] = {"study": name, **base}
        run_dir = resolve_trial_dir(t.user_attrs.get("run_dir"), url) if configs else None
        if run_dir is not None:
            try:
                row.update({k: v for k, v in read_run(run_dir).items() if k not in ("status", "exploded")})
            except UnreadableRun as exc:
                log.warning("skipping the run folder of trial %d: %s", t.number, exc)
                run_dir = None
        row.update(t.params)
        row.update(flatten_summary(t.user_attrs))
        row["status"] = status
        if run_dir is not None:
            row["run_dir"] = str(run_dir)
        row["preset"] = row.get("model.preset", row.get("model", row.get("preset")))
        row["ablate"] = row.get("ablate", "none")
        row["experiment"] = experiment_name(row["preset"], row["ablate"])
        row.update(outcome_columns(row.get("status")))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    first = ["study", "number", "state", "value", "label", "experiment", "status", "exploded", "seed"]
    first = [c for c in first if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


# ----------------------------------------------------------------------------- W&B


def wandb_row(config: dict, summary: dict, **meta: Any) -> dict[str, Any]:
    """One W&B run as a load_runs-style row: config keys as logged (flat), summary flattened.

    Media (the events table, the heat map) and W&B's private `_` keys are left out.
    """
    row: dict[str, Any] = {}
    for k, v in config.items():
        row[k] = v.get("value") if isinstance(v, dict) and set(v) <= {"value", "desc"} else v
    clean = {k: v for k, v in summary.items()
             if not k.startswith("_") and not (isinstance(v, dict) and "_type" in v)}
    for k, v in flatten_summary(clean).items():
        row.setdefault(k, v)
    for split in METRIC_SPLITS:  # W&B has val_* only once a validation ran
        for metric in SPLIT_METRICS:
            row.setdefault(metric_name(split, metric), None)
    row.update(meta)
    row["preset"] = row.get("model.preset")
    row["ablate"] = row.get("ablate", "none")
    row["experiment"] = experiment_name(row["preset"], row["ablate"])
    row.update(outcome_columns(row.get("status")))
    return row


def load_wandb(project: str, filters: Optional[dict] = None, api=None) -> pd.DataFrame:
    """One row per run of a W&B project ('entity/project'), columns as in load_runs.

    filters: a W&B API filter, e.g. {"group": "stabilizers"} or {"tags": "preset:original"}.
    Needs network access and an API key (`wandb login`).
    """
    import wandb

    api = api or wandb.Api()
    rows = [wandb_row(dict(r.config), dict(r.summary._json_dict), wandb_id=r.id, name=r.name, group=r.group,
                      tags=list(r.tags), wandb_state=r.state, url=r.url)
            for r in api.runs(project, filters=filters or {})]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- derived tables


def layer_profiles(stats: pd.DataFrame, run_dir: str, stat_names: Sequence[str], before_step: Optional[int] = None,
                   block: str = "mixing") -> tuple[Optional[int], dict[str, dict[int, float]]]:
    """Per-layer values of each statistic at the last snapshot (before `before_step`) where all of
    them are finite in every layer: (step, {stat: {layer: value}}); (None, {}) when there is none."""
    rows = stats[(stats["run_dir"] == run_dir) & (stats["block"] == block) & (stats["stat"].isin(list(stat_names)))]
    if before_step is not None:
        rows = rows[rows["step"] < before_step]
    for step in sorted(rows["step"].unique(), reverse=True):
        snap = rows[rows["step"] == step]
        if set(snap["stat"]) == set(stat_names) and np.isfinite(snap["value"]).all():
            return int(step), {s: {int(l): float(v) for l, v in zip(g["layer"], g["value"])}
                               for s, g in snap.groupby("stat")}
    return None, {}


def peak_runs(runs: pd.DataFrame, stats: pd.DataFrame, by: str = "experiment") -> pd.DataFrame:
    """Per group, the run whose deepest layer reached the largest finite max ||mu|| (after mixing)."""
    deepest = stats[(stats["block"] == "mixing") & (stats["stat"] == names.MU_NORM_MAX)
                    & (stats["layer"] == stats["layer"].max()) & np.isfinite(stats["value"])]
    peak = deepest.groupby("run_dir")["value"].max()
    ranked = runs.assign(_peak=runs["run_dir"].map(peak).fillna(-1.0)).sort_values("_peak", ascending=False,
                                                                                     kind="stable")
    order = list(dict.fromkeys(runs[by]))
    picked = ranked.groupby(by, sort=False).head(1).set_index(by).loc[order].reset_index()
    return picked.drop(columns="_peak")[runs.columns]


def outcome_table(runs: pd.DataFrame, by: Sequence[str] = ("experiment",)) -> pd.DataFrame:
    """Per experiment: runs; blow-ups (transient, diverged or exploded: outcome.BLOW_UPS) with the Wilson 95%
    interval of their rate, and the sustained ones (diverged or exploded) with theirs; the step (median,
    range), layers and phase counts (init / training) of the first blow-up; val/test MSE over the runs that
    finished stable (mean and sample sd, ddof = 1, n = `stable`), and the test MSE of the transient ones."""
    by = list(by)
    out = []
    for key, g in runs.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        stable = g[g["status"] == Status.STABLE]
        blew_up = g["status"].map(is_blow_up)
        blown = g[blew_up]
        steps, layers = _numbers(blown, "first_blow_up.step"), _numbers(blown, "first_blow_up.layer")
        lo, hi = wilson(int(blew_up.sum()), len(g))
        sustained = g["status"].map(is_sustained)
        s_lo, s_hi = wilson(int(sustained.sum()), len(g))
        phases = blown["first_blow_up.phase"] if "first_blow_up.phase" in blown else pd.Series(dtype=object)
        transient = g[g["status"] == Status.TRANSIENT]
        row = dict(zip(by, key))
        row.update({
            "preset": g["preset"].iloc[0], "ablate": g["ablate"].iloc[0], "runs": len(g),
            "blew_up": int(blew_up.sum()), "blow_up_rate": float(blew_up.mean()), "blow_up_lo": lo, "blow_up_hi": hi,
            "sustained": int(sustained.sum()), "sustained_lo": s_lo, "sustained_hi": s_hi,
            "transient": len(transient), "at_init": int((phases == Phase.INIT).sum()),
            "in_training": int((phases == Phase.TRAINING).sum()),
            "transient_test_pos_mse_median": _numbers(transient, "test_pos_mse").median() if len(transient) else np.nan,
            "diverged": int((g["status"] == Status.DIVERGED).sum()), "exploded": int(g["exploded"].sum()),
            "stable": len(stable), "unfinished": int((~g["status"].isin(list(OUTCOMES))).sum()),
            "blow_up_step_median": steps.median() if len(steps) else np.nan,
            "blow_up_step_min": steps.min() if len(steps) else np.nan,
            "blow_up_step_max": steps.max() if len(steps) else np.nan,
            "blow_up_layers": ",".join(str(int(x)) for x in sorted(layers)) if len(layers) else "",
        })
        for m in ("val_pos_mse", "test_pos_mse", "test_vel_mse"):
            values = _numbers(stable, m)
            row[f"{m}_mean"] = values.mean() if len(values) else np.nan
            row[f"{m}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        out.append(row)
    return pd.DataFrame(out)


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").dropna()


def varying_keys(frame: pd.DataFrame, candidates: Optional[Iterable[str]] = None) -> list[str]:
    """Config columns whose value differs between rows (None counts as a value)."""
    if candidates is None:
        candidates = [*STABILIZER_KEYS, *(c for c in frame.columns if c.startswith(("model.", "train."))),
                      "seed", "data.seed"]
    keys = []
    for c in dict.fromkeys(candidates):
        if c in frame.columns and c not in BOOKKEEPING_KEYS and c != "model.preset":
            if frame[c].map(lambda v: json.dumps(_plain(v))).nunique() > 1:
                keys.append(c)
    return keys


def _plain(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def importance_evaluator(name: Optional[str] = None, seed: int = 0):
    """Optuna's fANOVA (its default; needs scikit-learn), else PED-ANOVA (no extra dependency)."""
    import optuna

    if name is None:
        try:
            import sklearn  # noqa: F401
            name = "fanova"
        except ImportError:
            log.warning("scikit-learn is not installed: parameter importances by PED-ANOVA instead of fANOVA")
            name = "ped_anova"
    if name == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    if name == "ped_anova":
        return optuna.importance.PedAnovaImportanceEvaluator()
    raise AnalysisError(f"unknown importance evaluator '{name}'; known: fanova, ped_anova")


def param_importances(frame: pd.DataFrame, target: Union[str, Callable[[pd.Series], float]],
                      params: Optional[Sequence[str]] = None, seed: int = 0,
                      evaluator: Optional[str] = None) -> pd.Series:
    """Optuna fANOVA importances of config values for `target`, over the rows of `frame`.

    frame: rows of load_study (configs=True) or load_runs. target: a column (rows where it is
    not finite are dropped, e.g. exploded runs for an MSE) or a function of a row, e.g.
    `lambda r: float(r.exploded)` for stability. params: default the varying stabilizer and
    other model/train keys plus `seed` (a noise reference: a stabilizer below the seed's
    importance does not matter here). A value that is None (a stabilizer off) makes the
    parameter categorical. evaluator: fanova (Optuna's default) or ped_anova; None picks fanova
    when scikit-learn is installed. Returns importances, largest first, with the evaluator's name
    in `.attrs["evaluator"]`; all NaN when the target does not vary.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    values = frame.apply(target, axis=1) if callable(target) else pd.to_numeric(frame[target], errors="coerce")
    keep = np.isfinite(values.astype(float))
    rows, values = frame[keep], values[keep].astype(float)
    params = list(params) if params is not None else varying_keys(rows)
    params = [p for p in params if p in rows.columns and rows[p].map(lambda v: json.dumps(_plain(v))).nunique() > 1]
    if len(rows) < 2 or not params:
        raise AnalysisError(f"importances need >= 2 rows with a finite target and a varying parameter "
                            f"(got {len(rows)} rows, parameters {params})")
    if values.nunique() < 2:
        series = pd.Series(np.nan, index=params, name="importance")
        series.attrs["evaluator"] = "none (the target does not vary)"
        return series
    dists = {}
    for p in params:
        col = [_plain(v) for v in rows[p]]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in col)
        if numeric and len(set(col)) > 2:
            dists[p] = FloatDistribution(float(min(col)), float(max(col)))
        else:
            dists[p] = CategoricalDistribution(sorted(set(col), key=lambda v: (v is not None, str(v))))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        study = optuna.create_study(direction="minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for (_, row), value in zip(rows.iterrows(), values):
        point = {p: (float(_plain(row[p])) if isinstance(dists[p], FloatDistribution) else _plain(row[p]))
                 for p in params}
        study.add_trial(optuna.trial.create_trial(params=point, distributions=dists, value=float(value)))
    chosen = importance_evaluator(evaluator, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        result = optuna.importance.get_param_importances(study, evaluator=chosen, params=params)
    series = pd.Series(result, name="importance", dtype=float).sort_values(ascending=False)
    series.attrs["evaluator"] = type(chosen).__name__
    return series
