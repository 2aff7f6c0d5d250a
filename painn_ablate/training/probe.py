"""`painn-ablate probe`: signal propagation through PaiNN at initialisation, over many seeds.

For each model seed (and each depth with `depths`): build the model as training would
(`torch.manual_seed(seed)`), take the first training batch of that seed's batch order (the
batch training step 0 sees: probe seed s pairs with training seed s), run the forward pass
and record per layer and block

    mu_norm_max q_absmax qmu_absmax mu_term_norm_max ...   the monitor's statistics (painn_ablate.training.monitor)
    norm_gain   ||(q, mu) out|| / ||(q, mu) in||, Frobenius norms over the batch
    jvp_gain    ||J v|| for a random unit tangent v of the block's input (q, mu): the block's
                input-output gain along one direction, by forward-mode AD (torch.func.jvp)
    update_gain ||J v - v||: the same for the block's update alone (a residual block's J is
                I + the update's Jacobian, so jvp_gain sits near 1 while the update may grow)

and per seed whether the forward pass is non-finite or crosses a blow-up criterion
(painn_ablate.core.outcome), its depth-wise ratio (outcome.mu_ratio), and `init_blow_up_frac`: the
fraction of the seed's first `batches` training batches (default 25) on which the *initial* network
crosses a criterion (training.blowup.judge_pass, the test that gives a training blow-up its phase). With
`steps=K` the seed also trains K steps at the configured lr and the forward statistics of every step are
recorded (`step` column; step 0 is initialisation).

Output: a long DataFrame `L, seed, step, layer, block, stat, value` (`probe.parquet`) and a
per-seed one `L, seed, step, nonfinite, blew_up, criterion, origin_layer, origin_block, mu_ratio,
init_blow_up_frac, init_batches` (`probe_seeds.parquet`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from painn_ablate.core.config import velocity_weight
from painn_ablate.core.outcome import Criteria, crossed, locate, mu_ratio
from painn_ablate.data.datasets import load_dataset
from painn_ablate.model.painn import PaiNN
from painn_ablate.model.stabilizers import plain_ops
from painn_ablate.training.blowup import judge_pass, loss_reference, zero_loss
from painn_ablate.training.monitor import Monitor
from painn_ablate.training.trainer import batch_indices, make_optimizer, pick_device, train_step

GAIN_STATS = ("norm_gain", "jvp_gain", "update_gain")
SUMMARY_STATS = ("mu_norm_max", "q_absmax", "qmu_absmax", "mu_term_norm_max", *GAIN_STATS)
SEED_COLUMNS = ["L", "seed", "step", "nonfinite", "blew_up", "criterion", "origin_layer", "origin_block", "mu_ratio",
                "init_blow_up_frac", "init_batches"]
DEFAULT_BATCHES = 25  # the initial network's first training batches judged per seed


@dataclass
class ProbeResult:
    stats: pd.DataFrame  # L, seed, step, layer, block, stat, value
    seeds: pd.DataFrame  # SEED_COLUMNS
    seconds: float


def _frob(q: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((q.double() ** 2).sum() + (mu.double() ** 2).sum())


class _BlockInputs:
    """Forward hooks that keep each block's inputs and outputs of one forward pass."""

    def __init__(self, model: PaiNN):
        self.seen: list[tuple[int, str, torch.nn.Module, tuple, tuple]] = []
        self.handles = []
        for l, layer in enumerate(model.layers, start=1):
            for block in ("interaction", "mixing"):
                module = getattr(layer, block)
                self.handles.append(module.register_forward_hook(
                    lambda m, args, out, l=l, block=block: self.seen.append((l, block, m, args, out))))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def block_gains(seen, generator: torch.Generator) -> list[tuple[int, str, str, float]]:
    """norm_gain and jvp_gain of each block from its recorded inputs and outputs."""
    rows = []
    for layer, block, module, args, out in seen:
        q, mu, *rest = args
        rows.append((layer, block, "norm_gain", float(_frob(*out) / _frob(q, mu))))
        tq = torch.randn(q.shape, generator=generator, dtype=q.dtype)
        tmu = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        scale = _frob(tq, tmu).to(q.dtype)
        tq, tmu = tq / scale, tmu / scale
        with plain_ops(), torch.no_grad():
            _, (dq, dmu) = torch.func.jvp(lambda a, b: module(a, b, *rest), (q, mu), (tq, tmu))
        rows.append((layer, block, "jvp_gain", float(_frob(dq, dmu))))
        rows.append((layer, block, "update_gain", float(_frob(dq - tq, dmu - tmu))))
    return rows


def _forward_rows(model: PaiNN, mon: Monitor, batch, generator: torch.Generator) -> tuple[list, bool]:
    """One forward pass: the monitor's statistics plus the block gains, and whether it was non-finite."""
    inputs = _BlockInputs(model)
    try:
        with torch.no_grad():
            mon.begin_step(full=True)
            model(batch.pos, batch.vel, batch.charge, batch.edge_index)
            flags = mon.read_flags()
            rows = mon.collect()
    finally:
        inputs.close()  # before the gains: their forward passes must not be recorded again
    rows += block_gains(inputs.seen, generator)
    mon.begin_step(full=False)  # drop what the monitor's hooks saw of the gains' passes
    return rows, Monitor.first_nonfinite(flags, 0) is not None


def init_blow_up_frac(model: PaiNN, cfg: DictConfig, train, seed: int, batches: int) -> float:
    """The fraction of seed `seed`'s first `batches` training batches on which `model` (the initial network)
    crosses a criterion, the loss criterion's reference being that of training step 0 (batch 0)."""
    crit, L, vel_weight = Criteria.from_config(cfg.monitor), int(cfg.model.L), velocity_weight(cfg.train.loss)
    order = batch_indices(len(train), cfg.train.batch_size, torch.Generator().manual_seed(seed))
    reference, crossings = None, 0
    for k in range(batches):
        batch = train.batch(next(order).to(train.pos.device))
        if k == 0:
            _, _, loss = judge_pass(model, batch, cfg.monitor, crit, L, vel_weight, None)
            reference = loss_reference(loss, zero_loss(batch, vel_weight))
        criterion, _, _ = judge_pass(model, batch, cfg.monitor, crit, L, vel_weight, reference)
        crossings += criterion is not None
    return crossings / batches


def probe_config(cfg: DictConfig, seeds: int, steps: int = 0,
                 batches: int = DEFAULT_BATCHES) -> tuple[list[dict], list[dict]]:
    """Probe one configuration over `seeds` model seeds; returns (stat rows, seed rows)."""
    device = pick_device(cfg.train.device)
    train = load_dataset(cfg.data, device=device)["train"].to(device)
    crit = Criteria.from_config(cfg.monitor)
    L = int(cfg.model.L)
    stat_rows, seed_rows = [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = PaiNN(cfg.model).to(device)
        frac = init_blow_up_frac(copy.deepcopy(model), cfg, train, seed, batches) if batches else math.nan
        gen = torch.Generator().manual_seed(seed)
        order = batch_indices(len(train), cfg.train.batch_size, gen)
        probe_gen = torch.Generator().manual_seed(10_000 + seed)  # the tangents: apart from the batch order
        opt = make_optimizer(model, cfg) if steps else None
        with Monitor(model, cfg.monitor) as mon:
            for step in range(steps + 1):
                batch = train.batch(next(order).to(device))
                rows, nonfinite = _forward_rows(model, mon, batch, probe_gen)
                criterion = "nonfinite" if nonfinite else crossed(rows, crit, L)
                where = locate(rows, crit) if criterion else None
                stat_rows += [{"L": L, "seed": seed, "step": step, "layer": l, "block": b, "stat": s, "value": v}
                              for l, b, s, v in rows]
                seed_rows.append({"L": L, "seed": seed, "step": step, "nonfinite": nonfinite,
                                  "blew_up": criterion is not None, "criterion": criterion,
                                  "origin_layer": where[0] if where else None,
                                  "origin_block": where[1] if where else None,
                                  "mu_ratio": _ratio(rows, L), "init_blow_up_frac": frac,
                                  "init_batches": batches})
                if step == steps or nonfinite:
                    break
                train_step(model, batch, mon, step, False, cfg.train.grad_clip, velocity_weight(cfg.train.loss))
                opt.step()
                opt.zero_grad(set_to_none=True)
    return stat_rows, seed_rows


def _ratio(rows: list, L: int) -> float:
    """outcome.mu_ratio of one pass; inf when it is not finite (it counts as blown up), NaN without the layers."""
    ratio = mu_ratio(rows, L)
    return math.nan if ratio is None else (ratio if math.isfinite(ratio) else math.inf)


def run_probe(cfg: DictConfig, seeds: int, steps: int = 0, depths: Optional[Sequence[int]] = None,
              batches: int = DEFAULT_BATCHES) -> ProbeResult:
    start = time.perf_counter()
    stat_rows, seed_rows = [], []
    for L in depths or [int(cfg.model.L)]:
        c = OmegaConf.merge(cfg, {"model": {"L": int(L)}})
        s, r = probe_config(c, seeds, steps, batches)
        stat_rows += s
        seed_rows += r
    stats = pd.DataFrame(stat_rows, columns=["L", "seed", "step", "layer", "block", "stat", "value"])
    per_seed = pd.DataFrame(seed_rows, columns=SEED_COLUMNS)
    return ProbeResult(stats, per_seed, time.perf_counter() - start)


# ----------------------------------------------------------------------------- summaries


def layer_table(result: ProbeResult, step: int = 0) -> pd.DataFrame:
    """Per depth, layer and block: median and 90th percentile of each summary stat over seeds."""
    s = result.stats[(result.stats["step"] == step) & result.stats["stat"].isin(SUMMARY_STATS)
                     & (result.stats["layer"] >= 1)]
    g = s.groupby(["L", "layer", "block", "stat"])["value"]
    out = pd.DataFrame({"median": g.median(), "p90": g.quantile(0.9)}).reset_index()
    return out.pivot_table(index=["L", "layer", "block"], columns="stat", values=["median", "p90"])


def depth_table(result: ProbeResult, step: int = 0) -> pd.DataFrame:
    """Per depth: seeds, fraction non-finite, fraction blown up (on the step's batch), the mean over seeds of
    the fraction of the first batches on which the initial network blows up, median depth-wise ratio."""
    seeds = result.seeds[result.seeds["step"] == step]
    rows = []
    for L, g in seeds.groupby("L"):
        ratio = g["mu_ratio"].dropna()
        rows.append({"L": L, "seeds": len(g), "nonfinite": float(g["nonfinite"].mean()),
                     "blew_up": float(g["blew_up"].mean()),
                     "init_blow_up_frac": float(g["init_blow_up_frac"].mean()),
                     "median_mu_ratio": float(ratio.median()) if len(ratio) else math.nan})
    return pd.DataFrame(rows)


def seed_table(result: ProbeResult) -> pd.DataFrame:
    """Per depth and seed, at initialisation: blown up on batch 0, and the fraction of the first
    `init_batches` training batches on which the initial network crosses a criterion."""
    s = result.seeds[result.seeds["step"] == 0]
    return s[["L", "seed", "blew_up", "criterion", "init_blow_up_frac", "init_batches"]].reset_index(drop=True)
