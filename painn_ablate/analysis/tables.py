"""Trial tables: the committed evidence, one row per trial, and the per-condition tables made from them.

Raw records (studies, run folders) stay out of git; `export` turns each sweep into one small trial table
(`trial_table`: `results/<study>.parquet`, and `results/probe.parquet` for the initialisation probes), which is
committed; for short sweeps `export --curves` adds the per-step table (`curves_table`:
`results/<study>_curves.parquet`). Everything in runs.md is computed from those tables (`painn-ablate report`,
painn_ablate.reporting.findings), so it regenerates from a fresh clone: `cell_table` (rates and intervals per
condition), `phase_depth_table` (blow-ups at initialisation vs in training per depth), `probe_depth_table` and
`probe_gain_table` here; the design's rules and the per-variant tests they
are made of in painn_ablate.analysis.rules; the statistics in painn_ablate.analysis.stats.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from painn_ablate.analysis import loaders as analysis
from painn_ablate.analysis.stats import mean_interval, wilson
from painn_ablate.core import files, names, runfolder
from painn_ablate.core.config import ACTING, STABILIZER_FIELDS, acted_stat
from painn_ablate.core.errors import ExportError
from painn_ablate.core.outcome import (
    OUTCOMES,
    PHASE_KEY,
    Phase,
    Status,
    first_blow_up,
    had_training_blow_up,
    is_sustained,
    metric_name,
)
from painn_ablate.training.sinks import read_records

PathLike = Union[str, Path]
PROFILE_STATS = names.STATE_STATS  # the per-layer profile kept per trial (after each mixing block)
# How often each stabilizer in the model acted, averaged over a trial's snapshots (grad_clip's is train's).
ACTION_STATS = tuple(acted_stat(k) for k in ACTING if k != "grad_clip")
PROBE_STATS = names.PROBE_STATS  # the probe statistics a results table keeps
CELL = ("preset", "ablate", "L", "lr")  # one experimental condition; seeds vary within it



# ----------------------------------------------------------------------------- export


def _blow_up_origin(row: pd.Series) -> dict:
    """Step and origin of a trial's first blow-up (outcome.first_blow_up) from its flattened summary."""
    def origin(prefix: str) -> Optional[dict]:
        step = row.get(f"{prefix}.step")
        if step is None or pd.isna(step):
            return None
        fields = ("layer", "block", "stat", "criterion", "tensor", "phase", PHASE_KEY)
        return {"step": step, **{f: _value(row.get(f"{prefix}.{f}")) for f in fields}}

    first = first_blow_up(origin("first_divergence"), origin("first_nonfinite")) or {}
    # the phase: the trial attribute (Optuna), else the first origin's; NA in records made before phases
    phase = _value(row.get(PHASE_KEY)) or first.get("phase")
    return {"blowup_step": first.get("step"), **{f"origin_{k}": first.get(k)
                                                 for k in ("layer", "block", "stat", "criterion")},
            PHASE_KEY: phase if phase is not None else pd.NA}


def _value(x):
    """x, or None for a missing value (NaN, NA)."""
    return None if x is None or (not isinstance(x, (list, dict)) and pd.isna(x)) else x


def _profiles(run_dir: str, blowup_step: Optional[int], n_layers: int) -> dict:
    """Per-layer max ||mu|| and |q| after mixing: at the blow-up (its replayed pass) and at the last
    statistics snapshot before it (or, for a stable trial, at its last snapshot); plus stabilizer action."""
    path = Path(run_dir) / runfolder.LAYER_STATS
    out: dict = {}
    if not path.exists():
        return out
    stats = read_records(path)  # an unreadable part is skipped with a warning
    if stats.empty:
        return out
    mix = stats[(stats["block"] == "mixing") & stats["stat"].isin(PROFILE_STATS)]
    steps = sorted(mix["step"].unique())
    at = blowup_step if blowup_step is not None else (steps[-1] if steps else None)
    before = [s for s in steps if blowup_step is not None and s < blowup_step]
    for when, step in (("at", at), ("before", before[-1] if before else None)):
        snap = mix[mix["step"] == step] if step is not None else mix.iloc[0:0]
        for stat in PROFILE_STATS:
            values = snap[snap["stat"] == stat].set_index("layer")["value"]
            for layer in range(1, n_layers + 1):
                out[f"{when}_{stat}_L{layer}"] = float(values.get(layer, math.nan))
        out[f"{when}_step"] = step
    acts = stats[stats["stat"].isin(ACTION_STATS) & np.isfinite(stats["value"])]
    for stat, value in acts.groupby("stat")["value"].mean().items():
        out[f"act_{stat}"] = float(value)
    return out


def _grad_clip_activity(run_dir: str, clip) -> dict:
    """How often gradient clipping acted: the fraction of steps whose gradient norm exceeded the clip."""
    path = Path(run_dir) / runfolder.METRICS
    if clip is None or pd.isna(clip) or not path.exists():
        return {}
    norms = read_records(path, columns=["grad_norm"])["grad_norm"]
    return {f"act_{acted_stat('grad_clip')}": float((norms > float(clip)).mean())} if len(norms) else {}


def _error_tail(r: pd.Series, status: str) -> dict:
    """Quantiles of a stable trial's per-sample test position MSE (trainer.TAIL): from its summary, or
    recomputed from its checkpoint when the summary predates them."""
    from painn_ablate.training.trainer import TAIL, evaluate_checkpoint

    keys = [metric_name("test", f"pos_mse_{q}") for q in TAIL]
    if status != Status.STABLE:
        return {}
    if all(r.get(k) is not None and not pd.isna(r.get(k)) for k in keys):
        return {k: float(r[k]) for k in keys}
    if not (Path(r["run_dir"]) / runfolder.CHECKPOINT).exists():
        return {}
    test = evaluate_checkpoint(r["run_dir"])
    return {metric_name("test", f"pos_mse_{q}"): test[f"pos_mse_{q}"] for q in TAIL}


def _finished_runs(folder: Path) -> pd.DataFrame:
    """A folder of plain run directories (runs made with `painn-ablate train`, not by a sweep) as the
    rows load_study would give: the study is the folder's name, the label each run's name."""
    frame = analysis.load_runs(folder)
    frame = frame[frame["status"].isin(list(OUTCOMES))].reset_index(drop=True)
    return frame.assign(study=folder.name, number=frame.index, label=frame["name"])


# The training setting beside the stabilizers: the schema's defaults are the map's and the ablations'
# setting; EGNN's N-body setting (section 5) changes them. Older trial tables lack the columns.
SETTING = {"edge_charge": ("model.edge_charge", False), "loss": ("train.loss", "pos_vel"),
           "schedule": ("train.schedule", "constant")}


def _stabilizers(r: pd.Series) -> dict:
    """Every stabilizer's value as the trial ran it (a column per StabilizerConfig key, and aggregation):
    what tells apart the trials of one preset and ablate name that a sweep varied in a stabilizer's value."""
    return {"aggregation": _value(r.get("model.aggregation")),
            **{f.name: _value(r.get(f"model.stabilizers.{f.name}")) for f in STABILIZER_FIELDS}}


def _setting(r: pd.Series) -> dict:
    return {col: (default if pd.isna(v := r.get(key, default)) else v) for col, (key, default) in SETTING.items()}


def default_setting(trials: pd.DataFrame) -> pd.Series:
    """True for the trials run in the default setting (every section but the EGNN comparison)."""
    mask = pd.Series(True, index=trials.index)
    for col, (_, default) in SETTING.items():
        if col in trials:
            mask &= trials[col].fillna(default) == default
    return mask


def _finished(sweep: PathLike) -> pd.DataFrame:
    """The finished trials of a sweep folder (or storage URL), or the finished runs of a folder of run
    directories, as load_study's rows."""
    path = Path(sweep)
    if path.is_dir() and not (path / "study.db").exists():
        return _finished_runs(path)
    frame = analysis.load_study(sweep)
    return frame[frame["state"].isin(["COMPLETE", "PRUNED"])].reset_index(drop=True)


def _ints(x) -> Optional[list]:
    """A list cell of a flattened summary as a list of ints (None: missing), so parquet stores one type."""
    x = _value(x)
    return None if x is None else [int(v) if v is not None else None for v in x]


def _recovery(r: pd.Series) -> dict:
    """A trial's spikes and episodes (steps, steps to recover, each episode's phase), whether it had a
    training-phase blow-up (outcome.had_training_blow_up, recomputed from the episodes where the trial
    predates the attribute), and the initial and last validation pos MSE (the LR sensitivity's)."""
    phases = _value(r.get("divergence.phases"))
    nonfinite = {PHASE_KEY: _value(r.get(f"first_nonfinite.{PHASE_KEY}"))} \
        if _value(r.get("first_nonfinite.step")) is not None else None
    training = _value(r.get("training_blow_up"))
    if training is None and phases is not None:
        training = had_training_blow_up({"phases": list(phases)}, nonfinite)
    initial = _value(r.get("initial_val_pos_mse", r.get("divergence.val_initial")))
    return {"spike_steps": _ints(r.get("spike_steps", r.get("divergence.spike_steps"))),
            "steps_to_recover": _ints(r.get("steps_to_recover", r.get("divergence.steps_to_recover"))),
            "episode_phases": None if phases is None else [str(p) for p in phases],
            "training_blow_up": pd.NA if training is None else bool(training),
            "initial_val_pos_mse": initial, "final_val_pos_mse": _value(r.get("final_val_pos_mse"))}


def _provenance(r: pd.Series) -> dict:
    """What a trial was made from: the data set's fingerprint, the code version (package version, git commit,
    dirty flag) and the start time; NA in records made before they existed."""
    return {"data_fingerprint": _value(r.get("data_fingerprint")),
            "code_version": _value(r.get("code_version.version")), "code_commit": _value(r.get("code_version.commit")),
            "code_dirty": _value(r.get("code_version.dirty")), "started_at": _value(r.get("started_at"))}


def trial_table(sweep: PathLike) -> pd.DataFrame:
    """One row per finished trial of a sweep folder (or storage URL), or per finished run of a folder of
    run directories: parameters, outcome, origin, metrics, the per-layer profile before the blow-up and
    how often each stabilizer acted."""
    frame = _finished(sweep)
    rows = []
    for _, r in frame.iterrows():
        L = int(r["model.L"])
        row = {"study": r["study"], "number": int(r["number"]), "label": r["label"], "preset": r["preset"],
               "ablate": r.get("ablate", "none"), "L": L, "lr": float(r["train.lr"]), "seed": int(r["seed"]),
               "F": int(r["model.F"]), "steps": int(r.get("steps_total") or r["train.steps"]),
               "epochs": r.get("train.epochs"), **_setting(r), **_stabilizers(r), "status": r["status"],
               **analysis.outcome_columns(r["status"]), **_blow_up_origin(r),
               "steps_completed": int(r["steps_completed"]), "best_step": r.get("best_step"),
               "val_pos_mse": r.get("val_pos_mse"),
               "test_pos_mse": r.get("test_pos_mse"), "wall_seconds": r.get("wall_seconds"),
               "ms_per_step": r.get("ms_per_step"), "episodes": r.get("divergence.episodes"),
               "recovered": r.get("divergence.recovered")}
        row["spikes"] = _value(r.get("spikes", r.get("divergence.spikes")))  # spikes (separate firings)
        row.update(_recovery(r), **_provenance(r))
        if isinstance(r.get("run_dir"), str):
            row.update(_profiles(r["run_dir"], row["blowup_step"], L))
            row.update(_grad_clip_activity(r["run_dir"], r.get("train.grad_clip")))
            row.update(_error_tail(r, row["status"]))
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("origin_layer", "blowup_step", "before_step", "at_step", "episodes", "best_step"):
        if col in table:
            table[col] = pd.to_numeric(table[col], errors="coerce").astype("Int64")
    return table


CURVES = "_curves.parquet"  # the name's ending of a per-step table in a results folder (not a trial table)
CURVE_STAT = names.MU_NORM_MAX  # the per-layer statistic a curves table keeps, after each mixing block


def curves_table(sweep: PathLike) -> pd.DataFrame:
    """Per step of every finished trial of a sweep (or folder of runs): the training loss and the max ||mu||
    after each layer's mixing block, wide (`mu_norm_max_L1` ...; NaN where a layer or step was not recorded).

    One row per (trial, step) of its metrics, with the trial's study, number, preset, ablate, L, lr and
    seed. The statistics are those of the steps the monitor recorded (monitor.every = 1: every step); a run
    that went non-finite ends at that step, with its NaN/Inf kept."""
    frames = []
    for _, r in _finished(sweep).iterrows():
        run_dir = r.get("run_dir")
        if not isinstance(run_dir, str) or not (Path(run_dir) / runfolder.METRICS).exists():
            continue
        L = int(r["model.L"])
        metrics = read_records(Path(run_dir) / runfolder.METRICS, columns=["step", "loss"])
        curve = metrics.groupby("step", as_index=False)["loss"].last()
        stats_path = Path(run_dir) / runfolder.LAYER_STATS
        stats = read_records(stats_path) if stats_path.exists() else pd.DataFrame(columns=["step", "layer",
                                                                                            "block", "stat"])
        mu = stats[(stats["block"] == "mixing") & (stats["stat"] == CURVE_STAT)]
        wide = mu.pivot_table(index="step", columns="layer", values="value", aggfunc="last", dropna=False)
        wide = wide.reindex(columns=range(1, L + 1)).rename(columns=lambda layer: f"{CURVE_STAT}_L{layer}")
        curve = curve.merge(wide.reset_index(), on="step", how="left")
        frames.append(curve.assign(study=r["study"], number=int(r["number"]), preset=r["preset"],
                                   ablate=r.get("ablate", "none"), L=L, lr=float(r["train.lr"]),
                                   seed=int(r["seed"])))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    layers = sorted((c for c in table.columns if c.startswith(f"{CURVE_STAT}_L")),
                    key=lambda c: int(c.rsplit("_L", 1)[1]))
    first = ["study", "number", "preset", "ablate", "L", "lr", "seed", "step", "loss"]
    table = table[first + layers]
    return table.astype({"step": "int64", "loss": "float64", **{c: "float64" for c in layers}})


def probe_table(folders: Sequence[PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The probes of several `painn-ablate probe --out` folders as two tables with a `variant` column
    (the folder name), statistics limited to PROBE_STATS to keep them small."""
    stats, seeds = [], []
    for folder in folders:
        folder = Path(folder)
        s = pd.read_parquet(folder / "probe.parquet")
        stats.append(s[s["stat"].isin(PROBE_STATS)].assign(variant=folder.name))
        seeds.append(pd.read_parquet(folder / "probe_seeds.parquet").assign(variant=folder.name))
    return pd.concat(stats, ignore_index=True), pd.concat(seeds, ignore_index=True)


TEST_ERRORS = "_test_errors.parquet"  # the name's ending of a per-test-system table (not a trial table)


def system_errors_table(sweep: PathLike) -> pd.DataFrame:
    """Per finished trial of a sweep and per test system: the system's pos MSE at the best validation step
    (the run folder's runfolder.TEST_ERRORS), with the trial's study, number, preset, ablate, L, lr and seed.
    What analysis.stats.seed_and_sample_interval resamples; trials recorded before it was kept are absent."""
    frames = []
    for _, r in _finished(sweep).iterrows():
        run_dir = r.get("run_dir")
        path = Path(run_dir) / runfolder.TEST_ERRORS if isinstance(run_dir, str) else None
        if path is None or not path.exists():
            continue
        errors = pd.read_parquet(path)["pos_mse"].astype("float32")
        frames.append(pd.DataFrame({"study": r["study"], "number": int(r["number"]), "preset": r["preset"],
                                    "ablate": r.get("ablate", "none"), "L": int(r["model.L"]),
                                    "lr": float(r["train.lr"]), "seed": int(r["seed"]),
                                    "system": np.arange(len(errors)), "pos_mse": errors}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def export(sources: Sequence[PathLike], out: PathLike, curves: bool = False,
           test_errors: bool = False) -> list[Path]:
    """Write results/<study>.parquet per sweep folder and results/probe*.parquet for probe folders;
    curves=True adds results/<study>_curves.parquet per sweep folder (curves_table: loss and per-layer max
    ||mu|| per step; small only for short runs); test_errors=True adds results/<study>_test_errors.parquet
    (system_errors_table: each trial's error per test system, for intervals that include the test set's
    sampling error).

    Every table is built before any is written, so a bad source leaves `out` as it was; each file
    is replaced atomically.
    """
    out = Path(out)
    tables: dict[str, pd.DataFrame] = {}
    probes = []
    for src in map(Path, sources):
        if (src / "probe.parquet").exists():
            probes.append(src)
            continue
        table = trial_table(src)
        if table.empty:
            raise ExportError(f"{src}: no finished trials to export")
        study = table["study"].iloc[0]
        tables[f"{study}.parquet"] = table
        if curves:
            per_step = curves_table(src)
            if per_step.empty:
                raise ExportError(f"{src}: no per-step records to export (run folders missing?)")
            tables[f"{study}{CURVES}"] = per_step
        if test_errors:
            per_system = system_errors_table(src)
            if per_system.empty:
                raise ExportError(f"{src}: no per-system test errors to export (trials recorded before "
                                  f"{runfolder.TEST_ERRORS} was kept, or run folders missing)")
            tables[f"{study}{TEST_ERRORS}"] = per_system
    if probes:
        tables["probe.parquet"], tables["probe_seeds.parquet"] = probe_table(probes)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        written.append(files.atomic(out / name, lambda tmp, t=table: t.to_parquet(tmp, index=False)))
    return written


def load_results(folder: PathLike) -> tuple[pd.DataFrame, Optional[pd.DataFrame], Optional[pd.DataFrame]]:
    """(all trials, probe stats, probe seeds) from a results folder."""
    folder = Path(folder)
    trials = [pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))
              if not p.name.startswith("probe") and not p.name.endswith((CURVES, TEST_ERRORS))]
    probe = folder / "probe.parquet"
    return (pd.concat(trials, ignore_index=True) if trials else pd.DataFrame(),
            pd.read_parquet(probe) if probe.exists() else None,
            pd.read_parquet(folder / "probe_seeds.parquet") if probe.exists() else None)


# ----------------------------------------------------------------------------- tables


def histogram(values: pd.Series) -> str:
    """Counts of each value, in order: `4: 2, 5: 8` (origin layers), empty for no values."""
    values = values.dropna()
    if values.empty:
        return ""
    counts = values.value_counts().sort_index()
    return ", ".join(f"{value_label(k)}: {v}" for k, v in counts.items())


def value_label(value) -> str:
    """5 for a layer stored as 5.0 (a column with missing values is float), else the value as text."""
    if isinstance(value, (int, float, np.number)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def blow_up_phases(trials: pd.DataFrame) -> pd.Series:
    """The phase of the first blow-up of each trial that blew up (outcome.Phase values; NA where it was recorded
    before phases existed), indexed like `trials`."""
    blown = trials[trials["blew_up"].astype(bool)] if len(trials) else trials
    return blown[PHASE_KEY] if PHASE_KEY in blown else pd.Series(pd.NA, index=blown.index, dtype=object)


def cell_table(trials: pd.DataFrame, by: Sequence[str] = CELL) -> pd.DataFrame:
    """Per condition: n, blow-ups (transient + diverged + exploded, outcome.BLOW_UPS) with the Wilson
    interval, the sustained ones (diverged + exploded) with theirs, initialisation events (step 0), the
    first blow-ups' phases (init / training; NA in tables made before phases), median step of the first
    blow-up, origin layers and blocks, test MSE of the stable runs, and of the transient ones (their
    median, and mean, sd and t interval as transient_mse_*)."""
    rows = []
    for key, g in trials.groupby(list(by), sort=True, dropna=False):
        n, k = len(g), int(g["blew_up"].sum())
        lo, hi = wilson(k, n)
        blown = g[g["blew_up"]]
        mse = mean_interval(g.loc[g["status"] == Status.STABLE, "test_pos_mse"])
        transient = g["status"] == Status.TRANSIENT
        recovered = mean_interval(g.loc[transient, "test_pos_mse"])
        sustained = int(g["status"].map(is_sustained).sum())
        s_lo, s_hi = wilson(sustained, n)
        phases = blow_up_phases(g)
        rows.append({**dict(zip(by, key)), "n": n, "blew_up": k, "rate": k / n if n else math.nan,
                     "rate_lo": lo, "rate_hi": hi, "sustained": sustained, "sustained_lo": s_lo,
                     "sustained_hi": s_hi, "transient": int(transient.sum()),
                     "phase_init": int((phases == Phase.INIT).sum()),
                     "phase_training": int((phases == Phase.TRAINING).sum()),
                     "phase_unknown": int(phases.isna().sum()),
                     "transient_test_mse_median": float(g.loc[transient, "test_pos_mse"].median())
                     if transient.any() else math.nan,
                     "diverged": int(g["diverged"].sum()),
                     "exploded": int(g["exploded"].sum()), "init_events": int((blown["blowup_step"] == 0).sum()),
                     "median_step": float(blown["blowup_step"].median()) if k else math.nan,
                     "origin_layers": histogram(blown["origin_layer"]),
                     "origin_blocks": histogram(blown["origin_block"]),
                     "stable": int((g["status"] == Status.STABLE).sum()),
                     **{f"test_mse_{s}": v for s, v in mse.items() if s != "n"},
                     **{f"transient_mse_{s}": v for s, v in recovered.items()}})
    return pd.DataFrame(rows)


def phase_depth_table(trials: pd.DataFrame, preset: str = "original", ablate: str = "none") -> pd.DataFrame:
    """Per depth L of one variant (default setting; the learning rates of each depth pooled): n runs, the
    learning rates pooled, and how many first blow-ups had each phase: k_init (the initial weights cross a
    criterion on the same batch), k_training (only the trained ones do) and k_unknown (a blow-up recorded
    before phases existed), each k_init and k_training as a rate of the n runs with its Wilson 95% interval."""
    g = trials[(trials["preset"] == preset) & (trials["ablate"] == ablate)]
    g = g[default_setting(g)]
    rows = []
    for L, d in g.groupby("L", sort=True):
        phases = blow_up_phases(d)
        n = len(d)
        row = {"preset": preset, "ablate": ablate, "L": int(L), "lrs": ", ".join(f"{x:g}" for x in sorted(set(d["lr"]))),
               "n": n, "blew_up": len(phases)}
        for phase in (Phase.INIT, Phase.TRAINING):
            k = int((phases == phase).sum())
            lo, hi = wilson(k, n)
            row.update({f"k_{phase.value}": k, f"rate_{phase.value}": k / n if n else math.nan,
                        f"{phase.value}_lo": lo, f"{phase.value}_hi": hi})
        row["k_unknown"] = int(phases.isna().sum())
        rows.append(row)
    return pd.DataFrame(rows)


def probed_over_depth(depths: pd.DataFrame) -> pd.DataFrame:
    """The rows of probe_depth_table whose variant was probed at more than one depth."""
    return depths[depths.groupby("variant")["L"].transform("nunique") > 1]


def probe_depth_table(seeds: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """Per probe variant and depth: seeds, fraction blown up at initialisation (Wilson), non-finite,
    and the median last/first-layer max ||mu|| ratio after mixing."""
    s0 = seeds[seeds["step"] == 0]
    mu = stats[(stats["step"] == 0) & (stats["block"] == "mixing") & (stats["stat"] == names.MU_NORM_MAX)]
    rows = []
    for (variant, L), g in s0.groupby(["variant", "L"]):
        m = mu[(mu["variant"] == variant) & (mu["L"] == L)].pivot_table(index="seed", columns="layer",
                                                                         values="value", aggfunc="first")
        if "mu_ratio" in g and g["mu_ratio"].notna().any():  # the probe's own outcome.mu_ratio per seed
            ratio = g["mu_ratio"].fillna(np.inf)
        else:  # probe folders written before it: the same ratio from the statistics
            ratio = (m[L] / m[1]) if (L in m and 1 in m) else pd.Series(dtype=float)
            ratio = ratio.reindex(g["seed"]).fillna(np.inf)  # a non-finite pass has no finite ratio: it counts as inf
        k, n = int(g["blew_up"].sum()), len(g)
        lo, hi = wilson(k, n)
        frac = g["init_blow_up_frac"].mean() if "init_blow_up_frac" in g else math.nan
        rows.append({"variant": variant, "L": int(L), "seeds": n, "blew_up": k, "rate": k / n, "rate_lo": lo,
                     "rate_hi": hi, "nonfinite": float(g["nonfinite"].mean()),
                     "init_blow_up_frac": float(frac), "median_mu_ratio": float(ratio.median())})
    return pd.DataFrame(rows)


def probe_gain_table(stats: pd.DataFrame, variant: str, L: int) -> pd.DataFrame:
    """Median over seeds of each block's gains and feedback terms at initialisation, per layer."""
    s = stats[(stats["variant"] == variant) & (stats["L"] == L) & (stats["step"] == 0) & (stats["layer"] >= 1)]
    return s.pivot_table(index=["layer", "block"], columns="stat", values="value", aggfunc="median")
