"""Config: presets, overrides, ablation designs and one-line errors."""

import os

import pytest

from painn_ablate.core.config import (
    ABLATIONS,
    COMPILE_MIN_STEPS,
    FAIRCHEM_STABILIZERS,
    MECHANISM_TOGGLES,
    PRESETS,
    ConfigError,
    all_keys,
    compile_pays,
    compose,
    flatten,
    format_override,
)

R2 = {"g": 0.5, "s_msg": 5.0, "s_mix": 5.0, "alpha_inter": 0.5, "alpha_mix": 0.5,
      "C_s": 10.0, "C_v": 10.0, "C_q": 100.0, "C_mu": 20.0}  # the document's R2_full values
PAINN_MECHANISMS = {"coupling": True, "s_coupling": None, "s_gating": None, "mu0": "velocity", "mu0_scale": 1.0}
PAINN_FAIRCHEM = {"q_layernorm": False, "scaled_silu": False, "vgate_scale": 1.0, "vmsg_inv_sqrt_f": False,
                  "dot_inv_sqrt_f": False, "q_residual_scale": 1.0, "mix_dq_scale": 1.0}  # fairchem's parts, off
FAIRCHEM_NAMES = {*FAIRCHEM_STABILIZERS, "fairchem"}


def test_original_is_every_stabilizer_off():
    cfg = compose(["model=original"])
    st = cfg.model.stabilizers
    assert (st.g, st.alpha_inter, st.alpha_mix) == (1.0, 1.0, 1.0)
    assert all(st[k] is None for k in ("s_msg", "s_mix", "C_s", "C_v", "C_q", "C_mu"))
    assert cfg.model.aggregation == "sum" and cfg.train.grad_clip is None
    assert compose([]) == cfg  # the schema defaults are the original


def test_r2_full_has_the_documents_values():
    cfg = compose(["model=r2_full"])
    assert dict(cfg.model.stabilizers) == {**R2, **PAINN_MECHANISMS, **PAINN_FAIRCHEM}  # and PaiNN's mechanisms
    assert cfg.model.aggregation == "mean" and cfg.train.grad_clip == 1.0
    assert cfg.model.preset == "r2_full"


def test_preset_applies_first_whatever_the_order():
    a = compose(["model.stabilizers.s_msg=3", "model=r2_full", "train.lr=3e-3", "seed=1"])
    b = compose(["seed=1", "model=r2_full", "train.lr=3e-3", "model.stabilizers.s_msg=3"])
    assert a == b and a.model.stabilizers.s_msg == 3.0 and a.train.lr == 3e-3 and a.seed == 1


def test_single_toggle_on_top_of_preset():
    cfg = compose(["model=r2_full", "model.stabilizers.C_mu=null", "model.aggregation=sum"])
    assert cfg.model.stabilizers.C_mu is None and cfg.model.aggregation == "sum"
    assert cfg.model.stabilizers.C_q == 100.0


@pytest.mark.parametrize("preset,name", [*(("r2_full", n) for n in ABLATIONS
                                            if n != "none" and n not in MECHANISM_TOGGLES and n not in FAIRCHEM_NAMES),
                                          *(("fairchem", n) for n in sorted(FAIRCHEM_NAMES))])
def test_ablation_is_leave_one_out_on_its_preset_and_add_one_in_on_original(preset, name):
    base_r2, base_orig = flatten(compose([f"model={preset}"])), flatten(compose(["model=original"]))
    loo = flatten(compose([f"model={preset}", f"ablate={name}"]))
    aoi = flatten(compose(["model=original", f"ablate={name}"]))
    keys = set(ABLATIONS[name])
    assert keys and all(base_r2[k] != base_orig[k] for k in keys)  # each part is on in its preset
    for key in base_r2:
        if key in ("ablate", "model.preset"):
            continue
        if key in keys:
            assert loo[key] == base_orig[key] and aoi[key] == base_r2[key], key
        else:
            assert loo[key] == base_r2[key] and aoi[key] == base_orig[key], key


@pytest.mark.parametrize("name", MECHANISM_TOGGLES)
def test_a_mechanism_toggle_flips_the_same_way_on_both_presets(name):
    """R2_full keeps PaiNN's mixing terms, so ablate=<toggle> switches the toggle on for either preset."""
    key = ABLATIONS[name][0]
    on_r2 = flatten(compose(["model=r2_full", f"ablate={name}"]))
    on_orig = flatten(compose(["model=original", f"ablate={name}"]))
    assert on_r2[key] == on_orig[key] != flatten(compose(["model=original"]))[key]
    rest = {k: v for k, v in on_orig.items() if k not in (key, "ablate")}
    assert rest == {k: v for k, v in flatten(compose(["model=original"])).items() if k not in (key, "ablate")}


def test_saved_config_reruns_exactly(tmp_path):
    cfg = compose(["model=r2_full", "ablate=s_msg+clamps", "train.lr=2e-3", "seed=3"])
    path = tmp_path / "config.yaml"
    from omegaconf import OmegaConf

    path.write_text(OmegaConf.to_yaml(cfg))
    assert compose([], base=path) == cfg  # the saved ablation is not applied twice


@pytest.mark.parametrize("overrides, key", [
    (["model.stabilizers.smsg=5"], "model.stabilizers.s_msg"),  # did-you-mean
    (["train.lrr=1e-3"], "train.lr"),
    (["model.L=abc"], "model.L"),
    (["model.stabilizers.s_msg=0"], "model.stabilizers.s_msg"),
    (["model.stabilizers.C_mu=-1"], "model.stabilizers.C_mu"),
    (["model.L=0"], "model.L"),
    (["model.aggregation=max"], "model.aggregation"),
    (["model=r3_full"], "r2_full"),
    (["ablate=s_mgs"], "s_msg"),
    (["monitor.on_nonfinite=explode"], "monitor.on_nonfinite"),
    (["train.grad_clip=0"], "train.grad_clip"),
    (["model.compile=maybe"], "model.compile"),
    (["seed"], "seed"),
])
def test_bad_input_is_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_every_schema_key_is_overridable_with_its_own_value():
    """Each leaf key of the schema, set on the command line to the value it has, composes back to it
    (format_override is compose's inverse), on every preset."""
    keys = all_keys()
    assert "model.stabilizers.C_mu" in keys and "train.grad_clip" in keys and "data.system" in keys
    assert set(PRESETS) == {"original", "r2_full", "fairchem"}
    for preset in PRESETS:
        base = flatten(compose([f"model={preset}"]))
        for key in keys:
            if key == "model.preset":  # set by model=<name>, not overridable on its own
                continue
            again = flatten(compose([f"model={preset}", f"{key}={format_override(base[key])}"]))
            assert again == base, key


@pytest.mark.parametrize("preset,ablate,name,slug", [("r2_full", "none", "r2_full", "r2_full"),
                                                     ("r2_full", "s_msg", "r2_full - s_msg", "r2_full-s_msg"),
                                                     ("original", "alpha+g", "original + alpha+g", "original+alpha+g"),
                                                     ("fairchem", "q_layernorm", "fairchem - q_layernorm",
                                                      "fairchem-q_layernorm")])
def test_one_experiment_name_and_every_spelling_reads_back(preset, ablate, name, slug):
    from painn_ablate.core.config import experiment_name, experiment_slug, parse_experiment

    assert experiment_name(preset, ablate) == name and experiment_slug(preset, ablate) == slug
    assert parse_experiment(name) == parse_experiment(slug) == (preset, ablate)


@pytest.mark.parametrize("text", ["r2_fullx", "r2_full + s_msg", "original - alpha", "original + nope", "nothing"])
def test_a_bad_experiment_is_a_one_line_config_error(text):
    from painn_ablate.core.config import parse_experiment

    with pytest.raises(ConfigError, match="experiment|stabilizer"):
        parse_experiment(text)


def test_compile_is_auto_by_default_and_auto_compiles_the_runs_that_pay():
    """auto compiles a run of >= COMPILE_MIN_STEPS steps on cpu or cuda; true and false are kept; the
    trainer's step count (epochs included) is what the rule sees."""
    from painn_ablate.training.trainer import total_steps

    assert compose([]).model.compile == "auto" and compose(["model.compile=false"]).model.compile is False
    assert compose(["model.compile=true"]).model.compile is True
    assert COMPILE_MIN_STEPS == 1000
    for device in ("cpu", "cuda"):
        assert compile_pays("auto", 1000, device) and compile_pays("auto", 1500, device)
        assert not compile_pays("auto", 999, device)
    assert not compile_pays("auto", 5000, "mps")
    assert compile_pays(True, 3, "cpu") and not compile_pays(False, 10**6, "cpu")
    cfg = compose(["train.epochs=34", "data.n_train=3000"])  # 34 x 30 batches of 100 = 1020 steps
    assert compile_pays(cfg.model.compile, total_steps(cfg, 3000), "cpu")
    assert not compile_pays(cfg.model.compile, total_steps(compose(["train.steps=300"]), 3000), "cpu")


def test_inductor_cache_is_the_projects_unless_set(monkeypatch, tmp_path):
    """core.process.use_inductor_cache: <project cache>/inductor, an explicit TORCHINDUCTOR_CACHE_DIR wins,
    and the FX graph and AOT autograd caches are on unless switched off."""
    from painn_ablate.core.process import use_inductor_cache

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAINN_ABLATE_CACHE", str(tmp_path / "project"))
    assert use_inductor_cache() == str(tmp_path / "project" / "inductor")
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
    assert use_inductor_cache() == str(tmp_path / "mine") and os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "0"
