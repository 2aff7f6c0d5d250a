"""Forward hooks that watch PaiNN layer by layer: statistics and NaN/Inf origins (what they mean for a
blow-up, and the early warning, is training.blowup's).

Two kinds of work, both from the same hooks:

* every step, cheaply: a non-finite flag for each block's output (q, mu) and
  for every tensor a stabilizer could hide an Inf in (inputs of tanh
  saturations and clamps), kept on the device and read with one sync;
* every `monitor.every` steps: per-layer statistics of q and ||mu||, of the
  aggregated messages, of the mixing feedback terms, and how much each
  stabilizer actually acted.

`Monitor` is a context manager: hooks exist only inside `with`, so nothing
carries over to the next run or trial, and the model's outputs are the same
with and without it (hooks only read).

Statistic names (the `stat` column, and W&B's `layer{l}/{block}/{stat}`):

    q_mean q_std q_absmax                          state q after the block
    mu_norm_mean mu_norm_max mu_norm_q             per-feature ||mu|| after the block (q: monitor.quantile)
    nonfinite_q nonfinite_mu                       non-finite entries after the block
    (layer 0, block input: q and ||mu|| of the initial state q^(0), mu^(0))
    dq_absmax dmu_norm_max                         aggregated messages before C_s / C_v (interaction)
    qmu_absmax mu_term_norm_max                    feedback terms dqmu*<mu_V,mu_W>, dmu*mu_W (mixing)
    <key>_frac                                     how often stabilizer <key> acted (model.Stabilizer.acted):
                                                   s_msg s_mix s_coupling: entries in tanh saturation |u| > 2s,
                                                   s_gating: vectors in norm saturation ||v|| > 2s,
                                                   C_s C_v C_q C_mu: entries / vectors the clamp cut
    grad_norm grad_norm_clipped                    gradient norm of the block's parameters
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
from torch import Tensor, nn

from painn_ablate.model.painn import PaiNN
from painn_ablate.model.stabilizers import Stabilizer, Tap, vector_norm

log = logging.getLogger(__name__)

BLOCKS = ("interaction", "mixing")


@dataclass
class NonFinite:
    """Where a non-finite value first appeared; layer is 1-based, None outside the layers."""

    step: int
    phase: str  # forward | loss | backward
    tensor: str  # filter, x, message, dq, dmu, mu_VW, mixing_mlp, q, mu, pos_dt, vel_next, loss, grad:<param>
    layer: Optional[int] = None
    block: Optional[str] = None  # interaction | mixing | embed | head | filter

    def as_dict(self) -> dict:
        return {"step": self.step, "layer": self.layer, "block": self.block, "tensor": self.tensor,
                "phase": self.phase}


def _extrema(t: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) of t, both finite exactly when t is: a NaN propagates into both, an Inf is one of them.

    One reduction pass with no temporary; ~isfinite(t).all() costs ~15x more on CPU (a bool
    tensor the size of t, then a reduction), which made the per-step flags a third of a step.
    """
    t = t.detach()
    if t.numel() == 0:
        return t.new_zeros(()), t.new_zeros(())
    return torch.aminmax(t)


def _quantile(x: Tensor, q: float) -> Tensor:
    """torch.quantile(x, q) of a 1-D tensor (linear interpolation; NaN if x has a NaN) by a partial sort.

    torch.quantile sorts all of x: ~2.4 ms for one block's 32k norms on a CPU core, ten blocks per
    statistics step; topk of the 1% tail takes ~0.1 ms.
    """
    n = x.numel()
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    if lo >= (n - 1) / 2:
        top = torch.topk(x, n - lo).values  # the n - lo largest, descending
        a, b = top[n - 1 - lo], top[n - 1 - hi]
    else:
        bottom = torch.topk(x, hi + 1, largest=False).values  # the hi + 1 smallest, ascending
        a, b = bottom[lo], bottom[hi]
    value = a + (b - a) * (pos - lo)
    largest = x.max()  # NaN when x has one: max propagates it, topk orders it
    return torch.where(torch.isnan(largest), largest, value)


class Monitor:
    """Per-layer statistics and non-finite detection for one PaiNN.

    Usage:
        with Monitor(model, cfg.monitor) as mon:
            mon.begin_step(step, full=step % every == 0)
            out = model(...)
            origin = mon.forward_nonfinite(step)   # None when all finite
            rows = mon.collect()                    # [(layer, block, stat, value)] on full steps
    """

    def __init__(self, model: PaiNN, cfg):
        self.model = model
        self.quantile = float(cfg.quantile)
        self.handles: list = []
        self.full = False
        self._flags: list[tuple[tuple, tuple[Tensor, Tensor]]] = []  # ((layer, block, tensor), (min, max))
        self._stats: list[tuple[int, str, str, Tensor]] = []

    # -- hook management

    def __enter__(self) -> "Monitor":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def attach(self) -> None:
        """Hook the model's taps, its stabilizers (found by type) and each block's output state."""
        m = self.model
        hook = self._register
        hook(m.filter_out, self._on_filter)
        hook(m.input_state, partial(self._on_state, 0, "input"))
        for l, layer in enumerate(m.layers, start=1):
            for block in BLOCKS:
                module = getattr(layer, block)
                for part in module.modules():
                    if isinstance(part, Stabilizer):
                        hook(part, partial(self._on_stabilizer, l, block))
                    elif isinstance(part, Tap):
                        hook(part, partial(self._on_tap, l, block))
                hook(module, partial(self._on_state, l, block))
        hook(m.head_pos, partial(self._on_head, "pos_dt"))
        hook(m.head_vel, partial(self._on_head, "vel_next"))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _register(self, module: nn.Module, fn) -> None:
        self.handles.append(module.register_forward_hook(fn))

    # -- per step

    def begin_step(self, full: bool) -> None:
        self.full = full
        self._flags.clear()
        self._stats.clear()

    def read_flags(self) -> list[tuple[tuple, float, float]]:
        """[((layer, block, tensor), min, max)] of the last forward pass in data-flow order (one sync)."""
        if not self._flags:
            return []
        extrema = torch.stack([x for _, pair in self._flags for x in pair]).float().tolist()
        return [(where, extrema[2 * k], extrema[2 * k + 1]) for k, (where, _) in enumerate(self._flags)]

    @staticmethod
    def first_nonfinite(flags: list[tuple[tuple, float, float]], step: int) -> Optional[NonFinite]:
        """The first non-finite tensor among `read_flags()`, None when all are finite."""
        for (layer, block, tensor), lo, hi in flags:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                return NonFinite(step=step, phase="forward", tensor=tensor, layer=layer, block=block)
        return None

    @staticmethod
    def state_absmax(flags: list[tuple[tuple, float, float]]) -> dict[tuple[int, str], tuple[float, float]]:
        """(layer, block) -> (max |q|, max |mu component|) after each block, from `read_flags()`."""
        out: dict[tuple[int, str], list[float]] = {}
        for (layer, block, tensor), lo, hi in flags:
            if tensor in ("q", "mu") and layer is not None:
                pair = out.setdefault((layer, block), [0.0, 0.0])
                pair[tensor == "mu"] = max(abs(lo), abs(hi))
        return {k: (v[0], v[1]) for k, v in out.items()}

    def forward_nonfinite(self, step: int) -> Optional[NonFinite]:
        """The first non-finite tensor of the last forward pass in data-flow order (one sync)."""
        return self.first_nonfinite(self.read_flags(), step)

    def collect(self) -> list[tuple[int, str, str, float]]:
        """Statistics of the last forward pass (full steps only): [(layer, block, stat, value)]."""
        if not self._stats:
            return []
        values = torch.stack([v.detach().float() for *_, v in self._stats]).tolist()
        return [(l, b, s, v) for (l, b, s, _), v in zip(self._stats, values)]

    # -- hooks: each reads, none writes

    def _flag(self, layer, block, tensor, t: Tensor) -> None:
        self._flags.append(((layer, block, tensor), _extrema(t)))

    def _stat(self, layer: int, block: str, stat: str, value: Tensor) -> None:
        self._stats.append((layer, block, stat, value))

    def _on_filter(self, module, args, W: list[Tensor]) -> None:
        for l, W_ij in enumerate(W, start=1):
            self._flag(None if self.model.shared_filters else l, "interaction", "filter", W_ij)

    def _on_stabilizer(self, layer, block, module: Stabilizer, args, out) -> None:
        x = args[0].detach()
        if module.setting is None:
            if self.full:
                self._stat(layer, block, module.stat, x.new_zeros(()))  # on the model's device: collect stacks them
            return
        self._flag(layer, block, module.tensor, x)
        if self.full:
            self._stat(layer, block, module.stat, module.acted(x))

    def _on_tap(self, layer, block, module: Tap, args, out) -> None:
        if module.tensor is not None:
            self._flag(layer, block, module.tensor, out)
        if module.stat is not None and self.full:
            x = out.detach()
            self._stat(layer, block, module.stat, (vector_norm(x, dim=-2) if module.vector else x.abs()).max())

    def _on_state(self, layer, block, module, args, out) -> None:
        q, mu = out
        self._flag(layer, block, "q", q)
        self._flag(layer, block, "mu", mu)
        if not self.full:
            return
        q, mu = q.detach(), mu.detach()
        norm = vector_norm(mu, dim=-2).flatten()  # (N * F,)
        sample = norm if norm.numel() <= 1_000_000 else norm[:: norm.numel() // 1_000_000 + 1]
        for stat, value in (
            ("q_mean", q.mean()),
            ("q_std", q.std()),
            ("q_absmax", q.abs().max()),
            ("mu_norm_mean", norm.mean()),
            ("mu_norm_max", norm.max()),
            ("mu_norm_q", _quantile(sample, self.quantile)),
            ("nonfinite_q", (~torch.isfinite(q)).sum()),
            ("nonfinite_mu", (~torch.isfinite(mu)).sum()),
        ):
            self._stat(layer, block, stat, value)

    def _on_head(self, tensor, module, args, out) -> None:
        self._flag(None, "head", tensor, out)


# ----------------------------------------------------------------------------- backward


def layer_grad_norms(model: PaiNN) -> list[tuple[int, str, Tensor]]:
    """Gradient norm of each block's parameters: [(layer, block, norm)] (no sync)."""
    out = []
    for l, layer in enumerate(model.layers, start=1):
        for block in BLOCKS:
            grads = [p.grad for p in getattr(layer, block).parameters() if p.grad is not None]
            if grads:
                out.append((l, block, torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
    return out


def backward_nonfinite(model: PaiNN, step: int) -> Optional[NonFinite]:
    """Locate a non-finite gradient: the parameter closest to the loss, as backward meets it first.

    None when every gradient is finite (a total norm can overflow to inf on finite but huge gradients).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if not named:
        return None

    def depth(name: str) -> tuple[int, int]:
        parts = name.split(".")
        if parts[0] == "layers":
            return (int(parts[1]) + 1, 1 if parts[2] == "mixing" else 0)
        return (model.L + 1, 0) if parts[0].startswith("head") else (0, 0)

    name, _ = max(named, key=lambda np_: depth(np_[0]))
    parts = name.split(".")
    layer, block = (int(parts[1]) + 1, parts[2]) if parts[0] == "layers" else (None, parts[0])
    return NonFinite(step=step, phase="backward", tensor=f"grad:{name}", layer=layer, block=block)
