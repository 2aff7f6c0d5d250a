"""`run(cfg)`: train one PaiNN configuration and record what happened.

A blow-up is an *outcome* (painn_ablate.core.outcome): a non-finite loss, activation or
gradient makes the run "exploded" (by default, `monitor.on_nonfinite=stop`, it ends
there); a finite blow-up by the criteria `monitor.diverge_*` makes it "diverged" (by
default, `monitor.on_diverged=continue`, it trains on and may recover). Each is located
to step, layer, block and statistic from the statistics of the very forward pass where it
fired (replayed when that step was not a statistics step), and recorded as an event and in
the summary (`first_nonfinite`, `first_divergence`, `divergence`). The run directory always
holds what was recorded up to then:

    config.yaml      the resolved config; `painn-ablate train --config config.yaml` re-runs it
    summary.json     status, steps, first_nonfinite, val/test metrics, ... (rewritten at each validation)
    checkpoint.pt    weights of the best validation step
    *.parquet        metrics, per-layer statistics and events (see painn_ablate.training.sinks)
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import logging
import math
import os
import platform
import secrets
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from painn_ablate import __version__
from painn_ablate.core import files, runfolder
from painn_ablate.core.config import compile_pays, compose, flatten, to_yaml, velocity_weight
from painn_ablate.core.errors import RunDirError
from painn_ablate.core.outcome import (
    Criteria,
    DivergenceTracker,
    Origin,
    RunSummary,
    Status,
    crossed,
    first_blow_up,
    locate,
    metric_name,
)
from painn_ablate.data.datasets import NBodySplit, load_dataset
from painn_ablate.model.painn import PaiNN
from painn_ablate.training.monitor import EarlyWarning, Monitor, NonFinite, backward_nonfinite, layer_grad_norms
from painn_ablate.training.sinks import ParquetSink, ProgressSink, Recorder, Sink, WandbSink, unwritable_reason, write_json_atomic

log = logging.getLogger(__name__)

EVAL_BATCH = 500  # graphs per evaluation batch (no gradients, so larger than training batches)



# ----------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_name(cfg: DictConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg.name or f"{cfg.model.preset}-seed{cfg.seed}-{stamp}-{secrets.token_hex(2)}"


def resolve_run_dir(cfg: DictConfig) -> Path:
    run_dir = Path(cfg.out) if cfg.out else Path("runs") / run_name(cfg)
    if (run_dir / runfolder.SUMMARY).exists():
        raise RunDirError(f"out={run_dir} already holds a run; choose another out= or remove it")
    reason = unwritable_reason(run_dir)
    if reason:
        raise RunDirError(f"out={run_dir} cannot be written: {reason}")
    return run_dir


def total_steps(cfg: DictConfig, n_train: int) -> int:
    if cfg.train.epochs is not None:
        return cfg.train.epochs * math.ceil(n_train / cfg.train.batch_size)
    return cfg.train.steps


def finite_or_none(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


def batch_indices(n: int, batch_size: int, generator: torch.Generator):
    """Endless shuffled mini-batches of sample indices, reshuffled every epoch."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[start:start + batch_size]


TAIL = {"q50": 0.5, "q90": 0.9, "q99": 0.99, "max": 1.0}  # quantiles of the per-sample error the test keeps


@torch.no_grad()
def evaluate(model: PaiNN, split: NBodySplit, tail: bool = False) -> dict[str, Optional[float]]:
    """Mean squared error of pos_dt (equal to that of the predicted position) and vel_next.

    tail: also the distribution of the per-sample position MSE (one sample = one system of n
    particles): `pos_mse_q50`, `_q90`, `_q99` and `_max` (TAIL), so a mean hides no bad samples.
    """
    model.eval()
    sq_pos = sq_vel = 0.0
    n_nodes = 0
    per_sample = []
    for start in range(0, len(split), EVAL_BATCH):
        b = split.batch(torch.arange(start, min(start + EVAL_BATCH, len(split)), device=split.pos.device))
        pos_dt, vel_next = model(b.pos, b.vel, b.charge, b.edge_index)
        err = (pos_dt - b.pos_dt) ** 2
        sq_pos += float(err.sum())
        sq_vel += float(((vel_next - b.vel_next) ** 2).sum())
        n_nodes += b.pos.shape[0]
        if tail:
            per_sample.append(err.view(b.n_graphs, -1).mean(dim=1))
    model.train()
    out = {"pos_mse": finite_or_none(sq_pos / (3 * n_nodes)), "vel_mse": finite_or_none(sq_vel / (3 * n_nodes))}
    if tail:
        q = torch.quantile(torch.cat(per_sample).double().cpu(), torch.tensor(list(TAIL.values()), dtype=torch.float64))
        out.update({f"pos_mse_{name}": finite_or_none(float(v)) for name, v in zip(TAIL, q)})
    return out


def evaluate_checkpoint(run_dir: str | Path, split: str = "test") -> dict[str, Optional[float]]:
    """`evaluate(..., tail=True)` of a run folder's checkpoint (the best validation step) on one split:
    the per-sample error tail of a run recorded before the summary kept it."""
    run_dir = Path(run_dir)
    cfg = compose(base=run_dir / runfolder.CONFIG)  # through the schema: older folders spell some values differently
    model = PaiNN(cfg.model)
    model.load_state_dict(torch.load(run_dir / runfolder.CHECKPOINT, map_location="cpu", weights_only=True)["model"])
    return evaluate(model, _cached_split(to_yaml(cfg.data), split), tail=True)


@functools.lru_cache(maxsize=2)
def _cached_split(data_yaml: str, split: str) -> NBodySplit:
    """One split of a data config, loaded once per process (an export evaluates many checkpoints)."""
    return load_dataset(OmegaConf.create(data_yaml))[split]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(packages: Sequence[str] = ()) -> dict:
    """The machine and versions a run (or a report) is made with; `packages`: their installed versions too."""
    env = {"painn_ablate": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
           "threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for name in packages:
        try:
            env.setdefault(name, metadata.version(name))
        except metadata.PackageNotFoundError:
            env[name] = "not installed"
    return env


def layer_profile(rows: list[tuple[int, str, str, float]]) -> dict[str, dict[int, float]]:
    """Per-layer max ||mu|| and max |q| after mixing, from one statistics snapshot."""
    pick = lambda stat: {l: v for l, b, s, v in rows if b == "mixing" and s == stat}  # noqa: E731
    return {"mu_norm_max": pick("mu_norm_max"), "q_absmax": pick("q_absmax")}


# ----------------------------------------------------------------------------- one step


def make_optimizer(model: PaiNN, cfg: DictConfig) -> torch.optim.Optimizer:
    """Adam over all parameters; fused: one kernel for all ~50 tensors (the default loops over them in Python)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)


def make_schedule(opt: torch.optim.Optimizer, cfg: DictConfig, steps: int):
    """train.schedule: None for a constant lr; cosine: decay from train.lr to 0 at the last step."""
    if cfg.train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - 1))
    return None


@dataclass
class StepResult:
    loss: float
    loss_pos: float
    loss_vel: float
    grad_norm: float  # total gradient norm before clipping
    origin: Optional[NonFinite]  # where a non-finite value first appeared, None when all finite
    stats: list[tuple[int, str, str, float]]  # per-layer statistics on full steps, [] otherwise
    absmax: dict  # (layer, block) -> (max |q|, max |mu component|) after the block, every step


def train_step(model: PaiNN, batch, mon: Optional[Monitor], step: int, full: bool,
               clip: Optional[float], vel_weight: float = 1.0) -> StepResult:
    """Forward, loss, backward, gradient clipping and the non-finite checks, with one host sync.

    Leaves the optimizer step to the caller, which decides by the non-finite policy.
    mon=None runs the bare step (the benchmark's "monitoring off"). vel_weight: the velocity MSE's weight
    in the loss (config.velocity_weight of train.loss).
    """
    if mon is not None:
        mon.begin_step(full)
    pos_dt, vel_next = model(batch.pos, batch.vel, batch.charge, batch.edge_index)
    loss_pos = torch.mean((pos_dt - batch.pos_dt) ** 2)
    loss_vel = torch.mean((vel_next - batch.vel_next) ** 2)
    loss = loss_pos + loss_vel if vel_weight == 1.0 else loss_pos + vel_weight * loss_vel
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if clip is None:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    flags = mon.read_flags() if mon is not None else []
    origin = Monitor.first_nonfinite(flags, step)
    l_all, l_pos, l_vel, g = torch.stack([loss.detach(), loss_pos.detach(), loss_vel.detach(), grad_norm]).tolist()
    if origin is None and not math.isfinite(l_all):
        origin = NonFinite(step=step, phase="loss", tensor="loss", block="head")
    if origin is None and not math.isfinite(g):
        origin = backward_nonfinite(model, step)
    stats = mon.collect() if (full and mon is not None) else []
    if stats and origin is None:
        scale = 1.0 if clip is None else min(1.0, clip / (g + 1e-6))
        norms = layer_grad_norms(model)
        values = torch.stack([v for *_, v in norms]).tolist() if norms else []
        for (l, b, _), v in zip(norms, values):
            stats += [(l, b, "grad_norm", v), (l, b, "grad_norm_clipped", v * scale)]
    return StepResult(l_all, l_pos, l_vel, g, origin, stats, Monitor.state_absmax(flags))


# ----------------------------------------------------------------------------- the run


class Trainer:
    """One training run; `run()` below is the public entry point."""

    def __init__(self, cfg: DictConfig, run_dir: Path, splits: dict[str, NBodySplit], sinks: list[Sink],
                 should_stop: Optional[Callable[[int, dict], Optional[str]]]):
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = pick_device(cfg.train.device)
        self.splits = {k: v.to(self.device) for k, v in splits.items()}
        self.steps = total_steps(cfg, len(self.splits["train"]))
        self.compiled = compile_pays(cfg.model.compile, self.steps, self.device.type)  # model.compile=auto: by the rule
        if self.compiled:
            # As hooks, a previous run's compiled graphs end with it: they would count toward dynamo's
            # recompile limit (8 per function: 4 configurations x 2 monitoring variants), past which the
            # forward silently runs eager, and pass their shapes on (automatic dynamic shapes). The inductor
            # cache on disk makes this run's compile the warm one (~6 s).
            torch._dynamo.reset()
        log.info("model.compile=%s: %s (%d steps on %s)", cfg.model.compile,
                 "compiled" if self.compiled else "eager", self.steps, self.device.type)
        torch.manual_seed(cfg.seed)
        self.model = PaiNN(cfg.model, compile=self.compiled).to(self.device)
        self.opt = make_optimizer(self.model, cfg)
        self.schedule = make_schedule(self.opt, cfg, self.steps)
        self.vel_weight = velocity_weight(cfg.train.loss)
        self.recorder = Recorder([ParquetSink(), *sinks])
        self.should_stop = should_stop
        self.warning = EarlyWarning(cfg.monitor, cfg.model.L)
        self.summary: RunSummary = {
            "status": Status.RUNNING.value, "name": run_dir.name, "run_dir": str(run_dir), "preset": cfg.model.preset,
            "seed": cfg.seed, "steps_total": self.steps, "steps_completed": 0, "first_nonfinite": None,
            "nonfinite_events": 0, "first_divergence": None, "divergence": None, "early_warning": None,
            "stopped_early": None, "val": None, "test": None,
            "best_step": None, "final_loss": None, "last_stats": None, "last_finite_stats": None,
            "wall_seconds": 0.0, "ms_per_step": None, "n_params": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device), "compiled": self.compiled, "environment": environment(),
            "host": platform.node(), "pid": os.getpid(),  # a "running" summary whose process is gone is lost
        }
        self.best_val = math.inf
        self.best_state: Optional[dict] = None
        self.tracker = DivergenceTracker(Criteria.from_config(cfg.monitor), cfg.model.L)
        val = self.splits["val"]
        self.tracker.val_baseline = float(((val.pos_next - val.pos) ** 2).mean())  # zero-displacement MSE
        self.val_bad = False  # the last validation crossed the val criterion
        self.step_bad = False  # the last training step crossed a per-step criterion

    # -- records

    def write_summary(self) -> None:
        write_json_atomic(self.run_dir / runfolder.SUMMARY, self.summary)

    def record_nonfinite(self, origin: NonFinite, detail: str = "") -> None:
        self.summary["nonfinite_events"] += 1
        if self.summary["first_nonfinite"] is None:
            self.summary["first_nonfinite"] = origin.as_dict()
            log.warning("non-finite %s at step %d: layer %s, block %s, tensor %s", origin.phase, origin.step,
                        origin.layer, origin.block, origin.tensor)
        self.recorder.event({"kind": "nonfinite", **origin.as_dict(), "detail": detail})

    def snapshot(self, step: int, rows: list) -> None:
        """Record one set of per-layer statistics and feed the early warning."""
        self.recorder.layer_stats(step, rows)
        profile = {"step": step, **layer_profile(rows)}
        self.summary["last_stats"] = profile
        if all(math.isfinite(v) for *_, v in rows):
            self.summary["last_finite_stats"] = profile
        signal = self.warning.update(rows)
        if signal and signal["fires"] and self.summary["early_warning"] is None:
            self.summary["early_warning"] = {"step": step, **{k: signal[k] for k in ("risk", "mu_ratio", "mu_growth")}}
            self.recorder.event({"step": step, "kind": "early_warning", "value": signal["risk"],
                                 "detail": f"mu_ratio={signal['mu_ratio']:.3g} mu_growth={signal['mu_growth']:.3g}"})
        return signal

    @torch.no_grad()
    def replay_statistics(self, mon: Monitor, batch) -> list:
        """Statistics of the forward pass just run (weights not yet updated), for locating a blow-up."""
        mon.begin_step(full=True)
        self.model(batch.pos, batch.vel, batch.charge, batch.edge_index)
        return mon.collect()

    def record_divergence(self, origin: Origin) -> None:
        if self.summary["first_divergence"] is None:
            self.summary["first_divergence"] = origin.as_dict()
            log.warning("diverged at step %d (%s): layer %s, block %s, %s = %.3g", origin.step, origin.criterion,
                        origin.layer, origin.block, origin.stat, origin.value if origin.value is not None else math.nan)
        self.recorder.event({"step": origin.step, "kind": "divergence", "layer": origin.layer, "block": origin.block,
                             "tensor": origin.stat, "phase": "validation" if origin.criterion == "val" else "forward",
                             "value": origin.value, "detail": f"criterion={origin.criterion}"})

    def watch_divergence(self, step: int, res: StepResult, rows: list, replay: Callable[[], list]) -> list:
        """Check this step against the blow-up criteria; returns the statistics to record for it.

        A new episode is located on this forward pass's statistics (`rows`, or replayed).
        """
        tr = self.tracker
        criterion = tr.check_step(res.loss, res.absmax)
        if criterion is None and rows:
            criterion = crossed(rows, tr.crit, tr.n_layers)
        self.step_bad = criterion is not None
        if criterion is None:
            if not self.val_bad:
                tr.leave()
            return rows
        if not tr.in_episode:
            rows = rows or replay()
            origin = tr.confirm(step, criterion, rows)
            if origin is not None and tr.enter(origin):
                self.record_divergence(origin)
        return rows

    def validate(self, step: int) -> dict[str, float]:
        """Evaluate on the validation split, keep the best weights; returns val_* metrics."""
        metrics = evaluate(self.model, self.splits["val"])
        values = (metrics["pos_mse"], metrics["vel_mse"])
        # the best step by the training loss's own terms: the velocity counts only where the loss has it
        score = values[0] + self.vel_weight * values[1] if None not in values else math.inf
        if score < self.best_val:
            self.best_val = score
            self.summary.update(val=metrics, best_step=step)
            self.best_state = copy.deepcopy(self.model.state_dict())
            if self.cfg.train.checkpoint:
                files.atomic(self.run_dir / runfolder.CHECKPOINT,
                             lambda tmp: torch.save({"step": step, "model": self.best_state}, tmp))
        return {metric_name("val", k): (v if v is not None else math.nan) for k, v in metrics.items()}

    def watch_validation(self, step: int, val_pos_mse: float, batch, mon: Monitor) -> bool:
        """Check a validation against the val criterion; True when it is crossed."""
        self.val_bad = self.tracker.check_val(val_pos_mse if math.isfinite(val_pos_mse) else None)
        if self.val_bad and not self.tracker.in_episode:
            origin = self.tracker.confirm(step, "val", self.replay_statistics(mon, batch))
            if self.tracker.enter(origin):
                self.record_divergence(origin)
        elif not self.val_bad and not self.step_bad:
            self.tracker.leave()
        return self.val_bad

    # -- the loop

    def fit(self) -> dict:
        cfg, model = self.cfg, self.model
        every, policy, clip = cfg.monitor.every, cfg.monitor.on_nonfinite, cfg.train.grad_clip
        gen = torch.Generator().manual_seed(cfg.seed)
        batches = batch_indices(len(self.splits["train"]), cfg.train.batch_size, gen)
        train = self.splits["train"]
        start = time.perf_counter()
        step_times = []
        self.recorder.start(self.run_dir, cfg, flatten(cfg))
        self.write_summary()
        try:
            with Monitor(model, cfg.monitor) as mon:
                for step in range(self.steps):
                    t0 = time.perf_counter()
                    batch = train.batch(batches.__next__().to(self.device))
                    full = step % every == 0 or step == self.steps - 1
                    res = train_step(model, batch, mon, step, full, clip, self.vel_weight)
                    origin, stats_rows, g = res.origin, res.stats, res.grad_norm
                    l_all, l_pos, l_vel = res.loss, res.loss_pos, res.loss_vel
                    replay = lambda: self.replay_statistics(mon, batch)  # noqa: E731
                    if step == 0:
                        zero = float((batch.pos_dt ** 2).mean() + self.vel_weight * (batch.vel_next ** 2).mean())
                        self.tracker.set_reference(l_all, zero)
                    if origin is not None:
                        stats_rows = stats_rows or replay()
                        if origin.layer is None and origin.block in ("head", None):
                            # The loss or a head overflowed with the layers finite: the origin is the first
                            # layer whose statistics in this forward pass overflowed or crossed a bound.
                            where = locate(stats_rows, self.tracker.crit)
                            if where is not None:
                                origin.layer, origin.block = where[0], where[1]
                        self.record_nonfinite(origin)
                    else:
                        stats_rows = self.watch_divergence(step, res, stats_rows, replay)
                    self.tracker.observe_stats(stats_rows)
                    diverged_stop = self.tracker.in_episode and cfg.monitor.on_diverged == "stop"
                    lr = self.opt.param_groups[0]["lr"]  # the lr this step's update uses
                    if origin is None or policy == "continue":
                        self.opt.step()
                    self.opt.zero_grad(set_to_none=True)
                    if self.schedule is not None:
                        self.schedule.step()
                    step_times.append(time.perf_counter() - t0)
                    self.summary["final_loss"] = finite_or_none(l_all)
                    metrics = {"loss": l_all, "loss_pos": l_pos, "loss_vel": l_vel,
                               "lr": lr, "grad_norm": g,
                               "grad_norm_clipped": g if clip is None else min(g, clip), "step_time": step_times[-1]}
                    stop = origin is not None and policy == "stop"
                    if not stop and not diverged_stop and ((step + 1) % cfg.train.val_every == 0
                                                           or step == self.steps - 1):
                        metrics.update(self.validate(step))
                        if self.watch_validation(step, metrics[metric_name("val", "pos_mse")], batch, mon):
                            diverged_stop = cfg.monitor.on_diverged == "stop"
                    self.recorder.metrics(step, metrics)
                    self.summary["steps_completed"] = step + 1  # = rows of metrics.parquet, also when interrupted
                    signal = self.snapshot(step, stats_rows) if stats_rows else None
                    if diverged_stop and not stop:
                        self.summary["stopped_early"] = {"step": step, "reason": "diverged"}
                    if stop or diverged_stop:
                        break
                    if self.should_stop is not None and (signal is not None or (step + 1) % cfg.train.val_every == 0):
                        reason = self.should_stop(step, {"signal": signal, "val": self.summary["val"]})
                        if reason:
                            self.summary["stopped_early"] = {"step": step, "reason": reason}
                            break
                    if (step + 1) % cfg.monitor.flush_every == 0:
                        self.recorder.flush()
                        self.summary["wall_seconds"] = time.perf_counter() - start
                        self.write_summary()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into this): finalize, then pass it on
            self.summary["status"] = Status.INTERRUPTED.value
            raise
        finally:
            self.summary["wall_seconds"] = time.perf_counter() - start
            if step_times:
                # median: the first steps include one-off allocation and thread start-up
                self.summary["ms_per_step"] = 1000 * sorted(step_times)[len(step_times) // 2]
            self.recorder.flush()
            if self.summary["status"] == Status.INTERRUPTED:
                self.summary["divergence"] = self.tracker.summary()
                self.write_summary()
                self.recorder.finish(self.summary)

        if self.summary["nonfinite_events"]:
            self.summary["status"] = Status.EXPLODED.value
        elif self.tracker.diverged:
            self.summary["status"] = Status.DIVERGED.value
        else:
            self.summary["status"] = Status.STABLE.value
        self.summary["divergence"] = self.tracker.summary()
        self.summary["first_blow_up"] = first = first_blow_up(self.summary["first_divergence"],
                                                              self.summary["first_nonfinite"])
        warning = self.summary["early_warning"]
        # steps from the early warning to the first blow-up (negative: the warning came late)
        self.summary["early_warning_lead"] = first["step"] - warning["step"] if first and warning else None
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
            self.summary["test"] = evaluate(model, self.splits["test"], tail=True)
        self.summary["wall_seconds"] = time.perf_counter() - start
        self.write_summary()
        self.recorder.finish(self.summary)
        return self.summary


def build_sinks(cfg: DictConfig, steps: int) -> list[Sink]:
    sinks: list[Sink] = []
    if cfg.tracking.progress:
        sinks.append(ProgressSink(steps, desc=cfg.name or cfg.model.preset))
    if cfg.tracking.wandb:
        sinks.append(WandbSink())
    return sinks


def run(cfg: DictConfig, sinks: Optional[list[Sink]] = None,
        should_stop: Optional[Callable[[int, dict], Optional[str]]] = None) -> RunSummary:
    """Train the configuration `cfg` (from `painn_ablate.core.config.compose`) and return its summary.

    sinks: extra record sinks; None builds them from `cfg.tracking` (progress bar, W&B).
    should_stop(step, info) -> reason or None: asked at every statistics snapshot and validation;
    a reason ends the run early (a sweep's pruner uses it).
    """
    # Bad output and bad data fail here, before any run directory exists (the output first: loading
    # or generating data can take minutes); a cache miss integrates on the training device.
    run_dir = resolve_run_dir(cfg)
    splits = load_dataset(cfg.data, device=pick_device(cfg.train.device))
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    cfg.name = cfg.name or run_dir.name
    cfg.out = str(run_dir)
    files.write_text(run_dir / runfolder.CONFIG, to_yaml(cfg))  # atomic: a killed start leaves no half-written config
    steps = total_steps(cfg, len(splits["train"]))
    trainer = Trainer(cfg, run_dir, splits, build_sinks(cfg, steps) if sinks is None else sinks, should_stop)
    return trainer.fit()

