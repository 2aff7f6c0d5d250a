"""`painn-ablate reproduce` and `painn-ablate report` end to end on tiny budgets, and the verdict rules."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from painn_ablate import analysis, reproduce as rp
from painn_ablate.cli import main
from painn_ablate.config import compose, flatten
from painn_ablate.outcome import OUTCOMES
from test_analysis import TINY, tiny_root  # noqa: F401  (tiny_root: the session's runs and sweep)

# At lr 0.05 the tiny original goes non-finite within a few steps (see test_train); r2_full does not.
REPRO = [*TINY, "train.lr=0.05", "train.steps=8"]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """`painn-ablate reproduce --quick` through the CLI, every run shrunk by overrides."""
    root = tmp_path_factory.mktemp("repro")
    out = root / "out"
    res = subprocess.run([sys.executable, "-m", "painn_ablate.cli", "reproduce", "--quick", "--out", str(out), *REPRO,
                          f"data.cache_dir={root / 'cache'}"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    return out, res.stdout, [*REPRO, f"data.cache_dir={root / 'cache'}"]


def test_reproduce_writes_one_record_per_run_the_verdict_and_plots(reproduced):
    out, stdout, _ = reproduced
    result = json.loads((out / "reproduce.json").read_text())
    assert [(r["experiment"], r["seed"]) for r in result["runs"]] == [
        (e.name, s) for e in rp.EXPERIMENTS for s in rp.QUICK.seeds]
    for r in result["runs"]:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert (r["status"], r["first_nonfinite"], r["steps_completed"]) == (
            summary["status"], summary["first_nonfinite"], summary["steps_completed"])
        assert r["test_pos_mse"] == (summary["test"] or {}).get("pos_mse")
        assert set(r["layers_before_event"]["mu_norm_max"]) == {"1", "2", "3", "4", "5"}
        assert r["lr"] == 0.05 and r["steps_total"] == 8
    assert (out / "verdict.md").read_text() == rp.verdict_text(result)
    assert "Reproduction verdict:" in stdout and stdout.count("seed") >= 9
    for name in ("layers_mu_q", "heatmaps", "feedback", "outcomes", "validation"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 10_000
    verdict_lines = [line for line in stdout.splitlines() if line.startswith("- **")]
    passed = [c["passed"] for c in result["verdict"]["criteria"]]
    assert [line.startswith("- **PASS**") for line in verdict_lines] == passed


def test_verdict_agrees_with_the_records_read_directly(reproduced):
    """Recompute every criterion from summary.json, layer_stats.parquet and the test split, without the package."""
    out, _, _ = reproduced
    result = json.loads((out / "reproduce.json").read_text())
    criteria = {c["id"]: c for c in result["verdict"]["criteria"]}
    runs = {(r["experiment"], r["seed"]): Path(r["run_dir"]) for r in result["runs"]}
    counted = 0
    for seed in rp.QUICK.seeds:
        run_dir = runs[("original", seed)]
        summary = json.loads((run_dir / "summary.json").read_text())
        first = summary["first_nonfinite"]
        if not first:
            continue
        stats = pd.read_parquet(run_dir / "layer_stats.parquet")
        stats = stats[(stats.block == "mixing") & (stats.step <= first["step"])]
        layer = first["layer"]
        if layer is None:  # the loss went first: the shallowest layer whose statistics overflowed then
            event = stats[(stats.step == first["step"]) & stats.stat.isin(["mu_norm_max", "q_absmax"])]
            bad = event.loc[~np.isfinite(event.value), "layer"]
            layer = int(bad.min()) if len(bad) else None
        if layer not in (4, 5):
            continue
        grew = False
        for stat in ("mu_norm_max", "q_absmax"):
            snaps = stats[stats.stat == stat].pivot_table(index="step", columns="layer", values="value")
            snaps = snaps[np.isfinite(snaps).all(axis=1)]
            grew |= bool(len(snaps)) and snaps.iloc[-1][5] > snaps.iloc[-1][1]
        counted += grew
    assert criteria[1]["observed"].startswith(f"{counted} of 3") and criteria[1]["passed"] == (counted >= 2)
    full = [json.loads((runs[("r2_full", s)] / "summary.json").read_text()) for s in rp.QUICK.seeds]
    assert criteria[2]["passed"] == all(s["nonfinite_events"] == 0 and s["status"] == "stable" for s in full)
    # the constant-velocity baseline, from the cached test split itself
    test = np.load(next((out.parent / "cache").glob("charged-*/test.npz")))
    const_vel = float(np.mean((test["pos_next"] - test["pos"] - test["vel"] * 1.0) ** 2))
    assert result["baselines"]["constant_velocity_test_pos_mse"] == pytest.approx(const_vel, rel=1e-5)
    mean = np.mean([s["test"]["pos_mse"] for s in full])
    assert criteria[3]["passed"] == bool(mean < const_vel)


def record(seed, preset="original", ablate="none", events=0, layer=None, mu=(1, 2, 3, 4, 5), q=(1, 1, 1, 1, 1),
           mse=None, steps=(100, 100), at_event=None):
    return {"layers_at_event": {"step": 50, "mu_norm_max": at_event or {}, "q_absmax": {}} if events else None,
            "preset": preset, "ablate": ablate, "experiment": analysis.experiment_name(preset, ablate), "seed": seed,
            "status": "exploded" if events else "stable", "nonfinite_events": events,
            "first_nonfinite": {"step": 50, "layer": layer, "block": "mixing", "tensor": "q", "phase": "forward"}
            if events else None, "steps_completed": steps[0], "steps_total": steps[1], "test_pos_mse": mse,
            "layers_before_event": {"step": 40, "mu_norm_max": {str(k + 1): v for k, v in enumerate(mu)},
                                    "q_absmax": {str(k + 1): v for k, v in enumerate(q)}}}


BASE = {"constant_velocity_test_pos_mse": 0.1, "zero_displacement_test_pos_mse": 0.3, "egnn_paper_test_pos_mse": 0.0071}
R2_OK = [record(s, "r2_full", mse=0.02) for s in range(3)]


@pytest.mark.parametrize("original, passed, observed", [
    ([record(0, events=1, layer=5), record(1, events=1, layer=4), record(2)], True, "2 of 3"),
    ([record(0, events=1, layer=5), record(1, events=1, layer=3), record(2)], False, "1 of 3"),  # layer 3 is not deep
    ([record(0, events=1, layer=5), record(1, events=1, layer=5, mu=(5, 4, 3, 2, 1)), record(2)], False, "1 of 3"),
    ([record(0, events=1, layer=5), record(1, events=1, layer=5, mu=(5, 4, 3, 2, 1), q=(1, 1, 1, 1, 9)), record(2)],
     True, "2 of 3"),  # |q| growth with depth counts too
    ([record(0), record(1), record(2)], False, "0 of 3"),
    # the loss went non-finite first: located by the failing forward pass's overflowed statistics
    ([record(0, events=1, layer=5), record(1, events=1, at_event={"1": 3.0, "4": 1e30, "5": None}), record(2)],
     True, "2 of 3"),
    ([record(0, events=1, layer=5), record(1, events=1, at_event={"1": 3.0, "2": None, "5": None}), record(2)],
     False, "1 of 3"),
    ([record(0, events=1, layer=5), record(1, events=1, at_event={"1": 3.0, "5": 1e30}), record(2)], False, "1 of 3"),
])
def test_finding_1_counts_deep_explosions_preceded_by_depth_growth(original, passed, observed):
    v = rp.verdict(original + R2_OK, BASE, n_layers=5)
    assert v["criteria"][0]["passed"] is passed and v["criteria"][0]["observed"] == f"{observed} seeds"


def test_finding_2_needs_every_r2_full_seed_clean_and_complete_and_below_the_baseline():
    original = [record(s, events=1, layer=5) for s in range(3)]
    assert rp.verdict(original + R2_OK, BASE, 5)["passed"] is True
    one_event = R2_OK[:2] + [record(2, "r2_full", events=1, layer=5, mse=0.02)]
    assert rp.verdict(original + one_event, BASE, 5)["criteria"][1]["passed"] is False
    short = R2_OK[:2] + [record(2, "r2_full", mse=0.02, steps=(60, 100))]
    assert rp.verdict(original + short, BASE, 5)["criteria"][1]["passed"] is False
    worse = [record(s, "r2_full", mse=0.2) for s in range(3)]
    v = rp.verdict(original + worse, BASE, 5)
    assert v["criteria"][1]["passed"] is True and v["criteria"][2]["passed"] is False and v["passed"] is False


def test_rerun_reuses_finished_runs_and_refuses_another_configuration(reproduced):
    out, _, overrides = reproduced
    before = json.loads((out / "reproduce.json").read_text())
    again = rp.reproduce(out, quick=True, overrides=overrides, plots=False)
    assert again["reused_runs"] == 9
    assert [r["test_pos_mse"] for r in again["runs"]] == [r["test_pos_mse"] for r in before["runs"]]
    with pytest.raises(rp.ReproduceError, match="another configuration"):
        rp.reproduce(out, quick=True, overrides=[*overrides, "train.steps=9"], plots=False)


def test_reserved_override_is_one_line_of_bad_input(tmp_path, capsys):
    assert main(["reproduce", "--quick", "--out", str(tmp_path / "x"), "model=original"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'model' is set by the comparison" in err[0]
    assert not (tmp_path / "x").exists()


def test_report_lists_every_run_with_a_command_that_recomposes_its_config(reproduced, tiny_root, tmp_path, capsys):
    out, _, _ = reproduced
    md, plots = tmp_path / "runs.md", tmp_path / "plots"
    assert main(["report", str(out), str(tiny_root / "sweep"), str(tiny_root / "runs"), "--out", str(md),
                 "--plots", str(plots)]) == 0
    text = md.read_text()
    assert text.count("\n## ") == 4  # reproduction, sweep, loose runs, environment
    assert "Reproduction verdict:" in text and "Study `tiny`" in text and "| running |" in text
    dirs = {d.name: d for d in analysis.find_run_dirs([out, tiny_root / "sweep", tiny_root / "runs"])}
    commands = re.findall(r"`(painn-ablate train [^`]*)`", text)
    assert len(commands) == len(dirs) == 9 + 3 + 5
    for command in commands:
        args = command.split()[2:]
        name = re.fullmatch(r"out=runs/(.*)-rerun", args[-1]).group(1)
        saved = flatten(OmegaConf.load(dirs[name] / "config.yaml"))
        assert analysis.results_view(flatten(compose(args[:-1]))) == analysis.results_view(saved), command
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (md.parent / link).is_file()
    assert len(list(plots.glob("*.png"))) >= 3
    import torch

    assert f"| torch | {torch.__version__} |" in text


def test_report_without_anything_to_report_is_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 2
    assert "none of reproduce_out, sweeps_out exists" in capsys.readouterr().err


@pytest.mark.slow
def test_full_reproduction_completes_every_run_and_states_its_verdict(tmp_path):
    """The real thing (~15 min on 2 idle cores): `painn-ablate reproduce` on its embedded defaults."""
    out = tmp_path / "reproduce_out"
    res = subprocess.run([sys.executable, "-m", "painn_ablate.cli", "reproduce", "--out", str(out)],
                         capture_output=True, text=True, timeout=3 * 3600)
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "reproduce.json").read_text())
    assert len(result["runs"]) == 9 and result["budget"]["steps"] == rp.FULL.steps
    for r in result["runs"]:
        assert r["status"] in OUTCOMES  # stable, diverged (trains on by default) or exploded (stops there)
        assert r["steps_completed"] == r["steps_total"] if r["status"] != "exploded" else r["first_nonfinite"]
    assert [c["id"] for c in result["verdict"]["criteria"]] == [1, 2, 3]
    print(f"\n{rp.verdict_text(result)}\ntraining time {result['train_seconds'] / 60:.1f} min")
