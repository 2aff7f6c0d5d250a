"""The performance rewrites of the model compute the document's equations: a plain reference agrees.

The reference below is the straightforward transcription of the equations (advanced indexing,
bincount degrees, autograd through every stabilizer); the model shares its parameters. In float64
the two agree to ~1e-15 relative, so 1e-10 flags any real difference (which shows as O(1e-3) or
more) while leaving room for the reordered sums.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support import overrides_of, random_system, stabilizer_sets, tiny_model

from painn_ablate.model.painn import _VectorMessageFn, cosine_cutoff, radial_basis
from painn_ablate.model.stabilizers import NORM_EPS, ClipNorm, Saturation

RTOL = 1e-10


def reference_forward(model, pos, vel, charge, edge_index):
    def sat(u, s):
        return u if s is None else s * torch.tanh(u / s)

    def clip(x, C):
        return x if C is None else x.clamp(-C, C)

    def norm(v, dim):
        return torch.sqrt(torch.sum(v * v, dim=dim) + NORM_EPS)

    def clip_norm(v, C):
        return v if C is None else v * torch.clamp(C / norm(v, -2)[:, None, :], max=1.0)

    n, F = pos.shape[0], model.F
    j, i = edge_index
    r_vec = pos[j] - pos[i]
    r = norm(r_vec, -1)
    dir_ij = r_vec / r[:, None]
    inv_degree = 1.0 / torch.bincount(i[r < model.r_cut], minlength=n).clamp(min=1).to(pos.dtype)
    W = model.g * (model.filter_net(radial_basis(r, model.n_rbf, model.r_cut)) * cosine_cutoff(r, model.r_cut)[:, None])
    filters = [W] * model.L if model.shared_filters else torch.split(W, 3 * F, dim=-1)
    q = model.embed(torch.stack([charge, norm(vel, -1)], dim=-1))
    mu = model.vel_lift(vel[:, :, None])
    for layer, W_ij in zip(model.layers, filters):
        it, mix = layer.interaction, layer.mixing

        def aggregate(msg):
            out = msg.new_zeros((n,) + msg.shape[1:]).index_add_(0, i, msg)
            return out * inv_degree.view((-1,) + (1,) * (out.dim() - 1)) if it.aggregate.mode == "mean" else out

        x_ij = sat(W_ij * it.inter_mlp(q)[j], it.s_msg.s)
        x_q, x_R, x_mu = torch.split(x_ij, F, dim=-1)
        dmu_ij = x_R[:, None, :] * dir_ij[:, :, None] + x_mu[:, None, :] * mu[j]
        dq, dmu = clip(aggregate(x_q), it.C_s.C), clip_norm(aggregate(dmu_ij), it.C_v.C)
        q, mu = q + it.alpha_inter * dq, mu + it.alpha_inter * dmu

        mu_V, mu_W = torch.split(mix.mu_linear(mu), F, dim=-1)
        a = sat(mix.intra_mlp(torch.cat([q, norm(mu_V, -2)], dim=-1)), mix.s_mix.s)
        a_qq, a_mu, a_qmu = torch.split(a, F, dim=-1)
        dq = a_qq + a_qmu * torch.sum(mu_V * mu_W, dim=-2)
        dmu = a_mu[:, None, :] * mu_W
        q, mu = clip(q + mix.alpha_mix * dq, mix.C_q.C), clip_norm(mu + mix.alpha_mix * dmu, mix.C_mu.C)
    return model.head_pos(mu).squeeze(-1), model.head_vel(mu).squeeze(-1)


def outputs_and_grads(fn, model, inputs, weights):
    model.zero_grad()
    outs = fn(model, *inputs)
    sum((w * o).sum() for w, o in zip(weights, outs)).backward()
    return [o.detach() for o in outs], [p.grad.clone() for p in model.parameters()]


def assert_close_rel(a, b):
    scale = b.abs().max().clamp(min=1e-300)
    assert float((a - b).abs().max() / scale) <= RTOL


@settings(max_examples=20, deadline=None)
@given(toggles=stabilizer_sets, seed=st.integers(0, 10_000), clamp_hard=st.booleans())
def test_model_matches_the_reference_transcription(toggles, seed, clamp_hard):
    overrides = overrides_of(toggles)
    if clamp_hard:  # clamps that act on most entries, so their backward paths are exercised
        overrides += ["model.stabilizers.C_v=0.05", "model.stabilizers.C_mu=0.05", "model.stabilizers.C_s=0.05",
                      "model.stabilizers.s_msg=0.1"]
    model = tiny_model(overrides, seed=seed)
    pos, vel, charge, edges = random_system(seed=seed, full=False)
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(pos.shape, generator=g, dtype=torch.float64) for _ in range(2)]
    inputs = (pos, vel, charge, edges)
    outs, grads = outputs_and_grads(lambda m, *x: m(*x), model, inputs, weights)
    ref_outs, ref_grads = outputs_and_grads(reference_forward, model, inputs, weights)
    for a, b in zip(outs, ref_outs):
        assert_close_rel(a, b)
    for a, b in zip(grads, ref_grads):
        assert_close_rel(a, b)


def test_hand_written_backwards_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 3, 5, generator=g, dtype=torch.float64) * 3  # norms ~5: some above C=4, some below
    v[0, :, 0] = 0.0  # the zero vector: eps keeps its gradient finite
    assert torch.autograd.gradcheck(ClipNorm(4.0, key="C_v", tensor="dmu"), (v.requires_grad_(),))
    u = torch.randn(6, 7, generator=g, dtype=torch.float64) * 4
    assert torch.autograd.gradcheck(Saturation(2.0, key="s_msg", tensor="message"), (u.requires_grad_(),))
    x_R, x_mu, mu_j = (torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
                       for shape in ((4, 5), (4, 5), (4, 3, 5)))
    dir_ij = torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=-1)
    assert torch.autograd.gradcheck(_VectorMessageFn.apply, (x_R, x_mu, dir_ij.requires_grad_(), mu_j))


@pytest.mark.slow
def test_compiled_training_forward_matches_eager_with_the_monitor():
    """model.compile traces the monitor's hooks into the graph: same outputs, statistics and NaN origin."""
    from omegaconf import OmegaConf

    from painn_ablate.core.config import compose
    from painn_ablate.model.painn import PaiNN
    from painn_ablate.training.monitor import Monitor

    cfg = compose(["model=r2_full", "model.F=8", "model.L=3", "model.n_rbf=6", "model.r_cut=4.0"])
    compiled_cfg = OmegaConf.create(OmegaConf.to_container(cfg.model))
    compiled_cfg.compile = True
    pos, vel, charge, edges = (t.float() if t.is_floating_point() else t for t in random_system(full=False))
    results = []
    for model_cfg in (cfg.model, compiled_cfg):
        torch.manual_seed(0)
        model = PaiNN(model_cfg)
        with Monitor(model, cfg.monitor) as mon:
            mon.begin_step(full=True)
            outs = model(pos, vel, charge, edges)
            stats = mon.collect()
            with torch.no_grad():
                model.layers[1].interaction.inter_mlp[2].bias.fill_(math.inf)
            mon.begin_step(full=False)
            model(pos, vel, charge, edges)
            origin = mon.forward_nonfinite(step=3)
        results.append((outs, stats, origin))
    (eager_outs, eager_stats, eager_origin), (comp_outs, comp_stats, comp_origin) = results
    for a, b in zip(eager_outs, comp_outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [k[:3] for k in eager_stats] == [k[:3] for k in comp_stats]
    for (*_, a), (*_, b) in zip(eager_stats, comp_stats):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    assert eager_origin is not None and eager_origin == comp_origin
