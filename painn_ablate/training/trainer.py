"""`run(cfg)`: train one PaiNN configuration and record what happened.

A blow-up is an *outcome* (painn_ablate.core.outcome), decided by one component, the
training loop's callback painn_ablate.training.blowup.BlowUpDetector: a non-finite loss,
activation or gradient makes the run "exploded" (by default, `monitor.on_nonfinite=stop`, it
ends there); a finite one by the criteria `monitor.diverge_*` makes it "transient" when every
episode recovered, "diverged" when one was sustained (by default, `monitor.on_diverged=continue`,
it trains on). Each is located to step, layer, block and statistic from the statistics of the
very forward pass where it fired (replayed when that step was not a statistics step), given its
phase (init | training) from the initial weights on the same batch, and recorded as an event and
in the summary (`first_nonfinite`, `first_divergence`, `first_blow_up`, `divergence`). The run
directory always holds what was recorded up to then:

    config.yaml      the resolved config; `painn-ablate train --config config.yaml` re-runs it
    summary.json     status, steps, first_nonfinite, val/test metrics, ... (rewritten at each validation)
    checkpoint.pt    weights of the best validation step
    *.parquet        metrics, per-layer statistics and events (see painn_ablate.training.sinks)
"""

from __future__ import annotations

import copy
import datetime as dt
import errno
import functools
import json
import logging
import math
import os
import platform
import secrets
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf

from painn_ablate import __version__
from painn_ablate.core import files, runfolder
from painn_ablate.core.config import compile_pays, compose, experiment_slug, flatten, to_yaml, velocity_weight
from painn_ablate.core.errors import ConfigError, RunDirError
from painn_ablate.core.outcome import (
    PHASE_KEY,
    RunSummary,
    Status,
    first_blow_up,
    had_training_blow_up,
    layer_profile,
    metric_name,
)
from painn_ablate.core.provenance import code_version
from painn_ablate.data.datasets import NBodySplit, load_dataset, split_fingerprint
from painn_ablate.model.painn import PaiNN
from painn_ablate.training.blowup import BlowUpDetector
from painn_ablate.training.monitor import Monitor, NonFinite, backward_nonfinite, layer_grad_norms
from painn_ablate.training.sinks import ParquetSink, ProgressSink, Recorder, Sink, WandbSink, unwritable_reason, write_json_atomic

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64  # compiled-graph cache entries per function a process keeps (dynamo: 8)
EVAL_BATCH = 500  # graphs per evaluation batch (no gradients, so larger than training batches)



class NoSpaceError(RunDirError):
    """The disk of the run directory filled up during the run (one line: the folder and "no space left")."""


# ----------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_name(cfg: DictConfig) -> str:
    """`r2_full-C_mu-seed0-20250101-120000-ab12`: the experiment (config.experiment_slug), seed, time."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg.name or f"{experiment_slug(cfg.model.preset, cfg.ablate)}-seed{cfg.seed}-{stamp}-{secrets.token_hex(2)}"


LOCK_FILE = runfolder.LOCK
# What a run writes into its folder; `overwrite` clears these (and nothing else) before a new run.
RUN_RECORDS = (runfolder.SUMMARY, runfolder.CONFIG, runfolder.CHECKPOINT, runfolder.METRICS, runfolder.LAYER_STATS,
               runfolder.EVENTS, "wandb")


def check_runnable(cfg: DictConfig) -> None:
    """What the config asks of this machine and file system, refused (ConfigError) before any folder exists."""
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"bad value for 'train.device': {cfg.train.device} was asked for, but this torch "
                          f"{torch.__version__} sees no CUDA device; use train.device=cpu or auto")
    if cfg.model.backend == "scatter":
        try:
            import torch_scatter  # noqa: F401
        except ImportError:
            raise ConfigError("bad value for 'model.backend': scatter needs torch_scatter, which is not installed: "
                              "pip install 'painn-ablate[scatter]' (or use model.backend=native)") from None
    if cfg.name is not None and (Path(cfg.name).name != cfg.name or cfg.name in (".", "..") or "/" in cfg.name):
        raise ConfigError(f"bad value for 'name': {cfg.name!r} is a path, not a name (the run folder is runs/<name>; "
                          "choose a folder with out=DIR)")


def _too_long(run_dir: Path) -> Optional[str]:
    """Why the file system cannot hold `run_dir`'s name, or None (NAME_MAX per component, PATH_MAX)."""
    ancestor = run_dir.absolute()
    while not os.path.exists(ancestor):  # False, not an error, for a name too long to look up
        ancestor = ancestor.parent
    try:
        name_max, path_max = os.pathconf(ancestor, "PC_NAME_MAX"), os.pathconf(ancestor, "PC_PATH_MAX")
    except (OSError, ValueError):
        return None
    for part in run_dir.absolute().parts:
        if len(os.fsencode(part)) > name_max:
            return f"the name {part[:40]}... is {len(os.fsencode(part))} bytes, the file system allows {name_max}"
    # the longest file a run writes: a parquet part's temporary inside its dataset folder
    longest = len(os.fsencode(str(run_dir.absolute() / "layer_stats.parquet" / ".part-000000.parquet.tmp-4194304")))
    if longest > path_max:
        return f"its files' paths would be {longest} bytes, the file system allows {path_max}"
    return None


def lock_holder(run_dir: Path) -> Optional[str]:
    """`pid 123 on host h` of a live process holding `run_dir`, or None (no lock, or a stale one: its pid is
    gone on this host)."""
    try:
        pid_text, _, host = (run_dir / LOCK_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None if not (run_dir / LOCK_FILE).exists() else "a process (unreadable lock)"
    if host == platform.node() and (pid == os.getpid() or not _alive(pid)):
        return None
    return f"pid {pid} on {host}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _refusal(run_dir: Path, overwrite: bool) -> Optional[str]:
    holder = lock_holder(run_dir)
    if holder:
        return (f"out={run_dir} is being written by {holder} (lock {run_dir / LOCK_FILE}); wait for it to finish "
                "or choose another out=")
    if (run_dir / runfolder.SUMMARY).exists() and not overwrite:
        return f"out={run_dir} already holds a run; choose another out=, or --overwrite to replace it"
    if (run_dir / runfolder.CONFIG).exists() and not overwrite:
        return (f"out={run_dir} holds {runfolder.CONFIG} but no {runfolder.SUMMARY} (a run that crashed before its first "
                "record?); choose another out=, or --overwrite to replace it")
    return None


def resolve_run_dir(cfg: DictConfig, overwrite: bool = False) -> Path:
    """The run folder of `cfg`, checked (RunDirError, one line) before any data loads; `claim_run_dir` takes it."""
    run_dir = Path(cfg.out) if cfg.out else Path("runs") / run_name(cfg)
    reason = _too_long(run_dir) or unwritable_reason(run_dir)
    if reason:
        raise RunDirError(f"out={run_dir} cannot be written: {reason}")
    refusal = _refusal(run_dir, overwrite)
    if refusal:
        raise RunDirError(refusal)
    return run_dir


def claim_run_dir(run_dir: Path, overwrite: bool = False) -> Path:
    """Take `run_dir` for this process: create its LOCK_FILE exclusively (O_EXCL: of two writers exactly one
    succeeds) with this pid and host; a stale lock (its pid gone on this host) is taken over. The second
    writer gets a RunDirError naming the holder. With `overwrite`, a previous run's records are removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    me = f"{os.getpid()} {platform.node()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if lock_holder(run_dir) is not None:
                break
            log.warning("taking over the stale lock %s (%s)", lock, lock.read_text().strip() if lock.exists() else "")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(me + "\n")
        if lock.read_text().strip() == me:  # a racing take-over of the same stale lock: one of us wins
            refusal = _refusal(run_dir, overwrite)  # under the lock: what a writer before us left
            if refusal:
                release_run_dir(run_dir)
                raise RunDirError(refusal)
            if overwrite:
                for name in RUN_RECORDS:
                    path = run_dir / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            return run_dir
        break
    raise RunDirError(_refusal(run_dir, overwrite) or f"out={run_dir} is being claimed by another process")


def release_run_dir(run_dir: Path) -> None:
    """Give up the claim of this process (a lock of another is left alone)."""
    lock = run_dir / LOCK_FILE
    try:
        if lock.read_text().split()[0] == str(os.getpid()):
            lock.unlink()
    except (OSError, IndexError):
        pass


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


def evaluate(model: PaiNN, split: NBodySplit, tail: bool = False) -> dict[str, Optional[float]]:
    """Mean squared error of pos_dt (equal to that of the predicted position) and vel_next.

    tail: also the distribution of the per-sample position MSE (one sample = one system of n
    particles): `pos_mse_q50`, `_q90`, `_q99` and `_max` (TAIL), so a mean hides no bad samples.
    """
    return evaluate_samples(model, split, tail)[0]


@torch.no_grad()
def evaluate_samples(model: PaiNN, split: NBodySplit, tail: bool = True) -> tuple[dict[str, Optional[float]],
                                                                                 Optional[np.ndarray]]:
    """`evaluate`'s metrics and, with tail, the position MSE of each sample (system) of the split, in its
    order: what a bootstrap over test systems resamples (analysis.stats.seed_and_sample_interval)."""
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
    if not tail:
        return out, None
    samples = torch.cat(per_sample).double().cpu()
    q = torch.quantile(samples, torch.tensor(list(TAIL.values()), dtype=torch.float64))
    out.update({f"pos_mse_{name}": finite_or_none(float(v)) for name, v in zip(TAIL, q)})
    return out, samples.numpy()


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


def graph_shapes(model: PaiNN, cfg: DictConfig) -> tuple:
    """What a compiled graph's shapes depend on: the parameters' shapes, the batch size and the data."""
    return (tuple((name, tuple(p.shape)) for name, p in model.named_parameters()), cfg.train.batch_size,
            to_yaml(cfg.data))


_graphs_for: list[tuple] = []  # graph_shapes of the graphs this process's dynamo holds (one entry, or none)


def keep_or_reset_graphs(shapes: tuple) -> None:
    """Before a compiled run: keep this process's compiled graphs when their shapes are this run's, else start
    dynamo afresh.

    Graphs outlive their run: torch.compile's cache is keyed by PaiNN._forward's code and guarded on the
    model's configuration (the guards read the monitor hooks' attributes, not their identity), so the next
    run of a configuration in this process (a sweep worker's next trial of that variant) reuses its graphs
    instead of re-tracing them (~15-20 s at L = 8, warm). Each configuration x monitoring variant is one
    entry, so a walk over many variants needs more than dynamo's default 8, past which the forward would
    silently run eager: RECOMPILE_LIMIT. Other shapes (F, L, batch, data) would turn on automatic dynamic
    shapes instead (a shape-generic graph, slower, and minutes of recompiling): those start afresh, and
    the inductor cache on disk makes their compile the warm one.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if _graphs_for != [shapes]:
        torch._dynamo.reset()
        _graphs_for[:] = [shapes]


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
        log.info("model.compile=%s: %s (%d steps on %s)", cfg.model.compile,
                 "compiled" if self.compiled else "eager", self.steps, self.device.type)
        torch.manual_seed(cfg.seed)
        self.model = PaiNN(cfg.model, compile=self.compiled).to(self.device)
        if self.compiled:
            keep_or_reset_graphs(graph_shapes(self.model, cfg))
        self.opt = make_optimizer(self.model, cfg)
        self.schedule = make_schedule(self.opt, cfg, self.steps)
        self.vel_weight = velocity_weight(cfg.train.loss)
        self.recorder = Recorder([ParquetSink(), *sinks])
        self.should_stop = should_stop
        self.summary: RunSummary = {
            "status": Status.RUNNING.value, "name": run_dir.name, "run_dir": str(run_dir), "preset": cfg.model.preset,
            "seed": cfg.seed, "steps_total": self.steps, "steps_completed": 0, "first_nonfinite": None,
            "nonfinite_events": 0, "first_divergence": None, "divergence": None, "blow_up_phase": None, "training_blow_up": None,
            "early_warning": None,
            "stopped_early": None, "val": None, "val_last": None, "val_initial": None, "test": None,
            "best_step": None, "final_loss": None, "last_stats": None, "last_finite_stats": None,
            "wall_seconds": 0.0, "ms_per_step": None, "n_params": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device), "compiled": self.compiled, "environment": environment(),
            "host": platform.node(), "pid": os.getpid(),  # a "running" summary whose process is gone is lost
        }
        self.best_val = math.inf
        self.best_state: Optional[dict] = None
        self.detector = BlowUpDetector(cfg, self.summary, self.recorder.event, self.vel_weight)

    # -- records

    def write_summary(self) -> None:
        write_json_atomic(self.run_dir / runfolder.SUMMARY, self.summary)

    def snapshot(self, step: int, rows: list) -> Optional[dict]:
        """Record one set of per-layer statistics and feed the early warning; returns its signal."""
        self.recorder.layer_stats(step, rows)
        profile = {"step": step, **layer_profile(rows)}
        self.summary["last_stats"] = profile
        if all(math.isfinite(v) for *_, v in rows):
            self.summary["last_finite_stats"] = profile
        return self.detector.on_snapshot(step, rows)

    @torch.no_grad()
    def replay_statistics(self, mon: Monitor, batch) -> list:
        """Statistics of a forward pass on `batch` with the current weights, for locating a blow-up."""
        mon.begin_step(full=True)
        self.model(batch.pos, batch.vel, batch.charge, batch.edge_index)
        return mon.collect()

    def validate(self, step: int) -> dict[str, float]:
        """Evaluate on the validation split, keep the best weights; returns val_* metrics."""
        metrics = evaluate(self.model, self.splits["val"])
        self.summary["val_last"] = metrics
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
        det = self.detector
        val = self.splits["val"]
        # the val criterion's references: the zero-displacement MSE and the initial network's val MSE
        self.summary["val_initial"] = evaluate(model, val)["pos_mse"]
        det.on_start(model, float(((val.pos_next - val.pos) ** 2).mean()), self.summary["val_initial"])
        try:
            with Monitor(model, cfg.monitor) as mon:
                for step in range(self.steps):
                    t0 = time.perf_counter()
                    batch = train.batch(batches.__next__().to(self.device))
                    full = step % every == 0 or step == self.steps - 1
                    res = train_step(model, batch, mon, step, full, clip, self.vel_weight)
                    origin, g = res.origin, res.grad_norm
                    l_all, l_pos, l_vel = res.loss, res.loss_pos, res.loss_vel
                    replay = lambda: self.replay_statistics(mon, batch)  # noqa: E731
                    stats_rows = det.on_step(step, batch, res, res.stats, replay)
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
                    if not stop and ((step + 1) % cfg.train.val_every == 0 or step == self.steps - 1):
                        metrics.update(self.validate(step))
                        det.on_validation(step, metrics[metric_name("val", "pos_mse")], batch, replay)
                    det.on_step_end(step)
                    diverged_stop = det.should_stop  # monitor.on_diverged=stop: the divergence became sustained
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
                self.summary["divergence"] = det.divergence()
                self.write_summary()
                self.recorder.finish(self.summary)

        self.summary["status"] = det.status().value
        self.summary["divergence"] = det.divergence()
        first = first_blow_up(self.summary["first_divergence"], self.summary["first_nonfinite"])
        self.summary["first_blow_up"] = first and {**first, **det.first_blow_up_detail()}
        self.summary[PHASE_KEY] = first and first["phase"]
        self.summary["training_blow_up"] = had_training_blow_up(self.summary["divergence"], self.summary["first_nonfinite"])
        warning = self.summary["early_warning"]
        # steps from the early warning to the first blow-up (negative: the warning came late)
        self.summary["early_warning_lead"] = first["step"] - warning["step"] if first and warning else None
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
            self.summary["test"], errors = evaluate_samples(model, self.splits["test"])
            files.atomic(self.run_dir / runfolder.TEST_ERRORS,
                         lambda tmp: pq.write_table(pa.table({"pos_mse": errors}), tmp))
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


def no_space(exc: BaseException) -> bool:
    """A full disk, wherever it surfaced (an OSError, or one chained under a library's own error)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(exc):  # SQLite's own words, under SQLAlchemy's and Optuna's
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _finalize_without_space(trainer: Trainer, run_dir: Path) -> None:
    """The summary of a run that hit a full disk: status error, rewritten in place where a temporary
    beside it no longer fits (truncating the old file frees its blocks first)."""
    trainer.summary.update(status=Status.ERROR.value, error="no space left on device")
    text = json.dumps(trainer.summary, indent=2, default=str) + "\n"
    try:
        write_json_atomic(run_dir / runfolder.SUMMARY, trainer.summary)
    except OSError:
        try:
            (run_dir / runfolder.SUMMARY).write_text(text)
        except OSError:
            log.warning("no space left for %s either", run_dir / runfolder.SUMMARY)


def run(cfg: DictConfig, sinks: Optional[list[Sink]] = None,
        should_stop: Optional[Callable[[int, dict], Optional[str]]] = None, overwrite: bool = False) -> RunSummary:
    """Train the configuration `cfg` (from `painn_ablate.core.config.compose`) and return its summary.

    sinks: extra record sinks; None builds them from `cfg.tracking` (progress bar, W&B).
    should_stop(step, info) -> reason or None: asked at every statistics snapshot and validation;
    a reason ends the run early (a sweep's pruner uses it).
    overwrite: reuse a folder that holds an earlier run or a crashed one (its records are removed first);
    without it such a folder is refused. A folder another live process writes is always refused.
    A full disk ends the run with a RunDirError naming the folder ("no space left"), its summary `error`.
    """
    # Bad output and bad data fail here, before any run directory exists (the output first: loading
    # or generating data can take minutes); a cache miss integrates on the training device.
    check_runnable(cfg)
    run_dir = resolve_run_dir(cfg, overwrite)
    splits = load_dataset(cfg.data, device=pick_device(cfg.train.device))
    warn_if_out_of_reach(splits["train"], cfg.model.r_cut)
    claim_run_dir(run_dir, overwrite)
    trainer = None
    try:
        cfg = copy.deepcopy(cfg)
        cfg.name = cfg.name or run_dir.name
        cfg.out = str(run_dir)
        files.write_text(run_dir / runfolder.CONFIG, to_yaml(cfg))  # atomic: a killed start leaves no half-written config
        steps = total_steps(cfg, len(splits["train"]))
        trainer = Trainer(cfg, run_dir, splits, build_sinks(cfg, steps) if sinks is None else sinks, should_stop)
        # What makes the record re-runnable anywhere: the exact data and code, and when it started.
        trainer.summary.update(data_fingerprint=split_fingerprint(splits), code_version=code_version(),
                               started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        return trainer.fit()
    except OSError as exc:
        if not no_space(exc):
            raise
        if trainer is not None:
            _finalize_without_space(trainer, run_dir)
        raise NoSpaceError(f"out={run_dir}: no space left on device; free space and run again "
                           "(--overwrite replaces this partial run)") from None
    finally:
        release_run_dir(run_dir)


def warn_if_out_of_reach(split: NBodySplit, r_cut: float, samples: int = 100) -> None:
    """A cutoff below every edge's length leaves the filters zero: the model then sees no neighbour."""
    b = split.batch(torch.arange(min(samples, len(split))))
    length = (b.pos[b.edge_index[0]] - b.pos[b.edge_index[1]]).norm(dim=-1)
    if length.numel() == 0 or bool((length >= r_cut).all()):
        shortest = f"{float(length.min()):.3g}" if length.numel() else "none"
        log.warning("no edge is shorter than model.r_cut=%g (shortest edge: %s in the first %d training samples): "
                    "the model sees no neighbours; raise model.r_cut", r_cut, shortest, b.n_graphs)
