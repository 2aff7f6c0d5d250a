"""Where a training step's time goes: self CPU time per op and input shape, per preset (torch.profiler).

    bash scripts/in-venv python benchmarks/profile_step.py                 # original and r2_full, F=64, 1 thread
    bash scripts/in-venv python benchmarks/profile_step.py --monitor default --top 30
    bash scripts/in-venv python benchmarks/profile_step.py --monitor default --compile   # model.compile=true

The step is bench.py's (train_step + Adam + zero_grad on the default workload). The profiler's own
overhead inflates small ops, so read shares and the difference between presets, not absolute times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="original,r2_full")
    ap.add_argument("--F", type=int, default=64)
    ap.add_argument("--monitor", choices=sorted(bench.MONITORING), default="off")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="model.compile=true: the forward through torch.compile "
                    "(a compiled graph's kernels show as one region per graph, the ops around it as themselves)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = bench.charged_batches()
    for name in args.presets.split(","):
        step, _ = bench.training_step(bench.preset(name, args.F), batches, args.monitor, compile=args.compile)
        for _ in range(5):
            step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.steps):
                step()
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events) / args.steps / 1e3
        print(f"\n== {name}, F={args.F}, monitor {args.monitor}, {args.threads} thread(s): "
              f"{total:.1f} ms of self CPU time per step (profiled){', compiled' if args.compile else ''} ==")
        print(f"  {'op':32s} {'ms/step':>8s} {'share':>6s} {'calls':>6s}  input shapes")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
            ms = e.self_cpu_time_total / args.steps / 1e3
            print(f"  {e.key[:32]:32s} {ms:8.2f} {100 * ms / total:5.1f}% {e.count // args.steps:6d}  "
                  f"{str(e.input_shapes)[:70]}")


if __name__ == "__main__":
    main()
