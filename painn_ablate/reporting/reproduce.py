"""`painn-ablate reproduce`: the document's two findings, re-run at a regime the explosion map names.

The comparison trains, on the same data (charged N-body, data.seed=0), at the same depth,
learning rate, optimiser and step budget, 10 seeds each of

    original    the original PaiNN           finding 1: it blows up, starting in layers 4-5
    r2_full     every stabilizer of R2_full  finding 2: it does not, and reaches a test MSE

paired by seed (seed s: the same initialisation seed and batch order in both presets). The runs are
a grid sweep (`comparison_sweeps`, in memory) run by the sweep engine
(painn_ablate.sweep.optuna_engine.run_sweep), `workers` processes of one torch thread each; the study
is `<out>/study.db` and each run lives in `<out>/trials/<label>-t<number>/`. As in the sweeps, a run
ends once a blow-up is sustained (`monitor.on_diverged=stop`: still firing monitor.sustained_steps after
it began; an override can say otherwise); a transient spike trains on.
`reproduce.json`, `verdict.md` and plots go into `<out>`.

The regime (`choose_regime`), by a rule stated before any run: depth L = 5 (the specification's),
and the specification's learning rate (train.lr's default, 1e-3) when the original blew up there
in at least half its seeds in the explosion map (`results/map_original.parquet`, or `--map`);
otherwise the smallest learning rate of the map at L = 5 where it did. Without a map, the
specification's setting. `model.L=` / `train.lr=` overrides replace the rule.

The verdict (`verdict()`) is the rule book's (painn_ablate.analysis.rules, `rules.REPRODUCE`) judged at
the regime's cell, rule by rule, with the numbers it used; a blow-up is a run that was transient,
diverged or exploded (core/outcome.py), and its origin is its first blow-up's (outcome.first_blow_up):

    M1  the original blows up: the Wilson 95% lower bound of its blow-up rate is >= 0.5.
    M3  where: at least half of its blow-ups are located in layer L-1 or L.
    M2  r2_full does not: its rate's Wilson upper bound is <= 0.31 (0/10), and the exact McNemar
        test of the paired outcomes gives p < 0.05 (sweeps/DESIGN.md's M2; note of 2026-12-02).
    A1  accuracy: the upper end of the t 95% interval of r2_full's mean test pos MSE (its stable
        runs; sample sd) lies below the constant-velocity baseline pos + vel * dt on the same test
        split; EGNN's published 0.0071 (Satorras et al. 2021, ~10^4 epochs) is printed beside it.

The study remembers the comparison's settings: re-running the command with the same `--out` resumes
it, reusing every finished run (an interrupted one runs again); other settings are refused.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from painn_ablate.analysis import loaders as analysis
from painn_ablate.analysis import rules
from painn_ablate.core import config, files, rerun, runfolder
from painn_ablate.core.config import compose
from painn_ablate.core.errors import ReproduceError
from painn_ablate.core.outcome import STATE_STATS, RunSummary, Status, first_blow_up, is_blow_up
from painn_ablate.reporting import plots
from painn_ablate.sweep.progress import Progress
from painn_ablate.sweep.spec import DEFAULT_METRIC, Param, Sweep, SweepError, trial_config
from painn_ablate.training.sinks import write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_OUT = "reproduce_out"
# Overrides that would change what is being compared: the comparison sets them per run.
RESERVED_KEYS = ("model", "ablate", "seed", "out", "name")
STUDY = "reproduce"  # the study of the comparison in <out>/study.db (another ablation design: reproduce-<design>)



@dataclass(frozen=True)
class Experiment:
    """One arm of the comparison: a preset and an ablation design (see config.ABLATIONS)."""

    preset: str
    ablate: str = "none"
    why: str = ""

    @property
    def name(self) -> str:
        return config.experiment_name(self.preset, self.ablate)

    @property
    def slug(self) -> str:
        return config.experiment_slug(self.preset, self.ablate)


@dataclass(frozen=True)
class Budget:
    """What every run of the comparison gets."""

    steps: int
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()  # applied to every run before the user's overrides


EXPERIMENTS = (
    Experiment("original", why="the original PaiNN (finding 1: blows up, starting in layers 4-5)"),
    Experiment("r2_full", why="all R2_full stabilizers (finding 2: does not blow up; test MSE)"),
)
# Full: 1000 steps of batch 100 (33 epochs of the 3000 training graphs), 10 paired seeds per preset,
# validation every 100 steps and statistics every 10 (the schema's defaults). At L = 5 an r2_full run
# takes ~150-250 s on one core and the original's end at a non-finite value or once a divergence is
# sustained (200 steps after it began: monitor.sustained_steps), so two workers finish in ~15-25 minutes. Quick: a smoke test of the whole pipeline.
FULL = Budget(steps=1000, seeds=tuple(range(10)))
QUICK = Budget(steps=40, seeds=(0, 1, 2), overrides=("train.val_every=20", "monitor.every=5"))
DEFAULT_MAP = "results/map_original.parquet"
DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class Regime:
    """Depth and learning rate of the comparison, and the rule that chose them, in words."""

    L: int
    lr: float
    rule: str


def _map_cells(path: Path, L: int):
    """The original's blow-ups per learning rate at depth L in an explosion-map trial table."""
    import pandas as pd

    try:
        trials = pd.read_parquet(path, columns=["preset", "ablate", "L", "lr", "blew_up"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line of bad input
        raise ReproduceError(f"--map {path}: not a trial table ({str(exc).splitlines()[0]})") from None
    cell = trials[(trials["preset"] == "original") & (trials["ablate"] == "none") & (trials["L"] == L)]
    return cell.groupby("lr")["blew_up"].agg(["sum", "size"])


def choose_regime(overrides: list[str], map_path: Optional[str | Path] = None) -> Regime:
    """The regime by the module docstring's rule; map_path None: DEFAULT_MAP where it exists."""
    from painn_ablate.core.config import ModelConfig, TrainConfig

    given = {item.split("=", 1)[0] for item in overrides}
    if given & {"model.L", "train.lr"}:
        cfg = compose(list(overrides))
        return Regime(int(cfg.model.L), float(cfg.train.lr), "given by the overrides")
    L, lr = ModelConfig.L, TrainConfig.lr
    path = Path(map_path) if map_path is not None else Path(DEFAULT_MAP)
    if not path.is_file():
        if map_path is not None:
            raise ReproduceError(f"--map {path}: no such file")
        return Regime(L, lr, f"the specification's setting (no explosion map at {path})")
    cells = _map_cells(path, L)
    half = cells[cells["sum"] >= cells["size"] / 2]
    source = f"the explosion map {path}"
    if lr in half.index:
        k, n = cells.loc[lr]
        return Regime(L, lr, f"the specification's learning rate: the original blew up there in {k}/{n} seeds "
                             f"in {source}")
    if len(half):
        low = float(half.index.min())
        k, n = cells.loc[low]
        return Regime(L, low, f"the smallest learning rate at which the original blew up in at least half its "
                              f"seeds ({k}/{n}) in {source}")
    return Regime(L, lr, f"the specification's setting: no learning rate at L={L} in {source} blew the original "
                         "up in half its seeds")


# ----------------------------------------------------------------------------- baselines


def horizon(data_cfg: DictConfig) -> Optional[float]:
    """Time between the input and the target frame of the generated protocol; None for data.dir."""
    from painn_ablate.data.simulate import CHARGED, GRAVITY

    if data_cfg.dir:
        return None
    protocol = CHARGED if data_cfg.system == "charged" else GRAVITY
    return (protocol.target_step - protocol.input_step) * protocol.dt


def baselines(data_cfg: DictConfig) -> dict[str, Any]:
    """Test position MSE of trivial predictors, per coordinate as `painn_ablate.training.trainer.evaluate` computes it,
    on the data set `data_cfg` names (the shipped default data: the same on every machine), with its fingerprint.

    zero_displacement: pos_next = pos. constant_velocity: pos_next = pos + vel * dt, with dt
    the time between the input and the target frame (1.0 for the charged protocol).
    fitted_velocity: pos_next = pos + vel * c with the one scalar c fitted on the training
    split by least squares: EGNN's "Linear" baseline (a learnable time), published 0.0819.
    """
    from painn_ablate.data.datasets import load_dataset, split_fingerprint

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
            "fitted_velocity_c": c, "horizon": dt_, "n_test": len(test), "data_fingerprint": split_fingerprint(splits),
            "egnn_paper_test_pos_mse": rules.EGNN_PAPER_MSE,
            "linear_paper_test_pos_mse": rules.LINEAR_PAPER_MSE}


# ----------------------------------------------------------------------------- runs


def check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in RESERVED_KEYS:
            raise ReproduceError(f"override '{item}': '{key}' is set by the comparison for each run; "
                                 "use painn-ablate train or a sweep for other designs")


def comparison_sweeps(budget: Budget, regime: Regime, overrides: list[str],
                      experiments: tuple[Experiment, ...] = EXPERIMENTS) -> list[Sweep]:
    """The comparison as grid sweeps (in memory) for the sweep engine: per ablation design one study, its presets x
    the budget's seeds (presets outer, as EXPERIMENTS lists them), every run at the regime, ending at its first
    blow-up; the user's overrides last. The study remembers these settings, so a re-run resumes it and a re-run
    with other settings is refused."""
    fixed = [f"model.L={regime.L}", f"train.lr={regime.lr}", f"train.steps={budget.steps}", "monitor.on_diverged=stop",
             "tracking.wandb=false", *budget.overrides]
    sweeps = []
    for ablate in dict.fromkeys(e.ablate for e in experiments):
        presets = [e.preset for e in experiments if e.ablate == ablate]
        name = STUDY if ablate == "none" else f"{STUDY}-{ablate}"
        raw = {"name": name, "method": "grid", "metric": {"name": DEFAULT_METRIC, "goal": "minimize"},
               "parameters": {"model": {"values": presets}, "ablate": {"value": ablate},
                              "seed": {"values": list(budget.seeds)}}}
        params = {"model": Param("model", "categorical", tuple(presets)), "ablate": Param("ablate", "constant", (ablate,)),
                  "seed": Param("seed", "categorical", tuple(budget.seeds))}
        sweeps.append(Sweep(path=f"<painn-ablate reproduce: {name}>", name=name, method="grid", metric=DEFAULT_METRIC,
                            goal="minimize", params=params, overrides=[*fixed, *overrides], raw=raw))
    return sweeps


def plan(out: Path, quick: bool = False, overrides: Optional[list[str]] = None,
         experiments: tuple[Experiment, ...] = EXPERIMENTS,
         regime: Optional[Regime] = None) -> list[tuple[Experiment, int, DictConfig]]:
    """Every run of the comparison with its resolved config (ConfigError on bad overrides), in the order of
    reproduce.json; the run folder is the sweep engine's (`<out>/trials/<label>-t<number>`), known once it runs."""
    overrides = list(overrides or [])
    check_overrides(overrides)
    regime = regime or choose_regime(overrides)
    budget = QUICK if quick else FULL
    sweeps = {s.raw["parameters"]["ablate"]["value"]: s for s in comparison_sweeps(budget, regime, overrides, experiments)}
    return [(e, seed, trial_config(sweeps[e.ablate], {"model": e.preset, "ablate": e.ablate, "seed": seed}))
            for e in experiments for seed in budget.seeds]


def run_comparison(sweeps: list[Sweep], out: Path, workers: int,
                   on_trial: Callable[[FrozenTrial], None]) -> tuple[list[FrozenTrial], int]:
    """Run the comparison's sweeps with the sweep engine, `workers` processes of one torch thread each, into
    `<out>/study.db` and `<out>/trials/`; a trial finished by an earlier invocation is not run again.

    on_trial(trial) is called once per finished trial (reused ones first), in the order they finish.
    Returns (the finished trials, how many were finished before this call)."""
    from painn_ablate.sweep.optuna_engine import run_sweep

    seen: set[tuple[str, int]] = set()
    reused = 0
    finished: list[FrozenTrial] = []
    for sweep in sweeps:
        first = True

        def report(p: Progress, sweep: Sweep = sweep) -> None:
            nonlocal first, reused
            if first:
                reused += p.done
                first = False
            for t in p.finished:
                if (sweep.name, t.number) not in seen:
                    seen.add((sweep.name, t.number))
                    finished.append(t)
                    on_trial(t)

        try:
            run_sweep(sweep, out=out, workers=workers, threads=1, on_progress=report)
        except SweepError as exc:
            if "was started with other" in str(exc):
                raise ReproduceError(f"{out} holds a comparison of another configuration ({exc}); choose another "
                                     "--out or remove it") from None
            raise
    return finished, reused


# ----------------------------------------------------------------------------- records


def _layer_dict(profile: dict) -> dict[str, float]:
    return {str(k): v for k, v in sorted(profile.items())}


def max_finite_loss(run_dir: str) -> Optional[float]:
    """The largest finite training loss: a spike that did not (yet) turn into NaN/Inf."""
    import pandas as pd

    loss = pd.read_parquet(Path(run_dir) / runfolder.METRICS, columns=["loss"])["loss"]
    loss = loss[loss.map(math.isfinite)]
    return float(loss.max()) if len(loss) else None


def run_record(experiment: Experiment, seed: int, cfg: DictConfig, summary: RunSummary, stats) -> dict[str, Any]:
    """What reproduce.json keeps of one run (see the module docstring)."""
    run_dir = str(cfg.out)
    origin = first_blow_up(summary.get("first_divergence"), summary.get("first_nonfinite"))
    # the last snapshot before the first blow-up (its own forward pass is `at_blow_up`), or the last one
    before = None if origin is None else origin["step"]
    step, values = analysis.layer_profiles(stats, run_dir, STATE_STATS, before_step=before)
    profile = {"step": step, **{stat: _layer_dict(values.get(stat, {})) for stat in STATE_STATS}}
    mine = stats[(stats["run_dir"] == run_dir) & (stats["block"] == "mixing")]
    at = None
    if origin is not None:  # the blow-up's own forward pass (the trainer records or replays its statistics)
        snap = mine[mine["step"] == origin["step"]]
        at = {"step": origin["step"], **{
            stat: _layer_dict({int(l): (float(v) if math.isfinite(v) else None)
                               for l, v in zip(snap.loc[snap["stat"] == stat, "layer"],
                                               snap.loc[snap["stat"] == stat, "value"])})
            for stat in STATE_STATS}}
    val, test = summary.get("val") or {}, summary.get("test") or {}
    return {
        "experiment": experiment.name, "preset": experiment.preset, "ablate": experiment.ablate, "seed": seed,
        "L": int(cfg.model.L), "lr": float(cfg.train.lr), "steps_total": summary["steps_total"], "run_dir": run_dir,
        "command": rerun.rerun_command(run_dir), "status": summary["status"],
        "blew_up": is_blow_up(summary["status"]), "origin": origin,
        "steps_completed": summary["steps_completed"], "nonfinite_events": summary["nonfinite_events"],
        "first_nonfinite": summary.get("first_nonfinite"), "first_divergence": summary.get("first_divergence"),
        "val_pos_mse": val.get("pos_mse"), "val_vel_mse": val.get("vel_mse"),
        "test_pos_mse": test.get("pos_mse"), "test_vel_mse": test.get("vel_mse"),
        "test_pos_mse_tail": {k: v for k, v in test.items() if k.startswith("pos_mse_")},
        "best_step": summary["best_step"], "final_loss": summary["final_loss"], "max_loss": max_finite_loss(run_dir),
        "wall_seconds": round(summary["wall_seconds"], 2), "ms_per_step": summary["ms_per_step"],
        "layers_before_blow_up": profile,  # the last snapshot before the first blow-up, or the last one
        "layers_at_blow_up": at,  # the forward pass of the first blow-up (None: none)
    }


# ----------------------------------------------------------------------------- verdict


def record_trials(records: list[dict], regime: Optional[Regime] = None):
    """Run records as rows of a trial table (the columns the rule book reads; L and lr default to the regime's)."""
    import pandas as pd

    return pd.DataFrame([{
        "preset": r["preset"], "ablate": r.get("ablate", "none"), "L": r.get("L", regime.L if regime else None),
        "lr": r.get("lr", regime.lr if regime else None), "seed": r["seed"], "status": r["status"],
        "blew_up": bool(r["blew_up"]), "test_pos_mse": r.get("test_pos_mse"),
        **{f"origin_{k}": (r.get("origin") or {}).get(k) for k in ("layer", "block", "stat", "criterion")},
    } for r in records], columns=["preset", "ablate", "L", "lr", "seed", "status", "blew_up", "test_pos_mse",
                                  "origin_layer", "origin_block", "origin_stat", "origin_criterion"])


def verdict(trials, baseline: dict, regime: Regime) -> dict[str, Any]:
    """The rule book's REPRODUCE rules (M1, M3, M2, A1: painn_ablate.analysis.rules) judged at the regime's cell,
    on run records (a list of `run_record` dicts) or a trial table; with the rates of both presets."""
    trials = record_trials(trials, regime) if isinstance(trials, list) else trials
    cell = rules.Cell(int(regime.L), float(regime.lr))
    verdicts = rules.judge(trials, rules.REPRODUCE, at=cell, baselines=baseline)
    criteria = [{"id": v.rule, "claim": v.claim, "verdict": v.verdict, "passed": v.passed, "observed": v.evidence,
                 "evidence": v.numbers} for v in verdicts]
    rates = {p: rules.rate_numbers(rules.at_cell(trials, p, "none", cell.L, cell.lr)) for p in ("original", "r2_full")}
    return {"passed": all(c["passed"] for c in criteria), "criteria": criteria, "rates": rates}


def criteria_lines(v: dict) -> list[str]:
    """One Markdown line per criterion of a `verdict`: verdict, rule, claim, evidence."""
    return [f"- **{c['verdict']}** ({c['id']}) {c['claim']}: {c['observed']}." for c in v["criteria"]]


def fmt_value(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def _profile(values: dict) -> str:
    return " ".join(f"L{k}={fmt_value(x) if x is not None else 'non-finite'}" for k, x in values.items())


def verdict_text(result: dict) -> str:
    """The verdict as Markdown: the regime and its rule, one line per criterion, then the evidence per seed."""
    v, b, budget, regime = result["verdict"], result["baselines"], result["budget"], result["regime"]
    lines = [f"# Reproduction verdict: {'REPRODUCED' if v['passed'] else 'NOT REPRODUCED'}", "",
             f"Command: `{result['command']}`  ",
             f"Regime: L = {regime['L']}, lr = {fmt_value(regime['lr'])}; rule: {regime['rule']}.  ",
             f"Budget: {budget['steps']} steps per run, seeds {', '.join(map(str, budget['seeds']))} (paired across "
             f"presets), batch {budget['batch_size']}, F={budget['F']}, data {budget['data']}; {len(result['runs'])} "
             f"runs, {result['train_seconds'] / 60:.1f} min of training in all, {result['wall_seconds'] / 60:.1f} min "
             f"of wall time with {result['workers']} worker(s)" + (f" ({result['reused_runs']} runs reused from an "
                                                                   "earlier invocation)" if result["reused_runs"] else "")
             + ". A blow-up is a run that diverged or exploded (see the README for the criteria).", "",
             "Rules (written before the runs: M1, M3, M2 of sweeps/DESIGN.md and A1, judged at this cell by the rule "
             "book painn_ablate.analysis.rules):", ""]
    lines += criteria_lines(v)
    lines += ["", "Per run (origin of the first blow-up: step, layer, block, statistic, criterion; per-layer max "
              "||mu|| and |q| after mixing at the last snapshot before it, or at the end):", ""]
    for r in result["runs"]:
        o = r["origin"]
        where = ("stable" if o is None else
                 f"{r['status']}: first blow-up at step {o['step']}, layer {fmt_value(o['layer'])} {fmt_value(o['block'])}, "
                 f"{fmt_value(o['stat'])} ({o['criterion']})")
        before = r["layers_before_blow_up"]
        line = (f"- {r['experiment']} seed {r['seed']}: {where}; at step {fmt_value(before['step'])}: ||mu|| "
                f"{_profile(before['mu_norm_max'])}; |q| {_profile(before['q_absmax'])}")
        if r["status"] == Status.STABLE and r["test_pos_mse"] is not None:
            tail = r.get("test_pos_mse_tail") or {}
            line += f"; test pos MSE {r['test_pos_mse']:.4g}" + (
                f" (per sample: median {tail['pos_mse_q50']:.3g}, q99 {tail['pos_mse_q99']:.3g}, max "
                f"{tail['pos_mse_max']:.3g})" if tail.get("pos_mse_q99") is not None else "")
        lines.append(line + ".")
    ev = next(c for c in v["criteria"] if c["id"] == "A1")["evidence"]
    lines += ["", f"Test position MSE of r2_full's stable runs: mean {fmt_value(ev['mean'], '.4g')}, sample sd "
              f"{fmt_value(ev['sd'], '.2g')}, t 95% interval [{fmt_value(ev['lo'], '.4g')}, {fmt_value(ev['hi'], '.4g')}], "
              f"n = {ev['n']}; constant velocity {fmt_value(b['constant_velocity_test_pos_mse'], '.4g')}; zero "
              f"displacement {fmt_value(b['zero_displacement_test_pos_mse'], '.4g')}; velocity with a fitted time "
              f"c={fmt_value(b['fitted_velocity_c'])} {fmt_value(b['fitted_velocity_test_pos_mse'], '.4g')} (EGNN's 'Linear' "
              f"baseline, published {b['linear_paper_test_pos_mse']}); EGNN paper {b['egnn_paper_test_pos_mse']} "
              f"(trained ~10^4 epochs; this budget is {budget['epochs']:.3g} epochs)."]
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
        "layers_mu_q.png": plots.plot_layer_curves(stats, runs, groups=order),
        "heatmaps.png": plots.plot_heatmaps(stats, runs),  # every run: nothing picked
        "feedback.png": plots.plot_feedback(stats, strongest),
        "outcomes.png": plots.plot_outcomes(table, lines),
        "validation.png": plots.plot_validation(metrics, runs, lines),
    }
    return [plots.save_figure(fig, folder / name) for name, fig in figures.items()]


# ----------------------------------------------------------------------------- entry point


def reproduce(out: str | Path = DEFAULT_OUT, quick: bool = False, overrides: Optional[list[str]] = None,
              command: Optional[str] = None, plots: bool = True,
              on_run: Optional[Callable[[dict], None]] = None,
              experiments: tuple[Experiment, ...] = EXPERIMENTS, workers: int = DEFAULT_WORKERS,
              map_path: Optional[str | Path] = None) -> dict[str, Any]:
    """Run the comparison into `out` and return what reproduce.json holds.

    on_run(record) is called after each run (the CLI prints a line), in the order they finish.
    """
    out = Path(out)
    overrides = list(overrides or [])
    check_overrides(overrides)
    regime = choose_regime(overrides, map_path)
    planned = plan(out, quick, overrides, experiments, regime)  # every config composes before anything runs
    budget = QUICK if quick else FULL
    first_cfg = planned[0][2]
    command = command or " ".join(["painn-ablate reproduce", *(["--quick"] if quick else []), f"--out {out}",
                                   *([f"--map {map_path}"] if map_path else []), *overrides])
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    baseline = baselines(first_cfg.data)  # also generates (or loads) the one data set every run uses
    by_key: dict[tuple[str, str, int], dict] = {}
    errors: list[str] = []

    def done(t: FrozenTrial) -> None:
        if t.state == TrialState.FAIL:
            errors.append(f"{t.user_attrs.get('label')}: {t.user_attrs.get('error')}")
            return
        run_dir = Path(t.user_attrs["run_dir"])
        cfg = OmegaConf.load(run_dir / runfolder.CONFIG)
        summary: RunSummary = json.loads((run_dir / runfolder.SUMMARY).read_text())
        experiment = next(e for e in experiments if e.preset == cfg.model.preset and e.ablate == cfg.ablate)
        stats = analysis.load_layer_stats(run_dir, stats=STATE_STATS)
        record = run_record(experiment, int(cfg.seed), cfg, summary, stats)
        by_key[(experiment.preset, experiment.ablate, int(cfg.seed))] = record
        if on_run is not None:
            on_run(record)

    sweeps = comparison_sweeps(budget, regime, overrides, experiments)
    _, reused = run_comparison(sweeps, out, workers, done)
    if errors:
        raise ReproduceError(f"{len(errors)} run(s) failed, e.g. {errors[0]}; fix it and run the command again")
    records = [by_key[(e.preset, e.ablate, seed)] for e, seed, _ in planned]
    from painn_ablate.training.trainer import environment, total_steps

    n_train = first_cfg.data.n_train
    steps = total_steps(first_cfg, n_train)
    result: dict[str, Any] = {
        "command": command, "quick": quick, "overrides": overrides, "workers": workers,
        "created": dt.datetime.now().isoformat(timespec="seconds"), "regime": asdict(regime),
        "budget": {"steps": steps, "seeds": list(budget.seeds), "lr": float(first_cfg.train.lr),
                   "batch_size": int(first_cfg.train.batch_size), "F": int(first_cfg.model.F),
                   "L": int(first_cfg.model.L), "epochs": steps * first_cfg.train.batch_size / n_train,
                   "data": f"{first_cfg.data.system} n_train={n_train} n_val={first_cfg.data.n_val} "
                           f"n_test={first_cfg.data.n_test} seed={first_cfg.data.seed}",
                   "per_run_overrides": list(budget.overrides)},
        "experiments": [asdict(e) | {"name": e.name} for e in experiments],
        "studies": [s.name for s in sweeps],
        "environment": environment(),
        "baselines": baseline,
        "runs": records,
    }
    result["verdict"] = verdict(records, baseline, regime)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    result["train_seconds"] = round(sum(r["wall_seconds"] for r in records), 1)
    result["reused_runs"] = reused
    if plots:
        run_dirs = [r["run_dir"] for r in records]
        frame = analysis.load_runs(run_dirs)
        stats = analysis.load_layer_stats(run_dirs)
        metrics = analysis.load_metrics(run_dirs)
        result["plots"] = [str(p) for p in write_plots(frame, stats, metrics, baseline, out / "plots")]
    write_json_atomic(out / "reproduce.json", result)
    files.write_text(out / "verdict.md", verdict_text(result))
    return result
