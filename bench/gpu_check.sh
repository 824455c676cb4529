#!/usr/bin/env bash
# The one GPU check (bench/gpu_check.py says what it measures). On a machine with an NVIDIA GPU,
# with or without network:
#
#   bash bench/gpu_check.sh
#
# Python: $LEPTON_PYTHON, else the project's .venv, else python3 (e.g. a machine's own CUDA
# torch). Without a CUDA device it says so and exits 0. Where that Python lacks Horovod with
# NCCL, a virtual environment .venv-gpu is made on top of it (--system-site-packages, so the
# machine's torch is kept) and scripts/build_horovod.sh builds Horovod there (~2-3 min on 16
# cores). Missing Python packages are installed from PyPI, or offline from LEPTON_WHEELS=DIR
# (wheels, and horovod-0.28.1.tar.gz, fetched beforehand with `pip download`).
# The whole check is bounded by 8 minutes, the build included.
set -euo pipefail
cd "$(dirname "$0")/.."
deadline=$((SECONDS + 480))

PY=${LEPTON_PYTHON:-}
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python; } || PY=python3
if ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "gpu_check: skipped: no CUDA device visible to $PY's torch"
  exit 0
fi

NEEDED="numpy polars pyarrow pydantic fsspec dagster_pipes sklearn"
missing() {
  "$1" - "$NEEDED" <<'PY'
import importlib.util, sys
names = sys.argv[1].split()
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
PY
}
has_nccl() { "$1" -c 'import horovod.torch as h, sys; sys.exit(not h.nccl_built())' 2>/dev/null; }

if [ -n "$(missing "$PY")" ] || ! has_nccl "$PY"; then
  if [ ! -x .venv-gpu/bin/python ]; then
    "$PY" -m venv --system-site-packages .venv-gpu
  fi
  PY=.venv-gpu/bin/python
  lacking=$(missing "$PY")
  if [ -n "$lacking" ]; then
    # Import names to distribution names where they differ.
    dists=$(echo "$lacking" | sed -e 's/dagster_pipes/dagster-pipes/' -e 's/sklearn/scikit-learn/')
    offline=()
    [ -n "${LEPTON_WHEELS:-}" ] && offline=(--no-index --find-links "$LEPTON_WHEELS")
    echo "gpu_check: installing $dists"
    # shellcheck disable=SC2086  # one word per package
    "$PY" -m pip install -q --disable-pip-version-check "${offline[@]}" $dists
  fi
  has_nccl "$PY" || bash scripts/build_horovod.sh "$PY"
fi

left=$((deadline - SECONDS))
PYTHONPATH="$PWD" exec timeout "$left" "$PY" bench/gpu_check.py
