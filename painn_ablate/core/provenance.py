"""Where a record came from, so that it re-runs anywhere: the code version that made it.

The data set's fingerprint is `painn_ablate.data.datasets.fingerprint` (a hash of the arrays); a run
records both in summary.json (`code_version`, `data_fingerprint`), and every trial table carries them.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Optional, TypedDict

from painn_ablate import __version__


class CodeVersion(TypedDict):
    version: str  # the package version
    commit: Optional[str]  # the git commit of the checkout the package was imported from; None outside git
    dirty: Optional[bool]  # True: the package's tracked files differ from that commit; None outside git


def _git(*args: str) -> Optional[str]:
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def code_version() -> CodeVersion:
    """The package version plus, in a git checkout, its commit and whether painn_ablate/ differs from it
    (uncommitted changes to the package; other folders, e.g. results/, do not make a run dirty)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return CodeVersion(version=__version__, commit=None, dirty=None)
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "painn_ablate", "pyproject.toml")
    return CodeVersion(version=__version__, commit=commit, dirty=bool(status) if status is not None else None)
