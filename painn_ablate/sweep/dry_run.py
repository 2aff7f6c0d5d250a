"""`sweep --dry-run`'s time estimate: each trial's steps times one training step of its shape, timed here."""

from __future__ import annotations

import math
from typing import Any

from painn_ablate.sweep.spec import Sweep, trial_config

MAX_TIMED_SHAPES = 4  # distinct model and batch shapes timed for an estimate; the rest take the slowest


SHAPE_KEYS = ("model.L", "model.F", "model.n_rbf", "train.batch_size", "data.n_particles", "data.system")


def estimate_seconds(sweep: Sweep, points: list[dict[str, Any]], repeats: int = 3) -> float:
    """An upper bound on one worker's time for these trials: each trial's steps times the time of one
    training step of its shape, measured here on a synthetic batch (no data are loaded or generated).
    Blown-up trials end early, so the sweep takes less."""
    import time

    import torch

    from painn_ablate.data.datasets import resolve_n_particles
    from painn_ablate.model.painn import PaiNN
    from painn_ablate.training.trainer import make_optimizer

    base = trial_config(sweep, points[0]) if points else trial_config(sweep, {})
    step_time: dict[tuple, float] = {}

    base_shape = {k: _select(base, k) for k in SHAPE_KEYS}

    def shape_of(point: dict) -> tuple:
        return tuple(point.get(k, base_shape[k]) for k in SHAPE_KEYS)

    def time_step(point: dict) -> float:
        cfg = trial_config(sweep, point)
        n = resolve_n_particles(cfg.data.system, cfg.data.n_particles)
        b = cfg.train.batch_size
        k = n - 1 if (cfg.data.graph in ("auto", "full") and n <= 64) else min(cfg.data.k, n - 1)
        g = torch.Generator().manual_seed(0)
        pos, vel = torch.randn(b * n, 3, generator=g), torch.randn(b * n, 3, generator=g)
        charge = torch.ones(b * n)
        receiver = torch.arange(b * n).repeat_interleave(k)
        source = (receiver // n) * n + (receiver % n + 1 + torch.arange(k).repeat(b * n)) % n
        model = PaiNN(cfg.model)
        opt = make_optimizer(model, cfg)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            pos_dt, vel_next = model(pos, vel, charge, torch.stack([source, receiver]))
            ((pos_dt ** 2).mean() + (vel_next ** 2).mean()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        return min(times[1:])  # the first includes one-off allocation

    total = 0.0
    for point in points or [{}]:
        shape = shape_of(point)
        if shape not in step_time:
            step_time[shape] = time_step(point) if len(step_time) < MAX_TIMED_SHAPES else max(step_time.values())
        steps = point.get("train.steps", base.train.steps)
        epochs = point.get("train.epochs", base.train.epochs)
        if epochs is not None:
            n_train = point.get("data.n_train", base.data.n_train)
            steps = epochs * math.ceil(n_train / point.get("train.batch_size", base.train.batch_size))
        total += steps * step_time[shape]
    return total


def _select(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)
