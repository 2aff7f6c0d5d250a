"""Faults that end in one line and leave nothing mixed or half-written (issue 26): two writers into one
run folder, a full disk, broken pipes, refusals before any folder exists, and what a user reads."""

import json
import os
import platform
import shutil
import subprocess
import sys
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
