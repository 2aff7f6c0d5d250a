"""W&B logging for real, in offline mode, read back with `wandb leet inspect`."""

import pytest
from support import EXPLODING, TINY, inspect

from painn_ablate.core.config import compose
from painn_ablate.training.trainer import run


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def tiny(tmp_path, *overrides, out="run"):
    base = [o for o in TINY if not o.startswith("tracking.wandb")]
    return compose([*base, f"out={tmp_path / out}", *overrides])  # the data: the session's cache (conftest)


@pytest.mark.integration
def test_offline_run_holds_config_layer_keys_and_status(offline):
    summary = run(tiny(offline, "model=r2_full", "ablate=s_msg", "train.steps=8", "train.val_every=4",
                       "monitor.every=4", "name=r2_full-s_msg-seed0", "tracking.group=stabilizers"))
    record = inspect(offline / "run")
    assert record["name"] == "r2_full-s_msg-seed0" and record["state"] == "finished"
    assert set(record["tags"]) >= {"preset:r2_full", "ablate:s_msg", "outcome:stable"}
    config = record["config"]
    assert config["model.stabilizers.s_msg"] is None and config["model.stabilizers.C_mu"] == 20.0
    assert config["ablate"] == "s_msg"
    s = record["summary"]
    assert s["status"] == summary["status"] == "stable"
    for l in range(1, 6):
        assert f"layer{l}/mixing/mu_norm_max" in s and f"layer{l}/interaction/grad_norm" in s
    assert s["val_pos_mse"] == pytest.approx(summary["val"]["pos_mse"])
    assert s["test_pos_mse"] == pytest.approx(summary["test"]["pos_mse"])
    assert s["mu_norm_max_heatmap"]["format"] == "png"


@pytest.mark.integration
def test_offline_exploded_run_records_the_event(offline):
    summary = run(tiny(offline, *EXPLODING))
    s = inspect(offline / "run")["summary"]
    assert s["status"] == "exploded"
    assert s["first_nonfinite"]["layer"] == summary["first_nonfinite"]["layer"]
    assert s["events"]["_type"] == "table-file"
    # the phase of the first blow-up, flat, and the 0/1 outcome keys with sustained and transient
    assert s["blow_up_phase"] == summary["blow_up_phase"] in ("init", "training")
    assert (s["exploded"], s["sustained"], s["transient"], s["blew_up"]) == (1, 1, 0, 1)


@pytest.mark.integration
def test_wandb_failure_never_breaks_a_run(offline, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "no-such-mode")  # wandb.init refuses this
    summary = run(tiny(offline, "model=r2_full", "train.steps=4", "train.val_every=2"))
    assert summary["status"] == "stable" and summary["steps_completed"] == 4
    assert any("WandbSink failed" in r.message for r in caplog.records)
    assert (offline / "run" / "summary.json").exists()
