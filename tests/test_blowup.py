"""Blow-up detection (training.blowup.BlowUpDetector): its hooks on synthetic statistics, and real tiny
trainings that blow up at initialisation, in training, transiently and sustainedly."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from support import TINY, random_system

from painn_ablate.core.config import compose
from painn_ablate.core.outcome import (
    BLOW_UPS,
    OUTCOMES,
    SUSTAINED,
    Criteria,
    Phase,
    Status,
    is_blow_up,
    outcome_columns,
)
from painn_ablate.data.datasets import Batch
from painn_ablate.model.painn import PaiNN
from painn_ablate.training.blowup import BlowUpDetector
from painn_ablate.training.monitor import NonFinite
from painn_ablate.training.trainer import StepResult, run

# ----------------------------------------------------------------------------- the hooks, synthetic statistics


def _batch(seed=0) -> Batch:
    pos, vel, charge, edges = random_system(n_graphs=3, n=5, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    f = lambda t: t.float()  # noqa: E731
    return Batch(f(pos), f(vel), f(charge), edges, torch.randn(15, 3, generator=g), torch.randn(15, 3, generator=g),
                 torch.arange(3).repeat_interleave(5), 3)


def _detector(*overrides):
    cfg = compose(["model=original", "model.F=8", "model.L=2", "model.n_rbf=6", "monitor.recover_window=3",
                   "monitor.sustained_steps=6", *overrides])
    torch.manual_seed(0)
    model = PaiNN(cfg.model)
    summary = {"first_nonfinite": None, "nonfinite_events": 0, "first_divergence": None, "early_warning": None}
    events = []
    det = BlowUpDetector(cfg, summary, events.append)
    det.on_start(model, val_baseline=0.3, val_initial=0.2)
    return det, summary, events


def _res(loss=1.0, q=1.0, origin=None) -> StepResult:
    return StepResult(loss, loss, 0.0, 1.0, origin, [], {(1, "mixing"): (q, 1.0), (2, "mixing"): (q, 1.0)})


ROWS = [(1, "mixing", "mu_norm_max", 2.0), (1, "mixing", "q_absmax", 3.0),
        (2, "mixing", "mu_norm_max", 30.0), (2, "mixing", "q_absmax", 2e4)]


def _step(det, step, res, batch, rows=()):
    out = det.on_step(step, batch, res, list(rows), lambda: list(ROWS))
    det.on_step_end(step)
    return out


def test_a_spike_that_recovers_within_the_window_is_transient_and_training_phase():
    det, summary, events = _detector()
    b = _batch()
    _step(det, 0, _res(1.0), b)
    assert det.status() == Status.STABLE and det.reference_loss is not None
    rows = _step(det, 1, _res(500.0), b)  # loss > 100 x reference: a spike, located on the replayed pass
    assert rows == ROWS and summary["first_divergence"]["criterion"] == "loss"
    assert summary["first_divergence"]["layer"] == 2 and summary["first_divergence"]["phase"] == Phase.TRAINING
    for step in (2, 3):
        _step(det, step, _res(1.0), b)
        assert det.in_episode  # quiet, but not for a whole window yet
    _step(det, 4, _res(1.0), b)  # three quiet steps: recovered
    assert not det.in_episode and det.status() == Status.TRANSIENT
    div = det.divergence()
    assert (div["spikes"], div["episodes"], div["steps_to_recover"], div["sustained"]) == (1, 1, [1], False)
    assert [e["kind"] for e in events] == ["divergence", "recovered"]
    assert events[1]["step"] == 2 and events[1]["value"] == 1.0
    # the initial network's profile beside the trained one's
    log = div["log"][0]
    assert log["stats"]["q_absmax"][2] == 2e4 and set(log["init_stats"]["mu_norm_max"]) == {1, 2}


def test_spikes_within_the_window_are_one_episode_and_one_that_lasts_is_sustained_and_stops():
    det, summary, events = _detector("monitor.on_diverged=stop")
    b = _batch()
    _step(det, 0, _res(1.0), b)
    _step(det, 1, _res(1.0, q=2e4), b)  # q criterion (confirmed on the replayed norms)
    _step(det, 2, _res(1.0), b)
    _step(det, 3, _res(1.0, q=2e4), b)  # a second spike, 1 quiet step later: the same episode
    assert det.divergence()["spike_steps"] == [1, 3] and det.divergence()["episodes"] == 1
    for step in range(4, 7):
        _step(det, step, _res(1.0, q=2e4), b)
        assert not det.should_stop
    _step(det, 7, _res(1.0, q=2e4), b)  # still firing 6 steps after the episode began: sustained
    assert det.should_stop and det.status() == Status.DIVERGED and det.divergence()["sustained"]
    assert [e["kind"] for e in events] == ["divergence", "divergence"]


def test_an_episode_open_at_the_end_is_diverged():
    det, _, _ = _detector()
    b = _batch()
    _step(det, 0, _res(1.0), b)
    _step(det, 1, _res(500.0), b)
    _step(det, 2, _res(1.0), b)
    assert det.status() == Status.DIVERGED and det.divergence()["recovered"] is False


def test_phase_is_init_when_the_initial_network_crosses_a_criterion_on_the_same_batch():
    # diverge_mu = 1e-3: the initial network's real pass on the batch crosses it
    det, summary, _ = _detector("monitor.diverge_mu=1e-3")
    b = _batch()
    _step(det, 0, _res(1.0), b, rows=[(1, "mixing", "q_absmax", 1.0)])
    _step(det, 1, _res(500.0), b)
    first = summary["first_divergence"]
    assert first["phase"] == Phase.INIT == "init" and det.episodes[0].init_criterion == "mu"


def test_a_component_over_the_bound_with_its_norm_under_it_is_no_spike():
    det, summary, _ = _detector()
    b = _batch()
    _step(det, 0, _res(1.0), b)
    res = StepResult(1.0, 1.0, 0.0, 1.0, None, [], {(1, "mixing"): (1.0, 900.0)})  # |component| > 1000 / sqrt(3)
    det.on_step(1, b, res, [], lambda: [(1, "mixing", "mu_norm_max", 950.0)])
    det.on_step_end(1)
    assert summary["first_divergence"] is None and det.status() == Status.STABLE


def test_the_val_criterion_is_relative_to_the_larger_of_baseline_and_initial_val_mse():
    det, summary, _ = _detector()
    b = _batch()
    _step(det, 0, _res(1.0), b)
    assert det.val_reference == 0.3  # max(0.3 baseline, 0.2 initial)
    assert not det.on_validation(0, 2.9, b, lambda: list(ROWS))  # under 10 x 0.3
    assert det.on_validation(0, 3.1, b, lambda: list(ROWS))
    assert summary["first_divergence"]["criterion"] == "val"
    det2, _, _ = _detector()
    det2.val_initial = 5.0  # a network whose val MSE starts far above the zero-displacement baseline
    assert not det2.on_validation(0, 40.0, b, lambda: list(ROWS)) and det2.on_validation(0, 60.0, b, lambda: ROWS)


def test_a_null_criterion_is_off():
    det, summary, _ = _detector("monitor.diverge_loss_factor=null", "monitor.diverge_q=null")
    b = _batch()
    _step(det, 0, _res(1.0), b)
    _step(det, 1, _res(1e9, q=1e9), b)
    assert summary["first_divergence"] is None
    crit = Criteria.from_config(compose(["monitor.diverge_mu=null"]).monitor)
    assert crit.mu is None and crit.bound("mu_norm_max") == math.inf and crit.bound("q_absmax") == 1e4


def test_a_non_finite_step_records_its_phase_and_makes_the_run_exploded():
    det, summary, events = _detector()
    b = _batch()
    origin = NonFinite(step=0, phase="forward", tensor="q", layer=2, block="mixing")
    _step(det, 0, _res(math.nan, origin=origin), b, rows=ROWS)
    assert summary["first_nonfinite"]["blow_up_phase"] == Phase.TRAINING and det.status() == Status.EXPLODED
    assert events[0]["kind"] == "nonfinite" and events[0]["blow_up_phase"] == "training"


def test_the_vocabulary_groups_transient_as_a_blow_up_but_not_sustained():
    assert Status.TRANSIENT in OUTCOMES and Status.TRANSIENT in BLOW_UPS and Status.TRANSIENT not in SUSTAINED
    assert is_blow_up("transient") and outcome_columns("transient") == {
        "exploded": False, "diverged": False, "transient": True, "blew_up": True, "sustained": False}
    assert outcome_columns(Status.DIVERGED)["sustained"] and not outcome_columns(Status.STABLE)["blew_up"]


# ----------------------------------------------------------------------------- real tiny training


@pytest.fixture
def tiny(tmp_path):
    def make(*overrides, out="run"):
        return compose([*TINY, f"out={tmp_path / out}", *overrides])  # the data: the session's cache (conftest)
    return make


# original at L = 5, seed 3: its first batch of the default training split (3000 systems; the val and
# test splits are drawn apart, so small ones keep it) already blows the initial network up at step 0
INIT_PHASE = ["model=original", "model.L=5", "seed=3", "data.n_val=20", "data.n_test=20", "train.steps=1",
              "tracking.wandb=false", "tracking.progress=false"]
# original, F = 16, lr 0.02 on the tiny set: fine at initialisation, blows up after some training (seed 1
# at step 58 on one machine, 17 on another: the trajectory is chaotic, so the tests look over a few seeds
# for the behaviour they test, and fail when none shows it)
TRAINING_PHASE = ["model=original", "model.F=16", "train.lr=0.02", "train.steps=80", "train.val_every=10"]
# the same with gradient clipping at lr 0.03: spikes that are each over in a few steps (seed 2: at 58, 65, 92)
TRANSIENT = ["model=original", "ablate=grad_clip", "model.F=16", "train.lr=0.03", "train.steps=100",
             "train.val_every=10", "monitor.recover_window=5"]
SEEDS = (1, 2, 3, 4, 5, 6)


def first_showing(tiny, overrides, wanted):
    """(summary, out folder name) of the first seed of SEEDS whose run shows `wanted(summary)`."""
    seen = []
    for seed in SEEDS:
        summary = run(tiny(*overrides, f"seed={seed}", out=f"run{seed}"))
        if wanted(summary):
            return summary, f"run{seed}"
        seen.append((seed, summary["status"], (summary.get("first_blow_up") or {}).get("step")))
    pytest.fail(f"no seed of {SEEDS} showed it: (seed, status, first blow-up step) {seen}")
DIVERGING = ["model=original", "train.lr=0.05", "train.steps=20", "seed=6"]  # |q| ~ 1e6 from step 1 on


@pytest.mark.integration
def test_original_L5_seed3_blows_up_at_initialisation(tmp_path):
    summary = run(compose([*INIT_PHASE, f"out={tmp_path / 'run'}"]))  # the data: the session's cache
    assert summary["status"] == Status.DIVERGED and summary["blow_up_phase"] == Phase.INIT
    first = summary["first_blow_up"]
    assert first["step"] == 0 and first["phase"] == "init" and first["init_criterion"] is not None
    assert first["init_stats"]["mu_norm_max"] == first["stats"]["mu_norm_max"]  # step 0: the same weights
    events = pd.read_parquet(tmp_path / "run" / "events.parquet")
    assert events[events["kind"] == "divergence"]["blow_up_phase"].tolist() == ["init"]


@pytest.mark.integration
def test_a_late_blow_up_of_a_network_fine_at_initialisation_is_training_phase(tiny, tmp_path):
    summary, _ = first_showing(tiny, TRAINING_PHASE, lambda s: s["blow_up_phase"] == Phase.TRAINING
                               and s["first_blow_up"]["step"] >= 10)
    first = summary["first_blow_up"]
    assert first["init_criterion"] is None
    # the initial network's per-layer profile on that batch is far below the trained one's
    init, trained = first["init_stats"]["mu_norm_max"], first["stats"]["mu_norm_max"]
    assert max(float(v) for v in init.values()) < 1e3 and set(init) == set(trained)
    attrs = __import__("painn_ablate.sweep.spec", fromlist=["result_attrs"]).result_attrs(summary)
    assert attrs["blow_up_phase"] == "training"


@pytest.mark.integration
def test_a_run_that_spikes_and_recovers_is_transient_with_its_test_mse(tiny, tmp_path):
    summary, out = first_showing(tiny, TRANSIENT, lambda s: s["status"] == Status.TRANSIENT
                                 and s["blow_up_phase"] == Phase.TRAINING)
    div = summary["divergence"]
    assert summary["steps_completed"] == 100
    assert div["spikes"] >= 1 and div["episodes"] >= 1 and div["recovered"] and not div["sustained"]
    assert all(s is not None and s < 5 for s in div["steps_to_recover"])
    assert math.isfinite(summary["test"]["pos_mse"]) and summary["test"]["pos_mse"] < 1.0
    events = pd.read_parquet(tmp_path / out / "events.parquet")
    recovered = events[events["kind"] == "recovered"]
    assert len(recovered) == div["episodes"] and recovered["step"].tolist() == [
        e["recovered_at"] for e in div["log"]]
    # the trial table: a blow_up_phase column; an old record without a phase reads NA
    from painn_ablate.analysis.tables import trial_table

    old = run(tiny(*DIVERGING, "train.steps=3", out="old"))
    path = tmp_path / "old" / "summary.json"
    record = json.loads(path.read_text())
    for key in ("blow_up_phase",):
        record.pop(key)
    record["first_blow_up"].pop("phase")
    record["first_divergence"].pop("phase")
    path.write_text(json.dumps(record))
    (tmp_path / "runs").mkdir()
    for name in (out, "old"):
        (tmp_path / name).rename(tmp_path / "runs" / name)
    table = trial_table(tmp_path / "runs").set_index("label")
    assert table.loc[out, "blow_up_phase"] == "training" and table.loc[out, "transient"]
    assert pd.isna(table.loc["old", "blow_up_phase"]) and old["status"] == Status.DIVERGED
    # every row carries what it was made from, and its spikes and episodes' phases
    for label in (out, "old"):
        row = table.loc[label]
        assert row["data_fingerprint"] == summary["data_fingerprint"] and row["code_commit"] is not None
        assert row["started_at"] and not pd.isna(row["initial_val_pos_mse"])
    assert list(table.loc[out, "spike_steps"]) == div["spike_steps"]
    assert list(table.loc[out, "episode_phases"]) == div["phases"]
    assert bool(table.loc[out, "training_blow_up"]) == summary["training_blow_up"] == ("training" in div["phases"])


@pytest.mark.integration
def test_a_sustained_divergence_is_diverged_and_on_diverged_stop_waits_for_it(tiny):
    summary = run(tiny(*DIVERGING, "monitor.sustained_steps=5", "monitor.on_diverged=stop"))
    first = summary["first_divergence"]["step"]
    assert summary["status"] == Status.DIVERGED and summary["divergence"]["sustained"]
    assert summary["steps_completed"] == first + 5 + 1  # not at the first spike: 5 steps later
    assert summary["stopped_early"]["reason"] == "diverged"


@pytest.mark.integration
def test_val_criterion_on_a_data_set_with_a_tiny_baseline(tiny, tmp_path):
    from painn_ablate.data import datasets as data

    rng = np.random.default_rng(0)
    for name, n in (("train", 40), ("val", 20), ("test", 20)):
        pos = rng.uniform(-2, 2, (n, 5, 3))
        vel = rng.standard_normal((n, 5, 3)) * 0.1
        step = 1e-3 * rng.standard_normal((n, 5, 3))  # zero-displacement MSE ~ 1e-6
        data.write_split(tmp_path / "byo" / f"{name}.npz", {"pos": pos, "vel": vel, "charge": np.ones((n, 5)),
                                                            "pos_next": pos + step, "vel_next": vel})
    summary = run(tiny("model=r2_full", "train.steps=3", "train.val_every=1", f"data.dir={tmp_path / 'byo'}"))
    div = summary["divergence"]
    assert div["val_baseline"] < 1e-5 and div["val_initial"] > 10 * div["val_baseline"]
    assert summary["status"] == Status.STABLE and summary["first_divergence"] is None  # it barely moved


@pytest.mark.integration
def test_every_criterion_null_sees_no_finite_blow_up(tiny):
    off = [f"monitor.diverge_{k}=null" for k in ("loss_factor", "val_factor", "mu", "q", "mu_ratio")]
    summary = run(tiny(*DIVERGING, "train.steps=5", *off))
    assert summary["status"] == Status.STABLE and summary["first_divergence"] is None
    only_mu = run(tiny(*DIVERGING, "train.steps=5", *off[:2], *off[3:], out="mu"))
    assert only_mu["first_divergence"]["criterion"] == "mu"
