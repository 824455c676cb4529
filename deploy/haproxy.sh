#!/usr/bin/env bash
# HAProxy's configuration for N `lepton serve` replicas listening on Unix sockets
# <socket dir>/serve-<i>.sock (i = 1..N), balanced on 127.0.0.1:<port> (deploy/up.sh writes it;
# so does the two-replica test).
#
#   deploy/haproxy.sh REPLICAS SOCKET_DIR PORT > haproxy.cfg
#
# A replica that is not ready (no model yet, or stopping) fails the readiness check and gets
# no traffic. Swaps need nothing of the balancer (each replica swaps in place), but a request
# whose replica went away before answering (a restart) is retried on another one: inference
# has no side effect, so retrying a POST is safe.
set -euo pipefail
replicas=${1:?replicas} sockets=${2:?socket folder} port=${3:?port}
cat <<CFG
global
  maxconn 4096

defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-request 10s
  retries 3
  option redispatch
  retry-on conn-failure empty-response response-timeout 503

frontend lepton_serve
  bind ${LEPTON_SERVE_BIND:-127.0.0.1}:${port}
  default_backend replicas

backend replicas
  balance leastconn
  option httpchk GET /v2/health/ready
  http-check expect status 200
  default-server inter 1s fall 2 rise 1
CFG
for i in $(seq 1 "$replicas"); do
  echo "  server serve-$i unix@${sockets}/serve-$i.sock check"
done
