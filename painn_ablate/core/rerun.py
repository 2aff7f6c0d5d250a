"""The inverse of compose: the override list that re-runs a saved run folder, checked to compose back to
its config.yaml (else `--config <run_dir>/config.yaml`), and which keys only name or place a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from painn_ablate.core import runfolder
from painn_ablate.core.config import ConfigError, compose, flatten, format_override

# Config keys that name or place a run but do not change what it computes (model.compile: how the step is
# computed, the same numbers within float tolerance; a run saved before it was auto said false).
BOOKKEEPING_KEYS = ("name", "out", "data.cache_dir", "train.checkpoint", "model.compile")


BOOKKEEPING_PREFIXES = ("tracking.",)


def results_view(flat: dict[str, Any]) -> dict[str, Any]:
    """The config keys that change what a run computes (not its name, place or logging)."""
    return {k: v for k, v in flat.items() if k not in BOOKKEEPING_KEYS and not k.startswith(BOOKKEEPING_PREFIXES)}


def rerun_overrides(run_dir: str | Path) -> Optional[list[str]]:
    """The shortest `painn-ablate train` overrides that compose to the run's saved config.

    `model=<preset> [ablate=<names>] seed=<k>` and every other key that differs from the
    preset; None when these do not compose to the same config (then re-run from the file).
    """
    config_file = Path(run_dir) / runfolder.CONFIG
    if not config_file.is_file():
        return None
    saved = results_view(flatten(OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)))
    preset, ablate = saved.get("model.preset", "original"), saved.get("ablate", "none")
    head = [f"model={preset}", *([f"ablate={ablate}"] if ablate != "none" else []), f"seed={saved.get('seed', 0)}"]
    try:
        base = results_view(flatten(compose(head)))
        diffs = [f"{k}={format_override(v)}" for k, v in saved.items()
                 if k not in ("seed", "ablate", "model.preset") and base.get(k) != v]
        overrides = head + diffs
        if results_view(flatten(compose(overrides))) != saved:
            return None
    except ConfigError:
        return None
    return overrides


def rerun_command(run_dir: str | Path, out: Optional[str] = None) -> str:
    """The command that re-runs a run into a new directory (default `runs/<name>-rerun`)."""
    run_dir = Path(run_dir)
    out = out or f"runs/{run_dir.name}-rerun"
    overrides = rerun_overrides(run_dir)
    if overrides is None:
        return f"painn-ablate train --config {run_dir / runfolder.CONFIG} out={out}"
    return " ".join(["painn-ablate train", *overrides, f"out={out}"])
