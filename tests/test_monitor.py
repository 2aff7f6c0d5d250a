"""Monitor hooks: statistics against an independent computation, origins of NaN/Inf, hook hygiene."""

import math

import numpy as np
import pytest
import torch
from support import random_system

from painn_ablate.core.config import compose
from painn_ablate.model.painn import PaiNN
from painn_ablate.training.blowup import EarlyWarning
from painn_ablate.training.monitor import Monitor, backward_nonfinite


def build(overrides=(), L=3, F=8, seed=0):
    cfg = compose([f"model.L={L}", f"model.F={F}", "model.n_rbf=6", "model.r_cut=4.0", *overrides])
    torch.manual_seed(seed)
    return PaiNN(cfg.model), cfg


def inputs(seed=0):
    pos, vel, charge, edges = random_system(seed=seed)
    return pos.float(), vel.float(), charge.float(), edges


def capture_block_outputs(model):
    """Block outputs recorded by plain hooks of this test, independent of Monitor."""
    seen = {}
    handles = []
    for l, layer in enumerate(model.layers, start=1):
        for block in ("interaction", "mixing"):
            def hook(m, a, out, key=(l, block)):
                seen[key] = tuple(t.detach().double().numpy() for t in out)
            handles.append(getattr(layer, block).register_forward_hook(hook))
    return seen, handles


def test_statistics_match_an_independent_numpy_computation():
    model, cfg = build(["model=r2_full"])
    seen, handles = capture_block_outputs(model)
    with Monitor(model, cfg.monitor) as mon:
        mon.begin_step(full=True)
        model(*inputs())
        rows = {(l, b, s): v for l, b, s, v in mon.collect()}
    for h in handles:
        h.remove()
    for (l, block), (q, mu) in seen.items():
        norm = np.sqrt((mu ** 2).sum(axis=1) + 1e-8).ravel()  # per-feature ||mu|| over the 3D axis
        expected = {"q_mean": q.mean(), "q_std": q.std(ddof=1), "q_absmax": np.abs(q).max(),
                    "mu_norm_mean": norm.mean(), "mu_norm_max": norm.max(),
                    "mu_norm_q": np.quantile(norm, cfg.monitor.quantile), "nonfinite_q": 0, "nonfinite_mu": 0}
        for stat, value in expected.items():
            assert rows[(l, block, stat)] == pytest.approx(value, rel=1e-4, abs=1e-6), (l, block, stat)


def test_outputs_are_identical_with_and_without_hooks_and_hooks_are_removed():
    model, cfg = build(["model=r2_full"])
    x = inputs()
    before = model(*x)
    with Monitor(model, cfg.monitor) as mon:
        mon.begin_step(full=True)
        during = model(*x)
        assert len(mon.handles) > 0
    after = model(*x)
    for a, b, c in zip(before, during, after):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("layer, block, param, tensor", [
    (3, "mixing", "intra_mlp.0.weight", "mixing_mlp"),
    (2, "interaction", "inter_mlp.2.weight", "x"),
    (2, "mixing", "mu_linear.weight", "mu_VW"),
])
def test_injected_inf_is_located_to_its_layer_and_block(layer, block, param, tensor):
    model, cfg = build(["model=r2_full"], L=4)
    with torch.no_grad():
        model.layers[layer - 1].get_submodule(block).get_parameter(param)[0, 0] = math.inf
    with Monitor(model, cfg.monitor) as mon:
        mon.begin_step(full=False)
        model(*inputs())
        origin = mon.forward_nonfinite(step=7)
    assert origin is not None
    assert (origin.step, origin.layer, origin.block, origin.phase) == (7, layer, block, "forward")
    assert origin.tensor == tensor


def test_inf_hidden_by_a_clamp_is_still_found():
    """tanh and clip turn an Inf into a finite number; the monitor checks their inputs."""
    model, cfg = build(["model=r2_full"])
    with torch.no_grad():
        model.layers[1].interaction.inter_mlp[2].bias.fill_(math.inf)
    with Monitor(model, cfg.monitor) as mon:
        mon.begin_step(full=False)
        pos_dt, vel_next = model(*inputs())
        origin = mon.forward_nonfinite(step=0)
    assert origin is not None and (origin.layer, origin.block) == (2, "interaction")


def test_nonfinite_gradient_is_located_by_parameter():
    model, _ = build()
    pos_dt, vel_next = model(*inputs())
    (pos_dt.sum() + vel_next.sum()).backward()
    assert backward_nonfinite(model, step=3) is None
    model.layers[2].mixing.intra_mlp[0].weight.grad[0, 0] = math.nan
    origin = backward_nonfinite(model, step=3)
    assert (origin.layer, origin.block, origin.phase) == (3, "mixing", "backward")
    assert origin.tensor == "grad:layers.2.mixing.intra_mlp.0.weight"


def clamp_fractions(overrides, scale_inputs=1.0):
    model, cfg = build(overrides)
    pos, vel, charge, edges = inputs()
    with Monitor(model, cfg.monitor) as mon:
        mon.begin_step(full=True)
        model(pos, vel * scale_inputs, charge, edges)
        return {(l, b, s): v for l, b, s, v in mon.collect() if s.endswith("_frac")}


def test_clamp_fractions_are_zero_for_original_and_positive_where_a_clamp_acted():
    original = clamp_fractions(["model=original"], scale_inputs=100.0)
    assert original and all(v == 0.0 for v in original.values())
    clamps = clamp_fractions(["model=r2_full", "model.stabilizers.C_mu=0.01", "model.stabilizers.C_v=0.01",
                              "model.stabilizers.C_q=0.01", "model.stabilizers.C_s=0.001"], scale_inputs=100.0)
    saturations = clamp_fractions(["model=r2_full", "model.stabilizers.s_msg=0.001",
                                   "model.stabilizers.s_mix=0.001"], scale_inputs=100.0)
    for l in (1, 2, 3):
        for block, stat in (("mixing", "C_mu_frac"), ("mixing", "C_q_frac"), ("interaction", "C_v_frac"),
                            ("interaction", "C_s_frac")):
            assert clamps[(l, block, stat)] > 0, (l, stat)
        assert saturations[(l, "interaction", "s_msg_frac")] > 0
        assert saturations[(l, "mixing", "s_mix_frac")] > 0
    assert all(0.0 <= v <= 1.0 for v in [*clamps.values(), *saturations.values()])


def test_early_warning_needs_depthwise_amplification_that_grows():
    cfg = compose(["monitor.warn_window=3"]).monitor
    profile = lambda base, factor: [(l, "mixing", "mu_norm_max", base * factor ** (l - 1)) for l in range(1, 6)]  # noqa: E731
    steep_but_steady = EarlyWarning(cfg, n_layers=5)
    for _ in range(6):
        signal = steep_but_steady.update(profile(8.0, 10.0))  # ratio 1e4, no growth over time
    assert signal["mu_ratio"] == pytest.approx(1e4) and not signal["fires"]
    flat_but_growing = EarlyWarning(cfg, n_layers=5)
    for k in range(6):
        signal = flat_but_growing.update(profile(8.0 * 10 ** k, 1.1))  # grows 10x per snapshot, ratio 1.46
    assert signal["mu_growth"] > cfg.warn_growth and not signal["fires"]
    exploding = EarlyWarning(cfg, n_layers=5)
    fired = [exploding.update(profile(8.0, 2.0 * 1.5 ** k))["fires"] for k in range(6)]  # ratio and growth rise
    assert fired[:2] == [False, False] and fired[-1]


def test_every_acting_stabilizer_of_the_schema_is_found_and_reported_by_type():
    """The schema is the one list: each `scale` setting is a model.Stabilizer with that key, the monitor
    finds it by type and reports `acted_stat(key)` for it, on and off."""
    from painn_ablate.core.config import ACTING, STABILIZER_FIELDS, acted_stat
    from painn_ablate.model.stabilizers import Stabilizer

    scales = {f.name for f in STABILIZER_FIELDS if f.metadata["kind"] == "scale"}
    assert scales == set(ACTING) - {"grad_clip"}
    for overrides in ([], ["model=r2_full", "model.stabilizers.s_coupling=5", "model.stabilizers.s_gating=5"]):
        model, cfg = build(overrides, L=2)
        found = {m.key for m in model.modules() if isinstance(m, Stabilizer)}
        assert found == scales
        with Monitor(model, cfg.monitor) as mon:
            mon.begin_step(full=True)
            model(*inputs())
            stats = {(layer, stat) for layer, _, stat, _ in mon.collect()}
        assert {(l, acted_stat(k)) for l in (1, 2) for k in scales} <= stats
