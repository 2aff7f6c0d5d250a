"""`painn-ablate sweep --engine wandb` with real wandb in offline mode (no mocks).

W&B's open-source sweep engine runs a grid once per point and a bayes sweep for a fixed count;
each trial's offline W&B run, read back with `wandb leet inspect`, holds the config, the
per-layer keys and the status; a re-run resumes. The online path needs a W&B server: what is
tested of it is its trial function, in the environment `wandb.agent` gives it, and the file's
`command` as the agent renders it.
"""

import dataclasses
import json
import math
from pathlib import Path

import pytest
from support import cli, inspect, shipped_sweep, write_sweep

from painn_ablate.cli import build_parser, main
from painn_ablate.core.config import compose, flatten
from painn_ablate.sweep import spec as sf
from painn_ablate.sweep import wandb_engine as ws

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "sweeps").glob("*.yaml"))
# A few seconds per trial; W&B stays on (the engine logs every trial).
TINY = ["model.F=8", "model.L=2", "model.n_rbf=4", "train.batch_size=10", "data.n_train=20", "data.n_val=10",
        "data.n_test=10", "train.steps=3", "train.val_every=3", "train.checkpoint=false", "tracking.progress=false"]
# Five layers, where the original PaiNN at lr 0.05 blows up in a few steps and R2_full does not
# (the settings of test_train.EXPLODING).
FIVE_LAYERS = ["model.F=16", "model.L=5", "model.n_rbf=8", "data.n_train=40", "data.n_val=20", "data.n_test=20",
               "train.steps=4", "train.val_every=2"]


@pytest.fixture
def tiny(monkeypatch) -> list[str]:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return list(TINY)  # the data: the session's cache (conftest)


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ws.LEDGER).read_text().splitlines()]


@pytest.mark.integration
def test_grid_runs_each_point_once_logs_it_offline_and_resume_runs_nothing(tmp_path, tiny):
    path = write_sweep(tmp_path, {"model": {"values": ["original", "r2_full"]},
                                  "ablate": {"values": ["none", "s_msg"]}, "train.lr": {"value": 0.05}})
    overrides = [*tiny, *FIVE_LAYERS]
    out = tmp_path / "out"
    first = cli("sweep", path, *overrides, "--engine", "wandb", "--out", out)
    assert first.returncode == 0, first.stderr
    assert "4/4 trials done" in first.stdout and "wandb sync" in first.stdout

    spec = sf.load_sweep(path, overrides)
    ledger = ws.Ledger(out / ws.LEDGER)
    trials = ledger.current()
    assert sorted(json.dumps(t.params, sort_keys=True) for t in trials) == \
        sorted(json.dumps(p, sort_keys=True) for p in sf.grid_points(spec))  # each point once
    by_label = {t.label: t for t in trials}
    assert by_label["original"].status == "exploded" and by_label["r2_full"].status == "stable"
    for t in trials:
        assert t.state == "finished" and t.wandb_run and Path(t.wandb_run).parent.parent == Path(t.run_dir)
        record = inspect(Path(t.run_dir))
        assert record["name"] == t.label and record["state"] == "finished" and "sweep:tiny" in record["tags"]
        config, summary = record["config"], record["summary"]
        expected = flatten(sf.trial_config(spec, t.params))
        for key in ("model.preset", "ablate", "model.stabilizers.s_msg", "model.stabilizers.C_mu", "train.lr"):
            assert config[key] == expected[key], (t.label, key)
        assert summary["status"] == t.status == json.loads((Path(t.run_dir) / "summary.json").read_text())["status"]
        for layer in range(1, 6):
            assert f"layer{layer}/mixing/mu_norm_max" in summary, (t.label, layer)

    again = cli("sweep", path, *overrides, "--engine", "wandb", "--out", out)
    assert again.returncode == 0, again.stderr
    assert "resuming: 4/4 trials already done" in again.stdout
    assert len(events(out)) == 1 + 2 * 4 and len(list((out / "trials").iterdir())) == 4


@pytest.mark.integration
def test_a_frontier_sweep_runs_every_rung_and_ends_with_the_frontier_from_its_ledger(tmp_path, tiny):
    """W&B's engine cannot walk (it runs the whole grid); the frontier is read from its ledger alike."""
    path = write_sweep(tmp_path, {"model": {"values": ["r2_full", "original"]}, "seed": {"value": 0},
                                  "train.lr": {"values": [0.001, 10.0]}}, frontier="train.lr")
    out = tmp_path / "out"
    res = cli("sweep", path, *tiny, "--engine", "wandb", "--out", out)
    assert res.returncode == 0, res.stderr
    assert "4/4 trials done" in res.stdout  # every rung, also above a failure
    assert "Stability frontier over train.lr: 2 of 2 walks complete" in res.stdout
    assert "FR1, R2_full's critical rung above the original's: n 1" in res.stdout
    assert res.stdout.index("Stability frontier") < res.stdout.index("wandb sync")


@pytest.mark.integration
def test_bayes_runs_a_fixed_count_and_resume_reruns_only_a_killed_trial(tmp_path, tiny):
    lr = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}
    path = write_sweep(tmp_path, {"model": {"value": "r2_full"}, "train.lr": lr,
                                  "model.aggregation": {"values": ["sum", "mean"]}}, method="bayes", stem="bayes")
    spec = sf.load_sweep(path, tiny)
    out = tmp_path / "out"
    first = ws.run_offline(spec, out=out, n_trials=2, threads=1)
    assert first.ran == 2 and [t.status for t in first.trials] == ["stable", "stable"]
    for t in first.trials:
        assert type(t.params["train.lr"]) is float and 1e-4 <= t.params["train.lr"] <= 1e-2
        assert t.params["model.aggregation"] in ("sum", "mean") and Path(t.wandb_run).is_dir()

    # A process killed during trial 2 left its start and no end, and one killed mid-write half a line.
    killed = {"train.lr": 0.003, "model.aggregation": "mean"}
    with (out / ws.LEDGER).open("a") as f:
        f.write('{"event": "end", "numb')
    ws.Ledger(out / ws.LEDGER).append({"event": "start", "number": 2, "params": killed, "label": "r2_full-mean",
                                       "run_dir": str(out / "trials" / "r2_full-mean-t0002"), "retry_of": None})
    again = ws.run_offline(spec, out=out, n_trials=3, threads=1)
    assert again.ran == 1 and len(again.trials) == 3  # the killed trial counts once, run again
    retry = again.trials[-1]
    assert (retry.number, retry.retry_of, retry.params, retry.status) == (3, 2, killed, "stable")

    assert ws.run_offline(spec, out=out, n_trials=3, threads=1).ran == 0  # resume: nothing left
    assert ws.run_offline(spec, out=out, n_trials=4, threads=1).ran == 1  # a larger budget adds the difference
    with pytest.raises(sf.SweepError, match="other overrides"):
        ws.run_offline(sf.load_sweep(path, [*tiny, "train.weight_decay=0.1"]), out=out, n_trials=4)


def test_exploded_and_failed_trials_reach_the_engine_without_the_metric(tmp_path):
    from sweeps.bayes_search import _construct_gp_data, bayes_baseline_validate_and_fill

    path = write_sweep(tmp_path, {"train.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}},
                       method="bayes")
    spec = sf.load_sweep(path)
    finished = {"state": "finished", "label": "t", "run_dir": "d"}
    trials = [ws.Trial(0, {"train.lr": 1e-3}, attrs={"status": "stable", "val_pos_mse": 0.5}, **finished),
              ws.Trial(1, {"train.lr": 2e-3}, attrs={"status": "stable", "val_pos_mse": 0.25}, **finished),
              # validated (finite, huge) before it blew up: that value must not count
              ws.Trial(2, {"train.lr": 9e-3}, attrs={"status": "exploded", "val_pos_mse": 3e13}, **finished),
              ws.Trial(3, {"train.lr": 8e-3}, label="t", run_dir="d", state="failed",
                       attrs={"status": "error", "error": "RuntimeError: boom"})]
    runs = [ws.as_sweep_run(spec, t) for t in trials]
    assert [r.summary_metrics for r in runs] == [{"val_pos_mse": 0.5}, {"val_pos_mse": 0.25}, {}, {}]
    # W&B's bayes engine imputes both as the worst finished value (metric.impute: worst).
    _, _, _, y, _ = _construct_gp_data(runs, bayes_baseline_validate_and_fill(ws.engine_config(spec)))
    assert list(y) == [0.5, 0.25, 0.5, 0.5]
    proposal = ws.propose(spec, trials)
    assert 1e-4 <= proposal["train.lr"] <= 1e-2 and not math.isnan(proposal["train.lr"])


@pytest.mark.integration
def test_agent_trial_logs_into_the_run_the_agent_made(tmp_path, tiny, monkeypatch):
    """Online, `wandb.agent` sets these variables and calls the function; its wandb.init() is the trial's run."""
    import wandb
    from wandb.sdk.lib import config_util

    path = write_sweep(tmp_path, {"model": {"values": ["original", "r2_full"]},
                                  "ablate": {"values": ["none", "s_msg"]}, "seed": {"values": [0, 1]}})
    spec = sf.load_sweep(path, tiny)
    out = tmp_path / "out"
    out.mkdir()
    params_path = tmp_path / "wandb" / "sweep-s0" / "config-agentrun1.yaml"
    config_util.save_config_file_from_dict(str(params_path), {"model": {"value": "r2_full"},
                                                              "ablate": {"value": "s_msg"}, "seed": {"value": 0}})
    monkeypatch.setenv(wandb.env.SWEEP_ID, "s0")
    monkeypatch.setenv(wandb.env.RUN_ID, "agentrun1")
    monkeypatch.setenv(wandb.env.SWEEP_PARAM_PATH, str(params_path))
    wandb.teardown()  # as the agent does before each run: settings are read again from the environment
    try:
        ws.agent_trial(spec, out)
    finally:
        wandb.teardown()  # no later test may find itself inside the sweep

    assert len(list(out.rglob("offline-run-*"))) == 1  # the agent's run, and no second one
    record = inspect(out)
    assert (record["run_id"], record["name"], record["state"]) == ("agentrun1", "r2_full-s_msg-seed0", "finished")
    assert set(record["tags"]) >= {"preset:r2_full", "ablate:s_msg", "sweep:tiny"}
    config = record["config"]
    assert config["model"] == "r2_full" and config["ablate"] == "s_msg"
    assert config["model.stabilizers.s_msg"] is None and config["model.stabilizers.C_mu"] == 20.0
    assert record["summary"]["status"] == "stable" and "layer2/mixing/mu_norm_max" in record["summary"]
    assert (out / "trials" / "r2_full-s_msg-seed0-agentrun1" / "summary.json").is_file()


@pytest.mark.integration
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_file_command_as_wandb_agent_renders_it_composes_the_trial(path):
    """`wandb agent` runs the file's `command` for a run W&B's engine proposes: rendered by W&B's
    own code, it must be a `painn-ablate train` argv that composes our trial's config."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    spec = shipped_sweep(path)
    proposal = ws._sweeps_engine().next_run(ws.engine_config(spec), [])
    sweep_vars = {**create_sweep_command_args({"args": proposal.config}), "env": ["/usr/bin/env"]}
    argv = [arg for chunk in create_sweep_command(list(spec.raw["command"]))  # as Agent._command_run
            for arg in (sweep_vars[chunk[2:-1]] if chunk.startswith("${") else [chunk])]
    assert argv[:3] == ["/usr/bin/env", "painn-ablate", "train"]
    args = build_parser().parse_args(argv[2:])
    assert args.func.__name__ == "cmd_train"
    params = {name: ws._plain(proposal.config[name]["value"]) for name in spec.swept}
    ours, theirs = flatten(sf.trial_config(spec, params)), flatten(compose(args.overrides))
    for key in ours:
        if key not in ("name", "out") and not key.startswith("tracking."):
            assert ours[key] == theirs[key], key


def test_optuna_only_options_are_refused_in_one_line(tmp_path, capsys):
    path = write_sweep(tmp_path, {"seed": {"values": [0, 1]}})
    assert main(["sweep", str(path), "--engine", "wandb", "--workers", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workers applies to --engine optuna" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
def test_online_sweep_config_fixes_the_overrides_and_the_budget():
    """What `wandb.sweep` gets: the server locks its parameters in each run's config, so the
    command-line overrides go in as typed fixed values, and random/bayes get their run_cap."""
    sweeps = ws._sweeps_engine()
    # the shipped spec with these overrides, as load_sweep(path, overrides) builds it
    main_job = shipped_sweep(ROOT / "sweeps" / "stabilizers.yaml")
    grid = ws.wandb_sweep_config(dataclasses.replace(main_job, overrides=["train.steps=20", "model.F=16"]), None)
    assert grid["parameters"]["train.steps"] == {"value": 20} and grid["parameters"]["model.F"] == {"value": 16}
    # the frontier's ladder stays swept (W&B's engine runs every rung), its `frontier` key, W&B's schema refuses
    assert grid["parameters"]["train.lr"] == main_job.raw["parameters"]["train.lr"] and "frontier" not in grid
    assert "run_cap" not in grid and sweeps.schema_violations_from_proposed_config(grid) == []
    bayes = ws.wandb_sweep_config(shipped_sweep(ROOT / "sweeps" / "tune_r2.yaml"), 5)
    assert bayes["run_cap"] == 5 and bayes["name"] == "tune_r2"


SWEEP_FILES = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


@pytest.mark.integration
@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_passes_wandbs_schema_and_the_agents_command_line_composes_alike(path, capsys, monkeypatch):
    from painn_ablate.cli import main
    from painn_ablate.core.config import compose, flatten

    load = sf.load_sweep  # the dry run's loading (every grid point composed) is the session's, done once
    monkeypatch.setattr(sf, "load_sweep", lambda file, overrides=(): load(file, overrides) if overrides
                        else shipped_sweep(Path(file)))
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("note: 'run_cap' is accepted by W&B's server" in out) == ("run_cap" in path.read_text())
    spec = shipped_sweep(path)
    assert ws.schema_check(spec.raw)[0] == []
    bookkeeping = ("name", "out", "tracking.progress", "tracking.group", "tracking.tags")
    for params in sf.check_points(spec)[:12]:
        agent = flatten(compose(ws.agent_arguments(spec, params)))  # what `painn-ablate train ${args_no_hyphens}` gets
        optuna_trial = flatten(sf.trial_config(spec, params))
        assert {k: v for k, v in agent.items() if k not in bookkeeping} == \
            {k: v for k, v in optuna_trial.items() if k not in bookkeeping}


def test_python_str_formatting_of_the_agent_is_accepted():
    from painn_ablate.core.config import compose

    cfg = compose(["model.stabilizers.s_msg=None", "model.shared_filters=True", "tracking.tags=['a', 'b']"])
    assert cfg.model.stabilizers.s_msg is None and cfg.model.shared_filters is True
    assert list(cfg.tracking.tags) == ["a", "b"]


def test_overrides_may_follow_the_options(tmp_path, capsys):
    path = Path(__file__).resolve().parent.parent / "sweeps" / "egnn.yaml"
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "train.steps=3", "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  r2_full-seed")]
    assert len(lines) == 3 and all(line.endswith("train.steps=3") for line in lines)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(path), "--dry-run", "--bogus"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
