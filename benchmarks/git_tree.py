"""The painn_ablate package as it was at a git ref, for the before/after rows of bench.py and
sweep_throughput.py."""

import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract_package(ref: str) -> Path:
    """A fresh folder holding painn_ablate/ at git `ref` (`git archive | tar -x`); put it first on the path."""
    tmp = Path(tempfile.mkdtemp(prefix="painn-ablate-before-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "painn_ablate"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    return tmp
