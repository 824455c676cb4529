#!/usr/bin/env bash
# Horovod 0.28.1 for one Python's torch: built from its sdist, patched by
# scripts/patch_horovod.sh (C++17, the standard includes newer compilers need, CUDA 13), with
# PyTorch + Gloo, and NCCL where torch has CUDA; cached outside the repo, keyed by the torch
# and horovod versions, so later runs reuse the wheel. Used by setup.sh and bench/gpu_check.sh.
#
#   bash scripts/build_horovod.sh PYTHON
#
# Offline (a GPU machine without network): LEPTON_WHEELS=DIR holding horovod-0.28.1.tar.gz and
# wheels of psutil, pyyaml, cloudpickle and packaging; pip then reads DIR alone.
# Ends by saying which collectives it built; fails if torch has CUDA and NCCL was not built.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${1:?usage: build_horovod.sh PYTHON}
HOROVOD_VERSION=0.28.1
WHEEL_CACHE=${LEPTON_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lepton/wheels}
OFFLINE=()
[ -n "${LEPTON_WHEELS:-}" ] && OFFLINE=(--no-index --find-links "$LEPTON_WHEELS")

log() { printf '[horovod] %s\n' "$*" >&2; }
die() { printf '[horovod] error: %s\n' "$*" >&2; exit 1; }
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "${OFFLINE[@]}" "$@"; }

TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
CUDA_VERSION=$("$PY" -c 'import torch; print(torch.version.cuda or "cpu")')

if ! "$PY" -c 'import horovod.torch' 2>/dev/null; then
  key="horovod-${HOROVOD_VERSION}-torch${TORCH_VERSION//+/_}"
  cache_dir="$WHEEL_CACHE/$key"
  wheel=$(ls "$cache_dir"/horovod-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    command -v g++ >/dev/null || die "g++ is needed to build Horovod (apt-get install g++)"
    # pip's CMake 4 rejects the bundled gloo's cmake_minimum_required; a system CMake 3.x works.
    command -v cmake >/dev/null || die "cmake 3.x is needed to build Horovod (apt-get install cmake)"
    cmake_major=$(cmake --version | head -1 | sed -E 's/[^0-9]*([0-9]+).*/\1/')
    [ "$cmake_major" = 3 ] || export CMAKE_POLICY_VERSION_MINIMUM=3.5
    log "building Horovod $HOROVOD_VERSION against torch $TORCH_VERSION (takes ~6 min on 2 cores)"
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    pip_install psutil pyyaml cloudpickle packaging
    "$PY" -m pip download -q "${OFFLINE[@]}" --no-deps --no-binary :all: -d "$build" \
      "horovod==$HOROVOD_VERSION"
    tar -xzf "$build"/horovod-*.tar.gz -C "$build"
    src="$build/horovod-$HOROVOD_VERSION"
    # C++17 for PyTorch's headers, the standard includes newer GCCs no longer pull in, C++17
    # for CUDA 13's headers (DESIGN.md, "Known facts").
    bash scripts/patch_horovod.sh "$src"
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
    if [ "$CUDA_VERSION" != cpu ]; then
      # CUDA torch's wheels bring NCCL (nvidia-nccl-cu*), headers and library included.
      nccl_home=$("$PY" -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' \
        2>/dev/null) || die "CUDA torch without the nvidia-nccl wheel; pip install nvidia-nccl-cu13"
      export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_HOME=${HOROVOD_NCCL_HOME:-$nccl_home} \
        HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-90}
    fi
    export MAKEFLAGS="-j$(nproc)"
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$build/dist" "$src"
    mkdir -p "$cache_dir"
    cp "$build"/dist/horovod-*.whl "$cache_dir/"
    wheel=$(ls "$cache_dir"/horovod-*.whl | head -1)
  else
    log "reusing cached $wheel"
  fi
  pip_install "$wheel"
fi
# Which collectives this Horovod carries: Gloo always; NCCL where torch has CUDA.
# (nccl_built() is NCCL's version number, 0 without it.)
built=$("$PY" -c 'import horovod.torch as h; print(int(bool(h.gloo_built())), h.nccl_built())') \
  || die "horovod.torch does not import"
read -r gloo nccl <<<"$built"
[ "$gloo" = 1 ] || die "Horovod was built without Gloo"
if [ "$CUDA_VERSION" != cpu ] && [ "$nccl" = 0 ]; then
  die "torch has CUDA $CUDA_VERSION but Horovod was built without NCCL (remove $WHEEL_CACHE to rebuild)"
fi
log "gloo built, nccl $([ "$nccl" = 0 ] && echo 'not built' || echo "built ($nccl)"); $(g++ --version | head -1)"

