"""The pandas loaders, derived tables, re-run commands and the analysis notebooks, on tiny real runs."""

import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient
from omegaconf import OmegaConf

from painn_ablate.analysis import loaders as analysis
from painn_ablate.analysis import stats
from painn_ablate.core import rerun
from painn_ablate.core.config import STABILIZER_KEYS, compose, flatten

NOTEBOOKS = Path(__file__).resolve().parent.parent / "analysis"


def same(a, b) -> bool:
    """Equal, or both missing (pandas turns None into NaN in numeric columns)."""
    return (pd.isna(a) and pd.isna(b)) if (pd.isna(a) or pd.isna(b)) else a == b


# ----------------------------------------------------------------------------- loaders


@pytest.mark.integration
def test_load_runs_one_row_per_run_with_config_and_summary_columns(tiny_root):
    runs = analysis.load_runs(tiny_root / "runs")
    assert len(runs) == 5 and runs["run_dir"].is_unique
    for _, row in runs.iterrows():
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        config = flatten(OmegaConf.load(Path(row["run_dir"]) / "config.yaml"))
        assert row["status"] == summary["status"] and row["steps_completed"] == summary["steps_completed"]
        assert same(row["model.stabilizers.s_msg"], config["model.stabilizers.s_msg"])  # off: None -> NaN
        assert row["train.lr"] == config["train.lr"] and row["seed"] == config["seed"]
        first = summary["first_nonfinite"] or {}
        assert same(row["first_nonfinite.step"], first.get("step"))
        assert same(row["first_nonfinite.layer"], first.get("layer"))
        assert same(row["val_pos_mse"], (summary["val"] or {}).get("pos_mse"))
        assert same(row["test_pos_mse"], (summary["test"] or {}).get("pos_mse"))
    exploded = runs[runs["experiment"] == "original"]
    assert exploded["exploded"].all() and (exploded["status"] == "exploded").all()
    assert (runs.loc[runs["experiment"] == "r2_full", "status"] == "stable").sum() == 2
    # a single run directory, and a sweep folder, load the same way
    assert analysis.load_runs(tiny_root / "runs" / "original-s0")["name"].tolist() == ["original-s0"]
    trials = analysis.load_runs(tiny_root / "sweep")
    assert sorted(trials["experiment"]) == ["original", "original + alpha", "original + clamps"]


@pytest.mark.integration
def test_a_killed_run_loads_as_running_with_its_records(tiny_root):
    runs = analysis.load_runs(tiny_root / "runs" / "killed")
    assert runs["status"].tolist() == ["running"] and runs["steps_completed"].iloc[0] >= 2
    assert pd.isna(runs["test_pos_mse"].iloc[0])
    stats = analysis.load_layer_stats(tiny_root / "runs" / "killed")
    assert len(stats) and stats["step"].max() <= 6


@pytest.mark.integration
def test_long_tables_carry_run_ids_and_hold_every_parquet_row(tiny_root):
    dirs = analysis.find_run_dirs(tiny_root / "runs")
    stats = analysis.load_layer_stats(tiny_root / "runs")
    assert len(stats) == sum(len(pd.read_parquet(d / "layer_stats.parquet")) for d in dirs)
    assert list(stats.columns[:4]) == list(analysis.ID_COLUMNS)
    assert set(stats["experiment"]) == {"original", "r2_full"}
    mu = analysis.load_layer_stats(tiny_root / "runs", stats=["mu_norm_max"], block="mixing")
    assert set(mu["stat"]) == {"mu_norm_max"} and set(mu["block"]) == {"mixing"}
    assert len(mu) == ((stats["stat"] == "mu_norm_max") & (stats["block"] == "mixing")).sum()
    metrics = analysis.load_metrics(tiny_root / "runs")
    assert len(metrics) == sum(len(pd.read_parquet(d / "metrics.parquet")) for d in dirs)


@pytest.mark.integration
def test_events_locate_the_first_nonfinite_value_of_each_exploded_run(tiny_root):
    runs = analysis.load_runs(tiny_root / "runs").set_index("run_dir")
    events = analysis.load_events(tiny_root / "runs")
    nonfinite = events[events["kind"] == "nonfinite"]
    assert set(nonfinite["run_dir"]) == set(runs.index[runs["exploded"]])
    for run_dir, g in nonfinite.groupby("run_dir"):
        assert g["step"].iloc[0] == runs.loc[run_dir, "first_nonfinite.step"]
        assert g["layer"].iloc[0] == runs.loc[run_dir, "first_nonfinite.layer"]


@pytest.mark.integration
def test_load_study_joins_trials_with_their_run_configs(tiny_root):
    trials = analysis.load_study(tiny_root / "sweep")
    assert len(trials) == 3 and set(trials["state"]) == {"COMPLETE"}
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tiny_root / 'sweep' / 'study.db'}")
    by_number = {t.number: t for t in study.trials}
    for _, row in trials.iterrows():
        attrs = by_number[row["number"]].user_attrs
        assert row["status"] == attrs["status"] and row["label"] == attrs["label"]
        assert same(row["val_pos_mse"], attrs["val_pos_mse"])
        assert same(row["first_nonfinite.step"], (attrs["first_nonfinite"] or {}).get("step"))
        config = flatten(OmegaConf.load(Path(row["run_dir"]) / "config.yaml"))
        assert same(row["model.stabilizers.C_q"], config["model.stabilizers.C_q"])
        assert row["model.stabilizers.alpha_mix"] == config["model.stabilizers.alpha_mix"]
        assert row["ablate"] == by_number[row["number"]].params["ablate"]
    alpha = trials.set_index("experiment").loc["original + alpha"]
    assert alpha["model.stabilizers.alpha_inter"] == 0.5 and pd.isna(alpha["model.stabilizers.C_q"])
    # the trials carry their stabilizer values: a reader without the run folders (another machine) has them
    bare = analysis.load_study(tiny_root / "sweep", configs=False).set_index("number")
    for _, row in trials.iterrows():
        for key in STABILIZER_KEYS:
            assert same(bare.loc[row["number"], key], row[key]), key
    assert bare.set_index("experiment").loc["original + alpha", "model.stabilizers.alpha_mix"] == 0.5
    with pytest.raises(analysis.AnalysisError, match="no study 'nope'"):
        analysis.load_study(tiny_root / "sweep", "nope")


@pytest.mark.integration
def test_wandb_rows_use_the_same_names_as_run_rows(tiny_root):
    run_dir = tiny_root / "runs" / "original-s0"
    summary = json.loads((run_dir / "summary.json").read_text())
    config = flatten(OmegaConf.load(run_dir / "config.yaml"))
    # What WandbSink leaves in a W&B run: the flat config (the API wraps values as {"value": ...}),
    # the run-summary keys it sets, val_*/test_* metrics, W&B's private keys and the media it logs.
    wandb_config = {k: {"value": v} for k, v in config.items()}
    wandb_summary = {k: summary[k] for k in ("status", "steps_completed", "first_nonfinite", "nonfinite_events",
                                             "early_warning", "best_step", "wall_seconds", "run_dir")}
    wandb_summary.update({f"val_{k}": v for k, v in (summary["val"] or {}).items()})
    wandb_summary.update({"_runtime": 3.2, "_step": 9, "mu_norm_max_heatmap": {"_type": "image-file", "path": "x.png"}})
    row = analysis.wandb_row(wandb_config, wandb_summary, name="original-s0")
    local = analysis.load_runs(run_dir).iloc[0]
    for col in ("status", "first_nonfinite.step", "first_nonfinite.layer", "first_nonfinite.tensor",
                "model.stabilizers.s_msg", "train.lr", "experiment", "exploded", "val_pos_mse"):
        assert same(row[col], local[col]), col
    assert not any(k.startswith("_") or k.startswith("mu_norm_max_heatmap") for k in row)


# ----------------------------------------------------------------------------- derived tables


@pytest.mark.integration
def test_outcome_table_counts_blow_ups_and_averages_stable_seeds(tiny_root):
    runs = analysis.load_runs(tiny_root / "runs")
    runs = runs[runs["status"] != "running"]
    table = analysis.outcome_table(runs).set_index("experiment")
    original = runs[runs["experiment"] == "original"]
    assert table.loc["original", "blew_up"] == 2 and table.loc["original", "blow_up_rate"] == 1.0
    assert (table.loc["original", "blow_up_lo"], table.loc["original", "blow_up_hi"]) == pytest.approx(
        stats.wilson(2, 2))
    # the first blow-up is the earlier of the divergence and the first NaN/Inf
    firsts = [min(s for s in (r["first_divergence.step"], r["first_nonfinite.step"]) if pd.notna(s))
              for _, r in original.iterrows()]
    assert list(original["first_blow_up.step"]) == firsts
    assert table.loc["original", "blow_up_step_median"] == np.median(firsts)
    stable = runs[runs["experiment"] == "r2_full"]["test_pos_mse"].astype(float)
    assert table.loc["r2_full", "test_pos_mse_mean"] == pytest.approx(stable.mean())
    assert table.loc["r2_full", "test_pos_mse_sd"] == pytest.approx(stable.std(ddof=1))
    assert table.loc["r2_full", "blew_up"] == 0 and table.loc["r2_full", "blow_up_hi"] == pytest.approx(
        stats.wilson(0, 2)[1])
    assert math.isnan(table.loc["original", "test_pos_mse_mean"])


@pytest.mark.parametrize("evaluator", [None, "ped_anova"])  # None: fANOVA when scikit-learn is installed
def test_importance_ranks_the_parameter_that_decides_the_target_first(evaluator):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(40):
        s_msg = None if rng.random() < 0.5 else 5.0
        rows.append({"model.stabilizers.s_msg": s_msg, "model.stabilizers.g": float(rng.uniform(0.3, 1.0)),
                     "seed": int(rng.integers(0, 3)), "exploded": s_msg is None})
    frame = pd.DataFrame(rows)
    imp = analysis.param_importances(frame, lambda r: float(r["exploded"]), evaluator=evaluator)
    assert imp.index[0] == "model.stabilizers.s_msg" and imp.iloc[0] > 0.5, imp
    assert set(imp.index) == {"model.stabilizers.s_msg", "model.stabilizers.g", "seed"}
    flat = analysis.param_importances(frame.assign(exploded=False), lambda r: float(r["exploded"]))
    assert flat.isna().all()
    with pytest.raises(analysis.AnalysisError):
        analysis.param_importances(frame.head(1), lambda r: float(r["exploded"]))


@pytest.mark.integration
def test_rerun_command_composes_to_the_saved_config(tiny_root):
    for run_dir in analysis.find_run_dirs([tiny_root / "runs", tiny_root / "sweep"]):
        overrides = rerun.rerun_overrides(run_dir)
        assert overrides is not None and overrides[0].startswith("model=")
        saved = flatten(OmegaConf.load(run_dir / "config.yaml"))
        rebuilt = flatten(compose(overrides))
        assert rerun.results_view(rebuilt) == rerun.results_view(saved)
        command = rerun.rerun_command(run_dir)
        assert command.startswith("painn-ablate train model=") and command.endswith(f"out=runs/{run_dir.name}-rerun")
    alpha = next(d for d in analysis.find_run_dirs(tiny_root / "sweep") if "alpha" in d.name)
    assert "ablate=alpha" in rerun.rerun_overrides(alpha)


# ----------------------------------------------------------------------------- notebooks


def execute(name: str) -> nbformat.NotebookNode:
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # "python3" resolves to this interpreter: jupyter_client replaces a kernelspec's "python" by sys.executable.
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return book


def outputs(book, kind: str) -> list:
    found = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            if kind == "image" and "image/png" in out.get("data", {}):
                found.append(out)
            elif kind == "text":
                found.append(out.get("text") or out.get("data", {}).get("text/plain", ""))
    return found


def test_run_level_notebooks_are_committed_executed():
    """explosion, ablation and importance are committed executed against the real records
    (scripts/execute-notebook): every code cell ran, none raised, and each shows a figure."""
    for name in ("explosion", "ablation", "importance"):
        book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") is not None for c in code), name
        assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])), name
        assert outputs(book, "image"), name


@pytest.mark.integration
@pytest.mark.parametrize("name, env, needles", [
    ("explosion", {"PAINN_ABLATE_RUNS": "runs"}, ["original runs that blew up: 2 of 2", "qmu_absmax"]),
    ("ablation", {"PAINN_ABLATE_RUNS": "sweep"}, ["3 runs;", "original + clamps", "alpha"]),
    ("importance", {"PAINN_ABLATE_STUDY": "sweep"}, ["3 trials", "model.stabilizers.C_q"]),
])
def test_notebook_executes_on_tiny_runs(tiny_root, monkeypatch, name, env, needles):
    for key, value in env.items():
        monkeypatch.setenv(key, str(tiny_root / value))
    book = execute(name)
    assert len(outputs(book, "image")) >= 1
    text = "\n".join(outputs(book, "text"))
    for needle in needles:
        assert needle in text, needle


# ----------------------------------------------------------------------------- seeds and test samples


def synthetic_errors(rng, n_seeds=10, n_samples=300, seed_sd=0.5, sample_sd=1.0):
    """errors[s, t] = 1 + seed effect + system effect + noise: the population mean is 1."""
    return (1.0 + rng.normal(0, seed_sd, (n_seeds, 1)) + rng.normal(0, sample_sd, (1, n_samples))
            + rng.normal(0, 0.1, (n_seeds, n_samples)))


def test_the_seed_and_sample_interval_covers_the_population_mean_and_counts_both_sources():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(40):
        mean, lo, hi = stats.seed_and_sample_interval(synthetic_errors(rng))
        assert lo < mean < hi
        covered += lo <= 1.0 <= hi
    assert covered >= 34  # nominal 95%: 38 of 40; the percentile bootstrap runs a little narrow at 10 seeds
    # A seed-only bootstrap of the per-seed means misses the shared test set's error, which averaging
    # over seeds does not remove: with no seed spread at all it collapses, the two-level one does not.
    x = synthetic_errors(rng, seed_sd=0.0)
    _, lo_seed, hi_seed = stats.bootstrap(x.mean(axis=1))
    _, lo, hi = stats.seed_and_sample_interval(x)
    assert hi - lo > 5 * (hi_seed - lo_seed)
    assert stats.seed_and_sample_interval(x)[0] == pytest.approx(x.mean())


def test_the_seed_and_sample_interval_refuses_a_flat_array():
    with pytest.raises(ValueError, match="seeds, samples"):
        stats.seed_and_sample_interval(np.ones(10))
