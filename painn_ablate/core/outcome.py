"""What happened to a run: its status, and where a blow-up started.

The one home of the outcome vocabulary. Every module that writes or reads a run's
status (train, the sinks, both sweep engines, analysis, report, cli) takes the names
from `Status` and the groupings below; nothing else spells them.

    exploded   a non-finite value (NaN/Inf) in the forward pass, the loss or a gradient
    diverged   every value finite, a blow-up criterion fired (`Criteria`, keys monitor.diverge_*), and the
               divergence was sustained: still firing at the end of the run (its episode open: a criterion
               fired within the last monitor.recover_window steps), or firing monitor.sustained_steps or
               more steps after its episode began
    transient  every value finite, a criterion fired, and every episode recovered: no criterion fired for
               monitor.recover_window steps, within monitor.sustained_steps of its start, and the run
               trained on to its end below every criterion (it keeps its final test MSE)
    stable     none of these
    pruned     stopped by a sweep's pruner on the early warning, before any blow-up (censored)
    running    still training
    lost       killed without a word (SIGKILL, a lost machine): its summary still said running, and its
               process is gone (the loaders and `status` say so; a sweep re-runs it)
    interrupted  stopped by SIGINT/SIGTERM; what ran is recorded
    error      the trial raised (a sweep records the message)

A run that diverged and then went non-finite is `exploded`, with both origins recorded
(`first_divergence` before `first_nonfinite`). A blow-up is any of transient, diverged, exploded
(`BLOW_UPS`, the "blow-up rate"); a sustained one is diverged or exploded (`SUSTAINED`).

Every blow-up has a phase (`Phase`): the initial weights, evaluated on the batch of the step where it
fired, cross a criterion there too (`init`: the failure was there before any update) or do not
(`training`). training.blowup.BlowUpDetector decides it.

Blow-up criteria (defaults in config.MonitorConfig, reasons in the README):

    loss   training loss > diverge_loss_factor x reference, reference = min(loss at step 0,
           the zero-prediction loss of that batch): a model already blown up at
           initialisation does not raise its own bar
    val    validation pos MSE > diverge_val_factor x max(the zero-displacement MSE of the val split, the
           initial network's val pos MSE): a data set whose baseline is tiny does not make a run that
           barely moved "diverged"
    mu     max ||mu|| after any block > diverge_mu
    q      max |q| after any block > diverge_q
    ratio  max ||mu|| after the last mixing / after the first mixing > diverge_mu_ratio (`mu_ratio`)

A criterion set to None (null in the config) is off.

No torch here: the sweep engines and the analysis read this without loading the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Iterable, Optional, TypedDict

from painn_ablate.core import names


class Status(str, Enum):
    """A run's status; compares equal to its string ('stable' == Status.STABLE)."""

    RUNNING = "running"
    STABLE = "stable"
    DIVERGED = "diverged"
    TRANSIENT = "transient"
    EXPLODED = "exploded"
    PRUNED = "pruned"
    INTERRUPTED = "interrupted"
    LOST = "lost"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


OUTCOMES = (Status.STABLE, Status.TRANSIENT, Status.DIVERGED, Status.EXPLODED)  # a finished run is one of these
BLOW_UPS = (Status.TRANSIENT, Status.DIVERGED, Status.EXPLODED)  # the blow-up rate counts these
SUSTAINED = (Status.DIVERGED, Status.EXPLODED)  # blow-ups that did not recover
WITH_METRIC = (Status.STABLE, Status.TRANSIENT, Status.DIVERGED)  # finite to the end: their val/test metric stands


def is_blow_up(status) -> bool:
    return status in BLOW_UPS


def is_sustained(status) -> bool:
    return status in SUSTAINED


def outcome_columns(status) -> dict[str, bool]:
    """The boolean outcome columns of a run or trial (tables, W&B summary): exploded, diverged, transient,
    blew_up (any of the three), sustained (diverged or exploded)."""
    return {"exploded": status == Status.EXPLODED, "diverged": status == Status.DIVERGED,
            "transient": status == Status.TRANSIENT, "blew_up": is_blow_up(status),
            "sustained": is_sustained(status)}


class Phase(str, Enum):
    """When a blow-up's cause was there: the initial weights cross a criterion on the same batch (INIT),
    or only the trained ones do (TRAINING). Compares equal to its string."""

    INIT = "init"
    TRAINING = "training"

    def __str__(self) -> str:
        return self.value


PHASE_KEY = "blow_up_phase"  # the phase's flat name: events column, Optuna attribute, W&B key, table column


# ----------------------------------------------------------------------------- run summary


class RunSummary(TypedDict, total=False):
    """A run's summary.json (runfolder.SUMMARY): what train writes, every sink reports, both sweep engines record as a
    trial's result, and the loaders flatten into columns (analysis.flatten_summary)."""

    status: str  # a Status value
    name: str
    run_dir: str
    preset: str
    seed: int
    steps_total: int
    steps_completed: int  # = rows of metrics.parquet, also when interrupted
    first_nonfinite: Optional[dict]  # monitor.NonFinite.as_dict(): step, layer, block, tensor, phase (the pass),
    #                                  and PHASE_KEY (init | training)
    nonfinite_events: int
    first_divergence: Optional[dict]  # Origin.as_dict(): step, layer, block, stat, value, criterion, phase
    divergence: Optional[dict]  # BlowUpDetector.divergence(): episodes, spikes, steps_to_recover, sustained, ...
    first_blow_up: Optional[dict]  # first_blow_up(first_divergence, first_nonfinite), with its phase and the
    #                                initial and trained network's per-layer statistics on its batch
    blow_up_phase: Optional[str]  # a Phase value: that of the first blow-up
    training_blow_up: Optional[bool]  # any blow-up of phase training (`had_training_blow_up`); None while running
    early_warning: Optional[dict]  # step, risk, mu_ratio, mu_growth
    early_warning_lead: Optional[int]  # steps between the warning and the first blow-up
    stopped_early: Optional[dict]  # step, reason
    val: Optional[dict]  # SPLIT_METRICS of the best checkpoint on the val split (columns metric_name("val", m))
    val_last: Optional[dict]  # SPLIT_METRICS of the last validation (the "final" loss of an LR sensitivity)
    val_initial: Optional[float]  # the initial network's val pos MSE (before any update)
    test: Optional[dict]  # the same on the test split, with the tail quantiles
    best_step: Optional[int]
    final_loss: Optional[float]
    last_stats: Optional[dict]  # stat -> layer -> value after the last statistics step
    last_finite_stats: Optional[dict]
    wall_seconds: float
    ms_per_step: Optional[float]
    n_params: int
    device: str
    compiled: bool  # the training forward ran through torch.compile (model.compile resolved: config.compile_pays)
    environment: dict  # train.environment()
    host: str
    pid: int  # a "running" summary whose process is gone is lost
    data_fingerprint: str  # data.datasets.fingerprint of the splits trained and tested on
    code_version: dict  # core.provenance.CodeVersion: package version, git commit, dirty
    started_at: str  # ISO 8601, UTC


# ----------------------------------------------------------------------------- metric names

METRIC_SPLITS = ("val", "test")  # summary["val"]["pos_mse"] -> column val_pos_mse, as in W&B and Optuna
SPLIT_METRICS = ("pos_mse", "vel_mse")  # their columns exist even before the first validation


def metric_name(split: str, metric: str) -> str:
    """The one name of a split's metric: `val_pos_mse` (summary column, W&B summary key, Optuna user
    attribute and sweep-file metric alike)."""
    return f"{split}_{metric}"


# Every metric a sweep can optimise: name -> (split, metric).
METRICS = {metric_name(s, m): (s, m) for s in METRIC_SPLITS for m in SPLIT_METRICS}


# The statistics a blow-up origin is read from, in the order they are checked per block.
STATE_STATS = names.STATE_STATS


def _opt(x) -> Optional[float]:
    return None if x is None else float(x)


@dataclass(frozen=True)
class Criteria:
    """The blow-up criteria's bounds (keys monitor.diverge_*); None switches one off."""

    loss_factor: Optional[float]
    val_factor: Optional[float]
    mu: Optional[float]
    q: Optional[float]
    mu_ratio: Optional[float]

    @classmethod
    def from_config(cls, monitor_cfg) -> "Criteria":
        m = monitor_cfg
        return cls(_opt(m.diverge_loss_factor), _opt(m.diverge_val_factor), _opt(m.diverge_mu),
                   _opt(m.diverge_q), _opt(m.diverge_mu_ratio))

    def bound(self, stat: str) -> float:
        value = {names.MU_NORM_MAX: self.mu, names.Q_ABSMAX: self.q}[stat]
        return math.inf if value is None else value

    def loss_crossed(self, loss: float, reference: Optional[float]) -> bool:
        """The loss criterion: loss > loss_factor x reference (a non-finite loss is not finite, not this)."""
        return self.loss_factor is not None and reference is not None and loss > self.loss_factor * reference

    def val_crossed(self, val_pos_mse: Optional[float], reference: Optional[float]) -> bool:
        """The val criterion: val pos MSE (None: non-finite) > val_factor x reference."""
        value = math.inf if val_pos_mse is None else val_pos_mse
        return self.val_factor is not None and reference is not None and value > self.val_factor * reference


@dataclass
class Origin:
    """Where a blow-up started: 1-based layer, block, the statistic that crossed, its value.

    criterion: which test fired (loss, val, mu, q, ratio, nonfinite).
    """

    step: int
    layer: Optional[int]
    block: Optional[str]
    stat: Optional[str]
    value: Optional[float]
    criterion: str
    phase: Optional[str] = None  # a Phase value, once the initial network was evaluated on its batch

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = str(d["value"])  # JSON has no inf/nan
        return d


def first_blow_up(first_divergence: Optional[dict], first_nonfinite: Optional[dict]) -> Optional[dict]:
    """A run's first blow-up, the earlier of its two recorded origins (a divergence on the same step
    comes first), as {step, layer, block, stat, criterion, phase}; None when it never blew up. A non-finite
    origin names the tensor that went non-finite first as its statistic, and 'nonfinite' as criterion.
    phase: the origin's `phase` (a divergence) or PHASE_KEY (a non-finite origin, whose `phase` is the pass);
    None in records made before phases existed."""
    div, nan = first_divergence or None, first_nonfinite or None
    if div is not None and (nan is None or div["step"] <= nan["step"]):
        return {"step": int(div["step"]), "layer": div.get("layer"), "block": div.get("block"),
                "stat": div.get("stat"), "criterion": div.get("criterion"), "phase": div.get("phase")}
    if nan is not None:
        return {"step": int(nan["step"]), "layer": nan.get("layer"), "block": nan.get("block"),
                "stat": nan.get("tensor"), "criterion": "nonfinite", "phase": nan.get(PHASE_KEY)}
    return None


def had_training_blow_up(divergence: Optional[dict], first_nonfinite: Optional[dict]) -> Optional[bool]:
    """Whether any blow-up of a run was of the training phase: an episode whose first spike the initial network
    did not reproduce on its batch, or a non-finite value it did not (the frontier's "did not train" at a rung).
    None when a phase is missing (records made before phases existed)."""
    phases = list((divergence or {}).get("phases") or [])
    if first_nonfinite:
        phases.append(first_nonfinite.get(PHASE_KEY))
    if any(p is None for p in phases):
        return None
    return any(p == Phase.TRAINING for p in phases)


Row = tuple[int, str, str, float]  # (layer, block, stat, value), as Monitor.collect returns


def locate(rows: Iterable[Row], crit: Criteria) -> Optional[tuple[int, str, str, float]]:
    """The first (layer, block) in data-flow order whose state is non-finite or over its bound.

    rows: one forward pass's statistics in the order the hooks fired. When no block crossed a
    bound (a validation blow-up with moderate features), the block with the largest max ||mu||
    relative to the block before it, the place where amplification was strongest.
    """
    rows = [r for r in rows if r[2] in STATE_STATS]
    for layer, block, stat, value in rows:
        if not math.isfinite(value) or value > crit.bound(stat):
            return layer, block, stat, value
    mu = [r for r in rows if r[2] == names.MU_NORM_MAX]
    if not mu:
        return None
    best, best_gain = mu[0], -math.inf
    for before, after in zip([None] + mu[:-1], mu):
        gain = after[3] / max(before[3], 1e-12) if before is not None else 1.0
        if gain > best_gain:
            best, best_gain = after, gain
    return best


def mu_ratio(rows: Iterable[Row], n_layers: int) -> Optional[float]:
    """Max ||mu|| after the last layer's mixing over that after the first layer's: the one depth-wise ratio
    (the ratio criterion, the early warning, the probe). None when either layer is missing."""
    mu = {l: v for l, b, s, v in rows if b == "mixing" and s == names.MU_NORM_MAX}
    if 1 not in mu or n_layers not in mu:
        return None
    return mu[n_layers] / max(mu[1], 1e-12)


def crossed(rows: Iterable[Row], crit: Criteria, n_layers: int) -> Optional[str]:
    """Which state criterion the statistics of one forward pass cross (mu, q, ratio), or None."""
    rows = list(rows)
    for _, _, stat, value in rows:
        if stat in STATE_STATS and (not math.isfinite(value) or value > crit.bound(stat)):
            return "mu" if stat == names.MU_NORM_MAX else "q"
    ratio = mu_ratio(rows, n_layers) if crit.mu_ratio is not None else None
    if ratio is not None and (not math.isfinite(ratio) or ratio > crit.mu_ratio):
        return "ratio"
    return None


def pass_criterion(rows: Iterable[Row], crit: Criteria, n_layers: int, loss: Optional[float] = None,
                   reference: Optional[float] = None, nonfinite: bool = False) -> Optional[str]:
    """Which criterion one forward pass on one batch crosses: nonfinite, loss (loss > factor x reference),
    mu, q or ratio; None when none. What decides a blow-up's phase (the initial network's pass on the
    blow-up's batch) and the probe's per-batch verdict."""
    if nonfinite or (loss is not None and not math.isfinite(loss)):
        return "nonfinite"
    if loss is not None and crit.loss_crossed(loss, reference):
        return "loss"
    return crossed(rows, crit, n_layers)


def layer_profile(rows: Iterable[Row]) -> dict[str, dict[int, float]]:
    """Per-layer max ||mu|| and max |q| after mixing, from one forward pass's statistics."""
    rows = list(rows)
    pick = lambda stat: {l: v for l, b, s, v in rows if b == "mixing" and s == stat}  # noqa: E731
    return {names.MU_NORM_MAX: pick(names.MU_NORM_MAX), names.Q_ABSMAX: pick(names.Q_ABSMAX)}
