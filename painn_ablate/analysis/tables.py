"""The experiments' evidence: compact trial tables, rates with intervals, paired tests, the design's rules.

Raw records (studies, run folders) stay out of git; `export` turns them into one small
trial-level table per experiment (`results/<study>.parquet`, and `results/probe.parquet`
for the initialisation probes), which is committed. Everything in runs.md is computed from
those tables by the functions below (`painn-ablate report`), so it regenerates from a fresh
clone. The design and its pass/fail rules are in sweeps/DESIGN.md, written before the results;
`judge` applies them mechanically.

Statistics (one definition each):
    wilson(k, n)          Wilson 95% score interval of a proportion
    mcnemar_exact(a, b)   exact McNemar test of two paired boolean outcomes (by seed)
    mean_interval(x)      mean, sample sd (ddof = 1) and t 95% interval of the mean
    paired_t(a, b)        two-sided paired t-test of two metrics indexed by seed
    holm(p)               Holm-adjusted p-values of a family of tests
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd
from scipy import stats as sps

from painn_ablate.analysis import loaders as analysis
from painn_ablate.analysis.loaders import wilson  # noqa: F401  (re-exported: ex.wilson)
from painn_ablate.core import files, runfolder
from painn_ablate.core.config import ABLATIONS, ACTING, R2_FULL_STABILIZERS, acted_stat
from painn_ablate.core.errors import ExportError
from painn_ablate.core.outcome import OUTCOMES, PHASE_KEY, Phase, Status, first_blow_up, is_sustained, metric_name

PathLike = Union[str, Path]
PROFILE_STATS = ("mu_norm_max", "q_absmax")  # the per-layer profile kept per trial (after each mixing block)
# How often each stabilizer in the model acted, averaged over a trial's snapshots (grad_clip's is train's).
ACTION_STATS = tuple(acted_stat(k) for k in ACTING if k != "grad_clip")
PROBE_STATS = ("mu_norm_max", "q_absmax", "qmu_absmax", "mu_term_norm_max", "norm_gain", "jvp_gain", "update_gain")
CELL = ("preset", "ablate", "L", "lr")  # one experimental condition; seeds vary within it



# ----------------------------------------------------------------------------- statistics


def mcnemar_exact(a: pd.Series, b: pd.Series) -> tuple[int, int, float]:
    """Paired outcomes a, b (booleans indexed by seed; only seeds in both count).

    Returns (a only, b only, two-sided exact p): the binomial test of the discordant pairs.
    """
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").astype(bool)
    only_a = int((both["a"] & ~both["b"]).sum())
    only_b = int((~both["a"] & both["b"]).sum())
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def mean_interval(values: Iterable[float]) -> dict[str, float]:
    """n, mean, sample sd and the t 95% interval of the mean of the finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": math.nan, "lo": math.nan, "hi": math.nan}
    sd = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of a family of tests (nan stays nan and does not count)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid])]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def paired_t(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """Paired by seed (finite in both): n, mean of b - a with its t 95% interval, two-sided p."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").astype(float)
    both = both[np.isfinite(both).all(axis=1)]
    diff = mean_interval(both["b"] - both["a"])
    p = float(sps.ttest_rel(both["b"], both["a"]).pvalue) if len(both) >= 2 else math.nan
    return {**diff, "p": p}


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
    stats = pd.read_parquet(path)
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
    norms = pd.read_parquet(path, columns=["grad_norm"])["grad_norm"]
    return {f"act_{acted_stat('grad_clip')}": float((norms > float(clip)).mean())} if len(norms) else {}


def _error_tail(r: pd.Series, status: str) -> dict:
    """Quantiles of a stable trial's per-sample test position MSE (train.TAIL): from its summary, or
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


def _setting(r: pd.Series) -> dict:
    return {col: (default if pd.isna(v := r.get(key, default)) else v) for col, (key, default) in SETTING.items()}


def default_setting(trials: pd.DataFrame) -> pd.Series:
    """True for the trials run in the default setting (every section but the EGNN comparison)."""
    mask = pd.Series(True, index=trials.index)
    for col, (_, default) in SETTING.items():
        if col in trials:
            mask &= trials[col].fillna(default) == default
    return mask


def trial_table(sweep: PathLike) -> pd.DataFrame:
    """One row per finished trial of a sweep folder (or storage URL), or per finished run of a folder of
    run directories: parameters, outcome, origin, metrics, the per-layer profile before the blow-up and
    how often each stabilizer acted."""
    path = Path(sweep)
    if path.is_dir() and not (path / "study.db").exists():
        frame = _finished_runs(path)
    else:
        frame = analysis.load_study(sweep)
        frame = frame[frame["state"].isin(["COMPLETE", "PRUNED"])].reset_index(drop=True)
    rows = []
    for _, r in frame.iterrows():
        L = int(r["model.L"])
        row = {"study": r["study"], "number": int(r["number"]), "label": r["label"], "preset": r["preset"],
               "ablate": r.get("ablate", "none"), "L": L, "lr": float(r["train.lr"]), "seed": int(r["seed"]),
               "F": int(r["model.F"]), "steps": int(r.get("steps_total") or r["train.steps"]),
               "epochs": r.get("train.epochs"), **_setting(r), "status": r["status"],
               **analysis.outcome_columns(r["status"]), **_blow_up_origin(r),
               "steps_completed": int(r["steps_completed"]), "best_step": r.get("best_step"),
               "val_pos_mse": r.get("val_pos_mse"),
               "test_pos_mse": r.get("test_pos_mse"), "wall_seconds": r.get("wall_seconds"),
               "ms_per_step": r.get("ms_per_step"), "episodes": r.get("divergence.episodes"),
               "recovered": r.get("divergence.recovered")}
        row["spikes"] = _value(r.get("spikes", r.get("divergence.spikes")))  # spikes (separate firings)
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


def export(sources: Sequence[PathLike], out: PathLike) -> list[Path]:
    """Write results/<study>.parquet per sweep folder and results/probe*.parquet for probe folders.

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
        tables[f"{table['study'].iloc[0]}.parquet"] = table
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
    trials = [pd.read_parquet(p) for p in sorted(folder.glob("*.parquet")) if not p.name.startswith("probe")]
    probe = folder / "probe.parquet"
    return (pd.concat(trials, ignore_index=True) if trials else pd.DataFrame(),
            pd.read_parquet(probe) if probe.exists() else None,
            pd.read_parquet(folder / "probe_seeds.parquet") if probe.exists() else None)


# ----------------------------------------------------------------------------- tables


def _histogram(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    counts = values.value_counts().sort_index()
    return ", ".join(f"{_label(k)}: {v}" for k, v in counts.items())


def _label(value) -> str:
    """5 for a layer stored as 5.0 (a column with missing values is float), else the value as text."""
    if isinstance(value, (int, float, np.number)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def cell_table(trials: pd.DataFrame, by: Sequence[str] = CELL) -> pd.DataFrame:
    """Per condition: n, blow-ups (transient + diverged + exploded, outcome.BLOW_UPS) with the Wilson
    interval, the sustained ones (diverged + exploded) with theirs, initialisation events (step 0), the
    first blow-ups' phases (init / training; NA in tables made before phases), median step of the first
    blow-up, origin layers and blocks, test MSE of the stable runs and the median of the transient ones."""
    rows = []
    for key, g in trials.groupby(list(by), sort=True, dropna=False):
        n, k = len(g), int(g["blew_up"].sum())
        lo, hi = wilson(k, n)
        blown = g[g["blew_up"]]
        mse = mean_interval(g.loc[g["status"] == Status.STABLE, "test_pos_mse"])
        transient = g["status"] == Status.TRANSIENT
        sustained = int(g["status"].map(is_sustained).sum())
        s_lo, s_hi = wilson(sustained, n)
        phases = blown[PHASE_KEY] if PHASE_KEY in blown else pd.Series(pd.NA, index=blown.index)
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
                     "origin_layers": _histogram(blown["origin_layer"]),
                     "origin_blocks": _histogram(blown["origin_block"]),
                     "stable": int((g["status"] == Status.STABLE).sum()),
                     **{f"test_mse_{s}": v for s, v in mse.items() if s != "n"}})
    return pd.DataFrame(rows)


def outcomes_by_seed(trials: pd.DataFrame, **cell) -> pd.Series:
    """blew_up indexed by seed for one condition (preset=..., ablate=..., L=..., lr=...)."""
    g = trials
    for key, value in cell.items():
        g = g[np.isclose(g[key], value)] if isinstance(value, float) else g[g[key] == value]
    return g.set_index("seed")["blew_up"].sort_index()


def probe_depth_table(seeds: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """Per probe variant and depth: seeds, fraction blown up at initialisation (Wilson), non-finite,
    and the median last/first-layer max ||mu|| ratio after mixing."""
    s0 = seeds[seeds["step"] == 0]
    mu = stats[(stats["step"] == 0) & (stats["block"] == "mixing") & (stats["stat"] == "mu_norm_max")]
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


# ----------------------------------------------------------------------------- the design's rules


@dataclass
class Rule:
    name: str
    claim: str
    verdict: str  # PASS | MISS | UNDECIDED | NOT TESTED | SUPPORTED | PARTLY SUPPORTED | NOT SUPPORTED | E1's three
    evidence: str


def _cell(trials: pd.DataFrame, preset: str, ablate: str, L: int, lr: float) -> pd.DataFrame:
    return trials[(trials["preset"] == preset) & (trials["ablate"] == ablate) & (trials["L"] == L)
                  & np.isclose(trials["lr"], lr)]


def _rate(g: pd.DataFrame) -> str:
    k, n = int(g["blew_up"].sum()), len(g)
    lo, hi = wilson(k, n)
    return f"{k}/{n} (Wilson 95% {lo:.2f}-{hi:.2f})" if n else "no trials"


def sufficiency(trials: pd.DataFrame, ablate: str, L: int = 5, lr: float = 1e-3) -> dict:
    """Add-one-in `ablate` on the original against the original and R2_full at one cell (paired by seed)."""
    variant = _cell(trials, "original", ablate, L, lr)
    original, full = _cell(trials, "original", "none", L, lr), _cell(trials, "r2_full", "none", L, lr)
    out = {"n": len(variant), "blew_up": int(variant["blew_up"].sum()), "rate": _rate(variant)}
    if variant.empty or original.empty or full.empty:
        return {**out, "sufficient": None, "p": math.nan, "why": "missing trials"}
    lo, hi = wilson(int(full["blew_up"].sum()), len(full))
    rate = variant["blew_up"].mean()
    only_orig, only_var, p = mcnemar_exact(original.set_index("seed")["blew_up"], variant.set_index("seed")["blew_up"])
    inside = lo <= rate <= hi
    return {**out, "sufficient": bool(inside and p < 0.05), "p": p, "discordant": (only_orig, only_var),
            "inside_r2_full": inside}


def judge(trials: pd.DataFrame, L: int = 5, lr: float = 1e-3) -> list[Rule]:
    """The rules of sweeps/DESIGN.md, applied to the trial tables (E1 to the trials in EGNN's setting,
    the others to the trials in the default setting)."""
    egnn = egnn_rule(trials)
    trials = trials[default_setting(trials)]
    rules = []
    original, full = _cell(trials, "original", "none", L, lr), _cell(trials, "r2_full", "none", L, lr)
    if original.empty:
        rules.append(Rule("M1", f"the original blows up at L={L}, lr={lr:g} (Wilson lower bound >= 0.5)",
                          "NOT TESTED", "no trials"))
    else:
        lo, _ = wilson(int(original["blew_up"].sum()), len(original))
        rules.append(Rule("M1", f"the original blows up at L={L}, lr={lr:g} (Wilson lower bound >= 0.5)",
                          "PASS" if lo >= 0.5 else "MISS", _rate(original)))
    if original.empty or full.empty:
        rules.append(Rule("M2", "R2_full is stable there (Wilson upper bound <= 0.31, paired McNemar p < 0.05)",
                          "NOT TESTED",
                          f"original {_rate(original)}, r2_full {_rate(full)}"))
    else:
        _, hi = wilson(int(full["blew_up"].sum()), len(full))
        a, b, p = mcnemar_exact(original.set_index("seed")["blew_up"], full.set_index("seed")["blew_up"])
        rules.append(Rule("M2", "R2_full is stable there (Wilson upper bound <= 0.31, paired McNemar p < 0.05)",
                          "PASS" if hi <= 0.31 and p < 0.05 else "MISS",
                          f"r2_full {_rate(full)}; original {_rate(original)}; seeds blowing up only in the "
                          f"original {a}, only in r2_full {b}, exact McNemar p = {p:.3g}"))
    deep = trials[(trials["preset"] == "original") & (trials["ablate"] == "none") & (trials["L"] == L)
                  & trials["blew_up"]]
    if deep.empty:
        rules.append(Rule("M3", f"the original's blow-ups at L={L} start in layer 4 or 5", "NOT TESTED",
                          "no blow-ups"))
    else:
        share = float(deep["origin_layer"].isin([4, 5]).mean())
        rules.append(Rule("M3", f"the original's blow-ups at L={L} start in layer 4 or 5 (at least half)",
                          "PASS" if share >= 0.5 else "MISS",
                          f"{int(deep['origin_layer'].isin([4, 5]).sum())}/{len(deep)} in layers 4-5; origin "
                          f"layers {_histogram(deep['origin_layer'])}"))
    tested = set(trials.loc[(trials["preset"] == "original") & (trials["L"] == L) & np.isclose(trials["lr"], lr),
                            "ablate"])
    for name in ("g", "alpha", "aggregation"):
        # amendment 3 tests alpha as its two scales: alpha is sufficient when either one is
        parts = [name] if name in tested or name != "alpha" else [a for a in ("alpha_inter", "alpha_mix")
                                                                   if a in tested]
        if not parts or not set(parts) <= tested:
            rules.append(Rule(f"S1 {name}", f"{name} alone is sufficient", "NOT TESTED",
                              "cut for compute (sweeps/DESIGN.md, amendment 1)"))
            continue
        results = {part: sufficiency(trials, part, L, lr) for part in parts}
        rules.append(Rule(f"S1 {name}", f"{name} alone is sufficient",
                          "PASS" if any(r["sufficient"] for r in results.values()) else "MISS",
                          "; ".join(f"{part}: {r['rate']}, McNemar p = {r['p']:.3g}" for part, r in results.items())))
    rules.append(feedback_rule(trials, L, lr))
    rules.append(deep_rule(trials, lr))
    return rules + [egnn]


def deep_rule(trials: pd.DataFrame, lr: float = 1e-3, L: int = 8) -> Rule:
    """Rule M4 (sweeps/DESIGN.md, amendment 6): R2_full holds at L = 8."""
    claim = f"R2_full is stable at L={L}, lr={lr:g} (Wilson upper bound <= 0.31)"
    deep = _cell(trials, "r2_full", "none", L, lr)
    if deep.empty:
        return Rule("M4", claim, "NOT TESTED", "no trials")
    _, hi = wilson(int(deep["blew_up"].sum()), len(deep))
    verdict = "PASS" if hi <= 0.31 else "MISS" if deep["blew_up"].any() else "UNDECIDED"
    return Rule("M4", claim, verdict, f"{_rate(deep)}" + (f"; n = {len(deep)} < 10" if verdict == "UNDECIDED" else ""))


def egnn_rule(trials: pd.DataFrame) -> Rule:
    """Rule E1 (sweeps/DESIGN.md, amendment 6): test pos MSE of the runs in EGNN's setting (the trials
    outside the default setting) against EGNN's published number, t 95% interval over stable seeds."""
    claim = f"R2_full in EGNN's setting is as accurate as EGNN (t 95% upper bound <= {analysis.EGNN_PAPER_MSE})"
    runs = trials[~default_setting(trials)] if len(trials) else trials
    m = mean_interval(runs.loc[runs["status"] == Status.STABLE, "test_pos_mse"]) if len(runs) else {"n": 0}
    if m["n"] < 2:
        return Rule("E1", claim, "NOT TESTED", f"{m['n']} stable runs")
    verdict = ("AS ACCURATE OR BETTER" if m["hi"] <= analysis.EGNN_PAPER_MSE
               else "LESS ACCURATE" if m["lo"] > analysis.EGNN_PAPER_MSE else "NOT DISTINGUISHABLE")
    epochs = ", ".join(sorted({_label(e) for e in runs["epochs"].dropna()})) or "?"
    return Rule("E1", claim, verdict,
                f"test pos MSE {m['mean']:.5f} +- {m['sd']:.5f} (sample sd), t 95% {m['lo']:.5f}-{m['hi']:.5f}, "
                f"n = {m['n']} of {len(runs)} runs, {epochs} epochs (EGNN: ~10^4)")


# R2_full's stabilizers (config.ABLATIONS names) and the statistic that says how often each acted;
# None: a gain, a residual scale or the aggregation, which act on every forward pass.
STABILIZER_ACTIVITY = {name: acted_stat(name) if name in ACTING else None for name in R2_FULL_STABILIZERS}


def activity(trials: pd.DataFrame, name: str, L: int = 5, lr: float = 1e-3) -> tuple[float, float]:
    """(mean, max) over R2_full's runs at the cell of how often stabilizer `name` acted; (nan, nan) when
    it has no activity statistic (it acts on every pass) or no runs recorded it."""
    stat = STABILIZER_ACTIVITY.get(name)
    full = _cell(trials, "r2_full", "none", L, lr)
    if stat is None or f"act_{stat}" not in full or full[f"act_{stat}"].isna().all():
        return math.nan, math.nan
    values = full[f"act_{stat}"].dropna()
    return float(values.mean()), float(values.max())


def necessity(trials: pd.DataFrame, ablate: str, L: int = 5, lr: float = 1e-3) -> dict:
    """Leave-one-out `ablate` on R2_full against R2_full at one cell, paired by seed (DESIGN.md, amendment 3):
    the blow-up rates (exact McNemar) and the test pos MSE over seeds stable in both (paired t)."""
    variant, full = _cell(trials, "r2_full", ablate, L, lr), _cell(trials, "r2_full", "none", L, lr)
    out = {"n": len(variant), "blew_up": int(variant["blew_up"].sum()), "rate": _rate(variant)}
    if variant.empty or full.empty:
        return {**out, "necessary": None, "p": math.nan, "mse_p": math.nan, "why": "missing trials"}
    only_full, only_var, p = mcnemar_exact(full.set_index("seed")["blew_up"], variant.set_index("seed")["blew_up"])
    stable = lambda g: g[g["status"] == Status.STABLE].set_index("seed")["test_pos_mse"]  # noqa: E731
    mse = paired_t(stable(full), stable(variant))
    by_rate = p < 0.05 and only_var > only_full
    by_mse = mse["n"] >= 3 and mse["p"] < 0.05 and mse["mean"] > 0
    return {**out, "discordant": (only_full, only_var), "p": p, "mse_change": mse, "mse_p": mse["p"],
            "mse": mean_interval(variant.loc[variant["status"] == Status.STABLE, "test_pos_mse"]),
            "necessary": bool(by_rate or by_mse), "by_rate": bool(by_rate), "by_mse": bool(by_mse)}


def ablation_table(trials: pd.DataFrame, L: int = 5, lr: float = 1e-3,
                   names: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Per stabilizer: add-one-in on the original (sufficient?) and leave-one-out on R2_full (necessary?),
    with Holm-adjusted p over the stabilizers tested, and how often it acted in R2_full (inert?).

    names: the `ablate` designs to test (the family Holm adjusts over); default every design in `trials`.
    trials: a trial table, or load_runs rows with `model.L`, `train.lr` renamed to L, lr (activity is then
    unknown: nan)."""
    if names is None:
        names = [a for a in ABLATIONS if a != "none" and a in set(trials["ablate"])]
    rows = []
    for name in names:
        tested = {p for p in ("original", "r2_full") if not _cell(trials, p, name, L, lr).empty}
        if not tested:
            continue
        s = sufficiency(trials, name, L, lr) if "original" in tested else None
        n = necessity(trials, name, L, lr) if "r2_full" in tested else None
        mean_act, max_act = activity(trials, name, L, lr)
        rows.append({"stabilizer": name, "aoi": s, "loo": n,
                     "aoi_p": s["p"] if s else math.nan, "loo_p": n["p"] if n else math.nan,
                     "mse_p": n["mse_p"] if n else math.nan, "activity_mean": mean_act, "activity_max": max_act,
                     "inert": bool(max_act == 0.0), "sufficient": s["sufficient"] if s else None,
                     "necessary": n["necessary"] if n else None})
    table = pd.DataFrame(rows)
    for col in ("aoi_p", "loo_p", "mse_p"):
        if not table.empty:
            table[f"{col}_holm"] = holm(table[col].tolist())
    return table


FEEDBACK_TOGGLES = ("coupling", "s_coupling", "s_gating")


def feedback_rule(trials: pd.DataFrame, L: int = 5, lr: float = 1e-3) -> Rule:
    claim = "the mixing block's feedback loop causes the blow-ups (rule F1)"
    results = {name: sufficiency(trials, name, L, lr) for name in FEEDBACK_TOGGLES}
    if all(r["sufficient"] is None for r in results.values()):
        return Rule("F1", claim, "NOT TESTED", "no mechanism trials")
    blown = trials[(trials["preset"] == "original") & (trials["ablate"] == "none") & (trials["L"] == L)
                   & np.isclose(trials["lr"], lr) & trials["blew_up"]]
    in_mixing = float((blown["origin_block"] == "mixing").mean()) if len(blown) else math.nan
    any_sufficient = any(r["sufficient"] for r in results.values())
    mixing_origin = bool(in_mixing >= 0.5) if not math.isnan(in_mixing) else False
    verdict = ("SUPPORTED" if any_sufficient and mixing_origin else
               "NOT SUPPORTED" if not any_sufficient else "PARTLY SUPPORTED")
    parts = [f"{name}: {r['rate']}, McNemar p = {r['p']:.3g} ({'sufficient' if r['sufficient'] else 'not sufficient'})"
             for name, r in results.items() if r["sufficient"] is not None]
    parts.append(f"original blow-ups originating in a mixing block: {in_mixing:.0%} of {len(blown)}")
    return Rule("F1", claim, verdict, "; ".join(parts))
