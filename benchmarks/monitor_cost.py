"""Cost of monitoring, as ratios measured in one process run.

    bash scripts/in-venv python benchmarks/monitor_cost.py [--steps 60] [--rounds 5] [overrides...]

Times the training step of `painn_ablate.training.trainer.train_step` plus the optimizer step on the
default workload (L=5, F=64, batch 100 of 5-body graphs) three ways:
  off      no hooks at all
  default  non-finite flags every step, full statistics every `monitor.every` steps
  every    full statistics every step (monitor.every=1)
The three are interleaved in rounds so that load from other processes hits them alike;
each mode's mean step time per round (so the every-k full steps count), then the median
over rounds, with its ratio to `off`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from painn_ablate.core.config import compose
from painn_ablate.data.datasets import load_dataset
from painn_ablate.model.painn import PaiNN
from painn_ablate.training.monitor import Monitor
from painn_ablate.training.trainer import train_step


def time_steps(model, opt, batches, mon, every: int, clip) -> list[float]:
    times = []
    for step, batch in enumerate(batches):
        t0 = time.perf_counter()
        full = mon is not None and step % every == 0
        train_step(model, batch, mon, step, full, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per mode per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model=original")
    args = parser.parse_args()
    cfg = compose(["model=r2_full", "data.n_train=1000", "data.n_val=10", "data.n_test=10", *args.overrides])
    train = load_dataset(cfg.data)["train"]
    torch.manual_seed(0)
    model = PaiNN(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # small lr: the workload, not the learning, is timed
    gen = torch.Generator().manual_seed(0)
    batches = [train.batch(torch.randperm(len(train), generator=gen)[: cfg.train.batch_size])
               for _ in range(args.steps)]
    modes = {"off": (None, 1), "default": ("mon", cfg.monitor.every), "every": ("mon", 1)}
    times: dict[str, list[float]] = {m: [] for m in modes}
    time_steps(model, opt, batches[:10], None, 1, cfg.train.grad_clip)  # warm-up
    with Monitor(model, cfg.monitor) as mon:
        for _ in range(args.rounds):
            for name, (use, every) in modes.items():
                if use is None:
                    mon.detach()
                    times[name].append(statistics.mean(time_steps(model, opt, batches, None, every,
                                                                  cfg.train.grad_clip)))
                    mon.attach()
                else:
                    times[name].append(statistics.mean(time_steps(model, opt, batches, mon, every,
                                                                  cfg.train.grad_clip)))
    base = statistics.median(times["off"])
    print(f"monitoring cost, preset {cfg.model.preset}, L={cfg.model.L}, F={cfg.model.F}, "
          f"batch {cfg.train.batch_size}, {args.rounds} rounds x {args.steps} steps, "
          f"{torch.get_num_threads()} threads, monitor.every={cfg.monitor.every}")
    for name in modes:
        med = statistics.median(times[name])
        print(f"  {name:8s} {1000 * med:7.2f} ms/step   x{med / base:.3f}")


if __name__ == "__main__":
    main()
