#!/usr/bin/env bash
# One command for the whole Lepton stack on a machine without Docker: the code location,
# webserver, daemon and a Celery worker under supervisord (deploy/supervisord.conf, each
# restarted if it exits), on the PostgreSQL instance of deploy/dagster.yaml and the RabbitMQ
# broker, which run as system services. Logs go to $DAGSTER_HOME/logs.
#
#   DAGSTER_HOME=/srv/lepton/dagster_home DAGSTER_PG_HOST=... DAGSTER_PG_DB=... \
#   DAGSTER_PG_USER=... DAGSTER_PG_PASSWORD=... LEPTON_ID_INDEX_URL=postgresql://... \
#   deploy/up.sh
#
# Secrets come from the environment only. Check it with `lepton health`.
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
export LEPTON_LOG_DIR=${LEPTON_LOG_DIR:-$DAGSTER_HOME/logs}
mkdir -p "$LEPTON_LOG_DIR"
export PATH="$PWD/.venv/bin:$PATH"
# Create or migrate the instance's schema once, before four processes open it at the same time.
dagster instance migrate >/dev/null
exec supervisord -c deploy/supervisord.conf
