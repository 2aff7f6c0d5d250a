"""`painn-ablate dashboard` and optuna-dashboard on a real sweep whose trials logged offline W&B runs."""

import json
import os
import subprocess
import sys
import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from support import TINY, cli

from painn_ablate.cli import main
from painn_ablate.reporting import dashboard as db

WANDB = os.path.join(os.path.dirname(sys.executable), "wandb")  # the CLI of the wandb in this environment


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """original (blows up within a few steps at this lr, after an early warning) and r2_full, 2 seeds each,
    every trial logging an offline W&B run."""
    root = tmp_path_factory.mktemp("dash")
    (root / "dash.yaml").write_text(
        "name: dash\nproject: painn-ablate-test\nmethod: grid\nmetric: {name: val_pos_mse, goal: minimize}\n"
        "parameters:\n  model: {values: [original, r2_full]}\n  seed: {values: [0, 1]}\n"
        "  train.lr: {value: 0.05}\n  monitor.on_diverged: {value: stop}\n  tracking.wandb: {value: true}\n")
    overrides = [o for o in TINY if not o.startswith("tracking.wandb")]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        res = cli("sweep", root / "dash.yaml", *overrides, "train.steps=8", "train.val_every=4", "monitor.every=1",
                  "monitor.warn_ratio=1.01", "monitor.warn_growth=1.01", "monitor.warn_window=2",
                  "--out", root / "sweep")
    assert res.returncode == 0, res.stderr
    return root / "sweep"


def logged(sweep) -> tuple[set, set]:
    """Every summary (and so every history) key and every config key the trials' W&B runs logged,
    read back with `wandb leet inspect --summary --json`."""
    metrics, config = set(), set()
    runs = sorted(sweep.glob("trials/*/wandb/offline-run-*"))
    assert len(runs) == 4
    for run in runs:
        res = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(run)], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        record = json.loads(res.stdout)
        metrics |= set(record["summary"])
        config |= set(record["config"])
    return metrics, config


@pytest.mark.integration
def test_every_key_a_panel_plots_is_a_key_the_runs_logged(sweep):
    info = db.sweep_info(str(sweep))
    assert (info.study, info.project, info.metric, info.swept, info.n_layers) == (
        "dash", "painn-ablate-test", "val_pos_mse", ["model", "seed"], 5)
    keys = db.plotted_keys(db.build(info, entity="someone"))
    metrics, config = logged(sweep)
    assert keys["metrics"] - metrics == set()
    assert keys["config"] - config == {"model"}  # the sweep's `model=<preset>` is logged as model.preset
    for must in ("blew_up", "first_blow_up_step", "first_blow_up_layer", "early_warning_lead",
                 "layer5/mixing/mu_norm_max", "layer1/mixing/qmu_absmax", "test_pos_mse"):
        assert must in keys["metrics"], must


@pytest.mark.integration
def test_offline_dashboard_writes_the_workspace_spec(sweep, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["dashboard", str(sweep), "--experiment", "original"]) == 0
    assert "dashboard.json" in capsys.readouterr().out
    spec = json.loads((sweep / db.SPEC_FILE).read_text())
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == ["Outcomes per experiment", "Accuracy per experiment",
                                             "Per-layer state after mixing", "First blow-up", "Sweep"]
    runset = spec["spec"]["section"]["runSets"][0]
    # W&B stores the runs' flat dotted config keys as {"model.preset": {"value": ...}}
    assert [g["name"] for g in runset["grouping"]] == ["model.preset.value", "ablate.value"]
    filters = {f["key"]["name"]: f["value"] for f in runset["filters"]["filters"]}
    assert filters == {"tracking.group.value": "dash", "model.preset.value": "original", "ablate.value": "none"}
    columns = [c["accessor"] for p in sections[4]["panels"] for c in p["config"].get("columns", [])]
    assert columns == ["config:model.value", "config:seed.value", "summary:val_pos_mse"]


def test_dashboard_of_what_is_no_sweep_is_one_line_of_bad_input(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing" in err[0]


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.integration
def test_optuna_dashboard_serves_the_study_and_the_trials_outcomes(sweep):
    """The README's `optuna-dashboard sqlite:///...` on a real study: its WSGI app over HTTP."""
    from optuna_dashboard import wsgi

    server = make_server("127.0.0.1", 0, wsgi(f"sqlite:///{sweep / 'study.db'}"), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        studies = json.loads(urllib.request.urlopen(f"{base}/api/studies", timeout=30).read())["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash"]
        study = json.loads(urllib.request.urlopen(f"{base}/api/studies/{studies[0]['study_id']}",
                                                  timeout=60).read())
        trials = study["trials"]
        assert len(trials) == 4
        # the dashboard sends a string attribute as it is and any other as its JSON text
        attrs = [{a["key"]: _value(a["value"]) for a in t["user_attrs"]} for t in trials]
        assert {a["status"] for a in attrs} <= {"stable", "diverged", "exploded"}
        blown = [a for a in attrs if a["status"] != "stable"]
        assert blown and all(isinstance((a["first_divergence"] or a["first_nonfinite"])["layer"], int) for a in blown)
    finally:
        server.shutdown()
