"""The tables the experiment figures are drawn from: the per-depth phase table on a hand-made frame; the
per-step curves table exported from a real tiny sweep."""

import math

import numpy as np
import pandas as pd
import pytest
from support import TINY, cli, write_sweep

from painn_ablate.analysis import loaders
from painn_ablate.analysis import tables as ex
from painn_ablate.analysis.stats import wilson


def trials_of(preset, blew, L=5, lr=1e-3, phases=None, before_step=0, ablate="none", **extra):
    """Trial rows of one cell: blew[s] says whether seed s blew up (at step 1, phase phases[s]), with a
    per-layer profile: after mixing at layer l, max ||mu|| = (l + s) before the blow-up and 10 (l + s) at
    it (max |q| = twice that); a stable run's last snapshot is at step 999."""
    rows = []
    for s, b in enumerate(blew):
        row = {"study": "s", "preset": preset, "ablate": ablate, "L": L, "lr": lr, "seed": s, "blew_up": b,
               "diverged": b, "exploded": False, "status": "diverged" if b else "stable",
               "blowup_step": 1 if b else None, "origin_layer": L if b else None, "origin_block": "mixing" if b else None,
               "test_pos_mse": None if b else 0.01, "blow_up_phase": (phases[s] if phases else None) if b else None,
               "before_step": before_step if b else None, "at_step": 1 if b else 999, **extra}
        for layer in range(1, L + 1):
            for stat, scale in (("mu_norm_max", 1.0), ("q_absmax", 2.0)):
                row[f"before_{stat}_L{layer}"] = scale * (layer + s) if b else math.nan
                row[f"at_{stat}_L{layer}"] = scale * 10 * (layer + s)
        rows.append(row)
    return rows


def phase_trials() -> pd.DataFrame:
    """L = 3: 10 runs over two learning rates, 2 first blow-ups at initialisation, 3 in training, 1 with no
    phase (an old record), 4 stable; L = 5: 5 runs, all at initialisation. Rows of another variant and of
    another setting must not count."""
    rows = (trials_of("original", [True] * 6 + [False] * 2, L=3, lr=1e-3,
                      phases=["init", "init", "training", "training", "training", None])
            + trials_of("original", [False] * 2, L=3, lr=3e-3)
            + trials_of("original", [True] * 5, L=5, phases=["init"] * 5)
            + trials_of("original", [True] * 3, L=3, ablate="C_mu", phases=["training"] * 3)
            + trials_of("original", [True] * 3, L=3, phases=["training"] * 3, loss="pos"))
    return pd.DataFrame(rows).astype({"blow_up_phase": "string"})


def test_phase_depth_table_counts_each_phase_with_its_wilson_interval():
    table = ex.phase_depth_table(phase_trials()).set_index("L")
    assert list(table.index) == [3, 5]
    three, five = table.loc[3], table.loc[5]
    assert (three["n"], three["blew_up"], three["k_init"], three["k_training"], three["k_unknown"]) == (10, 6, 2, 3, 1)
    assert three["lrs"] == "0.001, 0.003"
    assert three["rate_init"] == pytest.approx(0.2) and three["rate_training"] == pytest.approx(0.3)
    assert (three["init_lo"], three["init_hi"]) == pytest.approx(wilson(2, 10))
    assert (three["training_lo"], three["training_hi"]) == pytest.approx(wilson(3, 10))
    assert (five["n"], five["k_init"], five["k_training"]) == (5, 5, 0)
    assert (five["training_lo"], five["training_hi"]) == pytest.approx(wilson(0, 5))
    other = ex.phase_depth_table(phase_trials(), ablate="C_mu").set_index("L")
    assert other.loc[3, "k_training"] == 3 and other.loc[3, "n"] == 3


@pytest.mark.integration
def test_export_curves_writes_the_loss_and_mixing_mu_of_every_step(tmp_path):
    sweep = write_sweep(tmp_path, {"model": {"values": ["original", "r2_full"]}, "seed": {"value": 0},
                                   "train.lr": {"value": 0.001}, "train.steps": {"value": 4},
                                   "monitor.every": {"value": 1}, "monitor.on_diverged": {"value": "continue"}},
                        name="tiny_first")
    res = cli("sweep", sweep, *TINY, "--out", tmp_path / "sweep")
    assert res.returncode == 0, res.stderr
    assert cli("export", tmp_path / "sweep", "--out", tmp_path / "plain").returncode == 0
    assert not list((tmp_path / "plain").glob(f"*{ex.CURVES}"))  # only when asked
    res = cli("export", tmp_path / "sweep", "--out", tmp_path / "results", "--curves")
    assert res.returncode == 0, res.stderr
    path = tmp_path / "results" / f"tiny_first{ex.CURVES}"
    assert str(path) in res.stdout and path.stat().st_size < 200_000
    curves = pd.read_parquet(path)
    trials, _, _ = ex.load_results(tmp_path / "results")
    assert len(trials) == 2  # the curves table is not read as trials
    assert list(curves.columns) == ["study", "number", "preset", "ablate", "L", "lr", "seed", "step", "loss",
                                    *(f"mu_norm_max_L{layer}" for layer in range(1, 6))]
    for _, run in loaders.load_runs(tmp_path / "sweep").iterrows():
        mine = curves[curves["preset"] == run["preset"]].set_index("step")
        metrics = pd.read_parquet(f"{run['run_dir']}/metrics.parquet").set_index("step")
        assert len(mine) == run["steps_completed"] == len(metrics)
        assert np.array_equal(mine["loss"].to_numpy(), metrics.loc[mine.index, "loss"].to_numpy(), equal_nan=True)
        stats = pd.read_parquet(f"{run['run_dir']}/layer_stats.parquet")
        mu = stats[(stats["block"] == "mixing") & (stats["stat"] == "mu_norm_max")]
        for _, s in mu.iterrows():
            got = mine.loc[s["step"], f"mu_norm_max_L{s['layer']}"]
            assert got == s["value"] or (np.isnan(got) and np.isnan(s["value"]))
        assert mine["mu_norm_max_L5"].notna().sum() >= 1

