"""Tests of painn_ablate.analysis.frontier: the ladder walk, critical rungs, LR sensitivity, paired shifts."""

import math

import numpy as np
import pandas as pd
import pytest

from painn_ablate.analysis import frontier as fr
from painn_ablate.sweep import walk


def test_the_ladder_runs_from_3e_4_to_3e_1_in_steps_of_about_two():
    ratios = np.diff(np.log(fr.LADDER))
    assert fr.LADDER[0] == 3e-4 and fr.LADDER[-1] == 0.3 and len(fr.LADDER) == 11
    assert np.allclose(np.exp(ratios), 10 ** 0.3, rtol=0.01)


def test_the_walk_goes_up_until_a_rung_fails():
    assert walk.next_rung({}, fr.LADDER) == 0
    assert walk.next_rung({0: True, 1: True}, fr.LADDER) == 2
    assert walk.next_rung({0: True, 1: False}, fr.LADDER) is None
    assert walk.next_rung({i: True for i in range(len(fr.LADDER))}, fr.LADDER) is None


@pytest.mark.parametrize("done,expected", [({0: False}, -1), ({0: True, 1: True, 2: False}, 1),
                                           ({i: True for i in range(11)}, 10)])
def test_critical_rung_is_the_highest_rung_below_the_first_failure(done, expected):
    assert walk.critical_rung(done, fr.LADDER) == expected


def test_an_incomplete_walk_has_no_critical_rung():
    with pytest.raises(ValueError, match="was not run"):
        walk.critical_rung({0: True, 2: True}, fr.LADDER)


def test_lr_sensitivity_is_zero_for_a_flat_curve_and_counts_unrun_rungs_as_the_initial_loss():
    flat = {i: 0.1 for i in range(11)}
    assert fr.lr_sensitivity(flat, initial_loss=1.0) == pytest.approx(0.0)
    # trains at rungs 0-1 (loss 0.1), fails at 2: rungs 2-10 count as the initial loss 1.0
    walked = {0: 0.1, 1: 0.1, 2: 50.0}
    assert fr.lr_sensitivity(walked, initial_loss=1.0) == pytest.approx((2 * 0.1 + 9 * 1.0) / 11 - 0.1)


def _trials(rungs_by_variant: dict, seeds=range(10)) -> pd.DataFrame:
    """A walked trial table: variant (preset, ablate) -> critical rung per seed (a function of the seed)."""
    rows = []
    for (preset, ablate), crit in rungs_by_variant.items():
        for s in seeds:
            c = crit(s)
            for i in range(min(c + 2, len(fr.LADDER))):
                fails = i == c + 1
                rows.append({"preset": preset, "ablate": ablate, "seed": s, "lr": fr.LADDER[i],
                             "status": "diverged" if fails else "stable",
                             "blow_up_phase": "training" if fails else None,
                             "final_val_pos_mse": 1e3 if fails else 0.01 * (1 + i), "initial_val_pos_mse": 1.0})
    return pd.DataFrame(rows)


def test_the_critical_table_recovers_the_rungs_walked():
    crit = fr.critical_table(_trials({("r2_full", "none"): lambda s: 5, ("original", "none"): lambda s: s % 3 - 1}))
    full = crit[crit["preset"] == "r2_full"]
    assert (full["critical_rung"] == 5).all() and np.allclose(full["critical_lr"], fr.LADDER[5])
    orig = crit[crit["preset"] == "original"].set_index("seed")
    assert orig.loc[0, "critical_rung"] == -1 and math.isnan(orig.loc[0, "critical_lr"])
    assert orig.loc[2, "critical_rung"] == 1 and (crit["lr_sensitivity"] >= 0).all()


def test_a_stabilizer_that_lowers_the_frontier_in_every_seed_is_necessary_and_an_inert_one_is_inert():
    trials = _trials({("r2_full", "none"): lambda s: 6, ("r2_full", "s_msg"): lambda s: 3,
                      ("r2_full", "C_s"): lambda s: 6, ("r2_full", "g"): lambda s: 6 - (s == 0),
                      ("original", "none"): lambda s: 1, ("original", "aggregation"): lambda s: 6,
                      ("original", "alpha"): lambda s: 3})
    table = fr.verdict_table(fr.critical_table(trials)).set_index("ablate")
    assert table.loc["s_msg", "verdict"] == "necessary" and table.loc["s_msg", "shift"] == -3
    assert table.loc["C_s", "verdict"] == "inert"
    assert table.loc["g", "verdict"] == "not shown"  # one seed of ten lower: the sign test cannot fire
    assert table.loc["aggregation", "verdict"] == "sufficient"
    assert table.loc["alpha", "verdict"] == "raises"  # higher in every seed, but below R2_full's interval


def test_the_shift_interval_holds_the_median_and_the_sign_test_counts_ties_out():
    v, r = pd.Series([3, 3, 4, 5, 5, 5, 6, 6, 6, 7]), pd.Series([5] * 10)
    s = fr.shift(v, r, "less")
    assert s.lo <= s.median <= s.hi and s.up == 4 and s.down == 3
    assert s.p_sign == pytest.approx(99 / 128)  # P(X >= 3) for 3 of 7 non-tied seeds lower, X ~ Bin(7, 1/2)


def test_a_recovered_initialisation_spike_does_not_lower_the_frontier_and_is_counted_apart():
    rows = [{"preset": "original", "ablate": "none", "seed": 0, "lr": fr.LADDER[i], "status": status,
             "blow_up_phase": phase, "training_blow_up": training, "final_val_pos_mse": 0.1,
             "initial_val_pos_mse": 1.0}
            for i, (status, phase, training) in enumerate([("transient", "init", False), ("stable", None, False),
                                                            ("diverged", "training", True)])]
    crit = fr.critical_table(pd.DataFrame(rows)).iloc[0]
    assert crit["critical_rung"] == 1 and crit["init_phase_blow_ups"] == 1
