"""The frontier walk (a sweep file's `frontier: <grid parameter>`): each point of the other parameters walks
up that ladder, one rung after a rung that trained, until a rung does not train (`trains`)."""

from __future__ import annotations

import json
from typing import Any, Optional

from painn_ablate.core.outcome import OUTCOMES, PHASE_KEY, Phase, is_blow_up
from painn_ablate.sweep.spec import Sweep, grid_points


def trains(attrs: dict) -> bool:
    """Whether a trial trained at its rung: it did not blow up, or its blow-up was present in the initial
    network already (phase init: no learning rate made it). A trial that raised did not train."""
    status = attrs.get("status")
    if status not in OUTCOMES:  # raised, pruned or interrupted: no outcome to judge it by
        return False
    return not is_blow_up(status) or attrs.get(PHASE_KEY) == Phase.INIT


def walk_key(sweep: Sweep, params: dict[str, Any]) -> str:
    """The point a trial walks for: its parameters less the frontier's."""
    return json.dumps({k: v for k, v in params.items() if k != sweep.frontier}, sort_keys=True, default=str)


def walk_starts(sweep: Sweep) -> list[dict[str, Any]]:
    """Each walk's first trial: the grid points at the frontier parameter's lowest value."""
    first = sweep.swept[sweep.frontier].values[0]
    return [point for point in grid_points(sweep) if point[sweep.frontier] == first]


def walk_next(sweep: Sweep, ran: list[tuple[dict[str, Any], bool]]) -> Optional[dict[str, Any]]:
    """The next trial of one walk from its trials so far, (params, trained): the next rung above the last
    one that trained, or None when a rung did not train or the ladder is done."""
    ladder = list(sweep.swept[sweep.frontier].values)
    done = {ladder.index(params[sweep.frontier]): ok for params, ok in ran}
    for i, value in enumerate(ladder):
        if i not in done:
            return {**ran[0][0], sweep.frontier: value} if ran else None
        if not done[i]:
            return None
    return None
