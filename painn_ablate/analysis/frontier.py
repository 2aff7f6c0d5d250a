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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from painn_ablate.analysis.stats import bootstrap, holm
from painn_ablate.core.outcome import is_blow_up
from painn_ablate.sweep.walk import trains  # the one rule of whether a run trained at its rung

LADDER = tuple(float(f"{x:.3g}") for x in np.geomspace(3e-4, 3e-1, 11))  # 3e-4, 5.99e-4, ..., 0.3
PHASE_INIT = "init"  # the initial network crosses a blow-up criterion on the same batch
ALPHA = 0.05


def rung(lr: float, ladder: Sequence[float] = LADDER) -> int:
    """The index of `lr` on the ladder (to 0.1% relative), or ValueError."""
    for i, x in enumerate(ladder):
        if math.isclose(lr, x, rel_tol=1e-3):
            return i
    raise ValueError(f"learning rate {lr:g} is not on the ladder {', '.join(f'{x:g}' for x in ladder)}")


def next_rung(done: dict[int, bool], ladder: Sequence[float] = LADDER) -> Optional[int]:
    """The walk up the ladder of one (variant, seed): `done` maps a rung run so far to whether it trained.
    The next rung to run, or None when the walk is over (a rung failed, or the top was reached)."""
    for i in range(len(ladder)):
        if i not in done:
            return i
        if not done[i]:
            return None
    return None


def critical_rung(done: dict[int, bool], ladder: Sequence[float] = LADDER) -> int:
    """The highest rung below the first failure (walking up from 0); -1 if rung 0 failed; the top if none did."""
    for i in range(len(ladder)):
        if i not in done:
            raise ValueError(f"rung {i} ({ladder[i]:g}) was not run: the walk is incomplete")
        if not done[i]:
            return i - 1
    return len(ladder) - 1


def lr_sensitivity(final_loss: dict[int, float], initial_loss: float, ladder: Sequence[float] = LADDER) -> float:
    """E over the ladder of min(final loss, initial loss) minus the best final loss (Wortsman et al. 2023).
    A rung not run, or whose loss is not finite, counts as the initial loss."""
    capped = [min(final_loss[i], initial_loss) if i in final_loss and math.isfinite(final_loss[i]) else initial_loss
              for i in range(len(ladder))]
    finite = [v for v in final_loss.values() if math.isfinite(v)]
    best = min(finite) if finite else initial_loss
    return float(np.mean(capped) - min(best, initial_loss))


def critical_table(trials: pd.DataFrame, variant: Sequence[str] = ("preset", "ablate"), seed: str = "seed",
                   lr: str = "lr", status: str = "status", phase: str = "blow_up_phase",
                   final_loss: str = "final_val_loss", initial_loss: str = "initial_loss",
                   ladder: Sequence[float] = LADDER) -> pd.DataFrame:
    """One row per (variant, seed): critical rung and lr, LR sensitivity, the rungs run, and how many
    of them blew up at initialisation. A (variant, seed) whose walk is not complete has NA critical values."""
    rows = []
    for key, g in trials.groupby([*variant, seed], sort=True, dropna=False):
        done = {rung(r[lr], ladder): trains({"status": r[status], "blow_up_phase": r.get(phase),
                                                  "training_blow_up": _opt_bool(r.get("training_blow_up"))}) for _, r in g.iterrows()}
        try:
            c = critical_rung(done, ladder)
            complete = True
        except ValueError:
            c, complete = None, next_rung(done, ladder) is None
        losses = {rung(r[lr], ladder): float(r[final_loss]) for _, r in g.iterrows()}
        init = float(g[initial_loss].median())
        rows.append({**dict(zip([*variant, seed], key)), "critical_rung": c,
                     "critical_lr": ladder[c] if c is not None and c >= 0 else math.nan,
                     "censored": c == len(ladder) - 1, "rungs_run": len(done),
                     "init_phase_blow_ups": int(sum(is_blow_up(r[status]) and r.get(phase) == PHASE_INIT
                                                    for _, r in g.iterrows())),
                     "lr_sensitivity": lr_sensitivity(losses, init, ladder) if complete and c is not None else math.nan})
    return pd.DataFrame(rows)


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


def median_interval(rungs: pd.Series, seed: int = 0) -> tuple[float, float, float]:
    """Median critical rung of one variant with a bootstrap 95% interval."""
    return bootstrap(rungs.dropna().to_numpy(dtype=float), np.median, seed)


DESIGNS = {  # preset -> (the question, the direction a stabilizer moves the frontier when it matters)
    "r2_full": ("necessary", "less"),  # leaving it out of R2_full lowers the critical rate
    "original": ("sufficient", "greater"),  # adding it to the original raises the critical rate
}


def verdict_table(critical: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per (preset, ablate) other than the presets themselves: the paired shift of the critical rung against
    its own preset (median, bootstrap 95% interval, seeds up/down, sign and Wilcoxon p, Holm over the
    preset's family on the sign test) and the verdict:

        necessary      (on r2_full) Holm-adjusted sign-test p < 0.05 that leaving it out lowers the rung
        sufficient     (on original) Holm-adjusted sign-test p < 0.05 that adding it raises the rung, and
                       its median rung lies in R2_full's bootstrap 95% interval
        raises         (on original) the first part of sufficient without the second
        inert          every paired shift is 0
        not shown      none of these
    """
    by = critical.set_index("seed")
    full = critical[(critical["preset"] == "r2_full") & (critical["ablate"] == "none")].set_index("seed")["critical_rung"]
    full_ci = median_interval(full, seed)
    rows = []
    for preset, (question, alternative) in DESIGNS.items():
        ref = critical[(critical["preset"] == preset) & (critical["ablate"] == "none")].set_index("seed")["critical_rung"]
        family = sorted(set(critical.loc[(critical["preset"] == preset) & (critical["ablate"] != "none"), "ablate"]))
        shifts = {a: shift(by[(by["preset"] == preset) & (by["ablate"] == a)]["critical_rung"], ref, alternative, seed)
                  for a in family}
        adjusted = dict(zip(family, holm([shifts[a].p_sign for a in family])))
        for a in family:
            s = shifts[a]
            med = median_interval(by[(by["preset"] == preset) & (by["ablate"] == a)]["critical_rung"], seed)
            if s.n and s.up == 0 and s.down == 0:
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
    return pd.DataFrame(rows)


def _opt_bool(x) -> Optional[bool]:
    """A table cell as a bool, None where missing (NA in a column of older records)."""
    return None if x is None or pd.isna(x) else bool(x)
