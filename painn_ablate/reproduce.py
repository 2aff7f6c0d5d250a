"""`painn-ablate reproduce`: the document's two findings, re-run from embedded defaults.

The canonical comparison trains, on the same data (charged N-body, data.seed=0), at the
same depth (L=5), optimiser (Adam, train.lr default) and step budget, three seeds each of

    original            the original PaiNN                    finding 1: it explodes in layers 4-5
    r2_full             every stabilizer of R2_full           finding 2: no NaN/Inf, and a test MSE
    original + alpha    the original with residual scaling    is residual scaling alone enough?
                        alone (alpha_inter = alpha_mix = 0.5)

one run after another (each in its own run directory under `<out>/runs/`), then writes
`reproduce.json`, `verdict.md` and plots into `<out>`. The verdict is computed from the
records by `verdict()`, criterion by criterion, with the numbers it used:

    1  original explodes in the deep layers in >= 2 of 3 seeds: a run counts when it had a
       NaN/Inf event, its first non-finite value is in layer L-1 or L, and at the last finite
       statistics snapshot before it max ||mu|| or max |q| is larger in layer L than in layer 1.
       The layer is the monitor's (first non-finite tensor in data-flow order); when the loss
       was the first non-finite tensor (activations finite but overflowing the squared error),
       it is the shallowest layer whose statistics in that same forward pass are non-finite
       (`explosion_layer`); the verdict says which of the two located it.
    2  r2_full has zero NaN/Inf events in every seed, and every seed ran its full budget.
    3  r2_full's test position MSE (mean over seeds) is below the constant-velocity baseline
       pos + vel * dt on the same test split; it is printed beside EGNN's published 0.0071
       (Satorras et al. 2021, ~10^4 epochs) and the zero-displacement baseline.

A run directory that already holds a finished run of the same configuration is reused, so
an interrupted reproduction continues where it stopped; an unfinished one is run again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from painn_ablate import analysis
from painn_ablate.config import compose, flatten
from painn_ablate.outcome import OUTCOMES
from painn_ablate.tracking import write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_OUT = "reproduce_out"
# Overrides that would change what is being compared: the comparison sets them per run.
RESERVED_KEYS = ("model", "ablate", "seed", "out", "name")
FINISHED = OUTCOMES  # a run that ended with an outcome (stable, diverged, exploded) is reused


class ReproduceError(ValueError):
    """Unusable reproduce arguments or output folder; one line."""


@dataclass(frozen=True)
class Experiment:
    """One arm of the comparison: a preset and an ablation design (see config.ABLATIONS)."""

    preset: str
    ablate: str = "none"
    why: str = ""

    @property
    def name(self) -> str:
        return analysis.experiment_name(self.preset, self.ablate)

    @property
    def slug(self) -> str:
        return self.preset if self.ablate == "none" else f"{self.preset}+{self.ablate}"


@dataclass(frozen=True)
class Budget:
    """What every run of the comparison gets."""

    steps: int
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()  # applied to every run before the user's overrides


EXPERIMENTS = (
    Experiment("original", why="the original PaiNN (finding 1: explodes in layers 4-5)"),
    Experiment("r2_full", why="all R2_full stabilizers (finding 2: no NaN/Inf, test MSE)"),
    Experiment("original", "alpha", why="residual scaling alone: alpha_inter = alpha_mix = 0.5, nothing else"),
)
# Full: 1000 steps of batch 100 (33 epochs of the 3000 training graphs), validation every 100 steps
# and statistics every 10 (the schema's defaults). Chosen from the time budget alone: at ~75 ms per
# step and ~1.5 s per validation on 2 CPU cores, 9 runs that all survive take ~14 minutes; runs that
# explode end early. Quick: a smoke test of the whole pipeline.
FULL = Budget(steps=1000, seeds=(0, 1, 2))
QUICK = Budget(steps=40, seeds=(0, 1, 2), overrides=("train.val_every=20", "monitor.every=5"))


# ----------------------------------------------------------------------------- baselines


def horizon(data_cfg: DictConfig) -> Optional[float]:
    """Time between the input and the target frame of the generated protocol; None for data.dir."""
    from painn_ablate.data import CHARGED, GRAVITY

    if data_cfg.dir:
        return None
    protocol = CHARGED if data_cfg.system == "charged" else GRAVITY
    return (protocol.target_step - protocol.input_step) * protocol.dt


def baselines(data_cfg: DictConfig) -> dict[str, Any]:
    """Test position MSE of trivial predictors, per coordinate as `train.evaluate` computes it.

    zero_displacement: pos_next = pos. constant_velocity: pos_next = pos + vel * dt, with dt
    the time between the input and the target frame (1.0 for the charged protocol).
    fitted_velocity: pos_next = pos + vel * c with the one scalar c fitted on the training
    split by least squares: EGNN's "Linear" baseline (a learnable time), published 0.0819.
    """
    from painn_ablate.data import load_dataset

    splits = load_dataset(data_cfg)
    train, test = splits["train"], splits["test"]
    d_train = train.pos_next - train.pos
    c = float((d_train * train.vel).sum() / (train.vel * train.vel).sum())
    displacement = test.pos_next - test.pos
    dt_ = horizon(data_cfg)
    const_vel = float(((displacement - test.vel * dt_) ** 2).mean()) if dt_ is not None else None
    return {"zero_displacement_test_pos_mse": float((displacement ** 2).mean()),
            "constant_velocity_test_pos_mse": const_vel,
            "fitted_velocity_test_pos_mse": float(((displacement - test.vel * c) ** 2).mean()),
            "fitted_velocity_c": c, "horizon": dt_, "n_test": len(test),
            "egnn_paper_test_pos_mse": analysis.EGNN_PAPER_MSE,
            "linear_paper_test_pos_mse": analysis.LINEAR_PAPER_MSE}


# ----------------------------------------------------------------------------- runs


def check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in RESERVED_KEYS:
            raise ReproduceError(f"override '{item}': '{key}' is set by the comparison for each run; "
                                 "use painn-ablate train or a sweep for other designs")


def run_overrides(experiment: Experiment, seed: int, budget: Budget, overrides: list[str], run_dir: Path) -> list[str]:
    return [f"model={experiment.preset}", f"ablate={experiment.ablate}", f"seed={seed}",
            f"train.steps={budget.steps}", "tracking.wandb=false", *budget.overrides, *overrides,
            f"name={run_dir.name}", f"out={run_dir}"]


def plan(out: Path, quick: bool = False, overrides: Optional[list[str]] = None,
         experiments: tuple[Experiment, ...] = EXPERIMENTS) -> list[tuple[Experiment, int, DictConfig]]:
    """Every run of the comparison with its resolved config (ConfigError on bad overrides)."""
    overrides = list(overrides or [])
    check_overrides(overrides)
    budget = QUICK if quick else FULL
    runs = []
    for experiment in experiments:
        for seed in budget.seeds:
            run_dir = out / "runs" / f"{experiment.slug}-seed{seed}"
            runs.append((experiment, seed, compose(run_overrides(experiment, seed, budget, overrides, run_dir))))
    return runs


def _same_config(run_dir: Path, cfg: DictConfig) -> bool:
    saved = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True))
    return analysis.results_view(saved) == analysis.results_view(flatten(cfg))


def _finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status") in FINISHED
    except (OSError, ValueError):
        return False


def run_or_reuse(cfg: DictConfig) -> dict:
    """Train `cfg` unless its run directory already holds the finished run of the same config."""
    from painn_ablate.train import run

    run_dir = Path(cfg.out)
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        same = (run_dir / "config.yaml").is_file() and _same_config(run_dir, cfg)
        if summary.get("status") in FINISHED and same:
            log.info("reusing the finished run in %s", run_dir)
            return summary
        if summary.get("status") in FINISHED:
            raise ReproduceError(f"{run_dir} holds a finished run of another configuration; "
                                 "choose another --out or remove it")
        log.warning("%s holds an unfinished run (%s); running it again", run_dir, summary.get("status"))
        shutil.rmtree(run_dir)
    return run(cfg)


# ----------------------------------------------------------------------------- records


def _layer_dict(profile: dict) -> dict[str, float]:
    return {str(k): v for k, v in sorted(profile.items())}


def max_finite_loss(run_dir: str) -> Optional[float]:
    """The largest finite training loss: a spike that did not (yet) turn into NaN/Inf."""
    import pandas as pd

    loss = pd.read_parquet(Path(run_dir) / "metrics.parquet", columns=["loss"])["loss"]
    loss = loss[loss.map(math.isfinite)]
    return float(loss.max()) if len(loss) else None


def run_record(experiment: Experiment, seed: int, cfg: DictConfig, summary: dict, stats) -> dict[str, Any]:
    """What reproduce.json keeps of one run (see the module docstring)."""
    run_dir = str(cfg.out)
    first = summary.get("first_nonfinite")
    before = None if first is None else first["step"] + 1  # the failing step's own finite statistics count
    step, values = analysis.layer_profiles(stats, run_dir, ("mu_norm_max", "q_absmax"), before_step=before)
    profile = {"step": step, **{stat: _layer_dict(values.get(stat, {})) for stat in ("mu_norm_max", "q_absmax")}}
    mine = stats[(stats["run_dir"] == run_dir) & (stats["block"] == "mixing")]
    peak = {}
    for stat in ("mu_norm_max", "q_absmax"):
        rows = mine[(mine["stat"] == stat)]
        rows = rows[rows["value"].map(math.isfinite)]
        peak[stat] = _layer_dict({int(l): float(v) for l, v in rows.groupby("layer")["value"].max().items()})
    start_step, start = analysis.layer_profile(stats[stats["step"] == stats["step"].min()], run_dir, "mu_norm_max")
    at_event = None
    if first is not None:  # the failing step's own statistics (train.py records them): non-finite -> None
        snap = mine[mine["step"] == first["step"]]
        at_event = {"step": first["step"], **{
            stat: _layer_dict({int(l): (float(v) if math.isfinite(v) else None)
                               for l, v in zip(snap.loc[snap["stat"] == stat, "layer"],
                                               snap.loc[snap["stat"] == stat, "value"])})
            for stat in ("mu_norm_max", "q_absmax")}}
    val, test = summary.get("val") or {}, summary.get("test") or {}
    return {
        "experiment": experiment.name, "preset": experiment.preset, "ablate": experiment.ablate, "seed": seed,
        "lr": float(cfg.train.lr), "steps_total": summary["steps_total"], "run_dir": run_dir,
        "command": analysis.rerun_command(run_dir), "status": summary["status"],
        "steps_completed": summary["steps_completed"], "nonfinite_events": summary["nonfinite_events"],
        "first_nonfinite": first, "early_warning_step": (summary.get("early_warning") or {}).get("step"),
        "val_pos_mse": val.get("pos_mse"), "val_vel_mse": val.get("vel_mse"),
        "test_pos_mse": test.get("pos_mse"), "test_vel_mse": test.get("vel_mse"), "best_step": summary["best_step"],
        "final_loss": summary["final_loss"], "max_loss": max_finite_loss(run_dir),
        "wall_seconds": round(summary["wall_seconds"], 2),
        "ms_per_step": summary["ms_per_step"],
        "layers_before_event": profile,  # last finite snapshot before the first NaN/Inf, or the last one
        "layers_peak": peak,  # max over all finite snapshots
        "layers_at_start": {"step": start_step, "mu_norm_max": _layer_dict(start)},
        "layers_at_event": at_event,  # the forward pass that went non-finite (None: no event)
    }


# ----------------------------------------------------------------------------- verdict


def _ratio(profile: dict[str, float], n_layers: int) -> Optional[float]:
    first, last = profile.get("1"), profile.get(str(n_layers))
    if first is None or last is None or first <= 0:
        return None
    return last / first


def explosion_layer(r: dict) -> tuple[Optional[int], Optional[str]]:
    """The layer where a run's first non-finite value appeared, and how it was found.

    "monitor": the layer of the first non-finite tensor the forward hooks flagged. When they
    flagged none inside the layers (the loss went non-finite first: activations finite but so
    large that the squared error overflowed), "statistics": the shallowest layer whose max ||mu||
    or max |q| in the failing step's own statistics is non-finite (the norm overflowed float32).
    """
    first = r.get("first_nonfinite") or {}
    if first.get("layer") is not None:
        return int(first["layer"]), "monitor"
    event = r.get("layers_at_event") or {}
    bad = [int(layer) for stat in ("mu_norm_max", "q_absmax") for layer, v in (event.get(stat) or {}).items()
           if v is None]
    return (min(bad), "statistics") if bad else (None, None)


def _growth(r: dict, n_layers: int) -> Optional[float]:
    """Max ||mu|| of the deepest layer at the last finite snapshot over its value at the first one."""
    start = (r.get("layers_at_start") or {}).get("mu_norm_max", {}).get(str(n_layers))
    last = r["layers_before_event"]["mu_norm_max"].get(str(n_layers))
    return last / start if start and last is not None else None


def _mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def verdict(records: list[dict], baseline: dict, n_layers: int) -> dict[str, Any]:
    """Pass/fail per criterion (module docstring) with the evidence, computed from run records."""
    original = [r for r in records if r["preset"] == "original" and r["ablate"] == "none"]
    full = [r for r in records if r["preset"] == "r2_full" and r["ablate"] == "none"]
    criteria = []

    # 1: original explodes in the deep layers, preceded by depth-wise growth
    deep_layers = (n_layers - 1, n_layers)
    per_seed, counted = [], 0
    for r in original:
        first = r["first_nonfinite"] or {}
        before = r["layers_before_event"]
        mu_ratio, q_ratio = _ratio(before["mu_norm_max"], n_layers), _ratio(before["q_absmax"], n_layers)
        exploded = r["nonfinite_events"] > 0
        layer, located_by = explosion_layer(r)
        deep = layer in deep_layers
        growth = any(x is not None and x > 1 for x in (mu_ratio, q_ratio))
        counted += exploded and deep and growth
        per_seed.append({"seed": r["seed"], "exploded": exploded, "step": first.get("step"), "layer": layer,
                         "located_by": located_by, "block": first.get("block"), "tensor": first.get("tensor"),
                         "phase": first.get("phase"), "deep_layer": deep, "stats_step": before.get("step"),
                         "mu_norm_max": before["mu_norm_max"], "q_absmax": before["q_absmax"],
                         "mu_ratio_last_to_first": mu_ratio, "q_ratio_last_to_first": q_ratio,
                         "depth_growth": growth, "counts": bool(exploded and deep and growth),
                         "deepest_mu_growth_since_start": _growth(r, n_layers),
                         "at_event": r.get("layers_at_event"), "peak": r.get("layers_peak"),
                         "max_loss": r.get("max_loss")})
    need = math.ceil(2 * len(original) / 3) if original else 1
    criteria.append({
        "id": 1, "claim": f"original explodes in layers {deep_layers[0]}-{deep_layers[1]}, after per-layer "
                          f"||mu|| / |q| growth with depth, in >= {need} of {len(original)} seeds",
        "passed": bool(original) and counted >= need, "observed": f"{counted} of {len(original)} seeds",
        "evidence": per_seed})

    # 2: r2_full never non-finite, full budget
    clean = [r for r in full if r["nonfinite_events"] == 0 and r["status"] == "stable"
             and r["steps_completed"] == r["steps_total"]]
    criteria.append({
        "id": 2,
        "claim": f"r2_full has zero NaN/Inf events and completes its budget in {len(full)} of {len(full)} seeds",
        "passed": bool(full) and len(clean) == len(full), "observed": f"{len(clean)} of {len(full)} seeds",
        "evidence": [{"seed": r["seed"], "status": r["status"], "nonfinite_events": r["nonfinite_events"],
                      "steps_completed": r["steps_completed"], "steps_total": r["steps_total"],
                      "first_nonfinite": r["first_nonfinite"]} for r in full]})

    # 3: r2_full test MSE beside the baselines
    mses = [r["test_pos_mse"] for r in full if r["test_pos_mse"] is not None and math.isfinite(r["test_pos_mse"])]
    mean, std = _mean_std(mses)
    const_vel = baseline.get("constant_velocity_test_pos_mse")
    criteria.append({
        "id": 3, "claim": "r2_full's test position MSE (mean over seeds) is below the constant-velocity baseline",
        "passed": bool(mses) and len(mses) == len(full) and const_vel is not None and mean < const_vel,
        "observed": (f"{mean:.4g} +- {std:.2g} ({len(mses)} seeds) vs constant velocity "
                     f"{const_vel if const_vel is None else format(const_vel, '.4g')}") if mses else "no test MSE",
        "evidence": {"test_pos_mse": {str(r["seed"]): r["test_pos_mse"] for r in full}, "mean": mean, "std": std,
                     "constant_velocity": const_vel,
                     "zero_displacement": baseline.get("zero_displacement_test_pos_mse"),
                     "fitted_velocity": baseline.get("fitted_velocity_test_pos_mse"),
                     "egnn_paper": baseline.get("egnn_paper_test_pos_mse"),
                     "ratio_to_egnn_paper": mean / baseline["egnn_paper_test_pos_mse"] if mean else None}})

    others = {}
    for r in records:
        if r["ablate"] != "none":
            o = others.setdefault(r["experiment"], {"runs": 0, "exploded": 0, "test_pos_mse": []})
            o["runs"] += 1
            o["exploded"] += r["nonfinite_events"] > 0
            if r["test_pos_mse"] is not None:
                o["test_pos_mse"].append(r["test_pos_mse"])
    return {"passed": all(c["passed"] for c in criteria), "criteria": criteria, "other_experiments": others}


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def verdict_text(result: dict) -> str:
    """The verdict as Markdown: one line per criterion, then the evidence per seed."""
    v, b = result["verdict"], result["baselines"]
    budget = result["budget"]
    lines = [f"# Reproduction verdict: {'REPRODUCED' if v['passed'] else 'NOT REPRODUCED'}", "",
             f"Command: `{result['command']}`  ",
             f"Budget: {budget['steps']} steps per run, seeds {', '.join(map(str, budget['seeds']))}, "
             f"lr {_fmt(budget['lr'])}, batch {budget['batch_size']}, F={budget['F']}, L={budget['L']}, "
             f"data {budget['data']}; {len(result['runs'])} runs, {result['train_seconds'] / 60:.1f} min of "
             f"training in all" + (f" ({result['reused_runs']} runs reused from an earlier invocation)"
                                   if result["reused_runs"] else "") + ".", ""]
    for c in v["criteria"]:
        lines.append(f"- **{'PASS' if c['passed'] else 'FAIL'}** ({c['id']}) {c['claim']}: {c['observed']}.")
    lines.append("")
    lines.append("Finding 1, original, per seed (max ||mu|| and |q| after mixing per layer, at the last finite "
                 "snapshot before the first NaN/Inf, or at the end):")
    lines.append("")
    for e in v["criteria"][0]["evidence"]:
        if not e["exploded"]:
            where = "no NaN/Inf"
        elif e["located_by"] == "statistics":
            where = (f"first NaN/Inf at step {e['step']} in the {e['tensor']} ({e['block']}), with layer {e['layer']} "
                     f"the first whose statistics overflowed in that forward pass")
        else:
            where = f"first NaN/Inf at step {e['step']}, layer {e['layer']} {e['block']} ({e['phase']}, {e['tensor']})"
        layers = lambda d: " ".join(f"L{k}={_fmt(x) if x is not None else 'non-finite'}"  # noqa: E731
                                    for k, x in d.items())
        line = (f"- seed {e['seed']}: {where}; at step {e['stats_step']}: ||mu|| {layers(e['mu_norm_max'])}; "
                f"|q| {layers(e['q_absmax'])}; layer-{len(e['mu_norm_max'])}/layer-1 ratio ||mu|| "
                f"{_fmt(e['mu_ratio_last_to_first'])}, |q| {_fmt(e['q_ratio_last_to_first'])}; deepest layer's "
                f"||mu|| x{_fmt(e['deepest_mu_growth_since_start'])} since the start")
        peak = (e.get("peak") or {}).get("mu_norm_max", {})
        if peak:
            line += (f"; peak ||mu|| over the run {layers(peak)}; largest finite loss {_fmt(e.get('max_loss'))}")
        if e["at_event"] and e["at_event"]["step"] != e["stats_step"]:
            line += (f"; in the failing step {e['at_event']['step']} itself: ||mu|| "
                     f"{layers(e['at_event']['mu_norm_max'])}; |q| {layers(e['at_event']['q_absmax'])}")
        lines.append(line + ".")
    ev = v["criteria"][2]["evidence"]
    lines += ["", "Finding 2, r2_full: " + "; ".join(
        f"seed {e['seed']}: {e['status']}, {e['nonfinite_events']} NaN/Inf events, "
        f"{e['steps_completed']}/{e['steps_total']} steps" for e in v["criteria"][1]["evidence"]) + ".", "",
        f"Test position MSE: r2_full {_fmt(ev['mean'], '.4g')} +- {_fmt(ev['std'], '.2g')} (seeds: "
        + ", ".join(f"{k}: {_fmt(x, '.4g')}" for k, x in ev["test_pos_mse"].items()) + "); "
        f"constant velocity {_fmt(b['constant_velocity_test_pos_mse'], '.4g')}; zero displacement "
        f"{_fmt(b['zero_displacement_test_pos_mse'], '.4g')}; velocity with a fitted time "
        f"c={_fmt(b['fitted_velocity_c'])} "
        f"{_fmt(b['fitted_velocity_test_pos_mse'], '.4g')} (EGNN's 'Linear' baseline, published "
        f"{b['linear_paper_test_pos_mse']}); EGNN paper {b['egnn_paper_test_pos_mse']} (trained ~10^4 epochs; "
        f"this budget is {budget['epochs']:.3g} epochs)."]
    for name, o in v["other_experiments"].items():
        mean, std = _mean_std(o["test_pos_mse"])
        lines.append(f"{name}: {o['exploded']} of {o['runs']} seeds exploded; test position MSE "
                     f"{_fmt(mean, '.4g')} +- {_fmt(std, '.2g')} over its {len(o['test_pos_mse'])} runs with a "
                     "test score.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def write_plots(runs, stats, metrics, baseline: dict, folder: Path) -> list[Path]:
    """The comparison's PNGs: per-layer curves, heat maps, the feedback loop, outcomes, validation."""
    order = list(dict.fromkeys(runs["experiment"]))
    strongest = analysis.peak_runs(runs, stats)  # feedback: per experiment the seed with the largest ||mu||
    lines = {"constant velocity": baseline.get("constant_velocity_test_pos_mse"),
             "fitted velocity": baseline.get("fitted_velocity_test_pos_mse"),
             "EGNN paper": baseline.get("egnn_paper_test_pos_mse")}
    table = analysis.outcome_table(runs)
    figures = {
        "layers_mu_q.png": analysis.plot_layer_curves(stats, runs, groups=order),
        "heatmaps.png": analysis.plot_heatmaps(stats, runs),  # every run: nothing picked
        "feedback.png": analysis.plot_feedback(stats, strongest),
        "outcomes.png": analysis.plot_outcomes(table, lines),
        "validation.png": analysis.plot_validation(metrics, runs, lines),
    }
    return [analysis.save_figure(fig, folder / name) for name, fig in figures.items()]


# ----------------------------------------------------------------------------- entry point


def reproduce(out: str | Path = DEFAULT_OUT, quick: bool = False, overrides: Optional[list[str]] = None,
              command: Optional[str] = None, plots: bool = True,
              on_run: Optional[Callable[[dict], None]] = None,
              experiments: tuple[Experiment, ...] = EXPERIMENTS) -> dict[str, Any]:
    """Run the comparison into `out` and return what reproduce.json holds.

    on_run(record) is called after each run (the CLI prints a line).
    """
    out = Path(out)
    overrides = list(overrides or [])
    runs = plan(out, quick, overrides, experiments)  # every config composes before anything runs
    budget = QUICK if quick else FULL
    first_cfg = runs[0][2]
    command = command or " ".join(["painn-ablate reproduce", *(["--quick"] if quick else []), f"--out {out}",
                                   *overrides])
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    baseline = baselines(first_cfg.data)  # also generates (or loads) the one data set every run uses
    records = []
    summaries = []
    reused = 0
    for experiment, seed, cfg in runs:
        finished_before = _finished(Path(cfg.out))
        summary = run_or_reuse(cfg)
        reused += finished_before
        summaries.append(summary)
        stats = analysis.load_layer_stats(cfg.out, stats=("mu_norm_max", "q_absmax"))
        records.append(run_record(experiment, seed, cfg, summary, stats))
        if on_run is not None:
            on_run(records[-1])
    from painn_ablate.train import environment, total_steps

    n_train = first_cfg.data.n_train
    steps = total_steps(first_cfg, n_train)
    result: dict[str, Any] = {
        "command": command, "quick": quick, "overrides": overrides,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "budget": {"steps": steps, "seeds": list(budget.seeds), "lr": float(first_cfg.train.lr),
                   "batch_size": int(first_cfg.train.batch_size), "F": int(first_cfg.model.F),
                   "L": int(first_cfg.model.L), "epochs": steps * first_cfg.train.batch_size / n_train,
                   "data": f"{first_cfg.data.system} n_train={n_train} n_val={first_cfg.data.n_val} "
                           f"n_test={first_cfg.data.n_test} seed={first_cfg.data.seed}",
                   "per_run_overrides": list(budget.overrides)},
        "experiments": [asdict(e) | {"name": e.name} for e in experiments],
        "environment": environment(),
        "baselines": baseline,
        "runs": records,
    }
    result["verdict"] = verdict(records, baseline, int(first_cfg.model.L))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    result["train_seconds"] = round(sum(s["wall_seconds"] for s in summaries), 1)
    result["reused_runs"] = reused
    if plots:
        frame = analysis.load_runs([cfg.out for _, _, cfg in runs])
        stats = analysis.load_layer_stats([cfg.out for _, _, cfg in runs])
        metrics = analysis.load_metrics([cfg.out for _, _, cfg in runs])
        result["plots"] = [str(p) for p in write_plots(frame, stats, metrics, baseline, out / "plots")]
    write_json_atomic(out / "reproduce.json", result)
    (out / "verdict.md").write_text(verdict_text(result))
    return result
