"""The evidence layer: intervals, paired tests, trial tables from a real sweep, the rules, runs.md."""

import math
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient
from support import TINY, cli

from painn_ablate.analysis import rules, stats
from painn_ablate.analysis import tables as ex
from painn_ablate.reporting.findings import build_findings, egnn_lines

NOTEBOOKS = Path(__file__).resolve().parent.parent / "analysis"


def test_wilson_interval_matches_the_formula_at_known_points():
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert stats.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert all(math.isnan(x) for x in stats.wilson(0, 0))


def test_exact_mcnemar_counts_only_discordant_seeds():
    a = pd.Series([True] * 8 + [False, True], index=range(10))
    b = pd.Series([False] * 8 + [False, True], index=range(10))
    assert stats.mcnemar_exact(a, b) == (8, 0, pytest.approx(2 * 0.5 ** 8))
    assert stats.mcnemar_exact(a, a)[2] == 1.0
    # seeds present on one side only are not paired
    assert stats.mcnemar_exact(a, b.drop(index=range(4)))[:2] == (4, 0)


def test_mean_interval_uses_the_sample_sd_and_t():
    r = stats.mean_interval([1.0, 2.0, 3.0, None, float("nan")])
    assert r["n"] == 3 and r["sd"] == pytest.approx(1.0)
    assert r["hi"] - r["mean"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)


def synthetic(preset, ablate, blew, L=5, lr=1e-3, layer=5, block="mixing"):
    return [{"study": "s", "preset": preset, "ablate": ablate, "L": L, "lr": lr, "seed": s, "blew_up": b,
             "diverged": b, "exploded": False, "status": "diverged" if b else "stable",
             "blowup_step": 0 if b else None, "origin_layer": layer if b else None,
             "origin_block": block if b else None, "origin_stat": "q_absmax" if b else None,
             "origin_criterion": "q" if b else None, "test_pos_mse": None if b else 0.01 + 0.001 * s,
             "wall_seconds": 10.0, "ms_per_step": 5.0, "steps_completed": 10, "before_step": None}
            for s, b in enumerate(blew)]


def test_rules_follow_the_design():
    rows = (synthetic("original", "none", [True] * 9 + [False]) + synthetic("r2_full", "none", [False] * 10)
            + synthetic("original", "coupling", [False] * 10) + synthetic("original", "s_gating", [True] * 10))
    trials = pd.DataFrame(rows)
    verdicts = {r.rule: r for r in rules.judge(trials)}
    assert verdicts["M1"].verdict == "PASS" and verdicts["M2"].verdict == "PASS" and verdicts["M3"].verdict == "PASS"
    assert verdicts["S1"].verdict == "NOT TESTED"
    assert verdicts["F1"].verdict == "SUPPORTED" and "coupling: 0/10" in verdicts["F1"].evidence
    assert rules.sufficiency(trials, "coupling")["sufficient"] is True
    assert rules.sufficiency(trials, "s_gating")["sufficient"] is False
    # a miss is a miss: the original blowing up in 2 of 10 fails M1
    weak = pd.DataFrame(synthetic("original", "none", [True] * 2 + [False] * 8) + synthetic("r2_full", "none",
                                                                                           [False] * 10))
    assert {r.rule: r.verdict for r in rules.judge(weak)}["M1"] == "MISS"


def test_deep_and_egnn_rules_keep_their_trials_apart():
    """M4 judges R2_full at L = 8; E1 judges only the runs in EGNN's setting, which no other rule sees."""
    base = synthetic("original", "none", [True] * 10) + synthetic("r2_full", "none", [False] * 10)
    egnn = [{**row, "edge_charge": True, "loss": "pos", "schedule": "cosine", "epochs": 300,
             "test_pos_mse": mse} for row, mse in zip(synthetic("r2_full", "none", [False] * 3), (0.0050, 0.0052, 0.0054))]
    verdicts = {r.rule: r for r in rules.judge(pd.DataFrame(base + egnn))}
    assert verdicts["M4"].verdict == "NOT TESTED"
    assert verdicts["E1"].verdict == "AS ACCURATE OR BETTER" and "n = 3 of 3 runs, 300 epochs" in verdicts["E1"].evidence
    assert "0/10" in verdicts["M2"].evidence  # the EGNN runs are not counted in R2_full's map cell
    worse = [{**row, "test_pos_mse": 0.02 + row["test_pos_mse"]} for row in egnn]
    assert {r.rule: r.verdict for r in rules.judge(pd.DataFrame(base + worse))}["E1"] == "LESS ACCURATE"
    few = base + synthetic("r2_full", "none", [False] * 6, L=8)
    assert {r.rule: r.verdict for r in rules.judge(pd.DataFrame(few))}["M4"] == "UNDECIDED"
    blown = base + synthetic("r2_full", "none", [False] * 9 + [True], L=8)
    assert {r.rule: r.verdict for r in rules.judge(pd.DataFrame(blown))}["M4"] == "MISS"
    held = base + synthetic("r2_full", "none", [False] * 10, L=8)
    assert {r.rule: r.verdict for r in rules.judge(pd.DataFrame(held))}["M4"] == "PASS"


def test_egnn_section_lists_each_seed_beside_the_map_cell():
    base = synthetic("r2_full", "none", [False] * 4)
    egnn = [{**row, "edge_charge": True, "loss": "pos", "epochs": 300, "test_pos_mse": 0.004 + 0.001 * row["seed"],
             "best_step": 99 + 100 * row["seed"]} for row in synthetic("r2_full", "none", [False, False, True])]
    trials = pd.DataFrame(base + egnn).assign(steps=1000)
    text = "\n".join(egnn_lines(trials[~ex.default_setting(trials)], trials[ex.default_setting(trials)], 5, 1e-3))
    assert "| 2 | diverged | 300 |" in text and "| 0 | stable | 300 | 10 | 99 (epoch 30) | 0.00400 |" in text
    assert "checkpoints come from epochs 30-90 of 300" in text  # 1000 steps for 300 epochs: step 99 is epoch 30
    assert "stable seeds: 0.0045 ± 0.00071 [" in text and "(n=2)" in text  # the diverged seed is left out
    assert "1000 steps) at the map's cell L = 5, lr = 0.001: 0.0115 ±" in text and "(n=4)" in text


def test_cell_table_counts_and_intervals():
    cells = ex.cell_table(pd.DataFrame(synthetic("original", "none", [True] * 3 + [False] * 7)))
    c = cells.iloc[0]
    assert (c["n"], c["blew_up"], c["init_events"], c["stable"]) == (10, 3, 3, 7)
    assert (c["rate_lo"], c["rate_hi"]) == pytest.approx(stats.wilson(3, 10))
    assert c["origin_layers"] == "5: 3" and c["test_mse_mean"] == pytest.approx(np.mean([0.01 + 0.001 * s
                                                                                        for s in range(3, 10)]))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A real 8-trial sweep (original and r2_full, each alone and with C_s flipped, x 2 seeds, L = 5) and a
    probe, exported to results/."""
    root = tmp_path_factory.mktemp("exp")
    (root / "map.yaml").write_text(
        "name: map_tiny\nmethod: grid\nmetric: {name: val_pos_mse, goal: minimize}\nparameters:\n"
        "  model: {values: [original, r2_full]}\n  ablate: {values: [none, C_s]}\n  seed: {values: [0, 1]}\n"
        "  train.lr: {value: 0.001}\n"
        "  monitor.on_diverged: {value: stop}\n")
    common = list(TINY)  # the data: the session's cache (conftest)
    for args in (["sweep", str(root / "map.yaml"), *common, "train.steps=6", "train.val_every=3",
                  "--out", str(root / "map")],
                 ["probe", *common, "model=original", "--seeds", "3", "--depths", "2,5", "--out",
                  str(root / "probe" / "original")],
                 ["export", str(root / "map"), str(root / "probe" / "original"), "--out", str(root / "results")],
                 # the same trials as a re-run of the map under the new outcomes (amendment 8's folder)
                 ["export", str(root / "map"), "--out", str(root / "results" / "outcomes")]):
        res = cli(*args)
        assert res.returncode == 0, res.stderr
    return root / "results"


@pytest.mark.integration
def test_trial_table_has_one_row_per_trial_with_outcome_origin_and_profile(results):
    trials, stats, seeds = ex.load_results(results)
    assert len(trials) == 8 and set(trials["preset"]) == {"original", "r2_full"}
    assert set(trials["seed"]) == {0, 1} and (trials["L"] == 5).all() and set(trials["ablate"]) == {"none", "C_s"}
    assert {"status", "blew_up", "blowup_step", "origin_layer", "origin_block", "test_pos_mse",
            "at_mu_norm_max_L5", "before_q_absmax_L1"} <= set(trials.columns)
    blown = trials[trials["blew_up"]]
    assert blown["origin_layer"].notna().all()  # every blow-up has a layer
    assert (trials.loc[~trials["blew_up"], "status"] == "stable").all()
    assert set(seeds["L"]) == {2, 5} and set(stats["variant"]) == {"original"}
    assert sum(p.stat().st_size for p in results.glob("*.parquet")) < 2_000_000
    # how often gradient clipping acted: recorded where it is on (r2_full), absent where it is off
    full = trials[(trials["preset"] == "r2_full") & (trials["ablate"] == "none")]
    assert full["act_grad_clip_frac"].between(0, 1).all()
    assert trials.loc[trials["preset"] == "original", "act_grad_clip_frac"].isna().all()
    # the per-sample error tail of every stable trial, ordered
    stable = trials[trials["status"] == "stable"]
    q = stable[["test_pos_mse_q50", "test_pos_mse_q90", "test_pos_mse_q99", "test_pos_mse_max"]]
    assert len(stable) and q.notna().all().all() and (q.diff(axis=1).iloc[:, 1:] >= 0).all().all()
    assert (stable["test_pos_mse_max"] >= stable["test_pos_mse"]).all()


@pytest.mark.integration
def test_checkpoint_reevaluation_matches_the_summary(results):
    """The tail an export recomputes for older runs is the one training records: same weights, same split."""
    import json

    from painn_ablate.training.trainer import evaluate_checkpoint

    run_dir = next(p.parent for p in sorted((results.parent / "map").rglob("summary.json"))
                   if json.loads(p.read_text())["status"] == "stable")
    test = json.loads((run_dir / "summary.json").read_text())["test"]
    again = evaluate_checkpoint(run_dir)
    assert again.keys() == test.keys()
    assert all(again[k] == pytest.approx(test[k], rel=1e-6) for k in test)


def test_holm_and_paired_t():
    assert stats.holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx([0.03, 0.06, float("nan"), 0.06],
                                                                        nan_ok=True)
    a = pd.Series([1.0, 2.0, 3.0, 4.0], index=[0, 1, 2, 3])
    b = pd.Series([1.5, 2.4, 3.7, 9.0], index=[0, 1, 2, 5])  # seed 5 has no pair; seed 3 neither
    r = stats.paired_t(a, b)
    diff = np.array([0.5, 0.4, 0.7])
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(3))
    assert r["n"] == 3 and r["mean"] == pytest.approx(diff.mean())
    assert r["p"] == pytest.approx(2 * (1 - __import__("scipy").stats.t.cdf(t, 2)))


def test_ablation_table_names_necessary_sufficient_and_inert():
    rows = (synthetic("original", "none", [True] * 10) + synthetic("r2_full", "none", [False] * 10)
            + synthetic("original", "g", [False] * 10) + synthetic("original", "C_s", [True] * 10)
            + synthetic("r2_full", "g", [True] * 7 + [False] * 3) + synthetic("r2_full", "C_s", [False] * 10)
            + synthetic("r2_full", "s_msg", [False] * 10))
    trials = pd.DataFrame(rows)
    worse = (trials["preset"] == "r2_full") & (trials["ablate"] == "s_msg")
    trials.loc[worse, "test_pos_mse"] += 0.002 + 0.0001 * trials.loc[worse, "seed"]  # worse in every seed
    trials["act_C_s_frac"] = np.where(trials["preset"] == "r2_full", 0.0, np.nan)
    trials["act_s_msg_frac"] = np.where(trials["preset"] == "r2_full", 0.01, np.nan)
    table = rules.ablation_table(trials).set_index("stabilizer")
    assert table.loc["g", "sufficient"] is True and table.loc["C_s", "sufficient"] is False
    assert table.loc["g", "loo"]["by_rate"] and table.loc["g", "necessary"]  # 7 discordant pairs: p = 0.016
    assert table.loc["s_msg", "loo"]["by_mse"] and not table.loc["s_msg", "loo"]["by_rate"]
    assert table.loc["s_msg", "necessary"] and not table.loc["s_msg", "inert"]
    assert table.loc["C_s", "inert"] and not table.loc["C_s", "necessary"]
    assert math.isnan(table.loc["g", "activity_mean"])  # a gain acts on every pass: no fraction
    assert table.loc["g", "aoi_p_holm"] == pytest.approx(min(1, 2 * table.loc["g", "aoi_p"]))


@pytest.mark.integration
def test_findings_report_and_cli(results, tmp_path):
    text = build_findings(results, tmp_path / "runs.md", tmp_path / "plots")
    for needle in ("## Verdicts", "| M1 |", "Wilson", "## 1. Explosion map", "### At initialisation",
                   "## 2. Reproduction at L = 5", "### Per-sample error tails", "## 3. The ablation",
                   "| C_s |", "## Compute", "## Not done", "## 1b. The map re-run", "| P1, re-run |",
                   "**Recovery.**", "Data set fingerprint of these trials"):
        assert needle in text, needle
    assert (tmp_path / "plots" / "map.png").stat().st_size > 0
    res = cli("report", "--results", str(results), "--out", str(tmp_path / "r.md"), "--plots", str(tmp_path / "p"))
    assert res.returncode == 0 and (tmp_path / "r.md").read_text().startswith("# runs.md")


@pytest.mark.integration
def test_findings_notebook_executes_on_a_tiny_results_folder(results, monkeypatch):
    monkeypatch.setenv("PAINN_ABLATE_RESULTS", str(results))
    book = nbformat.read(NOTEBOOKS / "findings.ipynb", as_version=4)
    NotebookClient(book, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    images = [o for c in book.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2


def _comparable(text: str) -> list[str]:
    """runs.md less what depends on the day and the machine: the generation line and the environment."""
    body = text.split("## Environment")[0]
    return [line for line in body.splitlines() if not line.startswith("Generated by")]


@pytest.mark.integration
def test_the_committed_runs_md_regenerates_from_the_committed_results(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the report names its results folder as given: `results`, as runs.md says
    text = (build_findings("results", tmp_path / "runs.md", tmp_path / "plots"))
    assert _comparable(text) == _comparable((root / "runs.md").read_text())


def test_not_done_names_each_variant_whose_designed_walks_a_deadline_left_incomplete(tmp_path):
    """From the committed L = 8 frontier table (stopped at its deadline with one walk of original + bounds
    incomplete), and the same table with a whole variant removed, as a sweep cut before it started leaves it."""
    from painn_ablate.reporting.findings import FRONTIER, _incomplete_walk_lines

    root = Path(__file__).resolve().parents[1]
    trials = pd.read_parquet(root / "results" / FRONTIER / "stabilizers_L8.parquet")
    (tmp_path / FRONTIER).mkdir()
    trials.to_parquet(tmp_path / FRONTIER / "stabilizers_L8.parquet")
    [line] = _incomplete_walk_lines(tmp_path)
    assert "`sweeps/stabilizers_L8.yaml`" in line and line.endswith("Walks complete: original + bounds 9 of 10.")
    cut = trials[~((trials["preset"] == "r2_full") & (trials["ablate"] == "grad_clip"))]
    cut.to_parquet(tmp_path / FRONTIER / "stabilizers_L8.parquet")
    [line] = _incomplete_walk_lines(tmp_path)
    assert line.endswith("Walks complete: r2_full - grad_clip 0 of 10, original + bounds 9 of 10.")
    trials[trials["ablate"] != "bounds"].to_parquet(tmp_path / FRONTIER / "stabilizers_L8.parquet")
    [line] = _incomplete_walk_lines(tmp_path)  # variants with no trials at all
    assert line.endswith("Walks complete: r2_full - bounds 0 of 10, original + bounds 0 of 10.")


def _walked_table(critical: dict, stem: str, seeds=range(10), L: int = 5) -> pd.DataFrame:
    """A walked trial table of sweeps/<stem>.yaml at depth L: (preset, ablate) -> its critical rung in every seed."""
    from painn_ablate.reporting.findings import sweep_ladder

    ladder, rows = sweep_ladder(stem), []
    for (preset, ablate), crit in critical.items():
        for seed in seeds:
            for i in range(min(crit + 2, len(ladder))):
                fails = i == crit + 1
                rows.append({"preset": preset, "ablate": ablate, "L": L, "seed": seed, "lr": ladder[i],
                             "status": "diverged" if fails else "stable", "blow_up_phase": "training" if fails else None,
                             "training_blow_up": fails,
                             "final_val_pos_mse": 1e3 if fails else 0.01 * (1 + i + seed) * (2 if preset == "fairchem" else 1),
                             "initial_val_pos_mse": 1.0})
    table = pd.DataFrame(rows)
    return table.assign(test_pos_mse=1.1 * table["final_val_pos_mse"])


def _family_table(critical: dict, seeds=range(10)) -> pd.DataFrame:
    """A walked trial table of sweeps/family.yaml: preset -> its critical rung in every seed."""
    from painn_ablate.reporting.findings import FAMILY

    return _walked_table({(preset, "none"): crit for preset, crit in critical.items()}, FAMILY, seeds)


def test_the_family_section_judges_its_rules_and_not_done_names_a_preset_cut_by_the_deadline(tmp_path):
    from painn_ablate.reporting.findings import FAMILY, FRONTIER, _family_not_done_lines, _incomplete_walk_lines, family_lines

    (tmp_path / FRONTIER).mkdir()
    [line] = _family_not_done_lines(tmp_path)
    assert f"`sweeps/{FAMILY}.yaml`, amendment 16) is not in results/{FRONTIER}" in line
    _family_table({"fairchem": 4, "r2_full": 2, "original": -1}).to_parquet(tmp_path / FRONTIER / f"{FAMILY}.parquet")
    rows = {line.split("|")[1].strip(): line for line in family_lines(tmp_path) if line.startswith("| FC")}
    assert "**PASS**" in rows["FC1"] and "up 10 / down 0 of n 10" in rows["FC1"]
    assert "FC2, fairchem's and R2_full's frontiers differ: fairchem minus R2_full: median shift 2 rung" in \
        "\n".join(family_lines(tmp_path))  # as `painn-ablate sweep` and `status` print it too
    assert "**PASS**" in rows["FC2"] and "median shift 2 rung" in rows["FC2"]
    text = "\n".join(family_lines(tmp_path))
    assert "at L = 5, fairchem's family is more stable: fairchem's frontier lies 2 rung(s) above R2_full's" in text
    assert "neither is shown more accurate" not in text and "R2_full is more accurate" in text  # fairchem's 2x loss
    assert "at rung 2 (lr 0.00475), the highest where every seed" in text
    assert "fairchem minus R2_full paired by seed 0.075 " in text  # validation, at rung 2
    assert "fairchem at rung 0 (lr 0.00119)" in text and "paired by seed 0.0605 " in text  # test, at the best rungs
    assert _incomplete_walk_lines(tmp_path) == []
    parts, depth = _family_not_done_lines(tmp_path)
    assert "`model=fairchem ablate=<part>`" in parts and "at L = 8 is not run" in depth and depth.endswith("L = 5.")
    _family_table({"fairchem": 4, "r2_full": 2}).to_parquet(tmp_path / FRONTIER / f"{FAMILY}.parquet")
    [line] = _incomplete_walk_lines(tmp_path)
    assert f"`sweeps/{FAMILY}.yaml`" in line and line.endswith("Walks complete: original 0 of 10.")
    rows = {line.split("|")[1].strip(): line for line in family_lines(tmp_path) if line.startswith("| FC")}
    assert "n < 10, not judged" in rows["FC1"] and "**PASS**" in rows["FC2"]


def test_the_family_section_judges_each_depth_in_its_own_run(tmp_path):
    from painn_ablate.reporting.findings import (
        FAIRCHEM_PARTS,
        FAMILIES,
        FRONTIER,
        _family_not_done_lines,
        family_lines,
        frontier_verdicts,
    )

    [(shallow, _, first), (deep, L, amendment)] = FAMILIES
    (tmp_path / FRONTIER).mkdir()
    _family_table({"fairchem": 4, "r2_full": 2, "original": -1}).to_parquet(tmp_path / FRONTIER / f"{shallow}.parquet")
    _walked_table({("fairchem", "none"): 2, ("fairchem", "q_layernorm"): 2}, FAIRCHEM_PARTS).to_parquet(
        tmp_path / FRONTIER / f"{FAIRCHEM_PARTS}.parquet")
    assert [line for line in _family_not_done_lines(tmp_path) if f"at L = {L} is not run" in line]
    assert not [line for line in family_lines(tmp_path) if line.startswith(f"#### L = {L}")]
    _walked_table({(p, "none"): c for p, c in {"fairchem": 1, "r2_full": 1, "original": -1}.items()}, deep, L=L
                  ).to_parquet(tmp_path / FRONTIER / f"{deep}.parquet")
    lines = family_lines(tmp_path)
    assert lines[0] == f"### 7d. Two families on one frontier: fairchem's and R2_full's (amendment {first} at L = 5, " \
                       f"amendment {amendment} at L = {L})"
    at = lines.index(f"#### L = {L} (amendment {amendment}, `sweeps/{deep}.yaml`)")
    rows = {line.split("|")[1].strip(): line for line in lines[at:] if line.startswith("| FC")}
    assert "**PASS**" in rows["FC1"] and "**MISS**" in rows["FC2"]  # 1 above -1 in every seed; 1 = 1
    assert f"By the critical rung over 200 steps at L = {L}, neither family is shown more stable" in "\n".join(lines[at:])
    labels = {label: v.verdict for label, v in frontier_verdicts(tmp_path)}
    assert labels["FC2"] == "PASS" and labels[f"FC2, L = {L}"] == "MISS"
    [line] = [line for line in _family_not_done_lines(tmp_path) if "L = 8" in line]
    assert line.startswith("- fairchem's parts left out one at a time are not run at L = 8")


def test_the_singles_section_puts_each_members_depths_together_each_judged_in_its_own_run(tmp_path):
    from painn_ablate.reporting.findings import FRONTIER, _incomplete_walk_lines, frontier_not_done_lines, singles_out_lines

    (tmp_path / FRONTIER).mkdir()
    assert singles_out_lines(tmp_path) == []
    for stem, L in (("stabilizers", 5), ("stabilizers_L8", 8)):
        main = {("r2_full", "none"): 3, ("r2_full", "bounds"): 2, ("original", "none"): -1}
        _walked_table(main, stem, L=L).to_parquet(tmp_path / FRONTIER / f"{stem}.parquet")
    _walked_table({("r2_full", "none"): 3, ("r2_full", "s_mix"): 2, ("r2_full", "C_s"): 3}, "singles_r2_full").to_parquet(
        tmp_path / FRONTIER / "singles_r2_full.parquet")
    # a run whose first variant, the reference, is all it has walked yet (exported mid-run): its row, no verdict
    _walked_table({("r2_full", "none"): 3}, "singles_r2_full_L8", L=8).to_parquet(
        tmp_path / FRONTIER / "singles_r2_full_L8.parquet")
    early = [line for line in singles_out_lines(tmp_path) if line.startswith("| r2_full |")]
    assert [line.split("|")[2].strip() for line in early] == ["5", "8"] and "| 10/10 | 3 (" in early[1]
    deep = pd.concat([_walked_table({("r2_full", "none"): 3, ("r2_full", "s_mix"): 1}, "singles_r2_full_L8", L=8),
                      _walked_table({("r2_full", "C_mu"): 2}, "singles_r2_full_L8", seeds=range(4), L=8)])
    deep.to_parquet(tmp_path / FRONTIER / "singles_r2_full_L8.parquet")
    lines = singles_out_lines(tmp_path)
    assert lines[0] == "### 7c. Single toggles left out of R2_full (amendment 15 at L = 5, amendment 18 at L = 8)"
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines if line.startswith("| r2_full")]
    s_mix = [row for row in rows if row[0] == "r2_full - s_mix"]
    assert [row[1] for row in s_mix] == ["5", "8"]  # one member's depths together
    assert all(row[-1] == "**necessary**" and row[2] == "10/10" for row in s_mix)
    assert s_mix[1][3].startswith("1 ") and s_mix[1][5] == "0/10"  # L = 8 against that run's R2_full (rung 3)
    [c_s] = [row for row in rows if row[0] == "r2_full - C_s"]
    assert c_s[1] == "5" and c_s[-1] == "**inert**"
    [c_mu] = [row for row in rows if row[0] == "r2_full - C_mu"]
    assert c_mu[1:3] == ["8", "4/10"] and c_mu[-1] == "**n < 10, not judged**"
    assert "- L = 8: necessary by this measure: s_mix of the 1 single toggles judged (C_mu: n < 10, not judged)." in lines
    text = "\n".join(lines)
    assert "- L = 8: R2_full without the whole bounds group in the main job: median rung 2" in text
    assert "- L = 8: This run's R2_full walks against the main job's, seed by seed: the same critical rung in 10 of " \
           "10 seeds." in text
    assert not any("Single toggles were walked, but not at L = 8" in line for line in frontier_not_done_lines(tmp_path))
    _walked_table({("original", "none"): -1, ("original", "g"): 0}, "singles_interaction").to_parquet(
        tmp_path / FRONTIER / "singles_interaction.parquet")
    [shallow] = [line for line in frontier_not_done_lines(tmp_path) if "but not at L = 8" in line]
    assert "added to the original (section 7b) at L = 5." in shallow and "left out of R2_full" not in shallow
    [cut] = [line for line in _incomplete_walk_lines(tmp_path) if "singles_r2_full_L8" in line]
    assert "r2_full - C_mu 4 of 10" in cut and "r2_full - s_mix" not in cut and "r2_full - aggregation 0 of 10" in cut


def test_the_added_singles_section_judges_each_depth_against_that_depths_r2_full_and_names_a_file_not_run(tmp_path):
    from painn_ablate.reporting.findings import FRONTIER, frontier_not_done_lines, singles_lines

    (tmp_path / FRONTIER).mkdir()
    for stem, L, r2_full in (("stabilizers", 5, 3), ("stabilizers_L8", 8, 2)):
        main = {("r2_full", "none"): r2_full, ("original", "none"): -1, ("original", "bounds"): 4}
        _walked_table(main, stem, L=L).to_parquet(tmp_path / FRONTIER / f"{stem}.parquet")
    assert singles_lines(tmp_path) == []
    _walked_table({("original", "none"): -1, ("original", "g"): 0}, "singles_interaction").to_parquet(
        tmp_path / FRONTIER / "singles_interaction.parquet")
    shallow = singles_lines(tmp_path)  # amendment 13's second file not exported: said, and L = 8 not yet run
    assert shallow[0] == "### 7b. Single toggles added to the original (amendment 13 at L = 5)"
    assert "- L = 5: not run by amendment 13's deadline: singles_bounds." in shallow
    deep = pd.concat([_walked_table({("original", "none"): -1, ("original", "s_mix"): 2, ("original", "g"): 0,
                                     ("original", "C_s"): -1}, "singles_original_L8", L=8),
                      _walked_table({("original", "C_v"): 1}, "singles_original_L8", seeds=range(4), L=8)])
    deep.to_parquet(tmp_path / FRONTIER / "singles_original_L8.parquet")
    lines = singles_lines(tmp_path)
    assert lines[0] == "### 7b. Single toggles added to the original (amendment 13 at L = 5, amendment 19 at L = 8)"
    rows = {(cells[0], cells[1]): cells[2:] for line in lines if line.startswith("| r2_full") or
            line.startswith("| original") for cells in [[c.strip() for c in line.split("|")[1:-1]]]}
    assert rows[("r2_full", "5")][1].startswith("3 (") and rows[("r2_full", "8")][1].startswith("2 (")  # each depth's
    assert rows[("original + g", "5")][-1] == rows[("original + g", "8")][-1] == "**raises**"
    assert rows[("original + s_mix", "8")][-1] == "**sufficient**"  # rung 2: inside L = 8's R2_full interval
    assert rows[("original + C_s", "8")][-1] == "**inert**"
    assert rows[("original + C_v", "8")][0] == "4/10" and rows[("original + C_v", "8")][-1] == "**n < 10, not judged**"
    assert ("original + s_mix", "5") not in rows
    assert "- L = 8: sufficient by this measure: s_mix of the 3 single toggles judged; raises: g (C_v: n < 10, not " \
           "judged)." in lines and "- L = 5: sufficient by this measure: none of the 1 single toggles judged; raises: g." in lines
    assert "- L = 8: the whole bounds group on the original (the main job): median rung 4 (4 to 4)." in lines
    assert "- L = 8: This run's original walks against the main job's, seed by seed: the same critical rung in 10 " \
           "of 10 seeds." in lines
    assert not any("added to the original (section 7b)" in line for line in frontier_not_done_lines(tmp_path))


def test_a_group_rerun_is_judged_against_its_own_original_beside_the_main_jobs_short_row(tmp_path):
    from painn_ablate.reporting.findings import FRONTIER, GROUP_RERUNS, _incomplete_walk_lines, group_rerun_lines

    [(stem, L, amendment)] = GROUP_RERUNS
    (tmp_path / FRONTIER).mkdir()
    main = pd.concat([_walked_table({("r2_full", "none"): 2, ("original", "none"): -1}, "stabilizers_L8", L=L),
                      _walked_table({("original", "bounds"): 4}, "stabilizers_L8", seeds=range(9), L=L)])
    main.to_parquet(tmp_path / FRONTIER / "stabilizers_L8.parquet")
    assert group_rerun_lines(tmp_path) == []
    [short] = [line for line in _incomplete_walk_lines(tmp_path) if "stabilizers_L8" in line]
    assert "original + bounds 9 of 10," in short
    rerun = pd.concat([_walked_table({("original", "none"): -1}, stem, L=L),
                       _walked_table({("original", "bounds"): 3}, stem, seeds=[0], L=L),
                       _walked_table({("original", "bounds"): 4}, stem, seeds=range(1, 10), L=L)])
    rerun.to_parquet(tmp_path / FRONTIER / f"{stem}.parquet")
    lines = group_rerun_lines(tmp_path)
    assert lines[0] == f"### 7a, re-run at L = {L} (amendment {amendment})"
    assert f"The main job at L = {L} completed 9 walks of original + bounds" in lines[2]
    rows = {cells[0]: cells[1:] for line in lines if line.startswith("| r2_full") or line.startswith("| original")
            for cells in [[c.strip() for c in line.split("|")[1:-1]]]}
    assert rows["r2_full"][2].startswith("2 (")  # the main job's R2_full: the sufficiency interval
    assert rows["original + bounds"][1] == "10/10" and rows["original + bounds"][-1] == "**raises**"  # 4: above [2, 2]
    assert rows["original + bounds"][-3] == "10/0" and rows["original + bounds"][-2] == "0.0009766"  # one group: unadjusted
    assert f"- L = {L}: sufficient by this measure: none of the 1 groups judged; raises: bounds." in lines
    assert f"- L = {L}: This run's original walks against the main job's, seed by seed: the same critical rung in 10 " \
           "of 10 seeds." in lines
    assert f"- L = {L}: This run's original + bounds walks against the main job's, seed by seed: the same critical " \
           "rung in 8 of 9 seeds (at most 1 rung apart)." in lines
    [short] = [line for line in _incomplete_walk_lines(tmp_path) if "stabilizers_L8" in line]
    assert f"original + bounds 9 of 10 (re-run whole in section 7a, amendment {amendment}: 10 of 10)," in short


def test_the_fairchem_parts_section_judges_each_part_against_its_own_fairchem_and_names_a_cut_part(tmp_path):
    from painn_ablate.reporting.findings import FAIRCHEM_PARTS, FAMILY, FRONTIER, fairchem_parts_lines

    (tmp_path / FRONTIER).mkdir()
    assert fairchem_parts_lines(tmp_path) == []
    parts = {("fairchem", "none"): 2, ("fairchem", "dot_inv_sqrt_f"): 0, ("fairchem", "q_layernorm"): 2,
             ("fairchem", "scaled_silu"): 3}
    table = pd.concat([_walked_table(parts, FAIRCHEM_PARTS),
                       _walked_table({("fairchem", "vgate_scale"): 1}, FAIRCHEM_PARTS, seeds=range(6))])
    table.to_parquet(tmp_path / FRONTIER / f"{FAIRCHEM_PARTS}.parquet")
    _family_table({"fairchem": 2, "r2_full": 3, "original": -1}, seeds=range(9)).to_parquet(
        tmp_path / FRONTIER / f"{FAMILY}.parquet")
    lines = fairchem_parts_lines(tmp_path)
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| fairchem")}
    assert "**necessary**" in rows["fairchem - dot_inv_sqrt_f"] and "| 0/10 |" in rows["fairchem - dot_inv_sqrt_f"]
    assert "**inert**" in rows["fairchem - q_layernorm"] and "**not shown**" in rows["fairchem - scaled_silu"]
    assert "| 6/10 |" in rows["fairchem - vgate_scale"] and "n < 10" in rows["fairchem - vgate_scale"]
    text = "\n".join(lines)
    assert "- Necessary by this measure: dot_inv_sqrt_f of the 3 parts judged (vgate_scale: n < 10, not judged)." in text
    assert "- Leaving out scaled_silu (+1) raises the median critical rung (described, not tested)." in text
    assert "This run's fairchem walks against amendment 16's, seed by seed: the same critical rung in 9 of 9" in text
    assert "FR1" not in text  # no R2_full and no original in this run


def test_the_family_section_adds_the_test_sets_sampling_error_where_per_system_errors_are_exported(tmp_path):
    from painn_ablate.analysis import frontier as fr
    from painn_ablate.analysis.tables import TEST_ERRORS
    from painn_ablate.reporting.findings import FAMILY, FRONTIER, family_lines, sweep_ladder

    (tmp_path / FRONTIER).mkdir()
    trials = _family_table({"fairchem": 4, "r2_full": 2, "original": -1}).reset_index(names="number")
    trials.to_parquet(tmp_path / FRONTIER / f"{FAMILY}.parquet")
    assert any("has no family_test_errors.parquet" in line for line in family_lines(tmp_path))
    rng = np.random.default_rng(0)
    stable = trials[trials["status"] == "stable"]  # each run's 50 systems scattered around its test MSE
    errors = pd.DataFrame([{"study": FAMILY, "number": n, "system": k, "pos_mse": m * rng.uniform(0.5, 1.5)}
                           for n, m in zip(stable["number"], stable["test_pos_mse"]) for k in range(50)])
    result = fr.family_result(trials, sweep_ladder(FAMILY))
    sampled = fr.best_rate_sampling(result, trials, errors)
    best = result.accuracy["best"]
    for preset in ("fairchem", "r2_full"):
        runs = stable[(stable["preset"] == preset) & np.isclose(stable["lr"], best[preset]["lr"])]
        mine = errors[errors["number"].isin(runs["number"])]["pos_mse"]
        assert sampled[preset]["mean"] == pytest.approx(mine.mean())
        assert sampled[preset]["lo"] < mine.mean() < sampled[preset]["hi"] and sampled[preset]["systems"] == 50
    d = sampled["paired"]
    assert d["mean"] == pytest.approx(sampled["fairchem"]["mean"] - sampled["r2_full"]["mean"]) and d["n"] == 10
    errors.to_parquet(tmp_path / FRONTIER / f"{FAMILY}{TEST_ERRORS}")
    text = "\n".join(family_lines(tmp_path))
    assert "over the 10 seeds and the 50 test systems" in text and "has no family_test_errors" not in text
    # a best-rate run without its per-system errors: nothing is claimed
    assert fr.best_rate_sampling(result, trials, errors[errors["number"] != runs["number"].iloc[0]]) == {}
