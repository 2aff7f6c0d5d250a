"""`painn-ablate report PATHS`: the registry of raw runs, `registry.md`, from their records.

Another document than runs.md: runs.md holds the findings, made from the committed trial tables in
results/ (`painn-ablate report` without paths; painn_ablate.reporting.findings); the registry lists raw
run folders, reproductions and sweeps run by run, with the command that re-runs each.

Sources (each becomes one section with its own table):

    a folder with reproduce.json     a `painn-ablate reproduce` comparison, with its verdict
    a folder with study.db           a sweep: one section per study, trials joined with their run dirs
    --study URL                      any Optuna storage (e.g. PostgreSQL): one section per study
    any other folder or run dir      the run directories found in it

Every row says what ran (experiment = preset or ablation, seed), what happened (status,
first non-finite step/layer, val/test position MSE, steps, wall time) and the exact command
that re-runs it (`rerun.rerun_command`: the override list that composes to the saved
config, checked, else `--config <run_dir>/config.yaml`). The environment the runs were
recorded on (from their summaries) and the one the report was made on close the file.
`--plots DIR` also writes each section's figures as PNG and links them from the registry.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from painn_ablate.analysis import loaders as analysis
from painn_ablate.core import files, names, rerun, runfolder
from painn_ablate.core.config import STABILIZER_KEYS
from painn_ablate.core.errors import ReportError
from painn_ablate.reporting import plots
from painn_ablate.training.trainer import environment

log = logging.getLogger(__name__)

DEFAULT_PATHS = ("reproduce_out", "sweeps_out")
DEFAULT_OUT = "registry.md"  # runs.md is the findings' (painn_ablate.reporting.findings)
PACKAGES = ("numpy", "scipy", "pandas", "pyarrow", "omegaconf", "optuna", "wandb", "matplotlib")
MAX_PLOTTED_EXPERIMENTS = 6  # heat maps and layer curves of a sweep: the presets and the first exploded designs
MAX_HEATMAP_RUNS = 9  # a section with at most this many runs shows every run's heat map



@dataclass
class Section:
    """One section of the registry: a reproduction, a study or a folder of runs."""

    title: str
    kind: str  # reproduce | sweep | runs
    source: str
    rows: pd.DataFrame  # load_runs / load_study columns, one row per run or trial
    command: Optional[str] = None  # how the whole experiment was made
    intro: list[str] = field(default_factory=list)  # Markdown paragraphs before the table
    baselines: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- discovery


def _visible(path: Path, root: Path) -> bool:
    return not any(p.startswith(".") or p == "wandb" for p in path.relative_to(root).parts)


def discover(path: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(reproduce folders, sweep folders, other run dirs) at or below `path`."""
    if not path.exists():
        raise ReportError(f"no such file or folder: {path}")
    if (path / runfolder.SUMMARY).is_file():
        return [], [], [path]
    repro = sorted(p.parent for p in path.rglob("reproduce.json") if _visible(p.parent, path))
    if (path / "reproduce.json").is_file():
        repro = [path] + [p for p in repro if p != path]
    sweeps = sorted(p.parent for p in path.rglob("study.db") if _visible(p.parent, path))
    if (path / "study.db").is_file():
        sweeps = [path] + [p for p in sweeps if p != path]
    # a reproduction's own study (its runs are a sweep) is reported as the reproduction
    sweeps = [s for s in sweeps if not any(r == s or r in s.parents for r in repro)]
    claimed = [r.resolve() for r in repro + sweeps]
    others = [d for d in analysis.find_run_dirs(path)
              if not any(c == d.resolve() or c in d.resolve().parents for c in claimed)]
    return repro, sweeps, others


# ----------------------------------------------------------------------------- sections


def reproduce_section(folder: Path) -> Section:
    result = json.loads((folder / "reproduce.json").read_text())
    dirs = [Path(r["run_dir"]) for r in result["runs"]]
    dirs = [d if (d / runfolder.SUMMARY).is_file() else folder / d.parent.name / d.name for d in dirs]
    rows = analysis.load_runs([d for d in dirs if (d / runfolder.SUMMARY).is_file()])
    verdict = (folder / "verdict.md").read_text() if (folder / "verdict.md").is_file() else ""
    intro = [line if not line.startswith("# ") else "**" + line[2:].strip() + "**" for line in verdict.splitlines()]
    b = result.get("baselines", {})
    lines = {"constant velocity": b.get("constant_velocity_test_pos_mse"),
             "fitted velocity": b.get("fitted_velocity_test_pos_mse"), "EGNN paper": b.get("egnn_paper_test_pos_mse")}
    return Section(title=f"Reproduction: original vs r2_full ({folder})", kind="reproduce", source=str(folder),
                   rows=rows, intro=intro,  # the verdict names the command
                   baselines={k: v for k, v in lines.items() if v is not None})


def sweep_file_of(study_name: str, raw: Optional[dict]) -> Optional[str]:
    """`sweeps/<name>.yaml` when that file holds the sweep the study was made from."""
    import yaml

    candidate = Path("sweeps") / f"{study_name}.yaml"
    if raw is not None and candidate.is_file():
        try:
            if yaml.safe_load(candidate.read_text()) == raw:
                return str(candidate)
        except yaml.YAMLError:
            return None
    return None


def sweep_sections(storage: str, source: str, out_folder: Optional[Path] = None) -> list[Section]:
    import optuna
    import yaml

    from painn_ablate.sweep.studies import resolve_storage, study_names

    url = resolve_storage(storage)
    sections = []
    for name in study_names(url):
        rows = analysis.load_study(url, name)
        study = optuna.load_study(study_name=name, storage=url)
        settings = study.user_attrs.get("settings") or {}
        raw = study.user_attrs.get("sweep_file")
        overrides = " ".join(settings.get("overrides") or [])
        file = sweep_file_of(name, raw) or "<the sweep file below>"
        out = f" --out {out_folder}" if out_folder is not None and out_folder != Path("sweeps_out") / name else ""
        command = f"painn-ablate sweep {file}{out} {overrides}".strip()
        intro = [f"Study `{name}` in `{url}`: {len(rows)} trials, metric {settings.get('metric', '-')} "
                 f"({settings.get('goal', '-')}), method {settings.get('method', '-')}."]
        if raw is not None:
            intro += ["", "<details><summary>sweep file</summary>", "", "```yaml",
                      yaml.safe_dump(raw, sort_keys=False).rstrip(), "```", "", "</details>"]
        sections.append(Section(title=f"Sweep {name} ({source})", kind="sweep", source=source, rows=rows,
                                command=command, intro=intro))
    return sections


def runs_section(dirs: list[Path], source: str) -> Section:
    return Section(title=f"Runs in {source}", kind="runs", source=source, rows=analysis.load_runs(dirs))


def collect(paths: list[str], studies: tuple[str, ...] = ()) -> list[Section]:
    sections: list[Section] = []
    for p in paths:
        repro, sweeps, others = discover(Path(p))
        sections += [reproduce_section(f) for f in repro]
        for f in sweeps:
            sections += sweep_sections(str(f / "study.db"), str(f), f)
        if others:
            sections.append(runs_section(others, str(p)))
    for url in studies:
        sections += sweep_sections(url, url)
    if not sections:
        raise ReportError(f"no runs, reproductions or sweeps under {', '.join(paths) or 'the given paths'}")
    return sections


# ----------------------------------------------------------------------------- Markdown


def _cell(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x).replace("|", "\\|").replace("\n", " ")


def _int(x: Any) -> Optional[int]:
    try:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else int(x)
    except (TypeError, ValueError):
        return None


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def run_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The per-run table of a section: experiment, seed, outcome, metrics, the re-run command."""
    extra = [k for k in analysis.varying_keys(frame) if k not in STABILIZER_KEYS and k != "seed"]
    header = ["experiment", "seed", *extra, "status", "first blow-up (step: layer block stat)", "val pos MSE",
              "test pos MSE", "steps", "wall", "re-run"]
    order = {e: k for k, e in enumerate(dict.fromkeys(frame["experiment"]))}
    frame = frame.assign(_order=frame["experiment"].map(order)).sort_values(["_order", "seed"], kind="stable")
    rows = []
    for _, r in frame.iterrows():
        step, layer = _int(r.get("first_blow_up.step")), _int(r.get("first_blow_up.layer"))
        parts = [f"layer {layer}" if layer is not None else None, r.get("first_blow_up.block"),
                 r.get("first_blow_up.stat")]
        where = "-" if step is None else f"{step}: " + " ".join(str(p) for p in parts if isinstance(p, (str, int)))
        steps = _int(r.get("steps_completed"))
        total = _int(r.get("steps_total"))
        wall = r.get("wall_seconds")
        run_dir = r.get("run_dir")
        command = (f"`{rerun.rerun_command(run_dir)}`" if isinstance(run_dir, str) and
                   (Path(run_dir) / runfolder.CONFIG).is_file() else "-")
        rows.append([_cell(r["experiment"]), _cell(_int(r.get("seed"))), *(_cell(r.get(k)) for k in extra),
                     _cell(r.get("status")), where, _cell(r.get("val_pos_mse")), _cell(r.get("test_pos_mse")),
                     "-" if steps is None else f"{steps}/{total}" if total else str(steps),
                     "-" if wall is None or (isinstance(wall, float) and math.isnan(wall)) else f"{float(wall):.0f} s",
                     command])
    return header, rows


def outcome_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    table = analysis.outcome_table(frame)
    header = ["experiment", "runs", "blow-ups k/n [Wilson 95%]", "transient", "diverged", "exploded",
              "first blow-up step: median [first, last]", "origin layers", "test pos MSE of stable runs: mean ± sd (n)"]
    rows = []
    for _, t in table.iterrows():
        step = ("-" if math.isnan(t["blow_up_step_median"]) else
                f"{t['blow_up_step_median']:.0f} [{t['blow_up_step_min']:.0f}, {t['blow_up_step_max']:.0f}]")
        mse = ("-" if math.isnan(t["test_pos_mse_mean"]) else f"{t['test_pos_mse_mean']:.4g}" +
               (f" ± {t['test_pos_mse_sd']:.2g}" if not math.isnan(t["test_pos_mse_sd"]) else "") + f" ({t['stable']})")
        rows.append([_cell(t["experiment"]), str(t["runs"]),
                     f"{t['blew_up']}/{t['runs']} [{t['blow_up_lo']:.2f}, {t['blow_up_hi']:.2f}]", str(t["transient"]),
                     str(t["diverged"]),
                     str(t["exploded"]), step, t["blow_up_layers"] or "-", mse])
    return header, rows


def section_markdown(section: Section, plots: list[Path], base: Path) -> list[str]:
    lines = [f"## {section.title}", ""]
    if section.command:
        lines += [f"Made by: `{section.command}`", ""]
    if section.intro:
        lines += section.intro + [""]
    if section.rows.empty:
        return lines + ["No runs recorded yet.", ""]
    lines += ["Per experiment (MSE: mean and sample sd over the stable seeds, n in brackets):", ""]
    lines += markdown_table(*outcome_rows(section.rows)) + [""]
    lines += markdown_table(*run_rows(section.rows)) + [""]
    for p in plots:
        lines += [f"![{p.stem}]({os.path.relpath(p, base)})", ""]
    return lines


# ----------------------------------------------------------------------------- environment


def environment_markdown(sections: list[Section]) -> list[str]:
    lines = ["## Environment", "", "Recorded by the runs themselves (summary.json `environment`):", ""]
    frames = [s.rows for s in sections if not s.rows.empty]
    env_cols = ["environment.painn_ablate", "environment.torch", "environment.python", "environment.cpu",
                "environment.threads", "environment.cuda", "device"]
    if frames:
        allrows = pd.concat(frames, ignore_index=True)
        cols = [c for c in env_cols if c in allrows.columns]
        if cols:
            cells = allrows[cols].astype(object).where(allrows[cols].notna(), "-").astype(str)
            counts = cells.value_counts(dropna=False).reset_index(name="runs")
            header = [c.replace("environment.", "") for c in cols] + ["runs"]
            lines += markdown_table(header, [[_cell(v) for v in row] for row in counts.itertuples(index=False)])
    here = environment(PACKAGES)
    lines += ["", "This report was generated on:", ""]
    lines += markdown_table(["", ""], [[k, _cell(v)] for k, v in here.items()])
    return lines + [""]


# ----------------------------------------------------------------------------- plots


def _plotted(rows: pd.DataFrame) -> pd.DataFrame:
    """The first seed of the presets and of up to MAX_PLOTTED_EXPERIMENTS designs, exploded first."""
    first = rows.sort_values("seed", kind="stable").groupby("experiment", sort=False).head(1)
    presets = first[first["ablate"] == "none"]
    others = first[first["ablate"] != "none"].sort_values("exploded", ascending=False, kind="stable")
    return pd.concat([presets, others]).head(MAX_PLOTTED_EXPERIMENTS)


def section_plots(section: Section, folder: Path, index: int) -> list[Path]:
    rows = section.rows
    if rows.empty:
        return []
    slug = f"{index:02d}-{section.kind}"
    paths = [plots.save_figure(plots.plot_outcomes(analysis.outcome_table(rows), section.baselines),
                                  folder / f"{slug}-outcomes.png")]
    with_dirs = rows[rows["run_dir"].map(lambda d: isinstance(d, str) and (Path(d) / runfolder.SUMMARY).is_file())]
    if with_dirs.empty:
        return paths
    picked = _plotted(with_dirs)
    shown = with_dirs if len(with_dirs) <= MAX_HEATMAP_RUNS else picked
    stats = analysis.load_layer_stats(list(shown["run_dir"]), stats=names.STATE_STATS, block="mixing")
    if not stats.empty:
        paths.append(plots.save_figure(plots.plot_heatmaps(stats, shown), folder / f"{slug}-heatmaps.png"))
        members = with_dirs[with_dirs["experiment"].isin(picked["experiment"])]
        all_stats = analysis.load_layer_stats(list(members["run_dir"]), stats=names.STATE_STATS,
                                              block="mixing")
        paths.append(plots.save_figure(
            plots.plot_layer_curves(all_stats, members, groups=list(picked["experiment"])),
            folder / f"{slug}-layers.png"))
        presets = members[members["ablate"] == "none"]
        if len(presets):  # the feedback loop, original vs r2_full: per preset its seed with the largest ||mu||
            strongest = analysis.peak_runs(presets, all_stats)
            feedback = analysis.load_layer_stats(list(strongest["run_dir"]),
                                                 stats=(names.MU_NORM_MAX, *names.FEEDBACK_STATS))
            paths.append(plots.save_figure(plots.plot_feedback(feedback, strongest),
                                              folder / f"{slug}-feedback.png"))
    return paths


# ----------------------------------------------------------------------------- entry point


def build_report(paths: list[str], studies: tuple[str, ...] = (), out: str | Path = DEFAULT_OUT,
                 plots: Optional[str | Path] = None, command: Optional[str] = None) -> str:
    """The registry as text (and the PNGs under `plots`, when given)."""
    sections = collect(paths, studies)
    base = Path(out).resolve().parent
    lines = [f"# {Path(out).name}: the registry of recorded runs", "",
             f"Generated by `{command or 'painn-ablate report'}` on {dt.date.today().isoformat()} from the run "
             "directories and Optuna storages listed below; do not edit by hand, re-run the command. Each "
             "row's re-run command composes to the run's saved config.yaml (checked when this file was written). "
             "What the experiments found is in runs.md (`painn-ablate report`, from the trial tables in results/).",
             "", "Columns: *experiment* is the preset, `r2_full - X` is R2_full without stabilizer X "
             "(leave-one-out), `original + X` the original with only X (add-one-in); *first NaN/Inf* is where "
             "the monitor first saw a non-finite value (layer 1-based, block interaction or mixing); MSEs are of "
             "the best-validation weights; *steps* is completed/budgeted.", ""]
    lines += ["Contents: " + ", ".join(f"[{s.title}](#{_anchor(s.title)})" for s in sections), ""]
    for k, section in enumerate(sections, start=1):
        figures = section_plots(section, Path(plots), k) if plots is not None else []
        lines += section_markdown(section, figures, base)
    lines += environment_markdown(sections)
    return "\n".join(lines)


def _anchor(title: str) -> str:
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return keep.replace(" ", "-")


def write_report(paths: list[str], studies: tuple[str, ...] = (), out: str | Path = DEFAULT_OUT,
                 plots: Optional[str | Path] = None, command: Optional[str] = None) -> Path:
    text = build_report(paths, studies, out, plots, command)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return files.write_text(out, text)
