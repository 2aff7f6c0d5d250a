"""Optuna studies read back: where a sweep's storage is, its studies, and each trial's status, row and
the best trial, for `painn-ablate status`, the dashboards and `painn_ablate.analysis.loaders.load_study`
(which joins the rows of `trial_rows` to their run folders as pandas columns). Reading never writes: a
file that is no Optuna storage is refused before Optuna could create its schema in it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Optional, Union

import optuna
from optuna.trial import FrozenTrial, TrialState

from painn_ablate.core import runfolder
from painn_ablate.core.config import did_you_mean, experiment_name
from painn_ablate.core.outcome import METRICS, PHASE_KEY, Status
from painn_ablate.sweep.progress import best_trial
from painn_ablate.sweep.spec import SweepError
from painn_ablate.sweep.storage import SQLITE_TIMEOUT, driver_url, shown_url

PathLike = Union[str, Path]


def resolve_storage(target: PathLike) -> str:
    """A storage URL from a sweep folder, its study.db, or any storage URL (kept as it is); a SweepError
    (one line) where there is no study."""
    target = str(target)
    if "://" in target:
        return target
    path = Path(target).expanduser()
    if path.is_dir():
        path = path / "study.db"
    if not path.is_file():
        raise SweepError(f"no sweep at '{target}': expected a sweep folder, a study.db or a storage URL")
    _check_study_file(path)
    return f"sqlite:///{path.resolve()}"


def _check_study_file(path: Path) -> None:
    """Refuse a file that is not an Optuna SQLite storage, read-only: opening it through Optuna would
    create the schema in it (a reading command must never write)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise SweepError(f"{path} is not an SQLite database ({exc})") from None
    if "studies" not in tables:
        raise SweepError(f"{path} holds no Optuna study (empty or another database); nothing to read")


def open_studies(target: str, study_name: Optional[str] = None) -> list[optuna.Study]:
    """The studies stored at `target` (all of them, or the named one)."""
    url = driver_url(resolve_storage(target))
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=(
            {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else {}))
        names = optuna.get_all_study_names(storage)
    except Exception as exc:
        raise SweepError(f"cannot open storage {shown_url(url)}: {' '.join(str(exc).split())[:300]}") from None
    if study_name is not None:
        if study_name not in names:
            raise SweepError(f"no study '{study_name}' in {shown_url(url)}{did_you_mean(study_name, names)}; "
                             f"it holds: {', '.join(names)}")
        names = [study_name]
    if not names:
        raise SweepError(f"{shown_url(url)} holds no study")
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


FRONTIER_ATTRS = ("training_blow_up", "initial_val_pos_mse", "final_val_pos_mse")  # spec.result_attrs


def frontier_ladder(study: optuna.Study) -> Optional[tuple[str, list[float]]]:
    """A frontier sweep's walked parameter and its ladder (the values in the sweep file the study was made
    from); None for a study of any other sweep."""
    raw = study.user_attrs.get("sweep_file") or {}
    name = raw.get("frontier")
    if not name:
        return None
    return name, [float(x) for x in raw["parameters"][name]["values"]]


def trial_status(t: FrozenTrial, retried: set[int]) -> str:
    """The status shown for a trial: its user attribute, or what its state says."""
    if t.state == TrialState.FAIL and "error" not in t.user_attrs:
        why = Status.INTERRUPTED.value if t.user_attrs.get("status") == Status.INTERRUPTED else Status.LOST.value
        return f"{why} (re-run)" if t.number in retried else why
    if t.state == TrialState.WAITING:
        return "waiting"
    return str(t.user_attrs.get("status", t.state.name.lower()))


def trial_rows(study: optuna.Study) -> list[tuple[FrozenTrial, dict]]:
    """Each trial with its row: number, state, value, duration_s, label, experiment, preset, ablate, status
    (`trial_status`), the metrics, first non-finite step/layer/block/tensor, first divergence, blow_up_phase, the
    frontier's attributes (FRONTIER_ATTRS), run_dir, error and every parameter under its config key (a waiting
    trial's: those it was enqueued with). The one builder of a study's trials as rows: `trials_frame` is these
    rows, and
    `painn_ablate.analysis.loaders.load_study` adds each trial's run folder and flattened attributes to them."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    # the sweep file's constants (`value:`), which no trial's params hold: a waiting trial of a sweep whose
    # model is one preset had no preset, and counted as a walk of its own
    settings = study.user_attrs.get("settings") or {}
    constants = {k: v["value"] for k, v in (settings.get("parameters") or {}).items()
                 if isinstance(v, dict) and "value" in v}
    rows = []
    for t in trials:
        a = t.user_attrs
        nonfinite = a.get("first_nonfinite") or {}
        divergence = a.get("first_divergence") or {}
        fixed = {**constants, **(t.system_attrs.get("fixed_params") or {})}
        preset = a.get("model.preset", t.params.get("model", fixed.get("model")))
        ablate = a.get("ablate", t.params.get("ablate", fixed.get("ablate", "none")))
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "duration_s": t.duration.total_seconds() if t.duration else None, "label": a.get("label"),
               "experiment": experiment_name(preset, ablate) if preset is not None else None,
               "preset": preset, "ablate": ablate,
               "status": trial_status(t, retried), **{m: a.get(m) for m in METRICS},
               "steps_completed": a.get("steps_completed"),
               "first_nonfinite_step": nonfinite.get("step"), "first_nonfinite_layer": nonfinite.get("layer"),
               "first_nonfinite_block": nonfinite.get("block"), "first_nonfinite_tensor": nonfinite.get("tensor"),
               **{f"first_divergence_{k}": divergence.get(k) for k in ("step", "layer", "block", "stat", "criterion")},
               "episodes": a.get("episodes"), "recovered": a.get("recovered"), "sustained": a.get("sustained"),
               PHASE_KEY: a.get(PHASE_KEY), **{k: a.get(k) for k in FRONTIER_ATTRS},
               "early_warning_step": a.get("early_warning_step"), "pruned_step": a.get("pruned_step"),
               "wall_seconds": a.get("wall_seconds"), "retry_of": t.system_attrs.get("failed_trial"),
               "run_dir": a.get("run_dir"), "error": a.get("error"), **fixed, **t.params}
        rows.append((t, row))
    return rows


def trials_frame(study: optuna.Study):
    """One row per trial (`trial_rows`), for `painn-ablate status` and `summarize`."""
    import pandas as pd

    return pd.DataFrame([row for _, row in trial_rows(study)])


def summarize(study: optuna.Study) -> dict:
    """Counts per state and per status, and the best trial, of one study."""
    frame = trials_frame(study)
    best = best_trial(study)
    return {
        "study": study.study_name, "n_trials": len(frame),
        "states": frame["state"].value_counts().to_dict() if len(frame) else {},
        "statuses": frame["status"].value_counts().to_dict() if len(frame) else {},
        "grid_size": study.user_attrs.get("grid_size"),
        "metric": (study.user_attrs.get("settings") or {}).get("metric"),
        "best": None if best is None else {"number": best.number, "label": best.user_attrs.get("label"),
                                           "value": best.value, "params": best.params},
        "frame": frame,
    }


def study_names(storage: PathLike) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(resolve_storage(storage), include_best_trial=False)]


def resolve_trial_dir(run_dir: Optional[str], url: str) -> Optional[Path]:
    """A trial's run_dir attribute (relative to where the sweep ran), found from here."""
    if not run_dir:
        return None
    path = Path(run_dir)
    if (path / runfolder.SUMMARY).is_file():
        return path
    if url.startswith("sqlite:///"):
        beside = Path(url[len("sqlite:///"):]).parent / runfolder.TRIALS / path.name
        if (beside / runfolder.SUMMARY).is_file():
            return beside
    return None
