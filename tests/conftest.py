"""Fixtures the test files share; plain helpers are in support.py."""

import os
from pathlib import Path

import pytest
import torch
from support import FAST, TINY, Killed

from painn_ablate.core.config import compose
from painn_ablate.training.trainer import run


def tiny(root: Path, *overrides: str) -> list[str]:
    # the session's cache (session_env), named: the ablation notebook reads data.cache_dir from a run's config
    return [*TINY, f"data.cache_dir={os.environ['PAINN_ABLATE_CACHE']}", *overrides]


def sweep_file(path: Path) -> Path:
    path.write_text("method: grid\nmetric: {name: val_pos_mse, goal: minimize}\nparameters:\n"
                    "  model: {value: original}\n  ablate: {values: [none, alpha, clamps]}\n  seed: {value: 0}\n")
    return path


@pytest.fixture(scope="session", autouse=True)
def session_env(tmp_path_factory):
    """One data cache for the whole session, so that each tiny data set is generated once (subprocesses
    inherit $PAINN_ABLATE_CACHE; a test that sets data.cache_dir keeps its own), and one torch thread:
    tiny models run faster on one, and the CPU is shared (OMP_NUM_THREADS=1 for subprocesses, unless set)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PAINN_ABLATE_CACHE", str(tmp_path_factory.mktemp("data-cache")))
    mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """runs/: original x2 (explode), r2_full x2 (stable), one killed run; sweep/: a 3-trial Optuna grid."""
    from painn_ablate.sweep import optuna_engine as sw
    from painn_ablate.sweep import spec as sf

    root = tmp_path_factory.mktemp("tiny")
    for preset in ("original", "r2_full"):
        for seed in (0, 1):
            out = root / "runs" / f"{preset}-s{seed}"
            run(compose(tiny(root, f"model={preset}", f"seed={seed}", *FAST, f"out={out}")))

    def interrupt(step, info):
        if step >= 5:
            raise Killed

    with pytest.raises(Killed):
        run(compose(tiny(root, "model=r2_full", "train.steps=1000", "train.val_every=2", "monitor.flush_every=2",
                         f"out={root / 'runs' / 'killed'}")), should_stop=interrupt)
    spec = sf.load_sweep(sweep_file(root / "tiny.yaml"), tiny(root, "train.lr=0.05", "train.steps=8",
                                                              "train.val_every=4", "monitor.every=2"))
    sw.run_sweep(spec, out=root / "sweep")
    return root
