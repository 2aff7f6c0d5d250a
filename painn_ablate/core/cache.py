"""The project's cache folder, one home: generated data sets (data.datasets) and torch.compile's
inductor cache (core.process.use_inductor_cache) live under it, whatever the working directory."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PAINN_ABLATE_CACHE"
INDUCTOR = "inductor"  # the inductor cache's folder under the cache root


def default_cache_dir() -> Path:
    """$PAINN_ABLATE_CACHE, else $XDG_CACHE_HOME/painn-ablate, else ~/.cache/painn-ablate."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "painn-ablate"
