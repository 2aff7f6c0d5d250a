"""What happened to a run: its status, and where a blow-up started.

The one home of the outcome vocabulary. Every module that writes or reads a run's
status (train, the sinks, both sweep engines, analysis, report, cli) takes the names
from `Status` and the groupings below; nothing else spells them.

    exploded   a non-finite value (NaN/Inf) in the forward pass, the loss or a gradient
    diverged   every value finite, but a blow-up criterion fired (`Criteria`, keys monitor.diverge_*)
    stable     neither
    pruned     stopped by a sweep's pruner on the early warning, before any blow-up (censored)
    running    still training
    lost       killed without a word (SIGKILL, a lost machine): its summary still said running, and its
               process is gone (the loaders and `status` say so; a sweep re-runs it)
    interrupted  stopped by SIGINT/SIGTERM; what ran is recorded
    error      the trial raised (a sweep records the message)

A run that diverged and then went non-finite is `exploded`, with both origins recorded
(`first_divergence` before `first_nonfinite`). A run that diverged and came back below every
criterion stays `diverged`, with `recovered: true`.

Blow-up criteria (defaults in config.MonitorConfig, reasons in the README):

    loss   training loss > diverge_loss_factor x reference, reference = min(loss at step 0,
           the zero-prediction loss of that batch): a model already blown up at
           initialisation does not raise its own bar
    val    validation pos MSE > diverge_val_factor x the zero-displacement MSE of the val split
    mu     max ||mu|| after any block > diverge_mu
    q      max |q| after any block > diverge_q
    ratio  max ||mu|| after the last mixing / after the first mixing > diverge_mu_ratio

No torch here: the sweep engines and the analysis read this without loading the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Iterable, Optional, TypedDict


class Status(str, Enum):
    """A run's status; compares equal to its string ('stable' == Status.STABLE)."""

    RUNNING = "running"
    STABLE = "stable"
    DIVERGED = "diverged"
    EXPLODED = "exploded"
    PRUNED = "pruned"
    INTERRUPTED = "interrupted"
    LOST = "lost"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


OUTCOMES = (Status.STABLE, Status.DIVERGED, Status.EXPLODED)  # a finished run is one of these
BLOW_UPS = (Status.DIVERGED, Status.EXPLODED)


def is_blow_up(status) -> bool:
    return status in BLOW_UPS


def outcome_columns(status) -> dict[str, bool]:
    """The boolean outcome columns of a run or trial (tables, W&B summary): exploded, diverged, blew_up."""
    return {"exploded": status == Status.EXPLODED, "diverged": status == Status.DIVERGED,
            "blew_up": is_blow_up(status)}


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
    first_nonfinite: Optional[dict]  # monitor.NonFinite.as_dict(): step, layer, block, tensor, phase
    nonfinite_events: int
    first_divergence: Optional[dict]  # Origin.as_dict(): step, layer, block, stat, value, criterion
    divergence: Optional[dict]  # DivergenceTracker.summary(): episodes, recovered, peaks, reference_loss, ...
    first_blow_up: Optional[dict]  # first_blow_up(first_divergence, first_nonfinite)
    early_warning: Optional[dict]  # step, risk, mu_ratio, mu_growth
    early_warning_lead: Optional[int]  # steps between the warning and the first blow-up
    stopped_early: Optional[dict]  # step, reason
    val: Optional[dict]  # SPLIT_METRICS of the best checkpoint on the val split (columns metric_name("val", m))
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
STATE_STATS = ("mu_norm_max", "q_absmax")


@dataclass(frozen=True)
class Criteria:
    loss_factor: float
    val_factor: float
    mu: float
    q: float
    mu_ratio: float

    @classmethod
    def from_config(cls, monitor_cfg) -> "Criteria":
        m = monitor_cfg
        return cls(float(m.diverge_loss_factor), float(m.diverge_val_factor), float(m.diverge_mu),
                   float(m.diverge_q), float(m.diverge_mu_ratio))

    def bound(self, stat: str) -> float:
        return {"mu_norm_max": self.mu, "q_absmax": self.q}[stat]


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

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = str(d["value"])  # JSON has no inf/nan
        return d


def first_blow_up(first_divergence: Optional[dict], first_nonfinite: Optional[dict]) -> Optional[dict]:
    """A run's first blow-up, the earlier of its two recorded origins (a divergence on the same step
    comes first), as {step, layer, block, stat, criterion}; None when it never blew up. A non-finite
    origin names the tensor that went non-finite first as its statistic, and 'nonfinite' as criterion."""
    div, nan = first_divergence or None, first_nonfinite or None
    if div is not None and (nan is None or div["step"] <= nan["step"]):
        return {"step": int(div["step"]), "layer": div.get("layer"), "block": div.get("block"),
                "stat": div.get("stat"), "criterion": div.get("criterion")}
    if nan is not None:
        return {"step": int(nan["step"]), "layer": nan.get("layer"), "block": nan.get("block"),
                "stat": nan.get("tensor"), "criterion": "nonfinite"}
    return None


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
    mu = [r for r in rows if r[2] == "mu_norm_max"]
    if not mu:
        return None
    best, best_gain = mu[0], -math.inf
    for before, after in zip([None] + mu[:-1], mu):
        gain = after[3] / max(before[3], 1e-12) if before is not None else 1.0
        if gain > best_gain:
            best, best_gain = after, gain
    return best


def mu_ratio(rows: Iterable[Row], n_layers: int) -> Optional[float]:
    """Max ||mu|| after the last layer's mixing over that after the first layer's."""
    mu = {l: v for l, b, s, v in rows if b == "mixing" and s == "mu_norm_max"}
    if 1 not in mu or n_layers not in mu:
        return None
    return mu[n_layers] / max(mu[1], 1e-12)


def crossed(rows: Iterable[Row], crit: Criteria, n_layers: int) -> Optional[str]:
    """Which state criterion the statistics of one forward pass cross (mu, q, ratio), or None."""
    rows = list(rows)
    for _, _, stat, value in rows:
        if stat in STATE_STATS and (not math.isfinite(value) or value > crit.bound(stat)):
            return "mu" if stat == "mu_norm_max" else "q"
    ratio = mu_ratio(rows, n_layers)
    if ratio is not None and (not math.isfinite(ratio) or ratio > crit.mu_ratio):
        return "ratio"
    return None


@dataclass
class DivergenceTracker:
    """Follows one run's blow-up criteria step by step: episodes, peaks, the first origin.

    Per step the training loop calls `check_step` with the loss and the per-block absolute
    maxima of q and mu components (cheap, from the non-finite flags); a component over the
    bound means the norm is too (a norm under it can still have been over, so a step that
    fires is confirmed on the statistics of its replayed forward pass: `confirm`).
    """

    crit: Criteria
    n_layers: int
    reference_loss: Optional[float] = None
    val_baseline: Optional[float] = None
    in_episode: bool = False
    episodes: int = 0
    first: Optional[Origin] = None
    peaks: dict = field(default_factory=lambda: {"loss": None, "val_pos_mse": None, "mu_norm_max": None,
                                                 "q_absmax": None})

    def set_reference(self, loss: float, zero_loss: float) -> None:
        finite = [x for x in (loss, zero_loss) if math.isfinite(x)]
        self.reference_loss = min(finite) if finite else None

    def _peak(self, key: str, value: float) -> None:
        if value is None or math.isnan(value):
            return
        old = self.peaks[key]
        self.peaks[key] = value if old is None else max(old, value)

    def check_step(self, loss: float, absmax: dict[tuple[int, str], tuple[float, float]]) -> Optional[str]:
        """The criterion this step's cheap signals cross (loss, mu, q), or None.

        absmax: (layer, block) -> (max |q|, max |mu component|).
        """
        self._peak("loss", loss)
        if self.reference_loss is not None and loss > self.crit.loss_factor * self.reference_loss:
            return "loss"
        for q, mu in absmax.values():
            if mu > self.crit.mu / math.sqrt(3):  # ||mu|| >= |component| >= this can still be under crit.mu
                return "mu"
            if q > self.crit.q:
                return "q"
        return None

    def check_val(self, val_pos_mse: Optional[float]) -> bool:
        value = math.inf if val_pos_mse is None else val_pos_mse
        self._peak("val_pos_mse", value)
        return self.val_baseline is not None and value > self.crit.val_factor * self.val_baseline

    def observe_stats(self, rows: Iterable[Row]) -> None:
        for _, block, stat, value in rows:
            if stat in STATE_STATS:
                self._peak(stat, value)

    def confirm(self, step: int, criterion: str, rows: list[Row]) -> Optional[Origin]:
        """Given the replayed statistics of a step whose cheap check fired, the origin, or None.

        loss and val criteria stand on their own; mu and q are confirmed on the exact norms.
        """
        if criterion in ("mu", "q"):
            criterion = crossed(rows, self.crit, self.n_layers)
            if criterion is None:
                return None
        where = locate(rows, self.crit)
        layer, block, stat, value = where if where else (None, None, None, None)
        return Origin(step, layer, block, stat, value, criterion)

    def enter(self, origin: Origin) -> bool:
        """A criterion fired; returns True when this starts a new episode."""
        if self.first is None:
            self.first = origin
        if self.in_episode:
            return False
        self.in_episode = True
        self.episodes += 1
        return True

    def leave(self) -> None:
        self.in_episode = False

    @property
    def diverged(self) -> bool:
        return self.first is not None

    def summary(self) -> dict:
        return {"episodes": self.episodes, "recovered": self.diverged and not self.in_episode,
                "peaks": dict(self.peaks),
                "reference_loss": self.reference_loss, "val_baseline": self.val_baseline}
