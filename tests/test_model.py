"""PaiNN: symmetries for random toggle combinations, aggregation, and every bound a stabilizer promises."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import assert_equivariant, overrides_of, random_system, tiny_model, toggle_sets

from painn_ablate.core.config import FAIRCHEM_STABILIZERS, compose, flatten, format_override
from painn_ablate.model.painn import Aggregate
from painn_ablate.model.stabilizers import NORM_EPS, ClipNorm, ClipValue, Saturation, vector_norm


@settings(max_examples=25, deadline=None)
@given(toggles=toggle_sets, seed=st.integers(0, 10_000))
def test_rotation_reflection_equivariance(toggles, seed):
    model, system = tiny_model(overrides_of(toggles), seed=seed), random_system(seed=seed, full=False)
    assert_equivariant(model, system, "rotation", seed)
    assert_equivariant(model, system, "reflection", seed)


@settings(max_examples=15, deadline=None)
@given(toggles=toggle_sets, seed=st.integers(0, 10_000))
def test_translation_invariance(toggles, seed):
    assert_equivariant(tiny_model(overrides_of(toggles), seed=seed), random_system(seed=seed), "translation", seed)


@settings(max_examples=15, deadline=None)
@given(toggles=toggle_sets, seed=st.integers(0, 10_000))
def test_permutation_equivariance(toggles, seed):
    assert_equivariant(tiny_model(overrides_of(toggles), seed=seed), random_system(seed=seed, full=False),
                       "permutation", seed)


def test_sum_and_mean_aggregation_differ_by_the_degree():
    pos, vel, charge, edges = random_system(full=False)
    n = pos.shape[0]
    msg = torch.randn(edges.shape[1], 3, 7, dtype=torch.float64)
    degree = torch.bincount(edges[1], minlength=n).double()
    assert degree.min() >= 1 and degree.unique().numel() > 1  # the test needs differing degrees
    inv = 1.0 / degree
    summed = Aggregate("sum")(msg, edges[1], n, inv)
    mean = Aggregate("mean")(msg, edges[1], n, inv)
    torch.testing.assert_close(summed, mean * degree[:, None, None], atol=1e-12, rtol=1e-12)
    # and the sum is the plain per-receiver sum
    torch.testing.assert_close(summed[3], msg[edges[1] == 3].sum(0))


def test_mean_aggregation_averages_over_the_neighbours_inside_the_cutoff():
    """The specification's N(i): an edge beyond r_cut carries a zero message and does not count in the
    mean, so adding far edges (a full graph instead of a radius graph) changes nothing."""
    model = tiny_model(["model=r2_full", "model.F=8", "model.L=3", "model.n_rbf=6", "model.r_cut=4.0"])
    pos, vel, charge, edges = random_system(full=True)
    r = (pos[edges[0]] - pos[edges[1]]).norm(dim=-1)
    inside = edges[:, r < model.r_cut]
    assert inside.shape[1] < edges.shape[1]  # the test needs edges beyond the cutoff
    with torch.no_grad():
        for a, b in zip(model(pos, vel, charge, edges), model(pos, vel, charge, inside)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_saturation_and_clamps_hold_on_adversarial_inputs():
    huge = torch.tensor([[-1e30, -7.0, 0.0, 3.0, 1e30]], dtype=torch.float64)
    out = Saturation(5.0, key="s_msg", tensor="message")(huge)
    assert out.abs().max() <= 5.0 and torch.isfinite(out).all()
    assert torch.equal(ClipValue(10.0, key="C_s", tensor="dq")(huge).abs().max(), torch.tensor(10.0, dtype=torch.float64))
    vec = torch.randn(4, 3, 6, dtype=torch.float64) * 1e20
    vec[0, :, 0] = 0.0  # a zero vector stays zero and finite
    clipped = ClipNorm(20.0, key="C_mu", tensor="mu")(vec)
    norms = torch.linalg.vector_norm(clipped, dim=-2)  # the exact norm, no eps
    assert norms.max() <= 20.0 * (1 + 1e-12)
    assert torch.isfinite(clipped).all() and clipped[0, :, 0].abs().max() == 0
    # direction is kept: clip_norm only rescales
    cos = (clipped * vec).sum(-2) / (vector_norm(clipped, dim=-2) * vector_norm(vec, dim=-2))
    torch.testing.assert_close(cos[1:], torch.ones_like(cos[1:]))


def test_stabilizers_off_are_exact_identities():
    x = torch.randn(5, 3, 4, dtype=torch.float64) * 1e6
    for module in (Saturation(None, key="s_mix", tensor="mixing_mlp"), ClipValue(None, key="C_q", tensor="q"),
                   ClipNorm(None, key="C_v", tensor="dmu")):
        assert module(x) is x


@pytest.mark.parametrize("preset", ["original", "r2_full"])
def test_state_bounds_hold_in_the_model(preset):
    """With r2_full, q and ||mu|| stay within C_q and C_mu after every mixing block, even for huge inputs."""
    model = tiny_model([f"model={preset}"], F=8, L=4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(30.0)  # adversarial weights
    pos, vel, charge, edges = random_system()
    seen = []
    hooks = [layer.mixing.register_forward_hook(lambda m, a, out: seen.append(out)) for layer in model.layers]
    model(pos, vel * 100, charge, edges)
    for h in hooks:
        h.remove()
    q_max = max(float(q.abs().max()) for q, _ in seen)
    mu_max = max(float(torch.linalg.vector_norm(mu, dim=-2).max()) for _, mu in seen)
    if preset == "r2_full":
        assert q_max <= 100.0 and mu_max <= 20.0 * (1 + 1e-9)
    else:
        assert q_max > 100.0 or mu_max > 20.0  # without clamps, these weights break the bounds


def test_zero_vector_norm_has_finite_gradient():
    v = torch.zeros(2, 3, 4, dtype=torch.float64, requires_grad=True)
    vector_norm(v, dim=-2).sum().backward()
    assert torch.isfinite(v.grad).all()
    assert math.isclose(float(vector_norm(torch.zeros(3, dtype=torch.float64), dim=-1)), math.sqrt(NORM_EPS))


def test_model_interface_shapes_and_gradients():
    model = tiny_model()
    pos, vel, charge, edges = random_system()
    pos_dt, vel_next = model(pos, vel, charge, edges)
    assert pos_dt.shape == pos.shape and vel_next.shape == vel.shape
    (pos_dt.sum() + vel_next.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_edge_charge_feeds_the_charge_product_of_each_edge_to_the_filter():
    model = tiny_model(["model.edge_charge=true"])
    assert model.filter_net.in_features == model.n_rbf + 1
    seen = []
    model.filter_out.register_forward_hook(lambda m, i, o: seen.append(torch.cat(o, dim=-1).detach().clone()))
    pos, vel, charge, edges = random_system(full=True)
    flipped = charge.clone()
    flipped[0] = -flipped[0]
    for c in (charge, -charge, flipped):
        model(pos, vel, c, edges)
    same, changed = torch.equal(seen[0], seen[1]), (seen[0] != seen[2]).any(dim=-1)
    touches = (edges[0] == 0) | (edges[1] == 0)
    inside = (pos[edges[0]] - pos[edges[1]]).norm(dim=-1) < model.r_cut  # W_ij = 0 beyond the cutoff
    assert same  # c_i c_j is unchanged when every charge flips
    assert (touches & inside).any() and (touches & ~inside).any()
    assert torch.equal(changed, touches & inside)  # and changes on exactly the edges of the flipped particle
    plain = tiny_model()
    assert plain.filter_net.in_features == plain.n_rbf


def test_compile_setting_of_a_bare_model():
    """PaiNN(cfg) compiles only on model.compile=true: auto needs the run's length, which the Trainer
    resolves and passes as compile= (no compile happens here: torch.compile wraps lazily)."""
    from painn_ablate.core.config import compose
    from painn_ablate.model.painn import PaiNN

    for setting, compiled in (("auto", False), ("false", False), ("true", True)):
        model = PaiNN(compose([f"model.compile={setting}", "model.F=4", "model.L=1"]).model)
        assert model.compile is compiled and (model._compiled_forward is not None) is compiled
    assert PaiNN(compose(["model.F=4", "model.L=1"]).model, compile=True).compile


# ----------------------------------------------------------------------------- one scale in three disguises


def test_on_a_full_5_particle_graph_mean_aggregation_g_and_alpha_inter_are_one_scale():
    """Without s_msg and the message clamps every interaction update is linear in the filter gain g, and
    on a full graph of 5 particles (every pair inside the cutoff) each node has |N(i)| = 4 neighbours: so
    degree-mean aggregation, g = 1/4 and alpha_inter = 1/4 are the same operation. What the ablations call
    the aggregation's effect there is the interaction's scale; only a graph whose degree varies tells them
    apart (the last assertion)."""
    system = random_system(n_graphs=2, n=5, seed=3)
    pos = system[0] * 0.3  # every pair well inside r_cut = 4
    full = (pos, *system[1:])
    outputs = [tiny_model([f"model={preset}", *extra], seed=5)(*full)
               for preset, extra in (("original", ["model.aggregation=mean"]), ("original", ["model.stabilizers.g=0.25"]),
                                     ("original", ["model.stabilizers.alpha_inter=0.25"]))]
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    varying = random_system(n_graphs=2, n=5, seed=3, full=False)
    varying = (varying[0] * 0.3, *varying[1:])
    mean, gain = (tiny_model(["model=original", extra], seed=5)(*varying)[0]
                  for extra in ("model.aggregation=mean", "model.stabilizers.g=0.25"))
    assert not torch.allclose(mean, gain, rtol=1e-6)


# ----------------------------------------------------------------------------- fairchem's stabilizers


@pytest.mark.parametrize("name", FAIRCHEM_STABILIZERS)
def test_each_fairchem_part_is_an_exact_no_op_at_painn_s_value_and_acts_when_on(name):
    key = f"model.stabilizers.{name}"
    system = random_system(n_graphs=2, n=5, seed=1)
    plain = tiny_model(["model=original"], seed=2)(*system)
    at_default = tiny_model(["model=original", f"{key}={format_override(flatten(compose([]))[key])}"], seed=2)(*system)
    switched = tiny_model(["model=original", f"ablate={name}"], seed=2)(*system)
    for a, b in zip(plain, at_default):
        assert torch.equal(a, b)
    assert not torch.allclose(plain[0], switched[0], rtol=1e-6)
