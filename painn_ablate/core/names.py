"""Statistic names, one home: what the monitor records per layer and block, what the probe adds, and
the wide key they share in W&B and DataFrames (`stat_key`: layer5/mixing/mu_norm_max).

A stabilizer's own statistic (how often it acted) is `config.acted_stat(key)`, `<key>_frac`.
"""

from __future__ import annotations

# the state after a block (the monitor, every statistics step)
Q_MEAN = "q_mean"
Q_STD = "q_std"
Q_ABSMAX = "q_absmax"  # max |q|
MU_NORM_MEAN = "mu_norm_mean"
MU_NORM_MAX = "mu_norm_max"  # max per-feature 3D norm ||mu||
MU_NORM_Q = "mu_norm_q"  # its high quantile (monitor.quantile)
NONFINITE_Q = "nonfinite_q"
# tensors inside a block (model.Tap)
DQ_ABSMAX = "dq_absmax"  # aggregated scalar message, before its clamp
DMU_NORM_MAX = "dmu_norm_max"  # aggregated vector message, before its clamp
QMU_ABSMAX = "qmu_absmax"  # the mixing block's coupling term dqmu * <mu_V, mu_W>
MU_TERM_NORM_MAX = "mu_term_norm_max"  # the mixing block's self-gating term dmu * mu_W
# the probe's gains of a block at initialisation
NORM_GAIN = "norm_gain"  # ||out|| / ||in||
JVP_GAIN = "jvp_gain"  # ||J v|| for a random unit tangent v
UPDATE_GAIN = "update_gain"  # ||J v - v||, the residual update's gain

STATE_STATS = (MU_NORM_MAX, Q_ABSMAX)  # the state a blow-up criterion bounds; a trial's per-layer profile
FEEDBACK_STATS = (QMU_ABSMAX, MU_TERM_NORM_MAX)  # the two terms of the feedback loop the specification blames
GAIN_STATS = (NORM_GAIN, JVP_GAIN, UPDATE_GAIN)
PROBE_STATS = (*STATE_STATS, *FEEDBACK_STATS, *GAIN_STATS)  # what the probe summarises and exports


def stat_key(layer: int, block: str, stat: str) -> str:
    """The wide name of one per-layer statistic, alike in W&B and in DataFrames: layer5/mixing/mu_norm_max."""
    return f"layer{layer}/{block}/{stat}"
