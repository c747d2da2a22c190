#!/usr/bin/env bash
# Sets up bench/baselines/.venv for the Python baselines (train step, solvers; CPU only).
#
#   bash bench/baselines/setup.sh                     # numpy + CPU JAX + osqp (~105 MB download, ~620 MB on disk;
#                                                     # osqp and its jinja2/joblib add a few MB)
#   BASELINES_TORCH=1 bash bench/baselines/setup.sh   # also torch (opt-in, see below)
#
# torch is opt-in: PyPI has no CPU-only torch wheel for Linux x86_64. The default
# `torch` wheel pulls nvidia-*/triton CUDA packages, ~2.9 GB of downloads and
# ~5.4 GB on disk (checked for torch 2.15.0), and `pip install --no-deps torch`
# does not import (it preloads libcublasLt). Without torch, train_step.py prints
# a "skipped" line for it. Safe to run again: pip keeps what is already there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup.sh: creating $venv" >&2
    "$python" -m venv "$venv"
fi

pip=("$venv/bin/python" -m pip --disable-pip-version-check)

echo "setup.sh: installing numpy, CPU jax and osqp" >&2
"${pip[@]}" install --quiet numpy "jax[cpu]" osqp

if [ "${BASELINES_TORCH:-0}" = "1" ]; then
    echo "setup.sh: installing torch (default PyPI wheel with its CUDA packages)" >&2
    "${pip[@]}" install --quiet torch
else
    echo "setup.sh: skipping torch (set BASELINES_TORCH=1 to install it)" >&2
fi

"$venv/bin/python" - <<'PY'
import importlib
for name in ("numpy", "scipy", "jax", "jaxlib", "osqp", "torch"):
    try:
        mod = importlib.import_module(name)
        print(f"setup.sh: {name} {mod.__version__}")
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"setup.sh: {name} not available ({type(exc).__name__})")
PY
