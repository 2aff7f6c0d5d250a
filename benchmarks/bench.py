"""Training-step benchmark: painn-ablate against itself, schnetpack's PaiNN and the hardware.

    bash scripts/in-venv python benchmarks/bench.py            # everything (~15 min on 2 busy cores)
    bash scripts/in-venv python benchmarks/bench.py --quick    # fewer rounds, fewer compiles, scaling to 1000
    bash scripts/in-venv python benchmarks/bench.py --sections default   # eager vs compiled vs schnetpack, 1 thread
    bash benchmarks/schnetpack_env.sh                          # once: .bench-venv/ for the schnetpack column

A training step is what `painn_ablate.training.trainer.Trainer.fit` runs per step: `train_step` (forward,
loss, backward, gradient norm and clip, the monitor's non-finite flags, one host sync) plus the
optimizer step and zero_grad, with the Trainer's own optimizer (`make_optimizer`). Variants that
are compared are timed in one process, interleaved round by round, so that load from other
processes hits them alike; each number is the median over rounds of the mean step time of a
round (the every-k full-statistics steps included). Ratios are the result; absolute times move
with the machine's load, which is printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import numpy as np
import torch
from git_tree import extract_package

from painn_ablate.core.config import compose
from painn_ablate.core.process import use_inductor_cache
from painn_ablate.data.datasets import SPLITS, NBodySplit, knn_edges
from painn_ablate.data.simulate import generate_splits
from painn_ablate.model.painn import PaiNN
from painn_ablate.training import monitor as _monitor
from painn_ablate.training import trainer as _train

ROOT = Path(__file__).resolve().parents[1]
BENCH_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
STANDARD_SIZES = {"train": 3000, "val": 2000, "test": 2000}  # the default charged set: 7000 samples


# ----------------------------------------------------------------------------- the code under test


def code_of(compose, PaiNN, Monitor, make_optimizer, train_step) -> SimpleNamespace:
    """What a training step needs from one version of painn_ablate."""
    return SimpleNamespace(compose=compose, PaiNN=PaiNN, Monitor=Monitor, make_optimizer=make_optimizer,
                           train_step=train_step)


AFTER = code_of(compose, PaiNN, _monitor.Monitor, _train.make_optimizer, _train.train_step)


def _ours() -> list[str]:
    return [k for k in sys.modules if k == "painn_ablate" or k.startswith("painn_ablate.")]


@contextlib.contextmanager
def _modules(modules: dict):
    """sys.modules' painn_ablate entries replaced by `modules` inside the block."""
    current = {k: sys.modules.pop(k) for k in _ours()}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for k in _ours():
            del sys.modules[k]
        sys.modules.update(current)


# Where compose, PaiNN, Monitor, make_optimizer and train_step live, by package layout.
LAYOUTS = {"flat": {"config": "config", "model": "model", "monitor": "monitor", "train": "train"},
           "subpackages": {"config": "core.config", "model": "model.painn", "monitor": "training.monitor",
                           "train": "training.trainer"}}


def import_tree(ref: str) -> SimpleNamespace:
    """painn_ablate as it was at git `ref`, imported beside the working tree's (for before/after rows).

    The package is extracted with `git archive` and imported with the current painn_ablate modules
    set aside; its modules keep references to one another, so both versions run in this process.
    Its compose runs with its own modules in sys.modules (omegaconf resolves the config dataclasses'
    annotations there). Trees before 571d3dc had flat modules (painn_ablate.config, .model, .monitor,
    .train), later ones layer subpackages (LAYOUTS).
    """
    tmp = extract_package(ref)
    layout = LAYOUTS["subpackages" if (tmp / "painn_ablate" / "core").is_dir() else "flat"]
    sys.path.insert(0, str(tmp))
    try:
        with _modules({}):
            m = {name: importlib.import_module(f"painn_ablate.{module}") for name, module in layout.items()}
            modules = {k: sys.modules[k] for k in _ours()}
    finally:
        sys.path.remove(str(tmp))

    def compose_before(overrides):
        with _modules(modules):
            return m["config"].compose(overrides)

    return code_of(compose_before, m["model"].PaiNN, m["monitor"].Monitor, m["train"].make_optimizer,
                   m["train"].train_step)


# ----------------------------------------------------------------------------- timing


# wall: elapsed time, what a run takes; cpu: this process's CPU time, which other processes'
# load does not inflate (with one thread it is the honest cost; with more it counts spin-waits).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK_NAME = os.environ.get("PAINN_BENCH_CLOCK", "wall")
CLOCK = CLOCKS[CLOCK_NAME]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, steps: int, warmup: int = 3) -> dict[str, float]:
    """Median over rounds of the mean wall ms per call; the variants take turns within each round."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = CLOCK()
            for _ in range(steps):
                fn()
            times[name].append((CLOCK() - t0) / steps * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


_CHARGED: Optional[NBodySplit] = None


def charged_batches(n_batches: int = 10, batch_size: int = 100):
    """Training batches of charged 5-body samples (generated once, then read from the data cache)."""
    global _CHARGED
    if _CHARGED is None:
        from painn_ablate.data.datasets import load_dataset

        _CHARGED = load_dataset(compose(["data.n_train=1000", "data.n_val=10", "data.n_test=10"]).data)["train"]
    return [_CHARGED.batch(torch.arange(k * batch_size, (k + 1) * batch_size)) for k in range(n_batches)]


def model_config(cfg, compile: bool = False):
    """cfg.model, with model.compile set (a plain copy while the schema has no such key)."""
    if not compile or "compile" in cfg.model:
        if compile:
            cfg.model.compile = True
        return cfg.model
    from omegaconf import OmegaConf

    model_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model))
    model_cfg.compile = True
    return model_cfg


MONITORING = {"off": None, "default": [], "every step": ["monitor.every=1"]}  # monitor variant -> overrides


def training_step(overrides: list[str], batches, monitor: str, compile: bool = False,
                  code: SimpleNamespace = AFTER) -> tuple[Callable[[], None], PaiNN]:
    """One Trainer step as a closure: train_step + optimizer step + zero_grad, cycling over batches.

    monitor: off (no hooks), default (flags every step, statistics every monitor.every steps) or
    every step (statistics on every step).
    compile: model.compile (the training forward through torch.compile, hooks traced).
    code: the painn_ablate version to run (import_tree for an earlier one).
    """
    cfg = code.compose(overrides + (MONITORING[monitor] or []))
    torch.manual_seed(0)
    model = code.PaiNN(model_config(cfg, compile))
    opt = code.make_optimizer(model, cfg)
    mon = code.Monitor(model, cfg.monitor) if MONITORING[monitor] is not None else None
    if mon is not None:
        mon.attach()
    every, clip, count = cfg.monitor.every, cfg.train.grad_clip, [0]

    def step() -> None:
        s = count[0]
        count[0] += 1
        res = code.train_step(model, batches[s % len(batches)], mon, s, mon is not None and s % every == 0, clip)
        if res.origin is None:
            opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def step_flops(overrides: list[str], batch) -> float:
    """FLOPs of one forward + backward (matmuls; FlopCounterMode counts no elementwise ops)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = compose(overrides)
    torch.manual_seed(0)
    model = PaiNN(cfg.model)
    with FlopCounterMode(display=False) as counter:
        pos_dt, vel_next = model(batch.pos, batch.vel, batch.charge, batch.edge_index)
        (torch.mean((pos_dt - batch.pos_dt) ** 2) + torch.mean((vel_next - batch.vel_next) ** 2)).backward()
    return float(counter.get_total_flops())


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Best fp32 GFLOP/s of an n x n matmul at the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = min(_time(lambda: torch.mm(a, b, out=out)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def table(header: list[str], rows: list[list], indent: str = "  ") -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    for k, r in enumerate(cells):
        print(indent + "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            print(indent + "  ".join("-" * w for w in widths))


def preset(name: str, F: int) -> list[str]:
    return [f"model={name}", f"model.F={F}", "model.L=5", "model.n_rbf=20"]


# ----------------------------------------------------------------------------- sections


def section_main(args, peak: float) -> dict:
    print("\n== 1. Training step, default workload: batch 100 of 5-body charged graphs (full graph:"
          " N=500 nodes, E=2000 edges), L=5, n_rbf=20 ==")
    versions = {"before": args.before_code, "after": AFTER} if args.before_code else {"after": AFTER}
    if args.before_code:
        print(f"  before: painn_ablate at {args.before}; after: the working tree; all interleaved in this process")
    results = {}
    for F in (64, 128):
        batches = charged_batches()
        variants = {(v, name, monitor): training_step(preset(name, F), batches, monitor, code=code)[0]
                    for v, code in versions.items() for name in ("original", "r2_full") for monitor in MONITORING}
        timed = interleaved({"/".join(k): fn for k, fn in variants.items()}, args.rounds, args.steps)
        ms = {k: timed["/".join(k)] for k in variants}
        flops = {name: step_flops(preset(name, F), batches[0]) for name in ("original", "r2_full")}
        rows = []
        base = ms[("after", "original", "off")]
        for name in ("original", "r2_full"):
            for monitor in MONITORING:
                t = ms[("after", name, monitor)]
                gflops = flops[name] / 1e9
                was = [f"{ms[('before', name, monitor)]:.1f}", f"{t / ms[('before', name, monitor)]:.2f}"] \
                    if args.before_code else []
                rows.append([F, name, monitor, *was, f"{t:.1f}", f"{t / base:.2f}", f"{gflops:.2f}",
                             f"{gflops / t * 1e3:.1f}", f"{100 * gflops / t * 1e3 / peak:.0f}%"])
        table(["F", "preset", "monitor", *(["before ms", "after/before"] if args.before_code else []), "ms/step",
               "x orig/off", "GFLOP/step", "GFLOP/s", "of peak"], rows)
        results[F] = ms
        for v in versions:
            print(f"  F={F} {v}: " + "; ".join(f"{label} {100 * (ms[(v, *a)] / ms[(v, *b)] - 1):+.0f}%"
                                               for label, a, b in OVERHEADS))
    return results


# (label, variant, reference): the overheads issue 13 sets targets for, as (preset, monitor) pairs
OVERHEADS = [("stabilizers, monitor off", ("r2_full", "off"), ("original", "off")),
             ("stabilizers, default monitoring", ("r2_full", "default"), ("original", "default")),
             ("default monitoring on r2_full", ("r2_full", "default"), ("r2_full", "off")),
             ("every-step statistics on r2_full", ("r2_full", "every step"), ("r2_full", "off"))]
TARGETS = {"stabilizers, monitor off": 0.15, "stabilizers, default monitoring": 0.15,
           "default monitoring on r2_full": 0.03, "every-step statistics on r2_full": 0.25}
SCHNETPACK_TARGET = 0.7  # r2_full + default monitoring, x schnetpack's step


def section_targets(args, main: dict, schnetpack: dict) -> None:
    print("\n== Targets of issue 13 (from sections 1 and 2 of this run) ==")
    versions = ["before", "after"] if args.before_code else ["after"]
    rows = []
    for F, sp in schnetpack.items():
        values = [sp[v] for v in versions]
        rows.append([f"r2_full + default monitoring, x schnetpack, F={F}", f"<= {SCHNETPACK_TARGET}",
                     *(f"{x:.2f}" for x in values), "met" if values[-1] <= SCHNETPACK_TARGET else "missed"])
    for F, ms in main.items():
        for label, a, b in OVERHEADS:
            values = [ms[(v, *a)] / ms[(v, *b)] - 1 for v in versions]
            rows.append([f"{label}, F={F}", f"<= {100 * TARGETS[label]:.0f}%", *(f"{100 * x:+.0f}%" for x in values),
                         "met" if values[-1] <= TARGETS[label] else "missed"])
    table(["target", "bound", *versions, "verdict (after)"], rows)


def schnetpack_step(b, F: int, threads: int, args, painn_ablate: tuple[str, ...] = ()) -> Optional[dict]:
    """bench_schnetpack.py's JSON for schnetpack's PaiNN on batch b (run in .bench-venv), or None when it failed.

    painn_ablate: presets of ours to time in its process too (model + loss + Adam, interleaved with schnetpack's).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "workload.pt"
        torch.save({"pos": b.pos, "vel": b.vel, "charge": b.charge, "edge_index": b.edge_index,
                    "pos_dt": b.pos_dt, "vel_next": b.vel_next}, path)
        proc = subprocess.run([str(BENCH_PYTHON), str(ROOT / "benchmarks" / "bench_schnetpack.py"), str(path),
                               "--F", str(F), "--L", "5", "--n-rbf", "20", "--threads", str(threads),
                               "--rounds", str(args.rounds), "--reps", str(args.steps), "--keep-freed-memory",
                               *(x for name in painn_ablate for x in ("--painn-ablate", name))],
                              capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print(f"  F={F}: schnetpack run failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section_default(args) -> None:
    """The default training path (issue 25): r2_full with default monitoring at one thread, eager and compiled
    (model.compile=true, the one the Trainer picks for runs of >= config.COMPILE_MIN_STEPS steps) interleaved,
    each against schnetpack's step (timed between two rounds of ours, as in section 2)."""
    global CLOCK
    F, clock_name = 64, args.clock or "cpu"  # one thread: process CPU time, which other processes' load barely moves
    print(f"\n== 0. The default training path: r2_full, default monitoring, F={F}, L=5, 1 thread: eager vs"
          f" compiled (model.compile), x schnetpack's PaiNN step ({clock_name} ms) ==")
    threads, clock = torch.get_num_threads(), CLOCK
    torch.set_num_threads(1)
    CLOCK = CLOCKS[clock_name]
    try:
        cache = use_inductor_cache()  # the project's, shared with train and sweeps: cold only the first time
        batches = charged_batches()
        ours = {"eager": training_step(preset("r2_full", F), batches, "default")[0],
                "compiled": training_step(preset("r2_full", F), batches, "default", compile=True)[0]}
        t0 = time.perf_counter()
        ours["compiled"]()  # step 0: full statistics (wall: inductor compiles in worker processes)
        ours["compiled"]()  # step 1: flags only, the second graph
        compile_s = time.perf_counter() - t0
        before = interleaved(ours, args.rounds, args.steps)
        sp = schnetpack_step(batches[0], F, 1, args) if BENCH_PYTHON.exists() else None
        after = interleaved(ours, args.rounds, args.steps, warmup=1) if sp is not None else before
    finally:
        torch.set_num_threads(threads)
        CLOCK = clock
    sp_ms = statistics.median(sp[f"{clock_name}_ms"]) if sp is not None else None
    rows = []
    for name in ours:
        t = (before[name] + after[name]) / 2
        rows.append([name, f"{t:.1f}", f"{before[name]:.1f} / {after[name]:.1f}",
                     f"{t / ((before['eager'] + after['eager']) / 2):.2f}", f"{t / sp_ms:.2f}" if sp_ms else "-"])
    if sp_ms:
        rows.append(["schnetpack PaiNN", f"{sp_ms:.1f}", "", "", "1.00"])
    table(["step", "ms/step", "(before / after)", "x eager", "x schnetpack"], rows)
    print(f"  compiling both graphs (full-statistics and flags-only steps): {compile_s:.1f} s wall, inductor cache {cache}"
          " (cold the first time on a machine, then warm)")
    if sp is None:
        print("  x schnetpack: no .bench-venv (create it with: bash benchmarks/schnetpack_env.sh)"
              if not BENCH_PYTHON.exists() else "  x schnetpack: its run failed (above)")
    else:
        print(f"  targets (issue 25): compiled <= 0.75x schnetpack (aim 0.6x): "
              f"{'met' if (before['compiled'] + after['compiled']) / 2 / sp_ms <= 0.75 else 'missed'}")


def section_schnetpack(args) -> dict:
    print("\n== 2. schnetpack's PaiNN, same graph, F, L=5, n_rbf=20 (Bessel basis = ours), cosine cutoff,"
          " two bias-free vector heads, MSE, Adam ==")
    if not BENCH_PYTHON.exists():
        print("  skipped: no .bench-venv (create it with: bash benchmarks/schnetpack_env.sh)")
        return {}
    rows, same_process, ratios = [], [], {}
    threads = torch.get_num_threads()
    for F in (64, 128):
        batches = charged_batches()
        b = batches[0]
        # Ours right before and right after schnetpack's subprocess, so load drift shows.
        ours = {f"{n}/{m}": training_step(preset(n, F), [b], m)[0] for n, m in (("original", "off"), ("r2_full", "default"))}
        if args.before_code:
            ours["r2_full/default before"] = training_step(preset("r2_full", F), [b], "default",
                                                           code=args.before_code)[0]
        if not args.quick and args.compiled:  # compiled at its first call, in the warm-up (section 4 times it)
            ours["r2_full/default compiled"] = training_step(preset("r2_full", F), [b], "default", compile=True)[0]
        before = interleaved(ours, args.rounds, args.steps)
        result = schnetpack_step(b, F, threads, args, painn_ablate=("original", "r2_full"))
        after = interleaved(ours, args.rounds, args.steps, warmup=1)
        if result is None:
            continue
        sp = statistics.median(result[f"{CLOCK_NAME}_ms"])
        for name, times in result["painn_ablate"].items():
            t = statistics.median(times[f"{CLOCK_NAME}_ms"])
            same_process.append([F, f"painn-ablate {name}", f"{t:.1f}", f"{sp:.1f}", f"{t / sp:.2f}"])
        for key in ours:
            t = (before[key] + after[key]) / 2
            rows.append([F, f"painn-ablate {key}", f"{t:.1f}", f"{before[key]:.1f} / {after[key]:.1f}",
                         f"{t / sp:.2f}"])
        rows.append([F, "schnetpack PaiNN", f"{sp:.1f}", "", "1.00"])
        ratios[F] = {"after": (before["r2_full/default"] + after["r2_full/default"]) / 2 / sp}
        if args.before_code:
            ratios[F]["before"] = (before["r2_full/default before"] + after["r2_full/default before"]) / 2 / sp
    table(["F", "model", "ms/step", "(before / after)", "x schnetpack"], rows)
    print("  (before / after: ours timed right before and right after schnetpack's subprocess)")
    print("  the same, model + loss + Adam only (no gradient norm, monitor or sync), interleaved with schnetpack's"
          " in its process:")
    table(["F", "model", "ms/step", "schnetpack ms", "x schnetpack"], same_process)
    return ratios


AGGREGATION_SCRIPT = r"""
import json, sys, time, statistics, torch
sys.path.insert(0, {bench!r})
from bench import interleaved, preset
from painn_ablate.core.config import compose
from painn_ablate.model.painn import PaiNN
sys.path.insert(0, {bench!r})
from bench_schnetpack import keep_freed_memory
keep_freed_memory()
torch.set_num_threads({threads})
w = torch.load({path!r})
fns = {{}}
for backend in ("native", "scatter"):
    cfg = compose(preset("r2_full", 64) + [f"model.backend={{backend}}"])
    torch.manual_seed(0); m = PaiNN(cfg.model); opt = torch.optim.Adam(m.parameters(), 1e-3)
    def step(m=m, opt=opt):
        a, b = m(w["pos"], w["vel"], w["charge"], w["edge_index"])
        (torch.mean((a - w["pos_dt"]) ** 2) + torch.mean((b - w["vel_next"]) ** 2)).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
    fns[backend] = step
print(json.dumps(interleaved(fns, {rounds}, {steps})))
"""


def section_aggregation(args) -> None:
    print("\n== 3. Aggregation backend: torch index_add_ (native) vs torch_scatter, r2_full F=64,"
          " model + loss + Adam, monitor off ==")
    has_scatter = BENCH_PYTHON.exists() and subprocess.run(
        [str(BENCH_PYTHON), "-c", "import torch_scatter"], capture_output=True).returncode == 0
    if not has_scatter:
        print("  skipped: torch_scatter is not installed in .bench-venv (WITH_SCATTER=1 bash"
              " benchmarks/schnetpack_env.sh builds it, a ~4 min compile).\n"
              "  Earlier measurement on this machine: native index_add_ ~2x faster than torch_scatter's sum.")
        return
    b = charged_batches()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "workload.pt")
        torch.save({"pos": b.pos, "vel": b.vel, "charge": b.charge, "edge_index": b.edge_index,
                    "pos_dt": b.pos_dt, "vel_next": b.vel_next}, path)
        script = AGGREGATION_SCRIPT.format(bench=str(ROOT / "benchmarks"), path=path, rounds=args.rounds,
                                           steps=args.steps, threads=torch.get_num_threads())
        proc = subprocess.run([str(BENCH_PYTHON), "-c", script], capture_output=True, text=True, timeout=1800,
                              cwd=ROOT)
    if proc.returncode != 0:
        print(f"  failed: {proc.stderr.strip().splitlines()[-1:]}")
        return
    ms = json.loads(proc.stdout.strip().splitlines()[-1])
    table(["backend", "ms/step", "x native"], [[k, f"{v:.1f}", f"{v / ms['native']:.2f}"] for k, v in ms.items()])


COMPILE_SCRIPT = r"""
import json, sys, time, torch
sys.path.insert(0, {bench!r})
from bench import charged_batches, interleaved, preset, training_step
from painn_ablate.core.process import keep_freed_memory
keep_freed_memory()
torch.set_num_threads({threads})
batches = charged_batches()
eager, _ = training_step(preset("r2_full", 64), batches, "default")
compiled, _ = training_step(preset("r2_full", 64), batches, "default", compile=True)
t0 = time.perf_counter(); compiled(); first = time.perf_counter() - t0    # step 0: full statistics (wall: compile runs in workers)
t0 = time.perf_counter(); compiled(); second = time.perf_counter() - t0   # step 1: flags only
print(json.dumps({{"compile_s": first + second, **interleaved({{"eager": eager, "compiled": compiled}}, {rounds}, {steps})}}))
"""


def section_compile(args) -> None:
    print("\n== 4. Eager vs model.compile (torch.compile of the training forward), r2_full F=64,"
          " default monitoring (hooks traced into the graph: two graphs, flags-only and full-statistics steps) ==")
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        script = COMPILE_SCRIPT.format(bench=str(ROOT / "benchmarks"), threads=torch.get_num_threads(),
                                       rounds=args.rounds, steps=args.steps)
        for label in (["cold cache", "warm cache"] if not args.quick else ["cold cache"]):
            proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3600,
                                  env=env, cwd=ROOT)
            if proc.returncode != 0:
                print(f"  {label}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            gain = r["eager"] - r["compiled"]
            even = f"{r['compile_s'] * 1e3 / gain:.0f}" if gain > 0 else "never"
            rows.append([label, f"{r['compile_s']:.1f}", f"{r['eager']:.1f}", f"{r['compiled']:.1f}",
                         f"{r['compiled'] / r['eager']:.2f}", even])
    table(["inductor cache", "compile s", "eager ms", "compiled ms", "x eager", "break-even steps"], rows)
    print("  (cold: first trial on a machine; warm: later trials of a sweep, same shapes, FX graph cache hit)")


def section_threads(args) -> None:
    print("\n== 5. Threads, r2_full F=64, default monitoring (set_num_threads between rounds; wall ms, since CPU"
          " time counts the second thread's spin-waits) ==")
    global CLOCK
    clock, CLOCK = CLOCK, time.perf_counter
    batches = charged_batches()
    step, _ = training_step(preset("r2_full", 64), batches, "default")
    default = torch.get_num_threads()
    counts = sorted({1, 2, default})
    variants = {}
    for n in counts:
        def run(n=n):
            torch.set_num_threads(n)
            step()
        variants[f"{n} thread(s)"] = run
    ms = interleaved(variants, args.rounds, args.steps)
    torch.set_num_threads(default)
    CLOCK = clock
    first = ms[f"{counts[0]} thread(s)"]
    table(["threads", "ms/step", f"x {counts[0]} thread"], [[k, f"{v:.1f}", f"{v / first:.2f}"] for k, v in ms.items()])


SCALING_SCRIPT = r"""
import json, os, resource, sys, time, numpy as np, torch
sys.path.insert(0, {bench!r})
from bench import CLOCK, compose, make_system, preset
from painn_ablate.model.painn import PaiNN
from painn_ablate.training.monitor import Monitor
from painn_ablate.core.process import keep_freed_memory
from painn_ablate.training.trainer import make_optimizer, train_step
keep_freed_memory()
torch.set_num_threads({threads})
n, k, steps = {n}, {k}, {steps}
cfg = compose(preset("r2_full", 64))
torch.manual_seed(0); model = PaiNN(cfg.model); opt = make_optimizer(model, cfg)
mon = Monitor(model, cfg.monitor); mon.attach()
def step(batch, s):
    train_step(model, batch, mon, s, s % cfg.monitor.every == 0, cfg.train.grad_clip); opt.step(); opt.zero_grad(set_to_none=True)
small, big = make_system(5, k), make_system(n, k)
for s in range(2):
    step(small, s)                            # library and thread-pool start-up, not counted
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
hwm = lambda: 1024 * int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = rss()
step(big, 0)                                  # a full-statistics step
times = []
for s in range(1, steps + 1):
    t0 = CLOCK(); step(big, s); times.append(CLOCK() - t0)
peak = hwm()
print(json.dumps({{"n": n, "edges": big.edge_index.shape[1], "ms": 1e3 * sorted(times)[len(times) // 2],
                   "peak_mb": max(0, peak - before) / 2**20}}))
"""


def make_system(n: int, k: int):
    """One random gravity-like system of n bodies (N(0, 1) blob at constant density) with its kNN graph."""
    from painn_ablate.data.datasets import Batch

    rng = np.random.default_rng(0)
    pos = rng.standard_normal((n, 3)) * (n / 100) ** (1 / 3)
    vel = rng.standard_normal((n, 3))
    edges = torch.as_tensor(knn_edges(pos, min(k, n - 1)), dtype=torch.long)
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return Batch(pos=f32(pos), vel=f32(vel), charge=torch.ones(n), edge_index=edges, pos_dt=0.1 * f32(vel),
                 vel_next=f32(vel), graph=torch.zeros(n, dtype=torch.long), n_graphs=1)


def section_scaling(args) -> None:
    sizes = (5, 100, 1000) if args.quick else (5, 100, 1000, 10000)
    print("\n== 6. Scaling: one random gravity-like system per batch, kNN graph k=16 (k=N-1 below 17),"
          " r2_full F=64, default monitoring ==")
    print("  memory: peak RSS (VmHWM, reset through /proc/self/clear_refs) minus the RSS just before the first step"
          " on the system, in a fresh process warmed up on a 5-body graph: activations, gradients, allocator slack")
    rows = []
    for n in sizes:
        steps = 3 if n >= 10000 else 10
        script = SCALING_SCRIPT.format(bench=str(ROOT / "benchmarks"), n=n, k=16, steps=steps,
                                       threads=torch.get_num_threads())
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3600, cwd=ROOT)
        if proc.returncode != 0:
            print(f"  N={n}: failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append([n, r["edges"], f"{r['ms']:.1f}", f"{r['ms'] / r['edges'] * 1e3:.1f}", f"{r['peak_mb']:.0f}",
                     f"{r['peak_mb'] * 2**20 / r['edges'] / 1e3:.1f}"])
    table(["N", "edges", "ms/step", "us/edge", "peak MB", "kB/edge"], rows)


def section_data(args) -> None:
    print("\n== 7. Data generation: the standard charged set, 3000/2000/2000 samples of 5 particles ==")
    t0 = time.perf_counter()
    arrays = generate_splits("charged", STANDARD_SIZES, 5, seed=0)
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name in SPLITS:
        NBodySplit.from_arrays(arrays[name], "full")
    graphs = time.perf_counter() - t0
    verdict = "meets" if gen < 20 else "misses"
    print(f"  simulate 7000 samples: {gen:.1f} s ({verdict} the 20 s target); full graphs: {graphs:.2f} s")


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 5 steps; compiled: section 0 (project cache) and section 4's cold"
                                                           " process only; scaling to N=1000")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per comparison (default 7, quick 3)")
    ap.add_argument("--steps", type=int, default=None, help="steps per variant per round (default 10, quick 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                    help="wall or cpu (process CPU time; immune to other processes' load). Default: cpu with"
                         " one thread, wall otherwise")
    ap.add_argument("--sections", default="default,main,schnetpack,aggregation,compile,threads,scaling,data",
                    help="comma-separated subset to run")
    ap.add_argument("--no-compiled", dest="compiled", action="store_false",
                    help="leave out section 2's model.compile row (its cold compile takes a minute or more)")
    ap.add_argument("--before", default=None, metavar="GIT_REF",
                    help="also time painn_ablate as it was at this git ref, interleaved with the working tree's"
                         " (sections 1 and 2), and print the targets before and after")
    args = ap.parse_args()
    args.before_code = import_tree(args.before) if args.before else None
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.steps = args.steps or (5 if args.quick else 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    from painn_ablate.core.process import keep_freed_memory

    kept = keep_freed_memory()  # as the Trainer does on CPU; the subprocesses below do the same
    global CLOCK, CLOCK_NAME
    CLOCK_NAME = args.clock or ("cpu" if torch.get_num_threads() == 1 else "wall")
    CLOCK = CLOCKS[CLOCK_NAME]
    os.environ["PAINN_BENCH_CLOCK"] = CLOCK_NAME  # the subprocess sections time with the same clock
    sections = args.sections.split(",")
    print(f"painn-ablate benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads,"
          f" {platform.processor() or platform.machine()} ({os.cpu_count()} cores), python {platform.python_version()}")
    print(f"load average at start: {load()}; times are {CLOCK_NAME} ms (median over rounds; variants interleaved"
          " round by round, so the ratios hold under load)")
    peak = matmul_peak()
    print(f"glibc keeps freed memory (painn_ablate.core.process.keep_freed_memory, also in every subprocess): {kept}")
    print(f"fp32 matmul peak (2048^3, {torch.get_num_threads()} threads): {peak:.0f} GFLOP/s")
    if "default" in sections:
        section_default(args)
    main_ms = section_main(args, peak) if "main" in sections else {}
    schnetpack = section_schnetpack(args) if "schnetpack" in sections else {}
    if "aggregation" in sections:
        section_aggregation(args)
    if "compile" in sections:
        section_compile(args)
    if "threads" in sections:
        section_threads(args)
    if "scaling" in sections:
        section_scaling(args)
    if "data" in sections:
        section_data(args)
    if main_ms:
        section_targets(args, main_ms, schnetpack)
    print(f"\nload average at end: {load()}")


if __name__ == "__main__":
    main()
