#!/usr/bin/env bash
# Label Studio for Lepton's annotation loop, from its own virtual environment
# (${LEPTON_LABEL_STUDIO_VENV:-.venv-label-studio}, installed by `scripts/setup.sh --test` or
# `--label-studio`: its Django stack stays out of the project's environment), listening on
# 127.0.0.1 only. Its one user (an admin) gets the API token Lepton uses; both secrets come
# from the environment and are never printed:
#
#   LEPTON_LABEL_STUDIO_TOKEN=... LEPTON_LABEL_STUDIO_PASSWORD=... scripts/label_studio.sh
#
# LEPTON_LABEL_STUDIO_PORT (default 8090), LEPTON_LABEL_STUDIO_DATA (default
# $LEPTON_HOME/label-studio: its SQLite database and uploads), LEPTON_LABEL_STUDIO_USER (the
# user's email, default lepton@example.com).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LEPTON_LABEL_STUDIO_TOKEN:?set LEPTON_LABEL_STUDIO_TOKEN (the API token Lepton will use)}"
: "${LEPTON_LABEL_STUDIO_PASSWORD:?set LEPTON_LABEL_STUDIO_PASSWORD (the password of its admin user)}"
VENV=${LEPTON_LABEL_STUDIO_VENV:-.venv-label-studio}
[ -x "$VENV/bin/label-studio" ] || {
  echo "label_studio.sh: $VENV/bin/label-studio not found; run scripts/setup.sh --label-studio" >&2
  exit 1
}
DATA=${LEPTON_LABEL_STUDIO_DATA:-${LEPTON_HOME:-.lepton}/label-studio}
mkdir -p "$DATA"
export LABEL_STUDIO_USERNAME=${LEPTON_LABEL_STUDIO_USER:-lepton@example.com}
export LABEL_STUDIO_PASSWORD=$LEPTON_LABEL_STUDIO_PASSWORD
export LABEL_STUDIO_USER_TOKEN=$LEPTON_LABEL_STUDIO_TOKEN
# The token above is a "legacy" API token (sent as `Authorization: Token ...`); Label Studio
# accepts those only when enabled.
export LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true
export LABEL_STUDIO_BASE_DATA_DIR=$DATA
# Nothing leaves the machine: Label Studio otherwise reports errors to its Sentry project,
# sends usage analytics and asks PyPI for its latest version.
export LABEL_STUDIO_SENTRY_DSN="" LABEL_STUDIO_FRONTEND_SENTRY_DSN="" \
  LABEL_STUDIO_COLLECT_ANALYTICS=false LABEL_STUDIO_LATEST_VERSION_CHECK=false
exec "$VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 \
  --port "${LEPTON_LABEL_STUDIO_PORT:-8090}" --data-dir "$DATA" --enable-legacy-api-token \
  --log-level WARNING
