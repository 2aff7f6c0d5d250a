"""The frontier walk (a sweep file's `frontier: <grid parameter>`): each point of the other parameters walks
up that ladder, one rung after a rung that trained, until a rung does not train (`trains`). The walk over
rung indices (`next_rung`, `critical_rung`) is the one the engine runs (`walk_next`) and the analysis reads
back (painn_ablate.analysis.frontier)."""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from painn_ablate.core.outcome import OUTCOMES, PHASE_KEY, Phase, is_blow_up, is_sustained
from painn_ablate.sweep.spec import Sweep, grid_points


def trains(attrs: dict) -> bool:
    """Whether a trial trained at its rung: it ended below every criterion (stable, or transient) and had no
    training-phase blow-up (outcome.had_training_blow_up: every spike it had, the frozen initial network
    reproduced on its batch). A sustained blow-up does not train whatever its phase: a run that never left
    its initial failure did not train at any rung, and `failed_at_init` tells the two ends of a walk apart.
    A trial that raised did not train. Records made before `training_blow_up` existed are judged by the
    first blow-up's phase."""
    status = attrs.get("status")
    if status not in OUTCOMES or is_sustained(status):  # raised, pruned or interrupted: no outcome to judge
        return False
    if not is_blow_up(status):
        return True
    training = attrs.get("training_blow_up")
    return not training if training is not None else attrs.get(PHASE_KEY) == Phase.INIT


def failed_at_init(attrs: dict) -> bool:
    """A rung that did not train for a reason present before any update: a sustained blow-up none of whose
    blow-ups was of the training phase (reported apart from the frontier: no learning rate caused it)."""
    training = attrs.get("training_blow_up")
    if training is None:
        training = attrs.get(PHASE_KEY) != Phase.INIT
    return is_sustained(attrs.get("status")) and not training


def walk_key(sweep: Sweep, params: dict[str, Any]) -> str:
    """The point a trial walks for: its parameters less the frontier's."""
    return json.dumps({k: v for k, v in params.items() if k != sweep.frontier}, sort_keys=True, default=str)


def walk_starts(sweep: Sweep) -> list[dict[str, Any]]:
    """Each walk's first trial: the grid points at the frontier parameter's lowest value."""
    first = sweep.swept[sweep.frontier].values[0]
    return [point for point in grid_points(sweep) if point[sweep.frontier] == first]


def next_rung(done: dict[int, bool], ladder: Sequence) -> Optional[int]:
    """The walk up a ladder of one point: `done` maps a rung (an index of `ladder`) run so far to whether it
    trained. The next rung to run, or None when the walk is over (a rung did not train, or the top was reached)."""
    for i in range(len(ladder)):
        if i not in done:
            return i
        if not done[i]:
            return None
    return None


def critical_rung(done: dict[int, bool], ladder: Sequence) -> int:
    """The highest rung below the first that did not train (walking up from 0); -1 if rung 0 did not; the top
    if every rung trained. ValueError when a rung below the first failure was not run (the walk is incomplete)."""
    for i in range(len(ladder)):
        if i not in done:
            raise ValueError(f"rung {i} ({ladder[i]:g}) was not run: the walk is incomplete")
        if not done[i]:
            return i - 1
    return len(ladder) - 1


def walk_next(sweep: Sweep, ran: list[tuple[dict[str, Any], bool]]) -> Optional[dict[str, Any]]:
    """The next trial of one walk from its trials so far, (params, trained): the next rung above the last
    one that trained, or None when a rung did not train or the ladder is done."""
    if not ran:
        return None
    ladder = list(sweep.swept[sweep.frontier].values)
    i = next_rung({ladder.index(params[sweep.frontier]): ok for params, ok in ran}, ladder)
    return None if i is None else {**ran[0][0], sweep.frontier: ladder[i]}
