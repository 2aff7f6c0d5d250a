"""The stabilizers as modules: each saturation and clamp is a `Stabilizer` that knows its config key,
the tensor it acts on and when it counts as acting; every other tensor the monitor reads passes a `Tap`.

Saturation and ClipNorm run hand-written backwards in eager mode and plain ops under torch.compile
(or inside `plain_ops()`, for forward-mode AD), whose fusion does better.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from painn_ablate.core.config import acted_stat

# Inside the sqrt of every norm: torch.norm's gradient is NaN at 0, and mu can be 0.
NORM_EPS = 1e-8

# True inside plain_ops(): the stabilizers use plain torch ops, not their custom backwards
_plain_ops: contextvars.ContextVar[bool] = contextvars.ContextVar("painn_ablate_plain_ops", default=False)


@contextlib.contextmanager
def plain_ops() -> Iterator[None]:
    """Run Saturation and ClipNorm as plain ops (the same values), so that forward-mode AD
    (torch.func.jvp, which the hand-written backwards do not support) works through the model."""
    token = _plain_ops.set(True)
    try:
        yield
    finally:
        _plain_ops.reset(token)


def _use_plain_ops() -> bool:
    # is_compiling() first: dynamo cannot trace ContextVar.get, and reaching it broke the compiled graph
    # at every stabilizer (41 graphs instead of one per monitoring variant, README "Performance").
    return torch.compiler.is_compiling() or _plain_ops.get()


# ----------------------------------------------------------------------------- stabilizer pieces


class _SaturationFn(torch.autograd.Function):
    """s * tanh(u / s) with its derivative 1 - tanh^2 in one backward op instead of three."""

    @staticmethod
    def forward(ctx, u: Tensor, s: float) -> Tensor:
        t = torch.tanh_(u / s)
        ctx.save_for_backward(t)
        return t * s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (t,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, t), None


class Stabilizer(nn.Module):
    """A stabilizer that acts on one tensor, and an exact identity when its setting is None.

    key: its name in the schema (`model.stabilizers.<key>`), which also names the statistic the
    monitor records of it, `config.acted_stat(key)`: the fraction of entries or vectors it acted on (`acted`).
    tensor: the name of the tensor it acts on, as a non-finite origin reports it.
    The monitor finds stabilizers by this type, so a new one needs no wiring outside its block.
    """

    def __init__(self, setting: Optional[float], *, key: str, tensor: str):
        super().__init__()
        self.setting = setting
        self.key = key
        self.tensor = tensor

    @property
    def stat(self) -> str:
        return acted_stat(self.key)

    def acted(self, x: Tensor) -> Tensor:
        """The fraction of x's entries (or 3D vectors) this stabilizer acts on noticeably, a 0-d tensor."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.key}={self.setting}"


class Saturation(Stabilizer):
    """sat_s(u) = s * tanh(u / s), elementwise; identity when s is None. Acts where |u| > 2s (tanh saturated)."""

    @property
    def s(self) -> Optional[float]:
        return self.setting

    def forward(self, u: Tensor) -> Tensor:
        if self.s is None:
            return u
        if _use_plain_ops():  # inductor fuses the plain ops (and caches graphs without Functions)
            return self.s * torch.tanh(u / self.s)
        return _SaturationFn.apply(u, self.s)

    def acted(self, u: Tensor) -> Tensor:
        return (u.abs() > 2 * self.s).float().mean()


class ClipValue(Stabilizer):
    """clip(x, [-C, C]) elementwise; identity when C is None. Acts where |x| > C."""

    @property
    def C(self) -> Optional[float]:
        return self.setting

    def forward(self, x: Tensor) -> Tensor:
        if self.C is None:
            return x
        return x.clamp(-self.C, self.C)

    def acted(self, x: Tensor) -> Tensor:
        return (x.abs() > self.C).float().mean()


def vector_norm(v: Tensor, dim: int = -2, keepdim: bool = False) -> Tensor:
    """||v|| over the 3D axis with eps inside the sqrt (finite gradient at v = 0)."""
    return torch.sqrt(torch.sum(v * v, dim=dim, keepdim=keepdim) + NORM_EPS)


class _ClipNormFn(torch.autograd.Function):
    """v * min(1, C / ||v||) over dim -2, with a hand-written backward (half the ops of autograd's).

    Where the norm is clipped, d(C v / ||v||)/dv = (C / ||v||) (I - v v^T / ||v||^2); elsewhere identity.
    """

    @staticmethod
    def forward(ctx, v: Tensor, C: float) -> Tensor:
        norm = vector_norm(v, dim=-2, keepdim=True)  # (N, 1, F)
        scale = torch.clamp(C / norm, max=1.0)
        ctx.save_for_backward(v, norm, scale)
        return v * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        v, norm, scale = ctx.saved_tensors
        # Only clipped vectors get the radial term: clamp passes its gradient where scale < 1 (clipped)
        # and has zero gradient where it returns 1 (norm <= C, the identity).
        radial = torch.where(scale < 1.0, scale / (norm * norm), 0.0) * torch.sum(v * grad, dim=-2, keepdim=True)
        return torch.addcmul(grad * scale, v, radial, value=-1.0), None


class ClipNorm(Stabilizer):
    """clip_norm(v, C): rescale each feature's 3D vector to norm <= C; identity when C is None.

    Isotropic in the 3D axis, so it commutes with rotations. v: (N, 3, F). Acts where ||v|| > C.
    """

    @property
    def C(self) -> Optional[float]:
        return self.setting

    def forward(self, v: Tensor) -> Tensor:
        if self.C is None:
            return v
        if _use_plain_ops():
            return v * torch.clamp(self.C / vector_norm(v, dim=-2, keepdim=True), max=1.0)
        return _ClipNormFn.apply(v, self.C)

    def acted(self, v: Tensor) -> Tensor:
        return (vector_norm(v, dim=-2) > self.C).float().mean()


class NormSaturation(Stabilizer):
    """v * s tanh(||v|| / s) / ||v|| per feature over dim -2: bounds each 3D vector's norm by s.

    The vector counterpart of Saturation: isotropic (equivariant) where an elementwise tanh on
    the components would not be. Identity when s is None. v: (N, 3, F). Acts where ||v|| > 2s.
    """

    @property
    def s(self) -> Optional[float]:
        return self.setting

    def forward(self, v: Tensor) -> Tensor:
        if self.s is None:
            return v
        norm = vector_norm(v, dim=-2, keepdim=True)  # (N, 1, F)
        return v * (self.s * torch.tanh(norm / self.s) / norm)

    def acted(self, v: Tensor) -> Tensor:
        return (vector_norm(v, dim=-2) > 2 * self.s).float().mean()


class Tap(nn.Identity):
    """An identity that names a tensor for the monitor, which finds taps by this type.

    tensor: its name among the per-step non-finite flags (None: not flagged);
    stat: the statistic recorded of it on statistics steps, its max |entry| or, `vector`, its max
    per-feature 3D norm (None: none).
    """

    def __init__(self, tensor: Optional[str] = None, *, stat: Optional[str] = None, vector: bool = False):
        super().__init__()
        self.tensor, self.stat, self.vector = tensor, stat, vector

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in (("tensor", self.tensor), ("stat", self.stat)) if v)
