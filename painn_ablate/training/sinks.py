"""Where a run's records go: one `Recorder` fans each record out to its sinks.

The training loop writes every record once, to the Recorder; the sinks (local
parquet files, the console progress bar, Weights & Biases) each read the same
records, so a metric has one name everywhere: `loss_pos` in the parquet file is
`loss_pos` in W&B and in the DataFrame.

Local files in the run directory, each a parquet *dataset* (a folder of parts)
that `pandas.read_parquet(path)` reads whole without this package:

    metrics.parquet      step, loss, loss_pos, loss_vel, lr, grad_norm, grad_norm_clipped, step_time,
                         val_pos_mse, val_vel_mse
    layer_stats.parquet  step, layer, block, stat, value      (long format)
    events.parquet       step, kind (EVENT_KINDS), layer, block, tensor, phase (the pass), value, detail, blow_up_phase
                         (kind: nonfinite | divergence | early_warning; for a divergence, tensor is the
                         statistic that crossed and detail the criterion)

Parts are written to a hidden temporary name and renamed, so a run killed at
any moment leaves only complete parts behind.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from painn_ablate.core import files, runfolder
from painn_ablate.core.outcome import METRIC_SPLITS, PHASE_KEY, RunSummary, metric_name, outcome_columns

log = logging.getLogger(__name__)

METRICS = ("loss", "loss_pos", "loss_vel", "lr", "grad_norm", "grad_norm_clipped", "step_time",
           "val_pos_mse", "val_vel_mse")  # val_* only at validation steps (null elsewhere)
METRICS_SCHEMA = pa.schema([("step", pa.int64())] + [(name, pa.float64()) for name in METRICS])
LAYER_STATS_SCHEMA = pa.schema([("step", pa.int64()), ("layer", pa.int64()), ("block", pa.string()),
                                ("stat", pa.string()), ("value", pa.float64())])
EVENTS_SCHEMA = pa.schema([("step", pa.int64()), ("kind", pa.string()), ("layer", pa.int64()),
                           ("block", pa.string()), ("tensor", pa.string()), ("phase", pa.string()),
                           ("value", pa.float64()), ("detail", pa.string()), (PHASE_KEY, pa.string())])
# recovered: an episode closed (step: its first quiet step, value: steps to recover)
EVENT_KINDS = ("nonfinite", "divergence", "recovered", "early_warning")
# Flat W&B summary keys (beside `status` and the 0/1 keys of outcome.outcome_columns): the first
# blow-up's step and layer, and the early warning's lead time in steps (present only when they exist).
# blow_up_phase (outcome.PHASE_KEY): init | training; spikes: the number of blow-up episodes.
FIRST_BLOW_UP_STEP, FIRST_BLOW_UP_LAYER, EARLY_WARNING_LEAD = "first_blow_up_step", "first_blow_up_layer", \
    "early_warning_lead"
SPIKES = "spikes"


def unwritable_reason(folder: Path) -> Optional[str]:
    """Why `folder` cannot be created and written, or None. Creates nothing that stays: it tries a
    temporary folder in the nearest existing ancestor (a read-only mount, /proc, a path under a
    regular file all fail there), before any data loads or any partial result exists."""
    folder = Path(folder).expanduser().absolute()
    ancestor = folder
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=ancestor))
    except OSError as exc:
        return f"cannot write in {ancestor} ({exc.strerror or exc})"
    return None


def read_records(path: Path, columns: Optional[list[str]] = None, filters=None):
    """One parquet dataset of a run (metrics, layer_stats, events) as a DataFrame; a part that cannot be
    read (a disk error, a file edited by hand) is skipped with one warning naming it, the rest returned."""
    import pandas as pd

    path = Path(path)
    try:
        return pd.read_parquet(path, columns=columns, filters=filters)
    except Exception:  # noqa: BLE001 - find the bad part(s) below; pyarrow raises several types
        if not path.is_dir():
            raise
    frames = []
    for part in sorted(path.glob("part-*.parquet")):
        try:
            frames.append(pd.read_parquet(part, columns=columns, filters=filters))
        except Exception as exc:  # noqa: BLE001
            log.warning("skipping unreadable record part %s (%s)", part, " ".join(str(exc).split())[:120])
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def write_json_atomic(path: Path, obj: Any) -> None:
    files.write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


class Sink:
    """Receives a run's records; every method is optional."""

    def start(self, run_dir: Path, cfg, flat_config: dict) -> None: ...

    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def layer_stats(self, step: int, rows: list[tuple[int, str, str, float]]) -> None: ...

    def event(self, event: dict) -> None: ...

    def flush(self) -> None: ...

    def finish(self, summary: RunSummary) -> None: ...


class Recorder(Sink):
    """The one writer: forwards each record to every sink; a failing optional sink is dropped."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = list(sinks)

    def _each(self, method: str, *args) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # a sink must never break a run; local parquet is never optional
                if isinstance(sink, ParquetSink):
                    raise
                log.warning("%s failed in %s (%s); continuing without it", type(sink).__name__, method, exc)
                self.sinks.remove(sink)

    def start(self, run_dir, cfg, flat_config):
        self._each("start", run_dir, cfg, flat_config)

    def metrics(self, step, values):
        self._each("metrics", step, values)

    def layer_stats(self, step, rows):
        self._each("layer_stats", step, rows)

    def event(self, event):
        self._each("event", event)

    def flush(self):
        self._each("flush")

    def finish(self, summary: RunSummary) -> None:
        self._each("finish", summary)


class _PartWriter:
    """Append-only parquet dataset: a folder of complete, atomically renamed parts."""

    def __init__(self, folder: Path, schema: pa.Schema):
        self.folder = folder
        self.schema = schema
        self.rows: list[dict] = []
        self.parts = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._write(pa.Table.from_pylist([], schema=schema))  # empty but readable from the first moment

    def add(self, row: dict) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        if self.rows:
            self._write(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def _write(self, table: pa.Table) -> None:
        files.atomic(self.folder / f"part-{self.parts:06d}.parquet", lambda tmp: pq.write_table(table, tmp))
        self.parts += 1


class ParquetSink(Sink):
    """metrics / layer_stats / events as parquet datasets in the run directory."""

    def start(self, run_dir, cfg, flat_config):
        self.metrics_w = _PartWriter(run_dir / runfolder.METRICS, METRICS_SCHEMA)
        self.stats_w = _PartWriter(run_dir / runfolder.LAYER_STATS, LAYER_STATS_SCHEMA)
        self.events_w = _PartWriter(run_dir / runfolder.EVENTS, EVENTS_SCHEMA)

    def metrics(self, step, values):
        self.metrics_w.add({"step": step, **{k: float(v) for k, v in values.items()}})

    def layer_stats(self, step, rows):
        for layer, block, stat, value in rows:
            self.stats_w.add({"step": step, "layer": layer, "block": block, "stat": stat, "value": value})

    def event(self, event):
        self.events_w.add({name: event.get(name) for name in EVENTS_SCHEMA.names})

    def flush(self):
        for w in (self.metrics_w, self.stats_w, self.events_w):
            w.flush()

    def finish(self, summary: RunSummary) -> None:
        self.flush()


class ProgressSink(Sink):
    """Console progress bar: loss, step rate and the max ||mu|| of each layer."""

    def __init__(self, total: int, desc: str = ""):
        self.total, self.desc = total, desc

    def start(self, run_dir, cfg, flat_config):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc=self.desc, unit="step", dynamic_ncols=True, leave=False,
                        disable=None)  # None: off when stderr is not a terminal
        self.mu: dict[int, float] = {}
        self.done = 0

    def metrics(self, step, values):
        self.bar.update(step + 1 - self.done)
        self.done = step + 1
        post = {"loss": f"{values.get('loss', float('nan')):.3g}"}
        if self.mu:
            post["|mu|max"] = "/".join(f"{v:.3g}" for _, v in sorted(self.mu.items()))
        self.bar.set_postfix(post, refresh=False)

    def layer_stats(self, step, rows):
        self.mu = {l: v for l, b, s, v in rows if b == "mixing" and s == "mu_norm_max"}

    def finish(self, summary: RunSummary) -> None:
        self.bar.close()


def stat_key(layer: int, block: str, stat: str) -> str:
    """The wide name of one per-layer statistic, alike in W&B and in DataFrames: layer5/mixing/mu_norm_max."""
    return f"layer{layer}/{block}/{stat}"


def wandb_mode() -> str:
    """The one answer to "is W&B online?", W&B's own convention: WANDB_MODE wins; otherwise online only
    with credentials, an API key in the environment or W&B's entry in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") or _netrc_key() else "offline"


def wandb_online() -> bool:
    return wandb_mode() == "online"


def _netrc_key() -> bool:
    import netrc

    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbSink(Sink):
    """One W&B run per training run: flattened config, history, summary, events table, ||mu|| heat map.

    The run's files live under `<run_dir>/wandb/`; offline runs sync later with `wandb sync`.
    Any failure here is turned into a warning by the Recorder, and the run goes on.
    """

    def start(self, run_dir, cfg, flat_config):
        import wandb

        self.wandb = wandb
        tags = [f"preset:{cfg.model.preset}", *([f"ablate:{cfg.ablate}"] if cfg.ablate != "none" else []),
                *cfg.tracking.tags]
        if wandb.run is not None and wandb.run.sweep_id:
            # Under `wandb.agent` the trial's run is the one the agent's function started (it holds the
            # sweep's parameters, locked): log into it; a second run would be outside the sweep.
            self.run = wandb.run
            self.run.config.update(flat_config, allow_val_change=True)
            self.run.name, self.run.tags = cfg.name, tuple(tags)
        else:
            self.run = wandb.init(
                project=cfg.tracking.project, entity=cfg.tracking.entity, group=cfg.tracking.group,
                name=cfg.name, tags=tags, config=flat_config, dir=str(run_dir), mode=wandb_mode(),
                reinit="create_new", settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
        self.events: list[dict] = []
        self.mu_rows: list[tuple[int, int, float]] = []  # (step, layer, max ||mu|| after mixing)

    def metrics(self, step, values):
        self.run.log(dict(values), step=step)

    def layer_stats(self, step, rows):
        self.run.log({stat_key(l, b, s): v for l, b, s, v in rows}, step=step)
        self.mu_rows += [(step, l, v) for l, b, s, v in rows if b == "mixing" and s == "mu_norm_max"]

    def event(self, event):
        self.events.append({name: event.get(name) for name in EVENTS_SCHEMA.names})
        if event.get("kind") in ("nonfinite", "divergence") and len(self.events) == 1:
            self.run.summary["first_event"] = self.events[0]

    def finish(self, summary: RunSummary) -> None:
        wandb = self.wandb
        for key in ("status", "steps_completed", "first_nonfinite", "nonfinite_events", "first_divergence",
                    "divergence", "early_warning", "stopped_early", "best_step", "wall_seconds", "ms_per_step",
                    "run_dir", "data_fingerprint", "code_version", "started_at"):
            self.run.summary[key] = summary.get(key)
        # numbers a dashboard can count and plot per experiment (W&B keeps no None and shows no nested keys)
        self.run.summary.update({k: int(v) for k, v in outcome_columns(summary.get("status")).items()})
        first = summary.get("first_blow_up") or {}
        div = summary.get("divergence") or {}
        flat = {FIRST_BLOW_UP_STEP: first.get("step"), FIRST_BLOW_UP_LAYER: first.get("layer"),
                PHASE_KEY: first.get("phase"), EARLY_WARNING_LEAD: summary.get("early_warning_lead"),
                SPIKES: div.get("episodes")}
        self.run.summary.update({k: v for k, v in flat.items() if v is not None})
        self.run.tags = (*self.run.tags, f"outcome:{summary.get('status')}")  # filter runs by outcome in the UI
        for split in METRIC_SPLITS:
            for metric, value in (summary.get(split) or {}).items():
                self.run.summary[metric_name(split, metric)] = value
        if self.events:
            columns = list(EVENTS_SCHEMA.names)
            self.run.log({"events": wandb.Table(columns=columns, data=[[e[c] for c in columns] for e in self.events])})
        if self.mu_rows:
            import matplotlib.pyplot as plt

            fig = mu_heatmap(self.mu_rows, summary.get("name", ""))
            self.run.log({"mu_norm_max_heatmap": wandb.Image(fig)})
            plt.close(fig)
        self.run.finish()


def mu_heatmap(rows: list[tuple[int, int, float]], title: str):
    """Layer x step heat map of log10 max ||mu|| after mixing, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = sorted({s for s, _, _ in rows})
    layers = sorted({l for _, l, _ in rows})
    grid = np.full((len(layers), len(steps)), np.nan)
    col = {s: k for k, s in enumerate(steps)}
    for s, l, v in rows:
        grid[l - 1, col[s]] = np.log10(v) if v > 0 and np.isfinite(v) else np.nan
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.5 * len(layers)))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="magma", interpolation="nearest",
                   extent=(steps[0], steps[-1] + 1, 0.5, len(layers) + 0.5))
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax.set_title(f"log10 max ||mu|| after mixing {title}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
