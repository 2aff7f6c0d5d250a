"""Typed configuration: one dataclass schema, named presets, dotlist overrides.

`compose(["model=r2_full", "train.lr=3e-3", "seed=1"])` returns the resolved,
validated config. A preset (`model=<name>`) is applied first, every other
override on top of it, whatever their order on the command line. Bad input
raises `ConfigError` whose message is one line naming the offending key.
"""

from __future__ import annotations

import difflib
import enum
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from painn_ablate.core.errors import ConfigError

# ----------------------------------------------------------------------------- choices
# Settings with fixed choices are enums of the schema, so omegaconf refuses any other value. StrEnum: a
# member is its value (== "sum", str() and f-strings give "sum", json writes "sum").


class Aggregation(enum.StrEnum):
    sum = "sum"  # original PaiNN
    mean = "mean"  # divide by the in-degree |N(i)|


class Backend(enum.StrEnum):
    native = "native"  # torch index_add_
    scatter = "scatter"  # torch_scatter (optional extra)


class System(enum.StrEnum):
    charged = "charged"  # 5 charged particles (EGNN)
    gravity = "gravity"  # softened gravity


class Graph(enum.StrEnum):
    auto = "auto"  # full for charged (knn above 64 particles), knn for gravity
    full = "full"
    knn = "knn"
    radius = "radius"


class Loss(enum.StrEnum):
    pos_vel = "pos_vel"  # MSE of the displacement + MSE of the next velocity
    pos = "pos"  # the displacement only (EGNN's)


class Schedule(enum.StrEnum):
    constant = "constant"  # lr throughout
    cosine = "cosine"  # cosine decay from lr to 0 over the run


# "continue" is a keyword, so these two are made by the functional API: omegaconf finds a member by its name.
# stop: end the run; skip_step: drop the update; continue: keep going
OnNonfinite = enum.StrEnum("OnNonfinite", [(v, v) for v in ("stop", "skip_step", "continue")])
# continue: keep training (a run may recover); stop: end the run
OnDiverged = enum.StrEnum("OnDiverged", [(v, v) for v in ("continue", "stop")])


class Mu0(enum.StrEnum):
    velocity = "velocity"  # mu^(0) = v w^T, a learned lift
    zero = "zero"  # mu^(0) = 0 (the paper; |v| stays in q)


# ----------------------------------------------------------------------------- schema


def _setting(default: Any, kind: str, *, mechanism: Any = None, label: str = "", choices: tuple = ()) -> Any:
    """A field of StabilizerConfig and what kind of setting it is, from which the rest derives:

    kind        gain (a float > 0; 1 is off), scale (a float > 0 or null, null is off: the
                setting of a model.Stabilizer, which the monitor reports as `<key>_frac`),
                switch (a bool) or choice (one of `choices`)
    mechanism   the value `ablate=<key>` switches a mechanism toggle to (R2_full leaves the
                toggles at PaiNN's values); unset for R2_full's own stabilizers
    label       what that switch does, in words, for tables
    """
    return field(default=default, metadata={"kind": kind, "mechanism": mechanism, "label": label,
                                            "choices": choices})


@dataclass
class StabilizerConfig:
    """The stabilizers of the document's R2_full variant, then the mechanism toggles; defaults are all off.

    Off means the exact original PaiNN: g=1, alphas=1 and `None` for every
    saturation scale and clamp. This is the one list of stabilizers: ABLATIONS, the range checks,
    the mechanism toggles and their labels derive from it, and the model's `Stabilizer` modules
    carry the same keys.
    """

    g: float = _setting(1.0, "gain")  # filter gain: W_ij = g * MLP_f(phi(r_ij)) * f_cut(r_ij)
    s_msg: Optional[float] = _setting(None, "scale")  # per-edge message saturation s*tanh(u/s)
    s_mix: Optional[float] = _setting(None, "scale")  # saturation of the mixing MLP outputs
    alpha_inter: float = _setting(1.0, "gain")  # residual scale of the interaction update
    alpha_mix: float = _setting(1.0, "gain")  # residual scale of the mixing update
    C_s: Optional[float] = _setting(None, "scale")  # clip of the aggregated scalar message Delta q
    C_v: Optional[float] = _setting(None, "scale")  # per-feature norm clip of the aggregated Delta mu
    C_q: Optional[float] = _setting(None, "scale")  # clip of the state q after mixing
    C_mu: Optional[float] = _setting(None, "scale")  # per-feature norm clip of the state mu after mixing
    # Mechanism toggles: not in R2_full; they isolate the feedback loop the specification blames.
    # True: q += dqmu * <mu_V, mu_W> (PaiNN); False: the coupling term is dropped
    coupling: bool = _setting(True, "switch", mechanism=False, label="coupling term dropped")
    # saturation of the coupling term alone
    s_coupling: Optional[float] = _setting(None, "scale", mechanism=5.0, label="coupling term saturated at 5")
    # norm saturation of the self-gating term dmu * mu_W alone
    s_gating: Optional[float] = _setting(None, "scale", mechanism=5.0,
                                         label="self-gating term norm-saturated at 5")
    # velocity: mu^(0) = v w^T, a learned lift; zero: mu^(0) = 0 (the paper; |v| stays in q)
    mu0: Mu0 = _setting(Mu0.velocity, "choice", mechanism=Mu0.zero, label="mu^(0) = 0", choices=tuple(Mu0))
    mu0_scale: float = _setting(1.0, "gain")  # multiplies the lift's default init (U(-1, 1)); 1: the default
    # fairchem's PaiNN (src/fairchem/core/models/painn/painn.py): normalisation and fixed scales instead of
    # saturations and clamps. Each is PaiNN at its default; the `fairchem` preset switches all on.
    # True: LayerNorm on q before the message MLP; False: q as it is (PaiNN)
    q_layernorm: bool = _setting(False, "switch")
    # True: the MLPs' activation is SiLU / 0.6 (fairchem's ScaledSiLU, unit variance for unit inputs); False: SiLU
    scaled_silu: bool = _setting(False, "switch")
    vgate_scale: float = _setting(1.0, "gain")  # multiplies the gate x^mu of mu_j in the vector message (1/sqrt(3))
    # True: the vector messages are divided by sqrt(F); False: not (PaiNN)
    vmsg_inv_sqrt_f: bool = _setting(False, "switch")
    # True: the mixing block's <mu_V, mu_W> is divided by sqrt(F); False: not (PaiNN)
    dot_inv_sqrt_f: bool = _setting(False, "switch")
    q_residual_scale: float = _setting(1.0, "gain")  # q <- (q + alpha_inter dq) * this after the interaction (1/sqrt(2))
    mix_dq_scale: float = _setting(1.0, "gain")  # multiplies the mixing block's dq (1/sqrt(2))


STABILIZER_FIELDS = fields(StabilizerConfig)
# The stabilizers whose action the monitor counts (model.Stabilizer), and train.grad_clip, which
# train counts: each one's statistic is `acted_stat(key)`.
ACTING = (*(f.name for f in STABILIZER_FIELDS if f.metadata["kind"] == "scale"), "grad_clip")


def acted_stat(key: str) -> str:
    """The statistic of how often stabilizer `key` acted: `s_msg_frac` (the monitor's stat column,
    W&B's `layer{l}/{block}/s_msg_frac`, a trial table's `act_s_msg_frac`)."""
    return f"{key}_frac"


@dataclass
class ModelConfig:
    preset: str = "original"  # the preset this config started from (set by `model=<name>`)
    F: int = 64  # feature channels
    L: int = 5  # number of interaction + mixing layers
    n_rbf: int = 20  # radial basis functions sin(n pi r / r_cut) / r
    r_cut: float = 10.0  # cosine cutoff radius
    shared_filters: bool = False  # True: one filter MLP for all layers; False: one per layer
    aggregation: Aggregation = Aggregation.sum  # sum: original PaiNN; mean: divide by the in-degree |N(i)|
    # True: the filter also sees the charge product c_i c_j of each edge (EGNN's N-body edge attribute);
    # False: distance only (PaiNN)
    edge_charge: bool = False
    backend: Backend = Backend.native  # native: torch index_add_; scatter: torch_scatter (optional extra)
    # auto: compile when the run is long enough to pay (compile_pays: >= COMPILE_MIN_STEPS steps on cpu or
    # cuda); true: the training forward runs through torch.compile (~0.6x the eager step on CPU, after ~90 s
    # of compiling with a cold inductor cache, ~6 s with a warm one); false: eager. summary.json's `compiled`
    # says what a run did.
    compile: Union[bool, str] = "auto"
    stabilizers: StabilizerConfig = field(default_factory=StabilizerConfig)


@dataclass
class DataConfig:
    system: System = System.charged  # charged: 5 charged particles (EGNN); gravity: softened gravity
    dir: Optional[str] = None  # bring-your-own data: folder with train/val/test .npz
    n_particles: Optional[int] = None  # None: 5 for charged, 100 for gravity
    n_train: int = 3000
    n_val: int = 2000
    n_test: int = 2000
    seed: int = 0  # data seed, independent of the training seed
    graph: Graph = Graph.auto  # auto: full for charged (knn above 64 particles), knn for gravity; full | knn | radius
    k: int = 16  # neighbours per node for graph=knn
    radius: float = 2.0  # neighbour radius for graph=radius
    # Generated data sets, keyed by their parameters. None: $PAINN_ABLATE_CACHE, else
    # $XDG_CACHE_HOME/painn-ablate, else ~/.cache/painn-ablate (one cache whatever the working directory).
    cache_dir: Optional[str] = None


@dataclass
class TrainConfig:
    steps: int = 1500  # optimiser steps (used when epochs is None)
    epochs: Optional[int] = None  # if set, steps = epochs * ceil(n_train / batch_size)
    lr: float = 1e-3
    batch_size: int = 100  # graphs per batch
    grad_clip: Optional[float] = None  # max global gradient norm; None: no clipping
    weight_decay: float = 0.0
    loss: Loss = Loss.pos_vel  # pos_vel: MSE of the displacement + MSE of the next velocity; pos: the displacement only (EGNN's)
    schedule: Schedule = Schedule.constant  # constant: lr throughout; cosine: cosine decay from lr to 0 over the run
    val_every: int = 100  # validate every k steps (and at the last step)
    device: str = "auto"  # auto: cuda when available, else cpu
    checkpoint: bool = True  # keep the weights of the best validation step in the run dir


@dataclass
class MonitorConfig:
    every: int = 10  # full per-layer statistics every k steps; NaN/Inf detection runs every step
    on_nonfinite: OnNonfinite = OnNonfinite.stop  # stop: end the run; skip_step: drop the update; continue: keep going
    quantile: float = 0.99  # high quantile of ||mu|| recorded beside mean and max
    warn_ratio: float = 50.0  # early warning: last-to-first layer ||mu|| max ratio
    warn_growth: float = 4.0  # early warning: growth of the last layer's ||mu|| max over the window
    warn_window: int = 5  # early warning: statistics snapshots the growth is measured over
    flush_every: int = 50  # steps between writes of the parquet records
    # Blow-up criteria (painn_ablate.core.outcome; README: defaults and why); null switches one off.
    diverge_loss_factor: Optional[float] = 100.0  # loss > this x min(loss at step 0, zero-prediction loss)
    # val pos MSE > this x max(zero-displacement val pos MSE, the initial network's val pos MSE)
    diverge_val_factor: Optional[float] = 10.0
    diverge_mu: Optional[float] = 1000.0  # max ||mu|| after any block
    diverge_q: Optional[float] = 10000.0  # max |q| after any block
    diverge_mu_ratio: Optional[float] = 100.0  # max ||mu|| after the last mixing / after the first mixing
    # An episode ends (recovers) when no criterion fired for this many steps. 50: the spikes of one
    # blow-up come within tens of steps (a record: six in 56 steps), and 50 steps are ~5 time constants
    # of Adam's first moment (beta1 = 0.9: 0.9^50 = 0.5%), so the spike's gradients have left the update.
    recover_window: int = 50
    # An episode still firing this many steps after it began is sustained ("diverged"; a recovered shorter
    # one is "transient"). 200: two validation intervals (train.val_every = 100: the val criterion is
    # judged only there, so one bad validation keeps an episode open 100 steps), 4 recovery windows.
    sustained_steps: int = 200
    on_diverged: OnDiverged = OnDiverged["continue"]  # continue: keep training (a run may recover); stop: end the run once sustained


@dataclass
class TrackingConfig:
    wandb: bool = True  # log to Weights & Biases (offline without an API key)
    project: str = "painn-ablate"
    entity: Optional[str] = None
    group: Optional[str] = None  # set by sweeps to the study name
    tags: list[str] = field(default_factory=list)
    progress: bool = True  # console progress bar


@dataclass
class Config:
    seed: int = 0  # training seed: model init and batch order
    ablate: str = "none"  # stabilizers to flip relative to the preset, '+'-separated (see ABLATIONS)
    name: Optional[str] = None  # run name; default: <preset>-seed<seed>-<time>
    out: Optional[str] = None  # run directory; default: runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# model.compile=auto compiles a run of at least this many steps. Measured on 2 CPU cores, one thread, r2_full
# with default monitoring, F=64, L=5, batch 100 (issue 25; benchmarks/bench.py section 4): a compiled step
# takes ~0.6x the eager one (~60 -> ~36 ms: ~24 ms saved a step); compiling takes ~90 s with a cold inductor
# cache and ~6-7 s with a warm one. Break-even: ~270 steps warm, ~3750 cold. The cache is one per machine
# (core.process.use_inductor_cache) and keyed by the graph (preset, stabilizers, F, L, batch shape; not seed,
# lr or steps), so only a configuration's first run is cold; at 1000 steps a warm compile is repaid ~4x (24 s
# saved for 6.5 s), still ~2x at 0.75x eager or a step half the size, and a cold one within five such runs.
# CUDA (not measured here): the eager step of these small graphs is bound by ~1,500 kernel launches, which
# compiling fuses, so the saving a step is at least the CPU's while Triton lengthens a cold compile: the same
# threshold, until bench.py section 4 measures it on a GPU. Other devices (mps, xpu) stay eager under auto.
COMPILE_MIN_STEPS = 1000
COMPILE_DEVICES = ("cpu", "cuda")


def compile_pays(setting: Union[bool, str], steps: int, device_type: str) -> bool:
    """model.compile resolved for one run: true / false as set; auto: a run of `steps` optimiser steps on a
    `device_type` device (torch.device.type) compiles when it is one of COMPILE_DEVICES and steps >= COMPILE_MIN_STEPS."""
    if setting == "auto":
        return device_type in COMPILE_DEVICES and steps >= COMPILE_MIN_STEPS
    return bool(setting)


# The training loss: the weight of the velocity MSE beside the displacement MSE.
LOSSES = tuple(Loss)


def velocity_weight(loss: str) -> float:
    return 0.0 if loss == "pos" else 1.0


# ----------------------------------------------------------------------------- presets

# Only what differs from the schema defaults. `original` is the schema itself.
PRESETS: dict[str, dict[str, Any]] = {
    "original": {},
    "r2_full": {
        "model": {
            "aggregation": "mean",
            "stabilizers": {
                "g": 0.5,
                "s_msg": 5.0,
                "s_mix": 5.0,
                "alpha_inter": 0.5,
                "alpha_mix": 0.5,
                "C_s": 10.0,
                "C_v": 10.0,
                "C_q": 100.0,
                "C_mu": 20.0,
            },
        },
        "train": {"grad_clip": 1.0},
    },
    # fairchem's PaiNN's stabilizers on this model. Deviations, each for the N-body task or for a clean
    # comparison: mu^(0) stays the lifted velocity (fairchem starts from 0; here the velocity's direction
    # must enter); no per-layer ScaleFactor (fairchem fits one to unit variance from a scale file; unfitted it
    # is the identity, as here); torch's default initialisation (fairchem: Xavier); no gradient clipping
    # (fairchem's trainer clips at 10; R2_full's clip at 1 is `train.grad_clip`, added the same way).
    "fairchem": {
        "model": {
            "stabilizers": {
                "q_layernorm": True,
                "scaled_silu": True,
                "vgate_scale": 3 ** -0.5,
                "vmsg_inv_sqrt_f": True,
                "dot_inv_sqrt_f": True,
                "q_residual_scale": 2 ** -0.5,
                "mix_dq_scale": 2 ** -0.5,
            },
        },
    },
}


# The mechanism toggles, the value `ablate=<name>` switches each to, and what that does in words
# (tables say "original, coupling term dropped", not "original + coupling").
MECHANISM_TOGGLES = tuple(f.name for f in STABILIZER_FIELDS if f.metadata["mechanism"] is not None)
MECHANISMS_ON: dict[str, Any] = {"model": {"stabilizers": {f.name: f.metadata["mechanism"] for f in STABILIZER_FIELDS
                                                          if f.name in MECHANISM_TOGGLES}}}
MECHANISM_LABELS = {f.name: f.metadata["label"] for f in STABILIZER_FIELDS if f.name in MECHANISM_TOGGLES}

# Ablation designs. `ablate=<name>` flips the named stabilizers relative to the preset:
# one that is on is switched off (to the original PaiNN's value) and one that is off is
# switched on (to R2_full's or fairchem's value, or a mechanism toggle's MECHANISMS_ON). On `model=r2_full`
# (or `model=fairchem`) that is leave-one-out, on `model=original` add-one-in. Names join with '+':
# `ablate=s_msg+s_mix`. Every StabilizerConfig key that R2_full, fairchem or a mechanism sets is a name;
# then the groups, and the two stabilizers that live outside model.stabilizers.
FAIRCHEM_STABILIZERS = tuple(PRESETS["fairchem"]["model"]["stabilizers"])  # the fairchem preset's parts
_SWITCHED = {*PRESETS["r2_full"]["model"]["stabilizers"], *MECHANISM_TOGGLES, *FAIRCHEM_STABILIZERS}
ABLATIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    **{f.name: (f"model.stabilizers.{f.name}",) for f in STABILIZER_FIELDS if f.name in _SWITCHED},
    "alpha": ("model.stabilizers.alpha_inter", "model.stabilizers.alpha_mix"),  # both residual scales
    "clamps": tuple(f"model.stabilizers.{c}" for c in ("C_s", "C_v", "C_q", "C_mu")),  # all four clamps
    "aggregation": ("model.aggregation",),  # sum <-> degree mean
    "grad_clip": ("train.grad_clip",),  # gradient-norm clipping
}
# R2_full's own stabilizers, each one ablation name (leave-one-out's unit), in schema order.
R2_FULL_STABILIZERS = tuple(name for name, keys in ABLATIONS.items()
                            if len(keys) == 1 and name not in MECHANISM_TOGGLES and name not in FAIRCHEM_STABILIZERS)
# Every config key a stabilizer or mechanism toggle lives at (what a trial records beside its outcome).
STABILIZER_KEYS: tuple[str, ...] = tuple(dict.fromkeys(k for keys in ABLATIONS.values() for k in keys))
# Groups by what the stabilizers do (leave-group-out, add-group-in). On a full graph of n particles
# degree-mean aggregation is a gain of 1/(n - 1), and without s_msg and the message clamps g and alpha_inter
# scale the interaction update alike: three settings of one scale (tests/test_model.py).
GROUPS: dict[str, tuple[str, ...]] = {
    "interaction_scale": ("g", "alpha_inter", "aggregation"),  # the interaction update's scale
    "mixing_scale": ("alpha_mix",),  # the mixing update's scale
    "bounds": ("s_msg", "s_mix", "C_s", "C_v", "C_q", "C_mu"),  # the saturations and clamps
    "grad_clip": ("grad_clip",),  # the gradient's norm (a group of one, already a name)
    "fairchem": FAIRCHEM_STABILIZERS,  # fairchem's normalisation and fixed scales, all together
}
ABLATIONS.update({name: tuple(k for member in members for k in ABLATIONS[member])
                  for name, members in GROUPS.items() if name not in ABLATIONS})


# ----------------------------------------------------------------------------- experiment names
#
# One experiment is a preset and an ablation design. Its one name is `experiment_name`, and every
# other spelling derives from it: the slug in run and trial names drops the spaces, and
# `parse_experiment` reads either back (the dashboard's --experiment, a notebook's filter).


def experiment_name(preset: Any, ablate: Any = "none") -> str:
    """`r2_full`, `r2_full - s_msg` (leave-one-out: without it), `original + alpha` (add-one-in: with it).
    A preset that switches stabilizers on (r2_full, fairchem) is leave-one-out's base; the original, add-one-in's."""
    preset = str(preset)
    if ablate in (None, "", "none") or (isinstance(ablate, float) and math.isnan(ablate)):
        return preset
    sign = "-" if PRESETS.get(preset) else "+"
    return f"{preset} {sign} {ablate}"


def experiment_slug(preset: Any, ablate: Any = "none") -> str:
    """The experiment's name in file, run and trial names: `r2_full-s_msg`, `original+alpha`."""
    return experiment_name(preset, ablate).replace(" ", "")


def parse_experiment(text: str) -> tuple[str, str]:
    """(preset, ablate) from an experiment's name or slug; ConfigError naming the text when it is neither."""
    for preset in sorted(PRESETS, key=len, reverse=True):
        if text.startswith(preset):
            rest = text[len(preset):].strip()
            if not rest:
                return preset, "none"
            if rest[0] in "+-" and rest[1:].strip():
                ablate = rest[1:].strip()
                ablation_overrides(OmegaConf.structured(Config), ablate)  # an unknown name is a ConfigError
                if experiment_name(preset, ablate) != f"{preset} {rest[0]} {ablate}":
                    raise ConfigError(f"bad experiment '{text}': write {experiment_name(preset, ablate)!r}")
                return preset, ablate
    raise ConfigError(f"bad experiment '{text}': write a preset ({', '.join(PRESETS)}) and its ablation, "
                      f"as 'r2_full - s_msg' or 'original + alpha'")


def ablation_overrides(cfg: DictConfig, ablate: str) -> dict[str, Any]:
    """The key -> value changes that `ablate=<names>` makes to `cfg` (see ABLATIONS)."""
    off = OmegaConf.structured(Config)
    on = OmegaConf.merge(off, PRESETS["fairchem"], PRESETS["r2_full"], MECHANISMS_ON)  # disjoint keys
    changes: dict[str, Any] = {}
    for name in ablate.split("+"):
        if name not in ABLATIONS:
            raise ConfigError(f"bad value for 'ablate': unknown stabilizer '{name}'{did_you_mean(name, ABLATIONS)}; "
                              f"known: {', '.join(ABLATIONS)}")
        for key in ABLATIONS[name]:
            original = OmegaConf.select(off, key)
            changes[key] = OmegaConf.select(on, key) if OmegaConf.select(cfg, key) == original else original
    return changes


# ----------------------------------------------------------------------------- compose


def all_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema, e.g. `model.stabilizers.s_msg`."""
    node = OmegaConf.structured(Config) if node is None else node
    keys = []
    for k in node:
        path = f"{prefix}{k}"
        child = node._get_node(k)
        if isinstance(child, DictConfig):
            keys += all_keys(child, path + ".")
        else:
            keys.append(path)
    return keys


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest of `choices` to a misspelt `word`, or ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _did_you_mean(key: str) -> str:
    return did_you_mean(key, all_keys() + ["model"])


def _one_line(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if type(exc).__name__ == "ConfigKeyError" and key:
        return f"unknown config key '{key}'{_did_you_mean(key)}"
    if type(exc).__name__ == "ValidationError" and key:
        return f"bad value for '{key}': {msg}"
    return f"{key}: {msg}" if key else msg


def split_overrides(overrides: list[str]) -> tuple[Optional[str], list[str]]:
    """Separate `model=<preset>` from the dotted overrides.

    `key=None` means null: W&B's agent formats a file's `null` with Python's str.
    """
    preset, rest = None, []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        if value == "None":
            item = f"{key}=null"
        if key == "model":
            preset = value
        else:
            rest.append(item)
    return preset, rest


def format_override(value: Any) -> str:
    """A config value as the text of a `key=value` override that compose reads back as that value
    (what wandb agent passes too)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def compose(overrides: list[str] | tuple[str, ...] = (), base: Optional[str | Path] = None) -> DictConfig:
    """Resolve and validate a full config.

    base: a saved `config.yaml` to start from (re-running a run); presets and
    overrides then apply on top of it.
    """
    preset, dotlist = split_overrides(list(overrides))
    cfg = OmegaConf.structured(Config)
    try:
        if base is not None:
            path = Path(base)
            if not path.is_file():
                raise ConfigError(f"config file '{path}' does not exist")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"unknown preset model={preset}{did_you_mean(preset, PRESETS)}; "
                                  f"known: {', '.join(PRESETS)}")
            # A preset replaces every stabilizer, so that model=original after a base is the original.
            cfg.model.stabilizers = OmegaConf.structured(StabilizerConfig)
            cfg.model.aggregation = ModelConfig.aggregation
            cfg.train.grad_clip = None
            cfg = OmegaConf.merge(cfg, PRESETS[preset], {"model": {"preset": preset}})
        # Applied only when given here: a saved config already holds its ablation's values.
        ablate = next((item.split("=", 1)[1] for item in dotlist if item.startswith("ablate=")), None)
        if ablate is not None:
            cfg.ablate = ablate
            for key, value in ablation_overrides(cfg, ablate).items():
                OmegaConf.update(cfg, key, value, merge=False)
        elif preset is not None:
            cfg.ablate = "none"
        for item in dotlist:
            key = item.split("=", 1)[0]
            if key == "ablate":
                continue
            if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and key not in all_keys():
                raise ConfigError(f"unknown config key '{key}'{_did_you_mean(key)}")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    except ConfigError:
        raise
    except Exception as exc:  # yaml errors and the like from a base file
        raise ConfigError(f"cannot read config: {str(exc).splitlines()[0]}") from None
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"bad value for '{key}': {what}")


def _choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


def _finite_numbers(cfg: DictConfig) -> None:
    """A number in the schema must be finite: inf or nan is bad input, never a run that 'explodes'."""
    for key, value in flatten(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"bad value for '{key}': must be a finite number, got {value}")


def validate(cfg: DictConfig) -> None:
    """Range checks that the types alone cannot express."""
    _finite_numbers(cfg)
    for f in STABILIZER_FIELDS:
        key, v, kind = f"model.stabilizers.{f.name}", cfg.model.stabilizers[f.name], f.metadata["kind"]
        if kind == "gain":
            _check(v > 0, key, f"must be > 0, got {v}")
        elif kind == "scale":
            _check(v is None or v > 0, key, f"must be > 0 or null (off), got {v}")
    m = cfg.model
    _check(m.L >= 1, "model.L", f"must be >= 1, got {m.L}")
    _check(m.F >= 1, "model.F", f"must be >= 1, got {m.F}")
    _check(m.n_rbf >= 1, "model.n_rbf", f"must be >= 1, got {m.n_rbf}")
    _check(m.r_cut > 0, "model.r_cut", f"must be > 0, got {m.r_cut}")
    _check(m.preset in PRESETS, "model.preset", f"unknown preset {m.preset!r}")
    _check(m.compile in (True, False, "auto"), "model.compile", f"must be auto, true or false, got {m.compile!r}")
    d = cfg.data
    _check(d.n_particles is None or d.n_particles >= 2, "data.n_particles", f"must be >= 2, got {d.n_particles}")
    for name in ("n_train", "n_val", "n_test", "k"):
        _check(d[name] >= 1, f"data.{name}", f"must be >= 1, got {d[name]}")
    _check(d.radius > 0, "data.radius", f"must be > 0, got {d.radius}")
    t = cfg.train
    _check(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    _check(t.epochs is None or t.epochs >= 1, "train.epochs", f"must be >= 1 or null, got {t.epochs}")
    _check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", f"must be > 0 or null (off), got {t.grad_clip}")
    _check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _check(t.val_every >= 1, "train.val_every", f"must be >= 1, got {t.val_every}")
    _check(t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"), "train.device",
           f"{t.device!r} is not auto, cpu, cuda or cuda:N")
    mo = cfg.monitor
    _check(mo.every >= 1, "monitor.every", f"must be >= 1, got {mo.every}")
    _check(0 < mo.quantile < 1, "monitor.quantile", f"must be in (0, 1), got {mo.quantile}")
    _check(mo.warn_ratio > 1, "monitor.warn_ratio", f"must be > 1, got {mo.warn_ratio}")
    _check(mo.warn_growth > 1, "monitor.warn_growth", f"must be > 1, got {mo.warn_growth}")
    _check(mo.warn_window >= 2, "monitor.warn_window", f"must be >= 2, got {mo.warn_window}")
    _check(mo.flush_every >= 1, "monitor.flush_every", f"must be >= 1, got {mo.flush_every}")
    for name in ("diverge_loss_factor", "diverge_val_factor", "diverge_mu", "diverge_q", "diverge_mu_ratio"):
        if mo[name] is None:  # off
            continue
        _check(mo[name] > 1 if "factor" in name or "ratio" in name else mo[name] > 0, f"monitor.{name}",
               f"must be {'> 1' if 'factor' in name or 'ratio' in name else '> 0'} or null (off), got {mo[name]}")
    _check(mo.recover_window >= 1, "monitor.recover_window", f"must be >= 1, got {mo.recover_window}")
    _check(mo.sustained_steps >= 1, "monitor.sustained_steps", f"must be >= 1, got {mo.sustained_steps}")
    _check(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def flatten(cfg: DictConfig | dict) -> dict[str, Any]:
    """`{'model.stabilizers.g': 0.5, ...}`: the one flat naming used by W&B, Optuna and pandas (also of run
    summaries, analysis.flatten_summary). A nested empty dict is a value of its own."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and (node or not prefix):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(container, "")
    return flat


# ----------------------------------------------------------------------------- the inverse of compose


