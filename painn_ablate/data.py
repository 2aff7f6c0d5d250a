"""N-body data sets: simulation, cache, bring-your-own files, graphs and batches.

Two systems, each simulated vectorised over all samples in float64 and saved in float32:

charged (EGNN, Satorras et al. 2021, whose generator is NRI's `ChargedParticlesSim`):
    n = 5 particles, charges c_i = +-1 with probability 1/2 each, unit masses.
    Force on i:  F_i = sum_{j != i} c_i c_j (x_i - x_j) / |x_i - x_j|^3   (like charges repel),
    each component clipped to +-max_force = +-0.1/dt = +-100.
    x_0 ~ N(0, loc_std^2) per component with loc_std = (n/5)^(1/3) (1 at n = 5, the original's
    constant-density scaling), v_0 a random direction of norm 0.5. Positions outside the box
    [-5, 5]^3 are reflected into it once at t = 0 (the original's `_clamp`, which also turns
    the velocity inwards); there are no walls after that (the original's per-step clamp is
    commented out). Integration, dt = 0.001, as the original's loop: every step first kicks
    v += dt F(x), then drifts x += dt v (symplectic Euler; the stored v lags x by half a step,
    the original calls it leapfrog). Frame k is the state after 100 (k + 1) steps; the input
    is frame 30 (3100 steps), the target frame 40 (4100 steps).

gravity (SEGNN, Brandstetter et al. 2022, `GravitySim`):
    n = 100 bodies, G = 1, unit masses (stored in the `charge` array, which is all ones),
    Plummer softening eps = 0.1:  a_i = G sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^(3/2).
    x_0 ~ N(0, 1) and v_0 ~ N(0, 1) per component (SEGNN ignores its `vel_norm` argument, and so
    do we), v_0 shifted to the centre-of-mass frame. Kick-drift-kick leapfrog with dt = 0.001,
    no force clip. Frame k is the state after 100 k steps (SEGNN saves before stepping); the
    input is frame 30 (3000 steps), the target frame 40 (4000 steps). Each step costs O(n^2)
    per sample, so samples are integrated in chunks whose pairwise arrays fit a memory budget.

Each split is drawn from its own child of `np.random.SeedSequence(seed)`, so train, val and test
are different samples and a split does not change when another split's size does. The draws
are the same on every machine; the integration is reproducible on one machine and software
stack (matmul summation order may differ across BLAS builds, and the dynamics are chaotic).

Files: one `.npz` per split with float32 arrays `pos`, `vel` (S, n, 3) at the input frame,
`charge` (S, n), `pos_next`, `vel_next` (S, n, 3) at the target frame; every value finite, with
|charge| <= 1e3 and every other |value| <= 1e9 (MAX_ABS_CHARGE, MAX_ABS_VALUE). Generated sets are
cached in `{cache_dir}/{system}-{hash of the generation parameters}/` (`data.cache_dir`; by default
$PAINN_ABLATE_CACHE, else $XDG_CACHE_HOME/painn-ablate, else ~/.cache/painn-ablate); `data.dir` points at
a folder of the same three files instead.

Graphs are built once per split on the input positions. Edge convention everywhere:
`edge_index[0]` is the source j, `edge_index[1]` the receiver i.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from painn_ablate import files

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ARRAY_KEYS = ("pos", "vel", "charge", "pos_next", "vel_next")
SYSTEMS = ("charged", "gravity")
DEFAULT_N_PARTICLES = {"charged": 5, "gravity": 100}
AUTO_GRAPH = {"charged": "full", "gravity": "knn"}
# graph=auto never builds a full graph above this many particles a system: its n (n - 1) edges grow
# quadratically (1000 particles: 15 s a step and 5.8 GB for 4 samples, against 2.7 s and 0.6 GB with knn).
AUTO_FULL_MAX = 64
# Bounds of the file format: beyond them float32 arithmetic overflows (squares past 3.4e38 summed
# over particles), and a blow-up would be the data's, not the model's.
MAX_ABS_VALUE = 1e9  # pos, vel, pos_next, vel_next
MAX_ABS_CHARGE = 1e3  # charges (charged) or masses (gravity); the generators use +-1 and 1
CACHE_FORMAT_VERSION = 1  # bump when the generators change, so old caches are not reused

# Pairwise float64 temporaries of one integration chunk stay below this many bytes: on a CPU
# small enough to stay in cache (gravity at n = 100: 32 samples a chunk), on a GPU large
# enough to fill it (all 7000 samples in one chunk).
CPU_CHUNK_BYTES = 8 * 2**20
GPU_CHUNK_BYTES = 2 * 2**30

Device = Union[str, torch.device, None]
Frames = list[tuple[np.ndarray, np.ndarray]]  # (pos, vel) per saved step, float64 (S, n, 3) each


class DataError(ValueError):
    """Unusable data; the message is one line naming the file and, where there is one, the key."""


# ----------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class ChargedProtocol:
    """Constants of the EGNN charged-particle simulation; all of them enter the cache key."""

    dt: float = 1e-3
    max_force: Optional[float] = 0.1 / 1e-3  # per-component force clip; None: no clip
    loc_std: float = 1.0  # at n = 5; scaled by (n/5)^(1/3) to keep the density
    vel_norm: float = 0.5  # initial speed of every particle
    box_size: float = 5.0  # initial positions are reflected into [-box, box]^3 once
    input_step: int = 3100  # frame 30 = 100 * (30 + 1) steps
    target_step: int = 4100  # frame 40


@dataclass(frozen=True)
class GravityProtocol:
    """Constants of the SEGNN gravity simulation; all of them enter the cache key."""

    dt: float = 1e-3
    G: float = 1.0
    softening: float = 0.1
    loc_std: float = 1.0
    vel_std: float = 1.0  # per component, before the centre-of-mass shift
    input_step: int = 3000  # frame 30 = 100 * 30 steps
    target_step: int = 4000  # frame 40


CHARGED = ChargedProtocol()
GRAVITY = GravityProtocol()


def _torch_device(device: Device) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def _chunk_size(n_samples: int, bytes_per_sample: int, device: torch.device) -> int:
    budget = CPU_CHUNK_BYTES if device.type == "cpu" else GPU_CHUNK_BYTES
    return max(1, min(n_samples, budget // max(1, bytes_per_sample)))


@contextmanager
def single_threaded() -> Iterator[None]:
    """One intra-op thread for the duration, then back to what it was.

    The integrators run thousands of small steps: MKL and OpenMP thread them anyway, and on a
    busy machine the spinning threads made generation up to ~300x slower (measured on 2 shared
    cores), while one thread cost the charged set only ~1.2x on a quiet one. One thread also
    makes the results independent of the core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- charged particles


def draw_charged_initial(n_samples: int, n_particles: int, rng: np.random.Generator,
                         protocol: ChargedProtocol = CHARGED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial (pos, vel, charge) in float64: (S, n, 3), (S, n, 3), (S, n)."""
    charge = rng.choice(np.array([-1.0, 1.0]), size=(n_samples, n_particles))
    loc_std = protocol.loc_std * (n_particles / 5.0) ** (1.0 / 3.0)
    pos = rng.standard_normal((n_samples, n_particles, 3)) * loc_std
    direction = rng.standard_normal((n_samples, n_particles, 3))
    vel = direction * (protocol.vel_norm / np.linalg.norm(direction, axis=-1, keepdims=True))
    reflect_into_box(pos, vel, protocol.box_size)
    return pos, vel, charge


def reflect_into_box(pos: np.ndarray, vel: np.ndarray, box_size: float) -> None:
    """Mirror components beyond +-box_size back inside and point their velocity inwards (in place)."""
    over = pos > box_size
    pos[over] = 2 * box_size - pos[over]
    vel[over] = -np.abs(vel[over])
    under = pos < -box_size
    pos[under] = -2 * box_size - pos[under]
    vel[under] = np.abs(vel[under])


def pair_incidence(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs (i < j) and their (P, n) incidence matrix: +1 at i, -1 at j.

    `incidence @ x` gives x_i - x_j for every pair and `incidence.T @ f` adds f to i and
    subtracts it from j: Newton's third law exactly, so momentum is conserved to round-off.
    """
    first, second = np.triu_indices(n, 1)
    incidence = np.zeros((len(first), n))
    incidence[np.arange(len(first)), first] = 1.0
    incidence[np.arange(len(first)), second] = -1.0
    return first, second, incidence


def coulomb_force(x: Tensor, pair_charge: Tensor, to_pairs: Tensor, to_particles: Tensor,
                  max_force: Optional[float]) -> Tensor:
    """Clipped Coulomb forces in the particle-major layout: x (n, 3 C) -> F (n, 3 C).

    pair_charge (P, C) is c_i c_j per pair; to_pairs, to_particles from `pair_incidence`.
    """
    n_pairs, n_samples = pair_charge.shape
    d = (to_pairs @ x).view(n_pairs, 3, n_samples)  # x_i - x_j
    r2 = (d * d).sum(1)
    f = d * (pair_charge / (r2 * r2.sqrt()))[:, None, :]  # on i from j; like charges repel
    force = to_particles @ f.view(n_pairs, 3 * n_samples)
    return force if max_force is None else force.clamp_(-max_force, max_force)


def integrate_charged(pos: np.ndarray, vel: np.ndarray, charge: np.ndarray, save_steps: Sequence[int],
                      protocol: ChargedProtocol = CHARGED, device: Device = None) -> Frames:
    """Kick-drift integration; returns float64 (pos, vel) after each step count in `save_steps`."""
    n_samples, n, _ = pos.shape
    dev = _torch_device(device)
    first, second, incidence = pair_incidence(n)
    to_pairs = torch.as_tensor(incidence, dtype=torch.float64, device=dev)  # (P, n)
    to_particles = to_pairs.T.contiguous()  # (n, P)
    saved = [(np.empty_like(pos), np.empty_like(vel)) for _ in save_steps]
    chunk = _chunk_size(n_samples, 8 * len(first) * 3 * 4, dev)  # about four (P, 3) temporaries per sample
    with single_threaded():
        for lo in range(0, n_samples, chunk):
            hi = min(lo + chunk, n_samples)
            c = hi - lo
            # Particle-major layout (n, 3 C): the pair differences and sums become two plain matmuls.
            x = torch.as_tensor(pos[lo:hi], device=dev).permute(1, 2, 0).reshape(n, 3 * c).contiguous()
            v = torch.as_tensor(vel[lo:hi], device=dev).permute(1, 2, 0).reshape(n, 3 * c).contiguous()
            q = torch.as_tensor(charge[lo:hi], device=dev).T  # (n, C)
            pair_charge = q[first] * q[second]  # (P, C)
            for step in range(1, max(save_steps) + 1):
                v.add_(coulomb_force(x, pair_charge, to_pairs, to_particles, protocol.max_force), alpha=protocol.dt)
                x.add_(v, alpha=protocol.dt)
                for (pos_out, vel_out), save_step in zip(saved, save_steps):
                    if save_step == step:
                        pos_out[lo:hi] = x.view(n, 3, c).permute(2, 0, 1).cpu().numpy()
                        vel_out[lo:hi] = v.view(n, 3, c).permute(2, 0, 1).cpu().numpy()
    return saved


# ----------------------------------------------------------------------------- gravity


def draw_gravity_initial(n_samples: int, n_particles: int, rng: np.random.Generator,
                         protocol: GravityProtocol = GRAVITY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial (pos, vel, mass) in float64, velocities in the centre-of-mass frame."""
    mass = np.ones((n_samples, n_particles))
    pos = rng.standard_normal((n_samples, n_particles, 3)) * protocol.loc_std
    vel = rng.standard_normal((n_samples, n_particles, 3)) * protocol.vel_std
    vel -= (mass[..., None] * vel).sum(1, keepdims=True) / mass.sum(1)[:, None, None]
    return pos, vel, mass


def softened_gravity(x: Tensor, mass: Tensor, G: float, softening: float) -> Tensor:
    """Accelerations (C, n, 3) of positions x (C, n, 3).

    a_i = G sum_j w_ij (x_j - x_i) = G (W x - x * rowsum W)_i with w_ij = m_j / (r_ij^2 + eps^2)^(3/2);
    r_ij^2 from |x_i|^2 + |x_j|^2 - 2 x_i.x_j: two batched matmuls instead of an (n, n, 3)
    array, and the cancellation is harmless because eps^2 bounds the denominator.
    """
    sq = (x * x).sum(-1)  # (C, n)
    r2 = torch.baddbmm(sq[:, :, None] + sq[:, None, :] + softening**2, x, x.transpose(1, 2), alpha=-2.0)
    w = r2.rsqrt_().pow_(3).mul_(mass[:, None, :])  # (C, n, n)
    return torch.bmm(w, x).sub_(x * w.sum(-1, keepdim=True)).mul_(G)


def integrate_gravity(pos: np.ndarray, vel: np.ndarray, mass: np.ndarray, save_steps: Sequence[int],
                      protocol: GravityProtocol = GRAVITY, device: Device = None,
                      chunk_size: Optional[int] = None) -> Frames:
    """Kick-drift-kick leapfrog; returns float64 (pos, vel) after each step count in `save_steps`."""
    n_samples, n, _ = pos.shape
    dev = _torch_device(device)
    saved = [(np.empty_like(pos), np.empty_like(vel)) for _ in save_steps]
    chunk = chunk_size or _chunk_size(n_samples, 8 * n * n * 2, dev)  # two (n, n) temporaries per sample
    half_dt = protocol.dt / 2
    with single_threaded():
        for lo in range(0, n_samples, chunk):
            hi = min(lo + chunk, n_samples)
            x = torch.as_tensor(pos[lo:hi], device=dev).clone()
            v = torch.as_tensor(vel[lo:hi], device=dev).clone()
            m = torch.as_tensor(mass[lo:hi], device=dev)
            acc = softened_gravity(x, m, protocol.G, protocol.softening)
            for step in range(1, max(save_steps) + 1):
                v.add_(acc, alpha=half_dt)
                x.add_(v, alpha=protocol.dt)
                acc = softened_gravity(x, m, protocol.G, protocol.softening)
                v.add_(acc, alpha=half_dt)
                for (pos_out, vel_out), save_step in zip(saved, save_steps):
                    if save_step == step:
                        pos_out[lo:hi] = x.cpu().numpy()
                        vel_out[lo:hi] = v.cpu().numpy()
            if n_samples > chunk and (hi * 10) // n_samples > (lo * 10) // n_samples:
                log.info("data: gravity integrated %d/%d samples", hi, n_samples)
    return saved


# ----------------------------------------------------------------------------- generation


def simulate(system: str, pos: np.ndarray, vel: np.ndarray, charge: np.ndarray,
             device: Device = None) -> dict[str, np.ndarray]:
    """Integrate initial states of `system` to the input and target frames; float32 split arrays."""
    if system == "charged":
        steps = (CHARGED.input_step, CHARGED.target_step)
        (pos_in, vel_in), (pos_out, vel_out) = integrate_charged(pos, vel, charge, steps, CHARGED, device)
    elif system == "gravity":
        steps = (GRAVITY.input_step, GRAVITY.target_step)
        (pos_in, vel_in), (pos_out, vel_out) = integrate_gravity(pos, vel, charge, steps, GRAVITY, device)
    else:
        raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")
    arrays = {"pos": pos_in, "vel": vel_in, "charge": charge, "pos_next": pos_out, "vel_next": vel_out}
    return {key: value.astype(np.float32) for key, value in arrays.items()}


def draw_initial(system: str, n_samples: int, n_particles: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if system == "charged":
        return draw_charged_initial(n_samples, n_particles, rng)
    if system == "gravity":
        return draw_gravity_initial(n_samples, n_particles, rng)
    raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")


def generate_charged(n_samples: int, n_particles: int = 5, seed: int = 0,
                     device: Device = None) -> dict[str, np.ndarray]:
    """`n_samples` charged-particle samples as float32 split arrays (see the module docstring)."""
    initial = draw_charged_initial(n_samples, n_particles, np.random.default_rng(seed))
    return simulate("charged", *initial, device=device)


def generate_gravity(n_samples: int, n_particles: int = 100, seed: int = 0,
                     device: Device = None) -> dict[str, np.ndarray]:
    """`n_samples` gravity samples as float32 split arrays (see the module docstring)."""
    initial = draw_gravity_initial(n_samples, n_particles, np.random.default_rng(seed))
    return simulate("gravity", *initial, device=device)


def generate_splits(system: str, sizes: dict[str, int], n_particles: int, seed: int,
                    device: Device = None) -> dict[str, dict[str, np.ndarray]]:
    """All splits, each drawn from its own child seed, integrated together in one vectorised run."""
    children = np.random.SeedSequence(seed).spawn(len(SPLITS))
    draws = [draw_initial(system, sizes[name], n_particles, np.random.default_rng(child))
             for name, child in zip(SPLITS, children)]
    joined = simulate(system, *(np.concatenate(parts) for parts in zip(*draws)), device=device)
    bounds = np.cumsum([0] + [sizes[name] for name in SPLITS])
    return {name: {key: value[bounds[k]:bounds[k + 1]] for key, value in joined.items()}
            for k, name in enumerate(SPLITS)}


# ----------------------------------------------------------------------------- files


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"data file {path}: {what}".splitlines()[0])


def check_split_arrays(path: Union[str, Path], arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    """Validate the five split arrays; returns them as float32. Raises DataError naming the key."""
    path = Path(path)
    for key in ARRAY_KEYS:
        if key not in arrays:
            raise _fail(path, f"missing key '{key}' (expected keys: {', '.join(ARRAY_KEYS)})")
    checked = {}
    for key in ARRAY_KEYS:
        value = np.asarray(arrays[key])
        if value.dtype.kind not in "iuf":
            raise _fail(path, f"key '{key}' has dtype {value.dtype} but expected real numbers")
        checked[key] = value
    pos = checked["pos"]
    if pos.ndim != 3 or pos.shape[2] != 3:
        raise _fail(path, f"key 'pos' has shape {pos.shape} but expected (S, n, 3)")
    n_samples, n = pos.shape[:2]
    if n_samples < 1:
        raise _fail(path, f"key 'pos' has shape {pos.shape}: no samples")
    if n < 2:
        raise _fail(path, f"key 'pos' has shape {pos.shape}: at least 2 particles are needed")
    for key, value in checked.items():
        if key == "charge":
            symbolic, expected, well_formed = "(S, n)", (n_samples, n), value.ndim == 2
        else:
            symbolic, expected = "(S, n, 3)", (n_samples, n, 3)
            well_formed = value.ndim == 3 and value.shape[2] == 3
        if not well_formed:
            raise _fail(path, f"key '{key}' has shape {value.shape} but expected {symbolic}")
        if value.shape != expected:
            raise _fail(path, f"key '{key}' has shape {value.shape} but expected {expected} to match 'pos'")
        bad = int(value.size - np.isfinite(value).sum())
        if bad:
            raise _fail(path, f"key '{key}' has {bad} non-finite values (NaN or Inf)")
        limit = MAX_ABS_CHARGE if key == "charge" else MAX_ABS_VALUE
        if value.size and float(np.abs(value).max()) > limit:
            worst = float(value.flat[int(np.abs(value).argmax())])
            raise _fail(path, f"key '{key}' holds {worst:.3g}, beyond the format's bound |value| <= {limit:g} "
                              "(bad input, not a model blow-up)")
    return {key: value.astype(np.float32, copy=False) for key, value in checked.items()}


def write_split(path: Union[str, Path], arrays: dict[str, np.ndarray]) -> None:
    """Validate and write one split as float32 .npz, atomically: a killed write leaves no file."""
    path = Path(path)
    checked = check_split_arrays(path, arrays)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name
            np.savez(fh, **checked)

    files.atomic(path, write)


def read_split(path: Union[str, Path]) -> dict[str, np.ndarray]:
    """Load and validate one split file; raises DataError whose message names the file and key."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files if key in ARRAY_KEYS}
    except Exception as exc:  # not a zip, truncated, pickled objects: all unusable alike
        raise _fail(path, f"cannot be read as .npz ({type(exc).__name__}: {exc})") from None
    return check_split_arrays(path, arrays)


# ----------------------------------------------------------------------------- cache


def resolve_n_particles(system: str, n_particles: Optional[int]) -> int:
    return DEFAULT_N_PARTICLES[system] if n_particles is None else int(n_particles)


def generation_params(system: str, n_particles: int, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    """Everything a generated set depends on; its hash names the cache folder."""
    protocol = CHARGED if system == "charged" else GRAVITY
    return {"system": system, "n_particles": n_particles, "sizes": {k: int(sizes[k]) for k in SPLITS},
            "seed": int(seed), "protocol": dataclasses.asdict(protocol), "format": CACHE_FORMAT_VERSION}


CACHE_ENV = "PAINN_ABLATE_CACHE"


def default_cache_dir() -> Path:
    """$PAINN_ABLATE_CACHE, else $XDG_CACHE_HOME/painn-ablate, else ~/.cache/painn-ablate."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "painn-ablate"


def cache_folder(cache_dir: Union[str, Path, None], params: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return root / f"{params['system']}-{digest}"


def load_or_generate(cfg: Any, device: Device = None) -> dict[str, dict[str, np.ndarray]]:
    """The generated splits of `cfg` (DataConfig), from the cache when all three files are there."""
    system = cfg.system
    n_particles = resolve_n_particles(system, cfg.n_particles)
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    params = generation_params(system, n_particles, sizes, cfg.seed)
    folder = cache_folder(cfg.cache_dir, params)
    paths = {name: folder / f"{name}.npz" for name in SPLITS}
    if all(f.is_file() for f in paths.values()):
        log.info("data: cache hit, loading %s", folder)
        return {name: read_split(f) for name, f in paths.items()}
    log.info("data: generating %s (n=%d, %s samples) into %s", system, n_particles,
             "/".join(str(sizes[k]) for k in SPLITS), folder)
    start = time.perf_counter()
    splits = generate_splits(system, sizes, n_particles, cfg.seed, device)
    log.info("data: generated %s in %.1f s", system, time.perf_counter() - start)
    folder.mkdir(parents=True, exist_ok=True)
    for name, f in paths.items():
        write_split(f, splits[name])
    files.write_text(folder / "params.json", json.dumps(params, indent=2, sort_keys=True))
    return splits


# ----------------------------------------------------------------------------- graphs


def full_graph_edges(n: int) -> np.ndarray:
    """(2, n (n - 1)) all ordered pairs i != j; row 0 source j, row 1 receiver i."""
    receiver, source = np.nonzero(~np.eye(n, dtype=bool))
    return np.stack([source, receiver])


def knn_edges(pos: np.ndarray, k: int) -> np.ndarray:
    """(2, n k) edges from the k nearest neighbours j of every receiver i (k <= n - 1)."""
    n = len(pos)
    _, found = cKDTree(pos).query(pos, k=k + 1)
    found = found.reshape(n, k + 1)
    # Drop the receiver itself; with coincident points it need not come first, so drop the
    # farthest candidate in the rows where it was not found at all.
    keep = found != np.arange(n)[:, None]
    keep[keep.all(1), -1] = False
    source = found[keep].reshape(n, k)
    receiver = np.repeat(np.arange(n), k).reshape(n, k)
    return np.stack([source.ravel(), receiver.ravel()])


def radius_edges(pos: np.ndarray, radius: float) -> np.ndarray:
    """(2, E) every ordered pair i != j with |x_i - x_j| <= radius, sorted by receiver."""
    pairs = cKDTree(pos).query_pairs(radius, output_type="ndarray")
    source = np.concatenate([pairs[:, 0], pairs[:, 1]])
    receiver = np.concatenate([pairs[:, 1], pairs[:, 0]])
    order = np.lexsort((source, receiver))
    return np.stack([source[order], receiver[order]])


@dataclass
class FixedDegreeEdges:
    """Graphs with the same edge count E in every sample (full, knn).

    source, receiver: (S, E) or (1, E) int32 node indices local to their sample; a leading 1
    means the same edges in every sample (the full graph), stored once.
    """

    source: Tensor
    receiver: Tensor

    def to(self, device: Device) -> "FixedDegreeEdges":
        return FixedDegreeEdges(self.source.to(device), self.receiver.to(device))

    def gather(self, idx: Tensor, n: int) -> Tensor:
        """(2, B E) edges of samples idx, node indices offset by b n for the b-th sample."""
        offset = torch.arange(idx.numel(), device=idx.device).mul_(n)[:, None]  # (B, 1) int64
        source = _rows(self.source, idx) + offset
        receiver = _rows(self.receiver, idx) + offset
        return torch.stack([source, receiver]).view(2, -1)


def _rows(per_sample: Tensor, idx: Tensor) -> Tensor:
    """Rows idx of a (S, E) table, or its one shared row (1, E) repeated for every index."""
    return per_sample[idx] if per_sample.shape[0] > 1 else per_sample.expand(idx.numel(), -1)


@dataclass
class VariableEdges:
    """Graphs with per-sample edge counts (radius), stored CSR-like.

    edges: (2, total) int32 local node indices, the edges of sample s in columns ptr[s]:ptr[s+1].
    """

    edges: Tensor
    ptr: Tensor  # (S + 1,) int64

    def to(self, device: Device) -> "VariableEdges":
        return VariableEdges(self.edges.to(device), self.ptr.to(device))

    def gather(self, idx: Tensor, n: int) -> Tensor:
        """(2, sum of counts) edges of samples idx, concatenated and offset by b n for the b-th."""
        start = self.ptr[idx]
        count = self.ptr[idx + 1] - start
        total = int(count.sum())  # one sync: the output size
        b = idx.numel()
        sample = torch.repeat_interleave(torch.arange(b, device=idx.device), count, output_size=total)
        first_of_sample = torch.cumsum(count, 0) - count
        column = start[sample] + torch.arange(total, device=idx.device) - first_of_sample[sample]
        return self.edges[:, column] + sample * n


Edges = Union[FixedDegreeEdges, VariableEdges]


def build_edges(pos: np.ndarray, graph: str, k: int = 16, radius: float = 2.0) -> Edges:
    """Edges of every sample of pos (S, n, 3) for graph full | knn | radius."""
    n = pos.shape[1]
    if graph == "full":
        edges = full_graph_edges(n)
        return FixedDegreeEdges(_node_index(edges[0][None]), _node_index(edges[1][None]))
    if graph == "knn":
        k = min(k, n - 1)
        edges = np.stack([knn_edges(p, k) for p in pos.astype(np.float64)])  # (S, 2, n k)
        # Every sample has the same receivers (k per node, in node order): stored once.
        return FixedDegreeEdges(_node_index(edges[:, 0]), _node_index(edges[0, 1][None]))
    if graph == "radius":
        per_sample = [radius_edges(p, radius) for p in pos.astype(np.float64)]
        ptr = np.concatenate([[0], np.cumsum([e.shape[1] for e in per_sample])])
        return VariableEdges(_node_index(np.concatenate(per_sample, axis=1)), torch.as_tensor(ptr, dtype=torch.int64))
    raise ValueError(f"unknown graph {graph!r}; known: full, knn, radius")


def _node_index(a: np.ndarray) -> Tensor:
    # int32 halves the memory of per-sample edge tables (gravity knn: 7000 x 1600 per row);
    # adding the int64 batch offsets promotes the batch's edge_index to long.
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int32)


def resolve_graph(graph: str, system: str, n_particles: Optional[int] = None) -> str:
    """graph=auto: the system's graph (full for charged, knn for gravity), but knn above AUTO_FULL_MAX particles."""
    if graph != "auto":
        return graph
    if AUTO_GRAPH[system] == "full" and n_particles is not None and n_particles > AUTO_FULL_MAX:
        log.warning("data: %d particles a system; graph=auto uses knn (data.k neighbours) instead of the full "
                    "graph above %d particles (set data.graph=full to insist)", n_particles, AUTO_FULL_MAX)
        return "knn"
    return AUTO_GRAPH[system]


# ----------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """B samples flattened into one graph of N = B n nodes."""

    pos: Tensor  # (N, 3) input positions
    vel: Tensor  # (N, 3) input velocities
    charge: Tensor  # (N,) charge (charged) or mass (gravity)
    edge_index: Tensor  # (2, E) long; row 0 source j, row 1 receiver i; indices into the batch
    pos_dt: Tensor  # (N, 3) target displacement pos_next - pos
    vel_next: Tensor  # (N, 3) target velocity
    graph: Tensor  # (N,) long graph index 0..B-1 of each node
    n_graphs: int


@dataclass
class NBodySplit:
    """One split as float32 tensors plus the edges of its input frame."""

    pos: Tensor  # (S, n, 3)
    vel: Tensor  # (S, n, 3)
    charge: Tensor  # (S, n)
    pos_next: Tensor  # (S, n, 3)
    vel_next: Tensor  # (S, n, 3)
    edges: Edges

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], graph: str, k: int = 16,
                    radius: float = 2.0) -> "NBodySplit":
        tensors = {key: torch.as_tensor(np.ascontiguousarray(arrays[key], dtype=np.float32)) for key in ARRAY_KEYS}
        return cls(**tensors, edges=build_edges(arrays["pos"], graph, k, radius))

    @property
    def n_particles(self) -> int:
        return self.pos.shape[1]

    def __len__(self) -> int:
        return self.pos.shape[0]

    def to(self, device: Device) -> "NBodySplit":
        moved = {key: getattr(self, key).to(device) for key in ARRAY_KEYS}
        return NBodySplit(**moved, edges=self.edges.to(device))

    def batch(self, idx: Tensor) -> Batch:
        """The samples idx (LongTensor (B,)) as one batched graph; no Python loop over samples."""
        idx = idx.to(self.pos.device)
        b, n = idx.numel(), self.n_particles
        pos = self.pos[idx]
        return Batch(
            pos=pos.view(-1, 3),
            vel=self.vel[idx].view(-1, 3),
            charge=self.charge[idx].view(-1),
            edge_index=self.edges.gather(idx, n),
            pos_dt=(self.pos_next[idx] - pos).view(-1, 3),
            vel_next=self.vel_next[idx].view(-1, 3),
            graph=torch.arange(b, device=idx.device).repeat_interleave(n),
            n_graphs=b,
        )


# ----------------------------------------------------------------------------- entry point


def check_dir(folder: Union[str, Path]) -> None:
    """The cheap part of `read_dir`, for a sweep's dry run: the folder holds the three split files."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.dir {folder}: no such folder")
    for name in SPLITS:
        if not (folder / f"{name}.npz").is_file():
            raise _fail(folder / f"{name}.npz", "does not exist")


def read_dir(folder: Union[str, Path]) -> dict[str, dict[str, np.ndarray]]:
    """Bring-your-own data: train.npz, val.npz and test.npz from one folder, validated."""
    folder = Path(folder).expanduser()
    return {name: read_split(folder / f"{name}.npz") for name in SPLITS}


def load_dataset(cfg: Any, device: Device = None) -> dict[str, NBodySplit]:
    """Splits "train", "val", "test" of the `data` config section, on the CPU.

    Reads `cfg.dir` when set (then the sizes, seed and n_particles fields are not used),
    else generates or loads from the cache. device: where the generator integrates on a
    cache miss (None: cpu); a GPU makes the gravity set practical.
    """
    if cfg.dir:
        log.info("data: reading %s", cfg.dir)
        arrays = read_dir(cfg.dir)
    else:
        arrays = load_or_generate(cfg, device)
    graph = resolve_graph(cfg.graph, cfg.system, arrays["train"]["pos"].shape[1])
    start = time.perf_counter()
    splits = {name: NBodySplit.from_arrays(arrays[name], graph, cfg.k, cfg.radius) for name in SPLITS}
    log.info("data: %s graphs built in %.1f s", graph, time.perf_counter() - start)
    return splits
