"""Training runs end to end on tiny models: records, determinism, explosions as outcomes, the CLI."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import EXPLODING, TINY, cli

from painn_ablate.core.config import compose
from painn_ablate.training.trainer import run


@pytest.fixture
def tiny(tmp_path):
    def make(*overrides, out="run"):  # the data: the session's cache (conftest)
        return compose([*TINY, f"out={tmp_path / out}", *overrides])
    return make


@pytest.mark.integration
def test_stable_run_writes_every_record(tiny, tmp_path):
    summary = run(tiny("model=r2_full", "train.steps=12", "train.val_every=4", "monitor.every=4"))
    run_dir = tmp_path / "run"
    assert summary["status"] == "stable" and summary["steps_completed"] == 12
    assert summary["first_nonfinite"] is None and summary["nonfinite_events"] == 0
    assert set(summary["val"]) == {"pos_mse", "vel_mse"} and summary["test"]["pos_mse"] > 0
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "config.yaml").exists()
    stats = pd.read_parquet(run_dir / "layer_stats.parquet")
    assert set(stats["step"]) == {0, 4, 8, 11}
    assert set(stats["layer"]) == {0, 1, 2, 3, 4, 5} and set(stats["block"]) == {"input", "interaction", "mixing"}
    assert {"mu_norm_max", "q_absmax", "C_mu_frac", "grad_norm", "grad_norm_clipped"} <= set(stats["stat"])
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert list(metrics["step"]) == list(range(12))
    assert metrics["val_pos_mse"].notna().sum() == 3  # steps 3, 7, 11
    assert pd.read_parquet(run_dir / "events.parquet").empty


@pytest.mark.integration
def test_position_only_loss_and_cosine_schedule(tiny, tmp_path):
    """EGNN's setting: the loss is the displacement MSE alone, and the lr decays from train.lr to 0."""
    summary = run(tiny("model=r2_full", "train.steps=10", "train.val_every=5", "train.loss=pos",
                       "train.schedule=cosine", "train.lr=0.002"))
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert (metrics["loss"] == metrics["loss_pos"]).all() and (metrics["loss_vel"] > 0).all()
    lr = metrics["lr"].to_numpy()
    assert lr[0] == pytest.approx(0.002) and lr[-1] == pytest.approx(0.0, abs=1e-12)
    assert (np.diff(lr) <= 0).all()
    assert lr[5] == pytest.approx(0.001 * (1 + math.cos(math.pi * 5 / 9)))
    assert summary["status"] == "stable"
    both = run(tiny("model=r2_full", "train.steps=3", out="both"))
    m = pd.read_parquet(tmp_path / "both" / "metrics.parquet")
    assert np.allclose(m["loss"], m["loss_pos"] + m["loss_vel"]) and (m["lr"] == m["lr"].iloc[0]).all()
    assert both["status"] == "stable"


@pytest.mark.integration
def test_same_seed_same_numbers_and_saved_config_reruns(tiny, tmp_path):
    a = run(tiny("model=r2_full", "train.steps=6", "train.val_every=3", "seed=4", out="a"))
    rerun_cfg = compose([f"out={tmp_path / 'b'}"], base=tmp_path / "a" / "config.yaml")
    b = run(rerun_cfg)
    c = run(tiny("model=r2_full", "train.steps=6", "train.val_every=3", "seed=5", out="c"))
    assert (a["final_loss"], a["val"], a["test"]) == (b["final_loss"], b["val"], b["test"])
    assert a["final_loss"] != c["final_loss"]


@pytest.mark.integration
def test_explosion_is_an_outcome_located_in_the_deep_layers(tiny, tmp_path):
    summary = run(tiny(*EXPLODING))
    assert summary["status"] == "exploded"
    first = summary["first_nonfinite"]
    assert first["phase"] == "forward" and first["layer"] >= 3 and first["block"] in ("interaction", "mixing")
    assert summary["steps_completed"] == first["step"] + 1 < 20  # stop policy
    events = pd.read_parquet(tmp_path / "run" / "events.parquet")
    nonfinite = events[events["kind"] == "nonfinite"]
    assert len(nonfinite) == 1 and int(nonfinite["layer"].iloc[0]) == first["layer"]
    # the statistics of the failing step itself are recorded: ||mu|| grows with depth
    stats = pd.read_parquet(tmp_path / "run" / "layer_stats.parquet")
    at_event = stats[(stats.step == first["step"]) & (stats.block == "mixing") & (stats.stat == "mu_norm_max")]
    mu = at_event.set_index("layer")["value"]
    assert mu.loc[first["layer"] - 1] > mu.loc[1]


@pytest.mark.integration
def test_r2_full_survives_the_learning_rate_that_explodes_original(tiny):
    summary = run(tiny("model=r2_full", "train.lr=0.05", "train.steps=20", "train.val_every=10"))
    assert summary["status"] == "stable" and summary["nonfinite_events"] == 0


@pytest.mark.integration
def test_the_fairchem_preset_trains(tiny):
    # (at lr 0.05, where the original explodes at step 1, this tiny fairchem model diverges: no claim here)
    summary = run(tiny("model=fairchem", "train.steps=20", "train.val_every=10"))
    assert summary["status"] == "stable" and summary["preset"] == "fairchem"
    assert math.isfinite(summary["test"]["pos_mse"])


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["skip_step", "continue"])
def test_nonfinite_policies_keep_going(tiny, policy):
    summary = run(tiny(*EXPLODING, "train.steps=6", f"monitor.on_nonfinite={policy}"))
    assert summary["status"] == "exploded" and summary["steps_completed"] == 6
    assert summary["nonfinite_events"] >= 1


@pytest.mark.integration
def test_cli_train_exits_zero_on_explosion_and_prints_a_summary(tmp_path):
    res = cli("train", *TINY, *EXPLODING, f"out={tmp_path / 'x'}")
    assert res.returncode == 0, res.stderr
    assert "exploded" in res.stdout and "First non-finite value" in res.stdout


@pytest.mark.parametrize("args, needle", [
    (["model.stabilizers.smsg=5"], "did you mean 'model.stabilizers.s_msg'"),
    (["model.L=abc"], "model.L"),
    (["model.stabilizers.s_msg=-1"], "model.stabilizers.s_msg"),
    (["model.aggregation=max"], "model.aggregation"),
    (["data.dir=/nonexistent/data"], "/nonexistent/data"),
])
def test_cli_bad_input_is_one_line_exit_2_and_leaves_no_run_dir(tmp_path, args, needle):
    res = cli("train", *TINY, f"data.cache_dir={tmp_path / 'c'}", f"out={tmp_path / 'x'}", *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_existing_run_dir_is_refused(tiny, tmp_path):
    run(tiny("train.steps=2"))
    res = cli("train", *TINY, f"out={tmp_path / 'run'}")
    assert res.returncode == 2 and "already holds a run" in res.stderr


@pytest.mark.integration
def test_killed_run_leaves_readable_records(tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "painn_ablate.cli", "train", *TINY, "model=r2_full",
                             "train.steps=100000", "monitor.every=2", "monitor.flush_every=5", f"out={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            summary = out / "summary.json"
            if summary.exists() and json.loads(summary.read_text())["steps_completed"] >= 15:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run did not get going")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "running" and summary["steps_completed"] >= 15
    stats = pd.read_parquet(out / "layer_stats.parquet")
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert metrics["step"].max() >= 14 and stats["step"].max() >= 10
    assert pd.read_parquet(out / "events.parquet").empty
    assert not any(p.name.endswith(".tmp") and p.stat().st_size == 0 for p in Path(out).rglob("*"))


@pytest.mark.integration
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU (none here; CI has none)")
def test_a_gpu_run_records_statistics_and_the_error_tail(tiny, tmp_path):
    """The GPU path: statistics steps mix no CPU tensors in, and the test tail is computed (found on an H200)."""
    summary = run(tiny("model=r2_full", "train.steps=6", "train.val_every=3", "monitor.every=2", "train.device=cuda"))
    assert summary["status"] == "stable" and summary["test"]["pos_mse_q99"] >= summary["test"]["pos_mse_q50"]
    assert set(pd.read_parquet(tmp_path / "run" / "layer_stats.parquet")["step"]) == {0, 2, 4, 5}


# ----------------------------------------------------------------------------- the compiled step (model.compile)

# A compile is ~90 s cold on these cores: every compiled run below shares one model (original, F=8, L=3; lr,
# steps and the monitor's thresholds are not in the graph), so the session compiles its two graphs (flags-only
# and full-statistics steps) once, and each later run in the process reuses them (no re-tracing).
COMPILED = [*TINY, "model=original", "model.F=8", "model.L=3", "train.val_every=10", "monitor.every=5"]
# lr 3e-3 with a low ||mu|| bound: stable, diverged at step 1 (a flags-only step, so located on a replay)
STABLE = ["train.lr=0.003", "train.steps=6", "train.val_every=6", "monitor.diverge_mu=3"]
# lr 0.3: non-finite q in layer 3's mixing at step 1 (a flags-only step: its statistics are replayed)
EXPLODES = ["train.lr=0.3", "train.steps=20"]


@pytest.fixture(scope="session")
def inductor_cache(tmp_path_factory):
    """One inductor cache folder for the session (an explicit TORCHINDUCTOR_CACHE_DIR wins over the project's)."""
    from painn_ablate.core.process import use_inductor_cache

    names = ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE")
    saved = {k: os.environ.get(k) for k in names}
    folder = tmp_path_factory.mktemp("inductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    assert use_inductor_cache() == str(folder)
    yield folder
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def eager_and_compiled(tmp_path_factory, inductor_cache):
    """run() of one configuration eager and compiled: {"stable" | "explodes": {False | True: run folder}}.

    The second compiled run (another lr, another length; the same model) re-traces nothing: it reuses the
    first's graphs in this process, as a sweep worker's next trial of the same variant does.
    """
    import torch
    from torch._dynamo.utils import counters

    root = tmp_path_factory.mktemp("compiled")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folders = {}
    try:
        for case, overrides in (("stable", STABLE), ("explodes", EXPLODES)):
            for compiled in (False, True):
                out = root / f"{case}-{compiled}"
                graphs = counters["stats"]["unique_graphs"]
                summary = run(compose([*COMPILED, *overrides, f"model.compile={str(compiled).lower()}",
                                       f"data.cache_dir={root / 'cache'}", f"out={out}"]))
                assert summary["compiled"] is compiled
                if compiled and case == "explodes":  # the stable case's graphs (flags-only and full steps), reused
                    assert counters["stats"]["unique_graphs"] == graphs
                folders.setdefault(case, {})[compiled] = out
    finally:
        torch.set_num_threads(threads)
    return folders


def summary_of(folder):
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.integration
@pytest.mark.slow  # a cold inductor compile: minutes; .ci/run's slow stage runs it
def test_compiled_run_matches_eager_in_loss_and_parameters(eager_and_compiled):
    import torch

    eager, compiled = eager_and_compiled["stable"][False], eager_and_compiled["stable"][True]
    a, b = (pd.read_parquet(f / "metrics.parquet") for f in (eager, compiled))
    assert len(a) == len(b) == 6
    # float32 through 6 Adam steps: the fused graph sums in another order (~1e-7 relative a step)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4)
    np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-3)
    wa, wb = (torch.load(f / "checkpoint.pt", weights_only=True) for f in (eager, compiled))
    assert wa["step"] == wb["step"] == 5  # the one validation, after the last step
    for name, p in wa["model"].items():
        torch.testing.assert_close(wb["model"][name], p, rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.integration
@pytest.mark.slow  # a cold inductor compile: minutes; .ci/run's slow stage runs it
def test_compiled_run_records_the_monitors_statistics_and_the_replayed_divergence(eager_and_compiled):
    """Steps 0 and 5 are statistics steps of the compiled graph; step 1 diverged and was replayed (eager,
    no grad) on that step's weights: the same rows, keys and values as the eager run's, and the same origin."""
    eager, compiled = eager_and_compiled["stable"][False], eager_and_compiled["stable"][True]
    key = ["step", "layer", "block", "stat"]
    a, b = (pd.read_parquet(f / "layer_stats.parquet").sort_values(key).reset_index(drop=True) for f in (eager, compiled))
    assert set(a["step"]) == {0, 1, 5} and "s_msg_frac" in set(a["stat"]) and "mu_norm_q" in set(a["stat"])
    pd.testing.assert_frame_equal(b[key], a[key])
    np.testing.assert_allclose(b["value"], a["value"], rtol=1e-3, atol=1e-5)
    first = {k: summary_of(f)["first_divergence"] for k, f in (("eager", eager), ("compiled", compiled))}
    assert first["eager"]["step"] == 1 and first["eager"]["criterion"] == "mu"
    value = first["eager"].pop("value")
    assert first["compiled"].pop("value") == pytest.approx(value, rel=1e-3)
    assert first["compiled"] == first["eager"]


@pytest.mark.integration
@pytest.mark.slow  # a cold inductor compile: minutes; .ci/run's slow stage runs it
def test_compiled_run_locates_the_nonfinite_origin_as_eager(eager_and_compiled):
    runs = eager_and_compiled["explodes"]
    summaries = {k: summary_of(f) for k, f in runs.items()}
    origin = summaries[False]["first_nonfinite"]
    assert summaries[False]["status"] == summaries[True]["status"] == "exploded"
    assert {k: origin[k] for k in ("step", "layer", "block", "tensor", "phase")} == {
        "step": 1, "layer": 3, "block": "mixing", "tensor": "q", "phase": "forward"}
    assert summaries[True]["first_nonfinite"] == origin
    # the failing step's statistics, replayed: the same rows, and where they are finite, the same values
    key = ["layer", "block", "stat"]
    a, b = (pd.read_parquet(f / "layer_stats.parquet").query("step == 1").sort_values(key).reset_index(drop=True)
            for f in (runs[False], runs[True]))
    pd.testing.assert_frame_equal(b[key], a[key])
    np.testing.assert_allclose(b["value"], a["value"], rtol=1e-2, atol=1e-4, equal_nan=True)


@pytest.mark.slow  # compiles a bare and a watched graph pair: minutes cold; .ci/run's slow stage runs it
def test_a_bare_compiled_forward_does_not_silence_a_later_monitor_in_the_process(inductor_cache):
    """dynamo does not guard on module hooks: a graph traced without a Monitor would pass a hooked forward's
    guards, and once cached first it would serve every later monitored step (no flags, no statistics, no
    forward NaN origin). PaiNN keeps the two apart."""
    import torch
    from support import random_system

    from painn_ablate.model.painn import PaiNN
    from painn_ablate.training.monitor import Monitor

    cfg = compose(COMPILED)
    pos, vel, charge, edges = (t.float() if t.is_floating_point() else t for t in random_system(full=False))
    torch.manual_seed(0)
    bare = PaiNN(cfg.model, compile=True)
    sum(o.sum() for o in bare(pos, vel, charge, edges)).backward()  # the bare graphs, compiled first
    watched = PaiNN(cfg.model, compile=True)
    with Monitor(watched, cfg.monitor) as mon:
        for full in (True, False):
            mon.begin_step(full)
            sum(o.sum() for o in watched(pos, vel, charge, edges)).backward()
            flags = mon.read_flags()
            assert {(layer, block) for (layer, block, tensor), *_ in flags if tensor == "q"} == {(0, "input")} | {
                (layer, block) for layer in range(1, cfg.model.L + 1) for block in ("interaction", "mixing")}
            assert bool(mon.collect()) is full
    bare.zero_grad()
    outs = bare(pos, vel, charge, edges)  # and back: the bare model's graphs again, no hooks to call
    assert all(torch.isfinite(o).all() for o in outs)


def test_compiled_graphs_are_kept_across_configurations_of_one_shape_and_not_across_shapes():
    """Trainer.keep_or_reset_graphs' key: seed, lr and stabilizer settings keep a worker's graphs (the guards
    tell those configurations apart); width, depth and batch size change the graphs' shapes."""
    from painn_ablate.model.painn import PaiNN
    from painn_ablate.training.trainer import graph_shapes

    def shapes(*overrides):
        cfg = compose([*COMPILED, *overrides])
        return graph_shapes(PaiNN(cfg.model), cfg)

    same = shapes()
    assert shapes("seed=3", "train.lr=0.1", "model=r2_full", "model.F=8", "model.L=3", "ablate=bounds") == same
    for other in ("model.F=16", "model.L=4", "train.batch_size=7"):
        assert shapes(other) != same, other


@pytest.mark.integration
def test_compile_false_and_short_auto_runs_are_eager(tiny):
    """model.compile=false never compiles; auto does not compile a 3-step run (config.compile_pays)."""
    assert run(tiny("train.steps=3", "model.compile=false", out="off"))["compiled"] is False
    assert run(tiny("train.steps=3", "model.compile=auto", out="auto"))["compiled"] is False
