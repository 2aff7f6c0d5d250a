"""Tests of painn_ablate.analysis.frontier: the ladder walk, critical rungs, LR sensitivity, paired shifts."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from painn_ablate.analysis import frontier as fr
from painn_ablate.analysis.stats import wilson
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


def _walk(statuses, seed=0, preset="original", ablate="none", ladder=fr.LADDER, **extra) -> list[dict]:
    """One (variant, seed)'s trials up the ladder: status per rung, or (status, phase, training_blow_up)."""
    rows = []
    for i, s in enumerate(statuses):
        status, phase, training = (s, None, None) if isinstance(s, str) else s
        rows.append({"preset": preset, "ablate": ablate, "seed": seed, "lr": ladder[i], "status": status,
                     "blow_up_phase": phase, "training_blow_up": training, "final_val_pos_mse": 0.1,
                     "initial_val_pos_mse": 1.0, **extra})
    return rows


def test_unfinished_trials_leave_a_walk_incomplete_and_a_lost_trials_re_run_stands_in_for_it():
    rows = [*_walk(["stable", "running"], seed=0), *_walk(["stable", "waiting"], seed=1),
            *_walk(["stable", "lost (re-run)"], seed=2),
            *_walk(["stable", "stable", ("diverged", "training", True)], seed=2)[1:]]
    crit = fr.critical_table(pd.DataFrame(rows)).set_index("seed")
    assert pd.isna(crit.loc[0, "critical_rung"]) and math.isnan(crit.loc[0, "critical_lr"])
    assert crit.loc[1, "rungs_run"] == 1 and math.isnan(crit.loc[1, "lr_sensitivity"])
    assert crit.loc[2, "critical_rung"] == 1 and crit.loc[2, "rungs_run"] == 3


def test_a_walk_ended_by_a_failure_present_at_initialisation_is_marked_apart():
    rows = [*_walk(["stable", ("exploded", "init", False)], seed=0),
            *_walk(["stable", ("exploded", "init", True)], seed=1),  # an init spike, then a training blow-up
            *_walk(["stable", ("diverged", "training", True)], seed=2)]
    crit = fr.critical_table(pd.DataFrame(rows)).set_index("seed")
    assert (crit["critical_rung"] == 0).all()
    assert crit["ended_at_init"].tolist() == [True, False, False]
    assert crit["init_phase_blow_ups"].tolist() == [1, 1, 0]


def test_rungs_are_indices_of_the_sweeps_own_ladder():
    ladder = fr.LADDER[2:]  # the main job's: from 1.19e-3
    crit = fr.critical_table(pd.DataFrame(_walk(["stable", "stable", "exploded"], ladder=ladder)), ladder=ladder)
    assert crit.loc[0, "critical_rung"] == 1 and crit.loc[0, "critical_lr"] == fr.LADDER[3]
    with pytest.raises(ValueError, match="not on the ladder"):
        fr.critical_table(pd.DataFrame(_walk(["stable"], ladder=[fr.LADDER[0]])), ladder=ladder)


def test_a_verdict_on_fewer_than_ten_pairs_is_not_judged():
    trials = _trials({("r2_full", "none"): lambda s: 6, ("r2_full", "bounds"): lambda s: 3,
                      ("original", "none"): lambda s: 1}, seeds=range(5))
    table = fr.verdict_table(fr.critical_table(trials)).set_index("ablate")
    assert table.loc["bounds", "verdict"] == "n < 10, not judged" and table.loc["bounds", "n"] == 5
    # the same five pairs, judged: every seed lower, sign test p = 1/32 in a family of one
    judged = fr.verdict_table(fr.critical_table(trials), min_pairs=5).set_index("ablate")
    assert judged.loc["bounds", "verdict"] == "necessary" and judged.loc["bounds", "p_sign"] == pytest.approx(1 / 32)


def test_the_holm_family_holds_only_the_variants_judged():
    ten = _trials({("r2_full", "none"): lambda s: 6, ("r2_full", "s_msg"): lambda s: 6 - (s < 8)})
    short = _trials({("r2_full", "bounds"): lambda s: 3}, seeds=range(5))
    table = fr.verdict_table(fr.critical_table(pd.concat([ten, short], ignore_index=True))).set_index("ablate")
    assert table.loc["bounds", "verdict"] == "n < 10, not judged" and math.isnan(table.loc["bounds", "p_holm"])
    # a family of one: s_msg's Holm p is its own sign-test p (8 of 10 lower, 2 ties: 1/256), not doubled
    assert table.loc["s_msg", "p_holm"] == pytest.approx(table.loc["s_msg", "p_sign"]) == pytest.approx(1 / 256)


@pytest.mark.parametrize("original,seeds,verdict", [(lambda s: 1, range(10), "PASS"),
                                                    (lambda s: 6 - (s < 2), range(10), "MISS"),
                                                    (lambda s: 1, range(9), "n < 10, not judged")])
def test_fr1_passes_when_r2_fulls_frontier_is_higher_in_enough_seeds(original, seeds, verdict):
    crit = fr.critical_table(_trials({("r2_full", "none"): lambda s: 6, ("original", "none"): original}, seeds=seeds))
    result = fr.fr1(crit)
    assert result.verdict == verdict and result.numbers["shift"].n == len(seeds)


def test_the_blow_up_rate_per_rung_counts_transient_runs_and_only_finished_ones():
    rows = [*_walk([("transient", "init", False), "stable"], seed=0), *_walk(["stable", "exploded"], seed=1),
            *_walk(["stable", "running"], seed=2)]
    rates = fr.rung_rates(pd.DataFrame(rows)).set_index("rung")
    assert rates.loc[0, ["k", "n"]].tolist() == [1, 3] and rates.loc[1, ["k", "n"]].tolist() == [1, 2]
    assert (rates.loc[0, "lo"], rates.loc[0, "hi"]) == pytest.approx(wilson(1, 3))


def test_the_frontier_text_states_fr1_the_verdicts_with_n_and_the_rates_per_rung():
    from painn_ablate.reporting.text import frontier_text

    ladder = fr.LADDER[2:]
    trials = _trials({("r2_full", "none"): lambda s: 6, ("r2_full", "bounds"): lambda s: 3,
                      ("original", "none"): lambda s: 1, ("original", "bounds"): lambda s: 5}).assign(
        lr=lambda t: [ladder[fr.rung(x)] for x in t["lr"]]).rename(columns={"lr": "train.lr"})
    text = frontier_text(trials, "train.lr", ladder)
    assert "40 of 40 walks complete" in text and "Rungs: 0 0.00119, 1 0.00238" in text
    assert "FR1, R2_full's critical rung above the original's: n 10, up 10, down 0" in text and ": PASS" in text
    verdicts = text[text.index("Verdicts"):text.index("Blow-up rate")]
    assert re.search(r"r2_full - bounds\s+necessary\s+10\s+-3 \(-3 to -3\)\s+0/10", verdicts)
    assert re.search(r"original \+ bounds\s+sufficient\s+10\s+4 \(4 to 4\)\s+10/0 .* raises", verdicts)
    rates = {line.split("  ")[0]: line for line in text[text.index("Blow-up rate"):].splitlines()[2:]}
    assert list(rates) == ["r2_full", "r2_full - bounds", "original", "original + bounds"]  # the design's order
    assert re.fullmatch(r"original\s+0/10 0-28%\s+0/10 0-28%\s+10/10 72-100%(\s+-)+", rates["original"])
    assert frontier_text(trials.drop(columns="seed"), "train.lr", ladder).endswith("no seed column.")


def _dose_trials(rungs: dict, seeds=range(10)) -> pd.DataFrame:
    """Amendment 11's trial table: (g, coupling) -> critical rung per seed, walked like _trials."""
    frame = _trials({(g, c): crit for (g, c), crit in rungs.items()}, seeds)
    return frame.rename(columns={"preset": "g", "ablate": "coupling"}).assign(preset="original", ablate="none")


def test_the_dose_rules_read_scale_and_the_coupling_from_the_paired_walks():
    scale_only = _dose_trials({(1.0, True): lambda s: -1, (1.0, False): lambda s: 1,
                               (0.25, True): lambda s: 3, (0.25, False): lambda s: 3 + (s == 0)})
    result = fr.dose_result(scale_only, fr.LADDER)
    verdicts = {r.rule: r.verdict for r in result.rules}
    assert verdicts == {"DF1": "PASS", "DF2": "MISS", "DF3": "PASS"}
    row = result.settings[(result.settings["g"] == 0.25) & result.settings["coupling"]].iloc[0]
    assert row["median_rung"] == 3 and row["complete"] == 10
    at_one = result.coupling.set_index("g").loc[1.0]
    assert at_one["n"] == 10 and at_one["up"] == 10 and at_one["median"] == 2  # dropped minus kept at g = 1
    # the coupling moves the frontier by two rungs at matched scale: DF2 PASS, DF3 MISS
    coupling = _dose_trials({(1.0, True): lambda s: -1, (1.0, False): lambda s: 1,
                             (0.25, True): lambda s: 1, (0.25, False): lambda s: 3})
    verdicts = {r.rule: r.verdict for r in fr.dose_result(coupling, fr.LADDER).rules}
    assert verdicts == {"DF1": "PASS", "DF2": "PASS", "DF3": "MISS"}
    # five seeds: nothing is judged
    few = fr.dose_result(_dose_trials({(1.0, True): lambda s: -1, (0.25, True): lambda s: 3,
                                       (0.25, False): lambda s: 3}, seeds=range(5)), fr.LADDER)
    assert {r.verdict for r in few.rules} == {fr.NOT_JUDGED.format(fr.MIN_PAIRS)}


def test_degree_normalisation_is_judged_between_mean_and_sum_at_the_matched_scale():
    arms = {("mean", 1.0): lambda s: 4, ("sum", fr.DEGREE_MATCHED_G): lambda s: 2 + (s == 3) * 2,
            ("sum", 1.0): lambda s: -1}
    frame = _trials(arms).rename(columns={"preset": "aggregation", "ablate": "g"}).assign(preset="original")
    result = fr.degree_result(frame, fr.LADDER)
    s = result.rule.numbers["shift"]
    assert result.rule.verdict == "PASS" and s.up == 9 and s.down == 0
    assert result.rule.numbers["p"] == pytest.approx(2 * 0.5 ** 9)  # two-sided
    assert result.scale.median == 3 and result.scale.up == 10
    same = {("mean", 1.0): lambda s: 2 + (s % 2), ("sum", fr.DEGREE_MATCHED_G): lambda s: 2 + ((s + 1) % 2)}
    frame = _trials(same).rename(columns={"preset": "aggregation", "ablate": "g"}).assign(preset="original")
    assert fr.degree_result(frame, fr.LADDER).rule.verdict == "MISS"


def test_a_sweep_varying_a_setting_within_a_preset_gets_its_frontier_per_setting_and_no_verdicts():
    from painn_ablate.reporting.text import frontier_text

    trials = _trials({("original", 1.0): lambda s: -1, ("original", 0.25): lambda s: 2}).rename(
        columns={"ablate": "model.stabilizers.g", "lr": "train.lr"}).assign(ablate="none")
    waiting = trials.iloc[:1].assign(status="waiting", seed=10)  # a walk not started: no outcome yet
    text = frontier_text(pd.concat([trials, waiting], ignore_index=True), "train.lr", fr.LADDER)
    assert "per setting of model.stabilizers.g: 20 of 21 walks complete" in text
    assert "Verdicts" not in text and "FR1" not in text
    settings = text[:text.index("Blow-up rate")].splitlines()
    lines = {round(float(line.split()[2]), 2): line for line in settings if line.startswith("original")}
    assert re.search(r"\b10\s+10\s+0\s+0\s+0\s+2 \(2 to 2\)$", lines[0.25])
    assert re.search(r"-1 \(-1 to -1\)$", lines[1.0])


def test_the_fairchem_family_is_judged_one_sided_against_the_original_and_two_sided_against_r2_full():
    trials = _trials({("fairchem", "none"): lambda s: 4, ("r2_full", "none"): lambda s: 5 if s == 0 else 3,
                      ("original", "none"): lambda s: -1})
    fairchem = trials["preset"] == "fairchem"
    trials.loc[fairchem, "final_val_pos_mse"] *= np.where(trials.loc[fairchem, "seed"] == 1, 3, 2)  # R2_full's x 2 (x 3)
    trials["test_pos_mse"] = 1.1 * trials["final_val_pos_mse"]
    result = fr.family_result(trials, fr.LADDER)
    fc1, fc2 = result.rules
    up = fc1.numbers["shift"]
    assert fc1.verdict == "PASS" and up.up == 10 and up.p_sign == pytest.approx(0.5 ** 10)
    assert fc2.verdict == "PASS" and (fc2.numbers["shift"].up, fc2.numbers["shift"].down) == (9, 1)
    assert fc2.numbers["p"] == pytest.approx(2 * 11 / 1024)  # two-sided: P(X >= 9) twice, X ~ Bin(10, 1/2)
    common, best = result.accuracy["common"], result.accuracy["best"]
    assert common["rung"] == 3 and common["fairchem"]["n"] == 10 and common["r2_full"]["mean"] == pytest.approx(0.04)
    assert common["paired"]["mean"] == pytest.approx((9 * 0.04 + 0.08) / 10)  # fairchem minus R2_full
    # the loss grows with the rung, so each preset's best rate is its lowest rung; the test MSE is there
    assert best["fairchem"]["rung"] == best["r2_full"]["rung"] == 0
    assert best["r2_full"]["test"]["mean"] == pytest.approx(0.011)
    assert best["paired"]["mean"] == pytest.approx(1.1 * (9 * 0.01 + 0.02) / 10)
    assert result.fr1.verdict == "PASS"
    # one R2_full seed fails at the first rung: no rung where every seed of both trained, nothing compared
    worse = _trials({("fairchem", "none"): lambda s: 4, ("r2_full", "none"): lambda s: -1 if s == 0 else 3,
                     ("original", "none"): lambda s: -1})
    assert fr.family_result(worse, fr.LADDER).accuracy == {}
    few = _trials({("fairchem", "none"): lambda s: 4, ("r2_full", "none"): lambda s: 3,
                   ("original", "none"): lambda s: -1}, seeds=range(5))
    few = fr.family_result(few.assign(test_pos_mse=few["final_val_pos_mse"]), fr.LADDER)
    assert {r.verdict for r in few.rules} == {fr.NOT_JUDGED.format(fr.MIN_PAIRS)}


def test_a_part_left_out_of_fairchem_is_judged_against_fairchem_in_its_own_holm_family():
    trials = _trials({("r2_full", "none"): lambda s: 3, ("fairchem", "none"): lambda s: 5,
                      ("fairchem", "q_layernorm"): lambda s: 2, ("fairchem", "scaled_silu"): lambda s: 5})
    table = fr.verdict_table(fr.critical_table(trials)).set_index("ablate")
    assert set(table["preset"]) == {"fairchem"} and table.loc["q_layernorm", "verdict"] == "necessary"
    assert table.loc["q_layernorm", "shift"] == -3 and table.loc["scaled_silu", "verdict"] == "inert"
    assert table.loc["q_layernorm", "p_holm"] == pytest.approx(2 * 0.5 ** 10)  # Holm over fairchem's two parts
