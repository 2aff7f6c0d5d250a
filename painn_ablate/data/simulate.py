"""The two N-body simulators, vectorised over all samples in float64 (`painn_ablate.data.datasets` saves
their output in float32, caches it and builds graphs and batches).

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
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SYSTEMS = ("charged", "gravity")

# Pairwise float64 temporaries of one integration chunk stay below this many bytes: on a CPU
# small enough to stay in cache (gravity at n = 100: 32 samples a chunk), on a GPU large
# enough to fill it (all 7000 samples in one chunk).
CPU_CHUNK_BYTES = 8 * 2**20
GPU_CHUNK_BYTES = 2 * 2**30

Device = Union[str, torch.device, None]
Frames = list[tuple[np.ndarray, np.ndarray]]  # (pos, vel) per saved step, float64 (S, n, 3) each


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


