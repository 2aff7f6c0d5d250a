"""runs.md from the committed trial tables (results/): the verdicts, the map, the probe, the mechanism.

`painn-ablate report` (no paths, a results/ folder present) calls `write_findings`. Every
number is computed here from results/*.parquet through painn_ablate.analysis.tables, and every
verdict by the rule book painn_ablate.analysis.rules (`rules.judge`); the design and its rules are
sweeps/DESIGN.md. Raw run directories are not needed. (`painn-ablate report PATHS`, on raw run
folders, writes another document, the registry: painn_ablate.reporting.registry.)
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from painn_ablate.analysis import rules
from painn_ablate.analysis import tables as ex
from painn_ablate.analysis.stats import mcnemar_exact, mean_interval, wilson
from painn_ablate.core import files, names
from painn_ablate.core.config import MECHANISM_LABELS, compose
from painn_ablate.core.outcome import Phase, Status
from painn_ablate.reporting import reproduce as rp
from painn_ablate.reporting.plots import (
    plot_ablation,
    plot_first_steps,
    plot_map,
    plot_phase_by_depth,
    plot_probe_depths,
    plot_profiles,
    save_figure,
)
from painn_ablate.reporting.registry import PACKAGES, ReportError, _cell, markdown_table
from painn_ablate.reporting.text import median_text
from painn_ablate.training.trainer import environment

DEFAULT_RESULTS = "results"
DEFAULT_OUT = "runs.md"  # the findings; the registry of raw runs is registry.md (painn_ablate.reporting.registry)
DESIGN = "sweeps/DESIGN.md"


# Where the results of each experiment are, under the results folder (painn-ablate export --out results/<name>)
SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"  # the shipped sweep files, which hold each run's ladder
DOSE = "dose_response"  # results/<DOSE>/probe_seeds.parquet: amendment 7's probes (painn-ablate export --out)
DOSE_FRONTIER = "dose_frontier"  # results/<DOSE>/dose_frontier.parquet: amendment 11's walks (the sweep file's stem)
DEGREE = "degree"  # results/<DEGREE>/degree.parquet and degree_mean.parquet: amendment 12's two sweep files
DEGREE_STEMS = ("degree", "degree_mean")  # amendment 12's two sweep files, one table each in results/<DEGREE>/
FRONTIER = "frontier"  # results/<FRONTIER>/<sweep file stem>.parquet: the frontier runs (painn-ablate export --out)
# The frontier runs, one design at two depths: (the sweep file's stem, its L, the amendment that registered it)
FRONTIER_RUNS = (("stabilizers", 5, 9), ("stabilizers_L8", 8, 10))
MAIN_AT = {depth: stem for stem, depth, _ in FRONTIER_RUNS}  # L -> the main job's run at that depth
# Single toggles added to the original, one run per depth: (its sweep files' stems, its L, the amendment that
# registered it); amendment 13's run is two files, each a table in results/<FRONTIER>/
SINGLES_IN = ((("singles_interaction", "singles_bounds"), 5, 13), (("singles_original_L8",), 8, 19))
# Single toggles left out of R2_full, one run per depth: (the sweep file's stem, its L, the amendment that registered it)
SINGLES_OUT = (("singles_r2_full", 5, 15), ("singles_r2_full_L8", 8, 18))
# A main job's group re-run whole where the main job left its walks short, with its own preset beside it: (the sweep
# file's stem, its L, the amendment that registered it); section 7a shows it under the main job's rows
GROUP_RERUNS = (("bounds_original_L8", 8, 20),)
FAMILY = "family"  # amendment 16's sweep file (fairchem, R2_full, the original), its table in results/<FRONTIER>/
# The two families on one frontier, one run per depth: (the sweep file's stem, its L, the amendment that registered it)
FAMILIES = ((FAMILY, 5, 16), ("family_L8", 8, 21))
FAIRCHEM_PARTS = "fairchem_parts"  # amendment 17's sweep file (fairchem's parts left out), its table there too
WALKED = (*(stem for stem, *_ in FRONTIER_RUNS), *(stem for stems, *_ in SINGLES_IN for stem in stems),
          *(stem for stem, *_ in SINGLES_OUT), *(stem for stem, *_ in GROUP_RERUNS),
          *(stem for stem, *_ in FAMILIES), FAIRCHEM_PARTS)  # every walked table


def _version(paths: Sequence[Path]) -> Optional[tuple]:
    """What identifies the tables' contents for a cache: each path with its modification time and size; None where
    one is missing."""
    if not all(p.exists() for p in paths):
        return None
    return tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)


def walked(results: str | Path, stem: str):
    """(trials, analysis.frontier.Frontier) of a walked sweep's table, results/<FRONTIER>/<stem>.parquet, on its
    sweep file's ladder; None where not exported. Computed once per version of the file (the report reads each
    table in several sections), so the frames returned are shared: read them, do not modify them."""
    version = _version([Path(results) / FRONTIER / f"{stem}.parquet"])
    return None if version is None else _walked(version, stem)


def walked_tables(results: str | Path) -> list[pd.DataFrame]:
    """The trial tables of every walked sweep exported to `results` (WALKED's order; shared frames, as walked's)."""
    return [found[0] for stem in WALKED if (found := walked(results, stem)) is not None]


@functools.lru_cache(maxsize=16)
def _walked(version: tuple, stem: str):
    from painn_ablate.analysis import frontier as fr

    trials = pd.read_parquet(version[0][0])
    return trials, fr.frontier_result(trials, sweep_ladder(stem))


def _rate(r: pd.Series) -> str:
    return f"{r['blew_up']}/{r['n']} [{r['rate_lo']:.2f}, {r['rate_hi']:.2f}]"


def mse_text(m: dict) -> str:
    """mean ± sample sd [t 95% interval] (n) of a stats.mean_interval result."""
    if m["n"] == 0:
        return "-"
    if m["n"] == 1:
        return f"{m['mean']:.4g} (n=1)"
    return f"{m['mean']:.4g} ± {m['sd']:.2g} [{m['lo']:.4g}, {m['hi']:.4g}] (n={m['n']})"


def _mse(r: pd.Series) -> str:
    """The test MSE columns of an ex.cell_table row, as mse_text writes them."""
    return mse_text({"n": 0 if math.isnan(r["test_mse_mean"]) else int(r["stable"]), "mean": r["test_mse_mean"],
                      "sd": r["test_mse_sd"], "lo": r["test_mse_lo"], "hi": r["test_mse_hi"]})


def _median_step(x: float) -> str:
    """A median of whole steps as it is (396.5 stays 396.5: no rounding of halves to even); '-' for none."""
    return "-" if x is None or math.isnan(x) else f"{x:g}"


def _fig(fig, folder: Path, name: str, base: Path) -> str:
    path = save_figure(fig, folder / f"{name}.png")
    return f"![{name}]({os.path.relpath(path, base)})"


def compute_lines(trials: pd.DataFrame) -> list[str]:
    rows = []
    for study, g in trials.groupby("study", sort=False):
        rows.append([study, str(len(g)), f"{g['wall_seconds'].sum() / 60:.0f} min",
                     f"{g['ms_per_step'].median():.0f} ms" if g["ms_per_step"].notna().any() else "-",
                     str(int(g["steps_completed"].sum()))])
    return markdown_table(["study", "trials", "training time (sum over trials)", "median step", "steps run"], rows)


def _phases(r) -> str:
    """`3 / 2` blow-ups at initialisation / in training; `-` where the records have no phase."""
    init, training = int(r.get("phase_init", 0)), int(r.get("phase_training", 0))
    return f"{init} / {training}" if init + training else "-"


def map_lines(trials: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    base = cells[cells["ablate"] == "none"]
    header = ["preset", "L", "lr", "blow-ups k/n [Wilson 95%]", "transient", "diverged", "exploded", "at step 0",
              "phase init / training", "median step", "origin layers", "origin blocks",
              "test pos MSE of stable runs: mean ± sd [95% CI]"]
    rows = [[r["preset"], str(r["L"]), f"{r['lr']:g}", _rate(r), str(r.get("transient", 0)), str(r["diverged"]),
             str(r["exploded"]), str(r["init_events"]), _phases(r), _median_step(r["median_step"]),
             r["origin_layers"] or "-",
             r["origin_blocks"] or "-", _mse(r)] for _, r in base.iterrows()]
    return markdown_table(header, rows)


def _probed_over_depth(depths: pd.DataFrame) -> str:
    """'`model=r2_full`, `model=fairchem`': the presets besides the original probed at several depths."""
    return ", ".join(f"`model={v}`" for v in sorted(set(ex.probed_over_depth(depths)["variant"]) - {"original"}))


def probe_lines(depths: pd.DataFrame) -> list[str]:
    header = ["variant", "L", "seeds", "blown up at init k/n [Wilson 95%]", "non-finite", "median L/1 max ||mu||"]
    rows = [[r["variant"], str(r["L"]), str(r["seeds"]), _rate(r.rename({"seeds": "n"})),
             f"{r['nonfinite']:.2f}", _cell(r["median_mu_ratio"], ".3g")] for _, r in depths.iterrows()]
    return markdown_table(header, rows)


def gain_lines(stats: pd.DataFrame, variant: str, L: int) -> list[str]:
    table = ex.probe_gain_table(stats, variant, L)
    if table.empty:
        return []
    cols = [c for c in (*names.STATE_STATS, *names.FEEDBACK_STATS, names.NORM_GAIN, names.UPDATE_GAIN)
            if c in table.columns]
    rows = [[str(layer), block, *(_cell(r.get(c), ".3g") for c in cols)] for (layer, block), r in table.iterrows()]
    return markdown_table(["layer", "block", *cols], rows)


def verdict_lines(trials: pd.DataFrame, results: str | Path, data: dict) -> list[str]:
    """`painn-ablate reproduce`'s regime rule and verdict (`reproduce.verdict`: the rule book's REPRODUCE rules at
    that cell), applied to the map's trials at that regime: the command re-runs exactly these configurations (10
    paired seeds per preset, 1000 steps, each ending at its first blow-up). data: reproduce.baselines."""
    from painn_ablate.reporting import reproduce as rp

    maps = sorted(Path(results).glob("map_original.parquet"))
    regime = rp.choose_regime([], maps[0] if maps else None)
    cell = trials[(trials["ablate"] == "none") & (trials["L"] == regime.L) & np.isclose(trials["lr"], regime.lr)]
    if cell.empty:
        return [f"No trials at the regime L = {regime.L}, lr = {regime.lr:g}.", ""]
    v = rp.verdict(cell, data, regime)
    recorded = sorted(set(cell["data_fingerprint"].dropna())) if "data_fingerprint" in cell else []
    lines = [f"Command: `painn-ablate reproduce` (about 15-20 min on 2 cores). Regime: L = {regime.L}, lr = "
             f"{regime.lr:g}; rule: {regime.rule}. The command re-runs exactly the map's trials of this cell "
             "(10 paired seeds per preset, 1000 steps, each ending at its first blow-up); its verdict on them:", "",
             f"**{'REPRODUCED' if v['passed'] else 'NOT REPRODUCED'}**", ""]
    lines += rp.criteria_lines(v) + [""]
    made_on = (f"the trials' own data set ({', '.join(recorded)})" if recorded else
               "a data set generated by the machine that ran them, before the default data shipped (its fingerprint "
               "was not recorded), so the comparison with the trained runs crosses data sets")
    return lines + [f"The trivial predictors' MSEs (the constant-velocity baseline of A1) are computed from the shipped "
                    f"default data set (fingerprint `{data['data_fingerprint']}`), the same on every machine; the trials "
                    f"of this cell were made on {made_on}. Section 1b's re-run is on the shipped data.", ""]


def reproduction_lines(trials: pd.DataFrame, L: int, lr: float) -> list[str]:
    orig = rules.at_cell(trials, "original", "none", L, lr)
    full = rules.at_cell(trials, "r2_full", "none", L, lr)
    if orig.empty or full.empty:
        return ["Not run: one of the two presets has no trials at this regime.", ""]
    a, b, p = mcnemar_exact(orig.set_index("seed")["blew_up"], full.set_index("seed")["blew_up"])
    k_o, k_f = int(orig["blew_up"].sum()), int(full["blew_up"].sum())
    lo_o, hi_o = wilson(k_o, len(orig))
    lo_f, hi_f = wilson(k_f, len(full))
    mse = mean_interval(full.loc[full["status"] == Status.STABLE, "test_pos_mse"])
    blown = orig[orig["blew_up"]]
    lines = [f"- Blow-ups: original {k_o}/{len(orig)} [{lo_o:.2f}, {hi_o:.2f}], r2_full {k_f}/{len(full)} "
             f"[{lo_f:.2f}, {hi_f:.2f}] (Wilson 95%); paired by seed, {a} seeds blew up only in the original and "
             f"{b} only in r2_full: exact McNemar p = {p:.3g}.",
             f"- Where the original's blow-ups start: layers {ex.histogram(blown['origin_layer']) or '-'}; "
             f"blocks {ex.histogram(blown['origin_block']) or '-'}; statistics "
             f"{ex.histogram(blown['origin_stat']) or '-'}; criteria {ex.histogram(blown['origin_criterion']) or '-'}; "
             f"{int((blown['blowup_step'] == 0).sum())} of {len(blown)} at step 0 (initialisation), median step "
             f"{_median_step(float(blown['blowup_step'].median()) if len(blown) else math.nan)}.",
             f"- r2_full test pos MSE: mean {mse['mean']:.4g}, sample sd {mse['sd']:.2g}, 95% CI "
             f"[{mse['lo']:.4g}, {mse['hi']:.4g}] (t interval, n = {mse['n']} stable runs).", ""]
    profile_rows = []
    for name, g, when in (("original, blew up (snapshot before)", blown[blown["before_step"].notna()], "before"),
                          ("original, blew up (the blow-up pass)", blown, "at"),
                          ("original, stable (last snapshot)", orig[~orig["blew_up"]], "at"),
                          ("r2_full (last snapshot)", full, "at")):
        for stat in ex.PROFILE_STATS:
            cols = [f"{when}_{stat}_L{l}" for l in range(1, L + 1)]
            if g.empty or not set(cols) <= set(g.columns):
                continue
            med = g[cols].median()
            profile_rows.append([name, stat, str(len(g)), *(_cell(float(v), ".3g") for v in med)])
    lines += ["Per-layer profile after each mixing block (median over the runs in the group):", ""]
    lines += markdown_table(["group", "statistic", "n", *(f"L{l}" for l in range(1, L + 1))], profile_rows)
    return lines + [""]


def mechanism_lines(trials: pd.DataFrame, depths: Optional[pd.DataFrame], L: int, lr: float) -> list[str]:
    variants = [a for a in dict.fromkeys(trials.loc[trials["preset"] == "original", "ablate"]) if a != "none"]
    if not variants:
        return ["Not run this session.", ""]
    cells = ex.cell_table(trials[(trials["L"] == L) & np.isclose(trials["lr"], lr)])
    rows = []
    for name in ["none", *variants]:
        c = cells[(cells["preset"] == "original") & (cells["ablate"] == name)]
        if c.empty:
            continue
        r = c.iloc[0]
        s = rules.sufficiency(trials, name, L, lr) if name != "none" else None
        init = None
        if depths is not None:
            d = depths[(depths["variant"] == ("original" if name == "none" else f"original-{name}"))
                       & (depths["L"] == L)]
            init = d.iloc[0] if len(d) else None
        label = "original" if name == "none" else f"original, {MECHANISM_LABELS.get(name, '+ ' + name)}"
        rows.append([label, _rate(r),
                     "-" if s is None else f"{s['discordant'][0]} / {s['discordant'][1]}, p = {s['p']:.3g}",
                     "-" if s is None else ("yes" if s["sufficient"] else "no"), str(r["init_events"]),
                     _median_step(r["median_step"]), r["origin_layers"] or "-", r["origin_blocks"] or "-",
                     "-" if init is None else f"{init['blew_up']}/{init['seeds']}",
                     "-" if init is None else _cell(init["median_mu_ratio"], ".3g"), _mse(r)])
    header = ["variant", "blow-ups k/n [Wilson 95%]", "paired vs original: only original / only variant, McNemar",
              "sufficient", "at step 0", "median step", "origin layers", "origin blocks",
              "probe: blown up at init", "probe: median L/1 ratio", "test pos MSE (stable)"]
    return markdown_table(header, rows) + [""]


def _p(p: float, holm: float) -> str:
    return "-" if math.isnan(p) else f"{p:.3g} (Holm {holm:.3g})"


def ablation_lines(trials: pd.DataFrame, table: pd.DataFrame, L: int, lr: float) -> list[str]:
    """Section 3: per stabilizer, add-one-in (sufficient?) beside leave-one-out (necessary?) and its activity;
    table: rules.ablation_table(trials, L, lr)."""
    if table.empty:
        return ["Not run.", ""]
    rows = []
    for _, r in table.iterrows():
        s, n = r["aoi"], r["loo"]
        mse = change = "-"
        if n:
            m, c = n["mse"], n["mse_change"]
            mse = mse_text(m)
            change = "-" if c["n"] < 2 else (f"{c['mean']:+.3g} [{c['lo']:+.3g}, {c['hi']:+.3g}] (n={c['n']}), "
                                               f"p = {_p(r['mse_p'], r['mse_p_holm'])}")
        acted = ("every pass" if rules.STABILIZER_ACTIVITY[r["stabilizer"]] is None else
                 "-" if math.isnan(r["activity_mean"]) else
                 f"{r['activity_mean']:.3g} (max {r['activity_max']:.3g})" + (" **inert**" if r["inert"] else ""))
        rows.append([r["stabilizer"],
                     s["rate"] if s else "-",
                     f"{s['discordant'][0]} / {s['discordant'][1]}, p = {_p(r['aoi_p'], r['aoi_p_holm'])}" if s else "-",
                     "-" if not s else "**yes**" if s["sufficient"] else "no",
                     n["rate"] if n else "-",
                     f"{n['discordant'][0]} / {n['discordant'][1]}, p = {_p(r['loo_p'], r['loo_p_holm'])}" if n else "-",
                     mse, change, "-" if not n else "**yes**" if n["necessary"] else "no", acted])
    header = ["stabilizer", "add-one-in on original: blow-ups k/n [Wilson 95%]",
              "vs original (paired): only original / only variant, McNemar", "sufficient",
              "leave-one-out on r2_full: blow-ups k/n [Wilson 95%]",
              "vs r2_full (paired): only r2_full / only variant, McNemar", "test pos MSE without it (stable runs)",
              "paired change in test pos MSE vs r2_full [95% CI], t-test", "necessary",
              "how often it acted in r2_full (fraction; mean over runs)"]
    full = rules.at_cell(trials, "r2_full", "none", L, lr)
    orig = rules.at_cell(trials, "original", "none", L, lr)
    return ([f"Reference cells: original {rules.rate_text(orig)}, r2_full {rules.rate_text(full)} blow-ups; r2_full test pos MSE "
             f"{_mse_of(full)}.", ""] + markdown_table(header, rows) + [""] + identical_lines(trials, L, lr))


def _same_runs(a: pd.DataFrame, b: pd.DataFrame) -> tuple[int, int]:
    """(seeds whose two runs ended alike with bit-identical test MSE, paired seeds)."""
    both = a.set_index("seed")[["status", "test_pos_mse"]].join(b.set_index("seed")[["status", "test_pos_mse"]],
                                                                   how="inner", rsuffix="_b")
    same = (both["status"] == both["status_b"]) & ((both["test_pos_mse"] == both["test_pos_mse_b"])
                                                  | (both["test_pos_mse"].isna() & both["test_pos_mse_b"].isna()))
    return int(same.sum()), len(both)


def identical_lines(trials: pd.DataFrame, L: int, lr: float) -> list[str]:
    """Variants whose runs equal another's seed by seed: an inert stabilizer, or two spellings of one operation."""
    lines = []
    full = rules.at_cell(trials, "r2_full", "none", L, lr)
    for name in rules.STABILIZER_ACTIVITY:
        loo = rules.at_cell(trials, "r2_full", name, L, lr)
        same, n = _same_runs(loo, full)
        if n and same == n:
            lines.append(f"- Without {name}, r2_full's runs are identical to r2_full's in {same} of {n} paired seeds "
                         "(same outcome, bit-identical test MSE): it never changed a forward pass.")
    g, alpha = rules.at_cell(trials, "original", "g", L, lr), rules.at_cell(trials, "original", "alpha_inter", L, lr)
    same, n = _same_runs(g, alpha)
    if n:
        lines.append(f"- On the original, g = 0.5 and alpha_inter = 0.5 gave identical runs in {same} of {n} paired seeds. "
                     "Without the message saturation they are one operation: the interaction update is linear in the "
                     "filter W_ij, so scaling W_ij by g scales dq and dmu by g, which is what alpha_inter does; with "
                     "s_msg on (R2_full) g acts before the saturation and they differ.")
    return lines + ([""] if lines else [])


def _mse_of(g: pd.DataFrame) -> str:
    return mse_text(mean_interval(g.loc[g["status"] == Status.STABLE, "test_pos_mse"]))


def tail_lines(trials: pd.DataFrame) -> list[str]:
    """Per cell with stable runs: the per-sample test error distribution (medians over its stable runs)."""
    from painn_ablate.training.trainer import TAIL

    cols = [f"test_pos_mse_{q}" for q in TAIL]
    if not set(cols) <= set(trials.columns):
        return ["The trial tables predate the per-sample error columns: re-export them.", ""]
    stable = trials[(trials["status"] == Status.STABLE) & trials[cols].notna().all(axis=1)]
    rows = []
    for key, g in stable.groupby(list(ex.CELL), sort=True):
        label = dict(zip(ex.CELL, key))
        rows.append([label["preset"], label["ablate"], str(label["L"]), f"{label['lr']:g}", str(len(g)),
                     f"{g['test_pos_mse'].mean():.4g}", *(f"{g[c].median():.4g}" for c in cols),
                     f"{(g[cols[2]] / g['test_pos_mse']).median():.3g}"])
    header = ["preset", "ablate", "L", "lr", "stable runs", "mean test pos MSE",
              *(f"per-sample {q} (median over runs)" for q in TAIL), "q99 / mean"]
    return markdown_table(header, rows) + [""]


def egnn_lines(egnn: pd.DataFrame, trials: pd.DataFrame, L: int, lr: float) -> list[str]:
    """Section 5: the runs in EGNN's setting, per seed and as a t interval, beside EGNN and R2_full's cell."""
    from painn_ablate.analysis.rules import EGNN_PAPER_MSE

    def epoch(r: pd.Series) -> Optional[float]:  # the epoch of the tested checkpoint
        if pd.isna(r.get("best_step")) or pd.isna(r.get("epochs")):
            return None
        return (int(r["best_step"]) + 1) * float(r["epochs"]) / r["steps"]

    def best(r: pd.Series) -> str:
        return "-" if epoch(r) is None else f"{int(r['best_step'])} (epoch {epoch(r):.0f})"

    header = ["seed", "outcome", "epochs", "steps", "best validation step (tested)", "test pos MSE",
              "per-sample q99", "training time"]
    rows = [[str(r["seed"]), r["status"], _cell(r["epochs"], ".0f"), str(r["steps_completed"]), best(r),
             _cell(r["test_pos_mse"], ".5f"), _cell(r.get("test_pos_mse_q99"), ".4f"),
             f"{r['wall_seconds'] / 60:.0f} min"] for _, r in egnn.sort_values("seed").iterrows()]
    cell = rules.at_cell(trials, "r2_full", "none", L, lr)
    steps = ", ".join(sorted({str(s) for s in cell["steps"]})) or "?"
    epochs = [e for _, r in egnn.iterrows() if (e := epoch(r)) is not None]
    early = (["", f"The tested checkpoints come from epochs {min(epochs):.0f}-{max(epochs):.0f} of "
              f"{float(egnn['epochs'].max()):.0f}: validation pos MSE did not improve after them, so the epoch "
              "budget was not what limited these runs (EGNN's ~10^4 epochs are not the gap to close)."]
             if epochs and max(epochs) < 0.5 * float(egnn["epochs"].max()) else [])
    return markdown_table(header, rows) + early + [
        "", f"Test pos MSE over the stable seeds: {_mse_of(egnn)}; EGNN (Satorras et al. 2021, ~10^4 epochs): "
        f"{EGNN_PAPER_MSE}. R2_full in the default setting (loss on positions and velocities, constant lr, "
        f"{steps} steps) at the map's cell L = {L}, lr = {lr:g}: {_mse_of(cell)}. These intervals carry the "
        "seed-to-seed spread only: the trials were recorded before each one's error per test system was kept "
        "(`painn-ablate export --test-errors`), so the test set's own sampling error is not in them.", ""
    ] + anchor_lines(egnn)


def anchor_lines(egnn: pd.DataFrame) -> list[str]:
    """The published anchors (analysis.anchors) as one table, with R2_full in EGNN's setting beside them."""
    from painn_ablate.analysis.anchors import ANCHORS

    stable = egnn[egnn["status"] == "stable"]["test_pos_mse"].dropna()
    ours = mean_interval(stable) if len(stable) else None
    epochs = ", ".join(f"{e:.0f}" for e in sorted(set(egnn["epochs"].dropna())))
    rows = [[a.model, f"{a.pos_mse:.4f}", "", a.citation, a.budget, a.checked] for a in ANCHORS]
    if ours is not None:
        rows.append(["R2_full (this project, EGNN's setting)", f"{ours['mean']:.5f}",
                     f"[{ours['lo']:.5f}, {ours['hi']:.5f}], n = {len(stable)} (seeds only)", "section 5 above",
                     f"{epochs} epochs x 3000, batch 100, cosine (best validation epoch tested)", "results/egnn.parquet"])
    return ["### Published anchors", "", "Test pos MSE on EGNN's charged N-body benchmark (5 particles, 3000 "
            "training systems, positions 1000 steps ahead); budgets from each model's official code "
            "(`painn_ablate/analysis/anchors.py`). An anchor is its paper's number over its own runs, a point: "
            "its run-to-run spread is not known here.", "",
            *markdown_table(["model", "test pos MSE", "95% interval", "citation", "training budget", "number read in"],
                            rows), ""]


def frontier_not_done_lines(results: str | Path) -> list[str]:
    """What issue 23 asked of the frontier that the committed frontier tables do not hold."""
    from painn_ablate.core.config import GROUPS

    runs = frontier_runs(results)
    lines = []
    tables = walked_tables(results)
    singles = {(preset, a) for t in tables for preset, a in zip(t["preset"], t["ablate"])
               if a not in GROUPS and a != "none"}
    for preset, how in (("r2_full", "left out of R2_full"), ("original", "added to the original")):
        if runs and not any(p == preset for p, _ in singles):
            lines.append(f"- The frontier of the single toggles within the groups {how} (g, alpha_inter, aggregation; "
                         "s_msg, s_mix and each clamp) is not measured: the main job flips whole groups (sweeps/"
                         "DESIGN.md says which amendments cut the singles for compute); `ablate=<toggle>` runs one.")
    shallow = []  # the kinds of single toggle walked, but not at L = 8 (fairchem's: _family_not_done_lines)
    for preset, how, section in (("original", "added to the original", "7b"), ("r2_full", "left out of R2_full", "7c")):
        depths = {int(L) for t in tables for p, L, a in zip(t["preset"], t["L"], t["ablate"])
                  if p == preset and a not in GROUPS and a != "none"}
        if depths and max(depths) < 8:
            shallow.append(f"{how} (section {section}) at L = {', '.join(map(str, sorted(depths)))}")
    if shallow and any(depth == 8 for _, depth, *_ in runs):
        lines.append(f"- Single toggles were walked, but not at L = 8: {'; '.join(shallow)}. At L = 8 the frontier "
                     "holds those as whole groups only (the main job); cut for compute (sweeps/DESIGN.md, amendments "
                     "15-18).")
    if not {depth for _, depth, *_ in runs} >= {depth for _, depth, _ in FRONTIER_RUNS}:
        lines.append("- The frontier at L = 8 (`sweeps/stabilizers_L8.yaml`) is not in results/frontier: amendment 11 "
                     "stopped it after 12 trials, amendment 14 ran it.")
    return lines + _family_not_done_lines(results) + _incomplete_walk_lines(results)


def _family_not_done_lines(results: str | Path) -> list[str]:
    """What issue 24 asked of fairchem's family on the frontier that the walked tables do not hold."""
    tables = walked_tables(results)
    fairchem = pd.concat([t[t["preset"] == "fairchem"] for t in tables]) if tables else pd.DataFrame()
    if fairchem.empty:
        return [f"- fairchem's family on the frontier (`sweeps/{FAMILY}.yaml`, amendment 16) is not in "
                f"results/{FRONTIER}."]
    lines = []
    parts = sorted(set(fairchem.loc[fairchem["ablate"] != "none", "L"].astype(int)))
    if not parts:
        lines.append("- fairchem's parts left out one at a time (`model=fairchem ablate=<part>`) are not on the "
                     "frontier: amendment 16 cut them for compute; only the whole preset is (section 7d).")
    elif 8 not in parts:
        lines.append(f"- fairchem's parts left out one at a time are not run at L = 8 (amendments 17 and 21 cut them); "
                     f"section 7e is L = {', '.join(map(str, parts))}.")
    depths = sorted(set(fairchem["L"].astype(int)))
    if 8 not in depths:
        lines.append(f"- fairchem's family at L = 8 is not run (amendment 16 cut it); section 7d is L = "
                     f"{', '.join(map(str, depths))}.")
    return lines


def _incomplete_walk_lines(results: str | Path) -> list[str]:
    """Per walked sweep in results/<FRONTIER>/ whose designed walks (its file's presets x ablations x seeds) did
    not all complete by its deadline: which variants and how many walks, which therefore have no critical rung."""
    from painn_ablate.core.config import experiment_name

    depth_of = {stem: depth for stem, depth, _ in FRONTIER_RUNS}
    rerun = {(depth, p, a): (amendment, int(done)) for _, depth, amendment, _, r in group_reruns(results)
             for p, a, done in zip(r.variants["preset"], r.variants["ablate"], r.variants["complete"]) if a != "none"}
    lines = []
    for stem in WALKED:
        found = walked(results, stem)
        if found is None:
            continue
        params = shipped_sweep(stem).params
        walks = found[1].variants.set_index(["preset", "ablate"])["complete"]
        seeds = len(params["seed"].values)
        short = [(p, a, int(walks.get((p, a), 0))) for p in params["model"].values
                 for a in (params["ablate"].values if "ablate" in params else ("none",))
                 if walks.get((p, a), 0) < seeds]
        if short:
            again = {(p, a): rerun[key] for p, a, _ in short if (key := (depth_of.get(stem), p, a)) in rerun}
            cut = ", ".join(f"{experiment_name(p, a)} {done} of {seeds}"
                            + (f" (re-run whole in section 7a, amendment {again[p, a][0]}: {again[p, a][1]} of "
                               f"{seeds})" if (p, a) in again else "") for p, a, done in short)
            lines.append(f"- `sweeps/{stem}.yaml` was stopped at its deadline (sweeps/DESIGN.md) before every walk "
                         f"completed; an incomplete walk has no critical rung. Walks complete: {cut}.")
    return lines


def not_done_lines(trials: pd.DataFrame) -> list[str]:
    """What the issue asked for and these records do not hold, derived from what they hold."""
    lines = []
    studies = set(trials["study"]) if not trials.empty else set()
    if not {"add_one_in", "leave_one_out"} <= studies:
        lines.append("- Section 3 (leave-one-out on r2_full and add-one-in for every stabilizer): not run.")
    loo = trials[trials["study"] == "leave_one_out"] if not trials.empty else trials
    if len(loo) and loo.groupby("ablate").size().min() < 5:
        counts = loo.groupby("ablate").size()
        lines.append(f"- The local leave-one-out reached {counts.min()}-{counts.max()} seeds per stabilizer by its "
                     "deadline (sweeps/DESIGN.md, amendments 3-4), under the issue's minimum of 5; the GPU repetition "
                     "(section 3b) has more. `painn-ablate sweep sweeps/leave_one_out.yaml` resumes it.")
    full_depths = sorted(set(trials.loc[trials["preset"] == "r2_full", "L"])) if not trials.empty else []
    deep = trials[(trials["preset"] == "r2_full") & (trials["L"] == 8)] if not trials.empty else trials
    if 0 < len(deep) < 10:
        lines.append(f"- R2_full at L = 8 reached {len(deep)} of 10 seeds by its deadline (sweeps/DESIGN.md, "
                     "amendment 6); `painn-ablate sweep sweeps/map_r2_full_L8.yaml` resumes it.")
    if full_depths and max(full_depths) < 8:
        lines.append(f"- R2_full at deeper layers (L = 8 was planned): not run, for compute (sweeps/DESIGN.md, "
                     f"amendment 1); its map has L = {', '.join(map(str, full_depths))} only, so where R2_full turns "
                     "from stable to blowing up is known along the learning rate alone.")
    on_map = trials[(trials["preset"] == "original") & (trials["ablate"] != "none")] if not trials.empty else trials
    if len(on_map) and on_map.groupby(["L", "lr"]).ngroups == 1:
        cell = on_map.iloc[0]
        lines.append(f"- The add-one-in variants were run at one cell of the map only (L = {int(cell['L'])}, "
                     f"lr = {float(cell['lr']):g}), not "
                     "across it (issue 12, section 1): where a sufficient stabilizer stops being sufficient along "
                     "depth and learning rate is not measured.")
    egnn = trials[~ex.default_setting(trials)] if not trials.empty else trials
    if len(egnn) and egnn["seed"].nunique() < 10:
        lines.append(f"- E1 rests on {egnn['seed'].nunique()} seeds, and its interval carries the seed-to-seed spread "
                     "only: issue 24 asks for 10 seeds with the test set's sampling error (a bootstrap over test "
                     "systems: `painn-ablate export --test-errors`, analysis.stats.seed_and_sample_interval); a "
                     "300-epoch run is over an hour on one core here, so it was cut (sweeps/DESIGN.md, amendments "
                     "16-17). `sweeps/egnn.yaml` with more seeds resumes it.")
    if len(egnn):
        lines.append("- Section 5 trains R2_full only: the best stable variant of `sweeps/tune_r2.yaml` was not "
                     "searched (tune_r2 has not been run), so it has no row beside EGNN.")
    else:
        lines.append("- Section 5 (accuracy against EGNN on like-for-like terms): the options exist (`model.edge_charge=true`: "
                     "the charge product c_i c_j as an edge input of the filter; `train.loss=pos`: EGNN's position-only "
                     "loss; `train.schedule=cosine`) and `sweeps/egnn.yaml` holds the run (R2_full, 3 seeds, 300 epochs), "
                     "but it was not run: ~25-40 min a run on one core, while both cores ran section 3. EGNN's 0.0071 "
                     "came from ~10^4 epochs; R2_full's test MSE above is from 33 epochs with a constant lr.")
    return lines + [""]


def dose_frontier_lines(results: str | Path) -> list[str]:
    """Section 6b: amendment 11, the dose-response's critical rungs in training, its rules DF1-DF3."""

    result = dose_frontier(results)
    if result is None:
        return []
    rungs = ", ".join(f"{i} {x:g}" for i, x in enumerate(result.ladder))
    lines = ["## 6b. The scale dose-response in training (sweeps/DESIGN.md, amendment 11)", "",
             f"Command: `painn-ablate sweep sweeps/{DOSE_FRONTIER}.yaml --workers 2`, then `painn-ablate export "
             f"sweeps_out/{DOSE_FRONTIER} --out results/{DOSE}`. The original at L = 5 at each (g, coupling term), "
             "10 paired seeds, each walking up the main job's ladder (section 7: 200-step rungs, the same rule of "
             f"training) to its critical rung. Rungs: {rungs}.", ""]
    rows = [[f"{r['g']:g}", "kept" if r["coupling"] else "dropped", f"{r['complete']}/{r['walks']}",
             median_text(r["median_rung"], r["lo"], r["hi"]), str(r["ended_at_init"]), str(r["censored"])]
            for _, r in result.settings.iterrows()]
    lines += markdown_table(["g", "coupling term", "walks complete", "median critical rung [95%]",
                             "ended at init", "censored (every rung trained)"], rows) + [""]
    lines += ["Dropping the coupling term, per g (paired by seed, dropped minus kept, in rungs; one-sided exact "
              "sign test):", ""]
    lines += markdown_table(["g", "n", "median shift [95%]", "up/down", "p sign"],
                            [[f"{r['g']:g}", str(r["n"]), median_text(r["median"], r["lo"], r["hi"]),
                              f"{r['up']}/{r['down']}", f"{r['p_sign']:.3g}"] for _, r in result.coupling.iterrows()])
    lines += ["", "Rules (judged as written):", ""]
    lines += [f"- **{r.rule} ({r.claim}): {r.verdict}.** {r.evidence}." for r in result.rules] + [""]
    df = {r.rule: r for r in result.rules}
    if df["DF3"].verdict in ("PASS", "MISS"):
        answer = ("explained by the interaction's scale at this resolution as well: at matched scale the coupling "
                  "term moves the frontier by at most a rung" if df["DF3"].verdict == "PASS" else
                  "not explained by the interaction's scale alone: " + (
                      "lowering g does not raise the critical learning rate" if df["DF1"].verdict != "PASS" else
                      f"lowering g raises the critical learning rate ({df['DF1'].evidence}), and at the mean aggregation's scale dropping "
                      f"the coupling term raises it further ({df['DF2'].evidence})"))
        lines += [f"**Is the original's explosion explained by the interaction's scale?** At initialisation, section "
                  f"6's D4 answers; in training, by the critical rung over 200 steps, it is {answer}.", ""]
    rates = result.rates.assign(setting=[f"g {g:g}, coupling {'kept' if c else 'dropped'}"
                                         for g, c in zip(result.rates["g"], result.rates["coupling"])],
                                cell=[f"{k}/{n} [{lo:.2f}, {hi:.2f}]" for k, n, lo, hi in
                                      zip(result.rates["k"], result.rates["n"], result.rates["lo"], result.rates["hi"])])
    wide = rates.pivot(index="setting", columns="rung", values="cell").fillna("-")
    lines += ["Blow-up rate per rung (k/n, Wilson 95%):", ""]
    lines += markdown_table(["setting", *(f"rung {i}" for i in wide.columns)],
                            [[name, *row] for name, row in zip(wide.index, wide.to_numpy().tolist())]) + [""]
    return lines


@functools.lru_cache(maxsize=None)
def shipped_sweep(stem: str):
    """The shipped sweep file sweeps/<stem>.yaml, loaded once per process: loading validates every grid point's
    configuration (seconds for a few hundred), and the report reads each file's design in several sections."""
    from painn_ablate.sweep.spec import load_sweep

    return load_sweep(SWEEPS / f"{stem}.yaml")


def sweep_ladder(stem: str) -> list[float]:
    """The frontier ladder of a shipped sweep file (its frontier parameter's values)."""
    sweep = shipped_sweep(stem)
    return list(sweep.swept[sweep.frontier].values)


def dose_frontier(results: str | Path):
    """Amendment 11's result (analysis.frontier.DoseFrontier) from results/<DOSE>/, None where not exported."""
    from painn_ablate.analysis import frontier as fr

    version = _version([Path(results) / DOSE / f"{DOSE_FRONTIER}.parquet"])
    return None if version is None else _computed(version, fr.dose_result, DOSE_FRONTIER)[1]


@functools.lru_cache(maxsize=16)
def _computed(version: tuple, result, stem: str):
    """(trials, `result(trials, the ladder of sweeps/<stem>.yaml)`) of the tables `version` names, concatenated;
    read and computed once per version of the files (walked's cache, for the results of amendments 11, 12 and 16)."""
    trials = pd.concat([pd.read_parquet(path) for path, *_ in version], ignore_index=True)
    return trials, result(trials, sweep_ladder(stem))


def degree_frontier(results: str | Path):
    """(trials, analysis.frontier.DegreeFrontier) of amendment 12 from results/<DEGREE>/, None where not exported."""
    from painn_ablate.analysis import frontier as fr

    version = _version([Path(results) / DEGREE / f"{stem}.parquet" for stem in DEGREE_STEMS])
    if version is None:
        return None
    return _computed(version, fr.degree_result, DEGREE_STEMS[0])


def degree_lines(results: str | Path) -> list[str]:
    """Section 6c: amendment 12, mean vs sum aggregation at matched scale on graphs of varying degree (DN1)."""
    from painn_ablate.analysis import frontier as fr

    found = degree_frontier(results)
    if found is None:
        return []
    trials, result = found
    lines = ["## 6c. Degree normalisation apart from scale (sweeps/DESIGN.md, amendment 12)", "",
             "Commands: `painn-ablate sweep sweeps/degree.yaml --workers 2` and `sweeps/degree_mean.yaml`, then "
             f"`painn-ablate export sweeps_out/degree sweeps_out/degree_mean --out results/{DEGREE}`. 20 charged "
             "particles on a radius graph (r = 4: in-degree mean 7.11, sd 3.97), where the degree-mean is not a "
             f"constant scale; the original at L = 5, sum at g = 1 and at g = {fr.DEGREE_MATCHED_G:g} (the mean's "
             "overall scale), mean at g = 1; 10 paired seeds walking the main job's ladder (200-step rungs, batch 25).",
             ""]
    fingerprints = sorted(set(trials["data_fingerprint"].dropna())) if "data_fingerprint" in trials else []
    rows = [[str(r["aggregation"]), f"{r['g']:g}", f"{r['complete']}/{r['walks']}",
             median_text(r["median_rung"], r["lo"], r["hi"]), str(r["ended_at_init"]), str(r["init_phase_blow_ups"])]
            for _, r in result.arms.iterrows()]
    lines += markdown_table(["aggregation", "g", "walks complete", "median critical rung [95%]", "ended at init",
                             "init-phase blow-ups"], rows) + [""]
    rule = result.rule
    reading = []
    if rule.verdict == "PASS":
        lower = rule.numbers["shift"].median < 0
        reading = [f"On this graph the degree-mean's frontier lies {'below' if lower else 'above'} that of sum at the "
                  "same overall scale: dividing each node's messages by its own in-degree "
                  f"{'hurts' if lower else 'helps'} stability beyond what its average scale does"
                  + (" (a node with one neighbour takes that message at full weight, 7x the matched sum's; a "
                     "reading, not tested here)." if lower else "."), ""]
    lines += [f"- **{rule.rule} ({rule.claim}): {rule.verdict}.** {rule.evidence}.",
              f"- Described: sum at g = {fr.DEGREE_MATCHED_G:g} minus sum at g = 1: median shift "
              f"{result.scale.median:g} rung [{result.scale.lo:g}, {result.scale.hi:g}], up {result.scale.up} / "
              f"down {result.scale.down} of n {result.scale.n}.", ""] + reading
    trained = trials[[fr.trains({"status": st, "training_blow_up": None if pd.isna(tb) else bool(tb)})
                      for st, tb in zip(trials["status"], trials["training_blow_up"])]]
    common = result.arms["median_rung"].min()
    if common == common and common >= 0:  # not nan, and every arm trained at some rung
        lr = result.ladder[int(common)]
        at = trained[np.isclose(trained["lr"], lr)]
        cells = []
        for _, arm in result.arms.iterrows():
            mse = at[(at["aggregation"].astype(str) == arm["aggregation"]) & (at["g"].astype(float) == arm["g"])]
            cells.append(f"{arm['aggregation']} g = {arm['g']:g}: {mse_text(mean_interval(mse['test_pos_mse']))}")
        lines += [f"Test pos MSE of the runs that trained at lr {lr:g} (rung {int(common)}, the lowest arm's median "
                  f"critical rung): " + "; ".join(cells) + ".", ""]
    if fingerprints:
        lines += [f"Data set fingerprint: {', '.join(f'`{f}`' for f in fingerprints)} (generated per machine).", ""]
    return lines


def _dose_table(results: str | Path) -> Optional[pd.DataFrame]:
    path = Path(results) / DOSE / "probe_seeds.parquet"
    return rules.dose_table(pd.read_parquet(path)) if path.exists() else None


def dose_lines(dose: pd.DataFrame) -> list[str]:
    """Section 6: amendment 7's table of settings and its rules, at mu0_scale 1 (judged) and 0.25 (described)."""
    n = int(dose["seeds"].max()) if len(dose) else 0
    batches = int(dose["batches"].max()) if len(dose) else 0
    lines = ["## 6. The scale dose-response at initialisation (sweeps/DESIGN.md, amendment 7)", "",
             "Command: `bash scripts/dose-response probe/dose_response 05:15`, then `painn-ablate export "
             f"probe/dose_response/* --out results/{DOSE}`. The original at L = 5, {n} seeds per setting; *init "
             f"fraction*: the mean over seeds of the fraction of each seed's first {batches} training batches on which "
             "the initial network crosses a blow-up criterion (seed-level bootstrap 95% interval); *batch 0*: the "
             "seeds blown up on their first batch (Wilson 95%). On this 5-particle full graph g = 0.25 is exactly the "
             "old degree-mean aggregation's scale.", ""]
    rows = [[f"{r['g']:g}", "kept" if r["coupling"] else "dropped", f"{r['mu0_scale']:g}", str(int(r["seeds"])),
             f"{r['frac']:.3f} [{r['frac_lo']:.3f}, {r['frac_hi']:.3f}]",
             f"{int(r['batch0'])}/{int(r['seeds'])} [{r['batch0_lo']:.2f}, {r['batch0_hi']:.2f}]"]
            for _, r in dose.iterrows()]
    lines += markdown_table(["g", "coupling term", "mu0_scale", "seeds", "init fraction [95%]", "batch 0 k/n [Wilson 95%]"],
                            rows) + [""]
    run = {(float(r["g"]), bool(r["coupling"]), float(r["mu0_scale"])) for _, r in dose.iterrows()}
    missing = [f"g = {g:g}, coupling {'kept' if c else 'dropped'}, mu0_scale {m:g}" for m in (1.0, 0.25)
               for c in (True, False) for g in rules.DOSE_GAINS if (g, c, m) not in run]
    if missing:
        lines += [f"Not run by the amendment's deadline: {'; '.join(missing)}.", ""]
    for mu0, how in ((1.0, "judged"), (0.25, "described, not judged")):
        verdicts = rules.judge(pd.DataFrame(), rules.DOSE_RULES, dose=dose, mu0_scale=mu0)
        lines += [f"Rules at mu0_scale {mu0:g} ({how}):", ""]
        lines += [f"- **{v.rule} ({v.claim.split(':')[0]}): {v.verdict}.** {v.evidence}." for v in verdicts] + [""]
    lines += ["These rules are about the *initial* network on its first batches: a verdict here says what the scale "
              "does to the blow-up present before any update, not to blow-ups that training causes (that is the "
              "critical learning rate's question, the frontier design, not run yet). A MISS where both settings "
              "are at 0 is a floor: neither blows up, so dropping the coupling cannot lower it further.", ""]
    return lines


OUTCOMES = "outcomes"  # results/<OUTCOMES>/: amendment 8's re-run of the map (painn-ablate export --out)
MAP_FILES = ("map_original", "map_r2_full", "map_r2_full_L8")  # the map's sweep files, in the order they run


def outcome_trials(results: str | Path) -> pd.DataFrame:
    folder = Path(results) / OUTCOMES
    trials = ex.load_results(folder)[0] if folder.is_dir() else pd.DataFrame()
    return trials[ex.default_setting(trials)] if len(trials) else trials


def _share(numbers: list) -> str:
    k, n, lo, hi = numbers
    return f"{k}/{n} [{lo:.2f}, {hi:.2f}]" if n else "-"


def outcome_lines(trials: pd.DataFrame, cells: pd.DataFrame, verdicts: Sequence[rules.Verdict],
                  baseline: float) -> list[str]:
    """Section 1b: amendment 8's map re-run under the new outcomes (`cells`: its cell_table): per cell, per
    depth, the recovered runs."""
    header = ["preset", "L", "lr", "n", "blow-ups k/n [Wilson 95%]", "sustained k/n [Wilson 95%]",
              "stable / transient / diverged / exploded", "first blow-up at init / in training", "median step",
              "origin layers", "test pos MSE, stable runs", "test pos MSE, recovered (transient) runs"]
    rows = [[r["preset"], str(r["L"]), f"{r['lr']:g}", str(r["n"]), _rate(r),
             f"{r['sustained']}/{r['n']} [{r['sustained_lo']:.2f}, {r['sustained_hi']:.2f}]",
             f"{r['stable']} / {r['transient']} / {r['diverged']} / {r['exploded']}", _phases(r),
             _median_step(r["median_step"]), r["origin_layers"] or "-", _mse(r),
             mse_text({k: r[f"transient_mse_{k}"] for k in ("n", "mean", "sd", "lo", "hi")})]
            for _, r in cells.iterrows()]
    short = [f"{r['preset']} L = {r['L']}, lr = {r['lr']:g} (n = {r['n']})" for _, r in cells.iterrows() if r["n"] < 10]
    lines = ["## 1b. The map re-run under the new outcomes (amendment 8)", "",
             "Commands: `painn-ablate sweep sweeps/<file>.yaml --workers 2 --out sweeps_out/outcomes/<file>` for "
             f"{', '.join(MAP_FILES)}, then `painn-ablate export sweeps_out/outcomes/* --out results/{OUTCOMES}`. The "
             "same cells as section 1, on the shipped data set, with training continued after a spike: a trial ends at "
             "a non-finite value or at a divergence still firing 200 steps after it began (sustained); a spike that "
             "recovers (no criterion for 50 steps) trains on to the end (transient). The phase is that of each run's "
             "first blow-up.", ""]
    lines += markdown_table(header, rows) + [""]
    if short:
        lines += ["Cells with fewer than 10 finished trials (the session's cut, amendment 8): " + "; ".join(short) + ".", ""]
    depth_rows = []
    for L in sorted(set(trials.loc[trials["preset"] == "original", "L"])):
        runs = rules.at_cell(trials, "original", "none", int(L), None)
        init, training = (rules.phase_share(trials, int(L), ph) for ph in (Phase.INIT, Phase.TRAINING))
        depth_rows.append([str(L), str(len(runs)), str(int(runs["blew_up"].sum())), _share(init), _share(training)])
    lines += ["Per depth (the original, the three learning rates pooled): of the blow-ups, the fraction whose first "
              "blow-up was present at initialisation (phase init) and the fraction that came from training (phase "
              "training), k/n with Wilson 95% intervals.", ""]
    lines += markdown_table(["L", "runs", "blow-ups", "at initialisation", "in training"], depth_rows) + [""]
    recovered = trials[(trials["preset"] == "original") & (trials["status"] == Status.TRANSIENT)]
    full = rules.at_cell(trials, "r2_full", "none", rules.DESIGN_CELL.L, rules.DESIGN_CELL.lr)
    full_mse = mean_interval(full.loc[full["status"] == Status.STABLE, "test_pos_mse"])
    rec_mse = mean_interval(recovered["test_pos_mse"])
    lines += [f"**Recovery.** {len(recovered)} of the original's {int((trials['preset'] == 'original').sum())} runs "
              f"spiked and recovered (transient); their test pos MSE: {mse_text(rec_mse)}, against R2_full's stable "
              f"runs at L = {rules.DESIGN_CELL.L}, lr = {rules.DESIGN_CELL.lr:g}: {mse_text(full_mse)}; the "
              f"constant-velocity baseline on the same test split: {baseline:.4g}.", ""]
    lines += ["Rules M1-M4, P1 and P2 judged on these trials are the verdict table's rows marked *re-run*: "
              + "; ".join(f"{v.rule} {v.verdict}" for v in verdicts) + ".", ""]
    fingerprints = sorted(set(trials["data_fingerprint"].dropna())) if "data_fingerprint" in trials else []
    if fingerprints:
        lines += [f"Data set fingerprint of these trials: {', '.join(f'`{f}`' for f in fingerprints)}.", ""]
    return lines


def walked_runs(results: str | Path, specs: Sequence[tuple]) -> list[tuple]:
    """Of runs given as (stem, L, amendment), those whose tables are in `results`: (stem, L, amendment, trials,
    analysis.frontier.Frontier)."""
    return [(stem, depth, amendment, *found) for stem, depth, amendment in specs
            if (found := walked(results, stem)) is not None]


def frontier_runs(results: str | Path) -> list[tuple]:
    """The frontier runs whose tables are in `results`: (stem, L, amendment, trials, analysis.frontier.Frontier)."""
    return walked_runs(results, FRONTIER_RUNS)


def beside_main_r2_full(results: str | Path, specs: Sequence[tuple]) -> list[tuple]:
    """Of runs of the original's variants given as (stems, L, amendment), those whose first table is in `results`,
    as frontier_runs gives them (stem: the run's first file): each run's tables with the main job's R2_full at that
    depth beside them (sufficiency reads R2_full's interval from there), on the run's ladder. Computed once per
    version of the files (7a's re-runs are read by two sections)."""
    runs = []
    for stems, depth, amendment in specs:
        if walked(results, stems[0]) is None or depth not in MAIN_AT or walked(results, MAIN_AT[depth]) is None:
            continue
        version = _version([Path(results) / FRONTIER / f"{stem}.parquet" for stem in (MAIN_AT[depth], *stems)
                            if walked(results, stem) is not None])
        runs.append((stems[0], depth, amendment, *_beside_main(version, stems[0])))
    return runs


@functools.lru_cache(maxsize=8)
def _beside_main(version: tuple, stem: str):
    """beside_main_r2_full's (trials, analysis.frontier.Frontier) of one run: the main job's R2_full walks from the
    first table `version` names, the run's tables after it, on the ladder of sweeps/<stem>.yaml."""
    from painn_ablate.analysis import frontier as fr

    jobs = pd.read_parquet(version[0][0])
    reference = jobs[(jobs["preset"] == "r2_full") & (jobs["ablate"] == "none")]
    trials = pd.concat([reference, *(pd.read_parquet(path) for path, *_ in version[1:])], ignore_index=True)
    return trials, fr.frontier_result(trials, sweep_ladder(stem))


def singles_in_runs(results: str | Path) -> list[tuple]:
    """The runs of single toggles added to the original, one per depth (SINGLES_IN), as beside_main_r2_full gives
    them."""
    return beside_main_r2_full(results, SINGLES_IN)


def group_reruns(results: str | Path) -> list[tuple]:
    """The main job's groups re-run whole (GROUP_RERUNS), as beside_main_r2_full gives them."""
    return beside_main_r2_full(results, [((stem,), depth, amendment) for stem, depth, amendment in GROUP_RERUNS])


def _verdict_rows(result) -> list[tuple[str, list[str]]]:
    """Per variant of a frontier result (analysis.frontier.Frontier), in the design's order: its name and cells:
    the median critical rung with its interval and, against its preset, the median paired shift with its
    interval, up/down, Holm p and the verdict (blank for the presets themselves)."""
    from painn_ablate.core.config import experiment_name
    from painn_ablate.reporting.text import fmt_value

    v, t = result.variants, result.verdicts.set_index(["preset", "ablate"])
    rows = []
    for p, a, m, lo, hi in zip(v["preset"], v["ablate"], v["median_rung"], v["lo"], v["hi"]):
        shift = ["", "", "", ""]
        if (p, a) in t.index:
            r = t.loc[(p, a)]
            shift = [median_text(r["shift"], r["shift_lo"], r["shift_hi"]), f"{r['up']}/{r['down']}",
                     fmt_value(r["p_holm"]), f"**{r['verdict']}**"]
        rows.append((experiment_name(p, a), [median_text(m, lo, hi), *shift]))
    return rows


VERDICT_HEADER = ["median critical rung [95%]", "shift vs preset [95%]", "up/down", "Holm p", "verdict"]


def _depth_table(runs, walks_done: bool = False) -> list[str]:
    """Per variant and depth, _verdict_rows' cells (after its walks done out of its sweep file's, with
    `walks_done`), the depths of one variant together; `runs` as frontier_runs gives them."""
    rows: dict[str, list[list[str]]] = {}  # variant -> its rows, one per depth, in the design's order
    for stem, depth, _, _, result in runs:
        named = _walks_done_rows(result, stem) if walks_done else [[name, *cells] for name, cells in _verdict_rows(result)]
        for name, *cells in named:
            rows.setdefault(name, []).append([str(depth), *cells])
    out = [[name, *row] for name, per_depth in rows.items() for row in per_depth]
    return markdown_table(["variant", "L", *(["walks done"] if walks_done else []), *VERDICT_HEADER], out)


def _runs_head(title: str, ran: Sequence[tuple[int, int]], stems: Sequence[str], what: str) -> list[str]:
    """A section's heading over runs, one per depth, `ran` as (L, amendment), then the commands that make their
    tables (`stems`: the sweep files) and `what` the section holds."""
    at = ", ".join(f"amendment {amendment} at L = {depth}" for depth, amendment in ran)
    return [f"### {title} ({at})", "",
            "Commands: " + ", ".join(f"`painn-ablate sweep sweeps/{stem}.yaml --workers 2`" for stem in stems)
            + f", then `painn-ablate export` of each `--out results/{FRONTIER}`. {what}", ""]


def singles_lines(results: str | Path) -> list[str]:
    """Section 7b: each member of the interaction_scale and bounds groups added to the original alone, one run per
    depth (amendment 13 at L = 5, amendment 19 at L = 8), each judged against its own run's original, with R2_full's
    interval from the main job at that depth; one table with a member's depths together, then per depth the main
    job's groups and its original beside them."""
    runs = singles_in_runs(results)
    if not runs:
        return []
    depths = {depth for _, depth, *_ in runs}
    files = [stem for stems, depth, _ in SINGLES_IN if depth in depths for stem in stems
             if walked(results, stem) is not None]
    lines = _runs_head("7b. Single toggles added to the original", [(depth, amendment) for _, depth, amendment, *_ in runs],
                       files, "Each member of the interaction_scale and bounds groups added to the original alone, "
                       "against the same run's original (Holm over the single toggles of that run); *sufficient* needs "
                       "the median inside R2_full's interval from the main job's walks at that depth (its rows below). "
                       "The depths are separate runs: a member's rows are compared by their verdicts, not paired.")
    lines += _depth_table(runs, walks_done=True) + [""]
    for _, depth, _, _, result in runs:
        jobs = walked(results, MAIN_AT[depth])[1]
        groups = jobs.variants[jobs.variants["preset"] == "original"].set_index("ablate")
        for group in ("interaction_scale", "bounds"):
            if group in groups.index:
                g = groups.loc[group]
                lines.append(f"- L = {depth}: the whole {group} group on the original (the main job): median rung "
                             f"{median_text(g['median_rung'], g['lo'], g['hi'])}.")
        lines.append(f"- L = {depth}: {judged_text(result, 'sufficient', 'single toggles', also=['raises'])}")
        lines += [f"- L = {depth}: " + line[2:]
                  for line in same_rung_lines(result.critical, jobs.critical, preset="original")]
    for stems, depth, amendment in SINGLES_IN:
        missing = [stem for stem in stems if walked(results, stem) is None]
        if depth in depths and missing:
            lines.append(f"- L = {depth}: not run by amendment {amendment}'s deadline: {', '.join(missing)}.")
    return lines + [""]


def group_rerun_lines(results: str | Path) -> list[str]:
    """Section 7a's re-runs: each group of the original's that a main job left short, re-run whole with its own
    original (GROUP_RERUNS), judged by the main job's rule against that original, with R2_full's interval from the
    main job at that depth; then seed by seed against the main job's walks."""
    lines = []
    for stem, depth, amendment, _, result in group_reruns(results):
        jobs = walked(results, MAIN_AT[depth])[1]
        groups = result.verdicts[result.verdicts["preset"] == "original"]["ablate"]
        done = jobs.variants.set_index(["preset", "ablate"])["complete"]
        short = ", ".join(f"{done.get(('original', g), 0)} walks of original + {g}" for g in groups)
        lines += [f"### 7a, re-run at L = {depth} (amendment {amendment})", "",
                  f"Command: `painn-ablate sweep sweeps/{stem}.yaml --workers 2`, then `painn-ablate export "
                  f"sweeps_out/{stem} --out results/{FRONTIER}`. The main job at L = {depth} completed {short} "
                  "(its rows above); this run walks the group whole with its own original as the reference, paired "
                  "by seed within the run (Holm over this run's groups), R2_full's row and interval from the main "
                  f"job at L = {depth}. The main job's rows stay as they were.", ""]
        lines += _depth_table([(stem, depth, amendment, None, result)], walks_done=True) + [""]
        lines.append(f"- L = {depth}: {judged_text(result, 'sufficient', 'groups', also=['raises'])}")
        for ablate in ("none", *groups):
            lines += [f"- L = {depth}: " + line[2:] for line in
                      same_rung_lines(result.critical, jobs.critical, preset="original", ablate=ablate)]
        lines.append("")
    return lines


def judged_text(result, verdict: str, what: str, also: Sequence[str] = ()) -> str:
    """What a frontier result's verdict table says in one sentence: "<verdict> by this measure: <those> of the N
    <what> judged", then each verdict in `also` with its toggles where any has it, then those not judged (fewer than
    MIN_PAIRS pairs, as verdict_table judges)."""
    from painn_ablate.analysis.frontier import MIN_PAIRS

    t = result.verdicts

    def given(v: str) -> list[str]:
        return [a for a, w in zip(t["ablate"], t["verdict"]) if w == v]

    judged = [a for a, n in zip(t["ablate"], t["n"]) if n >= MIN_PAIRS]
    text = f"{verdict} by this measure: {', '.join(given(verdict)) or 'none'} of the {len(judged)} {what} judged"
    text += "".join(f"; {v}: {', '.join(given(v))}" for v in also if given(v))
    skipped = [a for a in t["ablate"] if a not in judged]
    return text + (f" ({', '.join(skipped)}: n < {MIN_PAIRS}, not judged)." if skipped else ".")


def _walks_done_rows(result, stem: str) -> list[list[str]]:
    """_verdict_rows with, after each variant's name, its complete walks out of the walks its sweep file designs."""
    seeds = len(shipped_sweep(stem).params["seed"].values)
    return [[name, f"{done}/{seeds}", *cells]
            for (name, cells), done in zip(_verdict_rows(result), result.variants["complete"])]


def singles_out_lines(results: str | Path) -> list[str]:
    """Section 7c: each member of the interaction_scale and bounds groups left out of R2_full alone, one run per
    depth (amendment 15 at L = 5, amendment 18 at L = 8), each judged against its own run's R2_full; one table with
    a member's depths together, then per depth the main job's groups and its R2_full beside them."""
    runs = walked_runs(results, SINGLES_OUT)
    if not runs:
        return []
    lines = _runs_head("7c. Single toggles left out of R2_full", [(depth, amendment) for _, depth, amendment, *_ in runs],
                       [stem for stem, *_ in runs],
                       "Each member of the interaction_scale and bounds groups set back to the original's value in "
                       "R2_full alone, against the same run's R2_full (its rows below; Holm over the single toggles of "
                       "that run); *necessary* as in the main job. The two depths are two runs: a member's rows are "
                       "compared by their verdicts, not paired.")
    lines += _depth_table(runs, walks_done=True) + [""]
    for _, depth, _, _, result in runs:
        lines.append(f"- L = {depth}: {judged_text(result, 'necessary', 'single toggles')}")
        main = walked(results, MAIN_AT[depth]) if depth in MAIN_AT else None
        if main is None:
            continue
        jobs = main[1]
        groups = jobs.variants[jobs.variants["preset"] == "r2_full"].set_index("ablate")
        for group in ("none", "interaction_scale", "bounds"):
            if group in groups.index:
                g = groups.loc[group]
                what = "R2_full itself" if group == "none" else f"R2_full without the whole {group} group"
                lines.append(f"- L = {depth}: {what} in the main job: median rung "
                             f"{median_text(g['median_rung'], g['lo'], g['hi'])}.")
        lines += [f"- L = {depth}: " + line[2:] for line in same_rung_lines(result.critical, jobs.critical)]
    return lines + [""]


def same_rung_lines(mine: pd.DataFrame, main: pd.DataFrame, preset: str = "r2_full",
                    theirs_name: str = "the main job's", ablate: str = "none") -> list[str]:
    """A run's walks of `preset` with `ablate` against an earlier run's (two critical tables), seed by seed: how
    often the critical rung is the same (the same seeds, ladder and code path; a rung at the boundary can move
    between runs)."""
    from painn_ablate.analysis import frontier as fr
    from painn_ablate.core.config import experiment_name

    ours = fr.setting_rungs(mine, preset=preset, ablate=ablate).dropna()
    theirs = fr.setting_rungs(main, preset=preset, ablate=ablate).dropna()
    both = ours.index.intersection(theirs.index)
    if not len(both):
        return []
    same, apart = int((ours[both] == theirs[both]).sum()), int((ours[both] - theirs[both]).abs().max())
    label = "R2_full" if (preset, ablate) == ("r2_full", "none") else experiment_name(preset, ablate)
    return [f"- This run's {label} walks against {theirs_name}, seed by seed: the same critical rung in {same} of "
            f"{len(both)} seeds" + (f" (at most {apart} rung apart)." if same < len(both) else ".")]


def family_lines(results: str | Path) -> list[str]:
    """Section 7d: fairchem's family beside R2_full's and the original on one frontier, one run per depth
    (FAMILIES: amendment 16 at L = 5, amendment 21 at L = 8), each with its own rules FC1 and FC2."""
    runs = [(stem, depth, amendment) for stem, depth, amendment in FAMILIES if walked(results, stem) is not None]
    if not runs:
        return []
    lines = _runs_head("7d. Two families on one frontier: fairchem's and R2_full's",
                       [(depth, amendment) for _, depth, amendment in runs], [stem for stem, *_ in runs],
                       "fairchem's normalisation and fixed scales (`model=fairchem`, README), R2_full and the original, "
                       "each walking the main job's ladder over seeds 0-9 in one run per depth, paired by seed within "
                       "the run. Rules as registered (sweeps/DESIGN.md amendment 16, at L = 8 amendment 21), each on the "
                       "seeds whose two walks completed.")
    for stem, depth, amendment in runs:
        lines += _family_depth_lines(results, stem, depth, amendment)
    return lines


def _family_depth_lines(results: str | Path, stem: str, depth: int, amendment: int) -> list[str]:
    """7d at one depth: the run's rules FC1 and FC2, the answer, each preset's critical rungs, the validation and
    test loss where both families trained, its walks against the main job's, and the run as `sweep` prints it."""
    from painn_ablate.reporting.text import fmt_value, frontier_text

    found, result = walked(results, stem), family_frontier(results, stem)
    trials, ladder = found[0], sweep_ladder(stem)
    lines = [f"#### L = {depth} (amendment {amendment}, `sweeps/{stem}.yaml`)", ""]
    lines += markdown_table(["rule", "claim", "verdict", "evidence"],
                            [[r.rule, r.claim, f"**{r.verdict}**", r.evidence] for r in result.rules])
    lines += ["", family_answer(result, depth), ""]
    v = result.presets
    lines += [*markdown_table(
        ["preset", "walks done", "median critical rung [95%]", "censored", "ended at init", "LR sensitivity (median)"],
        [[p, f"{c}/{w}", median_text(m, lo, hi), str(cens), str(init), fmt_value(sens)] for p, c, w, m, lo, hi, cens,
         init, sens in zip(v["preset"], v["complete"], v["walks"], v["median_rung"], v["lo"], v["hi"], v["censored"],
                           v["ended_at_init"], v["lr_sensitivity"])]), ""]
    acc = result.accuracy

    def paired(d: dict) -> str:
        return (f"fairchem minus R2_full paired by seed {fmt_value(d['mean'])} [{fmt_value(d['lo'])}, "
                f"{fmt_value(d['hi'])}] (t 95%, n {d['n']}, two-sided p {fmt_value(d['p'])})")

    if acc:
        common, best = acc["common"], acc["best"]
        lines += [
            "- Accuracy, described, not judged (after 200 steps: not a trained model's accuracy):",
            f"  - validation pos MSE at rung {common['rung']} (lr {common['lr']:g}), the highest where every seed of "
            f"both trained: " + "; ".join(f"{p} {mse_text(common[p])}" for p in ("fairchem", "r2_full"))
            + f"; {paired(common['paired'])}.",
            "  - test pos MSE at each one's best rate (the rung with the lowest mean validation MSE among those where "
            "every seed of it trained): " + "; ".join(f"{p} at rung {best[p]['rung']} (lr {best[p]['lr']:g}) "
                                                       f"{mse_text(best[p]['test'])}" for p in ("fairchem", "r2_full"))
            + f"; {paired(best['paired'])}. These intervals carry the seed-to-seed spread only."]
        if sampled := family_sampling(results, stem):
            def boot(d: dict) -> str:
                return f"{fmt_value(d['mean'])} [{fmt_value(d['lo'])}, {fmt_value(d['hi'])}]"

            lines.append(
                f"  - the same with the test set's own sampling error (amendment 17; a two-level bootstrap 95% interval "
                f"over the {sampled['paired']['n']} seeds and the {sampled['paired']['systems']} test systems, "
                f"`painn-ablate export --test-errors`): " + "; ".join(f"{p} {boot(sampled[p])}" for p in ("fairchem", "r2_full"))
                + f"; fairchem minus R2_full, the same seed and test system, {boot(sampled['paired'])}.")
        else:
            lines.append("  - the test set's own sampling error is not in them: results/frontier has no "
                         f"{stem}{ex.TEST_ERRORS} (`painn-ablate export --test-errors` of the run's folders).")
    else:
        lines.append("- Accuracy: no rung where every seed of both families trained (a walk incomplete, or one that "
                     "failed at the first rung), so none is compared.")
    if depth in MAIN_AT and (main := walked(results, MAIN_AT[depth])) is not None:
        for preset in ("r2_full", "original"):
            lines += same_rung_lines(result.critical, main[1].critical, preset)
    s = result.fr1.numbers["shift"]
    lines += [f"- FR1 on this run's walks (described): R2_full above the original in {s.up} of {s.n} seeds, "
              f"below in {s.down}, one-sided sign test p {fmt_value(s.p_sign)}.", "",
              "```", frontier_text(trials, "lr", ladder, found[1], family=result), "```", ""]
    return lines


def fairchem_parts_lines(results: str | Path) -> list[str]:
    """Section 7e: amendment 17, each of fairchem's parts set back to PaiNN's value in fairchem's preset alone,
    judged against this run's fairchem, with amendment 16's fairchem beside it (L = 5)."""
    from painn_ablate.reporting.text import frontier_text

    found = walked(results, FAIRCHEM_PARTS)
    if found is None:
        return []
    trials, result = found
    lines = ["### 7e. fairchem's parts left out one at a time (amendment 17, L = 5)", "",
             f"Command: `painn-ablate sweep sweeps/{FAIRCHEM_PARTS}.yaml --workers 2`, then `painn-ablate export` "
             f"`--out results/{FRONTIER}`. Each of fairchem's parts (README) set back to PaiNN's value in fairchem's "
             "preset alone, against this run's fairchem (its row below; one-sided sign test that leaving the part "
             "out lowers the critical rung, Holm over the parts whose walks completed); a part whose removal raises "
             "the rung is described by its shift, not tested.", ""]
    lines += markdown_table(["variant", "walks done", *VERDICT_HEADER], _walks_done_rows(result, FAIRCHEM_PARTS)) + [""]
    t = result.verdicts
    judged = judged_text(result, "necessary", "parts")
    lines.append(f"- {judged[0].upper()}{judged[1:]}")
    raised = [f"{a} (+{m:g})" for a, m in zip(t["ablate"], t["shift"]) if m > 0]
    if raised:
        lines.append(f"- Leaving out {', '.join(raised)} raises the median critical rung (described, not tested).")
    if (family := walked(results, FAMILY)) is not None:
        lines += same_rung_lines(result.critical, family[1].critical, "fairchem", "amendment 16's")
    return lines + ["", "```", frontier_text(trials, "lr", result.ladder, result), "```", ""]


def family_sampling(results: str | Path, stem: str = FAMILY) -> dict:
    """Amendment 17's test-set sampling error of a family run's best rates (analysis.frontier.best_rate_sampling)
    from results/<FRONTIER>/<stem>_test_errors.parquet (`painn-ablate export --test-errors`); {} where not exported."""
    version = _version([Path(results) / FRONTIER / f"{stem}{suffix}" for suffix in (".parquet", ex.TEST_ERRORS)])
    return {} if version is None else _sampling(version, str(results), stem)


@functools.lru_cache(maxsize=4)
def _sampling(version: tuple, results: str, stem: str) -> dict:
    """family_sampling's result, computed once per version of the two tables (`version` names both)."""
    from painn_ablate.analysis import frontier as fr

    trials = walked(results, stem)[0]
    return fr.best_rate_sampling(family_frontier(results, stem), trials, pd.read_parquet(version[1][0]))


def family_frontier(results: str | Path, stem: str = FAMILY):
    """A family run's result (analysis.frontier.FamilyFrontier) from results/<FRONTIER>/<stem>.parquet, None where
    not exported."""
    from painn_ablate.analysis import frontier as fr

    version = _version([Path(results) / FRONTIER / f"{stem}.parquet"])
    return None if version is None else _computed(version, fr.family_result, stem)[1]


def frontier_verdicts(results: str | Path) -> list[tuple[str, rules.Verdict]]:
    """The frontier's rules as judged, for runs.md's verdict table, (label, verdict): FR1 per depth of the main
    job (amendments 9, 10), DF1-DF3 (11), DN1 (12), FC1 and FC2 (16), each where its tables are exported."""
    shown = [(f"FR1, L = {depth}", result.fr1) for _, depth, _, _, result in frontier_runs(results)]
    if (dose := dose_frontier(results)) is not None:
        shown += [(v.rule, v) for v in dose.rules]
    if (degree := degree_frontier(results)) is not None:
        shown.append((degree[1].rule.rule, degree[1].rule))
    for stem, depth, _ in FAMILIES:
        if (family := family_frontier(results, stem)) is not None:
            shown += [(v.rule if stem == FAMILY else f"{v.rule}, L = {depth}", v) for v in family.rules]
    return shown


def family_answer(result, depth: int) -> str:
    """Issue 24's sentence, derived from an analysis.frontier.FamilyFrontier: which family is more stable (FC2 as
    judged) and which more accurate (the test MSE at each one's best rate, described), with the numbers."""
    from painn_ablate.reporting.text import fmt_value

    fc2 = result.rules[1]
    s = fc2.numbers["shift"]
    if fc2.verdict == "PASS":
        more, where = ("fairchem's", "above") if s.median > 0 else ("R2_full's", "below")
        stable = (f"{more} family is more stable: fairchem's frontier lies {abs(s.median):g} rung(s) {where} R2_full's (median paired shift "
                  f"{s.median:g} [{s.lo:g}, {s.hi:g}], {s.up} seeds up and {s.down} down of {s.n}, FC2 PASS, two-sided "
                  f"p {fmt_value(fc2.numbers['p'])}; one rung is x2 in learning rate)")
    else:
        stable = f"neither family is shown more stable (FC2 {fc2.verdict}: {fc2.evidence})"
    best = result.accuracy.get("best")
    if best is None:
        accurate = "accuracy is not compared (no rung where every seed of both trained)"
    else:
        d = best["paired"]
        differ = d["lo"] > 0 or d["hi"] < 0
        accurate = ((f"{'R2_full' if d['mean'] > 0 else 'fairchem'} is more accurate" if differ else
                     "neither is shown more accurate")
                    + f": at each one's best rate the test pos MSE of fairchem minus R2_full is {fmt_value(d['mean'])} "
                    f"[{fmt_value(d['lo'])}, {fmt_value(d['hi'])}] (paired t 95%, n {d['n']}; described, not judged, "
                    "the seed-to-seed spread only)")
    return (f"**Which family is more stable, and which more accurate?** By the critical rung over 200 steps at L = {depth}, "
            f"{stable}; {accurate}. A claim about this depth, these 200-step runs and this preset of fairchem's parts "
            "(README lists its deviations from fairchem's model).")


def frontier_lines(results: str | Path) -> list[str]:
    """Section 7: the main job's stability frontier (amendment 9) at L = 5, and at L = 8 (amendment 10), as
    `painn-ablate sweep` prints each, then one table of both depths."""
    from painn_ablate.reporting.text import frontier_text

    runs = frontier_runs(results)
    if not runs:
        return []
    depths = ", ".join(f"L = {depth}" for _, depth, *_ in runs)
    lines = [f"## 7. The stability frontier ({depths}; the main job, amendment 9)", "",
             "Each (variant, seed) walks up the learning-rate ladder and stops at the first rung where it does not "
             "train (200 steps without a training-phase blow-up; a sustained initialisation failure ends the walk "
             "too, counted apart as *ended at init*). One rung is x2 in learning rate. *necessary*: leaving the group "
             "out of R2_full lowers the critical rung (one-sided exact sign test, Holm over the 4 groups, p < 0.05); "
             "*sufficient*: adding it to the original raises the rung into R2_full's interval; *raises*: higher, "
             "its median outside that interval (below it or above it). A claim about 200 steps at the depth named.", ""]
    if len(runs) > 1:
        lines += ["### Both depths", ""] + _depth_table(runs) + [""]
    lines += group_rerun_lines(results)
    missing = [f"L = {depth} (amendment {amendment}, `sweeps/{stem}.yaml`)" for stem, depth, amendment in FRONTIER_RUNS
               if stem not in {run[0] for run in runs}]
    if missing:
        lines += [f"Not run to the end, so not reported: {'; '.join(missing)}; sweeps/DESIGN.md says why and "
                  "when it was stopped.", ""]
    lines += singles_lines(results) + singles_out_lines(results) + family_lines(results) + fairchem_parts_lines(results)
    for stem, depth, amendment, trials, result in runs:
        lines += [f"### L = {depth} (amendment {amendment})", "",
                  f"Command: `painn-ablate sweep sweeps/{stem}.yaml --workers 2`, then `painn-ablate export "
                  f"sweeps_out/{stem} --out results/{FRONTIER}`.", "",
                  "```", frontier_text(trials, "lr", result.ladder, result), "```", ""]
    return lines


def build_findings(results: str | Path = DEFAULT_RESULTS, out: str | Path = DEFAULT_OUT,
                   plots: Optional[str | Path] = "plots", command: str = "painn-ablate report") -> str:
    every, probe_stats, probe_seeds = ex.load_results(results)
    if every.empty and probe_seeds is None:
        raise ReportError(f"no trial tables (*.parquet) in {results}; make them with painn-ablate export")
    trials = every[ex.default_setting(every)] if not every.empty else every  # sections 1-4; 5 is egnn
    egnn = every[~ex.default_setting(every)] if not every.empty else every
    base = Path(out).resolve().parent
    figures = Path(plots) if plots is not None else None
    L, lr = rules.DESIGN_CELL.L, rules.DESIGN_CELL.lr  # the cell DESIGN.md names for the reproduction, the mechanism
    cells = ex.cell_table(trials) if not trials.empty else pd.DataFrame()
    depths = ex.probe_depth_table(probe_seeds, probe_stats) if probe_seeds is not None else None
    lines = ["# runs.md: what the experiments say", "",
             f"Generated by `{command}` on {dt.date.today().isoformat()} from the trial tables in `{results}/` "
             f"({len(every)} trials; one row per trial: parameters, outcome, origin of the first blow-up, metrics, "
             "the per-layer profile before the blow-up). Do not edit by hand. List the trials with "
             f"`python -c \"import pandas as pd, glob; print(pd.concat(map(pd.read_parquet, glob.glob('{results}/map_*.parquet'))))\"`.",
             "", f"The design and the pass/fail rules were written before the results: [{DESIGN}]({DESIGN}). "
             "Outcomes: *exploded* = a NaN/Inf; *diverged* = finite but past a blow-up criterion "
             "(loss > 100x its start, val pos MSE > 10x max(the zero-displacement MSE, the initial val MSE), "
             "max ||mu|| > 1e3, max |q| > 1e4, or last/first-layer max ||mu|| > 100) and sustained; *transient* = "
             "past one, then recovered (no criterion for 50 steps) and trained to the end; a *blow-up* is any of "
             "the three. Its phase: *init* when the initial weights cross a criterion on the same batch, else "
             "*training*. Trials recorded before transient existed ended at their first blow-up (their diverged "
             "is a first spike; their phase is '-'). Intervals: Wilson 95% for rates, t 95% for mean MSEs (sample sd, ddof = 1); "
             "n is given with each. Seeds 0-9 are paired across all cells and variants (same initialisation, "
             "same batch order, same data).", ""]
    dose = _dose_table(results)  # amendment 7's table, read once for the verdicts and section 6
    outcomes = outcome_trials(results)  # amendment 8's re-run, read once for the verdicts and section 1b
    data = rp.baselines(compose([]).data)  # the trivial predictors on the shipped data, for A1 and section 1b
    rerun = rules.judge(outcomes, rules.OUTCOME_RULES) if len(outcomes) else []
    if not trials.empty:
        lines += ["## Verdicts", ""]
        verdicts = rules.judge(every, rules.DESIGN_RULES + (rules.DOSE_RULES if dose is not None else ()), dose=dose)
        frontier = frontier_verdicts(results)
        shown = [(v.rule, v) for v in verdicts] + [(f"{v.rule}, re-run", v) for v in rerun] + frontier
        lines += markdown_table(["rule", "claim (sweeps/DESIGN.md)", "verdict", "evidence"],
                                [[rule, v.claim, f"**{v.verdict}**", v.evidence] for rule, v in shown]) + [""]
        if rerun:
            lines += [f"Rows marked *re-run* are judged on amendment 8's re-run of the map (section 1b, "
                      f"`results/{OUTCOMES}/`); the others on the tables the rules were first judged on.", ""]
        if frontier:
            lines += [f"The rows from {frontier[0][1].rule} on are the stability frontier's rules (sections 6b, "
                      "6c, 7 and 7d), judged on the critical rungs of their walked sweeps.", ""]
        lines += ["## 1. Explosion map", "",
                  "Commands: `painn-ablate sweep sweeps/map_original.yaml --workers 2`, "
                  "`painn-ablate sweep sweeps/map_r2_full.yaml --workers 2`, `painn-ablate sweep sweeps/map_r2_full_L8.yaml`, then "
                  "`painn-ablate export <sweep folders> --out results`.", ""]
        lines += map_lines(trials, cells) + [""]
        if figures is not None:
            lines += [_fig(plot_map(cells), figures, "map", base), ""]
    if len(outcomes):
        outcome_cells = ex.cell_table(outcomes)  # once, for the table and the figure
        lines += outcome_lines(outcomes, outcome_cells, rerun, data["constant_velocity_test_pos_mse"])
        if figures is not None:
            lines += [_fig(plot_map(outcome_cells), figures, "map_rerun", base),
                      _fig(plot_phase_by_depth(ex.phase_depth_table(outcomes)), figures, "phase_by_depth", base), ""]
            curves = Path(results) / "first_steps" / "first_steps_curves.parquet"
            if curves.exists():
                lines += ["The first 100 steps (sweeps/first_steps.yaml: L = 5, lr = 1e-3, seeds 0-4, statistics every "
                          "step, training continued after a spike):", "",
                          _fig(plot_first_steps(pd.read_parquet(curves)), figures, "first_steps", base), ""]
    if depths is not None:
        lines += ["### At initialisation: `painn-ablate probe --seeds 100`", "",
                  "The fraction of seeds whose first forward pass (before any update; the batch of training step "
                  "0, so probe seed s is training seed s) crosses a blow-up criterion or is non-finite. Command: "
                  "`painn-ablate probe model=original --depths 2,3,4,5,6,7,8 --seeds 100 --out probe/original` "
                  f"(and {_probed_over_depth(depths)}, and `model=original ablate=<toggle>` at L = 5).", ""]
        lines += probe_lines(depths) + [""]
        if figures is not None:
            lines += [_fig(plot_probe_depths(depths), figures, "probe_depths", base), ""]
        lines += [f"Per-layer medians over 100 seeds of the original at L = {L} at initialisation: the feedback "
                  "terms (qmu_absmax = max |dqmu * <mu_V, mu_W>|, mu_term_norm_max = max ||dmu * mu_W||) and each "
                  "block's gains (norm_gain = ||out|| / ||in||; update_gain = ||J v - v|| for a random unit v, "
                  "the residual update's gain):", ""]
        lines += gain_lines(probe_stats, "original", L) + [""]
    if not trials.empty:
        lines += [f"## 2. Reproduction at L = {L}, lr = {lr:g}", ""]
        lines += verdict_lines(trials, results, data)
        lines += reproduction_lines(trials, L, lr)
        if figures is not None:
            lines += [_fig(plot_profiles(trials, L), figures, "profiles", base), ""]
        lines += ["### Per-sample error tails of the stable runs", "",
                  "The test pos MSE above is a mean over 2000 test systems; per system (the MSE over its particles "
                  "and coordinates) the distribution has a long tail. Quantiles per run, then the median over the "
                  "stable runs of each cell:", ""]
        lines += tail_lines(trials)
        lines += [f"## 3. The ablation where the original fails (L = {L}, lr = {lr:g})", "",
                  "Commands: `painn-ablate sweep sweeps/add_one_in.yaml` and `painn-ablate sweep "
                  "sweeps/leave_one_out.yaml` (each stabilizer alone; seeds in the outer loop, paired with the "
                  "map's cells). Rules (sweeps/DESIGN.md, amendment 3): *sufficient* = the add-one-in blow-up rate "
                  "lies inside r2_full's Wilson interval and McNemar p < 0.05 against the original; *necessary* = "
                  "leaving it out raises the blow-up rate (McNemar p < 0.05) or raises the test pos MSE (paired "
                  "t-test over seeds stable in both, n >= 3, p < 0.05); *inert* = it never acted in r2_full's runs. "
                  "p-values are unadjusted; the Holm-adjusted value over the stabilizers tested is shown beside "
                  "each. n differs between variants where the sweeps were stopped at the session's deadline.", ""]
        ablation = rules.ablation_table(trials, L, lr, names=list(rules.STABILIZER_ACTIVITY))
        lines += ablation_lines(trials, ablation, L, lr)
        if figures is not None and len(ablation):
            lines += [_fig(plot_ablation(ablation), figures, "ablation", base), ""]
        gpu_folder = Path(results) / "gpu"
        gpu, _, _ = ex.load_results(gpu_folder) if gpu_folder.is_dir() else (pd.DataFrame(), None, None)
        if not gpu.empty:
            lines += [f"### 3b. The leave-one-out repeated on a GPU machine (L = {L}, lr = {lr:g})", "",
                      "Command: `bash scripts/gpu-leave-one-out OUT 400 16` on the lent machine (one H200, torch "
                      "2.11, 16 runs at a time), then `painn-ablate export OUT --out results/gpu` (sweeps/DESIGN.md, "
                      "amendment 5). R2_full was re-run there as its own reference, and every pair is formed on that "
                      "machine; runs the time limit cut short are left out, so n differs by variant. Same rules as "
                      "above.", ""]
            lines += ablation_lines(gpu, rules.ablation_table(gpu, L, lr, names=list(rules.STABILIZER_ACTIVITY)), L, lr)
            lines += compute_lines(gpu) + [""]
        lines += [f"## 4. The mechanism (add-one-in on the original at L = {L}, lr = {lr:g})", "",
                  "Command: `painn-ablate sweep sweeps/mechanism.yaml --workers 2`. *Sufficient*: the variant's "
                  "blow-up rate lies inside R2_full's Wilson interval and the paired McNemar test against the "
                  "original gives p < 0.05.", ""]
        lines += mechanism_lines(trials, depths, L, lr)
        f1 = rules.judged(verdicts, "F1")
        lines += [f"**Does the data support the specification's feedback-loop explanation? {f1.verdict}.** "
                  f"{f1.evidence}.", ""]
    if not egnn.empty:
        lines += ["## 5. Accuracy against EGNN on like-for-like terms", "",
                  "Command: `painn-ablate sweep sweeps/egnn.yaml --workers 2` (R2_full with EGNN's N-body setting: "
                  "the charge product c_i c_j as an edge input of the filter, `model.edge_charge=true`; the loss on "
                  "positions alone, `train.loss=pos`; a cosine learning-rate schedule; the checkpoint of the best "
                  "validation step tested). Rule E1 (sweeps/DESIGN.md, amendment 6) is in the verdicts above.", ""]
        lines += egnn_lines(egnn, trials, L, lr)
    if dose is not None:
        lines += dose_lines(dose)
    lines += dose_frontier_lines(results)
    lines += degree_lines(results)
    lines += frontier_lines(results)
    if not every.empty:
        lines += ["## Compute", ""] + compute_lines(every) + [""]
    lines += ["## Not done", ""] + frontier_not_done_lines(results) + not_done_lines(every)
    lines += ["The records above were made by the code before commit c586208, which made mean aggregation divide by "
              "the neighbours inside the cutoff (the specification's N(i)) instead of by every edge of the full graph "
              "(0.5% of the default data's edges lie beyond r_cut = 10): a re-run of a cell with mean aggregation "
              "(R2_full and its variants) gives slightly different numbers.", ""]
    # What this file was regenerated with; the thread count is the regenerating process's own, not the runs'
    # (each trial ran on one thread), so it stays out and a regeneration differs from the file only in versions.
    env = {k: v for k, v in environment(PACKAGES).items() if k != "threads"}
    lines += ["## Environment (regenerated with)", "", ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    return "\n".join(lines)


def write_findings(results: str | Path = DEFAULT_RESULTS, out: str | Path = DEFAULT_OUT,
                   plots: Optional[str | Path] = "plots", command: str = "painn-ablate report") -> Path:
    text = build_findings(results, out, plots, command)
    return files.write_text(out, text)
