"""The figures the reports and notebooks share: each takes the tables of `analysis` or `experiments`
and returns a matplotlib figure (Agg backend: nothing opens a window); `save_figure` writes one.

    run figures          plot_heatmaps, plot_layer_curves, plot_feedback (per-layer statistics of runs),
                         plot_outcomes, plot_validation, plot_importances
    experiment figures   plot_map, plot_probe_depths, plot_profiles, plot_ablation, plot_phase_by_depth (trial
                         tables), plot_first_steps (a curves table)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

from painn_ablate.analysis.stats import wilson
from painn_ablate.analysis.tables import PROFILE_STATS, probed_over_depth
from painn_ablate.core import files, names
from painn_ablate.core.config import MonitorConfig

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------- run figures


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _tidy_log(ax, x: bool = False) -> None:
    """Log axes spanning more than a decade without the crowded minor-tick labels (call after plotting)."""
    from matplotlib.ticker import NullFormatter

    axes = [(ax.yaxis, ax.get_ylim())] + ([(ax.xaxis, ax.get_xlim())] if x else [])
    for axis, (lo, hi) in axes:
        if lo > 0 and hi / lo > 10:
            axis.set_minor_formatter(NullFormatter())


def _log10(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(np.where(values > 0, values, np.nan))
    out[np.isinf(values)] = np.inf
    return out


def layer_step_grid(stats: pd.DataFrame, run_dir: str, stat: str, block: str = "mixing"):
    """(steps, layers, grid[layer, step]) of one statistic of one run; NaN where missing."""
    rows = stats[(stats["run_dir"] == run_dir) & (stats["stat"] == stat) & (stats["block"] == block)]
    grid = rows.pivot_table(index="layer", columns="step", values="value", aggfunc="last", dropna=False)
    return np.asarray(grid.columns), np.asarray(grid.index), grid.to_numpy(dtype=float)


def plot_heatmaps(stats: pd.DataFrame, runs: pd.DataFrame, stats_names: Sequence[str] = names.STATE_STATS,
                  block: str = "mixing", title: str = "", shared_scale: bool = True):
    """Layer x step heat maps of log10 of each statistic (columns) for each run (rows).

    shared_scale: one colour scale per statistic for all runs, so runs compare at a glance;
    False: each panel scaled to itself. Cyan cells: non-finite (Inf/NaN) values; a red x
    marks the first blow-up (its step and origin layer).
    """
    plt = _pyplot()
    import matplotlib

    runs = runs.reset_index(drop=True)
    fig, axes = plt.subplots(len(runs), len(stats_names), figsize=(5.5 * len(stats_names), 1.2 + 1.7 * len(runs)),
                             squeeze=False)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="cyan", over="cyan")
    limits = {}
    for stat in stats_names:
        logs = _log10(stats.loc[stats["run_dir"].isin(runs["run_dir"]) & (stats["stat"] == stat)
                                & (stats["block"] == block), "value"].to_numpy(dtype=float))
        finite = logs[np.isfinite(logs)]
        limits[stat] = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for r, run in runs.iterrows():
        for c, stat in enumerate(stats_names):
            ax = axes[r, c]
            steps, layers, grid = layer_step_grid(stats, run["run_dir"], stat, block)
            if grid.size == 0:
                ax.set_axis_off()
                continue
            logs = _log10(grid)
            finite = logs[np.isfinite(logs)]
            if shared_scale:
                vmin, vmax = limits[stat]
            else:
                vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            shown = np.where(np.isfinite(logs), logs, np.nan)
            shown = np.ma.masked_invalid(shown)
            edges = np.append(steps, steps[-1] + max(1, (steps[-1] - steps[0]) / max(1, len(steps) - 1)))
            mesh = ax.pcolormesh(edges, np.arange(len(layers) + 1) + 0.5, shown, cmap=cmap, vmin=vmin,
                                 vmax=max(vmax, vmin + 1e-6), shading="flat")
            fig.colorbar(mesh, ax=ax, label=f"log10 {stat}")
            step, layer = run.get("first_blow_up.step"), run.get("first_blow_up.layer")
            if _number(step):
                ax.plot([step], [layer if _number(layer) else len(layers)], "x", color="red", ms=10, mew=2)
            ax.set_yticks(range(1, len(layers) + 1), [str(int(l)) for l in layers])
            ax.set_ylabel("layer")
            ax.set_xlabel("step")
            ax.set_title(f"{run['experiment']} seed {run['seed']}: {stat} ({block})", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not (isinstance(x, float) and math.isnan(x))


def plot_layer_curves(stats: pd.DataFrame, runs: pd.DataFrame, stats_names: Sequence[str] = names.STATE_STATS,
                      block: str = "mixing", groups: Optional[Sequence[str]] = None):
    """Per-layer statistic vs step, one panel per (statistic, experiment), every seed drawn.

    Colour is the layer (dark: layer 1, light: last); a dashed line marks each run's first
    blow-up. The y axis is logarithmic: a feedback loop shows as straight growth.
    """
    plt = _pyplot()
    import matplotlib

    groups = list(groups) if groups is not None else list(dict.fromkeys(runs["experiment"]))
    fig, axes = plt.subplots(len(stats_names), len(groups), figsize=(4.2 * len(groups), 0.4 + 3.2 * len(stats_names)),
                             squeeze=False, sharey="row")
    fig.suptitle("colour: layer; line style: seed (first solid, then dashed, dotted, dash-dot); "
                 "red dashed: first blow-up", fontsize=9)
    n_layers = int(stats["layer"].max()) if len(stats) else 1
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, n_layers))
    styles = ["-", "--", ":", "-."]
    for c, group in enumerate(groups):
        members = runs[runs["experiment"] == group].reset_index(drop=True)
        for r, stat in enumerate(stats_names):
            ax = axes[r, c]
            for k, run in members.iterrows():
                rows = stats[(stats["run_dir"] == run["run_dir"]) & (stats["stat"] == stat) & (stats["block"] == block)]
                for layer, g in rows.groupby("layer"):
                    v = g["value"].to_numpy(dtype=float)
                    ax.plot(g["step"], np.where(np.isfinite(v) & (v > 0), v, np.nan), styles[k % len(styles)],
                            color=colors[int(layer) - 1], lw=1.2,
                            label=f"layer {layer}" if k == 0 else None)
                if _number(run.get("first_blow_up.step")):
                    ax.axvline(run["first_blow_up.step"], color="red", ls="--", lw=0.8)
            ax.set_yscale("log")
            _tidy_log(ax)
            ax.set_title(f"{group}: {stat}", fontsize=9)
            ax.set_xlabel("step")
            if c == 0:
                ax.set_ylabel(f"{stat} ({block})")
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_feedback(stats: pd.DataFrame, runs: pd.DataFrame):
    """The mixing feedback loop, per run (columns).

    Top: max ||mu|| entering each layer's mixing vs the term it feeds into q,
    max |dqmu * <mu_V, mu_W>| (`qmu_absmax`), log-log over all snapshots: the term grows
    like ||mu||^2 (grey slope-2 line). Bottom: `mu_term_norm_max` (max ||dmu * mu_W||, the
    term that feeds back into mu) vs step, per layer.
    """
    plt = _pyplot()
    import matplotlib

    runs = runs.reset_index(drop=True)
    fig, axes = plt.subplots(2, len(runs), figsize=(4.5 * len(runs), 7), squeeze=False)
    n_layers = int(stats["layer"].max()) if len(stats) else 1
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, n_layers))
    for c, run in runs.iterrows():
        mine = stats[stats["run_dir"] == run["run_dir"]]
        mu_in = mine[(mine["block"] == "interaction") & (mine["stat"] == names.MU_NORM_MAX)]
        qmu = mine[(mine["block"] == "mixing") & (mine["stat"] == names.QMU_ABSMAX)]
        term = mine[(mine["block"] == "mixing") & (mine["stat"] == names.MU_TERM_NORM_MAX)]
        pairs = mu_in.merge(qmu, on=["step", "layer"], suffixes=("_mu", "_qmu"))
        ax = axes[0, c]
        for layer, g in pairs.groupby("layer"):
            ok = np.isfinite(g["value_mu"]) & np.isfinite(g["value_qmu"]) & (g["value_qmu"] > 0)
            ax.scatter(g["value_mu"][ok], g["value_qmu"][ok], s=8, color=colors[int(layer) - 1], label=f"layer {layer}")
        ok = pairs[np.isfinite(pairs["value_mu"]) & np.isfinite(pairs["value_qmu"]) & (pairs["value_qmu"] > 0)]
        if len(ok):
            x = np.geomspace(ok["value_mu"].min(), ok["value_mu"].max(), 20)
            anchor = np.median(ok["value_qmu"] / ok["value_mu"] ** 2)
            ax.plot(x, anchor * x ** 2, color="grey", lw=1, label="~ ||mu||^2")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _tidy_log(ax, x=True)
        ax.set_xlabel("max ||mu|| into mixing")
        ax.set_ylabel("max |dqmu <mu_V, mu_W>|")
        ax.set_title(f"{run['experiment']} seed {run['seed']}", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1, c]
        for layer, g in term.groupby("layer"):
            v = g["value"].to_numpy(dtype=float)
            ax.plot(g["step"], np.where(np.isfinite(v) & (v > 0), v, np.nan), color=colors[int(layer) - 1],
                    label=f"layer {layer}")
        if _number(run.get("first_blow_up.step")):
            ax.axvline(run["first_blow_up.step"], color="red", ls="--", lw=0.8)
        ax.set_yscale("log")
        _tidy_log(ax)
        ax.set_xlabel("step")
        ax.set_ylabel("max ||dmu * mu_W||")
    fig.tight_layout()
    return fig


def plot_outcomes(table: pd.DataFrame, baselines: Optional[dict[str, float]] = None, label: str = "experiment"):
    """Per experiment (an outcome_table): blow-up rate with its Wilson 95% interval, the step of the first
    blow-up (median, bar from first to last), test position MSE of the stable runs (bar: sample sd)."""
    plt = _pyplot()
    names = table[label].astype(str).tolist()
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(14, 1.2 + 0.45 * len(names)), sharey=True)
    rate = table["blow_up_rate"]
    axes[0].barh(y, rate, xerr=[rate - table["blow_up_lo"], table["blow_up_hi"] - rate], color="tab:red")
    for k, (n, b) in enumerate(zip(table["runs"], table["blew_up"])):
        axes[0].text(0.02, k, f"{b}/{n}", va="center", fontsize=8)
    axes[0].set_xlim(0, 1)
    axes[0].set_xlabel("blow-up rate (transient, diverged or exploded), Wilson 95%")
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    median = table["blow_up_step_median"]
    axes[1].barh(y, median, xerr=[median - table["blow_up_step_min"], table["blow_up_step_max"] - median],
                 color="tab:orange")
    axes[1].set_xlabel("step of the first blow-up (median; bar: first to last)")
    axes[2].barh(y, table["test_pos_mse_mean"], xerr=table["test_pos_mse_sd"], color="tab:blue")
    axes[2].set_xlabel("test position MSE (stable runs)")
    axes[2].set_xscale("log")
    for k, (name, value) in enumerate((baselines or {}).items()):
        if value is not None and math.isfinite(value):
            axes[2].axvline(value, color=f"C{k + 2}", ls="--", lw=1, label=f"{name} {value:.3g}")
    if baselines:
        axes[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_validation(metrics: pd.DataFrame, runs: pd.DataFrame, baselines: Optional[dict[str, float]] = None):
    """Validation position MSE vs step, one colour per experiment, one line per seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    val = metrics.dropna(subset=["val_pos_mse"]) if "val_pos_mse" in metrics else metrics.iloc[0:0]
    for k, group in enumerate(dict.fromkeys(runs["experiment"])):
        for j, run_dir in enumerate(runs.loc[runs["experiment"] == group, "run_dir"]):
            g = val[val["run_dir"] == run_dir]
            ax.plot(g["step"], g["val_pos_mse"], color=f"C{k}", lw=1, label=group if j == 0 else None)
    for k, (name, value) in enumerate((baselines or {}).items()):
        if value is not None and math.isfinite(value):
            ax.axhline(value, color="grey", ls=[":", "--", "-."][k % 3], lw=1, label=f"{name} {value:.3g}")
    ax.set_yscale("log")
    _tidy_log(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("validation position MSE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_importances(importances: dict[str, pd.Series]):
    """Horizontal bars of parameter importances, one panel per target."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(importances), figsize=(5 * len(importances), 0.8 + 0.4 * max(
        (len(s) for s in importances.values()), default=1)), squeeze=False)
    for ax, (target, series) in zip(axes[0], importances.items()):
        s = series.fillna(0).sort_values()
        ax.barh(s.index, s.values, color="tab:purple")
        ax.set_xlim(0, 1)
        ax.set_title(f"importance for {target}", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: PathLike) -> Path:
    """Write a figure as PNG, atomically (files.atomic: a kill mid-write leaves the old figure or none, never
    a truncated one in a tracked plots/), and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        files.atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))
    finally:
        _pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------- experiment figures


NOT_RUN = "not run"  # the text of a map cell without trials


def plot_map(cells: pd.DataFrame):
    """Blow-up rate per depth x learning rate, one panel per preset, each cell labelled k/n [Wilson 95%].

    Every panel has the same axes, the depths and learning rates of all presets, so a condition one preset
    was not run at shows as a cell: grey, hatched, "not run" (never the white of a 0/n cell). A cell with
    fewer trials than the panel's largest (a sweep stopped early) is dotted and says "k/n of N"."""
    plt = _pyplot()
    import matplotlib
    from matplotlib.patches import Rectangle

    base = cells[(cells["ablate"] == "none") & (cells["n"] > 0)]
    presets = list(dict.fromkeys(base["preset"]))
    depths = sorted(set(base["L"]))
    lrs = sorted(set(base["lr"]))
    fig, axes = plt.subplots(1, len(presets), figsize=(0.6 + len(presets) * (1.2 + 1.1 * len(lrs)), 1.4 + 0.7 * len(depths)),
                             squeeze=False)
    # Reds with a white 0 (a cell run without a blow-up) and grey for a cell without trials (masked)
    reds = matplotlib.colormaps["Reds"](np.linspace(0, 1, 256))
    reds[0] = (1.0, 1.0, 1.0, 1.0)
    cmap = matplotlib.colors.ListedColormap(reds).with_extremes(bad="0.85")
    image = None
    for ax, preset in zip(axes[0], presets):
        c = base[base["preset"] == preset]
        full_n = int(c["n"].max())
        grid = np.full((len(depths), len(lrs)), np.nan)
        for i, L in enumerate(depths):
            for j, lr in enumerate(lrs):
                r = c[(c["L"] == L) & np.isclose(c["lr"], lr)]
                if r.empty:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="none", edgecolor="0.55", hatch="///",
                                           lw=0, gid="not_run"))
                    ax.text(j, i, NOT_RUN, ha="center", va="center", fontsize=7, color="0.3",
                            bbox={"facecolor": "0.85", "edgecolor": "none", "pad": 1})
                    continue
                r = r.iloc[0]
                grid[i, j] = r["rate"]
                label, style = f"{r['blew_up']}/{r['n']}", {"color": "white" if r["rate"] > 0.6 else "black"}
                if r["n"] < full_n:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="none", edgecolor="0.55", hatch="..",
                                           lw=0, gid="partial"))
                    label += f" of {full_n}"
                    style = {"color": "black", "bbox": {"facecolor": "white", "alpha": 0.8, "edgecolor": "none",
                                                        "pad": 1}}
                ax.text(j, i, f"{label}\n[{r['rate_lo']:.2f}, {r['rate_hi']:.2f}]", ha="center", va="center",
                        fontsize=7, **style)
        image = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap=cmap, origin="lower", aspect="auto")
        ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs])
        ax.set_yticks(range(len(depths)), depths)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("depth L")
        ax.set_title(f"{preset}: blow-up rate (Wilson 95%)", fontsize=9)
    fig.text(0.01, 0.02, "grey hatched: not run; dotted: fewer trials than the panel's other cells (k/n of N)",
             fontsize=7, color="0.3")
    fig.subplots_adjust(bottom=0.17, wspace=0.35)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="blow-up rate")
    return fig


def plot_probe_depths(depths: pd.DataFrame):
    """Fraction of seeds blown up in the first forward pass, per depth, with Wilson intervals."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for variant, g in probed_over_depth(depths).groupby("variant"):
        yerr = [(g["rate"] - g["rate_lo"]).clip(lower=0), (g["rate_hi"] - g["rate"]).clip(lower=0)]
        ax.errorbar(g["L"], g["rate"], yerr=yerr, marker="o",
                    capsize=3, label=variant)
    ax.set_xlabel("depth L")
    ax.set_ylabel("blown up at initialisation")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    return fig


def _steps_label(steps: pd.Series) -> str:
    """'step 0' or 'steps 0-10' of the snapshots a profile group was taken at."""
    steps = pd.to_numeric(steps, errors="coerce").dropna().astype(int)
    if steps.empty:
        return "step ?"
    lo, hi = int(steps.min()), int(steps.max())
    return f"step {lo}" if lo == hi else f"steps {lo}-{hi}"


PROFILE_COLORS = {"original": ("tab:red", "tab:orange", "tab:grey"), "r2_full": ("tab:purple", "tab:cyan", "tab:blue")}


def plot_profiles(trials: pd.DataFrame, L: int = 5, lr: Optional[float] = None):
    """Per-layer max ||mu|| and |q| after each mixing block at depth L (the trial tables' profiles, default
    setting), median over seeds with the inter-quartile band, the original beside R2_full. Per preset: the
    runs that blew up at the last statistics snapshot before their blow-up (`before_*`: at L = 5 the step-0
    forward pass, before any update) and in the blow-up pass (`at_*`), and the stable runs at their last
    snapshot (`at_*`); an empty group is left out. lr: one learning rate; None pools every learning rate run
    at L. Each legend entry names the steps its snapshots came from and n."""
    from painn_ablate.analysis.tables import default_setting

    plt = _pyplot()
    at_L = trials[(trials["ablate"] == "none") & (trials["L"] == L)]
    at_L = at_L[default_setting(at_L)]
    if lr is not None:
        at_L = at_L[np.isclose(at_L["lr"], lr)]
    groups = []  # (label, rows, the columns' prefix, colour, line style)
    for preset, (c_before, c_at, c_stable) in PROFILE_COLORS.items():
        g = at_L[at_L["preset"] == preset]
        blew = g["blew_up"].astype(bool)
        before = g[blew & g["before_step"].notna()] if "before_step" in g else g.iloc[0:0]
        steps = _steps_label(before.get("before_step", pd.Series(dtype=float)))
        what = "step-0 forward pass (before any update)" if steps == "step 0" else f"last snapshot before it ({steps})"
        groups += [(f"{preset}, blew up: {what}", before, "before", c_before, "-"),
                   (f"{preset}, blew up: the blow-up pass ({_steps_label(g.loc[blew, 'at_step'])})", g[blew], "at",
                    c_at, ":"),
                   (f"{preset}, stable: last snapshot ({_steps_label(g.loc[~blew, 'at_step'])})", g[~blew], "at",
                    c_stable, "-" if preset == "r2_full" else "--")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    layers = np.arange(1, L + 1)
    for ax, stat in zip(axes, PROFILE_STATS):
        for name, sub, when, color, style in groups:
            cols = [f"{when}_{stat}_L{l}" for l in layers]
            if sub.empty or not set(cols) <= set(sub.columns):
                continue
            values = sub[cols].astype(float).replace([np.inf, -np.inf], np.nan)
            ax.plot(layers, values.median(), style, marker="o", color=color, label=f"{name}, n={len(sub)}")
            ax.fill_between(layers, values.quantile(0.25), values.quantile(0.75), color=color, alpha=0.15, lw=0)
        ax.set_yscale("log")
        _tidy_log(ax)
        ax.set_xticks(layers)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{stat} after mixing")
    where = f"lr = {lr:g}" if lr is not None else f"lr {', '.join(f'{x:g}' for x in sorted(set(at_L['lr'])))} pooled"
    fig.suptitle(f"Per-layer state at L = {L} ({where}): median over seeds, band: inter-quartile range", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=2)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


def plot_ablation(table: pd.DataFrame):
    """Per stabilizer: blow-up rate with it alone on the original, and without it on R2_full (Wilson 95%)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(table), 4) + 1.2))
    y = np.arange(len(table))
    for offset, side, label in ((-0.18, "aoi", "original + it alone"), (0.18, "loo", "r2_full without it")):
        rates, lo, hi = [], [], []
        for r in table[side]:
            k, n = (r["blew_up"], r["n"]) if r else (0, 0)
            a, b = wilson(k, n)
            rates.append(k / n if n else math.nan)
            lo.append(k / n - a if n else 0)
            hi.append(b - k / n if n else 0)
        ax.errorbar(rates, y + offset, xerr=[lo, hi], fmt="o", capsize=3, label=label)
    ax.set_yticks(y, table["stabilizer"])
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("blow-up rate (Wilson 95%)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_first_steps(curves: pd.DataFrame, steps: int = 100, presets: Sequence[str] = ("original", "r2_full"),
                     mu_bound: Optional[float] = MonitorConfig.diverge_mu):
    """The first `steps` training steps of each preset (columns) from a curves table
    (tables.curves_table): the training loss (top row) and the max ||mu|| after each layer's mixing block
    (one row per layer) against step, one line per seed (the same colour in every panel), log y shared
    along each row. An x marks a run's first non-finite value (where it ended: monitor.on_nonfinite = stop),
    drawn at its last finite value; mu_bound, the blow-up criterion monitor.diverge_mu (its default), is
    the dashed line (None: no line)."""
    plt = _pyplot()
    curves = curves[curves["step"] < steps]
    layer_cols = sorted((c for c in curves.columns if c.startswith(f"{names.MU_NORM_MAX}_L")),
                        key=lambda c: int(c.rsplit("_L", 1)[1]))
    rows = ["loss", *layer_cols]
    presets = [p for p in presets if (curves["preset"] == p).any()]
    seeds = sorted(set(curves["seed"]))
    colors = {seed: f"C{k % 10}" for k, seed in enumerate(seeds)}
    fig, axes = plt.subplots(len(rows), len(presets), figsize=(5.2 * len(presets), 0.8 + 2.0 * len(rows)),
                             squeeze=False, sharex=True, sharey="row")
    for c, preset in enumerate(presets):
        mine = curves[curves["preset"] == preset]
        for r, col in enumerate(rows):
            ax = axes[r, c]
            for seed, g in mine.groupby("seed"):
                g = g.sort_values("step")
                v = g[col].to_numpy(dtype=float)
                ok = np.isfinite(v) & (v > 0)
                ax.plot(g["step"], np.where(ok, v, np.nan), color=colors[seed], lw=1,
                        label=f"seed {seed}" if r == 0 else None)
                bad = np.flatnonzero(~np.isfinite(v))
                if len(bad) and ok[: bad[0]].any():
                    last = np.flatnonzero(ok[: bad[0]])[-1]
                    ax.plot([g["step"].iloc[bad[0]]], [v[last]], "x", color=colors[seed], ms=8, mew=2)
            if col != "loss" and mu_bound is not None:
                ax.axhline(mu_bound, color="grey", ls="--", lw=0.8)
            ax.set_yscale("log")
            _tidy_log(ax)
            if c == 0:
                ax.set_ylabel("training loss" if col == "loss" else f"max ||mu||, layer {col.rsplit('_L', 1)[1]}")
            if r == 0:
                n = mine["seed"].nunique()
                ax.set_title(f"{preset} ({n} seeds)", fontsize=10)
            if r == len(rows) - 1:
                ax.set_xlabel("step")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    where = ", ".join(f"{k} = {', '.join(f'{x:g}' for x in sorted(set(curves[k])))}" for k in ("L", "lr"))
    bound = f"; dashed: blow-up criterion max ||mu|| = {mu_bound:g}" if mu_bound is not None else ""
    fig.suptitle(f"The first {steps} steps ({where}; training continued after a spike): loss and max ||mu|| after "
                 f"each mixing block;\nx: first non-finite value, where the run ended{bound}", fontsize=9)
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(seeds))
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def plot_phase_by_depth(table: pd.DataFrame):
    """Per depth (a tables.phase_depth_table): the rate of runs whose first blow-up came in training beside
    the rate of those whose first blow-up was there at initialisation, each k/n with its Wilson 95% interval;
    blow-ups recorded before phases existed (k_unknown) in grey, so an old table does not read as none: at a
    depth with any of them the two rates are lower bounds, drawn hollow."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    L = table["L"].to_numpy(dtype=float)
    unknown = table["k_unknown"].to_numpy(dtype=int)
    series = [("training", "in training (only the trained weights cross a criterion)", "tab:red", "o", 0.08),
              ("init", "at initialisation (the initial weights cross one on the same batch)", "tab:blue", "s", -0.08)]
    for phase, label, color, marker, offset in series:
        k = table[f"k_{phase}"].to_numpy(dtype=float)
        rate = table[f"rate_{phase}"].to_numpy(dtype=float)
        yerr = np.array([np.clip(rate - table[f"{phase}_lo"], 0, None), np.clip(table[f"{phase}_hi"] - rate, 0, None)])
        for part, face, name in ((unknown == 0, color, label), (unknown > 0, "white", None)):
            if part.any():
                ax.errorbar(L[part] + offset, rate[part], yerr=yerr[:, part], fmt=marker, color=color, mfc=face,
                            capsize=3, label=name if name else None)
        for x, y, kk, n in zip(L + offset, rate, k, table["n"]):
            ax.annotate(f"{int(kk)}/{int(n)}", (x, y), textcoords="offset points", xytext=(6 if offset > 0 else -6, 0),
                        ha="left" if offset > 0 else "right", va="center", fontsize=7, color=color)
    if unknown.any():
        some = unknown > 0
        bounds = np.array([wilson(k, n) for k, n in zip(unknown[some], table["n"][some])])
        rate = unknown[some] / table["n"].to_numpy(dtype=float)[some]
        ax.errorbar(L[some], rate, yerr=[np.clip(rate - bounds[:, 0], 0, None), np.clip(bounds[:, 1] - rate, 0, None)],
                    fmt="D", color="grey", capsize=3,
                    label="phase not recorded (records made before phases); hollow: a lower bound")
    ax.set_xticks(L, [str(int(x)) for x in L])
    ax.set_xlabel("depth L")
    ax.set_ylabel("fraction of runs (Wilson 95%)")
    ax.set_ylim(-0.03, 1.03)
    variant = ", ".join(dict.fromkeys(table["preset"].astype(str) + table["ablate"].map(
        lambda a: "" if a == "none" else f" ablate={a}")))
    lrs = "; ".join(dict.fromkeys(table["lrs"].astype(str))) if "lrs" in table else "?"
    ax.set_title(f"{variant}: the first blow-up's phase per depth (lr {lrs} pooled)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
