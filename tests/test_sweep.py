"""Sweeps end to end: sweep files, grid exactly once with several workers (SQLite and a real
PostgreSQL server), a SIGKILLed worker's trial re-run on resume, exploded trials as results,
pruning, errors, random/bayes budgets, and bad files refused before any trial runs.

Every training run is tiny (a few steps of F=8, L=2 on 20 samples); the CLI runs in this
process (support.cli), and in subprocesses where workers are spawned, killed or compete.
"""

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from support import SWEEP_COMMAND, shipped_sweep, write_sweep
from support import cli as run_cli

from painn_ablate.analysis import frontier
from painn_ablate.core.config import ABLATIONS, compose, flatten
from painn_ablate.sweep import optuna_engine as sw
from painn_ablate.sweep import spec as sf
from painn_ablate.sweep import storage as storage_mod
from painn_ablate.sweep import studies, walk

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "sweeps").glob("*.yaml"))
PG_URL = os.environ.get("PAINN_ABLATE_PG_URL", "postgresql://painn:painn@127.0.0.1:5432/painn")


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """Overrides for a run of a few seconds; the data: the session's cache (conftest)."""
    return ["train.steps=3", "train.val_every=3", "model.F=8", "model.L=2", "model.n_rbf=4",
            "data.n_train=20", "data.n_val=10", "data.n_test=10",
            "tracking.wandb=false", "train.checkpoint=false"]


def cli(*args):
    return run_cli(*args, cwd=ROOT)  # in this process


def cli_process(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "painn_ablate.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def load(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=sw.sqlite_url(out))


def finished_params(study: optuna.Study) -> list[tuple]:
    return sorted(tuple(sorted(t.params.items())) for t in study.trials if t.state == TrialState.COMPLETE)


def as_tuples(points: list[dict]) -> list[tuple]:
    return sorted(tuple(sorted(p.items())) for p in points)


# ----------------------------------------------------------------------------- sweep files


@pytest.mark.integration
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_load_and_state_their_budget_and_command(path):
    text = path.read_text()
    spec = shipped_sweep(path)  # load_sweep: composes every grid point, or every end of every range
    assert f"painn-ablate sweep sweeps/{path.name}" in text.splitlines()[0]
    budget = [spec.params[k] for k in ("train.steps", "train.epochs") if k in spec.params]
    assert budget and all(p.fixed for p in budget)  # a step or epoch budget, the same for every trial
    assert spec.raw["command"] == SWEEP_COMMAND


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_are_valid_wandb_sweep_configs(path):
    sweeps = pytest.importorskip("sweeps", reason="W&B's sweep engine (pip install sweeps) holds the schema")
    raw = yaml.safe_load(path.read_text())
    raw.pop("run_cap", None)  # a W&B key newer than the schema of sweeps 0.2
    for key in sf.OWN_KEYS:  # painn-ablate's own (`frontier`), which the W&B engines leave out of what they send
        raw.pop(key, None)
    assert sweeps.schema_violations_from_proposed_config(raw) == []


@pytest.mark.integration
def test_wandb_agent_arguments_compose_the_same_config(tiny):
    """`wandb agent` passes `${args_no_hyphens}` as key=str(value); that must be our trial's config."""
    for path in SHIPPED:
        swept = {k for k, v in yaml.safe_load(path.read_text())["parameters"].items() if "value" not in v}
        # as load_sweep(path, overrides) builds it (the loading itself: test_shipped_files_load_...)
        spec = dataclasses.replace(shipped_sweep(path), overrides=[o for o in tiny if o.split("=")[0] not in swept])
        for params in sf.check_points(spec)[:6]:
            wandb_args = [f"{name}={p.values[0] if p.fixed else params[name]}" for name, p in spec.params.items()]
            ours = flatten(sf.trial_config(spec, params))
            theirs = flatten(compose([*wandb_args, *spec.overrides]))
            for key in ("seed", "ablate", "model.preset", "train.lr", "train.steps", "model.L", "train.grad_clip",
                        "model.aggregation", *(k for k in ours if k.startswith("model.stabilizers."))):
                assert ours[key] == theirs[key], (path.name, key)


@pytest.mark.integration
@pytest.mark.parametrize("name,seeds", [("stabilizers.yaml", 10), ("stabilizers_quick.yaml", 2)])
def test_stabilizers_design_is_the_frontier_over_every_group_both_ways(name, seeds):
    """Amendment 9: the original and R2_full at L = 5, each as itself and with each stabilizer group flipped,
    paired seeds walking a sub-range of the frontier's ladder; the quick file is the same design, smaller."""
    spec = shipped_sweep(ROOT / "sweeps" / name)
    groups = ("interaction_scale", "mixing_scale", "bounds", "grad_clip")
    assert spec.frontier == "train.lr" and set(spec.params["model"].values) == {"original", "r2_full"}
    assert list(spec.params["ablate"].values) == ["none", *groups] and len(spec.params["seed"].values) == seeds
    ladder = list(spec.params["train.lr"].values)
    first = frontier.rung(ladder[0])
    assert all(frontier.rung(x) >= first for x in ladder) and spec.params["model.L"].values == (5,)
    points = sf.grid_points(spec)
    assert len(points) == 2 * 5 * seeds * len(ladder) and len({sf.trial_label(spec, p) for p in points}) == len(points)
    assert len(walk.walk_starts(spec)) == 2 * 5 * seeds
    r2, plain = flatten(compose(["model=r2_full"])), flatten(compose([]))
    for group in groups:
        loo = flatten(sf.trial_config(spec, {"model": "r2_full", "ablate": group, "seed": 0, "train.lr": ladder[0]}))
        aoi = flatten(sf.trial_config(spec, {"model": "original", "ablate": group, "seed": 0, "train.lr": ladder[0]}))
        for key in ABLATIONS[group]:
            assert loo[key] == plain[key] and aoi[key] == r2[key], (group, key)
    assert sf.trial_label(spec, {"model": "r2_full", "ablate": "bounds", "seed": 1, "train.lr": ladder[0]}) == \
        f"r2_full-bounds-lr{ladder[0]:g}-seed1"


BAD_FILES = {
    "unknown config key": ({"train.lrr": {"values": [0.1]}}, {}, "train.lrr"),
    "unknown ablation": ({"ablate": {"values": ["none", "s_msgg"]}}, {}, "s_msgg"),
    "bad distribution": ({"train.lr": {"distribution": "log_uniform_values", "min": 0.1, "max": 0.01}},
                         {"method": "random"}, "min must be < max"),
    "unknown distribution": ({"train.lr": {"distribution": "gaussian", "min": 0.1, "max": 1}},
                             {"method": "random"}, "gaussian"),
    "unknown top-level key": ({"seed": {"values": [0]}}, {"early_terminatee": {}}, "early_terminatee"),
    "bad value type": ({"model.L": {"values": [2, "deep"]}}, {}, "model.L"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_sweep_file_is_refused_before_any_trial(tmp_path, case):
    parameters, top, needle = BAD_FILES[case]
    path = write_sweep(tmp_path, parameters, **top)
    out = tmp_path / "out"
    result = cli("sweep", path, "--out", out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("painn-ablate: error:") and needle in lines[0], lines
    assert not (out / "study.db").exists()


def test_override_of_a_swept_parameter_is_refused(tmp_path):
    path = write_sweep(tmp_path, {"seed": {"values": [0, 1]}})
    with pytest.raises(sf.SweepError, match="swept parameter 'seed'"):
        sf.load_sweep(path, ["seed=3"])


# ----------------------------------------------------------------------------- running


@pytest.mark.integration
def test_exploded_trial_is_a_completed_result(tmp_path, tiny):
    # lr=10 with the original PaiNN overflows within its first two steps, every seed.
    path = write_sweep(tmp_path, {"model": {"value": "original"}, "train.lr": {"values": [0.001, 10.0]}})
    final = sw.run_sweep(sf.load_sweep(path, tiny), out=tmp_path / "out", threads=1)
    assert (final.done, final.exploded, final.errors) == (2, 1, 0)
    by_lr = {t.params["train.lr"]: t for t in load(tmp_path / "out").trials}
    stable, exploded = by_lr[0.001], by_lr[10.0]
    assert stable.state == exploded.state == TrialState.COMPLETE
    assert stable.user_attrs["status"] == "stable" and math.isfinite(stable.value)
    assert stable.value == stable.user_attrs["val_pos_mse"]
    assert exploded.user_attrs["status"] == "exploded" and exploded.value == math.inf
    assert exploded.constraints["blow_up"] == 1.0 and stable.constraints["blow_up"] == -1.0
    assert exploded.user_attrs["first_nonfinite"]["step"] <= 2
    summary = json.loads((Path(exploded.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "exploded" and summary["name"].startswith(exploded.user_attrs["label"] + "-t")

    status = cli("status", tmp_path / "out")
    assert status.returncode == 0, status.stderr
    assert "exploded 1" in status.stdout and "stable 1" in status.stdout
    first = exploded.user_attrs["first_nonfinite"]
    assert f"non-finite {first['tensor']} at step {first['step']}, first in layer {first['layer']} {first['block']}" \
        in status.stdout


@pytest.mark.integration
def test_pruner_stops_a_trial_at_the_early_warning(tmp_path, tiny):
    # A warning that fires at the first snapshots with any growth of ||mu||: a stand-in for an explosion.
    path = write_sweep(tmp_path, {"seed": {"values": [0]}, "train.lr": {"value": 0.1},
                                  "monitor.every": {"value": 1}, "monitor.warn_window": {"value": 2},
                                  "monitor.warn_ratio": {"value": 1.000001}, "monitor.warn_growth": {"value": 1.000001},
                                  "train.steps": {"value": 30}})
    sw.run_sweep(sf.load_sweep(path, [o for o in tiny if not o.startswith("train.steps")]),
                 out=tmp_path / "out", prune=True, threads=1)
    (trial,) = load(tmp_path / "out").trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["status"] == "pruned"
    assert trial.user_attrs["pruned_step"] == trial.user_attrs["early_warning_step"] < 29
    assert trial.user_attrs["steps_completed"] == trial.user_attrs["pruned_step"] + 1


@pytest.mark.integration
def test_trial_that_raises_fails_with_its_error_and_the_sweep_goes_on(tmp_path, tiny):
    # A device that does not exist passes config validation and fails inside the run.
    path = write_sweep(tmp_path, {"train.device": {"values": ["cuda:99", "cpu"]}})
    final = sw.run_sweep(sf.load_sweep(path, tiny), out=tmp_path / "out", threads=1)
    assert final.errors == 1 and final.done == 2
    by_device = {t.params["train.device"]: t for t in load(tmp_path / "out").trials}
    failed = by_device["cuda:99"]
    assert failed.state == TrialState.FAIL and failed.user_attrs["status"] == "error"
    assert failed.user_attrs["error"] and "\n" not in failed.user_attrs["error"]
    assert by_device["cpu"].state == TrialState.COMPLETE


@pytest.mark.integration
def test_random_and_bayes_run_their_budget_and_resume_without_rerunning(tmp_path, tiny):
    lr = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}
    for method in ("random", "bayes"):
        path = write_sweep(tmp_path, {"train.lr": lr, "model.aggregation": {"values": ["sum", "mean"]}},
                           method=method, stem=method, run_cap=3)
        spec = sf.load_sweep(path, tiny)
        out = tmp_path / method
        sw.run_sweep(spec, out=out, threads=1)
        sw.run_sweep(spec, out=out, threads=1)  # resume: nothing left
        trials = load(out, method).trials
        assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
        assert all(1e-4 <= t.params["train.lr"] <= 1e-2 for t in trials)
        sw.run_sweep(spec, out=out, n_trials=4, threads=1)  # a larger budget adds exactly the difference
        assert len(load(out, method).trials) == 4
        assert all(t.constraints["blow_up"] == -1.0 for t in load(out, method).trials)  # feasible


@pytest.mark.integration
def test_resume_with_other_settings_is_refused(tmp_path, tiny):
    path = write_sweep(tmp_path, {"seed": {"values": [0]}})
    sw.run_sweep(sf.load_sweep(path, tiny), out=tmp_path / "out", threads=1)
    with pytest.raises(sf.SweepError, match="other overrides"):
        sw.run_sweep(sf.load_sweep(path, [*tiny, "train.lr=0.002"]), out=tmp_path / "out", threads=1)


@pytest.mark.integration
def test_two_local_workers_complete_a_grid_exactly_once_and_resume_runs_nothing(tmp_path, tiny):
    path = write_sweep(tmp_path, {"model": {"values": ["original", "r2_full"]},
                                  "ablate": {"values": ["none", "s_msg", "clamps"]}, "seed": {"values": [0]}})
    out = tmp_path / "out"
    first = cli_process("sweep", path, *tiny, "--workers", "2", "--out", out)  # spawns its workers
    assert first.returncode == 0, first.stderr
    study = load(out)
    grid = sf.grid_points(sf.load_sweep(path, tiny))
    assert len(study.trials) == len(grid) == 6  # no duplicates, none lost
    assert finished_params(study) == as_tuples(grid), [(t.state, t.user_attrs) for t in study.trials]
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2, workers  # both processes took trials
    dirs = sorted(p.name for p in (out / "trials").iterdir())
    assert len(dirs) == 6 and all((out / "trials" / d / "summary.json").is_file() for d in dirs)

    again = cli("sweep", path, *tiny, "--threads", "1", "--out", out)
    assert again.returncode == 0, again.stderr
    assert "6/6 trials already done" in again.stdout and len(load(out).trials) == 6


def _wait_for_running(out: Path, name: str, timeout: float = 120) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "study.db").exists():
            try:
                for t in load(out, name).get_trials(states=(TrialState.RUNNING,)):
                    if t.user_attrs.get("attempt") == t.number and t.params.get("train.steps") == 400:
                        return t
            except Exception:  # the study is not created yet
                pass
        time.sleep(0.3)
    raise AssertionError("the slow trial never started")


@pytest.mark.integration
def test_sigkilled_worker_trial_is_rerun_on_resume(tmp_path, tiny):
    # The second grid point is slow enough to be killed mid-run; a 1 s heartbeat means 3 s grace.
    path = write_sweep(tmp_path, {"train.steps": {"values": [3, 400]}})
    out = tmp_path / "out"
    flags = [*(o for o in tiny if not o.startswith("train.steps")), "--heartbeat", "1", "--threads", "1", "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", "painn_ablate.cli", "sweep", str(path), *map(str, flags)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        killed = _wait_for_running(out, "tiny")
        time.sleep(0.5)  # into training
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert load(out).trials[killed.number].state == TrialState.RUNNING, "the trial ended before the kill"
    resumed = cli("sweep", path, *flags)
    assert resumed.returncode == 0, resumed.stderr
    trials = load(out).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    fast, lost, rerun = trials
    assert lost.number == killed.number and "error" not in lost.user_attrs
    assert rerun.params == lost.params and rerun.system_attrs["failed_trial"] == lost.number
    assert rerun.user_attrs["steps_completed"] == 400 and rerun.user_attrs["run_dir"] != lost.user_attrs["run_dir"]
    assert fast.user_attrs["attempt"] == fast.number  # the finished trial was not run again
    assert len(list((out / "trials").iterdir())) == 3
    assert "1 interrupted and re-run" in resumed.stdout


POP_SCRIPT = """
import sys, optuna
from painn_ablate.sweep import optuna_engine as sw
storage = sw.open_storage(sys.argv[1])
study = optuna.load_study(study_name="pop", storage=storage)
taken = []
while (trial := sw.pop_waiting(study, storage)) is not None:
    study.tell(trial, 0.0)
    taken.append(trial.number)
print(*taken)
"""


@pytest.mark.integration
def test_waiting_trials_are_taken_once_by_competing_processes_on_sqlite(tmp_path):
    # Without BEGIN IMMEDIATE, pysqlite lets two processes move one WAITING trial to RUNNING.
    url = sw.sqlite_url(tmp_path)
    study = optuna.create_study(study_name="pop", storage=sw.open_storage(url))
    for i in range(60):
        study.enqueue_trial({"i": i})
    procs = [subprocess.Popen([sys.executable, "-c", POP_SCRIPT, url], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-300:] for _, err in outputs]
    taken = sorted(int(n) for out, _ in outputs for n in out.split())
    assert taken == list(range(60))
    assert sum(1 for out, _ in outputs if out.split()) >= 2  # they did compete


def _postgres_reachable() -> str:
    try:
        import psycopg2

        psycopg2.connect(PG_URL, connect_timeout=3).close()
        return ""
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} unreachable ({' '.join(str(exc).split())[:120]}); run scripts/ci-services"


@pytest.mark.integration
def test_the_file_format_and_the_wandb_engine_do_not_load_optuna():
    code = ("import sys, painn_ablate.sweep.spec, painn_ablate.sweep.wandb_engine; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'optuna'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_postgres_storage_without_a_driver_names_the_extra(tmp_path, tiny, monkeypatch):
    """Where neither psycopg nor psycopg2 can be imported, one line names the extra to install."""
    path = write_sweep(tmp_path, {"model": {"values": ["original"]}, "seed": {"values": [0]}})
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    proc = cli("sweep", str(path), *tiny, "--storage", "postgresql://user:secret@localhost/db",
               "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'painn-ablate[postgres]'" in lines[0] and "secret" not in lines[0]
    assert not (tmp_path / "out" / "trials").exists()


@pytest.mark.integration
def test_two_processes_join_one_study_through_postgres(tmp_path, tiny):
    reason = _postgres_reachable()
    if reason and "PAINN_ABLATE_PG_URL" in os.environ:  # a server was asked for (.ci/run asks): its absence fails
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    name = f"test-{uuid.uuid4().hex[:8]}"
    path = write_sweep(tmp_path, {"model": {"values": ["original", "r2_full"]},
                                  "ablate": {"values": ["none", "g", "alpha"]}, "seed": {"values": [0]}}, name=name)
    commands = [[sys.executable, "-m", "painn_ablate.cli", "sweep", str(path), *tiny, "--storage", PG_URL,
                 "--threads", "1", "--out", str(tmp_path / f"machine{i}")] for i in range(2)]
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    try:
        results = [p.communicate(timeout=150) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [r[1][-500:] for r in results]
        study = optuna.load_study(study_name=name, storage=storage_mod.driver_url(PG_URL))
        grid = sf.grid_points(sf.load_sweep(path, tiny))
        assert len(study.trials) == len(grid) == 6
        assert finished_params(study) == as_tuples(grid)
        dirs = [d for i in range(2) if (tmp_path / f"machine{i}" / "trials").is_dir()
                for d in (tmp_path / f"machine{i}" / "trials").iterdir()]
        assert len(dirs) == 6
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        try:
            optuna.delete_study(study_name=name, storage=storage_mod.driver_url(PG_URL))
        except KeyError:
            pass


# ----------------------------------------------------------------------------- the frontier walk


@pytest.mark.integration
def test_a_frontier_sweep_walks_each_seed_up_the_ladder_to_its_first_failure(tmp_path, tiny):
    """lr 10 overflows the original within two steps: each seed's walk runs 1e-3, then 10, and never 1000."""
    ladder = [0.001, 10.0, 1000.0]
    path = write_sweep(tmp_path, {"model": {"value": "original"}, "seed": {"values": [0, 1]},
                                  "train.lr": {"values": ladder}}, frontier="train.lr")
    sweep = sf.load_sweep(path, tiny)
    assert sweep.frontier == "train.lr" and len(walk.walk_starts(sweep)) == 2
    sw.run_sweep(sweep, out=tmp_path / "out", threads=1)
    trials = load(tmp_path / "out").trials
    ran = sorted((t.params["seed"], t.params["train.lr"], t.user_attrs["status"]) for t in trials)
    assert ran == [(0, 0.001, "stable"), (0, 10.0, "exploded"), (1, 0.001, "stable"), (1, 10.0, "exploded")]
    # resuming enqueues nothing: every walk has ended
    assert sw.run_sweep(sf.load_sweep(path, tiny), out=tmp_path / "out", threads=1).done == 4
    assert len(load(tmp_path / "out").trials) == 4


def test_a_walks_next_rung_is_taken_before_a_later_walks_first_so_walks_complete_in_file_order(tmp_path, tiny):
    """Both walks' first rungs wait from the start; once seed 0 trains at its first rung, its second rung goes
    before seed 1's first: a sweep stopped at a deadline holds seed 0's whole walk, not two first rungs."""
    path = write_sweep(tmp_path, {"model": {"value": "original"}, "seed": {"values": [0, 1]},
                                  "train.lr": {"values": [0.001, 0.01, 0.1]}}, frontier="train.lr")
    sweep = sf.load_sweep(path, tiny)
    storage = sw.open_storage(sw.sqlite_url(tmp_path))
    study = sw.prepare_study(sweep, storage)

    def take_and_train() -> dict:
        trial = sw.pop_waiting(study, storage)
        params = sw.suggest(trial, sweep)  # as run_trial does: an enqueued trial's fixed values
        storage.set_trial_user_attr(trial._trial_id, "status", "stable")
        study.tell(trial, 0.0)
        sw.advance_walks(study, sweep, only=params)
        return params

    taken = [take_and_train() for _ in range(3)]
    assert [(p["seed"], p["train.lr"]) for p in taken] == [(0, 0.001), (0, 0.01), (0, 0.1)]
    assert [(p["seed"], p["train.lr"]) for p in (take_and_train(), take_and_train())] == [(1, 0.001), (1, 0.01)]


class Stop(Exception):
    """Ends a sweep from its progress callback: a sweep cut short between trials."""


@pytest.mark.integration
def test_a_frontier_sweep_ends_with_the_verdict_table_and_status_prints_it_from_a_partly_done_study(tmp_path, tiny):
    """The main job's design in small: 2 presets x 2 groups x 2 seeds walking 3 rungs at L = 5 (F = 16). Cut short
    after five trials, then resumed: the resumed walks run each rung once (before, a resumed frontier sweep saw
    no waiting rung in any walk, the waiting trials having no params yet, and enqueued every next rung twice)."""
    path = write_sweep(tmp_path, {"model": {"values": ["r2_full", "original"]}, "ablate": {"values": ["none", "bounds"]},
                                  "seed": {"values": [0, 1]}, "train.lr": {"values": [0.001, 0.05, 10.0]}},
                       frontier="train.lr")
    overrides, out = [*tiny, "model.F=16", "model.L=5"], tmp_path / "out"

    def stop_after_five(p) -> None:
        if p.done >= 5:
            raise Stop

    with pytest.raises(Stop):
        sw.run_sweep(sf.load_sweep(path, overrides), out=out, threads=1, on_progress=stop_after_five)
    mid = cli("status", out)
    assert mid.returncode == 0, mid.stderr
    complete = int(re.search(r"Stability frontier over train.lr: (\d) of 8 walks complete", mid.stdout).group(1))
    assert complete < 8 and "FR1, R2_full's critical rung above the original's: n " in mid.stdout
    verdicts = mid.stdout[mid.stdout.index("Verdicts"):mid.stdout.index("Blow-up rate")]
    assert re.search(r"r2_full - bounds\s+necessary\s+[012]\s", verdicts) and "n < 10, not judged" in verdicts
    assert re.search(r"original\s+\d/2 ", mid.stdout)  # the walks of a variant done so far

    end = cli("sweep", path, *overrides, "--out", out)  # resumes the walks where they stood
    assert end.returncode == 0, end.stderr
    text = end.stdout
    assert "8 of 8 walks complete" in text and text.index("Stability frontier") < text.index("Verdicts") < text.index("Next:")
    verdicts = text[text.index("Verdicts"):text.index("Blow-up rate")]
    assert re.search(r"r2_full - bounds\s+necessary\s+2\s.*n < 10, not judged", verdicts)
    assert re.search(r"original \+ bounds\s+sufficient\s+2\s.*n < 10, not judged", verdicts)
    # each walk's critical rung as the table states it agrees with the trials the engine ran: a walk that stopped
    # ran its critical rung + 2 rungs (the last one did not train), one that trained at every rung ran all 3
    study = load(out)
    walks: dict = {}
    for t in study.trials:
        walks.setdefault((t.params["model"], t.params["ablate"], t.params["seed"]), []).append(t)
    crit = frontier.critical_table(studies.trials_frame(study), lr="train.lr", ladder=[0.001, 0.05, 10.0])
    for (preset, ablate, seed), trials in walks.items():
        ran = sorted(trials, key=lambda t: t.params["train.lr"])
        assert len({t.params["train.lr"] for t in ran}) == len(ran), (preset, ablate, seed)  # each rung once
        trained = walk.trains(ran[-1].user_attrs)
        assert len(ran) == 3 or not trained  # a walk stops only at a rung that did not train
        row = crit[(crit["preset"] == preset) & (crit["ablate"] == ablate) & (crit["seed"] == seed)].iloc[0]
        assert row["critical_rung"] == (len(ran) - 1 if trained else len(ran) - 2), (preset, ablate, seed)


def test_the_walk_goes_to_the_next_rung_only_after_a_rung_that_trained(tmp_path):
    path = write_sweep(tmp_path, {"seed": {"values": [0, 1]}, "train.lr": {"values": [0.001, 0.01, 0.1]}},
                       frontier="train.lr")
    sweep = sf.load_sweep(path)
    start = {"seed": 0, "train.lr": 0.001}
    assert walk.walk_next(sweep, [(start, True)]) == {"seed": 0, "train.lr": 0.01}
    assert walk.walk_next(sweep, [(start, False)]) is None
    assert walk.walk_next(sweep, [(start, True), ({"seed": 0, "train.lr": 0.01}, True),
                                ({"seed": 0, "train.lr": 0.1}, True)]) is None
    # a spike present at initialisation that recovered does not stop a walk; a training-phase one does
    assert walk.trains({"status": "transient", "training_blow_up": False})
    assert not walk.trains({"status": "transient", "training_blow_up": True})
    # a sustained blow-up never trains; one with no training-phase blow-up ends the walk "at init"
    init_nan = {"status": "exploded", "blow_up_phase": "init", "training_blow_up": False}
    assert not walk.trains(init_nan) and walk.failed_at_init(init_nan)
    assert not walk.failed_at_init({"status": "exploded", "blow_up_phase": "init", "training_blow_up": True})
    assert not walk.trains({"status": "error"}) and walk.trains({"status": "stable"})


@pytest.mark.parametrize("frontier,values,message", [("train.steps", [0.001, 0.01], "must name a swept parameter"),
                                                     ("train.lr", [0.01, 0.001], "ascending order")])
def test_a_bad_frontier_is_refused_naming_it(tmp_path, frontier, values, message):
    path = write_sweep(tmp_path, {"train.lr": {"values": values}}, frontier=frontier)
    with pytest.raises(sf.SweepError, match=message):
        sf.load_sweep(path)


def test_the_experiment_table_counts_transient_runs_as_blow_ups():
    import pandas as pd

    from painn_ablate.reporting.text import experiment_table

    frame = pd.DataFrame({"experiment": ["original"] * 5, "test_pos_mse": [0.1, 0.3, 5.0, None, None],
                          "status": ["stable", "transient", "diverged", "exploded", "running"]})
    row = experiment_table(frame).iloc[0]
    assert row["blow-ups"] == "3/4" and (row["transient"], row["diverged"], row["exploded"]) == (1, 1, 1)
    assert row["median test_pos_mse (stable)"] == "0.1"  # the stable trial's alone
