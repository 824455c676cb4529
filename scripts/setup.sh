#!/usr/bin/env bash
# One install path for a fresh machine, used by both README commands and by .ci/run.
#
#   1. a virtual environment at ${LEPTON_VENV:-.venv}
#   2. PyTorch first, CPU build by default: a plain `torch` requirement would pull
#      several GB of CUDA packages. Users with CUDA override LEPTON_TORCH_SPEC and
#      LEPTON_TORCH_INDEX (e.g. torch==2.13.0 and https://download.pytorch.org/whl/cu130).
#   3. Horovod 0.28.1 from its sdist, patched by scripts/patch_horovod.sh (C++17, standard
#      includes newer compilers need, CUDA 13),
#      built once with PyTorch + Gloo and cached outside the repo, keyed by the torch and
#      horovod versions; later runs reuse the cached wheel.
#   4. the project itself with its dev extras;
#   5. with --test, the system packages the tests need (Chromium and ChromeDriver, sshd, ip,
#      HAProxy);
#   6. with --test or --label-studio, Label Studio in a virtual environment of its own
#      (${LEPTON_LABEL_STUDIO_VENV:-.venv-label-studio}), started by scripts/label_studio.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST_TOOLS=0
WITH_LABEL_STUDIO=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST_TOOLS=1; WITH_LABEL_STUDIO=1 ;;
    --label-studio) WITH_LABEL_STUDIO=1 ;;
    *) printf '[setup] error: unknown argument %s (known: --test, --label-studio)\n' "$arg" >&2
       exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
VENV=${LEPTON_VENV:-.venv}
TORCH_SPEC=${LEPTON_TORCH_SPEC:-torch==2.13.0+cpu}
TORCH_INDEX=${LEPTON_TORCH_INDEX:-}

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11 or 3.12"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$(cd "$VENV" && pwd)/bin/python"  # LEPTON_VENV may be relative or absolute
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
pip_install --upgrade pip setuptools wheel

# --- 2. torch ------------------------------------------------------------------------
if ! "$PY" -c 'import torch' 2>/dev/null; then
  log "installing $TORCH_SPEC"
  pip_install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} numpy "$TORCH_SPEC"
fi
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
CUDA_VERSION=$("$PY" -c 'import torch; print(torch.version.cuda or "cpu")')
log "torch $TORCH_VERSION ($CUDA_VERSION)"

# --- 3. horovod ----------------------------------------------------------------------
bash scripts/build_horovod.sh "$PY"

# --- 4. the project ------------------------------------------------------------------
log "installing lepton with dev extras"
pip_install -e '.[dev]'

# --- 5. with --test: what the tests need beyond Python -------------------------------
# Debian's Chromium and its matching ChromeDriver (the UI test in a real browser), OpenSSH's
# server and iproute2 (the two-host Horovod test: sshd inside a network namespace). The
# packages' services are not started by the install where policy-rc.d forbids it (Docker
# images); the test starts its own sshd on a namespace address. HAProxy balances the
# server's replicas (deploy/haproxy.sh; the two-replica test starts its own) and is the UI's
# door (deploy/web_proxy.sh).
missing=""
command -v chromium >/dev/null || missing="$missing chromium"
command -v chromedriver >/dev/null || missing="$missing chromium-driver"
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ip >/dev/null || missing="$missing iproute2"
[ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
# openssl hashes the UI door's test passwords (openssl passwd -6, tests/test_web_proxy.py).
command -v openssl >/dev/null || missing="$missing openssl"
if [ "$WITH_TEST_TOOLS" = 1 ] && [ -n "$missing" ]; then
  command -v apt-get >/dev/null || die "the tests need these Debian packages:$missing; install them"
  [ "$(id -u)" = 0 ] || die "installing them needs root: sudo apt-get install$missing"
  log "installing$missing (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
# --- 6. Label Studio, in its own environment ----------------------------------------
LS_VENV=${LEPTON_LABEL_STUDIO_VENV:-.venv-label-studio}
LS_SPEC=${LEPTON_LABEL_STUDIO_SPEC:-label-studio==1.23.2}
if [ "$WITH_LABEL_STUDIO" = 1 ] && [ ! -x "$LS_VENV/bin/label-studio" ]; then
  log "installing $LS_SPEC into $LS_VENV"
  "$PYTHON" -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install --disable-pip-version-check -q "$LS_SPEC"
fi
log "ready: $VENV"
