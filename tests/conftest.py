"""Fixtures the test files share; plain helpers are in support.py."""

from pathlib import Path

import pytest
import torch
from support import FAST, TINY, Killed

from painn_ablate.core.config import compose
from painn_ablate.training.trainer import run


def tiny(root: Path, *overrides: str) -> list[str]:
    return [*TINY, f"data.cache_dir={root / 'cache'}", *overrides]


def sweep_file(path: Path) -> Path:
    path.write_text("method: grid\nmetric: {name: val_pos_mse, goal: minimize}\nparameters:\n"
                    "  model: {value: original}\n  ablate: {values: [none, alpha, clamps]}\n  seed: {value: 0}\n")
    return path


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """runs/: original x2 (explode), r2_full x2 (stable), one killed run; sweep/: a 3-trial Optuna grid."""
    from painn_ablate.sweep import optuna_engine as sw
    from painn_ablate.sweep import spec as sf

    root = tmp_path_factory.mktemp("tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and the CPU is shared
    try:
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
    finally:
        torch.set_num_threads(threads)
    return root
