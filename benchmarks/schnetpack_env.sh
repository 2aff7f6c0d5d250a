#!/usr/bin/env bash
# Create .bench-venv/: a separate environment with schnetpack, for the side-by-side benchmark.
#   bash benchmarks/schnetpack_env.sh            # once; bench.py then finds .bench-venv/ by itself
#   WITH_SCATTER=1 bash benchmarks/schnetpack_env.sh   # also build torch-scatter (~4 min compile)
# Separate because schnetpack 2.1.1 pins sympy<=1.12 while torch 2.13 needs sympy>=1.13.3:
# schnetpack goes in without its dependencies, then the ones its import needs, all with the
# same pinned torch as the project (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BENCH_VENV:-$root/.bench-venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
torch_pin="torch==2.13.0"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"$python" -m venv "$venv"
"${pip[@]}" "$torch_pin"
"${pip[@]}" --no-deps "schnetpack==2.1.1"
# schnetpack's runtime imports, less its tooling (pre-commit, black) and its sympy cap.
"${pip[@]}" "$torch_pin" "numpy>=2" ase h5py pyyaml "hydra-core>=1.1" "pytorch-lightning>=2" torchmetrics \
  hydra-colorlog rich fasteners dirsync torch-ema "matscipy>=1.1" tensorboard tensorboardX tqdm protobuf
"${pip[@]}" --no-deps -e "$root"  # painn_ablate for the shared workload helpers (its deps not needed)
"${pip[@]}" "$torch_pin" omegaconf scipy
if [ "${WITH_SCATTER:-0}" = "1" ]; then
  "${pip[@]}" --no-build-isolation "$torch_pin" torch-scatter
fi
# schnetpack 2.1.1 imports torch.utils.data.dataloader.T_co, which torch 2.13 no longer has;
# bench_schnetpack.py defines it before the import (typing only, no behaviour).
"$venv/bin/python" -c "import typing, torch.utils.data.dataloader as d; d.T_co = typing.TypeVar('T_co', covariant=True)
import schnetpack, torch; print('schnetpack', schnetpack.__version__, 'torch', torch.__version__)"
