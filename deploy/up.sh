#!/usr/bin/env bash
# One command for the whole Lepton stack on a machine without Docker: the code location,
# webserver, daemon, a Celery worker and the served champion (LEPTON_SERVE_REPLICAS replicas of
# `lepton serve`, default 2, behind HAProxy on 127.0.0.1:LEPTON_SERVE_PORT, default 8080) under
# supervisord (deploy/supervisord.conf, each restarted if it exits), on the PostgreSQL instance
# of deploy/dagster.yaml and the RabbitMQ broker, which run as system services. Logs go to
# $DAGSTER_HOME/logs. HAProxy comes from the distribution (apt-get install haproxy). With
# LEPTON_LABEL_STUDIO_TOKEN and LEPTON_LABEL_STUDIO_PASSWORD set and Label Studio installed
# (scripts/setup.sh --label-studio), Label Studio too, on 127.0.0.1:8090.
#
#   DAGSTER_HOME=/srv/lepton/dagster_home DAGSTER_PG_HOST=... DAGSTER_PG_DB=... \
#   DAGSTER_PG_USER=... DAGSTER_PG_PASSWORD=... LEPTON_ID_INDEX_URL=postgresql://... \
#   deploy/up.sh
#
# The UI's door is HAProxy on 127.0.0.1:LEPTON_WEB_PORT (deploy/web_proxy.sh): basic auth over
# LEPTON_WEB_USERS (a users file of hashed passwords, required), operators to the webserver on
# 127.0.0.1:LEPTON_WEB_INTERNAL_PORT, viewers to a --read-only one on LEPTON_WEB_READ_ONLY_PORT,
# GraphQL by GET and cross-origin requests refused.
#
# Secrets come from the environment only. Check it with
# `lepton health --webserver http://127.0.0.1:$LEPTON_WEB_INTERNAL_PORT`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DAGSTER_HOME:?set DAGSTER_HOME to the instance folder (deploy/dagster.yaml is copied in)}"
# Files this stack writes are its user's alone: dagster-celery writes each worker's resolved
# settings, the broker URL with its password among them, under $DAGSTER_HOME/dagster_celery.
umask 077
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
export LEPTON_EXECUTOR=${LEPTON_EXECUTOR:-celery}
export LEPTON_CELERY_BROKER=${LEPTON_CELERY_BROKER:-pyamqp://guest@127.0.0.1:5672//}
export LEPTON_WEB_PORT=${LEPTON_WEB_PORT:-3000}
export LEPTON_WEB_INTERNAL_PORT=${LEPTON_WEB_INTERNAL_PORT:-3001}
export LEPTON_WEB_READ_ONLY_PORT=${LEPTON_WEB_READ_ONLY_PORT:-3002}
: "${LEPTON_WEB_USERS:?set LEPTON_WEB_USERS to the users file of the UI, see deploy/web_proxy.sh}"
export LEPTON_LOG_DIR=${LEPTON_LOG_DIR:-$DAGSTER_HOME/logs}
mkdir -p "$LEPTON_LOG_DIR"
export PATH="$PWD/.venv/bin:$PATH"
export LEPTON_SERVE_REPLICAS=${LEPTON_SERVE_REPLICAS:-2} LEPTON_SERVE_WORKERS=${LEPTON_SERVE_WORKERS:-1}
# Label Studio (the annotation loop) when it is installed and has its token.
export LEPTON_LABEL_STUDIO_AUTOSTART=false
if [ -n "${LEPTON_LABEL_STUDIO_TOKEN:-}" ] && [ -x .venv-label-studio/bin/label-studio ]; then
  export LEPTON_LABEL_STUDIO_AUTOSTART=true
fi
command -v haproxy >/dev/null || { echo "up.sh: haproxy not found (apt-get install haproxy)" >&2; exit 1; }
deploy/haproxy.sh "$LEPTON_SERVE_REPLICAS" "$LEPTON_LOG_DIR" "${LEPTON_SERVE_PORT:-8080}" \
  > "$LEPTON_LOG_DIR/haproxy.cfg"
deploy/web_proxy.sh "$LEPTON_WEB_USERS" "$LEPTON_WEB_PORT" "$LEPTON_WEB_INTERNAL_PORT" \
  "$LEPTON_WEB_READ_ONLY_PORT" > "$LEPTON_LOG_DIR/web.cfg"
# Create or migrate the instance's schema once, before four processes open it at the same time.
dagster instance migrate >/dev/null
exec supervisord -c deploy/supervisord.conf
