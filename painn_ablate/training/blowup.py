"""Blow-up detection in one home: `BlowUpDetector`, the training loop's one callback for it.

It owns everything that decides and records a blow-up (the vocabulary is core.outcome's):

* the criteria (core.outcome.Criteria: loss, val, mu, q, ratio; keys monitor.diverge_*), checked every
  step on the cheap per-block extrema the non-finite flags already give and confirmed on the exact
  statistics of the step's forward pass, replayed when it was not a statistics step;
* the non-finite origins (monitor.NonFinite), a loss overflow located to the first layer over a bound;
* spikes and episodes: a spike begins at a step where a criterion fires after a step where none did
  (it is located there: `first_divergence` is the first spike's origin) and lasts while they fire; an
  episode groups the spikes that follow each other within monitor.recover_window quiet steps, and ends
  (recovers) when none has fired for that window; one still firing monitor.sustained_steps after its
  start is sustained (and with monitor.on_diverged=stop the run ends there);
* the phase of every blow-up (core.outcome.Phase): a frozen copy of the initial network is run on the
  blow-up's batch (no autograd, with its own Monitor) and judged by the same criteria;
* the early warning (`EarlyWarning`) on the statistics snapshots.

Hooks, in the order the training loop calls them (like a Lightning callback's):

    on_start(model, val_baseline, val_initial)     before step 0: keep the initial weights
    on_step(step, batch, res, rows, replay)        after the backward pass, before the update -> rows
    on_validation(step, val_pos_mse, batch, replay) after a validation
    on_step_end(step)                              once per step, last: episodes close, become sustained
    on_snapshot(step, rows)                        a statistics snapshot -> the early warning's signal
    status(), divergence()                         at the end

It writes into the run's summary dict (first_nonfinite, nonfinite_events, first_divergence,
early_warning) and sends events to the recorder as they happen.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from painn_ablate.core.names import MU_NORM_MAX, Q_ABSMAX
from painn_ablate.core.outcome import (
    PHASE_KEY,
    STATE_STATS,
    Criteria,
    Origin,
    Phase,
    Row,
    Status,
    crossed,
    layer_profile,
    locate,
    mu_ratio,
    pass_criterion,
)
from painn_ablate.training.monitor import Monitor, NonFinite

log = logging.getLogger(__name__)

MAX_LOGGED_EPISODES = 50  # episodes kept in full in the summary's divergence.log (counts and steps: all)


# ----------------------------------------------------------------------------- early warning


class EarlyWarning:
    """Explosion-risk signal from the per-layer ||mu|| statistics.

      ratio  = core.outcome.mu_ratio: max ||mu|| after the last layer's mixing / after the first's
      growth = the last layer's max ||mu|| now / its minimum over the last `warn_window` snapshots
      risk   = min(ratio / warn_ratio, growth / warn_growth); it fires when risk >= 1.

    Both must hold: a depth-wise amplification (the mixing feedback loop, ratio) that is also
    growing during training (growth). The original PaiNN has a large ratio already at
    initialisation, so the ratio alone would flag every original run at step 0; growth alone
    flags the normal early-training rise of ||mu||.
    """

    def __init__(self, cfg, n_layers: int):
        self.warn_ratio = float(cfg.warn_ratio)
        self.warn_growth = float(cfg.warn_growth)
        self.last = n_layers
        self.history: deque[float] = deque(maxlen=int(cfg.warn_window))

    def update(self, rows: list[Row]) -> Optional[dict]:
        """Feed one snapshot of statistics; returns the signal (with `fires`) or None."""
        ratio = mu_ratio(rows, self.last)
        if ratio is None:
            return None
        last = next(v for l, b, s, v in rows if l == self.last and b == "mixing" and s == MU_NORM_MAX)
        self.history.append(last)
        growth = last / max(min(self.history), 1e-12) if len(self.history) == self.history.maxlen else 1.0
        if not (math.isfinite(ratio) and math.isfinite(growth)):
            risk = math.inf
        else:
            risk = min(ratio / self.warn_ratio, growth / self.warn_growth)
        return {"risk": risk, "mu_ratio": ratio, "mu_growth": growth, "fires": risk >= 1.0}


# ----------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    """One blow-up episode: from its first spike to its recovery (no criterion for recover_window steps)."""

    start: int
    criterion: str
    layer: Optional[int]
    block: Optional[str]
    phase: Optional[str] = None  # Phase value
    init_criterion: Optional[str] = None  # what the initial network crossed on the same batch
    last_fire: int = -1
    recovered_at: Optional[int] = None  # the first step of the quiet window that closed it
    sustained: bool = False
    spikes: list[int] = field(default_factory=list)  # the steps its spikes began
    stats: Optional[dict] = None  # outcome.layer_profile of the trained network's pass
    init_stats: Optional[dict] = None  # the same of the initial network on that batch

    @property
    def steps_to_recover(self) -> Optional[int]:
        return None if self.recovered_at is None else self.recovered_at - self.start

    def as_dict(self) -> dict:
        return {"step": self.start, "spikes": list(self.spikes), "criterion": self.criterion, "layer": self.layer,
                "block": self.block,
                "phase": self.phase, "init_criterion": self.init_criterion, "recovered_at": self.recovered_at,
                "steps_to_recover": self.steps_to_recover,
                "sustained": self.sustained or self.recovered_at is None,  # still open: still firing
                "stats": self.stats, "init_stats": self.init_stats}


@dataclass
class PhaseCheck:
    """The initial network on one batch: which criterion it crosses (None: none), its per-layer profile."""

    criterion: Optional[str]
    stats: dict

    @property
    def phase(self) -> Phase:
        return Phase.INIT if self.criterion is not None else Phase.TRAINING


# ----------------------------------------------------------------------------- the detector


@dataclass
class BlowUpDetector:
    """One run's blow-up detection (module docstring): criteria, episodes, phase, early warning.

    cfg: the run's config (monitor.*, model.L, train.loss's velocity weight via vel_weight).
    summary: the run's summary dict, updated in place. event: the recorder's event sink.
    """

    cfg: object
    summary: dict
    event: Callable[[dict], None]
    vel_weight: float = 1.0
    crit: Criteria = field(init=False)
    n_layers: int = field(init=False)
    reference_loss: Optional[float] = None
    val_baseline: Optional[float] = None
    val_initial: Optional[float] = None
    episodes: list[Episode] = field(default_factory=list)
    spikes: list[int] = field(default_factory=list)  # the step every spike began
    first: Optional[Origin] = None
    in_spike: bool = False  # criteria fire since the last spike began (its origin is recorded)
    step_bad: bool = False  # the last training step crossed a per-step criterion (by the cheap check)
    val_bad: bool = False  # the last validation crossed the val criterion (it stands until the next one)
    peaks: dict = field(default_factory=lambda: {"loss": None, "val_pos_mse": None, MU_NORM_MAX: None,
                                                 Q_ABSMAX: None})

    def __post_init__(self):
        mon = self.cfg.monitor
        self.crit = Criteria.from_config(mon)
        self.n_layers = int(self.cfg.model.L)
        self.window = int(mon.recover_window)
        self.sustained_steps = int(mon.sustained_steps)
        self.stop_when_sustained = mon.on_diverged == "stop"
        self.warning = EarlyWarning(mon, self.n_layers)
        self.initial: Optional[torch.nn.Module] = None
        self.first_blow_up_check: Optional[PhaseCheck] = None
        self.first_blow_up_rows: Optional[list] = None

    # -- state

    @property
    def episode(self) -> Optional[Episode]:
        """The open episode, or None."""
        return self.episodes[-1] if self.episodes and self.episodes[-1].recovered_at is None else None

    @property
    def in_episode(self) -> bool:
        return self.episode is not None

    @property
    def diverged(self) -> bool:
        return self.first is not None

    @property
    def sustained(self) -> bool:
        """Some episode is sustained, or one is still open (still firing at the end)."""
        return any(e.sustained for e in self.episodes) or self.in_episode

    @property
    def should_stop(self) -> bool:
        """monitor.on_diverged=stop and the open episode became sustained."""
        e = self.episode
        return self.stop_when_sustained and e is not None and e.sustained

    @property
    def val_reference(self) -> Optional[float]:
        """The val criterion's reference: max(zero-displacement val MSE, the initial network's val MSE)."""
        finite = [x for x in (self.val_baseline, self.val_initial) if x is not None and math.isfinite(x)]
        return max(finite) if finite else None

    def _peak(self, key: str, value: Optional[float]) -> None:
        if value is None or math.isnan(value):
            return
        old = self.peaks[key]
        self.peaks[key] = value if old is None else max(old, value)

    # -- hooks

    def on_start(self, model: torch.nn.Module, val_baseline: Optional[float], val_initial: Optional[float]) -> None:
        """Before step 0: keep a frozen copy of the initial network; the val criterion's references."""
        self.initial = copy.deepcopy(model).requires_grad_(False)
        self.val_baseline, self.val_initial = val_baseline, val_initial

    def set_reference(self, loss: float, zero: float) -> None:
        """The loss criterion's reference from step 0 (`loss_reference`)."""
        self.reference_loss = loss_reference(loss, zero)

    def check_step(self, loss: float, absmax: dict[tuple[int, str], tuple[float, float]]) -> Optional[str]:
        """The criterion this step's cheap signals cross (loss, mu, q), or None.

        absmax: (layer, block) -> (max |q|, max |mu component|). A component over diverge_mu / sqrt(3)
        may still have a norm under diverge_mu: a new episode is confirmed on the exact norms (`confirm`).
        """
        self._peak("loss", loss)
        if self.crit.loss_crossed(loss, self.reference_loss):
            return "loss"
        mu_bound, q_bound = self.crit.bound(MU_NORM_MAX) / math.sqrt(3), self.crit.bound(Q_ABSMAX)
        for q, mu in absmax.values():
            if mu > mu_bound:
                return "mu"
            if q > q_bound:
                return "q"
        return None

    def confirm(self, step: int, criterion: str, rows: list[Row]) -> Optional[Origin]:
        """Given the statistics of a step whose cheap check fired, the origin, or None.

        loss and val criteria stand on their own; mu and q are confirmed on the exact norms.
        """
        if criterion in ("mu", "q"):
            criterion = crossed(rows, self.crit, self.n_layers)
            if criterion is None:
                return None
        where = locate(rows, self.crit)
        layer, block, stat, value = where if where else (None, None, None, None)
        return Origin(step, layer, block, stat, value, criterion)

    def observe_stats(self, rows: list[Row]) -> None:
        for _, block, stat, value in rows:
            if stat in STATE_STATS:
                self._peak(stat, value)

    def on_step(self, step: int, batch, res, rows: list[Row], replay: Callable[[], list]) -> list[Row]:
        """One training step's result (trainer.StepResult) before the update: non-finite origins, the
        per-step criteria, a new episode. Returns the statistics to record for the step (replayed when a
        blow-up had to be located on a step without them)."""
        if step == 0:
            self.set_reference(res.loss, zero_loss(batch, self.vel_weight))
        if res.origin is not None:
            rows = rows or replay()
            self._nonfinite(res.origin, batch, rows)  # a spike, an episode: as they were
        else:
            rows = self._divergence(step, res, rows, replay, batch)
        self.observe_stats(rows)
        return rows

    def on_validation(self, step: int, val_pos_mse: float, batch, replay: Callable[[], list]) -> bool:
        """A validation's pos MSE against the val criterion; True when it is crossed (it stands until the
        next validation). A crossing outside an episode begins one, located on `replay()`'s statistics."""
        value = val_pos_mse if math.isfinite(val_pos_mse) else None
        self._peak("val_pos_mse", math.inf if value is None else value)
        self.val_bad = self.crit.val_crossed(value, self.val_reference)
        if self.val_bad and not self.in_spike:
            rows = replay()
            self._spike(self.confirm(step, "val", rows), batch, rows)
        elif not self.val_bad and not self.step_bad:
            self.in_spike = False
        return self.val_bad

    def on_step_end(self, step: int) -> None:
        """Last hook of a step: the open episode becomes sustained, or recovers after a quiet window."""
        e = self.episode
        if e is None:
            return
        if self.in_spike:
            e.last_fire = step
            if not e.sustained and step - e.start >= self.sustained_steps:
                e.sustained = True
                log.warning("divergence sustained at step %d (began at step %d)", step, e.start)
        elif step - e.last_fire >= self.window:
            e.recovered_at = e.last_fire + 1
            self.event({"step": e.recovered_at, "kind": "recovered", "layer": e.layer, "block": e.block,
                        "value": float(e.steps_to_recover), PHASE_KEY: e.phase,
                        "detail": f"steps_to_recover={e.steps_to_recover} sustained={e.sustained}"})

    def on_snapshot(self, step: int, rows: list[Row]) -> Optional[dict]:
        """A statistics snapshot: feed the early warning; its first firing is recorded."""
        signal = self.warning.update(rows)
        if signal and signal["fires"] and self.summary.get("early_warning") is None:
            self.summary["early_warning"] = {"step": step, **{k: signal[k] for k in ("risk", "mu_ratio", "mu_growth")}}
            self.event({"step": step, "kind": "early_warning", "value": signal["risk"],
                        "detail": f"mu_ratio={signal['mu_ratio']:.3g} mu_growth={signal['mu_growth']:.3g}"})
        return signal

    # -- the phase

    def initial_pass(self, batch) -> PhaseCheck:
        """The initial network on `batch` (no autograd), judged by the criteria of one pass (loss against
        this run's step-0 reference, mu, q, ratio, non-finite)."""
        criterion, rows, _ = judge_pass(self.initial, batch, self.cfg.monitor, self.crit, self.n_layers,
                                        self.vel_weight, self.reference_loss)
        return PhaseCheck(criterion, _jsonable(layer_profile(rows)))

    def _phase(self, batch, rows: list[Row]) -> PhaseCheck:
        check = self.initial_pass(batch)
        if self.first_blow_up_check is None:
            self.first_blow_up_check, self.first_blow_up_rows = check, rows
        return check

    # -- recording

    def _nonfinite(self, origin: NonFinite, batch, rows: list[Row]) -> None:
        if origin.layer is None and origin.block in ("head", None):
            # The loss or a head overflowed with the layers finite: the origin is the first layer whose
            # statistics in this forward pass overflowed or crossed a bound.
            where = locate(rows, self.crit)
            if where is not None:
                origin.layer, origin.block = where[0], where[1]
        s = self.summary
        s["nonfinite_events"] += 1
        phase = None
        if s["first_nonfinite"] is None:
            phase = self._phase(batch, rows).phase.value
            s["first_nonfinite"] = {**origin.as_dict(), PHASE_KEY: phase}
            log.warning("non-finite %s at step %d: layer %s, block %s, tensor %s (phase %s)", origin.phase,
                        origin.step, origin.layer, origin.block, origin.tensor, phase)
        self.event({"kind": "nonfinite", **origin.as_dict(), PHASE_KEY: phase, "detail": ""})

    def _divergence(self, step: int, res, rows: list[Row], replay: Callable[[], list], batch) -> list[Row]:
        criterion = self.check_step(res.loss, res.absmax)
        if criterion is None and rows:
            criterion = crossed(rows, self.crit, self.n_layers)
        self.step_bad = criterion is not None
        if criterion is None:
            if not self.val_bad:
                self.in_spike = False
            return rows
        if not self.in_spike:
            rows = rows or replay()
            origin = self.confirm(step, criterion, rows)
            if origin is not None:  # None: a component over the bound, its norm under it
                self._spike(origin, batch, rows)
        return rows

    def _spike(self, origin: Origin, batch, rows: list[Row]) -> None:
        """A criterion fired after a quiet step: a spike, located and phased; the first of an episode opens it."""
        check = self._phase(batch, rows)
        origin.phase = check.phase.value
        self.in_spike = True
        self.spikes.append(origin.step)
        if self.episode is None:
            self.episodes.append(Episode(origin.step, origin.criterion, origin.layer, origin.block, origin.phase,
                                         check.criterion, last_fire=origin.step,
                                         stats=_jsonable(layer_profile(rows)), init_stats=check.stats))
        self.episode.spikes.append(origin.step)
        if self.first is None:
            self.first = origin
            self.summary["first_divergence"] = origin.as_dict()
            log.warning("diverged at step %d (%s): layer %s, block %s, %s = %.3g, phase %s", origin.step,
                        origin.criterion, origin.layer, origin.block, origin.stat,
                        origin.value if origin.value is not None else math.nan, origin.phase)
        self.event({"step": origin.step, "kind": "divergence", "layer": origin.layer, "block": origin.block,
                    "tensor": origin.stat, "phase": "validation" if origin.criterion == "val" else "forward",
                    "value": origin.value, PHASE_KEY: origin.phase,
                    "detail": f"criterion={origin.criterion} init_criterion={check.criterion}"})

    # -- the end

    def status(self) -> Status:
        """exploded (non-finite), diverged (sustained or still firing), transient (recovered), stable."""
        if self.summary["nonfinite_events"]:
            return Status.EXPLODED
        if self.sustained:
            return Status.DIVERGED
        return Status.TRANSIENT if self.episodes else Status.STABLE

    def first_blow_up_detail(self) -> dict:
        """The first blow-up's initial-vs-trained evidence: init_criterion, init_stats, stats."""
        check = self.first_blow_up_check
        if check is None:
            return {}
        return {"init_criterion": check.criterion, "init_stats": check.stats,
                "stats": _jsonable(layer_profile(self.first_blow_up_rows or []))}

    def divergence(self) -> dict:
        """The summary's `divergence` block."""
        return {"spikes": len(self.spikes), "spike_steps": list(self.spikes),
                "episodes": len(self.episodes), "episode_steps": [e.start for e in self.episodes],
                "steps_to_recover": [e.steps_to_recover for e in self.episodes],
                "phases": [e.phase for e in self.episodes],
                "sustained": self.diverged and self.sustained,
                "recovered": self.diverged and not self.in_episode,
                "peaks": dict(self.peaks), "reference_loss": self.reference_loss,
                "val_baseline": self.val_baseline, "val_initial": self.val_initial,
                "val_reference": self.val_reference, "recover_window": self.window,
                "sustained_steps": self.sustained_steps,
                "log": [e.as_dict() for e in self.episodes[:MAX_LOGGED_EPISODES]]}


@torch.no_grad()
def judge_pass(net: torch.nn.Module, batch, monitor_cfg, crit: Criteria, n_layers: int, vel_weight: float,
               reference: Optional[float]) -> tuple[Optional[str], list[Row], float]:
    """One forward pass of `net` on `batch` without autograd, with its own Monitor: the criterion it crosses
    (outcome.pass_criterion; loss against `reference`), its statistics and its loss. The phase of a blow-up
    (the initial network on the blow-up's batch) and the probe's per-batch verdict at initialisation."""
    with Monitor(net, monitor_cfg) as mon:
        mon.begin_step(full=True)
        pos_dt, vel_next = net(batch.pos, batch.vel, batch.charge, batch.edge_index)
        flags = mon.read_flags()
        rows = mon.collect()
    loss = float(((pos_dt - batch.pos_dt) ** 2).mean() + vel_weight * ((vel_next - batch.vel_next) ** 2).mean())
    nonfinite = Monitor.first_nonfinite(flags, 0) is not None
    return pass_criterion(rows, crit, n_layers, loss=loss, reference=reference, nonfinite=nonfinite), rows, loss


def zero_loss(batch, vel_weight: float) -> float:
    """The loss of predicting zero displacement and zero velocity on `batch` (the loss criterion's floor)."""
    return float((batch.pos_dt ** 2).mean() + vel_weight * (batch.vel_next ** 2).mean())


def loss_reference(loss: float, zero: float) -> Optional[float]:
    """The loss criterion's reference: min(loss at step 0, zero-prediction loss), of the finite ones."""
    finite = [x for x in (loss, zero) if math.isfinite(x)]
    return min(finite) if finite else None


def _jsonable(profile: dict) -> dict:
    """A layer profile as summary.json keeps it: floats (json writes inf and nan as Infinity and NaN, as it
    does for last_stats and the peaks), so a table column of them stays numeric."""
    return {stat: {layer: float(v) for layer, v in values.items()} for stat, values in profile.items()}
