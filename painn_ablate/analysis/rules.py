"""The rule book: every pre-registered rule of sweeps/DESIGN.md, defined once and judged by one function.

A `Rule` holds its id, its wording as DESIGN.md writes it (`name`, `text`; `{L}`, `{lr}`, `{deep}` are the
cell it is judged at, so the text at the design's cell is DESIGN.md's own), the cell and the function that
decides it. `judge(trials, ids, at)` is the only place a verdict is made: runs.md's verdict table and its
sections (painn_ablate.reporting.findings), `painn-ablate reproduce`'s verdict (painn_ablate.reporting.reproduce:
the rules REPRODUCE at its own cell) and the notebook analysis/findings.ipynb call it.

`trials` is a trial table (painn_ablate.analysis.tables.trial_table: one row per trial with preset, ablate, L,
lr, seed, status, blew_up, origin_layer, origin_block, origin_stat, test_pos_mse, ...). The per-variant tests
the rules are made of are here too: `sufficiency` (add-one-in, DESIGN.md section 2 and amendment 3),
`necessity` (leave-one-out, amendment 3), `activity` (inert, amendment 3), and `ablation_table` of them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from painn_ablate.analysis.anchors import BY_MODEL
from painn_ablate.analysis.stats import bootstrap, holm, mcnemar_exact, mean_interval, paired_t, wilson
from painn_ablate.analysis.tables import blow_up_phases, default_setting, histogram, value_label
from painn_ablate.core import names
from painn_ablate.core.config import ABLATIONS, ACTING, R2_FULL_STABILIZERS, acted_stat
from painn_ablate.core.outcome import Phase, Status

# Published numbers on the charged N-body protocol (EGNN, Satorras et al. 2021, Table 2).
EGNN_PAPER_MSE = BY_MODEL["EGNN"].pos_mse
LINEAR_PAPER_MSE = 0.0819

PASS, MISS, NOT_TESTED, UNDECIDED = "PASS", "MISS", "NOT TESTED", "UNDECIDED"
SUPPORTED, PARTLY, NOT_SUPPORTED = "SUPPORTED", "PARTLY SUPPORTED", "NOT SUPPORTED"
AS_ACCURATE, LESS_ACCURATE, NOT_DISTINGUISHABLE = "AS ACCURATE OR BETTER", "LESS ACCURATE", "NOT DISTINGUISHABLE"
PASSING = (PASS, SUPPORTED, AS_ACCURATE)  # the verdicts that say the claim holds
ALPHA = 0.05  # every test's level (DESIGN.md, "Statistics")
STABLE_BOUND = 0.31  # M2, M4: a Wilson upper bound <= 0.31 is 0 blow-ups in >= 10 seeds
FEEDBACK_TOGGLES = ("coupling", "s_coupling", "s_gating")
MIXING_ORIGIN_STATS = (names.MU_NORM_MAX, names.Q_ABSMAX)  # F1: "located in a mixing block, statistic ..."


@dataclass(frozen=True)
class Cell:
    """Where a rule is judged: depth L and learning rate (None: every learning rate at L)."""

    L: int
    lr: Optional[float] = None


DESIGN_CELL = Cell(5, 1e-3)  # the map's cell DESIGN.md names for M1-M3, S1, F1 (and the reproduction)


@dataclass(frozen=True)
class Verdict:
    """One rule judged: its id, its wording at the cell, the verdict, the evidence in words and in numbers."""

    rule: str
    claim: str
    verdict: str  # PASS | MISS | NOT TESTED | UNDECIDED | F1's and E1's words (see PASSING)
    evidence: str
    numbers: dict = field(default_factory=dict)  # what the verdict was computed from (reproduce.json keeps it)

    @property
    def passed(self) -> bool:
        return self.verdict in PASSING


Judgement = tuple[str, str, dict]  # (verdict, evidence, numbers)


@dataclass(frozen=True)
class Rule:
    """One pre-registered rule; `judge` applies its `decide` to the trials at its cell (or at the one asked)."""

    id: str
    name: str  # DESIGN.md's parenthesis after the rule's id
    text: str  # DESIGN.md's wording of the rule, with {L}, {lr}, {deep} for the cell
    source: str  # where it is written
    cell: Optional[Cell]  # None: the rule picks its trials otherwise (E1: EGNN's setting)
    decide: Callable[[pd.DataFrame, Optional[Cell], dict], Judgement]
    egnn_setting: bool = False  # judged on the trials in EGNN's setting instead of the default setting

    def claim(self, cell: Optional[Cell] = None) -> str:
        cell = cell or self.cell
        values = {} if cell is None else {"L": cell.L, "lr": _design_number(cell.lr), "deep": f"{cell.L - 1} or {cell.L}",
                                          "deep_range": f"{cell.L - 1}-{cell.L}"}
        return f"{self.name.format(**values)}: {self.text.format(**values)}"


def _design_number(x: Optional[float]) -> str:
    """1e-3 as DESIGN.md writes it (not 0.001)."""
    if x is None:
        return "any"
    short = f"{x:.0e}"
    return short.replace("e-0", "e-").replace("e+0", "e") if float(short) == x and x < 0.01 else f"{x:g}"


# ----------------------------------------------------------------------------- trials at a cell


def at_cell(trials: pd.DataFrame, preset: str, ablate: str, L: int, lr: Optional[float]) -> pd.DataFrame:
    """The trials of one condition (lr None: every learning rate)."""
    if trials.empty:
        return trials
    mask = (trials["preset"] == preset) & (trials["ablate"] == ablate) & (trials["L"] == L)
    if lr is not None:
        mask &= np.isclose(trials["lr"], lr)
    return trials[mask]


def by_seed(g: pd.DataFrame) -> pd.Series:
    return g.set_index("seed")["blew_up"].astype(bool)


def rate_numbers(g: pd.DataFrame) -> list:
    k, n = int(g["blew_up"].sum()), len(g)
    return [k, n, *wilson(k, n)]


def rate_text(g: pd.DataFrame) -> str:
    k, n, lo, hi = rate_numbers(g)
    return f"{k}/{n} (Wilson 95% {lo:.2f}-{hi:.2f})" if n else "no trials"


# ----------------------------------------------------------------------------- the per-variant tests


def sufficiency(trials: pd.DataFrame, ablate: str, L: int = 5, lr: float = 1e-3) -> dict:
    """Add-one-in `ablate` on the original against the original and R2_full at one cell (paired by seed):
    sufficient when its blow-up rate lies inside R2_full's Wilson interval and McNemar p < 0.05 against the
    original (DESIGN.md section 2)."""
    variant = at_cell(trials, "original", ablate, L, lr)
    original, full = at_cell(trials, "original", "none", L, lr), at_cell(trials, "r2_full", "none", L, lr)
    out = {"n": len(variant), "blew_up": int(variant["blew_up"].sum()) if len(variant) else 0,
           "rate": rate_text(variant)}
    if variant.empty or original.empty or full.empty:
        return {**out, "sufficient": None, "p": math.nan, "why": "missing trials"}
    lo, hi = wilson(int(full["blew_up"].sum()), len(full))
    rate = variant["blew_up"].mean()
    only_orig, only_var, p = mcnemar_exact(by_seed(original), by_seed(variant))
    inside = lo <= rate <= hi
    return {**out, "sufficient": bool(inside and p < ALPHA), "p": p, "discordant": (only_orig, only_var),
            "inside_r2_full": inside}


def necessity(trials: pd.DataFrame, ablate: str, L: int = 5, lr: float = 1e-3) -> dict:
    """Leave-one-out `ablate` on R2_full against R2_full at one cell, paired by seed (DESIGN.md, amendment 3):
    the blow-up rates (exact McNemar) and the test pos MSE over seeds stable in both (paired t)."""
    variant, full = at_cell(trials, "r2_full", ablate, L, lr), at_cell(trials, "r2_full", "none", L, lr)
    out = {"n": len(variant), "blew_up": int(variant["blew_up"].sum()) if len(variant) else 0,
           "rate": rate_text(variant)}
    if variant.empty or full.empty:
        return {**out, "necessary": None, "p": math.nan, "mse_p": math.nan, "why": "missing trials"}
    only_full, only_var, p = mcnemar_exact(by_seed(full), by_seed(variant))
    stable = lambda g: g[g["status"] == Status.STABLE].set_index("seed")["test_pos_mse"]  # noqa: E731
    mse = paired_t(stable(full), stable(variant))
    by_rate = p < ALPHA and only_var > only_full
    by_mse = mse["n"] >= 3 and mse["p"] < ALPHA and mse["mean"] > 0
    return {**out, "discordant": (only_full, only_var), "p": p, "mse_change": mse, "mse_p": mse["p"],
            "mse": mean_interval(variant.loc[variant["status"] == Status.STABLE, "test_pos_mse"]),
            "necessary": bool(by_rate or by_mse), "by_rate": bool(by_rate), "by_mse": bool(by_mse)}


# R2_full's stabilizers (config.ABLATIONS names) and the statistic that says how often each acted;
# None: a gain, a residual scale or the aggregation, which act on every forward pass.
STABILIZER_ACTIVITY = {name: acted_stat(name) if name in ACTING else None for name in R2_FULL_STABILIZERS}


def activity(trials: pd.DataFrame, name: str, L: int = 5, lr: float = 1e-3) -> tuple[float, float]:
    """(mean, max) over R2_full's runs at the cell of how often stabilizer `name` acted; (nan, nan) when
    it has no activity statistic (it acts on every pass) or no runs recorded it. Inert: a max of 0."""
    stat = STABILIZER_ACTIVITY.get(name)
    full = at_cell(trials, "r2_full", "none", L, lr)
    if stat is None or f"act_{stat}" not in full or full[f"act_{stat}"].isna().all():
        return math.nan, math.nan
    values = full[f"act_{stat}"].dropna()
    return float(values.mean()), float(values.max())


def ablation_table(trials: pd.DataFrame, L: int = 5, lr: float = 1e-3,
                   names: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Per stabilizer: add-one-in on the original (sufficient?) and leave-one-out on R2_full (necessary?),
    with Holm-adjusted p over the stabilizers tested, and how often it acted in R2_full (inert?).

    names: the `ablate` designs to test (the family Holm adjusts over); default every design in `trials`."""
    if names is None:
        names = [a for a in ABLATIONS if a != "none" and a in set(trials["ablate"])]
    rows = []
    for name in names:
        tested = {p for p in ("original", "r2_full") if not at_cell(trials, p, name, L, lr).empty}
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


# ----------------------------------------------------------------------------- the rules' judges


def _m1(trials: pd.DataFrame, cell: Cell, ctx: dict) -> Judgement:
    original = at_cell(trials, "original", "none", cell.L, cell.lr)
    if original.empty:
        return NOT_TESTED, "no trials", {}
    k, n, lo, hi = rate_numbers(original)
    return (PASS if lo >= 0.5 else MISS), rate_text(original), {"original": [k, n, lo, hi]}


def _m2(trials: pd.DataFrame, cell: Cell, ctx: dict) -> Judgement:
    original = at_cell(trials, "original", "none", cell.L, cell.lr)
    full = at_cell(trials, "r2_full", "none", cell.L, cell.lr)
    if original.empty or full.empty:
        return NOT_TESTED, f"original {rate_text(original)}, r2_full {rate_text(full)}", {}
    k, n, lo, hi = rate_numbers(full)
    a, b, p = mcnemar_exact(by_seed(original), by_seed(full))
    verdict = PASS if hi <= STABLE_BOUND and p < ALPHA else MISS
    return verdict, (f"r2_full {rate_text(full)}; original {rate_text(original)}; seeds blowing up only in the "
                     f"original {a}, only in r2_full {b}, exact McNemar p = {p:.3g}"), {
        "r2_full": [k, n, lo, hi], "original": rate_numbers(original), "mcnemar_p": p, "only_original": a,
        "only_r2_full": b}


def _m3(trials: pd.DataFrame, cell: Cell, ctx: dict) -> Judgement:
    blown = at_cell(trials, "original", "none", cell.L, None)  # "at L = 5 (all lrs)"
    blown = blown[blown["blew_up"].astype(bool)] if len(blown) else blown
    if blown.empty:
        return NOT_TESTED, "no blow-ups", {}
    deep = (cell.L - 1, cell.L)
    layers = pd.to_numeric(blown["origin_layer"], errors="coerce")
    k = int(layers.isin(deep).sum())
    origins = [{"seed": int(r["seed"]), "lr": float(r["lr"]), "layer": None if pd.isna(r["origin_layer"])
                else int(r["origin_layer"]), "block": r.get("origin_block"), "stat": r.get("origin_stat")}
               for _, r in blown.iterrows()]
    return (PASS if k >= len(blown) / 2 else MISS), (f"{k}/{len(blown)} in layers {deep[0]}-{deep[1]}; origin "
                                                     f"layers {histogram(blown['origin_layer'])}"), {
        "in_deep": k, "blow_ups": len(blown), "origins": origins}


def _s1(trials: pd.DataFrame, cell: Cell, ctx: dict) -> Judgement:
    tested = set(trials.loc[(trials["preset"] == "original") & (trials["L"] == cell.L)
                            & np.isclose(trials["lr"], cell.lr), "ablate"]) if len(trials) else set()
    # amendment 3: alpha is tested as its two scales; a single `alpha` design (section 2) counts as one
    groups = {"g": ["g"], "aggregation": ["aggregation"],
              "alpha": ["alpha"] if "alpha" in tested else ["alpha_inter", "alpha_mix"]}
    results = {part: sufficiency(trials, part, cell.L, cell.lr) for parts in groups.values() for part in parts
               if part in tested}
    if not results:
        return NOT_TESTED, "cut for compute (sweeps/DESIGN.md, amendment 1)", {}
    holds = {}
    for group, parts in groups.items():
        found = [results[p]["sufficient"] for p in parts if p in results]
        holds[group] = True if any(found) else False if len(found) == len(parts) and None not in found else None
    verdict = MISS if False in holds.values() else PASS if all(holds.values()) else NOT_TESTED
    evidence = "; ".join(f"{part}: {r['rate']}, McNemar p = {r['p']:.3g} "
                         f"({'sufficient' if r['sufficient'] else 'not sufficient'})" for part, r in results.items())
    untested = [p for parts in groups.values() for p in parts if p not in results]
    if untested:
        evidence += f"; not run: {', '.join(untested)}"
    return verdict, evidence, {"sufficient": {p: r["sufficient"] for p, r in results.items()}, "groups": holds}


def _f1(trials: pd.DataFrame, cell: Cell, ctx: dict) -> Judgement:
    results = {name: sufficiency(trials, name, cell.L, cell.lr) for name in FEEDBACK_TOGGLES}
    if all(r["sufficient"] is None for r in results.values()):
        return NOT_TESTED, "no mechanism trials", {}
    blown = at_cell(trials, "original", "none", cell.L, cell.lr)
    blown = blown[blown["blew_up"].astype(bool)]
    in_block = blown["origin_block"] == "mixing"
    located = in_block & blown["origin_stat"].isin(MIXING_ORIGIN_STATS)
    share = float(located.mean()) if len(blown) else math.nan
    any_sufficient = any(r["sufficient"] for r in results.values())
    mixing_origin = bool(share >= 0.5) if not math.isnan(share) else False
    verdict = (SUPPORTED if any_sufficient and mixing_origin else NOT_SUPPORTED if not any_sufficient else PARTLY)
    parts = [f"{name}: {r['rate']}, McNemar p = {r['p']:.3g} ({'sufficient' if r['sufficient'] else 'not sufficient'})"
             for name, r in results.items() if r["sufficient"] is not None]
    parts.append(f"original blow-ups located in a mixing block with statistic {' or '.join(MIXING_ORIGIN_STATS)}: "
                 f"{int(located.sum())} of {len(blown)} ({share:.0%}; in a mixing block at all: {int(in_block.sum())})")
    return verdict, "; ".join(parts), {"sufficient": {n: r["sufficient"] for n, r in results.items()},
                                       "mixing_origin_share": share}


def _m4(trials: pd.DataFrame, cell: Cell, ctx: dict) -> Judgement:
    deep = at_cell(trials, "r2_full", "none", cell.L, cell.lr)
    if deep.empty:
        return NOT_TESTED, "no trials", {}
    k, n, lo, hi = rate_numbers(deep)
    verdict = PASS if hi <= STABLE_BOUND else MISS if k else UNDECIDED
    return verdict, rate_text(deep) + (f"; n = {n} < 10" if verdict == UNDECIDED else ""), {"r2_full": [k, n, lo, hi]}


P2_MIN_BLOW_UPS = 5  # P2 is undecided below this many blow-ups at its depth (amendment 8)


def phase_share(trials: pd.DataFrame, L: int, phase: Phase) -> list:
    """[k, n, lo, hi]: of the original's blow-ups at L (every lr), k whose first blow-up is of `phase`, with the
    Wilson 95% interval; n counts the blow-ups whose phase is recorded."""
    phases = blow_up_phases(at_cell(trials, "original", "none", L, None)).dropna()
    k, n = int((phases == phase).sum()), len(phases)
    return [k, n, *wilson(k, n)]


def _share_text(numbers: list, what: str) -> str:
    k, n, lo, hi = numbers
    return f"{k}/{n} blow-ups {what} (Wilson 95% {lo:.2f}-{hi:.2f})" if n else "no blow-ups with a recorded phase"


def _p1(trials: pd.DataFrame, cell: Cell, ctx: dict) -> Judgement:
    numbers = phase_share(trials, cell.L, Phase.INIT)
    if numbers[1] == 0:
        return NOT_TESTED, _share_text(numbers, "at initialisation"), {}
    return (PASS if numbers[2] >= 0.5 else MISS), _share_text(numbers, "at initialisation"), {"init": numbers}


def _p2(trials: pd.DataFrame, cell: Cell, ctx: dict) -> Judgement:
    numbers = phase_share(trials, cell.L, Phase.TRAINING)
    if numbers[1] < P2_MIN_BLOW_UPS:
        return UNDECIDED, _share_text(numbers, "in training") + f"; fewer than {P2_MIN_BLOW_UPS}", {"training": numbers}
    return (PASS if numbers[2] >= 0.5 else MISS), _share_text(numbers, "in training"), {"training": numbers}


def _e1(trials: pd.DataFrame, cell: Optional[Cell], ctx: dict) -> Judgement:
    m = mean_interval(trials.loc[trials["status"] == Status.STABLE, "test_pos_mse"]) if len(trials) else {"n": 0}
    if m["n"] < 2:
        return NOT_TESTED, f"{m['n']} stable runs", {}
    verdict = (AS_ACCURATE if m["hi"] <= EGNN_PAPER_MSE else LESS_ACCURATE if m["lo"] > EGNN_PAPER_MSE
               else NOT_DISTINGUISHABLE)
    epochs = ", ".join(sorted({value_label(e) for e in trials["epochs"].dropna()})) or "?"
    return verdict, (f"test pos MSE {m['mean']:.5f} +- {m['sd']:.5f} (sample sd), t 95% {m['lo']:.5f}-{m['hi']:.5f}, "
                     f"n = {m['n']} of {len(trials)} runs, {epochs} epochs (EGNN: ~10^4)"), m


def _a1(trials: pd.DataFrame, cell: Cell, ctx: dict) -> Judgement:
    full = at_cell(trials, "r2_full", "none", cell.L, cell.lr)
    mse = mean_interval(full.loc[full["status"] == Status.STABLE, "test_pos_mse"]) if len(full) else mean_interval([])
    const_vel = (ctx.get("baselines") or {}).get("constant_velocity_test_pos_mse")
    numbers = {**mse, "constant_velocity": const_vel,
               "test_pos_mse": {str(int(r["seed"])): (None if pd.isna(r["test_pos_mse"]) else float(r["test_pos_mse"]))
                                for _, r in full.iterrows()}}
    if mse["n"] < 2 or const_vel is None:
        return NOT_TESTED, "no stable run" if not mse["n"] else f"{mse['n']} stable run(s), no baseline", numbers
    return (PASS if mse["hi"] < const_vel else MISS), (
        f"mean {mse['mean']:.4g}, sample sd {mse['sd']:.2g}, t 95% interval [{mse['lo']:.4g}, {mse['hi']:.4g}] "
        f"(n = {mse['n']}) vs constant velocity {const_vel:.4g}"), numbers


DESIGN = "sweeps/DESIGN.md"
# ----------------------------------------------------------------------------- the scale dose-response (amendment 7)

# scripts/dose-response names each setting's probe folder so; the exported probe table's `variant` is that name
DOSE_VARIANT = re.compile(r"g(?P<g>[0-9.]+)-coupling_(?P<coupling>true|false)-mu0_(?P<mu0>[0-9.]+)")
DOSE_GAINS = (1.0, 0.5, 0.25, 0.125)
DOSE_REMOVED = 0.05  # D4: an interval wholly below this is the initialisation blow-up removed


def dose_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per setting (g, coupling, mu0_scale): the mean over seeds of `init_blow_up_frac` (the fraction of the
    first batches on which the initial network crosses a criterion) with its seed-level bootstrap 95%
    interval, and the seeds blown up on batch 0 (k/n, Wilson 95%)."""
    rows = []
    for variant, g in seeds[seeds["step"] == 0].groupby("variant"):
        m = DOSE_VARIANT.fullmatch(str(variant))
        if m is None:
            continue
        mean, lo, hi = bootstrap(g["init_blow_up_frac"])
        k, n = int(g["blew_up"].sum()), len(g)
        rows.append({"g": float(m["g"]), "coupling": m["coupling"] == "true", "mu0_scale": float(m["mu0"]), "seeds": n,
                     "batches": int(g["init_batches"].iloc[0]), "frac": mean, "frac_lo": lo, "frac_hi": hi,
                     "batch0": k, "batch0_lo": wilson(k, n)[0], "batch0_hi": wilson(k, n)[1]})
    columns = ["g", "coupling", "mu0_scale", "seeds", "batches", "frac", "frac_lo", "frac_hi", "batch0", "batch0_lo",
               "batch0_hi"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["mu0_scale", "coupling", "g"], ascending=False, ignore_index=True)


def _dose(ctx: dict, g: float, coupling: bool) -> Optional[pd.Series]:
    t = ctx.get("dose")
    if t is None or t.empty:
        return None
    hit = t[np.isclose(t["g"], g) & (t["coupling"] == coupling) & np.isclose(t["mu0_scale"], ctx.get("mu0_scale", 1.0))]
    return hit.iloc[0] if len(hit) else None


def _frac(r: pd.Series) -> str:
    return f"{r['frac']:.3f} [{r['frac_lo']:.3f}, {r['frac_hi']:.3f}]"


def _below(ctx: dict, low: tuple[float, bool], high: tuple[float, bool], what: str) -> Judgement:
    """PASS when the interval of setting `low` (g, coupling) lies wholly below the interval of `high`."""
    a, b = _dose(ctx, *low), _dose(ctx, *high)
    if a is None or b is None:
        return NOT_TESTED, f"{what}: a setting was not run", {}
    ok = a["frac_hi"] < b["frac_lo"]
    return (PASS if ok else MISS), f"{what}: {_frac(a)} vs {_frac(b)}", {"low": a.to_dict(), "high": b.to_dict()}


def _d1(trials: pd.DataFrame, cell: Optional[Cell], ctx: dict) -> Judgement:
    return _below(ctx, (0.25, True), (1.0, True), "g = 0.25 vs g = 1, coupling kept")


def _d2(trials: pd.DataFrame, cell: Optional[Cell], ctx: dict) -> Judgement:
    rows = [_dose(ctx, g, True) for g in DOSE_GAINS]
    if any(r is None for r in rows):
        return NOT_TESTED, "a setting was not run", {}
    means = [float(r["frac"]) for r in rows]
    ok = all(b <= a for a, b in zip(means, means[1:]))
    return (PASS if ok else MISS), "g = " + ", ".join(f"{g:g}: {m:.3f}" for g, m in zip(DOSE_GAINS, means)), \
        {"means": dict(zip(map(str, DOSE_GAINS), means))}


def _d3(trials: pd.DataFrame, cell: Optional[Cell], ctx: dict) -> Judgement:
    judged = {g: _below(ctx, (g, False), (g, True), f"g = {g:g}, coupling dropped vs kept") for g in (1.0, 0.25)}
    verdicts = [v for v, _, _ in judged.values()]
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "; ".join(f"{v} at g = {g:g}" for g, v in zip(judged, verdicts))
    return verdict, "; ".join(e for _, e, _ in judged.values()), {str(g): n for g, (_, _, n) in judged.items()}


def _d4(trials: pd.DataFrame, cell: Optional[Cell], ctx: dict) -> Judgement:
    d1, evidence, _ = _d1(trials, cell, ctx)
    r = _dose(ctx, 0.25, True)
    if d1 == NOT_TESTED or r is None:
        return NOT_TESTED, evidence, {}
    if d1 == PASS and r["frac_hi"] < DOSE_REMOVED:
        return "SCALE EXPLAINS IT", f"{evidence}; the upper bound at g = 0.25 is under {DOSE_REMOVED}", {}
    if d1 == PASS:
        return "SCALE LOWERS IT BUT DOES NOT REMOVE IT", f"{evidence}; at g = 0.25 the interval reaches {r['frac_hi']:.3f}", {}
    return "NOT SHOWN", evidence, {}


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("M1", "the original blows up where the specification says",
         "at L = {L}, lr = {lr} the original's blow-up rate has a Wilson lower bound >= 0.5",
         f"{DESIGN}, section 1", DESIGN_CELL, _m1),
    Rule("M2", "R2_full is stable there",
         "at L = {L}, lr = {lr} R2_full's blow-up rate has a Wilson upper bound <= 0.31 (that is, 0/10) and the "
         "paired McNemar test against the original gives p < 0.05", f"{DESIGN}, section 1", DESIGN_CELL, _m2),
    Rule("M3", "origin in layers {deep_range}, as the specification says",
         "of the original's blow-ups at L = {L} (all lrs), at least half are located in layer {deep}",
         f"{DESIGN}, section 1", DESIGN_CELL, _m3),
    Rule("S1", "runs.md's earlier claim that g, alpha and aggregation are each sufficient",
         "S1 holds when g, aggregation and at least one of alpha_inter / alpha_mix are sufficient",
         f"{DESIGN}, section 2 and amendment 3", DESIGN_CELL, _s1),
    Rule("F1", "the specification's feedback loop",
         "the explanation is supported when removing or bounding a feedback term (coupling, s_coupling or "
         "s_gating) is sufficient by the rule above and the original's blow-ups originate in the mixing block "
         "(>= half of them located in a mixing block, statistic mu_norm_max or q_absmax). It is not supported "
         "when none of the three is sufficient; partly otherwise", f"{DESIGN}, section 2", DESIGN_CELL, _f1),
    Rule("M4", "R2_full holds at L = {L}",
         "PASS when the blow-up rate's Wilson upper bound <= 0.31 (0 of >= 10 seeds); MISS when any seed blows "
         "up; UNDECIDED when none blew up but n < 10", f"{DESIGN}, amendment 6", Cell(8, 1e-3), _m4),
    Rule("E1", "accuracy against EGNN's test pos MSE 0.0071, n = 3, t 95% interval of the mean over the seeds "
               "that finished stable",
         "as accurate or better when the interval's upper bound <= 0.0071; less accurate when its lower bound > "
         "0.0071; not distinguishable otherwise", f"{DESIGN}, amendment 6", None, _e1, egnn_setting=True),
    Rule("A1", "r2_full is accurate",
         "the upper end of the t 95% interval of r2_full's mean test pos MSE (its stable runs; sample sd) lies "
         "below the constant-velocity baseline pos + vel * dt on the same test split",
         "painn_ablate/reporting/reproduce.py, criterion 4 of `painn-ablate reproduce`", DESIGN_CELL, _a1),
    Rule("P1", "the original fails at initialisation at L = {L}",
         "of the original's blow-ups at L = {L} (three lrs pooled), the fraction of phase init has a Wilson 95% "
         "lower bound >= 0.5", f"{DESIGN}, amendment 8", Cell(5), _p1),
    Rule("P2", "training dynamics at L = {L}",
         "of the original's blow-ups at L = {L} (three lrs pooled), the fraction of phase training has a Wilson 95% "
         "lower bound >= 0.5. PASS / MISS; UNDECIDED when there are fewer than 5 blow-ups at L = {L}", f"{DESIGN}, amendment 8",
         Cell(3), _p2),
    Rule("D1", "scale lowers it",
         "coupling kept, mu0_scale 1: the interval at g = 0.25 lies wholly below the interval at g = 1",
         f"{DESIGN}, amendment 7", None, _d1),
    Rule("D2", "a monotone dose-response",
         "coupling kept, mu0_scale 1: the point estimates do not rise as g falls from 1 to 0.5 to 0.25 to 0.125",
         f"{DESIGN}, amendment 7", None, _d2),
    Rule("D3", "the coupling matters apart from scale",
         "mu0_scale 1: the interval with the coupling dropped lies wholly below the interval with it kept, judged at "
         "g = 1 and, separately, at g = 0.25", f"{DESIGN}, amendment 7", None, _d3),
    Rule("D4", "scale explains it",
         "claimed only when D1 holds and, coupling kept and mu0_scale 1, the interval's upper bound at g = 0.25 is "
         "below 0.05", f"{DESIGN}, amendment 7", None, _d4),
)}
DESIGN_RULES = ("M1", "M2", "M3", "S1", "F1", "M4", "E1")  # runs.md's verdict table, in this order
REPRODUCE = ("M1", "M3", "M2", "A1")  # `painn-ablate reproduce`, judged at its own cell
OUTCOME_RULES = ("M1", "M2", "M3", "M4", "P1", "P2")  # amendment 8, judged on the map re-run's tables
DOSE_RULES = ("D1", "D2", "D3", "D4")  # amendment 7, judged on the dose-response's probe table (`dose=`)


def judge(trials: pd.DataFrame, ids: Sequence[str] = DESIGN_RULES, at: Optional[Cell] = None,
          baselines: Optional[dict[str, Any]] = None, dose: Optional[pd.DataFrame] = None,
          mu0_scale: float = 1.0) -> list[Verdict]:
    """The rules `ids` judged on `trials`, each at its own cell or all at `at` (reproduce's regime). E1 sees
    only the trials in EGNN's setting, every other rule only those in the default setting.

    baselines: the trivial predictors' test MSEs (reproduce.baselines), which A1 compares with.
    dose: `dose_table` of amendment 7's probes, which D1-D4 read (at `mu0_scale`; 1 is the rules', 0.25 the
    descriptive repeat)."""
    default = trials[default_setting(trials)] if len(trials) else trials
    egnn = trials[~default_setting(trials)] if len(trials) else trials
    ctx = {"baselines": baselines or {}, "dose": dose, "mu0_scale": mu0_scale}
    verdicts = []
    for rule_id in ids:
        rule = RULES[rule_id]
        cell = None if rule.cell is None else (at or rule.cell)
        verdict, evidence, numbers = rule.decide(egnn if rule.egnn_setting else default, cell, ctx)
        verdicts.append(Verdict(rule.id, rule.claim(cell), verdict, evidence, numbers))
    return verdicts


def judged(verdicts: Sequence[Verdict], rule_id: str) -> Verdict:
    """The verdict of one rule among `verdicts`."""
    return next(v for v in verdicts if v.rule == rule_id)

