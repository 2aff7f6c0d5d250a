"""What the command line prints about runs and sweeps, in words: a run's closing paragraph (`describe`),
a trial's line (`trial_line`), the per-experiment table (`experiment_table`) and a frontier sweep's result
(`frontier_text`). Plain text; no torch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from painn_ablate.core import names
from painn_ablate.sweep.words import where_diverged, where_nonfinite

if TYPE_CHECKING:
    from painn_ablate.core.outcome import RunSummary


def describe(summary: RunSummary) -> str:
    """The one-paragraph summary printed at the end of a run."""
    from painn_ablate.core.outcome import Status

    s = summary
    lines = [f"{s['name']}: {s['status']} after {s['steps_completed']}/{s['steps_total']} steps "
             f"in {s['wall_seconds']:.1f} s ({s['ms_per_step'] or float('nan'):.1f} ms/step{', compiled' if s.get('compiled') else ''},"
             f" preset {s['preset']}, seed {s['seed']})."]
    if s["first_nonfinite"]:
        f = s["first_nonfinite"]
        lines.append(f"First non-finite value at step {f['step']}: {f['phase']} pass, layer {f['layer']}, "
                     f"block {f['block']}, tensor {f['tensor']} ({s['nonfinite_events']} event(s)).")
    if s.get("first_divergence"):
        d, div = s["first_divergence"], s.get("divergence") or {}
        spikes = div.get("spike_steps")
        lines.append(f"First divergence: {where_diverged(d)}; {div.get('episodes')} episode(s)"
                     + (f", {len(spikes)} spike(s) at steps {_steps(spikes)}" if spikes else "")
                     + (", each recovered (transient)." if s["status"] == Status.TRANSIENT else
                        ", sustained." if div.get("sustained") else "."))
    first = s.get("first_blow_up") or {}
    if first.get("phase"):
        init = first.get("init_criterion")
        lines.append(f"Phase of the first blow-up: {first['phase']} (the initial weights on its batch "
                     + (f"cross the {init} criterion)." if init else "cross no criterion)."))
    stats = s.get("last_finite_stats")
    if stats and stats[names.MU_NORM_MAX]:
        mu = ", ".join(f"L{l} {v:.3g}" for l, v in sorted(stats[names.MU_NORM_MAX].items(), key=lambda kv: int(kv[0])))
        lines.append(f"Max ||mu|| per layer at step {stats['step']} (last finite statistics): {mu}.")
    if s.get("early_warning"):
        w = s["early_warning"]
        lines.append(f"Early warning fired at step {w['step']} (risk {w['risk']:.3g}).")
    if s["val"]:
        lines.append(f"Best validation at step {s['best_step']}: pos MSE {s['val']['pos_mse']:.4g}, "
                     f"vel MSE {s['val']['vel_mse']:.4g}.")
    if s["test"]:
        lines.append(f"Test at that step: pos MSE {s['test']['pos_mse']:.4g}, vel MSE {s['test']['vel_mse']:.4g}.")
    lines.append(f"Records in {s['run_dir']}.")
    return " ".join(lines)


def fmt_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _steps(steps: list, shown: int = 8) -> str:
    """`1, 5, 9` or `1, 5, ... (12)`: a list of steps, cut short."""
    text = ", ".join(str(x) for x in steps[:shown])
    return text + (f", ... ({len(steps)})" if len(steps) > shown else "")


def trial_line(t, metric: str) -> str:
    """One finished trial: `#7 r2_full-s_msg-seed1  stable  val_pos_mse 0.0123  (41 s)`, a blow-up with what
    fired and where: `#3 original-seed0  exploded: non-finite loss at step 1, first in layer 4 interaction`."""
    a = t.user_attrs
    status = a.get("status", t.state.name.lower())
    line = f"#{t.number} {a.get('label', '?')}  {status}"
    if a.get("first_nonfinite"):
        line += f": {where_nonfinite(a['first_nonfinite'])}"
    elif a.get("first_divergence"):
        line += f": {where_diverged(a['first_divergence'])}"
    elif a.get("pruned_step") is not None:
        line += f" at step {a['pruned_step']} (early warning)"
    if a.get("blow_up_phase"):
        line += f" (phase {a['blow_up_phase']})"
    if a.get(metric) is not None:
        line += f"  {metric} {a[metric]:.4g}"
    if a.get("error"):
        line += f"  {a['error']}"
    if a.get("wall_seconds") is not None:
        line += f"  ({a['wall_seconds']:.0f} s)"
    return line


def experiment_table(frame):
    """Per experiment (preset + ablation) of a trials_frame: blow-ups k/n (outcome.is_blow_up: transient,
    diverged or exploded) with the 95% Wilson interval, the transient, diverged and exploded counts, the median
    test pos MSE of the stable trials; finished trials only."""
    import pandas as pd

    from painn_ablate.analysis.stats import wilson
    from painn_ablate.core.outcome import OUTCOMES, Status, is_blow_up

    done = frame[frame["status"].isin([str(o) for o in OUTCOMES]) & frame["experiment"].notna()] \
        if "experiment" in frame else frame.iloc[0:0]
    rows = []
    for name, g in done.groupby("experiment", sort=False):
        n, k = len(g), int(g["status"].map(is_blow_up).sum())
        lo, hi = wilson(k, n)
        stable = pd.to_numeric(g.loc[g["status"] == Status.STABLE.value, "test_pos_mse"], errors="coerce").dropna()
        rows.append({"experiment": name, "blow-ups": f"{k}/{n}", "95% CI": f"{100 * lo:.0f}-{100 * hi:.0f}%",
                     **{str(o): int((g["status"] == o.value).sum()) for o in OUTCOMES if is_blow_up(o)},
                     "median test_pos_mse (stable)": fmt_value(float(stable.median())) if len(stable) else "-"})
    return pd.DataFrame(rows)


def frontier_text(trials, param: str, ladder, result=None, family=None) -> str:
    """What a frontier sweep's trials say so far (sweeps/DESIGN.md amendment 9; analysis.frontier computes it):
    the ladder, rule FR1, per variant its critical rungs, the verdict per stabilizer group with n, and the
    blow-up rate at each rung with its Wilson 95% interval. `trials`: a trial table (studies.trial_rows' columns);
    `param`: the frontier parameter, `ladder`: its values in the sweep file; `result`: their
    analysis.frontier.Frontier where the caller has it already (computed here otherwise); `family`: likewise their
    analysis.frontier.FamilyFrontier, where the trials walk fairchem's, R2_full's and the original's presets."""
    import pandas as pd

    from painn_ablate.analysis import frontier as fr
    from painn_ablate.core.config import experiment_name

    missing = [c for c in ("preset", "ablate", "seed", param, "status") if c not in trials]
    if missing:
        return f"Stability frontier: not computed, the trials have no {', '.join(missing)} column."
    varied = _varied_settings(trials, param)
    if varied:
        return _settings_frontier_text(trials, param, ladder, varied)
    try:
        result = result if result is not None else fr.frontier_result(trials, ladder, lr=param)
    except ValueError as exc:  # a trial off the ladder (an override of the frontier parameter)
        return f"Stability frontier: not computed: {exc}"
    crit, rungs = result.critical, ", ".join(f"{i} {x:g}" for i, x in enumerate(result.ladder))
    lines = [f"Stability frontier over {param}: {int(crit['critical_rung'].notna().sum())} of {len(crit)} walks "
             f"complete (sweeps/DESIGN.md amendment 9). Rungs: {rungs}.",
             "Critical rung: the highest rung a seed trained at before the first it did not (-1: not even the "
             f"first; {len(result.ladder) - 1}: every rung, censored); paired comparisons use the seeds whose walks "
             "both completed."]
    presets = set(crit.loc[crit["ablate"] == "none", "preset"])
    if {"r2_full", "original"} <= presets:
        s, verdict = result.fr1.numbers["shift"], result.fr1.verdict
        lines.append(f"FR1, R2_full's critical rung above the original's: n {s.n}, up {s.up}, down {s.down}, "
                     f"sign test p {fmt_value(s.p_sign)}: {verdict}")
    if set(fr.FAMILY) <= presets:  # the two families on one frontier (amendment 16): its rules too
        family = family if family is not None else fr.family_result(trials, ladder, lr=param)
        for rule in family.rules:
            lines.append(f"{rule.rule}, {rule.claim}: {rule.evidence}: {rule.verdict}")
    name = [experiment_name(p, a) for p, a in zip(result.variants.get("preset", []), result.variants.get("ablate", []))]
    v = result.variants
    if len(v):
        lines.append(pd.DataFrame({
            "variant": name, "walks done": [f"{c}/{w}" for c, w in zip(v["complete"], v["walks"])],
            "median rung (95% CI)": [median_text(m, lo, hi) for m, lo, hi in zip(v["median_rung"], v["lo"], v["hi"])],
            "censored": v["censored"], "ended at init": v["ended_at_init"],
            "init-phase blow-ups": v["init_phase_blow_ups"], "LR sensitivity (median)": v["lr_sensitivity"].map(fmt_value),
        }).to_string(index=False))
    t = result.verdicts
    if len(t):
        step = (result.ladder[-1] / result.ladder[0]) ** (1 / (len(result.ladder) - 1)) if len(result.ladder) > 1 else 1
        lines.append(f"Verdicts: the shift of the critical rung against the preset, paired by seed (one rung ~ x{step:.2g} "
                     f"in {param}; exact sign test one-sided, Holm over each preset's groups):")
        lines.append(pd.DataFrame({
            "variant": [experiment_name(p, a) for p, a in zip(t["preset"], t["ablate"])], "question": t["question"],
            "n": t["n"], "median shift (95% CI)": [median_text(m, lo, hi) for m, lo, hi in
                                                    zip(t["shift"], t["shift_lo"], t["shift_hi"])],
            "up/down": [f"{u}/{d}" for u, d in zip(t["up"], t["down"])], "p sign": t["p_sign"].map(fmt_value),
            "p Holm": t["p_holm"].map(fmt_value), "p Wilcoxon": t["p_wilcoxon"].map(fmt_value), "verdict": t["verdict"],
        }).to_string(index=False))
    r = result.rates
    if len(r):
        lines.append("Blow-up rate per rung (transient, diverged or exploded: k/n, Wilson 95%):")
        cells = r.assign(variant=[experiment_name(p, a) for p, a in zip(r["preset"], r["ablate"])],
                         cell=_rate_cells(r))
        wide = cells.pivot(index="variant", columns="rung", values="cell").reindex(columns=range(len(result.ladder)))
        wide = wide.dropna(axis=1, how="all").fillna("-").reindex(dict.fromkeys(cells["variant"]))
        lines.append(wide.rename_axis(index=None, columns="rung").to_string())
    return "\n".join(lines)


def _rate_cells(rates) -> list[str]:
    """`3/10 11-60%`: each row of a frontier.rung_rates table as k/n with its Wilson 95% interval."""
    return [f"{k}/{n} {100 * lo:.0f}-{100 * hi:.0f}%" for k, n, lo, hi in
            zip(rates["k"], rates["n"], rates["lo"], rates["hi"])]


def _varied_settings(trials, param: str) -> list[str]:
    """The config keys (columns named like `model.stabilizers.g`) other than the frontier's that a sweep varies
    within one preset and ablate name: the walks are told apart by them, not by preset and ablate alone."""
    keys = [c for c in trials.columns if "." in c and c != param]
    groups = trials.groupby(["preset", "ablate"], dropna=False)
    return [c for c in keys if groups[c].nunique(dropna=False).max() > 1]


def _settings_frontier_text(trials, param: str, ladder, varied: list[str]) -> str:
    """frontier_text for a sweep that varies settings other than preset and ablate (e.g. a dose-response):
    per setting its critical rungs and the blow-up rate at each rung; amendment 9's verdicts, which compare
    ablate names against their preset, do not apply and are not printed."""
    from painn_ablate.analysis import frontier as fr

    variant, ladder = ("preset", "ablate", *varied), tuple(float(x) for x in ladder)
    try:
        critical = fr.critical_table(trials, variant=variant, lr=param, ladder=ladder)
        rates = fr.rung_rates(trials, variant=variant, lr=param, ladder=ladder)
    except ValueError as exc:
        return f"Stability frontier: not computed: {exc}"
    table = fr.setting_table(critical, variant)
    lines = [f"Stability frontier over {param}, per setting of {', '.join(varied)}: "
             f"{int(critical['critical_rung'].notna().sum())} of {len(critical)} walks complete. (The necessary / "
             "sufficient verdicts compare ablate names against their preset; this sweep varies other settings, "
             "so none is printed: sweeps/DESIGN.md names its rules.)"]
    if len(table):
        table["median rung (95% CI)"] = [median_text(m, lo, hi) for m, lo, hi in
                                         zip(table["median_rung"], table["lo"], table["hi"])]
        lines.append(table.drop(columns=["median_rung", "lo", "hi"]).to_string(index=False))
    if len(rates):
        cells = rates.assign(cell=_rate_cells(rates))
        lines.append("Blow-up rate per rung (k/n, Wilson 95%):")
        lines.append(cells.pivot_table(index=list(variant), columns="rung", values="cell", aggfunc="first")
                     .fillna("-").to_string())
    return "\n".join(lines)


def median_text(median: float, lo: float, hi: float) -> str:
    """`-2 (-3 to -1)`: a median with its interval, '-' when there is none."""
    if median is None or math.isnan(median):
        return "-"
    return f"{median:g} ({lo:g} to {hi:g})"


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def first_divergence_cell(row) -> str:
    """A trials_frame row's first divergence as `where_diverged` prints it, '-' when there is none."""
    import pandas as pd

    if pd.isna(row["first_divergence_step"]):
        return "-"
    f = {k: row[f"first_divergence_{k}"] for k in ("step", "layer", "block", "stat", "criterion")}
    f = {k: None if pd.isna(v) else int(v) if k in ("step", "layer") else v for k, v in f.items()}
    return where_diverged(f)
