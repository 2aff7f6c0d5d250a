"""A sweep's progress read from its Optuna study: trials done per outcome, the time left, the best trial."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from painn_ablate.core.outcome import Status
from painn_ablate.sweep.spec import Sweep, pick_best, trial_budget


@dataclass
class Progress:
    """A sweep's state, read from the storage."""

    total: Optional[int]  # grid size or n_trials
    done: int = 0  # COMPLETE, PRUNED or failed with an error
    running: int = 0
    waiting: int = 0
    diverged: int = 0
    transient: int = 0
    exploded: int = 0
    errors: int = 0
    lost: int = 0  # failed by a lost heartbeat (re-run, unless retries ran out)
    best_value: Optional[float] = None
    best_label: Optional[str] = None
    finished: list[FrozenTrial] = field(default_factory=list)  # in order of completion
    steps_left: Optional[int] = None  # expected training steps of the trials not finished (running ones whole)
    seconds_per_step: Optional[float] = None  # of the finished trials, over every step they ran

    def eta_seconds(self, workers: int = 1) -> Optional[float]:
        """The time left by the trials' expected lengths: a blown-up trial counts the steps it ran, not the
        steps it was given, so the rate does not swing with the mix of outcomes."""
        if self.steps_left is None or not self.seconds_per_step:
            return None
        return self.steps_left * self.seconds_per_step / max(1, workers)


def expected_steps(t: FrozenTrial, default: Optional[int]) -> Optional[int]:
    """A trial's train.steps: recorded when it started, else its (fixed) parameter, else the sweep's."""
    for source in (t.user_attrs, t.params, t.system_attrs.get("fixed_params") or {}):
        if source.get("train.steps") is not None:
            return int(source["train.steps"])
    return default


def progress(study: optuna.Study, total: Optional[int], default_steps: Optional[int] = None) -> Progress:
    trials = study.get_trials(deepcopy=False)
    p = Progress(total=total)
    ran_steps, ran_seconds, left, unknown = 0, 0.0, 0, False
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            steps = expected_steps(t, default_steps)
            unknown |= steps is None
            left += steps or 0
        elif t.user_attrs.get("wall_seconds") is not None and t.user_attrs.get("steps_completed"):
            ran_steps += int(t.user_attrs["steps_completed"])
            ran_seconds += float(t.user_attrs["wall_seconds"])
        status = str(t.user_attrs.get("status", ""))
        if t.state == TrialState.RUNNING:
            p.running += 1
        elif t.state == TrialState.WAITING:
            p.waiting += 1
        elif t.state == TrialState.FAIL and "error" not in t.user_attrs:
            p.lost += 1
        else:
            p.done += 1
            p.errors += t.state == TrialState.FAIL
            p.diverged += status == Status.DIVERGED
            p.transient += status == Status.TRANSIENT
            p.exploded += status == Status.EXPLODED
            p.finished.append(t)
    p.finished.sort(key=lambda t: t.datetime_complete or dt.datetime.min)
    not_created = max(0, (total or 0) - originals(trials))  # random/bayes: trials not yet asked for
    if not unknown and (default_steps is not None or not not_created):
        p.steps_left = left + not_created * (default_steps or 0)
    p.seconds_per_step = ran_seconds / ran_steps if ran_steps else None
    best = best_trial(study, trials)
    if best is not None:
        p.best_value, p.best_label = best.value, best.user_attrs.get("label")
    return p


def best_trial(study: optuna.Study, trials: Optional[list[FrozenTrial]] = None) -> Optional[FrozenTrial]:
    """The best COMPLETE trial (sweep_file.pick_best: stable, with a finite value)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    goal = "minimize" if study.direction == optuna.study.StudyDirection.MINIMIZE else "maximize"
    return pick_best(((t, t.user_attrs.get("status"), t.value) for t in trials if t.state == TrialState.COMPLETE), goal)


def sweep_total(sweep: Sweep, study: optuna.Study, n_trials: Optional[int]) -> int:
    return trial_budget(sweep, n_trials, study.user_attrs.get("grid_size"))


def originals(trials: list[FrozenTrial]) -> int:
    """Trials counted against n_trials: a re-run of a lost trial is the same trial again."""
    return sum(1 for t in trials if "failed_trial" not in t.system_attrs)
