"""Helpers the test files share (plain functions and constants; the fixtures are in conftest.py).

pytest puts this folder on sys.path (rootdir-relative, "prepend" import mode), so test files
`from support import ...` it; no test file imports from another.
"""

import contextlib
import functools
import io
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from hypothesis import strategies as st

from painn_ablate.core.config import compose
from painn_ablate.model.painn import PaiNN

# ----------------------------------------------------------------------------- runs

# A run of a few seconds: tiny model, tiny data, no W&B, no progress bar, eager (model.compile=auto would
# compile the long runs the kill tests start; the compiled path has its own tests in test_train.py).
TINY = ["model.F=16", "model.L=5", "model.n_rbf=8", "train.batch_size=10", "data.n_train=40", "data.n_val=20",
        "data.n_test=20", "tracking.wandb=false", "tracking.progress=false", "model.compile=false"]
# Original PaiNN at this learning rate reaches non-finite q in the mixing block at step 1 (checked on seeds 0, 1).
EXPLODING = ["model=original", "train.lr=0.05", "train.steps=20"]
# The same learning rate in a short run that records statistics often (r2_full stays stable).
FAST = ["train.lr=0.05", "train.steps=10", "train.val_every=5", "monitor.every=2"]


@dataclass
class Result:
    """What `painn-ablate ARGS` left: its exit code and what it printed (subprocess.CompletedProcess's names)."""

    returncode: int
    stdout: str
    stderr: str


def cli(*args, cwd=None) -> Result:
    """`painn-ablate ARGS` run in this process, as `python -m painn_ablate.cli` would (no interpreter and
    torch start-up per call): the exit code (SystemExit included), stdout, and stderr with the warnings
    the CLI logs, in the CLI's format. Tests of signals, kills, spawned workers and process faults use
    subprocesses instead."""
    from painn_ablate.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # a fresh process's logging.basicConfig: root handlers exist here
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logging.INFO if "-v" in args or "--verbose" in args else logging.WARNING
    handler.setLevel(level)
    root, sigterm = logging.getLogger(), signal.getsignal(signal.SIGTERM)
    root_level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, root_level or logging.WARNING))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                contextlib.chdir(cwd or os.getcwd()):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        signal.signal(signal.SIGTERM, sigterm)  # main() installs its own
    return Result(code or 0, out.getvalue(), err.getvalue())


class Killed(Exception):
    """Stands in for SIGINT: ends a run mid-way through the same code path as Ctrl-C."""


# ----------------------------------------------------------------------------- models

# float64 throughout: equivariance errors are then ~1e-12 relative; 1e-9 leaves room for the
# accumulated rounding of 5 layers without hiding a real break (which shows as O(1) errors).
ATOL = 1e-9

TOGGLES = {
    "model.aggregation": st.sampled_from(["sum", "mean"]),
    "model.stabilizers.g": st.sampled_from([1.0, 0.5]),
    "model.stabilizers.s_msg": st.sampled_from(["null", "0.5", "5"]),
    "model.stabilizers.s_mix": st.sampled_from(["null", "0.5", "5"]),
    "model.stabilizers.alpha_inter": st.sampled_from([1.0, 0.5]),
    "model.stabilizers.alpha_mix": st.sampled_from([1.0, 0.5]),
    "model.stabilizers.C_s": st.sampled_from(["null", "0.1", "10"]),
    "model.stabilizers.C_v": st.sampled_from(["null", "0.1", "10"]),
    "model.stabilizers.C_q": st.sampled_from(["null", "0.1", "100"]),
    "model.stabilizers.C_mu": st.sampled_from(["null", "0.1", "20"]),
    "model.shared_filters": st.booleans(),
}
MECHANISMS = {
    "model.stabilizers.coupling": st.booleans(),
    "model.stabilizers.s_coupling": st.sampled_from(["null", "0.5", "5"]),
    "model.stabilizers.s_gating": st.sampled_from(["null", "0.5", "5"]),
    "model.stabilizers.mu0": st.sampled_from(["velocity", "zero"]),
    "model.stabilizers.mu0_scale": st.sampled_from([1.0, 0.1]),
}
OPTIONS = {"model.edge_charge": st.booleans()}  # EGNN's charge product as an edge input of the filter
FAIRCHEM = {  # fairchem's normalisation and fixed scales
    "model.stabilizers.q_layernorm": st.booleans(),
    "model.stabilizers.scaled_silu": st.booleans(),
    "model.stabilizers.vgate_scale": st.sampled_from([1.0, 0.5773502691896257]),
    "model.stabilizers.vmsg_inv_sqrt_f": st.booleans(),
    "model.stabilizers.dot_inv_sqrt_f": st.booleans(),
    "model.stabilizers.q_residual_scale": st.sampled_from([1.0, 0.7071067811865476]),
    "model.stabilizers.mix_dq_scale": st.sampled_from([1.0, 0.7071067811865476]),
}
stabilizer_sets = st.fixed_dictionaries(TOGGLES)  # the stabilizers alone (the reference transcription's scope)
toggle_sets = st.fixed_dictionaries({**TOGGLES, **MECHANISMS, **OPTIONS, **FAIRCHEM})


def tiny_model(overrides=(), seed=0, F=8, L=3) -> PaiNN:
    cfg = compose([f"model.F={F}", f"model.L={L}", "model.n_rbf=6", "model.r_cut=4.0", *overrides])
    torch.manual_seed(seed)
    return PaiNN(cfg.model).double()


def random_system(n_graphs=3, n=5, seed=0, full=True):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n_graphs * n, 3, generator=g, dtype=torch.float64) * 1.5
    vel = torch.randn(n_graphs * n, 3, generator=g, dtype=torch.float64) * 0.5
    charge = torch.randint(0, 2, (n_graphs * n,), generator=g).double() * 2 - 1
    src, dst = [], []
    for b in range(n_graphs):
        for i in range(n):
            for j in range(n):
                # full graph; otherwise drop some edges so degrees differ between nodes
                if i != j and (full or (i + 2 * j + b) % 3):
                    src.append(b * n + j)
                    dst.append(b * n + i)
    return pos, vel, charge, torch.tensor([src, dst])


def random_rotation(seed: int, reflect: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))
    if torch.det(Q) < 0:
        Q[:, 0] = -Q[:, 0]
    return -Q if reflect else Q  # -Q: an improper rotation (det -1)


def overrides_of(toggles: dict) -> list[str]:
    return [f"{k}={v}" for k, v in toggles.items()]



def assert_equivariant(model: PaiNN, system, symmetry: str, seed: int = 0) -> None:
    """model(pos, vel, charge, edges) -> (pos_dt, vel_next) transforms with the input under `symmetry`:
    rotation or reflection (both outputs rotate), translation (both unchanged) or permutation (both
    permute); float64 inputs, errors within ATOL."""
    pos, vel, charge, edges = system
    out = model(pos, vel, charge, edges)
    if symmetry in ("rotation", "reflection"):
        R = random_rotation(seed + 1, reflect=symmetry == "reflection")
        moved, expected = model(pos @ R.T, vel @ R.T, charge, edges), [a @ R.T for a in out]
    elif symmetry == "translation":
        shift = torch.randn(1, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10
        moved, expected = model(pos + shift, vel, charge, edges), out
    elif symmetry == "permutation":
        n = pos.shape[0]
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        while torch.equal(perm, torch.arange(n)):  # make sure it is not the identity
            perm = torch.randperm(n, generator=g)
        inverse = torch.argsort(perm)  # new index of old node k is inverse[k]
        moved, expected = model(pos[perm], vel[perm], charge[perm], inverse[edges]), [a[perm] for a in out]
    else:
        raise ValueError(f"unknown symmetry {symmetry!r}")
    for a, b in zip(expected, moved):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-7)


# ----------------------------------------------------------------------------- sweeps and W&B

SWEEP_COMMAND = ["${env}", "painn-ablate", "train", "${args_no_hyphens}"]


def write_sweep(folder: Path, parameters: dict, method: str = "grid", stem: str = "tiny", **top) -> Path:
    path = folder / f"{stem}.yaml"
    body = {"program": "painn-ablate", "command": SWEEP_COMMAND, "method": method,
            "metric": {"name": "val_pos_mse", "goal": "minimize"}, "parameters": parameters, **top}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@functools.cache
def shipped_sweep(path: Path):
    """`load_sweep(path)` of a shipped sweep file, loaded once per session and shared (do not modify it):
    loading composes every grid point, hundreds of configs, and several tests read the same files."""
    from painn_ablate.sweep.spec import load_sweep

    return load_sweep(path)


WANDB = str(Path(sys.executable).parent / "wandb")


def inspect(run_dir: Path) -> dict:
    """The summary of the one offline W&B run under run_dir, read back by `wandb leet inspect`."""
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    res = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(offline[0])],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)
