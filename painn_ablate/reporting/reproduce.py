"""`painn-ablate reproduce`: the document's two findings, re-run at a regime the explosion map names.

The comparison trains, on the same data (charged N-body, data.seed=0), at the same depth,
learning rate, optimiser and step budget, 10 seeds each of

    original    the original PaiNN           finding 1: it blows up, starting in layers 4-5
    r2_full     every stabilizer of R2_full  finding 2: it does not, and reaches a test MSE

paired by seed (seed s: the same initialisation seed and batch order in both presets), two at
a time in worker processes of one thread each (`workers`). As in the sweeps, a run ends at its
first blow-up (`monitor.on_diverged=stop`; an override can say otherwise). Each run lives in its own directory
under `<out>/runs/`; `reproduce.json`, `verdict.md` and plots go into `<out>`.

The regime (`choose_regime`), by a rule stated before any run: depth L = 5 (the specification's),
and the specification's learning rate (train.lr's default, 1e-3) when the original blew up there
in at least half its seeds in the explosion map (`results/map_original.parquet`, or `--map`);
otherwise the smallest learning rate of the map at L = 5 where it did. Without a map, the
specification's setting. `model.L=` / `train.lr=` overrides replace the rule.

The verdict (`verdict()`), criterion by criterion, with the numbers it used; a blow-up is a
run that diverged or exploded (outcome.py), and its origin is its first blow-up's
(outcome.first_blow_up):

    1  the original blows up: the Wilson 95% lower bound of its blow-up rate is >= 0.5.
    2  where: at least half of its blow-ups start in layer L-1 or L.
    3  r2_full does not: its rate's Wilson upper bound lies below the original's lower bound, and
       the exact McNemar test of the paired outcomes gives p < 0.05.
    4  accuracy: the upper end of the t 95% interval of r2_full's mean test pos MSE (its stable
       runs; sample sd) lies below the constant-velocity baseline pos + vel * dt on the same test
       split; EGNN's published 0.0071 (Satorras et al. 2021, ~10^4 epochs) is printed beside it.

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

from painn_ablate.analysis import loaders as analysis
from painn_ablate.analysis.tables import mcnemar_exact, mean_interval, wilson
from painn_ablate.core import config, files, runfolder
from painn_ablate.core.config import compose, flatten
from painn_ablate.core.errors import ReproduceError
from painn_ablate.core.outcome import OUTCOMES, STATE_STATS, RunSummary, Status, first_blow_up, is_blow_up
from painn_ablate.core.process import keep_freed_memory, use_inductor_cache
from painn_ablate.reporting import plots
from painn_ablate.training.sinks import write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_OUT = "reproduce_out"
# Overrides that would change what is being compared: the comparison sets them per run.
RESERVED_KEYS = ("model", "ablate", "seed", "out", "name")
FINISHED = OUTCOMES  # a run that ended with an outcome (stable, diverged, exploded) is reused



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
# takes ~150-250 s on one core and the original's end at their first blow-up, so two workers finish in
# ~15-20 minutes. Quick: a smoke test of the whole pipeline.
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
    """Test position MSE of trivial predictors, per coordinate as `train.evaluate` computes it.

    zero_displacement: pos_next = pos. constant_velocity: pos_next = pos + vel * dt, with dt
    the time between the input and the target frame (1.0 for the charged protocol).
    fitted_velocity: pos_next = pos + vel * c with the one scalar c fitted on the training
    split by least squares: EGNN's "Linear" baseline (a learnable time), published 0.0819.
    """
    from painn_ablate.data.datasets import load_dataset

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


def run_overrides(experiment: Experiment, seed: int, budget: Budget, regime: Regime, overrides: list[str],
                  run_dir: Path) -> list[str]:
    return [f"model={experiment.preset}", f"ablate={experiment.ablate}", f"seed={seed}", f"model.L={regime.L}",
            f"train.lr={regime.lr}", f"train.steps={budget.steps}", "monitor.on_diverged=stop", "tracking.wandb=false",
            *budget.overrides,
            *overrides, f"name={run_dir.name}", f"out={run_dir}"]


def plan(out: Path, quick: bool = False, overrides: Optional[list[str]] = None,
         experiments: tuple[Experiment, ...] = EXPERIMENTS,
         regime: Optional[Regime] = None) -> list[tuple[Experiment, int, DictConfig]]:
    """Every run of the comparison with its resolved config (ConfigError on bad overrides)."""
    overrides = list(overrides or [])
    check_overrides(overrides)
    regime = regime or choose_regime(overrides)
    budget = QUICK if quick else FULL
    runs = []
    for experiment in experiments:
        for seed in budget.seeds:
            run_dir = out / "runs" / f"{experiment.slug}-seed{seed}"
            runs.append((experiment, seed, compose(run_overrides(experiment, seed, budget, regime, overrides,
                                                                 run_dir))))
    return runs


def _same_config(run_dir: Path, cfg: DictConfig) -> bool:
    saved = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / runfolder.CONFIG), resolve=True))
    return config.results_view(saved) == config.results_view(flatten(cfg))


def _finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / runfolder.SUMMARY).read_text()).get("status") in FINISHED
    except (OSError, ValueError):
        return False


def run_or_reuse(cfg: DictConfig) -> RunSummary:
    """Train `cfg` unless its run directory already holds the finished run of the same config."""
    from painn_ablate.training.trainer import run

    run_dir = Path(cfg.out)
    summary_file = run_dir / runfolder.SUMMARY
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        same = (run_dir / runfolder.CONFIG).is_file() and _same_config(run_dir, cfg)
        if summary.get("status") in FINISHED and same:
            log.info("reusing the finished run in %s", run_dir)
            return summary
        if summary.get("status") in FINISHED:
            raise ReproduceError(f"{run_dir} holds a finished run of another configuration; "
                                 "choose another --out or remove it")
        log.warning("%s holds an unfinished run (%s); running it again", run_dir, summary.get("status"))
        shutil.rmtree(run_dir)
    return run(cfg)


def _worker_init(threads: int) -> None:
    import torch

    keep_freed_memory()  # a spawned process starts with glibc's defaults
    use_inductor_cache()
    torch.set_num_threads(threads)


def run_all(cfgs: list[DictConfig], workers: int, on_done: Callable[[int, dict], None]) -> list[dict]:
    """run_or_reuse every config, `workers` at a time in spawned processes of one thread each (1: here).

    on_done(index, summary) is called in the order the runs finish.
    """
    summaries: list[Optional[dict]] = [None] * len(cfgs)
    if workers <= 1:
        for i, cfg in enumerate(cfgs):
            summaries[i] = run_or_reuse(cfg)
            on_done(i, summaries[i])
        return summaries
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, as_completed, wait

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(1,)) as pool:
        futures = {pool.submit(run_or_reuse, cfg): i for i, cfg in enumerate(cfgs)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                summaries[i] = future.result()
                on_done(i, summaries[i])
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures, return_when=FIRST_EXCEPTION)
            raise
    return summaries


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
    if origin is not None:  # the blow-up's own forward pass (train.py records or replays its statistics)
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
        "command": config.rerun_command(run_dir), "status": summary["status"],
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


def _rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k}/{n} [{lo:.2f}, {hi:.2f}]" if n else "0/0"


def verdict(records: list[dict], baseline: dict, n_layers: int) -> dict[str, Any]:
    """Pass/fail per criterion (module docstring) with the evidence, computed from run records."""
    import pandas as pd

    original = [r for r in records if r["preset"] == "original" and r["ablate"] == "none"]
    full = [r for r in records if r["preset"] == "r2_full" and r["ablate"] == "none"]
    k_o, n_o = sum(r["blew_up"] for r in original), len(original)
    k_f, n_f = sum(r["blew_up"] for r in full), len(full)
    lo_o, hi_o = wilson(k_o, n_o)
    lo_f, hi_f = wilson(k_f, n_f)
    criteria = []
    criteria.append({"id": 1, "claim": "the original blows up (Wilson 95% lower bound of its blow-up rate >= 0.5)",
                     "passed": bool(n_o) and lo_o >= 0.5, "observed": _rate(k_o, n_o)})

    deep = (n_layers - 1, n_layers)
    blown = [r for r in original if r["blew_up"]]
    in_deep = sum((r["origin"] or {}).get("layer") in deep for r in blown)
    where = [{"seed": r["seed"], **(r["origin"] or {})} for r in blown]
    criteria.append({"id": 2, "claim": f"at least half of the original's blow-ups start in layer {deep[0]} or {deep[1]}",
                     "passed": bool(blown) and in_deep >= len(blown) / 2,
                     "observed": f"{in_deep} of {len(blown)} blow-ups", "evidence": where})

    by_seed = lambda rs: pd.Series({r["seed"]: r["blew_up"] for r in rs}, dtype=bool)  # noqa: E731
    only_o, only_f, p = mcnemar_exact(by_seed(original), by_seed(full))
    criteria.append({"id": 3, "claim": "r2_full does not: its rate's Wilson upper bound lies below the original's "
                                       "lower bound, and the exact McNemar test of the paired seeds gives p < 0.05",
                     "passed": bool(n_f and n_o) and hi_f < lo_o and p < 0.05,
                     "observed": f"r2_full {_rate(k_f, n_f)} vs original {_rate(k_o, n_o)}; seeds blowing up only "
                                 f"in the original {only_o}, only in r2_full {only_f}, McNemar p = {p:.3g}",
                     "evidence": {"mcnemar_p": p, "only_original": only_o, "only_r2_full": only_f}})

    mse = mean_interval(r["test_pos_mse"] for r in full if r["status"] == Status.STABLE)
    const_vel = baseline.get("constant_velocity_test_pos_mse")
    criteria.append({
        "id": 4, "claim": "r2_full's mean test pos MSE (stable runs; t 95% interval) lies below the "
                          "constant-velocity baseline",
        "passed": mse["n"] >= 2 and const_vel is not None and mse["hi"] < const_vel,
        "observed": (f"mean {mse['mean']:.4g}, sample sd {mse['sd']:.2g}, 95% CI [{mse['lo']:.4g}, {mse['hi']:.4g}] "
                     f"(n = {mse['n']}) vs constant velocity {_fmt(const_vel, '.4g')}") if mse["n"] else "no stable run",
        "evidence": {**mse, "test_pos_mse": {str(r["seed"]): r["test_pos_mse"] for r in full},
                     "constant_velocity": const_vel, "zero_displacement": baseline.get("zero_displacement_test_pos_mse"),
                     "fitted_velocity": baseline.get("fitted_velocity_test_pos_mse"),
                     "egnn_paper": baseline.get("egnn_paper_test_pos_mse")}})
    return {"passed": all(c["passed"] for c in criteria), "criteria": criteria,
            "rates": {"original": [k_o, n_o, lo_o, hi_o], "r2_full": [k_f, n_f, lo_f, hi_f]}}


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def _profile(values: dict) -> str:
    return " ".join(f"L{k}={_fmt(x) if x is not None else 'non-finite'}" for k, x in values.items())


def verdict_text(result: dict) -> str:
    """The verdict as Markdown: the regime and its rule, one line per criterion, then the evidence per seed."""
    v, b, budget, regime = result["verdict"], result["baselines"], result["budget"], result["regime"]
    lines = [f"# Reproduction verdict: {'REPRODUCED' if v['passed'] else 'NOT REPRODUCED'}", "",
             f"Command: `{result['command']}`  ",
             f"Regime: L = {regime['L']}, lr = {_fmt(regime['lr'])}; rule: {regime['rule']}.  ",
             f"Budget: {budget['steps']} steps per run, seeds {', '.join(map(str, budget['seeds']))} (paired across "
             f"presets), batch {budget['batch_size']}, F={budget['F']}, data {budget['data']}; {len(result['runs'])} "
             f"runs, {result['train_seconds'] / 60:.1f} min of training in all, {result['wall_seconds'] / 60:.1f} min "
             f"of wall time with {result['workers']} worker(s)" + (f" ({result['reused_runs']} runs reused from an "
                                                                   "earlier invocation)" if result["reused_runs"] else "")
             + ". A blow-up is a run that diverged or exploded (see the README for the criteria).", "",
             "Criteria (written before the runs; pass/fail from the records):", ""]
    for c in v["criteria"]:
        lines.append(f"- **{'PASS' if c['passed'] else 'FAIL'}** ({c['id']}) {c['claim']}: {c['observed']}.")
    lines += ["", "Per run (origin of the first blow-up: step, layer, block, statistic, criterion; per-layer max "
              "||mu|| and |q| after mixing at the last snapshot before it, or at the end):", ""]
    for r in result["runs"]:
        o = r["origin"]
        where = ("stable" if o is None else
                 f"{r['status']}: first blow-up at step {o['step']}, layer {_fmt(o['layer'])} {_fmt(o['block'])}, "
                 f"{_fmt(o['stat'])} ({o['criterion']})")
        before = r["layers_before_blow_up"]
        line = (f"- {r['experiment']} seed {r['seed']}: {where}; at step {_fmt(before['step'])}: ||mu|| "
                f"{_profile(before['mu_norm_max'])}; |q| {_profile(before['q_absmax'])}")
        if r["status"] == Status.STABLE and r["test_pos_mse"] is not None:
            tail = r.get("test_pos_mse_tail") or {}
            line += f"; test pos MSE {r['test_pos_mse']:.4g}" + (
                f" (per sample: median {tail['pos_mse_q50']:.3g}, q99 {tail['pos_mse_q99']:.3g}, max "
                f"{tail['pos_mse_max']:.3g})" if tail.get("pos_mse_q99") is not None else "")
        lines.append(line + ".")
    ev = v["criteria"][3]["evidence"]
    lines += ["", f"Test position MSE of r2_full's stable runs: mean {_fmt(ev['mean'], '.4g')}, sample sd "
              f"{_fmt(ev['sd'], '.2g')}, t 95% interval [{_fmt(ev['lo'], '.4g')}, {_fmt(ev['hi'], '.4g')}], "
              f"n = {ev['n']}; constant velocity {_fmt(b['constant_velocity_test_pos_mse'], '.4g')}; zero "
              f"displacement {_fmt(b['zero_displacement_test_pos_mse'], '.4g')}; velocity with a fitted time "
              f"c={_fmt(b['fitted_velocity_c'])} {_fmt(b['fitted_velocity_test_pos_mse'], '.4g')} (EGNN's 'Linear' "
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
    runs = plan(out, quick, overrides, experiments, regime)  # every config composes before anything runs
    budget = QUICK if quick else FULL
    first_cfg = runs[0][2]
    command = command or " ".join(["painn-ablate reproduce", *(["--quick"] if quick else []), f"--out {out}",
                                   *([f"--map {map_path}"] if map_path else []), *overrides])
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    baseline = baselines(first_cfg.data)  # also generates (or loads) the one data set every run uses
    reused = sum(_finished(Path(cfg.out)) for _, _, cfg in runs)
    records: list[Optional[dict]] = [None] * len(runs)

    def done(i: int, summary: RunSummary) -> None:
        experiment, seed, cfg = runs[i]
        stats = analysis.load_layer_stats(cfg.out, stats=STATE_STATS)
        records[i] = run_record(experiment, seed, cfg, summary, stats)
        if on_run is not None:
            on_run(records[i])

    summaries = run_all([cfg for _, _, cfg in runs], workers, done)
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
    files.write_text(out / "verdict.md", verdict_text(result))
    return result
