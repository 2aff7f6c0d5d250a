"""`painn-ablate dashboard`: a W&B workspace for one sweep, built as code with wandb-workspaces.

Laid out for the question the sweeps ask, top to bottom; runs are filtered to the sweep
(`tracking.group` = the study name) and grouped by experiment (`model.preset`, `ablate`),
so every panel shows one line or bar per experiment with its seeds aggregated:

    Outcomes          bar: outcome.outcome_columns (exploded, diverged, transient, blew_up, sustained; 0/1 per run,
                      summed per experiment)
    Accuracy          bar: val_pos_mse, test_pos_mse (mean per experiment, sd band);
                      line: val_pos_mse over steps
    Per-layer state   line: layer{l}/mixing/mu_norm_max for every layer l (log y); the same for
                      q_absmax; the mixing feedback terms layer{l}/mixing/qmu_absmax and
                      layer{l}/mixing/mu_term_norm_max (`--experiment` narrows the runs to one)
    First blow-up     scatter: first_blow_up_step against first_blow_up_layer, one point per run;
                      bar: early_warning_lead (steps from the early warning to the blow-up)
    Sweep             parallel coordinates over the swept keys and the metric; parameter
                      importance for the metric

Every key is one the runs log (train and tracking.WandbSink name them; the tests read them
back from offline runs with `wandb leet inspect`). Online (W&B credentials) the workspace
is saved and its URL printed. Offline it writes the same workspace's specification, the
library's own serialised view model, to `<sweep folder>/dashboard.json`, to inspect or to
push later (`push_spec`).
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from painn_ablate.core import files
from painn_ablate.core.config import ConfigError, experiment_name, parse_experiment
from painn_ablate.core.errors import DashboardError
from painn_ablate.core.outcome import Status, metric_name, outcome_columns
from painn_ablate.training.sinks import EARLY_WARNING_LEAD, FIRST_BLOW_UP_LAYER, FIRST_BLOW_UP_STEP, stat_key, wandb_online

SPEC_FILE = "dashboard.json"
GROUP_KEYS = ("model.preset", "ablate")  # one experiment: a preset and its ablation (config.experiment_name)
OUTCOME_KEYS = tuple(outcome_columns(Status.STABLE))  # 0/1 summary keys of each run
MSE_KEYS = (metric_name("val", "pos_mse"), metric_name("test", "pos_mse"))
STATE_STATS = ("mu_norm_max", "q_absmax")  # after each mixing block
FEEDBACK_STATS = ("qmu_absmax", "mu_term_norm_max")  # the mixing block's coupling and self-gating terms



@dataclass
class SweepInfo:
    """What the layout needs from a sweep's study."""

    study: str
    project: str
    entity: Optional[str]
    metric: str
    swept: list[str]  # the config keys the sweep varies, in file order
    n_layers: int


def sweep_info(target: str, study: Optional[str] = None) -> SweepInfo:
    """Read the study of a sweep folder, its study.db or a storage URL (studies.open_studies)."""
    from painn_ablate.sweep.studies import open_studies

    studies = open_studies(target, study)
    if len(studies) != 1:
        names = ", ".join(s.study_name for s in studies)
        raise DashboardError(f"{target} holds {len(studies)} studies ({names}); choose one with --study")
    s = studies[0]
    raw = s.user_attrs.get("sweep_file") or {}
    settings = s.user_attrs.get("settings") or {}
    params = raw.get("parameters") or settings.get("parameters") or {}
    swept = [k for k, spec in params.items() if not (isinstance(spec, dict) and set(spec) == {"value"})]
    depths = [t.params.get("model.L") for t in s.get_trials(deepcopy=False)]
    fixed = params.get("model.L", {}).get("value") if isinstance(params.get("model.L"), dict) else None
    given = [o.split("=", 1)[1] for o in settings.get("overrides") or [] if o.startswith("model.L=")]
    depths = [int(d) for d in [*depths, fixed, *given] if d is not None]
    from painn_ablate.core.config import ModelConfig

    return SweepInfo(study=s.study_name, project=raw.get("project") or "painn-ablate", entity=raw.get("entity"),
                     metric=settings.get("metric") or metric_name("val", "pos_mse"), swept=swept,
                     n_layers=max(depths) if depths else ModelConfig.L)


def _flat_config(name: str) -> str:
    """The W&B backend path of a flat dotted config key: the runs log `model.L` as one key, which W&B
    stores as {"model.L": {"value": ...}} (wandb-workspaces assumes nested keys unless told)."""
    return f"{name}.value"


def _parallel_coordinates(columns: list[str], metric: str):
    """A parallel-coordinates panel over flat config keys and a summary metric."""
    import wandb_workspaces.reports.v2 as wr

    class FlatParallelCoordinates(wr.ParallelCoordinatesPlot):
        def _to_model(self):
            model = super()._to_model()
            for column, spec in zip(model.config.columns, self.columns):
                if isinstance(spec.metric, wr.Config):
                    column.accessor = f"config:{_flat_config(spec.metric.name)}"
            return model

    return FlatParallelCoordinates(
        title=f"swept keys and {metric}",
        columns=[*(wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in columns),
                 wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric))])


def build(info: SweepInfo, entity: str, project: Optional[str] = None, experiment: Optional[str] = None):
    """The workspace (wandb_workspaces.workspaces.Workspace); experiment: its name or slug (config.parse_experiment)
    to narrow every panel to one experiment."""
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        raise DashboardError("painn-ablate dashboard needs wandb-workspaces: pip install 'painn-ablate[dashboard]'"
                             ) from None
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    layers = range(1, info.n_layers + 1)

    def per_layer(stat: str, title: str):
        return wr.LinePlot(title=title, y=[stat_key(l, "mixing", stat) for l in layers], log_y=True)

    sections = [
        ws.Section(name="Outcomes per experiment", is_open=True, panels=[
            wr.BarPlot(title="runs that blew up (transient, diverged or exploded), sustained, transient, diverged, exploded",
                       metrics=list(OUTCOME_KEYS), groupby_aggfunc="sum", orientation="h")]),
        ws.Section(name="Accuracy per experiment", is_open=True, panels=[
            wr.BarPlot(title="validation and test pos MSE (mean over seeds, sd)", metrics=list(MSE_KEYS),
                       groupby_aggfunc="mean", groupby_rangefunc="stddev"),
            wr.LinePlot(title="validation pos MSE", y=[MSE_KEYS[0]], log_y=True,
                        groupby_aggfunc="mean", groupby_rangefunc="minmax")]),
        ws.Section(name="Per-layer state after mixing", is_open=True, panels=[
            per_layer("mu_norm_max", "max ||mu|| per layer"), per_layer("q_absmax", "max |q| per layer"),
            per_layer("qmu_absmax", "coupling term max |dqmu <mu_V, mu_W>| per layer"),
            per_layer("mu_term_norm_max", "self-gating term max ||dmu mu_W|| per layer")]),
        ws.Section(name="First blow-up", is_open=True, panels=[
            wr.ScatterPlot(title="first blow-up: step and layer, one point per run",
                           x=wr.SummaryMetric(FIRST_BLOW_UP_STEP), y=wr.SummaryMetric(FIRST_BLOW_UP_LAYER)),
            wr.BarPlot(title="early warning's lead (steps before the blow-up)", metrics=[EARLY_WARNING_LEAD],
                       groupby_aggfunc="mean", groupby_rangefunc="minmax")]),
        ws.Section(name="Sweep", is_open=True, panels=[
            _parallel_coordinates(info.swept, info.metric),
            wr.ParameterImportancePlot(with_respect_to=info.metric)]),
    ]
    filters = [expr.Config(_flat_config("tracking.group")) == info.study]
    if experiment:
        preset, ablate = parse_experiment(experiment)
        filters += [expr.Config(_flat_config("model.preset")) == preset,
                    expr.Config(_flat_config("ablate")) == (ablate or "none")]
    return ws.Workspace(
        entity=entity, project=project or info.project,
        name=workspace_name(f"{info.study}" + (f" ({experiment_name(preset, ablate)})" if experiment else "")),
        sections=sections,
        runset_settings=ws.RunsetSettings(groupby=[expr.Config(_flat_config(k)) for k in GROUP_KEYS],
                                          filters=filters),
        settings=ws.WorkspaceSettings(x_axis="Step", max_runs=100))


def workspace_name(text: str) -> str:
    """A name wandb-workspaces accepts: its validator (utils.validators.validate_no_emoji) refuses every symbol
    character (Unicode categories So, Sk, Sm, Sc) and surrogates, which takes in the '+' of add-one-in names:
    `original + alpha` becomes `original plus alpha`; any other symbol becomes '_'."""
    out = []
    for char in text.replace(" + ", " plus ").replace("+", " plus "):
        out.append("_" if unicodedata.category(char).startswith(("So", "Sk", "Sm", "Sc", "Cs")) else char)
    return "".join(out)


def plotted_keys(workspace) -> dict[str, set[str]]:
    """The run keys the panels plot: {"metrics": history or summary keys, "config": config keys}."""
    import wandb_workspaces.reports.v2 as wr

    keys: dict[str, set[str]] = {"metrics": set(), "config": set()}

    def add(metric) -> None:
        if isinstance(metric, wr.Config):
            keys["config"].add(metric.name)
        elif isinstance(metric, (wr.SummaryMetric, wr.Metric)):
            keys["metrics"].add(metric.name)
        elif isinstance(metric, str) and metric not in ("Step", "_step"):
            keys["metrics"].add(metric)

    for section in workspace.sections:
        for panel in section.panels:
            if isinstance(panel, wr.LinePlot):
                for m in panel.y:
                    add(m)
            elif isinstance(panel, wr.BarPlot):
                for m in panel.metrics:
                    add(m)
            elif isinstance(panel, wr.ScatterPlot):
                add(panel.x)
                add(panel.y)
            elif isinstance(panel, wr.ParallelCoordinatesPlot):
                for c in panel.columns:
                    add(c.metric)
            elif isinstance(panel, wr.ParameterImportancePlot):
                add(panel.with_respect_to)
    return keys


def spec(workspace) -> dict:
    """The workspace's serialised view model (what W&B stores), as JSON-ready data."""
    return json.loads(workspace._to_model().model_dump_json(by_alias=True, exclude_none=True))


def write_spec(workspace, folder: Path) -> Path:
    return files.write_text(Path(folder) / SPEC_FILE, json.dumps(spec(workspace), indent=1))


def online() -> bool:
    return wandb_online()


def make(target: str, study: Optional[str] = None, entity: Optional[str] = None, project: Optional[str] = None,
         experiment: Optional[str] = None, out: Optional[str] = None, offline: bool = False) -> tuple[str, str]:
    """Build the sweep's workspace; online save it, offline write its spec. Returns ("url" | "spec", where)."""
    info = sweep_info(target, study)
    if experiment:
        try:
            parse_experiment(experiment)
        except ConfigError as e:
            raise DashboardError(f"--experiment: {e}") from None
    if offline or not online():
        folder = Path(out) if out else Path(target) if Path(target).is_dir() else \
            Path(target).parent if Path(target).is_file() else Path(".")
        try:
            folder.mkdir(parents=True, exist_ok=True)  # --out names where the spec goes; it need not exist yet
        except OSError as exc:
            raise DashboardError(f"--out {folder} cannot be created: {exc.strerror or exc}") from None
        workspace = build(info, entity or info.entity or os.environ.get("WANDB_ENTITY") or "offline", project,
                          experiment)
        return "spec", str(write_spec(workspace, folder))
    import wandb

    workspace = build(info, entity or info.entity or wandb.Api().default_entity, project, experiment)
    return "url", workspace.save().url
