"""Faults that end in one line and leave nothing mixed or half-written (issue 26): two writers into one
run folder, a full disk, broken pipes, refusals before any folder exists, and what a user reads."""

import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from support import TINY

from painn_ablate.cli import main
from painn_ablate.core.config import ABLATIONS, PRESETS, compose

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, timeout=300, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "painn_ablate.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env or ENV)


def tiny(tmp_path, *overrides):
    return [*TINY, f"data.cache_dir={tmp_path / 'cache'}", *overrides]


def last_line_exit_2(res, needle):
    """Exit 2, no traceback, and the error is one line (a sweep's progress bar may stand above it)."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("painn-ablate: error:")]
    return (res.returncode == 2 and "Traceback" not in res.stderr and len(errors) == 1 and needle in errors[0]
            and res.stderr.rstrip().endswith(errors[0].split("\r")[-1]))


def one_line_exit_2(res, needle):
    lines = res.stderr.strip().splitlines()
    return res.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr


def mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                         text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}): the test needs root "
                    "and a mount permission")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (unmounted at the end); `fill(free_kb)` leaves that much of it free."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=2m")

    def fill(free_kb: int) -> Path:
        filler = disk / "filler"
        filler.write_bytes(b"")
        free = shutil.disk_usage(disk).free
        filler.write_bytes(b"\0" * max(0, free - free_kb * 1024))
        return filler

    yield types.SimpleNamespace(path=disk, fill=fill)
    subprocess.run(["umount", "-l", str(disk)], check=False)


# ----------------------------------------------------------------------------- 1: two writers, one folder


@pytest.mark.integration
def test_two_trainings_into_one_folder_one_runs_the_other_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *tiny(tmp_path, "train.steps=1", f"out={tmp_path / 'warm'}")).returncode == 0  # data cached
    args = [sys.executable, "-m", "painn_ablate.cli", "train", *tiny(tmp_path, "train.steps=400", f"out={out}")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results  # before: both exited 0, one's config.yaml beside the other's summary.json
    refused = next(err for code, err in results if code == 2)
    winner = next(p for p, (code, _) in zip(procs, results) if code == 0)
    assert f"being written by pid {winner.pid} on {platform.node()}" in refused and "Traceback" not in refused
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pid"] == winner.pid and summary["status"] == "stable"
    assert not (out / ".lock").exists()  # released at the end


@pytest.mark.integration
def test_a_stale_lock_is_taken_over_a_live_one_refused(tmp_path):
    from painn_ablate.training.trainer import RunDirError, run

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getpid()} {platform.node()}-elsewhere\n")  # live for all we know
    with pytest.raises(RunDirError, match=f"being written by pid {os.getpid()} on {platform.node()}-elsewhere"):
        run(compose(tiny(tmp_path, "train.steps=1", f"out={out}")))
    (out / ".lock").write_text(f"{dead.pid} {platform.node()}\n")  # its process is gone: stale
    assert run(compose(tiny(tmp_path, "train.steps=1", f"out={out}")))["status"] == "stable"
    assert not (out / ".lock").exists()


@pytest.mark.integration
def test_a_folder_of_a_crashed_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 7\n")
    (out / "metrics.parquet").mkdir()
    (out / "metrics.parquet" / "part-000099.parquet").write_text("of the crashed run")
    res = cli("train", *tiny(tmp_path, "train.steps=2", f"out={out}"))
    assert one_line_exit_2(res, "holds config.yaml but no summary.json") and "--overwrite" in res.stderr
    assert (out / "config.yaml").read_text() == "seed: 7\n"  # before: silently overwritten
    res = cli("train", *tiny(tmp_path, "train.steps=2", f"out={out}"), "--overwrite")
    assert res.returncode == 0, res.stderr
    assert not (out / "metrics.parquet" / "part-000099.parquet").exists()  # no part of the old run stays
    assert json.loads((out / "summary.json").read_text())["steps_completed"] == 2


# ----------------------------------------------------------------------------- 2: a full disk


@pytest.mark.integration
def test_train_on_a_full_disk_ends_in_one_line_with_the_summary_finalized(tmp_path, small_disk):
    out = small_disk.path / "run"
    filler = small_disk.fill(150)  # room for config and summary, not for the checkpoint (~90 KB) and parts
    res = cli("train", *tiny(tmp_path, "train.steps=100", "train.val_every=5", "monitor.flush_every=5",
                             f"out={out}"))
    assert one_line_exit_2(res, f"out={out}: no space left on device")  # before: chained tracebacks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "error" and "no space left" in summary["error"]  # before: "running"
    assert not (out / ".lock").exists() and not list(out.rglob(".*.tmp-*"))
    filler.unlink()
    res = cli("train", *tiny(tmp_path, "train.steps=100", "train.val_every=5", f"out={out}"), "--overwrite")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "stable"


@pytest.mark.integration
@pytest.mark.parametrize("free_kb, where", [(400, "trial 0"), (120, "storage")])
def test_a_sweep_on_a_full_disk_ends_in_one_line_and_resumes_once_space_is_freed(tmp_path, small_disk, free_kb,
                                                                                 where):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("method: grid\nparameters:\n  seed: {values: [0, 1]}\n")
    assert cli("train", *tiny(tmp_path, "train.steps=1", f"out={tmp_path / 'warm'}")).returncode == 0
    out = small_disk.path / "sweep"
    args = ["sweep", sweep, *tiny(tmp_path, "train.steps=30", "train.val_every=5", "monitor.flush_every=5"),
            "--out", out, "--heartbeat", "1"]
    filler = small_disk.fill(free_kb)
    res = cli(*args)
    assert last_line_exit_2(res, f"{out}: no space left on device") and where in res.stderr, res.stderr
    filler.unlink()
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "2/2 trials done" in res.stdout


# ----------------------------------------------------------------------------- 5: refused before any folder


@pytest.mark.integration
@pytest.mark.parametrize("case", ["cuda", "scatter", "long_name", "long_out", "escape"])
def test_what_this_machine_cannot_run_is_refused_before_any_folder_exists(tmp_path, case):
    import torch

    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this torch sees a CUDA device")
    if case == "scatter" and _has("torch_scatter"):
        pytest.skip("torch_scatter is installed")
    override, needle = {
        "cuda": ("train.device=cuda", "no CUDA device"),
        "scatter": ("model.backend=scatter", "pip install 'painn-ablate[scatter]'"),
        "long_name": ("name=" + "x" * 300, "the file system allows"),
        "long_out": (f"out={tmp_path / ('y' * 300)}", "the file system allows"),
        "escape": ("name=../../x", "is a path, not a name"),
    }[case]
    res = cli("train", *tiny(tmp_path, "train.steps=1", override), cwd=tmp_path)
    assert one_line_exit_2(res, needle), res.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
    assert not (tmp_path.parent / "x").exists()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.integration
def test_a_read_only_cache_is_refused_before_the_data_are_generated(tmp_path):
    cache = tmp_path / "ro"
    mount_tmpfs(cache, "ro,size=1m")
    try:
        overrides = [o for o in TINY]
        res = cli("train", *overrides, "train.steps=1", f"out={tmp_path / 'run'}",
                  env={**ENV, "PAINN_ABLATE_CACHE": str(cache)})
        assert one_line_exit_2(res, f"data cache {cache} cannot be written") and "PAINN_ABLATE_CACHE" in res.stderr
        assert not (tmp_path / "run").exists()
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_report_plots_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "plots").write_text("a file")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.md"), "--plots", str(tmp_path / "plots")]) == 2
    assert "is a file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 7: workspace names


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_experiment_name_makes_a_workspace_the_library_accepts(preset):
    pytest.importorskip("wandb_workspaces")
    from painn_ablate.core.config import experiment_name, experiment_slug
    from painn_ablate.reporting import dashboard as db

    info = db.SweepInfo(study="stabilizers+x", project="p", entity=None, metric="val_pos_mse", swept=["ablate"],
                        n_layers=5)
    for ablate in ABLATIONS:
        for text in (experiment_name(preset, ablate), experiment_slug(preset, ablate)):
            # before: "Emojis are not allowed :(" for every add-one-in name ('+' is a math symbol)
            workspace = db.build(info, "e", experiment=text)
            db.spec(workspace)
            assert workspace.name == f"stabilizers plus x ({experiment_name(preset, ablate)})".replace(" + ", " plus ")


# ----------------------------------------------------------------------------- 13: run names


@pytest.mark.integration
def test_a_run_name_carries_the_ablation(tmp_path):
    res = cli("train", *tiny(tmp_path, "train.steps=1", "model=r2_full", "ablate=C_mu"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("r2_full-C_mu-seed0-")  # before: r2_full-seed0-...


# ----------------------------------------------------------------------------- 6: pipes


def _many_trials_study(folder: Path, n: int = 600) -> Path:
    """A sweep folder whose study has n finished trials (status prints a line each: more than a pipe holds)."""
    import optuna
    from optuna.distributions import IntDistribution

    folder.mkdir()
    study = optuna.create_study(study_name="many", storage=f"sqlite:///{folder / 'study.db'}")
    study.add_trials([optuna.trial.create_trial(
        params={"seed": i}, distributions={"seed": IntDistribution(0, n)}, value=0.1,
        user_attrs={"label": f"r2_full-seed{i}", "status": "stable", "model.preset": "r2_full", "ablate": "none",
                    "test_pos_mse": 0.1, "val_pos_mse": 0.1}) for i in range(n)])
    return folder


@pytest.mark.integration
def test_status_and_a_dry_run_into_head_end_quietly(tmp_path):
    folder = _many_trials_study(tmp_path / "sweep")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("method: grid\nparameters:\n  seed: {values: [%s]}\n" % ", ".join(map(str, range(3000))))
    for command in (f"status {folder}", f"sweep {sweep} --dry-run --out {tmp_path / 'o'}"):
        res = subprocess.run(["bash", "-c", f"{sys.executable} -m painn_ablate.cli {command} | head -1; "
                                            "echo \"exit ${PIPESTATUS[0]}\""], capture_output=True, text=True,
                             timeout=300, env=ENV)
        assert res.stderr == "", res.stderr  # before: BrokenPipeError and its traceback
        lines = res.stdout.splitlines()
        assert len(lines) == 2 and lines[1] in ("exit 0", "exit 141")


# ----------------------------------------------------------------------------- 10: what a sweep found


@pytest.mark.integration
def test_status_prints_the_per_experiment_table_above_the_trials(tiny_root, capsys):
    assert main(["status", str(tiny_root / "sweep")]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "blow-ups" in line)
    assert "95% CI" in header and "median test_pos_mse (stable)" in header
    assert out.index("blow-ups") < out.index("first non-finite")  # above the per-trial table
    rows = {re.split(r"\s{2,}", line.strip())[0]: line for line in out.splitlines()[out.splitlines().index(header) + 1:][:3]}
    assert set(rows) == {"original", "original + alpha", "original + clamps"}
    assert all("/1 " in line and "%" in line for line in rows.values())


@pytest.mark.integration
def test_the_end_of_a_sweep_prints_each_experiment_and_the_next_commands(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("method: grid\nparameters:\n  model: {value: r2_full}\n  ablate: {values: [none, C_mu]}\n"
                     "  seed: {values: [0, 1]}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), *tiny(tmp_path, "train.steps=2"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "r2_full - C_mu" in text and "0/2" in text and "95% CI" in text  # before: only the best trial
    for command in ("status", "report", "export", "dashboard"):
        assert f"painn-ablate {command} {out}" in text


def test_the_time_left_counts_the_steps_trials_run_not_trials_per_second():
    import optuna
    from optuna.distributions import IntDistribution

    from painn_ablate.sweep.progress import progress

    study = optuna.create_study()
    dist = {"seed": IntDistribution(0, 9)}
    done = [({"status": "exploded", "steps_completed": 1, "wall_seconds": 0.1}, 0),
            ({"status": "stable", "steps_completed": 100, "wall_seconds": 10.0}, 1)]
    study.add_trials([optuna.trial.create_trial(params={"seed": s}, distributions=dist, value=1.0, user_attrs=a)
                      for a, s in done])
    for seed in (2, 3):
        study.enqueue_trial({"seed": seed})
    p = progress(study, total=4, default_steps=100)
    assert p.steps_left == 200 and p.seconds_per_step == pytest.approx(10.1 / 101)
    assert p.eta_seconds() == pytest.approx(20.0)  # trials per second would say 2 x 5 s: half of it
    assert p.eta_seconds(workers=2) == pytest.approx(10.0)


# ----------------------------------------------------------------------------- 11: trial lines


def test_trial_lines_say_what_fired_then_where():
    from types import SimpleNamespace

    from painn_ablate.reporting.text import trial_line

    def line(**attrs):
        return trial_line(SimpleNamespace(number=3, state=SimpleNamespace(name="COMPLETE"),
                                          user_attrs={"label": "original-seed0", **attrs}), "val_pos_mse")

    exploded = line(status="exploded", first_nonfinite={"step": 1, "layer": 4, "block": "interaction",
                                                        "tensor": "loss", "phase": "loss"})
    assert exploded == "#3 original-seed0  exploded: non-finite loss at step 1, first in layer 4 interaction"
    diverged = line(status="diverged", first_divergence={"step": 2, "layer": 5, "block": "mixing",
                                                         "stat": "mu_norm_max", "value": 2.2e3, "criterion": "loss"})
    assert diverged == ("#3 original-seed0  diverged: training loss over its bound (monitor.diverge_loss_factor) at "
                        "step 2; located at layer 5 mixing, mu_norm_max 2.2e+03")


# ----------------------------------------------------------------------------- 12: optuna-dashboard


@pytest.mark.integration
def test_optuna_dashboard_tells_the_outcomes_apart(tiny_root):
    """What optuna-dashboard's API sends for each trial of a real study: the outcome in the note, 0/1 outcome
    attributes and log10 of the value it can plot (before: every trial just 'Complete', inf not drawn)."""
    import threading
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    pytest.importorskip("optuna_dashboard")
    from optuna_dashboard import wsgi

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", 0, wsgi(f"sqlite:///{tiny_root / 'sweep' / 'study.db'}"), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        (summary,) = json.loads(urllib.request.urlopen(f"{base}/api/studies", timeout=30).read())["study_summaries"]
        study = json.loads(urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}", timeout=60).read())
        assert "Reading this study" in study["note"]["body"]
        for t in study["trials"]:
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            status = attrs["status"]
            assert t["note"]["body"].startswith(f"## {status}")
            assert attrs["blew_up"] == str(int(status in ("diverged", "exploded")))  # sent as JSON text
            if status == "exploded":
                assert "non-finite" in t["note"]["body"] and t["constraints"] == [1.0]
            if status == "stable":
                assert float(attrs["log10_value"]) == pytest.approx(math.log10(t["values"][0]))
        sortable = {a["key"] for a in study["union_user_attrs"] if a["sortable"]}
        assert {"blew_up", "exploded", "diverged", "log10_value"} <= sortable  # History's y axis offers them
    finally:
        server.shutdown()


# ----------------------------------------------------------------------------- 3, 4: records and figures


@pytest.mark.integration
def test_an_unreadable_layer_stats_part_is_skipped_with_one_warning(tmp_path, caplog):
    from painn_ablate.training.trainer import run

    for name in ("a", "b"):
        run(compose(tiny(tmp_path, "train.steps=4", "monitor.every=1", "monitor.flush_every=2",
                         f"out={tmp_path / 'runs' / name}")))
    bad = sorted((tmp_path / "runs" / "a" / "layer_stats.parquet").glob("part-*.parquet"))[1]
    bad.write_bytes(b"PAR1 not a parquet part PAR1")
    for args in (["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md"), "--plots", str(tmp_path / "p")],
                 ["export", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]):
        caplog.clear()
        assert main(args) == 0  # before: a pyarrow traceback
        warned = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
        assert warned and all("skipping unreadable record part" in w for w in warned)
    assert list((tmp_path / "p").glob("*.png"))


KILLED_MID_WRITE = """
import os, signal, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from painn_ablate.reporting.plots import save_figure

real = Figure.savefig

def half_then_killed(self, fname, *args, **kwargs):
    real(self, fname, *args, **kwargs)
    with open(fname, "r+b") as fh:
        fh.truncate(100)  # the bytes written when the kill came
    os.kill(os.getpid(), signal.SIGKILL)

Figure.savefig = half_then_killed
fig, ax = plt.subplots()
ax.plot([0, 1], [1, 0])
save_figure(fig, sys.argv[1])
"""


@pytest.mark.integration
def test_a_figure_killed_mid_write_leaves_the_old_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from painn_ablate.reporting.plots import save_figure

    target = tmp_path / "plots" / "outcomes.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    old = save_figure(fig, target).read_bytes()
    res = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)], capture_output=True, env=ENV,
                         timeout=120)
    assert res.returncode == -9
    assert target.read_bytes() == old  # before: a 100-byte truncated PNG


# ----------------------------------------------------------------------------- 8: smaller ones


def test_probe_depths_given_twice_are_refused(capsys):
    assert main(["probe", *TINY, "--seeds", "1", "--depths", "2,2"]) == 2  # before: seeds counted twice
    assert "2 given twice" in capsys.readouterr().err


def test_epochs_and_steps_together_are_refused(tmp_path, capsys):
    assert main(["train", *tiny(tmp_path, "train.epochs=1", "train.steps=5", f"out={tmp_path / 'r'}")]) == 2
    assert "train.epochs and train.steps are both given" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_config_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "config.yaml"
    bad.write_text("model:\n  F: many\n")
    assert main(["train", "--config", str(bad), f"out={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert f"--config {bad}:" in err and "model.F" in err


def test_a_corrupt_cache_file_says_it_can_be_deleted(tmp_path):
    from painn_ablate.data.datasets import DataError, load_dataset

    cfg = compose(tiny(tmp_path)).data
    load_dataset(cfg)
    (npz,) = (tmp_path / "cache").glob("*/train.npz")
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(DataError, match=f"cache file: delete {npz.parent} and it is generated again"):
        load_dataset(cfg)


def test_a_graph_or_cutoff_that_leaves_no_edges_is_warned_about(tmp_path, caplog):
    from painn_ablate.data.datasets import load_dataset
    from painn_ablate.training.trainer import warn_if_out_of_reach

    splits = load_dataset(compose(tiny(tmp_path, "data.graph=radius", "data.radius=1e-6")).data)
    assert any("without any edge" in r.getMessage() and "data.radius" in r.getMessage() for r in caplog.records)
    caplog.clear()
    warn_if_out_of_reach(load_dataset(compose(tiny(tmp_path)).data)["train"], r_cut=1e-6)
    assert any("model.r_cut" in r.getMessage() for r in caplog.records)
    assert splits["train"].edges.ptr[-1] == 0


def test_resuming_an_edited_sweep_names_the_parameter_that_changed(tmp_path):
    from support import write_sweep

    from painn_ablate.sweep import optuna_engine as sw
    from painn_ablate.sweep import spec as sf

    storage = sw.open_storage(sw.sqlite_url(tmp_path))
    sw.prepare_study(sf.load_sweep(write_sweep(tmp_path, {"seed": {"values": [0, 1]}}), TINY), storage)
    edited = sf.load_sweep(write_sweep(tmp_path, {"seed": {"values": [0, 1, 2]}}), TINY)
    with pytest.raises(sf.SweepError, match=r"parameter 'seed': \{\"values\": \[0, 1\]\} -> \{\"values\": \[0, 1, 2\]\}"):
        sw.prepare_study(edited, storage)


@pytest.mark.integration
def test_a_dry_run_of_a_10000_point_grid_answers_in_seconds_with_count_and_time(tmp_path, capsys):
    sweep = tmp_path / "big.yaml"
    sweep.write_text("method: grid\nparameters:\n  seed: {values: [%s]}\n  train.lr: {values: [%s]}\n"
                     % (", ".join(map(str, range(100))), ", ".join(f"{1e-4 * (i + 1):.6f}" for i in range(100))))
    start = time.perf_counter()
    assert main(["sweep", str(sweep), *TINY, "--dry-run", "--out", str(tmp_path / "o")]) == 0
    seconds = time.perf_counter() - start
    head = capsys.readouterr().out.splitlines()[0]
    assert "10000 trials" in head and "estimated time at most" in head
    assert seconds < 60, seconds  # before: over 5 minutes (every point composed)


@pytest.mark.integration
def test_export_of_a_running_sweep_says_it_is_incomplete_and_a_failing_one_leaves_no_out(tiny_root, tmp_path,
                                                                                       capsys):
    import optuna

    shutil.copytree(tiny_root / "sweep", tmp_path / "sweep", ignore=shutil.ignore_patterns("trials"))
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")
    study.enqueue_trial({"ablate": "none"})
    assert main(["export", str(tmp_path / "sweep"), "--out", str(tmp_path / "results")]) == 0
    assert "is incomplete: 0 running and 1 waiting of 4 trials" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()  # before: an empty --out was left


@pytest.mark.integration
def test_dashboard_out_names_a_folder_that_is_created(tiny_root, tmp_path, capsys):
    pytest.importorskip("wandb_workspaces")
    out = tmp_path / "new" / "deeper"
    assert main(["dashboard", str(tiny_root / "sweep"), "--offline", "--out", str(out),
                 "--experiment", "original+alpha"]) == 0  # before: FileNotFoundError, then the Emoji refusal
    spec = json.loads((out / "dashboard.json").read_text())
    assert "original plus alpha" in json.dumps(spec)
