"""The W&B sweep-file format: reading and checking a sweep file, its grid points, each trial's
label, overrides and config, and what every engine does with a finished run. No Optuna here:
`painn_ablate.sweep.optuna_engine` runs a sweep file with Optuna, `painn_ablate.sweep.wandb_engine` with W&B.

Sweep files
-----------
A sweep file is a W&B sweep configuration, so the same file also works with
`wandb sweep FILE` + `wandb agent`:

    method: grid                      # grid | random | bayes
    metric: {name: val_pos_mse, goal: minimize}
    command: [${env}, painn-ablate, train, ${args_no_hyphens}]   (as a block list in YAML)
    parameters:
      model: {values: [original, r2_full]}        # preset
      ablate: {values: [none, g, s_msg]}           # ablation design, see below
      seed: {values: [0, 1, 2]}
      train.lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
      train.steps: {value: 300}                    # a fixed setting for every trial

Parameter names are config keys (`painn_ablate.core.config.all_keys`) or `model` (the preset).
`ablate` names stabilizers to flip relative to the preset (`painn_ablate.core.config.ABLATIONS`):
on `model=r2_full` that is leave-one-out, on `model=original` add-one-in.

Supported forms of a parameter: `value`, `values` (optionally `distribution: categorical`),
and the distributions `uniform`, `int_uniform`, `q_uniform`, `log_uniform_values`,
`log_uniform` (W&B's old form: min/max are natural logs). W&B forms with no Optuna
counterpart (normal, beta, ...) are refused, and so is `null`: `wandb agent` would pass it
as the string `None`, which no config field accepts (switch a stabilizer off with `ablate`).

Metrics (`metric.name`): val_pos_mse, val_vel_mse, test_pos_mse, test_vel_mse: the names of
the run summary in W&B, of the trials' user attributes and of `trials_frame` columns.
Default: val_pos_mse, minimize.

W&B keys that only W&B acts on are accepted and left to it: `program`, `early_terminate`
(use `--prune` here), `metric.target`/`impute`, `controller`, `description`. The file's
`project`/`entity` become the trials' `tracking.project`/`tracking.entity`.

Everything is checked before any trial runs (`load_sweep`): unknown top-level keys,
parameter forms, distributions, and the config itself, by composing every grid point (or,
for random/bayes, every categorical value and both ends of every range). A problem raises
`SweepError`, one line naming the file and the parameter.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, TypeVar

import yaml

from painn_ablate.core.config import ConfigError, all_keys, compose, did_you_mean, experiment_slug, flatten, format_override
from painn_ablate.core.errors import SweepError
from painn_ablate.core.outcome import METRICS, PHASE_KEY, RunSummary, Status, metric_name

T = TypeVar("T")


# ----------------------------------------------------------------------------- the file format

# W&B's documented top-level keys (plus `controller`, for W&B's local controller).
TOP_LEVEL_KEYS = ("program", "command", "method", "metric", "parameters", "name", "description",
                  "project", "entity", "run_cap", "early_terminate", "controller", *("frontier",))
# painn-ablate's own keys, unknown to W&B: `frontier: <a grid parameter>` walks that parameter's values
# (a learning-rate ladder, ascending) per point of the other parameters, up to the first rung at which
# the trial does not train (see `trains`); the Optuna engine walks adaptively, W&B's engine, which
# cannot, runs every rung (the same critical rung is read off the walk's prefix).
OWN_KEYS = ("frontier",)
METHODS = ("grid", "random", "bayes")
DEFAULT_METRIC = metric_name("val", "pos_mse")
# Keys a parameter spec may hold, per form.
DISTRIBUTION_KEYS = {
    "constant": {"value"},
    "categorical": {"values"},
    "uniform": {"min", "max"},
    "int_uniform": {"min", "max"},
    "q_uniform": {"min", "max", "q"},
    "log_uniform_values": {"min", "max"},
    "log_uniform": {"min", "max"},
}
# W&B distributions that Optuna's samplers cannot represent.
UNSUPPORTED_DISTRIBUTIONS = ("normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta",
                             "inv_log_uniform", "inv_log_uniform_values", "q_log_uniform",
                             "q_log_uniform_values", "categorical_w_probabilities")
MANAGED_KEYS = ("out", "name", "tracking.group")  # set by the sweep for each trial
DEFAULT_N_TRIALS = 20


@dataclass(frozen=True)
class Param:
    """One parameter of the sweep file, in Optuna's terms."""

    name: str
    kind: str  # a key of DISTRIBUTION_KEYS
    values: tuple = ()  # constant: (value,); categorical: the choices
    low: float = 0.0
    high: float = 0.0
    q: Optional[float] = None

    @property
    def fixed(self) -> bool:
        return self.kind == "constant"


@dataclass
class Sweep:
    """A validated sweep file plus the command-line overrides applied to every trial."""

    path: str
    name: str  # the study name
    method: str
    metric: str
    goal: str  # minimize | maximize
    params: dict[str, Param]  # in file order, constants included
    overrides: list[str] = field(default_factory=list)
    run_cap: Optional[int] = None
    raw: dict = field(default_factory=dict)  # the file as read
    frontier: Optional[str] = None  # the grid parameter walked up per point (OWN_KEYS), ascending

    @property
    def swept(self) -> dict[str, Param]:
        return {k: p for k, p in self.params.items() if not p.fixed}

    @property
    def direction(self) -> str:
        return "minimize" if self.goal == "minimize" else "maximize"

    @property
    def worst(self) -> float:
        """The value of an exploded trial: the worst there is."""
        return math.inf if self.goal == "minimize" else -math.inf

    def settings(self) -> dict:
        """What a study must have been created with to be resumed by this sweep."""
        return {"method": self.method, "metric": self.metric, "goal": self.goal,
                "parameters": self.raw.get("parameters"), "overrides": list(self.overrides)}


def _fail(path: str, what: str) -> SweepError:
    return SweepError(f"{path}: {what}".splitlines()[0])


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_param(path: str, name: str, spec: Any) -> Param:
    """One `parameters:` entry -> Param, or SweepError naming what is wrong with it."""
    where = f"parameter '{name}'"
    if not isinstance(spec, dict):
        raise _fail(path, f"{where} must be a mapping such as {{values: [...]}} or {{value: ...}}")
    if "parameters" in spec:
        raise _fail(path, f"{where}: nested parameters are not supported; use dotted names such as 'model.L'")
    dist = spec.get("distribution")
    if dist is None:
        if "value" in spec:
            dist = "constant"
        elif "values" in spec:
            dist = "categorical"
        elif "min" in spec and "max" in spec:
            # W&B's rule: integer bounds mean int_uniform, otherwise uniform.
            dist = "int_uniform" if isinstance(spec["min"], int) and isinstance(spec["max"], int) else "uniform"
        else:
            raise _fail(path, f"{where} needs 'value', 'values' or 'distribution' with 'min'/'max'")
    if dist in UNSUPPORTED_DISTRIBUTIONS:
        raise _fail(path, f"{where}: distribution '{dist}' has no Optuna counterpart; "
                          f"use one of {', '.join(DISTRIBUTION_KEYS)}")
    if dist not in DISTRIBUTION_KEYS:
        raise _fail(path, f"{where}: unknown distribution '{dist}'{did_you_mean(str(dist), DISTRIBUTION_KEYS)}; "
                          f"known: {', '.join(DISTRIBUTION_KEYS)}")
    allowed = DISTRIBUTION_KEYS[dist] | {"distribution"}
    for key in spec:
        if key not in allowed:
            raise _fail(path, f"{where}: unknown key '{key}'{did_you_mean(key, allowed)} for distribution '{dist}'")
    missing = DISTRIBUTION_KEYS[dist] - set(spec)
    if missing:
        raise _fail(path, f"{where}: distribution '{dist}' needs {', '.join(sorted(missing))}")
    if dist == "constant":
        values = (spec["value"],)
    elif dist == "categorical":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise _fail(path, f"{where}: 'values' must be a non-empty list")
        if len(set(map(json.dumps, values))) != len(values):
            raise _fail(path, f"{where}: 'values' lists a value twice")
        values = tuple(values)
    else:
        return _parse_range(path, where, name, dist, spec)
    for v in values:
        if v is None:
            raise _fail(path, f"{where}: null is not passed through by wandb agent (it becomes 'None'); "
                              "switch a stabilizer off with the 'ablate' parameter")
        if not isinstance(v, (str, int, float, bool)):
            raise _fail(path, f"{where}: value {v!r} is not a string, number or boolean")
    return Param(name, dist, values=values)


def _parse_range(path: str, where: str, name: str, dist: str, spec: dict) -> Param:
    low, high, q = spec["min"], spec["max"], spec.get("q")
    if not (_is_number(low) and _is_number(high)):
        raise _fail(path, f"{where}: min and max must be numbers, got {low!r} and {high!r}")
    if dist == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
        raise _fail(path, f"{where}: int_uniform needs integer min and max, got {low!r} and {high!r}")
    if not low < high:
        raise _fail(path, f"{where}: min must be < max, got min={low} max={high}")
    if dist == "log_uniform_values" and low <= 0:
        raise _fail(path, f"{where}: log_uniform_values needs min > 0, got {low}")
    if dist == "q_uniform" and not (_is_number(q) and q > 0):
        raise _fail(path, f"{where}: q must be a number > 0, got {q!r}")
    if dist == "log_uniform":  # W&B's old form: bounds are natural logs of the values
        dist, low, high = "log_uniform_values", math.exp(low), math.exp(high)
    return Param(name, dist, low=low, high=high, q=q)


def _check_top_level(path: str, raw: dict) -> None:
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise _fail(path, f"unknown sweep key '{key}'{did_you_mean(str(key), TOP_LEVEL_KEYS)}; "
                              f"known: {', '.join(TOP_LEVEL_KEYS)}")
    method = raw.get("method")
    if method not in METHODS:
        raise _fail(path, f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(raw.get("parameters"), dict) or not raw["parameters"]:
        raise _fail(path, "'parameters' must be a non-empty mapping of config keys")
    command = raw.get("command")
    if command is not None:
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise _fail(path, "'command' must be a list of strings")
        if "train" not in command or "${args_no_hyphens}" not in command:
            raise _fail(path, "'command' must run 'painn-ablate train ${args_no_hyphens}' "
                              "(e.g. [${env}, painn-ablate, train, ${args_no_hyphens}])")
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise _fail(path, f"run_cap must be a positive integer, got {run_cap!r}")
    if run_cap is not None and method == "grid":
        raise _fail(path, "run_cap applies to random and bayes sweeps; a grid runs every combination")
    for key in ("name", "program", "project", "entity", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise _fail(path, f"'{key}' must be a string")
    if "name" in raw and not re.fullmatch(r"[A-Za-z0-9_.+-]+", raw["name"]):
        raise _fail(path, f"name {raw['name']!r} may hold only letters, digits and _.+-")


def _parse_metric(path: str, raw: dict) -> tuple[str, str]:
    metric = raw.get("metric")
    if metric is None:
        if raw["method"] == "bayes":
            raise _fail(path, "a bayes sweep needs 'metric: {name: ..., goal: minimize}'")
        return DEFAULT_METRIC, "minimize"
    if not isinstance(metric, dict) or "name" not in metric:
        raise _fail(path, "'metric' must be a mapping with 'name' (and 'goal')")
    for key in metric:
        if key not in ("name", "goal", "target", "impute"):
            raise _fail(path, f"unknown metric key '{key}'{did_you_mean(str(key), ('name', 'goal', 'target', 'impute'))}")
    name, goal = metric["name"], metric.get("goal", "minimize")
    if name not in METRICS:
        raise _fail(path, f"unknown metric '{name}'{did_you_mean(str(name), METRICS)}; known: {', '.join(METRICS)}")
    if goal not in ("minimize", "maximize"):
        raise _fail(path, f"metric goal must be minimize or maximize, got {goal!r}")
    return name, goal


def _check_names(path: str, params: dict[str, Param], overrides: list[str]) -> None:
    keys = set(all_keys())
    for name in params:
        if name in MANAGED_KEYS:
            raise _fail(path, f"parameter '{name}' is set by the sweep for each trial; remove it")
        if name != "model" and name not in keys:
            raise _fail(path, f"parameter '{name}': unknown config key{did_you_mean(name, [*keys, 'model'])}")
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in params and not params[key].fixed:
            raise _fail(path, f"override '{item}' sets the swept parameter '{key}'; remove it or fix it in the file")
        if key in MANAGED_KEYS:
            raise _fail(path, f"override '{item}': '{key}' is set by the sweep for each trial")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice, on lines {seen[key] + 1} and {key_node.start_mark.line + 1}",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_sweep_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file '{path}' does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as exc:
        raise _fail(str(path), exc.problem) from None
    except yaml.YAMLError as exc:
        raise _fail(str(path), f"not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise _fail(str(path), "a sweep file is a mapping with method, parameters, ...")
    return raw


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read and validate a sweep file, composing its configs; SweepError on any problem."""
    raw = read_sweep_file(path)
    where = str(path)
    _check_top_level(where, raw)
    metric, goal = _parse_metric(where, raw)
    params = {str(name): parse_param(where, str(name), spec) for name, spec in raw["parameters"].items()}
    overrides = list(overrides)
    _check_names(where, params, overrides)
    sweep = Sweep(path=where, name=raw.get("name") or Path(path).stem, method=raw["method"], metric=metric,
                  goal=goal, params=params, overrides=overrides, run_cap=raw.get("run_cap"), raw=raw,
                  frontier=raw.get("frontier"))
    if sweep.method == "grid":
        for name, p in sweep.swept.items():
            if p.kind != "categorical":
                raise _fail(where, f"parameter '{name}': a grid needs 'values' or 'value', not a '{p.kind}' range")
    _check_frontier(where, sweep)
    from painn_ablate.data.datasets import DataError, check_dir  # torch loads only where data or trials are touched

    composed: dict[str, str] = {}  # a grid point's config (less its name) -> the point, to find duplicates
    points = validation_points(sweep)
    base: list = []  # (point, config) of the first point, which the others of a large grid vary one key of
    for params_point in points:
        shown = ", ".join(f"{k}={v}" for k, v in params_point.items() if k in sweep.swept)
        try:
            cfg = _vary(sweep, base, params_point) if base else trial_config(sweep, params_point)
            if not base and len(points) > 1:
                base[:] = [params_point, cfg]
            if cfg.data.dir:
                check_dir(cfg.data.dir)  # before any study exists: a dry run and a real run fail alike
        except (ConfigError, DataError) as exc:
            raise _fail(where, f"{exc} (at {shown or 'the fixed settings'})") from None
        if sweep.method == "grid":
            key = json.dumps({k: v for k, v in flatten(cfg).items() if k not in ("name", "ablate")}, sort_keys=True,
                             default=str)
            if key in composed:
                raise _fail(where, f"grid points {composed[key]} and {shown} compose to the same config; "
                                   "remove one of them")
            composed[key] = shown
    return sweep


def _vary(sweep: Sweep, base: list, point: dict[str, Any]):
    """The config of `point` from the first point's (`base`), where they differ in one plain config key: that
    key updated in a copy and the copy validated, ~100x cheaper than composing (a preset or ablation, and
    anything the update refuses, is composed in full, so its error reads as compose words it)."""
    from omegaconf import OmegaConf

    from painn_ablate.core.config import validate

    base_point, base_cfg = base
    changed = [k for k in point if point[k] != base_point.get(k)]
    if len(changed) != 1 or changed[0] in ("model", "ablate"):
        return trial_config(sweep, point)
    cfg = base_cfg.copy()
    try:
        OmegaConf.update(cfg, changed[0], point[changed[0]], merge=False)
        validate(cfg)
    except Exception:  # noqa: BLE001 - composing again gives the one-line ConfigError
        return trial_config(sweep, point)
    cfg.name = trial_label(sweep, point)
    return cfg


def _check_frontier(where: str, sweep: Sweep) -> None:
    name = sweep.frontier
    if name is None:
        return
    p = sweep.swept.get(str(name))
    if sweep.method != "grid" or p is None:
        raise _fail(where, f"frontier: {name!r} must name a swept parameter of a grid "
                           f"(swept here: {', '.join(sweep.swept) or 'none'})")
    if not all(_is_number(v) for v in p.values) or list(p.values) != sorted(set(p.values)):
        raise _fail(where, f"frontier: the values of '{name}' must be numbers in ascending order, got {list(p.values)}")


# ----------------------------------------------------------------------------- points, labels, configs


def grid_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Every combination of the swept values, in file order (the last parameter varies fastest)."""
    points: list[dict[str, Any]] = [{}]
    for name, p in sweep.swept.items():
        points = [{**point, name: v} for point in points for v in p.values]
    return points


def representative(p: Param) -> Any:
    return p.values[0] if p.values else p.low


FULL_CHECK_MAX = 500  # grids up to this size are composed point by point before any trial runs


def validation_points(sweep: Sweep) -> list[dict[str, Any]]:
    """The points `load_sweep` composes: every point of a grid of up to FULL_CHECK_MAX points; of a larger
    grid (composing 10,000 points takes minutes), and of a random or bayes sweep, each value of each
    parameter with the others at their first value (`check_points`): every value is checked, and two
    values of one parameter that compose to the same config are still found."""
    if sweep.method == "grid" and math.prod(len(p.values) for p in sweep.swept.values()) <= FULL_CHECK_MAX:
        return grid_points(sweep)
    return check_points(sweep, every_value=True)


def check_points(sweep: Sweep, every_value: bool = False) -> list[dict[str, Any]]:
    """The parameter points composed before any trial runs: the whole grid, or for random and
    bayes each categorical value and both ends of each range, the others at a first value
    (every_value: that for a grid too)."""
    if sweep.method == "grid" and not every_value:
        return grid_points(sweep)
    base = {name: representative(p) for name, p in sweep.swept.items()}
    points = [base]
    for name, p in sweep.swept.items():
        ends = p.values[1:] if p.values else (p.high,)
        points += [{**base, name: v} for v in ends]
    return points


def trial_overrides(sweep: Sweep, params: dict[str, Any]) -> list[str]:
    """Overrides in the order they win: sweep defaults, fixed values, trial parameters, command line.

    The W&B project/entity of the file are the trials' too, as they are under `wandb agent`.
    """
    defaults = ["tracking.progress=false"]
    defaults += [f"tracking.{key}={sweep.raw[key]}" for key in ("project", "entity") if key in sweep.raw]
    fixed = [f"{name}={format_override(p.values[0])}" for name, p in sweep.params.items() if p.fixed]
    swept = [f"{name}={format_override(params[name])}" for name in sweep.swept]
    return [*defaults, *fixed, *swept, *sweep.overrides]


def trial_config(sweep: Sweep, params: dict[str, Any], run_dir: Optional[Path] = None,
                 label: Optional[str] = None):
    """The full config of one trial (ConfigError if the parameters do not compose)."""
    cfg = compose(trial_overrides(sweep, params))
    cfg.name = label or trial_label(sweep, params)
    cfg.out = str(run_dir) if run_dir is not None else None
    cfg.tracking.group = sweep.name
    cfg.tracking.tags = [*cfg.tracking.tags, f"sweep:{sweep.name}"]
    return cfg


def trial_label(sweep: Sweep, params: dict[str, Any]) -> str:
    """A readable name from the categorical parameters: the experiment's slug (config.experiment_slug), then
    the other swept values and the seed: `r2_full-s_msg-seed1`, `original-L8-lr0.01-sum-seed0`."""
    value = lambda name, default=None: params.get(name, sweep.params[name].values[0]  # noqa: E731
                                                  if name in sweep.params and sweep.params[name].fixed else default)
    preset, ablate = value("model"), value("ablate", "none")
    parts = []
    if preset is not None or ablate != "none":
        parts.append(experiment_slug(preset or "original", ablate))
    for name, p in sweep.swept.items():
        if name in ("model", "ablate", "seed") or p.kind != "categorical":
            continue
        v = params[name]
        parts.append(str(v) if isinstance(v, str) else f"{name.rsplit('.', 1)[-1]}{format_override(v)}")
    if "seed" in params:
        parts.append(f"seed{params['seed']}")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts)) or "trial"


# ----------------------------------------------------------------------------- what every engine does with a run


def pick_best(candidates: Iterable[tuple[T, Any, Optional[float]]], goal: str) -> Optional[T]:
    """The best of (item, status, value) by value, for both engines: only a stable trial with a finite value
    can be best (a diverged or exploded trial never is). goal: minimize | maximize."""
    scored = [(item, value) for item, status, value in candidates
              if status == Status.STABLE and value is not None and math.isfinite(value)]
    if not scored:
        return None
    return (min if goal == "minimize" else max)(scored, key=lambda pair: pair[1])[0]


def result_attrs(summary: RunSummary) -> dict[str, Any]:
    """The trial's user attributes from a run summary; metric names as in METRICS."""
    divergence = summary.get("divergence") or {}
    attrs: dict[str, Any] = {"status": summary["status"], "first_nonfinite": summary["first_nonfinite"],
                             "first_divergence": summary.get("first_divergence"),
                             "episodes": divergence.get("episodes"), "recovered": divergence.get("recovered"),
                             "spikes": divergence.get("spikes"), "spike_steps": divergence.get("spike_steps"),
                             "steps_to_recover": divergence.get("steps_to_recover"),
                             "sustained": divergence.get("sustained"),
                             PHASE_KEY: (summary.get("first_blow_up") or {}).get("phase"),
                             "training_blow_up": summary.get("training_blow_up"),
                             "initial_val_pos_mse": summary.get("val_initial"),
                             "final_val_pos_mse": (summary.get("val_last") or {}).get("pos_mse"),
                             "steps_completed": summary["steps_completed"],
                             "wall_seconds": round(summary["wall_seconds"], 2),
                             "early_warning_step": (summary.get("early_warning") or {}).get("step"),
                             "pruned_step": None, "data_fingerprint": summary.get("data_fingerprint"),
                             "code_version": summary.get("code_version"), "started_at": summary.get("started_at")}
    for metric, (split, key) in METRICS.items():
        attrs[metric] = (summary.get(split) or {}).get(key)
    stopped = summary.get("stopped_early")
    if stopped and stopped.get("reason") == "early_warning" and summary["status"] == Status.STABLE:
        attrs.update(status=Status.PRUNED.value, pruned_step=stopped["step"])
    return attrs


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Hold off SIGINT and SIGTERM (in the main thread, the only one that may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run with n torch threads (None: leave them), and give the process its setting back."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_run_options(sweep: Sweep, n_trials: Optional[int] = None, threads: Optional[int] = None) -> None:
    """The options every engine takes, checked alike: SweepError naming the bad one."""
    if n_trials is not None and (sweep.method == "grid" or n_trials < 1):
        raise SweepError("--n-trials applies to random and bayes sweeps and must be >= 1; "
                         "a grid runs every combination")
    if threads is not None and threads < 1:
        raise SweepError(f"--threads must be >= 1, got {threads}")


def trial_budget(sweep: Sweep, n_trials: Optional[int] = None, grid_size: Optional[int] = None) -> int:
    """How many trials a sweep runs, alike in every engine: a grid every point (`grid_size` as a study
    recorded it, else counted); random and bayes --n-trials, else the file's run_cap, else DEFAULT_N_TRIALS."""
    if sweep.method == "grid":
        return grid_size if grid_size is not None else len(grid_points(sweep))
    return n_trials or sweep.run_cap or DEFAULT_N_TRIALS


def check_resume(sweep: Sweep, where: str, old: Optional[dict], old_name: Optional[str] = None) -> None:
    """A study or folder resumes only the sweep it was started with (`Sweep.settings`), alike in every
    engine: else SweepError naming what changed, what it was then, and the way out."""
    new = json.loads(json.dumps(sweep.settings()))
    old = old or {}
    differs = [k for k in new if old.get(k) != new[k]]
    if old_name is not None and old_name != sweep.name:
        differs = differs or ["name"]
    if differs:
        raise SweepError(f"{where} was started with other {', '.join(differs)} "
                         f"({'; '.join(_changes(old, new, differs))[:300]}); resume it with the same "
                         "file and overrides, or choose another --out")


def _changes(old: dict, new: dict, keys: list[str]) -> list[str]:
    """What changed, in words: each parameter (then -> now), the overrides added (+) and removed (-)."""
    changes = []
    for key in keys:
        was, now = old.get(key), new.get(key)
        if key == "parameters" and isinstance(was, dict) and isinstance(now, dict):
            for name in dict.fromkeys([*was, *now]):
                if was.get(name) != now.get(name):
                    changes.append(f"parameter '{name}': {json.dumps(was[name]) if name in was else 'absent'} "
                                   f"-> {json.dumps(now[name]) if name in now else 'removed'}")
        elif key == "overrides" and isinstance(was, list) and isinstance(now, list):
            changes.append("overrides: " + " ".join([*(f"-{o}" for o in was if o not in now),
                                                     *(f"+{o}" for o in now if o not in was)]))
        else:
            changes.append(f"{key}: then {json.dumps(was)}, now {json.dumps(now)}")
    return changes


def default_out(path: str | Path) -> Path:
    return Path("sweeps_out") / Path(path).stem


def warm_data_cache(sweep: Sweep) -> None:
    """Generate each data set the trials need once, here, before workers race to make it."""
    from painn_ablate.data.datasets import load_dataset

    seen, data_seen = set(), set()
    for point in check_points(sweep) if sweep.method != "grid" else grid_points(sweep):
        # only the data.* parameters change a trial's data: compose one point per combination of them
        data_params = json.dumps({k: v for k, v in point.items() if k.startswith("data.")}, sort_keys=True,
                                 default=str)
        if data_params in data_seen:
            continue
        data_seen.add(data_params)
        data = trial_config(sweep, point).data
        key = json.dumps(dict(data), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            load_dataset(data)


