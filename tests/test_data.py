"""Tests of painn_ablate.data.datasets: generators, physics, cache, files, graphs and batches."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from painn_ablate.core.config import DataConfig
from painn_ablate.data import datasets as data
from painn_ablate.data import simulate

TINY = {"train": 4, "val": 3, "test": 2}


def data_cfg(tmp_path, **overrides):
    cfg = OmegaConf.structured(DataConfig)
    sizes = {"n_train": TINY["train"], "n_val": TINY["val"], "n_test": TINY["test"]}
    return OmegaConf.merge(cfg, {"cache_dir": str(tmp_path / "cache"), **sizes, **overrides})


def reference_charged(pos, vel, charge, n_steps, protocol):
    """The EGNN loop written out particle by particle: kick with the clipped force, then drift."""
    x, v = pos.copy(), vel.copy()
    n = len(x)
    for _ in range(n_steps):
        force = np.zeros_like(x)
        for i, j in itertools.permutations(range(n), 2):
            d = x[i] - x[j]
            force[i] += charge[i] * charge[j] * d / np.linalg.norm(d) ** 3
        v += protocol.dt * np.clip(force, -protocol.max_force, protocol.max_force)
        x += protocol.dt * v
    return x, v


def reference_gravity(pos, vel, mass, n_steps, protocol):
    """SEGNN's kick-drift-kick step written out particle by particle."""
    def acc(x):
        a = np.zeros_like(x)
        for i, j in itertools.permutations(range(len(x)), 2):
            d = x[j] - x[i]
            a[i] += protocol.G * mass[j] * d / (d @ d + protocol.softening**2) ** 1.5
        return a
    x, v = pos.copy(), vel.copy()
    for _ in range(n_steps):
        v += acc(x) * protocol.dt / 2
        x += v * protocol.dt
        v += acc(x) * protocol.dt / 2
    return x, v


@pytest.fixture(scope="module")
def charged_splits():
    return simulate.generate_splits("charged", {"train": 24, "val": 8, "test": 8}, 5, seed=0)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_data_and_different_seed_different_data():
    first = simulate.generate_charged(3, seed=1)
    again = simulate.generate_charged(3, seed=1)
    other = simulate.generate_charged(3, seed=2)
    for key in data.ARRAY_KEYS:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["pos"], other["pos"])


def test_splits_hold_different_samples(charged_splits):
    for a, b in itertools.combinations(data.SPLITS, 2):
        pa, pb = charged_splits[a]["pos"], charged_splits[b]["pos"]
        gap = np.abs(pa[:, None] - pb[None, :]).max(axis=(2, 3))  # (Sa, Sb)
        assert gap.min() > 0, f"{a} and {b} share a sample"


def test_a_split_does_not_change_with_the_size_of_another():
    small = simulate.generate_splits("charged", {"train": 2, "val": 2, "test": 1}, 5, seed=3)
    large = simulate.generate_splits("charged", {"train": 5, "val": 2, "test": 1}, 5, seed=3)
    np.testing.assert_allclose(small["val"]["pos_next"], large["val"]["pos_next"], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- physics


def test_initial_state_follows_the_protocol():
    p = simulate.CHARGED
    pos, vel, charge = simulate.draw_charged_initial(200, 5, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(vel, axis=-1), p.vel_norm, rtol=1e-12)
    assert set(np.unique(charge)) == {-1.0, 1.0}
    assert np.abs(pos).max() <= p.box_size
    # loc_std at n = 5 is the protocol's; 3000 components give its estimate to a few percent.
    assert abs(pos.std() - p.loc_std) < 5 * p.loc_std / np.sqrt(pos.size)


def test_like_charges_repel_and_unlike_attract():
    pos = np.array([[[0.0, 0, 0], [1.0, 0, 0]]] * 2)  # unit distance: force 1, well below the clip
    vel = np.zeros_like(pos)
    charge = np.array([[1.0, 1.0], [1.0, -1.0]])
    [(x, v)] = simulate.integrate_charged(pos, vel, charge, [1])
    dt = simulate.CHARGED.dt
    # Kick then drift: v_1 = dt F(x_0), x_1 = x_0 + dt v_1, with F on particle 0 = c0 c1 (x0 - x1).
    np.testing.assert_allclose(v[:, 0, 0], [-dt, dt])
    np.testing.assert_allclose(x[:, 0, 0], [-dt**2, dt**2])
    np.testing.assert_allclose(v.sum(1), 0, atol=1e-15)


def test_charged_integrator_matches_the_particle_by_particle_loop():
    rng = np.random.default_rng(4)
    pos, vel, charge = simulate.draw_charged_initial(3, 5, rng)
    d_clip = 0.5 / np.sqrt(simulate.CHARGED.max_force)  # a pair this close feels more than the clip
    pos[0, 1] = pos[0, 0] + [d_clip, 0, 0]
    n_steps = 30
    [(x, v)] = simulate.integrate_charged(pos, vel, charge, [n_steps])
    for s in range(3):
        xr, vr = reference_charged(pos[s], vel[s], charge[s], n_steps, simulate.CHARGED)
        np.testing.assert_allclose(x[s], xr, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(v[s], vr, rtol=1e-10, atol=1e-12)


def test_momentum_is_conserved_without_the_clip_and_broken_by_it():
    pos, vel, charge = simulate.draw_charged_initial(32, 5, np.random.default_rng(5))
    steps = [simulate.CHARGED.input_step, simulate.CHARGED.target_step]
    no_clip = dataclasses.replace(simulate.CHARGED, max_force=None)
    p0 = vel.sum(1)
    for x, v in simulate.integrate_charged(pos, vel, charge, steps, no_clip):
        # Pair forces cancel exactly; what remains is round-off of forces up to ~1/r^2 on close passes.
        np.testing.assert_allclose(v.sum(1), p0, atol=1e-6)
    clipped = simulate.integrate_charged(pos, vel, charge, steps)
    drift = np.abs(clipped[-1][1].sum(1) - p0).max()
    assert drift > 1e-3, "the per-component clip never acted on a close pass"


def test_displacement_over_the_target_window_follows_the_velocities(charged_splits):
    p = simulate.CHARGED
    window = (p.target_step - p.input_step) * p.dt
    arrays = charged_splits["train"]
    displacement = arrays["pos_next"] - arrays["pos"]
    mean_velocity = 0.5 * (arrays["vel"] + arrays["vel_next"])

    def typical_error(duration):
        miss = np.linalg.norm(displacement - mean_velocity * duration, axis=-1)
        return np.median(miss / np.linalg.norm(displacement, axis=-1))

    # Close passes bend some paths, but for most particles the trapezoid rule over the window holds.
    assert typical_error(window) < 0.1
    assert typical_error(window) < typical_error(0.5 * window) / 3
    assert typical_error(window) < typical_error(2.0 * window) / 3


def test_gravity_integrator_matches_the_particle_by_particle_loop():
    pos, vel, mass = simulate.draw_gravity_initial(2, 6, np.random.default_rng(6))
    [(x, v)] = simulate.integrate_gravity(pos, vel, mass, [20])
    for s in range(2):
        xr, vr = reference_gravity(pos[s], vel[s], mass[s], 20, simulate.GRAVITY)
        np.testing.assert_allclose(x[s], xr, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(v[s], vr, rtol=1e-10, atol=1e-12)


def test_gravity_stays_in_the_centre_of_mass_frame():
    arrays = simulate.generate_gravity(3, n_particles=8, seed=0)
    np.testing.assert_array_equal(arrays["charge"], 1.0)  # unit masses stored as `charge`
    for key in ("vel", "vel_next"):
        v = arrays[key].astype(np.float64)
        # The float32 rounding of n velocities is all that may remain of a zero total momentum.
        bound = 8 * np.finfo(np.float32).eps * np.abs(v).max() * v.shape[1]
        assert np.abs(v.sum(1)).max() <= bound


# ----------------------------------------------------------------------------- cache


def test_second_load_uses_the_cache(tmp_path, caplog):
    cfg = data_cfg(tmp_path)
    with caplog.at_level(logging.INFO, logger="painn_ablate.data.datasets"):
        first = data.load_dataset(cfg)
    assert "generating" in caplog.text
    files = sorted((tmp_path / "cache").glob("charged-*/*.npz"))
    assert [f.name for f in files] == ["test.npz", "train.npz", "val.npz"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="painn_ablate.data.datasets"):
        second = data.load_dataset(cfg)
    assert "cache hit" in caplog.text and "generating" not in caplog.text
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    for name in data.SPLITS:
        assert len(second[name]) == TINY[name]
        torch.testing.assert_close(first[name].pos_next, second[name].pos_next, rtol=0, atol=0)


def test_cache_key_follows_the_generation_parameters(tmp_path):
    base = data.generation_params("charged", 5, TINY, seed=0)
    folder = data.cache_folder(tmp_path, base)
    assert folder.name.startswith("charged-")
    assert data.cache_folder(tmp_path, data.generation_params("charged", 5, TINY, seed=1)) != folder
    assert data.cache_folder(tmp_path, data.generation_params("charged", 6, TINY, seed=0)) != folder
    assert data.cache_folder(tmp_path, data.generation_params("charged", 5, {**TINY, "val": 9}, seed=0)) != folder


def test_leftover_temp_files_are_not_taken_as_the_cache(tmp_path, caplog):
    cfg = data_cfg(tmp_path)
    params = data.generation_params("charged", 5, TINY, cfg.seed)
    folder = data.cache_folder(cfg.cache_dir, params)
    folder.mkdir(parents=True)
    for name in data.SPLITS:  # what a killed write leaves behind
        (folder / f".{name}.npz.tmp-12345").write_bytes(b"PK\x03\x04 half a zip")
    with caplog.at_level(logging.INFO, logger="painn_ablate.data.datasets"):
        splits = data.load_dataset(cfg)
    assert "generating" in caplog.text
    assert len(splits["train"]) == TINY["train"]


def test_a_killed_write_leaves_no_file(tmp_path, monkeypatch, charged_splits):
    target = tmp_path / "train.npz"

    def die_halfway(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(data.np, "savez", die_halfway)
    with pytest.raises(KeyboardInterrupt):
        data.write_split(target, charged_splits["train"])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bring your own


def test_write_and_read_round_trip(tmp_path, charged_splits):
    path = tmp_path / "train.npz"
    data.write_split(path, charged_splits["train"])
    back = data.read_split(path)
    for key in data.ARRAY_KEYS:
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], charged_splits["train"][key])


def test_load_dataset_reads_a_data_dir(tmp_path, charged_splits):
    for name in data.SPLITS:
        data.write_split(tmp_path / "byo" / f"{name}.npz", charged_splits[name])
    splits = data.load_dataset(data_cfg(tmp_path, dir=str(tmp_path / "byo")))
    assert {name: len(s) for name, s in splits.items()} == {n: len(charged_splits[n]["pos"]) for n in data.SPLITS}
    assert not (tmp_path / "cache").exists()


def _good_arrays(n_samples=10, n=5):
    vectors = np.random.default_rng(0).standard_normal((4, n_samples, n, 3))
    return {"pos": vectors[0], "vel": vectors[1], "charge": np.ones((n_samples, n)),
            "pos_next": vectors[2], "vel_next": vectors[3]}


def _with(key, value):
    arrays = _good_arrays()
    arrays[key] = value
    return arrays


def _with_nan(key):
    arrays = _good_arrays()
    arrays[key][3, 2, 0] = np.nan
    return arrays


def _without(key):
    arrays = _good_arrays()
    del arrays[key]
    return arrays


BAD_FILES = {
    "missing key": (_without("vel"), "vel"),
    "vel without its vector axis": (_with("vel", np.zeros((10, 5))), "vel"),
    "pos of the wrong rank": (_with("pos", np.zeros((10, 15))), "pos"),
    "charge with a vector axis": (_with("charge", np.zeros((10, 5, 3))), "charge"),
    "inconsistent S": (_with("pos_next", np.zeros((9, 5, 3))), "pos_next"),
    "inconsistent n": (_with("charge", np.ones((10, 4))), "charge"),
    "NaN": (_with_nan("vel_next"), "vel_next"),
    "Inf": (_with("pos", np.full((10, 5, 3), np.inf)), "pos"),
    "text instead of numbers": (_with("charge", np.full((10, 5), "+")), "charge"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_raise_one_line_naming_file_and_key(tmp_path, case):
    arrays, key = BAD_FILES[case]
    path = tmp_path / "train.npz"
    np.savez(path, **arrays)
    with pytest.raises(data.DataError) as info:
        data.read_split(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and f"'{key}'" in message


def test_missing_file_raises_naming_the_file(tmp_path, charged_splits):
    for name in ("train", "test"):
        data.write_split(tmp_path / f"{name}.npz", charged_splits[name])
    with pytest.raises(data.DataError, match="val.npz") as info:
        data.load_dataset(data_cfg(tmp_path, dir=str(tmp_path)))
    assert "\n" not in str(info.value)


def test_unreadable_file_raises_data_error(tmp_path):
    path = tmp_path / "train.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match="train.npz") as info:
        data.read_split(path)
    assert "\n" not in str(info.value)


def test_write_split_refuses_bad_arrays(tmp_path):
    with pytest.raises(data.DataError, match="'vel_next'"):
        data.write_split(tmp_path / "train.npz", _with_nan("vel_next"))
    assert not (tmp_path / "train.npz").exists()


# ----------------------------------------------------------------------------- graphs


def local_edge_sets(split: data.NBodySplit) -> list[set[tuple[int, int]]]:
    """Each sample's (source, receiver) pairs, taken from a batch of that sample alone."""
    sets = []
    for s in range(len(split)):
        e = split.batch(torch.tensor([s])).edge_index
        sets.append(set(zip(e[0].tolist(), e[1].tolist())))
    return sets


def distances(pos: np.ndarray) -> np.ndarray:
    p = pos.astype(np.float64)
    return np.linalg.norm(p[:, None] - p[None, :], axis=-1)


def random_split_arrays(n_samples=4, n=12, seed=0):
    rng = np.random.default_rng(seed)
    arrays = _good_arrays(n_samples, n)
    arrays["pos"] = rng.standard_normal((n_samples, n, 3)).astype(np.float32)
    return arrays


def test_full_graph_has_every_ordered_pair_and_no_self_loops():
    n = 7
    split = data.NBodySplit.from_arrays(random_split_arrays(3, n), "full")
    for edges in local_edge_sets(split):
        assert len(edges) == n * (n - 1)
        assert edges == {(j, i) for i in range(n) for j in range(n) if i != j}


def test_knn_edges_point_to_the_k_nearest_sources():
    arrays, k = random_split_arrays(), 4
    split = data.NBodySplit.from_arrays(arrays, "knn", k=k)
    for s, edges in enumerate(local_edge_sets(split)):
        dist = distances(arrays["pos"][s])
        for i in range(dist.shape[0]):
            nearest = set(np.argsort(dist[i])[1:k + 1].tolist())  # [0] is i itself
            assert {j for j, r in edges if r == i} == nearest


def test_knn_k_is_clipped_to_n_minus_one():
    n = 6
    split = data.NBodySplit.from_arrays(random_split_arrays(2, n), "knn", k=50)
    full = data.NBodySplit.from_arrays(random_split_arrays(2, n), "full")
    assert local_edge_sets(split) == local_edge_sets(full)


def test_knn_with_coincident_points_has_no_self_loops():
    pos = np.zeros((5, 3))
    pos[3:] = 1.0
    edges = data.knn_edges(pos, 2)
    assert (edges[0] != edges[1]).all()
    assert np.bincount(edges[1], minlength=5).tolist() == [2] * 5


def test_radius_edges_are_exactly_the_pairs_within_the_radius():
    arrays, radius = random_split_arrays(), 1.2
    split = data.NBodySplit.from_arrays(arrays, "radius", radius=radius)
    counts = set()
    for s, edges in enumerate(local_edge_sets(split)):
        dist = distances(arrays["pos"][s])
        within = {(j, i) for i, j in zip(*np.nonzero(dist <= radius)) if i != j}
        assert edges == within
        counts.add(len(edges))
    assert len(counts) > 1, "the test should exercise different edge counts per sample"


@pytest.mark.parametrize("graph", ["full", "knn", "radius"])
def test_batch_offsets_put_each_sample_in_its_own_node_range(graph):
    arrays = random_split_arrays(n_samples=6, n=9, seed=1)
    split = data.NBodySplit.from_arrays(arrays, graph, k=3, radius=1.5)
    idx = torch.tensor([4, 0, 5, 4])
    batch = split.batch(idx)
    n = split.n_particles
    singles = local_edge_sets(split)
    assert batch.edge_index.dtype == torch.long and batch.edge_index.shape[0] == 2
    assert batch.n_graphs == len(idx)
    torch.testing.assert_close(batch.graph, torch.arange(len(idx)).repeat_interleave(n))
    node_graph = batch.graph[batch.edge_index]  # (2, E): graph of source and of receiver
    assert (node_graph[0] == node_graph[1]).all()
    for b, s in enumerate(idx.tolist()):
        mine = batch.edge_index[:, node_graph[1] == b] - b * n
        assert set(zip(mine[0].tolist(), mine[1].tolist())) == singles[s]
    torch.testing.assert_close(batch.pos, split.pos[idx].reshape(-1, 3))
    torch.testing.assert_close(batch.pos_dt, (split.pos_next[idx] - split.pos[idx]).reshape(-1, 3))
    torch.testing.assert_close(batch.vel_next, split.vel_next[idx].reshape(-1, 3))
    torch.testing.assert_close(batch.charge, split.charge[idx].reshape(-1))


def test_auto_graph_is_full_for_charged_and_knn_for_gravity(tmp_path):
    charged = data.load_dataset(data_cfg(tmp_path))["train"]
    n = charged.n_particles
    assert n == data.DEFAULT_N_PARTICLES["charged"]
    assert charged.batch(torch.tensor([0])).edge_index.shape[1] == n * (n - 1)
    gravity = data.load_dataset(data_cfg(tmp_path, system="gravity", n_particles=8, k=3))["val"]
    assert gravity.n_particles == 8
    assert gravity.batch(torch.tensor([0, 1])).edge_index.shape[1] == 2 * 8 * 3


def test_split_moves_to_a_device_and_keeps_float32():
    split = data.NBodySplit.from_arrays(random_split_arrays(), "radius", radius=1.0).to("cpu")
    assert split.pos.dtype == torch.float32 and len(split) == 4
    batch = split.batch(torch.tensor([1, 2]))
    assert batch.pos.device.type == "cpu"


def test_generated_sets_are_cached_in_the_users_cache_folder(monkeypatch, tmp_path):
    from painn_ablate.data.datasets import cache_folder, default_cache_dir

    monkeypatch.delenv("PAINN_ABLATE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "painn-ablate"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "painn-ablate"
    monkeypatch.setenv("PAINN_ABLATE_CACHE", str(tmp_path / "mine"))
    params = {"system": "charged", "n": 5}
    assert cache_folder(None, params).parent == tmp_path / "mine"
    assert cache_folder(tmp_path / "explicit", params).parent == tmp_path / "explicit"  # data.cache_dir wins


def test_auto_graph_is_a_neighbour_graph_for_large_systems(tmp_path):
    for name in data.SPLITS:
        data.write_split(tmp_path / "byo" / f"{name}.npz", _good_arrays(n_samples=2, n=data.AUTO_FULL_MAX + 1))
    splits = data.load_dataset(data_cfg(tmp_path, dir=str(tmp_path / "byo")))
    batch = splits["train"].batch(torch.arange(1))
    per_node = batch.edge_index.shape[1] / batch.pos.shape[0]
    assert per_node == data_cfg(tmp_path).k  # knn, not the full graph's n - 1 = 64 edges per node
    small = tmp_path / "small"
    for name in data.SPLITS:
        data.write_split(small / f"{name}.npz", _good_arrays(n_samples=2, n=5))
    batch = data.load_dataset(data_cfg(tmp_path, dir=str(small)))["train"].batch(torch.arange(1))
    assert batch.edge_index.shape[1] == 5 * 4  # charged systems of 5 keep the full graph


# ----------------------------------------------------------------------------- the shipped default set


def test_the_default_data_set_is_the_shipped_one_and_nothing_is_generated(tmp_path, caplog):
    """compose()'s data section reads the set shipped with the package: no cache folder is written, and
    what it loads is byte for byte the shipped files."""
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"cache_dir": str(tmp_path / "cache")})
    with caplog.at_level(logging.INFO, logger="painn_ablate.data.datasets"):
        loaded = data.load_or_generate(cfg)
    assert "shipped" in caplog.text and not (tmp_path / "cache").exists()
    shipped = [f for f in data.SHIPPED.iterdir() if f.is_dir()]
    assert len(shipped) == 1
    files = {name: data.read_split(shipped[0] / f"{name}.npz") for name in simulate.SPLITS}
    assert data.fingerprint(loaded) == data.fingerprint(files)
    assert {k: len(v["pos"]) for k, v in loaded.items()} == {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}


def test_a_fingerprint_changes_with_any_value_and_is_the_same_for_loaded_splits(charged_splits):
    arrays = {name: {k: np.asarray(a[k], np.float32) for k in data.ARRAY_KEYS} for name, a in charged_splits.items()}
    before = data.fingerprint(arrays)
    loaded = {name: data.NBodySplit.from_arrays(a, "full") for name, a in arrays.items()}
    assert data.split_fingerprint(loaded) == before
    nudged = {name: {k: v.copy() for k, v in a.items()} for name, a in arrays.items()}
    nudged["test"]["vel"][0, 0, 0] = np.nextafter(nudged["test"]["vel"][0, 0, 0], np.float32(np.inf))
    assert data.fingerprint(nudged) != before


def test_the_code_version_names_this_checkout():
    from painn_ablate.core.provenance import code_version

    v = code_version()
    assert v["version"]
    if v["commit"] is not None:  # a git checkout (CI's clone is one): a full commit hash and a dirty flag
        assert len(v["commit"]) == 40 and isinstance(v["dirty"], bool)
