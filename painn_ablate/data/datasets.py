"""N-body data sets: files, cache, bring-your-own data, graphs and batches.

The systems (charged, gravity) are simulated by `painn_ablate.data.simulate`.

Files: one `.npz` per split with float32 arrays `pos`, `vel` (S, n, 3) at the input frame,
`charge` (S, n), `pos_next`, `vel_next` (S, n, 3) at the target frame; every value finite, with
|charge| <= 1e3 and every other |value| <= 1e9 (MAX_ABS_CHARGE, MAX_ABS_VALUE). Generated sets are
cached in `{cache_dir}/{system}-{hash of the generation parameters}/` (`data.cache_dir`; by default
$PAINN_ABLATE_CACHE, else $XDG_CACHE_HOME/painn-ablate, else ~/.cache/painn-ablate); `data.dir` points at
a folder of the same three files instead.

The default data set (charged, 5 particles, 3000/2000/2000 samples, seed 0) ships with the package
(`painn_ablate/data/shipped/<same folder name>/`) and is read from there, never regenerated: the
simulator is chaotic, so another CPU's floating point would give other systems from the same seed
(a 1e-15 nudge moves hundreds of them). Other seeds and sizes are generated as before. Every data set
has a `fingerprint`, a hash of its arrays, which runs record (summary.json `data_fingerprint`).

Graphs are built once per split on the input positions. Edge convention everywhere:
`edge_index[0]` is the source j, `edge_index[1]` the receiver i.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from painn_ablate.core import files
from painn_ablate.core.cache import CACHE_ENV, default_cache_dir
from painn_ablate.core.errors import DataError
from painn_ablate.data.simulate import CHARGED, GRAVITY, SPLITS, Device, generate_splits

log = logging.getLogger(__name__)

ARRAY_KEYS = ("pos", "vel", "charge", "pos_next", "vel_next")
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


def folder_name(params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return f"{params['system']}-{digest}"


def cache_folder(cache_dir: Union[str, Path, None], params: dict[str, Any]) -> Path:
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return root / folder_name(params)


SHIPPED = Path(__file__).parent / "shipped"  # data sets that ship with the package, by generation parameters


def fingerprint(arrays: dict[str, dict[str, np.ndarray]]) -> str:
    """A hash of a data set's arrays (every split, key, dtype, shape and byte): equal fingerprints, equal data."""
    h = hashlib.sha256()
    for split in sorted(arrays):
        for key in sorted(arrays[split]):
            a = np.ascontiguousarray(arrays[split][key])
            h.update(f"{split}/{key}/{a.dtype.str}/{a.shape};".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def split_fingerprint(splits: dict[str, "NBodySplit"]) -> str:
    """`fingerprint` of loaded splits (their float32 arrays, as the files hold them)."""
    return fingerprint({name: {key: getattr(sp, key).cpu().numpy() for key in ARRAY_KEYS} for name, sp in splits.items()})


def load_or_generate(cfg: Any, device: Device = None) -> dict[str, dict[str, np.ndarray]]:
    """The generated splits of `cfg` (DataConfig), from the cache when all three files are there."""
    system = cfg.system
    n_particles = resolve_n_particles(system, cfg.n_particles)
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    params = generation_params(system, n_particles, sizes, cfg.seed)
    shipped = SHIPPED / folder_name(params)
    if all((shipped / f"{name}.npz").is_file() for name in SPLITS):
        log.info("data: the shipped set %s", shipped.name)
        return {name: read_split(shipped / f"{name}.npz") for name in SPLITS}
    folder = cache_folder(cfg.cache_dir, params)
    paths = {name: folder / f"{name}.npz" for name in SPLITS}
    if all(f.is_file() for f in paths.values()):
        log.info("data: cache hit, loading %s", folder)
        try:
            return {name: read_split(f) for name, f in paths.items()}
        except DataError as exc:  # a generated file: nothing of the user's is lost by deleting it
            raise DataError(f"{exc}; it is a cache file: delete {folder} and it is generated again") from None
    check_cache_writable(folder)  # before minutes of integration, not after
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


def check_cache_writable(folder: Path) -> None:
    """DataError naming the cache (and how to move it) when `folder` cannot be created and written."""
    ancestor = folder
    while not ancestor.exists():
        ancestor = ancestor.parent
    try:
        if not ancestor.is_dir():
            raise NotADirectoryError(f"{ancestor} is a file")
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=ancestor))
    except OSError as exc:
        raise DataError(f"data cache {folder.parent} cannot be written ({exc.strerror or exc}); point "
                        f"{CACHE_ENV} or data.cache_dir at a writable folder") from None


def warn_if_edgeless(name: str, edges: "Edges", graph: str, radius: float) -> None:
    """A radius graph that leaves a sample without edges trains on nothing but the input features."""
    if not isinstance(edges, VariableEdges):
        return
    empty = int(((edges.ptr[1:] - edges.ptr[:-1]) == 0).sum())
    if empty:
        log.warning("data: graph=%s with data.radius=%g leaves %d of %d %s samples without any edge; raise "
                    "data.radius", graph, radius, empty, len(edges.ptr) - 1, name)


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
    for name, split in splits.items():
        warn_if_edgeless(name, split.edges, graph, cfg.radius)
    log.info("data: %s graphs built in %.1f s", graph, time.perf_counter() - start)
    return splits
