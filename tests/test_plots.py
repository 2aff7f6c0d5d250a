"""The experiment figures and the tables they are drawn from: each figure drawn from a small frame and
saved, and what it shows read back from its artists; the per-depth phase table on a hand-made frame; the
per-step curves table exported from a real tiny sweep."""

import math

import numpy as np
import pandas as pd
import pytest
from support import TINY, cli, write_sweep

from painn_ablate.analysis import loaders
from painn_ablate.analysis import tables as ex
from painn_ablate.analysis.stats import wilson
from painn_ablate.reporting import plots


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


def texts(ax) -> dict:
    """{(x, y): text} of an axes' texts."""
    return {tuple(np.round(t.get_position(), 6)): t.get_text() for t in ax.texts}


def test_map_shows_a_cell_not_run_unlike_a_cell_run_without_blow_ups(tmp_path):
    trials = pd.DataFrame(trials_of("original", [False] * 10, L=2) + trials_of("original", [True] * 10, L=5)
                          + trials_of("original", [True, False, False, False], L=5, lr=3e-3))  # 4 of 10 seeds
    fig = plots.plot_map(ex.cell_table(trials))
    ax = fig.axes[0]
    shown = texts(ax)  # cell (column j = lr 1e-3, 3e-3; row i = L 2, 5) at (j, i)
    assert shown[(0, 0)].startswith("0/10\n") and shown[(0, 1)].startswith("10/10\n")
    assert shown[(1, 0)] == plots.NOT_RUN  # L = 2 at lr 3e-3: no trials
    assert shown[(1, 1)].startswith("1/4 of 10\n")  # fewer seeds than the other cells
    hatched = {p.get_gid(): (p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches if p.get_hatch()}
    assert hatched == {"not_run": (1, 0), "partial": (1, 1)}  # the 0/10 cell has no hatch
    image = ax.images[0]
    data = image.get_array()
    assert not data.mask[0, 0] and data[0, 0] == 0 and data.mask[0, 1]  # 0/10 is a rate; not run is masked
    assert tuple(image.cmap(image.norm(data[0, 0]))) == (1.0, 1.0, 1.0, 1.0)  # 0/n on white
    assert tuple(image.cmap.get_bad()) != (1.0, 1.0, 1.0, 1.0)  # not run: grey
    assert plots.save_figure(fig, tmp_path / "map.png").stat().st_size > 0


def test_profiles_label_the_step_0_pass_and_draw_r2_full_with_its_spread(tmp_path):
    trials = pd.DataFrame(trials_of("original", [True] * 4 + [False], L=3)
                          + trials_of("r2_full", [False] * 5, L=3)
                          + trials_of("r2_full", [False] * 2, L=3, loss="pos"))  # another setting: left out
    fig = plots.plot_profiles(trials, L=3)
    ax = fig.axes[0]  # max ||mu||
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert "original, blew up: step-0 forward pass (before any update), n=4" in lines
    full = lines["r2_full, stable: last snapshot (step 999), n=5"]
    seeds = np.arange(5)
    at = np.array([[10 * (layer + s) for layer in (1, 2, 3)] for s in seeds], dtype=float)
    assert np.allclose(full.get_ydata(), np.median(at, axis=0))
    band = ax.collections[[line.get_label() for line in ax.get_lines()].index(full.get_label())]
    ys = band.get_paths()[0].vertices[:, 1]
    assert np.isclose(ys.min(), np.quantile(at[:, 0], 0.25)) and np.isclose(ys.max(), np.quantile(at[:, 2], 0.75))
    assert len(ax.collections) == len(ax.get_lines())  # every curve has its band
    plots.save_figure(fig, tmp_path / "profiles.png")
    # a snapshot later than step 0 is named as such
    later = pd.DataFrame(trials_of("original", [True] * 3, L=3, before_step=10) + trials_of("r2_full", [False], L=3))
    labels = [line.get_label() for line in plots.plot_profiles(later, L=3).axes[0].get_lines()]
    assert "original, blew up: last snapshot before it (step 10), n=3" in labels
    assert not any("step-0" in label for label in labels)


def curves_frame() -> pd.DataFrame:
    """Two presets x two seeds x 6 steps at L = 2; the original's seed 1 goes non-finite at step 3 and ends."""
    rows = []
    for preset in ("original", "r2_full"):
        for seed in (0, 1):
            for step in range(6):
                ends = preset == "original" and seed == 1
                if ends and step > 3:
                    break
                bad = ends and step == 3
                rows.append({"study": "s", "number": 0, "preset": preset, "ablate": "none", "L": 2, "lr": 1e-3,
                             "seed": seed, "step": step, "loss": math.inf if bad else 1.0 / (1 + step),
                             "mu_norm_max_L1": 2.0 + seed, "mu_norm_max_L2": math.nan if bad else 3.0 * (1 + step)})
    return pd.DataFrame(rows)


def test_first_steps_draws_loss_and_each_layer_per_seed_and_marks_where_a_run_ended(tmp_path):
    fig = plots.plot_first_steps(curves_frame(), steps=5, mu_bound=1000.0)
    axes = np.array(fig.axes[:6]).reshape(3, 2)  # rows: loss, layer 1, layer 2; columns: original, r2_full
    assert [axes[0, c].get_title() for c in range(2)] == ["original (2 seeds)", "r2_full (2 seeds)"]
    assert axes[2, 0].get_ylabel() == "max ||mu||, layer 2"
    seed_lines = [line for line in axes[2, 0].get_lines() if line.get_linestyle() == "-"]
    assert len(seed_lines) == 2 and list(seed_lines[0].get_xdata()) == [0, 1, 2, 3, 4]  # steps < 5 only
    assert np.allclose(seed_lines[0].get_ydata(), [3, 6, 9, 12, 15])
    ends = [line for line in axes[2, 0].get_lines() if line.get_marker() == "x"]
    assert len(ends) == 1 and list(ends[0].get_xdata()) == [3] and list(ends[0].get_ydata()) == [9.0]
    assert not any(line.get_marker() == "x" for line in axes[2, 1].get_lines())  # r2_full never ended
    bounds = [line for line in axes[1, 1].get_lines() if line.get_linestyle() == "--"]
    assert len(bounds) == 1 and bounds[0].get_ydata()[0] == 1000.0
    plots.save_figure(fig, tmp_path / "first_steps.png")


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


def test_phase_by_depth_draws_both_rates_with_intervals_and_hollows_a_depth_with_unknown_phases(tmp_path):
    table = ex.phase_depth_table(phase_trials())
    fig = plots.plot_phase_by_depth(table)
    ax = fig.axes[0]
    points = {}  # (label or hollow, x) -> y of each error bar's marker
    for container in ax.containers:
        line = container.lines[0]
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            points[(container.get_label(), line.get_markerfacecolor() == "white", round(float(x)))] = float(y)
    training = "in training (only the trained weights cross a criterion)"
    init = "at initialisation (the initial weights cross one on the same batch)"
    assert points[(init, False, 5)] == pytest.approx(1.0) and points[(training, False, 5)] == 0.0
    hollow = {k: v for k, v in points.items() if k[1]}  # L = 3 has a blow-up without a phase: lower bounds
    assert sorted(hollow.values()) == pytest.approx([0.2, 0.3]) and {k[2] for k in hollow} == {3}
    assert any("phase not recorded" in c.get_label() for c in ax.containers)
    caps = [c for c in ax.containers if c.get_label() == init][0].lines[1]  # the interval's ends at L = 5
    assert sorted(float(y) for cap in caps for y in cap.get_ydata()) == pytest.approx(sorted(wilson(5, 5)))
    assert {t.get_text() for t in ax.texts} >= {"2/10", "3/10", "5/5", "0/5"}
    plots.save_figure(fig, tmp_path / "phase_by_depth.png")


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
    plots.save_figure(plots.plot_first_steps(curves), tmp_path / "first_steps.png")
    # --test-errors: each trial's pos MSE per test system, whose mean is the trial's test pos MSE
    res = cli("export", tmp_path / "sweep", "--out", tmp_path / "per_system", "--test-errors")
    assert res.returncode == 0, res.stderr
    errors = pd.read_parquet(tmp_path / "per_system" / f"tiny_first{ex.TEST_ERRORS}")
    trials, _, _ = ex.load_results(tmp_path / "per_system")
    assert len(trials) == 2  # not read as trials
    for _, trial in trials.iterrows():
        mine = errors[errors["number"] == trial["number"]]
        assert list(mine["system"]) == list(range(len(mine))) and len(mine) > 1
        assert float(mine["pos_mse"].mean()) == pytest.approx(trial["test_pos_mse"], rel=1e-5)
