"""Bad input refused up front, one corrupt record never sinks a report (issue 15: items 1, 3, 4)."""

import subprocess
import sys
from pathlib import Path

import pytest
from support import TINY, cli  # cli: in this process; the signal and kill tests start their own


def default_sigint():
    """In the child: SIGINT's default disposition (a shell's background job starts with it ignored)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_line_exit_2(res, needle):
    lines = res.stderr.strip().splitlines()
    return res.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr


@pytest.mark.parametrize("override, key", [("train.lr=inf", "train.lr"), ("model.stabilizers.g=inf", "model.stabilizers.g"),
                                           ("train.weight_decay=inf", "train.weight_decay"),
                                           ("model.r_cut=.inf", "model.r_cut"), ("train.lr=nan", "train.lr")])
def test_non_finite_config_values_are_bad_input_not_an_explosion(tmp_path, override, key):
    res = cli("train", *TINY, f"data.cache_dir={tmp_path / 'c'}", f"out={tmp_path / 'x'}", override)
    assert one_line_exit_2(res, key) and "finite" in res.stderr
    assert not (tmp_path / "x").exists()


def test_sweep_values_must_be_finite(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("method: grid\nparameters:\n  train.lr: {values: [0.001, .inf]}\n")
    assert one_line_exit_2(cli("sweep", str(f), "--dry-run"), "train.lr")


def test_duplicate_keys_in_a_sweep_file_are_refused_with_both_lines(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("method: grid\nparameters:\n  seed: {values: [0]}\n  seed: {values: [1]}\n")
    res = cli("sweep", str(f), "--dry-run")
    assert one_line_exit_2(res, "'seed' is given twice, on lines 3 and 4")


def test_grid_points_composing_to_the_same_config_are_refused(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("method: grid\nparameters:\n  model: {value: r2_full}\n  ablate: {values: [s_msg, s_msg+s_msg]}\n")
    assert one_line_exit_2(cli("sweep", str(f), "--dry-run"), "compose to the same config")


@pytest.mark.integration
@pytest.mark.parametrize("corrupt", ["{}", '{"status": "sta', "not json at all"])
def test_one_corrupt_run_folder_is_skipped_with_a_warning_and_the_rest_reported(tmp_path, corrupt):
    for name in ("a", "b"):
        res = cli("train", *TINY, "train.steps=2", f"out={tmp_path / 'runs' / name}")
        assert res.returncode == 0, res.stderr
    (tmp_path / "runs" / "a" / "summary.json").write_text(corrupt)
    res = cli("report", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md"))
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "skipping" in line]
    assert len(warnings) == 1 and str(tmp_path / "runs" / "a") in warnings[0]
    text = (tmp_path / "r.md").read_text()
    assert "out=runs/b-rerun" in text and "out=runs/a-rerun" not in text  # b is reported, a is not


@pytest.mark.parametrize("content", [b"", b"not a database at all"])
def test_status_never_writes_to_what_it_reads(tmp_path, content):
    db = tmp_path / "sweep" / "study.db"
    db.parent.mkdir()
    db.write_bytes(content)
    res = cli("status", str(db.parent))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert db.read_bytes() == content  # before: Optuna wrote its 114 KB schema into the 0-byte file


@pytest.mark.integration
@pytest.mark.parametrize("given, seen", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_lets_idle_openmp_threads_sleep_unless_told_otherwise(given, seen):
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    res = subprocess.run([sys.executable, "-c", "import os, painn_ablate.cli; print(os.environ['OMP_WAIT_POLICY'])"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.stdout.strip() == seen


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_is_refused_before_any_work(tmp_path, where):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "run" if where == "under_a_file" else Path("/proc/painn-ablate-test/run")
    res = cli("train", *TINY, f"data.cache_dir={tmp_path / 'c'}", f"out={out}")
    assert one_line_exit_2(res, "cannot be written")
    assert not (tmp_path / "c").exists()  # refused before the data was generated
    sweep = tmp_path / "s.yaml"
    sweep.write_text("method: grid\nparameters:\n  seed: {values: [0]}\n")
    assert one_line_exit_2(cli("sweep", str(sweep), "--out", str(out), "--dry-run"), "cannot be written")


@pytest.mark.integration
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_run_is_finalized_with_consistent_counts(tmp_path, sig):
    import json
    import os
    import signal
    import time

    import pandas as pd

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "painn_ablate.cli", "train", *TINY, "model=r2_full",
                             "train.steps=100000", "monitor.flush_every=7", f"out={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline:
        summary = out / "summary.json"
        if summary.exists() and json.loads(summary.read_text())["steps_completed"] >= 10:
            break
        time.sleep(0.1)
    os.kill(proc.pid, getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["steps_completed"] == len(pd.read_parquet(out / "metrics.parquet")) >= 10


def test_a_bad_data_dir_fails_the_dry_run_and_leaves_no_study(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("method: grid\nparameters:\n  seed: {values: [0]}\n")
    for extra in (["--dry-run"], []):
        res = cli("sweep", str(sweep), f"data.dir={tmp_path / 'missing'}", "--out", str(tmp_path / "out"), *extra)
        assert one_line_exit_2(res, "data.dir")
    assert not (tmp_path / "out").exists()  # before: an empty study.db was left behind


@pytest.mark.integration
def test_an_interrupted_sweep_gives_its_trial_back_and_prints_the_resume_command(tmp_path):
    import os
    import signal
    import time

    sweep = tmp_path / "s.yaml"
    sweep.write_text("method: grid\nparameters:\n  seed: {values: [0, 1]}\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "painn_ablate.cli", "sweep", str(sweep), *TINY, "train.steps=100000",
                             "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("trials/*/metrics.parquet")):
        time.sleep(0.2)
    time.sleep(1)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"Resume with: painn-ablate sweep {sweep}" in err and f"--out {out}" in err
    status = cli("status", str(out))
    assert "interrupted" in status.stdout


@pytest.mark.parametrize("key, scale", [("charge", 1e30), ("pos", 1e20)])
def test_data_beyond_float32_arithmetic_is_bad_input_naming_file_array_and_value(tmp_path, key, scale):
    import numpy as np

    from painn_ablate.data import datasets as data

    rng = np.random.default_rng(0)
    for name in data.SPLITS:
        arrays = {k: rng.standard_normal((4, 5, 3)) for k in ("pos", "vel", "pos_next", "vel_next")}
        arrays["charge"] = np.ones((4, 5))
        if name == "val":
            arrays[key] = arrays[key] * scale
        (tmp_path / "byo").mkdir(exist_ok=True)
        np.savez(tmp_path / "byo" / f"{name}.npz", **{k: v.astype(np.float32) for k, v in arrays.items()})
    res = cli("train", *TINY, f"data.dir={tmp_path / 'byo'}", f"out={tmp_path / 'x'}")
    assert one_line_exit_2(res, "val.npz") and f"key '{key}'" in res.stderr and "e+" in res.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_a_killed_run_loads_as_lost_not_running(tmp_path):
    import json
    import os
    import signal
    import time

    from painn_ablate.analysis import loaders as analysis

    out = tmp_path / "runs" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "painn_ablate.cli", "train", *TINY, "train.steps=100000",
                             "monitor.flush_every=5", f"out={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "summary.json").exists() and json.loads((out / "summary.json").read_text())["steps_completed"] >= 5:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "summary.json").read_text())["status"] == "running"  # it could not say otherwise
    assert analysis.load_runs(tmp_path / "runs")["status"].tolist() == ["lost"]


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    from painn_ablate.core import files

    target = tmp_path / "result.json"
    files.write_text(target, "old")

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic(target, half_then_crash)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
