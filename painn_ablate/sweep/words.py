"""A trial's outcome in words, alike in every engine's trial lines, `status` and optuna-dashboard's notes:
what fired first, then where it was located."""

from __future__ import annotations

import math
from typing import Any

from painn_ablate.core.outcome import METRICS

# What each blow-up criterion (outcome.Criteria, monitor.diverge_*) tests, in a reader's words.
CRITERION_WORDS = {"loss": "training loss over its bound (monitor.diverge_loss_factor)",
                   "val": "validation pos MSE over its bound (monitor.diverge_val_factor)",
                   "mu": "max ||mu|| over monitor.diverge_mu", "q": "max |q| over monitor.diverge_q",
                   "ratio": "last/first layer ||mu|| ratio over monitor.diverge_mu_ratio"}


def _present(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def where_nonfinite(f: dict) -> str:
    """What went non-finite, then where: `non-finite loss at step 1, first in layer 4 interaction`."""
    layer = f.get("layer")
    place = f"layer {int(layer)} {f['block']}" if _present(layer) else str(f["block"])
    return f"non-finite {f['tensor']} at step {int(f['step'])}, first in {place}"


def where_diverged(f: dict) -> str:
    """The criterion, then where it was located: `training loss over its bound (...) at step 2; located at
    layer 5 mixing, mu_norm_max 2.2e+03`."""
    criterion = f.get("criterion")
    words = CRITERION_WORDS.get(criterion, f"criterion {criterion}")
    located = f"layer {int(f['layer'])} {f.get('block')}" if _present(f.get("layer")) else f.get("block")
    value = f.get("value")
    shown = f", {f.get('stat')} {float(value):.3g}" if _present(value) else (f", {f['stat']}" if f.get("stat") else "")
    return f"{words} at step {int(f['step'])}" + (f"; located at {located}{shown}" if located else "")


def outcome_note(attrs: dict[str, Any]) -> str:
    """A finished trial's outcome as Markdown, for optuna-dashboard's trial note: the status, then what fired
    and where (every trial there shows 'Complete'; an exploded trial's value, inf, is not drawn)."""
    status = attrs.get("status")
    lines = [f"## {status}"]
    if attrs.get("first_nonfinite"):
        lines.append(where_nonfinite(attrs["first_nonfinite"]))
    if attrs.get("first_divergence"):
        lines.append(("first " if attrs.get("first_nonfinite") else "") + where_diverged(attrs["first_divergence"]))
    if attrs.get("pruned_step") is not None:
        lines.append(f"stopped by the early warning at step {attrs['pruned_step']}")
    for metric in METRICS:
        if attrs.get(metric) is not None:
            lines.append(f"{metric} {attrs[metric]:.4g}")
    if attrs.get("error"):
        lines.append(str(attrs["error"]))
    return "\n\n".join(lines)
