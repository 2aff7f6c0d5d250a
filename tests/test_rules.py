"""The rule book (painn_ablate.analysis.rules): each rule worded as sweeps/DESIGN.md words it, judged by one
function that runs.md's verdicts and `painn-ablate reproduce` share, and able to fail."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from painn_ablate.analysis import rules, stats
from painn_ablate.reporting import findings
from painn_ablate.reporting import reproduce as rp

DESIGN = Path(__file__).resolve().parent.parent / "sweeps" / "DESIGN.md"
BASE = {"constant_velocity_test_pos_mse": 0.1}
CELL = rp.Regime(5, 1e-3, "the design's cell")


def trials(preset, ablate, blew, L=5, lr=1e-3, layer=5, block="mixing", stat="q_absmax"):
    return [{"preset": preset, "ablate": ablate, "L": L, "lr": lr, "seed": s, "blew_up": b,
             "status": "diverged" if b else "stable", "origin_layer": layer if b else None,
             "origin_block": block if b else None, "origin_stat": stat if b else None,
             "origin_criterion": "q" if b else None, "test_pos_mse": None if b else 0.01 + 0.001 * s}
            for s, b in enumerate(blew)]


def design_text() -> str:
    return " ".join(DESIGN.read_text().replace("*", "").split())


@pytest.mark.parametrize("rule_id", [r for r in rules.RULES if r != "A1"])
def test_each_rule_is_worded_as_the_design_at_its_cell(rule_id):
    rule = rules.RULES[rule_id]
    name, text = rule.claim().split(": ", 1)
    assert name in design_text() and text in design_text(), rule_id
    # "Rule M2 (R2_full is stable there)" in the earlier sections, "D1, scale lowers it:" in amendment 7
    assert re.search(rf"Rule {rule_id} \({re.escape(name)}\)|{rule_id}, {re.escape(name)}:", design_text())


def test_m3_follows_the_depth_of_its_cell():
    assert "layer 4 or 5" in rules.RULES["M3"].claim() and "layer 3 or 4" in rules.RULES["M3"].claim(rules.Cell(4))
    table = pd.DataFrame(trials("original", "none", [True] * 10, L=4, layer=3))
    [m3] = rules.judge(table, ["M3"], at=rules.Cell(4, 1e-3))
    assert m3.verdict == "PASS" and m3.evidence.startswith("10/10 in layers 3-4")


def test_findings_and_reproduce_give_the_rule_books_verdict_on_the_same_trials(tmp_path):
    """runs.md's verdict table, its reproduction section and `painn-ablate reproduce` judge M1-M3 alike."""
    rows = pd.DataFrame(trials("original", "none", [True] * 8 + [False] * 2)
                        + trials("r2_full", "none", [False] * 9 + [True]))
    table = {v.rule: v for v in rules.judge(rows)}  # what runs.md's verdict table prints
    v = rp.verdict(rows, BASE, CELL)  # reproduce's verdict on a trial table ...
    records = [{**r, "origin": {"layer": r["origin_layer"], "block": r["origin_block"], "stat": r["origin_stat"],
                                "criterion": r["origin_criterion"]} if r["blew_up"] else None}
               for r in rows.to_dict("records")]
    assert rp.verdict(records, BASE, CELL) == v  # ... and on its run records
    for c in v["criteria"]:
        if c["id"] in table:
            assert (c["verdict"], c["claim"], c["observed"]) == (table[c["id"]].verdict, table[c["id"]].claim,
                                                                 table[c["id"]].evidence)
    assert table["M2"].verdict == "MISS"  # r2_full 1/10: Wilson upper bound 0.40 > 0.31
    rows.to_parquet(tmp_path / "map_original.parquet")
    lines = findings.verdict_lines(rows, tmp_path, {**BASE, "data_fingerprint": "f00d"})  # runs.md's section 2
    assert "**NOT REPRODUCED**" in lines
    assert f"- **MISS** (M2) {table['M2'].claim}: {table['M2'].evidence}." in lines


def test_m2_misses_when_r2_full_blows_up_or_the_pairing_does_not_separate():
    original = trials("original", "none", [True] * 10)
    one = rules.judge(pd.DataFrame(original + trials("r2_full", "none", [True] + [False] * 9)), ["M2"])[0]
    assert one.verdict == "MISS" and one.numbers["r2_full"][:2] == [1, 10] and one.numbers["r2_full"][3] > 0.31
    # 0/10 but the original blew up in 4 seeds only: McNemar p = 0.125
    weak = trials("original", "none", [True] * 4 + [False] * 6)
    paired = rules.judge(pd.DataFrame(weak + trials("r2_full", "none", [False] * 10)), ["M2"])[0]
    assert paired.verdict == "MISS" and paired.numbers["mcnemar_p"] == pytest.approx(0.125)
    held = rules.judge(pd.DataFrame(original + trials("r2_full", "none", [False] * 10)), ["M2"])[0]
    assert held.verdict == "PASS" and held.passed


def test_s1_is_judged_jointly_as_amendment_3_defines_it():
    base = trials("original", "none", [True] * 10) + trials("r2_full", "none", [False] * 10)
    good, bad = [False] * 10, [True] * 10

    def s1(**variants):
        rows = base + [row for name, blew in variants.items() for row in trials("original", name, blew)]
        return rules.judge(pd.DataFrame(rows), ["S1"])[0]

    assert s1(g=good, aggregation=good, alpha_inter=bad, alpha_mix=good).verdict == "PASS"
    assert s1(g=bad, aggregation=good, alpha_inter=good, alpha_mix=good).verdict == "MISS"
    assert s1(g=good, aggregation=good, alpha_inter=bad, alpha_mix=bad).verdict == "MISS"
    untested = s1(g=good, aggregation=good)
    assert untested.verdict == "NOT TESTED" and "not run: alpha_inter, alpha_mix" in untested.evidence
    assert s1().verdict == "NOT TESTED"


def test_f1_counts_only_mixing_origins_of_the_named_statistics():
    full = trials("r2_full", "none", [False] * 10) + trials("original", "coupling", [False] * 10)
    mixing = trials("original", "none", [True] * 10, stat="q_absmax")
    assert rules.judge(pd.DataFrame(full + mixing), ["F1"])[0].verdict == "SUPPORTED"
    other = trials("original", "none", [True] * 10, stat="q")  # a non-finite tensor q, not a statistic
    f1 = rules.judge(pd.DataFrame(full + other), ["F1"])[0]
    assert f1.verdict == "PARTLY SUPPORTED" and "0 of 10 (0%; in a mixing block at all: 10)" in f1.evidence


def test_wilson_is_scipys_and_the_closed_form_to_1e_12():
    z = 1.959963984540054
    for n in range(1, 40):
        for k in range(n + 1):
            p = k / n
            centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
            lo, hi = (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)
            assert stats.wilson(k, n) == pytest.approx((max(0.0, lo), min(1.0, hi)), abs=1e-12)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0


# ----------------------------------------------------------------------------- the dose-response (amendment 7)


def _dose_seeds(fracs: dict) -> pd.DataFrame:
    """A probe seeds table: (g, coupling) -> the per-seed init_blow_up_frac of 100 seeds (mu0_scale 1)."""
    rows = []
    for (g, coupling), frac in fracs.items():
        rng = np.random.default_rng(int(g * 1000) + coupling)
        values = np.clip(rng.normal(frac, 0.05, 100), 0, 1) if frac > 0 else np.zeros(100)
        for seed, v in enumerate(values):
            rows.append({"variant": f"g{g}-coupling_{str(coupling).lower()}-mu0_1.0", "L": 5, "seed": seed, "step": 0,
                         "blew_up": v > 0.5, "init_blow_up_frac": v, "init_batches": 25})
    return pd.DataFrame(rows)


def test_the_dose_rules_judge_a_scale_that_explains_the_blow_up():
    seeds = _dose_seeds({(1.0, True): 0.6, (0.5, True): 0.3, (0.25, True): 0.0, (0.125, True): 0.0,
                         (1.0, False): 0.1, (0.25, False): 0.0})
    table = rules.dose_table(seeds)
    assert len(table) == 6 and table.iloc[0]["g"] == 1.0 and table.iloc[0]["coupling"]
    v = {x.rule: x for x in rules.judge(pd.DataFrame(), rules.DOSE_RULES, dose=table)}
    assert v["D1"].verdict == rules.PASS and v["D2"].verdict == rules.PASS
    assert v["D3"].verdict == f"{rules.PASS} at g = 1; {rules.MISS} at g = 0.25"  # both 0 at g = 0.25
    assert v["D4"].verdict == "SCALE EXPLAINS IT"


def test_the_dose_rules_miss_where_scale_does_not_lower_it_and_say_what_was_not_run():
    table = rules.dose_table(_dose_seeds({(1.0, True): 0.5, (0.5, True): 0.55, (0.25, True): 0.5}))
    v = {x.rule: x for x in rules.judge(pd.DataFrame(), rules.DOSE_RULES, dose=table)}
    assert v["D1"].verdict == rules.MISS and v["D4"].verdict == "NOT SHOWN"
    assert v["D2"].verdict == rules.NOT_TESTED and v["D3"].verdict == rules.NOT_TESTED  # g = 0.125, coupling dropped


def _phased(L, phases, lr=1e-3):
    """The original's trials at L, one per phase (None: a seed that did not blow up)."""
    return [{"preset": "original", "ablate": "none", "L": L, "lr": lr, "seed": s, "blew_up": p is not None,
             "status": "stable" if p is None else "diverged", "blow_up_phase": p, "origin_layer": None,
             "test_pos_mse": 0.01} for s, p in enumerate(phases)]


def test_p1_passes_when_most_blow_ups_at_l5_were_present_at_initialisation():
    judged = lambda phases: rules.judge(pd.DataFrame(_phased(5, phases)), ["P1"])[0]  # noqa: E731
    v = judged(["init"] * 9 + ["training"])
    assert v.verdict == "PASS" and v.numbers["init"][:2] == [9, 10]
    assert judged(["init"] * 6 + ["training"] * 4).verdict == "MISS"  # 6/10: Wilson lower bound 0.31 < 0.5
    assert judged([None] * 10).verdict == "NOT TESTED"


def test_p2_needs_five_blow_ups_at_l3_and_a_training_majority():
    judged = lambda phases: rules.judge(pd.DataFrame(_phased(3, phases)), ["P2"])[0]  # noqa: E731
    assert judged(["training"] * 4 + [None] * 6).verdict == "UNDECIDED"  # 4 < 5 blow-ups
    assert judged(["training"] * 8 + [None] * 2).verdict == "PASS"  # 8/8: lower bound 0.68
    assert judged(["training"] * 3 + ["init"] * 3).verdict == "MISS"
