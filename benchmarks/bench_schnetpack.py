"""Training step of schnetpack's PaiNN representation on a workload saved by bench.py.

    .bench-venv/bin/python benchmarks/bench_schnetpack.py WORKLOAD.pt --F 64 --L 5 [--threads 2]

Runs in the separate .bench-venv (see benchmarks/schnetpack_env.sh). The step matches
painn-ablate's: schnetpack.representation.PaiNN(n_atom_basis=F, n_interactions=L,
BesselRBF(n_rbf, r_cut) -- the same sin(n pi r / r_cut) / r basis as ours -- and
CosineCutoff(r_cut)), two bias-free linear vector heads on the final mu for pos_dt and
vel_next, the same MSE loss, and one fused Adam step (painn-ablate's make_optimizer). r_ij
is computed from the positions inside the step, as painn-ablate does. Prints one JSON line:
per-round process-CPU and wall ms per step. With --painn-ablate PRESET, painn-ablate's model
runs the same model + loss + Adam step interleaved in this process: a ratio free of the drift
between processes (the Trainer's step adds the gradient norm, the monitor and one sync).
"""

from __future__ import annotations

import argparse
import json
import time
import typing

import torch
import torch.utils.data.dataloader as _dataloader

# schnetpack 2.1.1 imports this typing-only name, which torch 2.13 no longer defines.
if not hasattr(_dataloader, "T_co"):
    _dataloader.T_co = typing.TypeVar("T_co", covariant=True)

import schnetpack as spk  # noqa: E402
import schnetpack.properties as props  # noqa: E402


def keep_freed_memory() -> bool:
    """painn_ablate.core.process.keep_freed_memory, copied: this environment lacks painn_ablate."""
    import ctypes
    import platform

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(-3, 32 * 2**20)) and bool(libc.mallopt(-1, 2**30))  # M_MMAP_, M_TRIM_THRESHOLD


class SchnetpackPaiNN(torch.nn.Module):
    def __init__(self, F: int, L: int, n_rbf: int, r_cut: float):
        super().__init__()
        self.representation = spk.representation.PaiNN(
            n_atom_basis=F, n_interactions=L, radial_basis=spk.nn.BesselRBF(n_rbf=n_rbf, cutoff=r_cut),
            cutoff_fn=spk.nn.CosineCutoff(r_cut))
        self.head_pos = torch.nn.Linear(F, 1, bias=False)
        self.head_vel = torch.nn.Linear(F, 1, bias=False)

    def forward(self, Z, pos, idx_i, idx_j):
        inputs = {props.Z: Z, props.Rij: pos.index_select(0, idx_j) - pos.index_select(0, idx_i),
                  props.idx_i: idx_i, props.idx_j: idx_j}
        mu = self.representation(inputs)["vector_representation"]  # (N, 3, F)
        return self.head_pos(mu).squeeze(-1), self.head_vel(mu).squeeze(-1)


def make_step(model: torch.nn.Module, forward, w: dict):
    """forward -> (pos_dt, vel_next), MSE loss, backward and a fused Adam step (painn-ablate's optimizer)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step():
        pos_dt, vel_next = forward()
        loss = torch.mean((pos_dt - w["pos_dt"]) ** 2) + torch.mean((vel_next - w["vel_next"]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload")
    ap.add_argument("--F", type=int, default=64)
    ap.add_argument("--L", type=int, default=5)
    ap.add_argument("--n-rbf", type=int, default=20)
    ap.add_argument("--r-cut", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--keep-freed-memory", action="store_true", help="the allocator setting painn-ablate's Trainer uses")
    ap.add_argument("--painn-ablate", action="append", default=[], metavar="PRESET",
                    help="also time painn-ablate's model (this preset; model + loss + Adam, no monitor or clip),"
                         " interleaved with schnetpack's in this process")
    args = ap.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    w = torch.load(args.workload)
    Z = (w["charge"] > 0).long() + 1  # two species, as the two charges
    idx_j, idx_i = w["edge_index"][0], w["edge_index"][1]
    torch.manual_seed(0)
    model = SchnetpackPaiNN(args.F, args.L, args.n_rbf, args.r_cut)
    steps = {"schnetpack": make_step(model, lambda: model(Z, w["pos"], idx_i, idx_j), w)}
    for preset in args.painn_ablate:
        from painn_ablate.core.config import compose
        from painn_ablate.model.painn import PaiNN

        cfg = compose([f"model={preset}", f"model.F={args.F}", f"model.L={args.L}", f"model.n_rbf={args.n_rbf}",
                       f"model.r_cut={args.r_cut}"])
        torch.manual_seed(0)
        ours = PaiNN(cfg.model)
        steps[preset] = make_step(ours, lambda m=ours: m(w["pos"], w["vel"], w["charge"], w["edge_index"]), w)

    for step in steps.values():
        for _ in range(args.warmup):
            step()
    cpu = {name: [] for name in steps}  # process CPU time, like bench.py --clock cpu
    wall = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(args.reps):
                step()
            cpu[name].append((time.process_time() - c0) / args.reps * 1e3)
            wall[name].append((time.perf_counter() - w0) / args.reps * 1e3)
    print(json.dumps({"cpu_ms": cpu.pop("schnetpack"), "wall_ms": wall.pop("schnetpack"),
                      "painn_ablate": {k: {"cpu_ms": cpu[k], "wall_ms": wall[k]} for k in cpu},
                      "threads": torch.get_num_threads(), "schnetpack": spk.__version__, "torch": torch.__version__,
                      "n_params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
