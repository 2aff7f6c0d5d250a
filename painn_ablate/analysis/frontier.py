"""The stability frontier: each variant's critical learning rate per paired seed, and tests of its shifts.

A blow-up rate at one (L, lr) cell saturates (0/10 or 10/10 tells nothing about how far a variant is
from the edge). The frontier measures the edge itself. On a fixed geometric ladder of learning rates
(LADDER: 3e-4 to 3e-1 in ten steps of 10^0.3 ~ 2x), a run *trains* at a rung (`sweep.walk.trains`) when
it has no training-phase blow-up there (a blow-up whose network was fine at initialisation on the batch where it
fired; initialisation-phase blow-ups are counted apart, since no learning rate causes them).

    critical rung   per (variant, seed): the highest rung below the first rung, walking up from the
                    lowest, at which the run does not train. -1: it fails already at the lowest rung;
                    the top rung: it trains at every rung (right-censored: the frontier lies above the
                    ladder). Rungs are compared as indices, so a censored value is still ordered.
    critical lr     LADDER[critical rung] (nan for -1)
    LR sensitivity  Wortsman et al. 2023 (arXiv 2309.14322), per (variant, seed): the mean over the
                    ladder of min(final val loss, initial loss) minus the best final val loss over the
                    ladder. A rung the walk did not run (above a failure) counts as the initial loss,
                    as a run that did not train there would.

Paired tests (the same seeds in every variant): `shift` compares a variant's critical rungs with a
reference's seed by seed: the median paired shift in rungs (x ~2 in lr per rung) with a bootstrap 95%
interval, the exact sign test and the Wilcoxon signed-rank test, one-sided in the direction asked.
`verdict_table` judges amendment 9's rules per stabilizer group (necessary / sufficient / raises / inert /
not shown), `fr1` its rule FR1, `rung_rates` the blow-up rate at each rung; `frontier_result` computes all
of them from a walked sweep's trial table on the sweep's own ladder (its frontier parameter's values, a
sub-range of LADDER; rungs are indices of that ladder). `dose_result`, `degree_result` and `family_result` judge
amendments 11, 12 and 16 the same way. The walk itself (`next_rung`, `critical_rung`) is
the engine's, in painn_ablate.sweep.walk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from painn_ablate.analysis.rules import Verdict  # one result type for every rule, cell or frontier
from painn_ablate.analysis.stats import bootstrap, holm, mean_interval, paired_t, seed_and_sample_interval, wilson
from painn_ablate.core.outcome import OUTCOMES, PHASE_KEY, Phase, Status, is_blow_up
from painn_ablate.sweep.walk import critical_rung, failed_at_init, trains  # the engine's walk and rule of training

LADDER = tuple(float(f"{x:.3g}") for x in np.geomspace(3e-4, 3e-1, 11))  # 3e-4, 5.99e-4, ..., 0.3
ALPHA = 0.05
MIN_PAIRS = 10  # amendment 9: a verdict resting on fewer paired seeds is not judged
NOT_JUDGED = "n < {}, not judged"  # .format(min_pairs)


def rung(lr: float, ladder: Sequence[float] = LADDER) -> int:
    """The index of `lr` on the ladder (to 0.1% relative), or ValueError."""
    for i, x in enumerate(ladder):
        if math.isclose(lr, x, rel_tol=1e-3):
            return i
    raise ValueError(f"learning rate {lr:g} is not on the ladder {', '.join(f'{x:g}' for x in ladder)}")


def lr_sensitivity(final_loss: dict[int, float], initial_loss: float, ladder: Sequence[float] = LADDER) -> float:
    """E over the ladder of min(final loss, initial loss) minus the best final loss (Wortsman et al. 2023).
    A rung not run, or whose loss is not finite, counts as the initial loss."""
    capped = [min(final_loss[i], initial_loss) if i in final_loss and math.isfinite(final_loss[i]) else initial_loss
              for i in range(len(ladder))]
    finite = [v for v in final_loss.values() if math.isfinite(v)]
    best = min(finite) if finite else initial_loss
    return float(np.mean(capped) - min(best, initial_loss))


FINISHED = (*(str(s) for s in OUTCOMES), Status.PRUNED.value, Status.ERROR.value)  # a rung the walk has judged


def critical_table(trials: pd.DataFrame, variant: Sequence[str] = ("preset", "ablate"), seed: str = "seed",
                   lr: str = "lr", status: str = "status", phase: str = PHASE_KEY,
                   training: str = "training_blow_up", final_loss: str = "final_val_pos_mse",
                   initial_loss: str = "initial_val_pos_mse", ladder: Sequence[float] = LADDER) -> pd.DataFrame:
    """One row per (variant, seed), in the order they first appear, of a trial table (one row per trial; column
    names as in painn_ablate.sweep.studies.trial_rows): critical rung and lr, whether the walk ended at a rung that
    failed at initialisation (`walk.failed_at_init`), LR sensitivity, the rungs run, and how many of them
    blew up at initialisation. Trials not finished (waiting, running, lost or interrupted ones, whose re-run
    stands in) do not count; a (variant, seed) whose walk is not complete has NA critical values."""
    rows = []
    for key, g in trials.groupby([*variant, seed], sort=False, dropna=False):
        done: dict[int, bool] = {}
        at_init: dict[int, bool] = {}
        losses: dict[int, float] = {}
        initial, init_blow_ups = [], 0
        for r in g.to_dict("records"):
            if r[status] not in FINISHED:
                continue
            i = rung(r[lr], ladder)
            attrs = {"status": r[status], PHASE_KEY: _opt(r.get(phase)), "training_blow_up": _opt_bool(r.get(training))}
            done[i], at_init[i] = trains(attrs), failed_at_init(attrs)
            losses[i], initial = _float(r.get(final_loss)), [*initial, _float(r.get(initial_loss))]
            init_blow_ups += is_blow_up(r[status]) and attrs[PHASE_KEY] == Phase.INIT
        try:
            c: Optional[int] = critical_rung(done, ladder)
        except ValueError:
            c = None
        finite = [x for x in initial if math.isfinite(x)]
        rows.append({**dict(zip([*variant, seed], key)), "critical_rung": c,
                     "critical_lr": ladder[c] if c is not None and c >= 0 else math.nan,
                     "censored": c == len(ladder) - 1,
                     "ended_at_init": c is not None and c + 1 < len(ladder) and at_init[c + 1],
                     "rungs_run": len(done), "init_phase_blow_ups": int(init_blow_ups),
                     "lr_sensitivity": (lr_sensitivity(losses, float(np.median(finite)), ladder)
                                        if c is not None and finite else math.nan)})
    return pd.DataFrame(rows, columns=[*variant, seed, *CRITICAL_COLUMNS])


CRITICAL_COLUMNS = ("critical_rung", "critical_lr", "censored", "ended_at_init", "rungs_run", "init_phase_blow_ups",
                    "lr_sensitivity")


@dataclass(frozen=True)
class Shift:
    """A variant's critical rungs against a reference's, paired by seed (variant minus reference)."""

    n: int  # seeds with both
    median: float  # median paired shift, in rungs (one rung ~ x2 in lr)
    lo: float  # bootstrap 95% interval of the median shift
    hi: float
    up: int  # seeds whose rung rose
    down: int  # seeds whose rung fell
    p_sign: float  # exact sign test, one-sided in `alternative`
    p_wilcoxon: float  # Wilcoxon signed-rank, one-sided; nan when every shift is 0
    alternative: str  # "less": the variant's frontier is lower; "greater": higher


def shift(variant: pd.Series, reference: pd.Series, alternative: str, seed: int = 0) -> Shift:
    """`variant` and `reference`: critical rungs indexed by seed. Seeds missing in either are dropped."""
    both = pd.concat([variant.rename("v"), reference.rename("r")], axis=1).dropna()
    d = (both["v"] - both["r"]).to_numpy(dtype=float)
    n, up, down = len(d), int((d > 0).sum()), int((d < 0).sum())
    if n == 0:
        return Shift(0, math.nan, math.nan, math.nan, 0, 0, math.nan, math.nan, alternative)
    hits = down if alternative == "less" else up
    p_sign = float(sps.binomtest(hits, up + down, 0.5, alternative="greater").pvalue) if up + down else 1.0
    p_wil = (float(sps.wilcoxon(d, zero_method="wilcox", alternative=alternative).pvalue)
             if (d != 0).any() else math.nan)
    median, lo, hi = bootstrap(d, np.median, seed)
    return Shift(n, median, lo, hi, up, down, p_sign, p_wil, alternative)


def two_sided(variant: pd.Series, reference: pd.Series, seed: int = 0) -> tuple[Shift, float]:
    """`shift(variant, reference, "greater")` (its median, interval, up and down) and the two-sided exact sign
    test's p of the same pairs (twice the smaller one-sided p, at most 1: the binomial at 0.5 is symmetric)."""
    greater, less = shift(variant, reference, "greater", seed), shift(variant, reference, "less", seed)
    return greater, min(1.0, 2 * min(greater.p_sign, less.p_sign))


def judge_shift(s: Shift, p: float, min_pairs: int = MIN_PAIRS) -> str:
    """A frontier rule's verdict on a paired shift and its test's p: fewer than `min_pairs` pairs: not judged;
    else PASS where p < 0.05, MISS otherwise."""
    return NOT_JUDGED.format(min_pairs) if s.n < min_pairs else "PASS" if p < ALPHA else "MISS"


def shift_words(s: Shift, what: str, p: float, sided: str = "") -> str:
    """A paired shift as a rule's evidence: `what`, the median shift with its interval, up / down of n, the p."""
    return (f"{what}: median shift {s.median:g} rung [{s.lo:g}, {s.hi:g}], up {s.up} / down {s.down} of n {s.n}, "
            f"{sided + ' ' if sided else ''}sign test p {p:.3g}")


def median_interval(rungs: pd.Series, seed: int = 0) -> tuple[float, float, float]:
    """Median critical rung of one variant with a bootstrap 95% interval."""
    return bootstrap(rungs.dropna().to_numpy(dtype=float), np.median, seed)


DESIGNS = {  # preset -> (the question, the direction a stabilizer moves the frontier when it matters)
    "r2_full": ("necessary", "less"),  # leaving it out of R2_full lowers the critical rate
    "original": ("sufficient", "greater"),  # adding it to the original raises the critical rate
    "fairchem": ("necessary", "less"),  # leaving a part out of fairchem's preset lowers its critical rate
}


def _reference(critical: pd.DataFrame, preset: str) -> pd.Series:
    """A preset's own critical rungs (ablate none), indexed by seed."""
    return critical[(critical["preset"] == preset) & (critical["ablate"] == "none")].set_index("seed")["critical_rung"]


VERDICT_COLUMNS = ("preset", "ablate", "question", "n", "median_rung", "shift", "shift_lo", "shift_hi", "up", "down",
                   "p_sign", "p_holm", "p_wilcoxon", "verdict")  # verdict_table's, also where no variant has walked


def verdict_table(critical: pd.DataFrame, seed: int = 0, min_pairs: int = MIN_PAIRS) -> pd.DataFrame:
    """Per (preset, ablate) other than the presets themselves: the paired shift of the critical rung against
    its own preset (median, bootstrap 95% interval, seeds up/down, sign and Wilcoxon p, Holm over the
    preset's family on the sign test) and the verdict (amendment 9), on the seeds whose walks both completed
    (`n`):

        necessary      (on r2_full or fairchem) Holm-adjusted sign-test p < 0.05 that leaving it out lowers the rung
        sufficient     (on original) Holm-adjusted sign-test p < 0.05 that adding it raises the rung, and
                       its median rung lies in R2_full's bootstrap 95% interval
        raises         (on original) the first part of sufficient without the second
        inert          every paired shift is 0
        not shown      none of these
        n < 10, not judged   fewer than `min_pairs` paired seeds (a sweep cut short, or still running); outside
                             the Holm family, which holds the variants judged
    """
    full_ci = median_interval(_reference(critical, "r2_full"), seed)
    rows = []
    for preset, (question, alternative) in DESIGNS.items():
        ref = _reference(critical, preset)
        mine = critical[critical["preset"] == preset]
        family = {a: g.set_index("seed") for a, g in mine[mine["ablate"] != "none"].groupby("ablate", sort=False)}
        shifts = {a: shift(g["critical_rung"], ref, alternative, seed) for a, g in family.items()}
        judged = [a for a in family if shifts[a].n >= min_pairs]  # Holm over the variants judged, as registered
        adjusted = {a: math.nan for a in family} | dict(zip(judged, holm([shifts[a].p_sign for a in judged])))
        for a, g in family.items():
            s = shifts[a]
            med = median_interval(g["critical_rung"], seed)
            if s.n < min_pairs:
                verdict = NOT_JUDGED.format(min_pairs)
            elif s.up == 0 and s.down == 0:
                verdict = "inert"
            elif adjusted[a] < ALPHA and question == "necessary":
                verdict = "necessary"
            elif adjusted[a] < ALPHA and full_ci[1] <= med[0] <= full_ci[2]:
                verdict = "sufficient"
            elif adjusted[a] < ALPHA:
                verdict = "raises"
            else:
                verdict = "not shown"
            rows.append({"preset": preset, "ablate": a, "question": question, "n": s.n, "median_rung": med[0],
                         "shift": s.median, "shift_lo": s.lo, "shift_hi": s.hi, "up": s.up, "down": s.down,
                         "p_sign": s.p_sign, "p_holm": adjusted[a], "p_wilcoxon": s.p_wilcoxon, "verdict": verdict})
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))


def variant_table(critical: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per variant (the presets too): setting_table's columns (walks, those complete, the median critical rung
    with its bootstrap 95% interval, censored walks, walks ending at a failure present at initialisation,
    init-phase blow-ups) and its median LR sensitivity: what amendment 9 reports beside the verdicts."""
    table = setting_table(critical, ("preset", "ablate"), seed)
    if len(table):
        sensitivity = critical.groupby(["preset", "ablate"], sort=False)["lr_sensitivity"].median()
        table["lr_sensitivity"] = [float(sensitivity[(p, a)]) for p, a in zip(table["preset"], table["ablate"])]
    return _in_design_order(table)


def _in_design_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows per variant as the design reads: each preset of DESIGNS (then any other), itself first, then its
    ablations in the order they first appear (a sweep's trials: its file's order)."""
    if not len(frame):
        return frame
    presets = [*DESIGNS, *sorted(set(frame["preset"].astype(str)) - set(DESIGNS))]
    key = [(presets.index(str(p)), a != "none") for p, a in zip(frame["preset"], frame["ablate"])]
    return frame.iloc[sorted(range(len(frame)), key=key.__getitem__)].reset_index(drop=True)  # stable: keeps the rest


def fr1(critical: pd.DataFrame, seed: int = 0, min_pairs: int = MIN_PAIRS) -> Verdict:
    """Rule FR1 (amendment 9): R2_full's critical rung is higher than the original's, one-sided exact sign test
    over the paired seeds, p < 0.05: PASS, else MISS; fewer than `min_pairs` pairs: not judged.
    numbers: {"shift": the Shift}."""
    s = shift(_reference(critical, "r2_full"), _reference(critical, "original"), "greater", seed)
    return Verdict("FR1", "R2_full's critical rung is higher than the original's", judge_shift(s, s.p_sign, min_pairs),
                   shift_words(s, "R2_full minus original", s.p_sign, "one-sided"), {"shift": s})


def rung_rates(trials: pd.DataFrame, variant: Sequence[str] = ("preset", "ablate"), lr: str = "lr",
               status: str = "status", ladder: Sequence[float] = LADDER) -> pd.DataFrame:
    """Per variant and rung run: the blow-up rate (outcome.is_blow_up, transient included) k of n finished runs
    with its Wilson 95% interval. A walk reaches a rung only if it trained at every rung below, so n falls
    with the rung."""
    done = trials[trials[status].isin([str(o) for o in OUTCOMES])]
    rows = []
    for key, g in done.groupby(list(variant), sort=False):
        by_rung = g.assign(rung=[rung(x, ladder) for x in g[lr]]).groupby("rung")[status]
        for i, statuses in by_rung:
            k, n = int(sum(is_blow_up(x) for x in statuses)), len(statuses)
            lo, hi = wilson(k, n)
            rows.append({**dict(zip(variant, key)), "rung": int(i), "lr": ladder[int(i)], "k": k, "n": n,
                         "lo": lo, "hi": hi})
    rates = pd.DataFrame(rows, columns=[*variant, "rung", "lr", "k", "n", "lo", "hi"])
    return _in_design_order(rates) if tuple(variant) == ("preset", "ablate") else rates


@dataclass(frozen=True)
class Frontier:
    """The frontier result of a walked sweep's trial table (`frontier_result`)."""

    ladder: tuple[float, ...]
    critical: pd.DataFrame  # critical_table
    variants: pd.DataFrame  # variant_table
    verdicts: pd.DataFrame  # verdict_table
    fr1: Verdict  # fr1
    rates: pd.DataFrame  # rung_rates


def frontier_result(trials: pd.DataFrame, ladder: Sequence[float], lr: str = "lr", seed: int = 0,
                    min_pairs: int = MIN_PAIRS) -> Frontier:
    """Everything amendment 9 reports, from one trial table (columns as in studies.trial_rows, `lr` naming the
    frontier parameter's column) on the sweep's own ladder (its frontier parameter's values: rungs are indices
    of it, shared by every variant)."""
    ladder = tuple(float(x) for x in ladder)
    critical = critical_table(trials, lr=lr, ladder=ladder)
    return Frontier(ladder, critical, variant_table(critical, seed), verdict_table(critical, seed, min_pairs),
                    fr1(critical, seed, min_pairs),
                    rung_rates(trials, lr=lr, ladder=ladder))


def _opt(x):
    """A table cell, None where missing (NA or nan)."""
    return None if x is None or (not isinstance(x, str) and pd.isna(x)) else x


def _opt_bool(x) -> Optional[bool]:
    """A table cell as a bool, None where missing (NA in a column of older records)."""
    return None if _opt(x) is None else bool(x)


def _float(x) -> float:
    """A table cell as a float, nan where missing."""
    return math.nan if _opt(x) is None else float(x)


# ----------------------------------------------------------------------------- the dose-response in training

DOSE_VARIANT = ("g", "coupling")  # what a setting of amendment 11's dose-response is (trial table columns)
DOSE_SCALE = 0.25  # the gain DF2 and DF3 judge at: the degree-mean aggregation's scale on the 5-particle full graph
DOSE_REFERENCE = 1.0  # PaiNN's gain, DF1's reference


def setting_rungs(critical: pd.DataFrame, **setting) -> pd.Series:
    """The critical rungs of one setting (column=value pairs of a critical_table), indexed by seed."""
    mask = pd.Series(True, index=critical.index)
    for column, value in setting.items():
        mask &= critical[column] == value
    return critical[mask].set_index("seed")["critical_rung"].astype(float)


def setting_table(critical: pd.DataFrame, variant: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """Per setting (the `variant` columns of a critical_table): its walks, those complete, the median critical
    rung with its bootstrap 95% interval, the censored walks and those that ended at initialisation."""
    rows = []
    for key, g in critical.groupby(list(variant), sort=False):
        median, lo, hi = median_interval(g["critical_rung"], seed)
        rows.append({**dict(zip(variant, key if isinstance(key, tuple) else (key,))), "walks": len(g),
                     "complete": int(g["critical_rung"].notna().sum()), "median_rung": median, "lo": lo, "hi": hi,
                     "censored": int(g["censored"].sum()), "ended_at_init": int(g["ended_at_init"].sum()),
                     "init_phase_blow_ups": int(g["init_phase_blow_ups"].sum())})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class DoseFrontier:
    """Amendment 11's result (`dose_result`): the critical rungs of the original at each (g, coupling)."""

    ladder: tuple[float, ...]
    critical: pd.DataFrame  # critical_table over DOSE_VARIANT
    settings: pd.DataFrame  # per (g, coupling): walks, complete, median rung with its interval, ended at init
    coupling: pd.DataFrame  # per g: the paired shift of dropping the coupling term (dropped minus kept)
    rules: list[Verdict]  # DF1-DF3 (numbers: the shift each reads)
    rates: pd.DataFrame  # rung_rates over DOSE_VARIANT


def dose_result(trials: pd.DataFrame, ladder: Sequence[float], lr: str = "lr", seed: int = 0,
                min_pairs: int = MIN_PAIRS) -> DoseFrontier:
    """Amendment 11's tables and rules from its trial table (columns g and coupling: tables.trial_table's):

        DF1  with the coupling kept, g = 0.25's critical rung is higher than g = 1's (one-sided exact sign
             test, p < 0.05)
        DF2  at g = 0.25, dropping the coupling term raises the critical rung (the same test)
        DF3  DF1 PASS and, at g = 0.25, the bootstrap 95% interval of the median paired shift (dropped minus
             kept) lies within [-1, 1] rung: scale explains the frontier at this resolution
    Each on the seeds whose two walks completed; fewer than `min_pairs`: not judged."""
    ladder = tuple(float(x) for x in ladder)
    trials = trials.assign(g=trials["g"].astype(float), coupling=trials["coupling"].astype(bool))
    critical = critical_table(trials, variant=DOSE_VARIANT, lr=lr, ladder=ladder)

    def rungs(g: float, coupling: bool) -> pd.Series:
        return setting_rungs(critical, g=g, coupling=coupling)

    settings = setting_table(critical, DOSE_VARIANT, seed).sort_values(["coupling", "g"], ascending=[False, False],
                                                                        ignore_index=True)
    gains = sorted(set(critical["g"]), reverse=True)
    coupling = pd.DataFrame([{"g": g, **vars(shift(rungs(g, False), rungs(g, True), "greater", seed))}
                             for g in gains])

    scale = shift(rungs(DOSE_SCALE, True), rungs(DOSE_REFERENCE, True), "greater", seed)
    matched = shift(rungs(DOSE_SCALE, False), rungs(DOSE_SCALE, True), "greater", seed)
    df1, df2 = judge_shift(scale, scale.p_sign, min_pairs), judge_shift(matched, matched.p_sign, min_pairs)
    within = -1 <= matched.lo and matched.hi <= 1  # the coupling's effect at matched scale: at most a rung
    if min(scale.n, matched.n) < min_pairs:
        df3 = NOT_JUDGED.format(min_pairs)
    else:
        df3 = "PASS" if df1 == "PASS" and within else "MISS"
    rules = [
        Verdict("DF1", "scale raises the frontier", df1,
                shift_words(scale, f"g = {DOSE_SCALE:g} vs g = {DOSE_REFERENCE:g}, coupling kept", scale.p_sign),
                {"shift": scale}),
        Verdict("DF2", "the coupling matters apart from scale in training", df2,
                shift_words(matched, f"at g = {DOSE_SCALE:g}, coupling dropped vs kept", matched.p_sign),
                {"shift": matched}),
        Verdict("DF3", "scale explains the frontier at this resolution", df3,
                f"DF1 {df1}; the coupling's shift at g = {DOSE_SCALE:g} has the interval [{matched.lo:g}, "
                f"{matched.hi:g}], {'within' if within else 'not within'} [-1, 1] rung", {"shift": matched}),
    ]
    return DoseFrontier(ladder, critical, settings, coupling, rules,
                        rung_rates(trials, variant=DOSE_VARIANT, lr=lr, ladder=ladder))


# ----------------------------------------------------------------------------- degree normalisation apart from scale

DEGREE_VARIANT = ("aggregation", "g")  # what an arm of amendment 12 is (trial table columns)
DEGREE_MATCHED_G = 0.1406  # sum aggregation at 1 / (mean in-degree 7.11): the overall scale of the mean


@dataclass(frozen=True)
class DegreeFrontier:
    """Amendment 12's result (`degree_result`): the original's critical rungs per aggregation and gain."""

    ladder: tuple[float, ...]
    critical: pd.DataFrame  # critical_table over DEGREE_VARIANT
    arms: pd.DataFrame  # setting_table over DEGREE_VARIANT
    rule: Verdict  # DN1 (numbers: shift, mean minus sum at the matched scale, and its two-sided p)
    scale: Shift  # sum at the matched scale minus sum at g = 1, described
    rates: pd.DataFrame  # rung_rates over DEGREE_VARIANT


def degree_result(trials: pd.DataFrame, ladder: Sequence[float], lr: str = "lr", seed: int = 0,
                  min_pairs: int = MIN_PAIRS) -> DegreeFrontier:
    """Amendment 12's rule from its trial tables (columns aggregation and g: tables.trial_table's):

        DN1  the critical rungs of mean aggregation (g = 1) and of sum at the matched scale (g = 0.1406)
             differ: two-sided exact sign test over the paired seeds, p < 0.05
    """
    ladder = tuple(float(x) for x in ladder)
    trials = trials.assign(aggregation=trials["aggregation"].astype(str), g=trials["g"].astype(float))
    critical = critical_table(trials, variant=DEGREE_VARIANT, lr=lr, ladder=ladder)
    mean = setting_rungs(critical, aggregation="mean", g=1.0)
    matched = setting_rungs(critical, aggregation="sum", g=DEGREE_MATCHED_G)
    greater, p = two_sided(mean, matched, seed)
    rule = Verdict("DN1", "degree normalisation matters apart from scale", judge_shift(greater, p, min_pairs),
                   shift_words(greater, f"mean (g = 1) minus sum (g = {DEGREE_MATCHED_G:g})", p, "two-sided"),
                   {"shift": greater, "p": p})
    scale = shift(matched, setting_rungs(critical, aggregation="sum", g=1.0), "greater", seed)
    return DegreeFrontier(ladder, critical, setting_table(critical, DEGREE_VARIANT, seed), rule, scale,
                          rung_rates(trials, variant=DEGREE_VARIANT, lr=lr, ladder=ladder))


# ----------------------------------------------------------------------------- two families on one frontier

FAMILY = ("fairchem", "r2_full", "original")  # amendment 16's presets, in its file's order


@dataclass(frozen=True)
class FamilyFrontier:
    """Amendment 16's result (`family_result`): fairchem's, R2_full's and the original's critical rungs."""

    ladder: tuple[float, ...]
    critical: pd.DataFrame  # critical_table
    presets: pd.DataFrame  # variant_table: walks, complete, median rung with its interval, LR sensitivity
    rules: list[Verdict]  # FC1, FC2 (numbers: shift, fairchem minus the other; FC2's two-sided p)
    fr1: Verdict  # FR1 on this run's walks, described
    accuracy: dict  # _accuracy: the val loss at the common rung and the test MSE at each one's best, described
    rates: pd.DataFrame  # rung_rates


def best_rate_sampling(result: FamilyFrontier, trials: pd.DataFrame, errors: pd.DataFrame, lr: str = "lr",
                       seed: int = 0) -> dict:
    """Amendment 17's addition to the family's described accuracy, {} where there is no best rate or a run at it has
    no per-system errors: at each preset's best rate (result.accuracy's `best`), its runs' errors per test system
    (`errors`: tables.system_errors_table of the same study) as a (seeds, systems) matrix, and

        <preset>  mean test pos MSE over seeds and systems with stats.seed_and_sample_interval (the seed-to-seed
                  spread and the test set's own sampling error), n seeds, systems
        paired    fairchem minus R2_full, the same seed and the same test system, bootstrapped alike
    """
    best = result.accuracy.get("best")
    if not best or errors.empty:
        return {}
    per_run = errors.pivot_table(index="number", columns="system", values="pos_mse", aggfunc="first")
    matrices = {}
    for preset in ("fairchem", "r2_full"):
        runs = _trained_at(trials, preset, best[preset]["rung"], result.ladder, lr)
        if not len(runs) or not set(runs["number"]) <= set(per_run.index):
            return {}
        matrices[preset] = per_run.loc[runs["number"].to_numpy()].set_axis(runs.index).sort_index()

    def interval(m: pd.DataFrame) -> dict:
        mean, lo, hi = seed_and_sample_interval(m.to_numpy(dtype=float), seed)
        return {"mean": mean, "lo": lo, "hi": hi, "n": len(m), "systems": m.shape[1]}

    both = matrices["fairchem"].index.intersection(matrices["r2_full"].index)
    return {**{p: interval(m) for p, m in matrices.items()},
            "paired": interval(matrices["fairchem"].loc[both] - matrices["r2_full"].loc[both])}


def family_result(trials: pd.DataFrame, ladder: Sequence[float], lr: str = "lr", seed: int = 0,
                  min_pairs: int = MIN_PAIRS, loss: str = "final_val_pos_mse") -> FamilyFrontier:
    """Amendment 16's rules from its trial table (presets FAMILY, ablate none), on the seeds whose walks both
    completed:

        FC1  fairchem's critical rung is higher than the original's: one-sided exact sign test, p < 0.05
        FC2  fairchem's and R2_full's critical rungs differ: two-sided exact sign test, p < 0.05 (the median
             paired shift's sign says which is higher)
    and, described, fairchem's and R2_full's accuracy (`_accuracy`)."""
    ladder = tuple(float(x) for x in ladder)
    critical = critical_table(trials, lr=lr, ladder=ladder)
    fairchem, full = _reference(critical, "fairchem"), _reference(critical, "r2_full")
    fc1 = shift(fairchem, _reference(critical, "original"), "greater", seed)
    fc2, p2 = two_sided(fairchem, full, seed)

    rules = [
        Verdict("FC1", "fairchem's family trains at higher rates than the original",
                judge_shift(fc1, fc1.p_sign, min_pairs),
                shift_words(fc1, "fairchem minus original", fc1.p_sign, "one-sided"), {"shift": fc1}),
        Verdict("FC2", "fairchem's and R2_full's frontiers differ", judge_shift(fc2, p2, min_pairs),
                shift_words(fc2, "fairchem minus R2_full", p2, "two-sided"), {"shift": fc2, "p": p2}),
    ]
    return FamilyFrontier(ladder, critical, variant_table(critical, seed), rules, fr1(critical, seed, min_pairs),
                          _accuracy(trials, critical, ("fairchem", "r2_full"), lr, ladder, val=loss),
                          rung_rates(trials, lr=lr, ladder=ladder))


def _trained_at(trials: pd.DataFrame, preset: str, at: int, ladder: Sequence[float], lr: str,
                status: str = "status") -> pd.DataFrame:
    """The runs of `preset` (ablate none) at rung `at` that trained there (walk.trains), indexed by seed."""
    here = trials[(trials["preset"] == preset) & (trials["ablate"] == "none")
                  & np.isclose(trials[lr].astype(float), ladder[at], rtol=1e-3, atol=0)]
    ok = [trains({"status": r[status], PHASE_KEY: _opt(r.get(PHASE_KEY)),
                  "training_blow_up": _opt_bool(r.get("training_blow_up"))}) for r in here.to_dict("records")]
    return here[ok].set_index("seed")


def _accuracy(trials: pd.DataFrame, critical: pd.DataFrame, presets: Sequence[str], lr: str,
              ladder: Sequence[float], val: str = "final_val_pos_mse", test: str = "test_pos_mse") -> dict:
    """Amendment 16's described accuracy of two presets, {} when a walk is incomplete or one failed at the
    first rung (no rung where every seed trained):

        common  at the highest rung every seed of both trained at (the lowest of their critical rungs): per preset
                the mean_interval of `val` there, and `paired`, presets[0] minus presets[1] by seed (paired_t)
        best    per preset its best rate, the rung with the lowest mean `val` among those where every seed of it
                trained: rung, lr, the mean_interval of `test` there; and `paired`, presets[0] minus presets[1]
                by seed, each at its own best rung
    """
    tops = {p: _reference(critical, p) for p in presets}
    if any(r.isna().any() or not len(r) or r.min() < 0 for r in tops.values()):
        return {}
    at = int(min(r.min() for r in tops.values()))
    common = {p: _trained_at(trials, p, at, ladder, lr)[val].astype(float) for p in presets}
    best = {}
    for p in presets:
        runs = {i: _trained_at(trials, p, i, ladder, lr) for i in range(int(tops[p].min()) + 1)}
        i = min(runs, key=lambda i: float(runs[i][val].astype(float).mean()))
        best[p] = {"rung": i, "lr": ladder[i], "test": runs[i][test].astype(float)}
    return {"common": {"rung": at, "lr": ladder[at], **{p: mean_interval(common[p]) for p in presets},
                       "paired": paired_t(common[presets[1]], common[presets[0]])},
            "best": {**{p: {**{k: b[k] for k in ("rung", "lr")}, "test": mean_interval(b["test"])}
                        for p, b in best.items()},
                     "paired": paired_t(best[presets[1]]["test"], best[presets[0]]["test"])}}
