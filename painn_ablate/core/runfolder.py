"""A run folder's format, one home: the files a run leaves behind and where a sweep puts its trials.

    config.yaml          the resolved config; enough to re-run exactly
    summary.json         the RunSummary (core.outcome); a folder holding one is a run folder
    metrics.parquet      per step: loss, lr, grad norms, validation metrics
    layer_stats.parquet  long format: step, layer, block, stat, value
    events.parquet       NaN/Inf events, divergence episodes, early warnings
    checkpoint.pt        weights at the best validation step
    .lock                pid and host of the process writing the folder, while it runs

A sweep's trials live in `<sweep out>/trials/<label>-<tag>/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

CONFIG = "config.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.parquet"
LAYER_STATS = "layer_stats.parquet"
EVENTS = "events.parquet"
CHECKPOINT = "checkpoint.pt"
TEST_ERRORS = "test_errors.parquet"  # per test system, in the split's order: its pos MSE at the best validation step
TRIALS = "trials"
LOCK = ".lock"  # "<pid> <host>" of the process writing the folder, while it runs (training.trainer.claim_run_dir)


def trial_dir(sweep_out: Union[str, Path], label: str, tag: Union[int, str]) -> Path:
    """The run folder of one trial: an int tag is an Optuna trial number (t0007), a str one is used as it is."""
    return Path(sweep_out) / TRIALS / f"{label}-{f't{tag:04d}' if isinstance(tag, int) else tag}"
