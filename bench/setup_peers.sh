#!/usr/bin/env bash
# A bench-only environment for bench/validation_bench.py: pandera (its Polars backend) and
# dataframely, pinned, never among the product's dependencies. It lives at bench/.peers and
# sees the product's environment (.venv, made by scripts/setup.sh) through a .pth file, so
# both validate with the same Polars build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "[peers] error: run scripts/setup.sh first" >&2; exit 1; }
PEERS=bench/.peers
.venv/bin/python -m venv "$PEERS"
# addsitedir, not a bare path: the product's own .pth files (its editable install) count too.
.venv/bin/python -c 'import sysconfig; print("import site; site.addsitedir(%r)" % sysconfig.get_paths()["purelib"])' \
  > "$("$PEERS/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lepton.pth"
"$PEERS/bin/python" -m pip install --quiet "pandera[polars]==0.36.0" "dataframely==3.1.2"
"$PEERS/bin/python" -c 'import dataframely, pandera.polars, polars, lepton_core; print("[peers] ready: polars", polars.__version__)'
