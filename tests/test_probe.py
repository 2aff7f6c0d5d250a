"""`painn-ablate probe`: forward statistics and block gains at initialisation, paired with training."""

import numpy as np
import pandas as pd
import pytest
from support import TINY, cli

from painn_ablate.core.config import compose
from painn_ablate.training.probe import depth_table, layer_table, run_probe
from painn_ablate.training.trainer import run


@pytest.fixture
def tiny(tmp_path):
    def make(*overrides):
        return compose([*TINY, *overrides])  # the data: the session's cache (conftest)
    return make


@pytest.mark.integration
def test_probe_records_statistics_and_gains_per_seed_layer_and_block(tiny):
    result = run_probe(tiny("model=r2_full"), seeds=3, depths=[2, 3])
    s = result.stats
    assert set(s["L"]) == {2, 3} and set(s["seed"]) == {0, 1, 2} and set(s["step"]) == {0}
    gains = s[s["stat"].isin(["norm_gain", "jvp_gain", "update_gain"])]
    assert len(gains) == 3 * (2 + 3) * 2 * 3  # seeds x layers x blocks x gains
    assert np.isfinite(gains["value"]).all() and (gains["value"] > 0).all()
    table = depth_table(result)
    assert list(table["L"]) == [2, 3] and (table["nonfinite"] == 0).all() and (table["seeds"] == 3).all()
    assert set(layer_table(result).index.get_level_values("layer")) == {1, 2, 3}


@pytest.mark.integration
def test_probe_seed_is_training_seeds_first_forward_pass(tiny, tmp_path):
    """Probe seed s sees the model and batch that training seed s sees at step 0."""
    result = run_probe(tiny("model=original"), seeds=2)
    run(tiny("model=original", "seed=1", "train.steps=1", f"out={tmp_path / 'r'}"))
    trained = pd.read_parquet(tmp_path / "r" / "layer_stats.parquet")
    trained = trained[(trained.step == 0) & (trained.stat == "mu_norm_max")].set_index(["layer", "block"])["value"]
    probed = result.stats[(result.stats.seed == 1) & (result.stats.stat == "mu_norm_max")]
    probed = probed.set_index(["layer", "block"])["value"]
    pd.testing.assert_series_equal(probed.sort_index(), trained.sort_index(), check_names=False, rtol=1e-5)


@pytest.mark.integration
def test_probe_training_steps_and_the_cli(tmp_path):
    out = tmp_path / "p"
    res = cli("probe", *TINY, "model=original", "--seeds", "2", "--steps", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "nonfinite" in res.stdout and "median_mu_ratio" in res.stdout and "init_blow_up_frac" in res.stdout
    seeds = pd.read_parquet(out / "probe_seeds.parquet")
    assert set(seeds["step"]) <= {0, 1, 2} and {"blew_up", "origin_layer", "init_blow_up_frac"} <= set(seeds.columns)
    assert (seeds["init_batches"] == 25).all()  # the default
    assert set(pd.read_parquet(out / "probe.parquet").columns) == {"L", "seed", "step", "layer", "block", "stat",
                                                                   "value"}


def test_probe_judges_the_initial_network_on_the_first_batches(tiny):
    # diverge_mu = 3: the tiny original's initial ||mu|| (3-5 in layers 4-5) crosses it on some batches
    result = run_probe(tiny("model=original", "monitor.diverge_mu=3"), seeds=4, batches=4)
    seeds = result.seeds
    assert set(seeds["init_blow_up_frac"]) <= {0.0, 0.25, 0.5, 0.75, 1.0} and seeds["init_blow_up_frac"].max() > 0
    # a seed blown up on batch 0 counts batch 0 among its crossings
    assert (seeds[seeds["blew_up"]]["init_blow_up_frac"] >= 0.25).all()
    assert depth_table(result)["init_blow_up_frac"].iloc[0] == pytest.approx(seeds["init_blow_up_frac"].mean())


@pytest.mark.parametrize("args, needle", [(["--depths", "2,x"], "--depths"), (["--seeds", "0"], "--seeds"),
                                          (["--batches", "-1"], "--batches")])
def test_probe_bad_options_are_one_line(tmp_path, args, needle):
    res = cli("probe", *TINY, *args)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr
