#!/usr/bin/env bash
# HAProxy's configuration for the door in front of the Dagster UI: HTTP basic authentication
# over a users file of hashed passwords, operators sent to the read-write webserver, viewers
# to a `--read-only` one (which refuses every mutation itself), and, for everyone, GraphQL
# sent by GET with a query string and any cross-origin request refused, so a page the
# operator merely opens cannot drive Dagster (CSRF; Dagster executes mutations sent by GET).
# Both webservers listen on 127.0.0.1 only; this proxy is what a browser reaches.
#
#   deploy/web_proxy.sh USERS_FILE PORT READ_WRITE_PORT READ_ONLY_PORT > web.cfg
#
# USERS_FILE holds one user a line: `NAME ROLE HASH`, ROLE `operator` or `viewer`, HASH a
# crypt(3) hash (`openssl passwd -6`, SHA-512); blank lines and `#` comments are skipped.
# A line of any other shape stops the script naming its number (it is configuration: no
# value of it is written into the file unchecked). For single sign-on put an OIDC proxy such
# as oauth2-proxy where this one stands (see the README's Security section).
set -euo pipefail
users=${1:?users file} port=${2:?port} rw=${3:?read-write port} ro=${4:?read-only port}
bind=${LEPTON_WEB_BIND:-127.0.0.1}
for value in "$port" "$rw" "$ro"; do
  [[ $value =~ ^[0-9]{1,5}$ ]] || { echo "web_proxy.sh: $value is not a port" >&2; exit 2; }
done
[[ $bind =~ ^[0-9a-fA-F.:]+$ ]] || { echo "web_proxy.sh: LEPTON_WEB_BIND is not an address" >&2; exit 2; }
entries=()
number=0
while IFS= read -r line || [ -n "$line" ]; do
  number=$((number + 1))
  [[ $line =~ ^[[:space:]]*(#.*)?$ ]] && continue
  if [[ ! $line =~ ^([A-Za-z0-9_.-]{1,64})[[:space:]]+(operator|viewer)[[:space:]]+(\$[0-9a-z]{1,2}\$[./A-Za-z0-9$=]{8,200})$ ]]; then
    echo "web_proxy.sh: $users line $number is not 'NAME operator|viewer CRYPT-HASH'" >&2
    exit 2
  fi
  entries+=("  user ${BASH_REMATCH[1]} password ${BASH_REMATCH[3]} groups ${BASH_REMATCH[2]}s")
done < "$users"
[ ${#entries[@]} -gt 0 ] || { echo "web_proxy.sh: $users names no user" >&2; exit 2; }
cat <<CFG
global
  maxconn 1024

defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-request 10s
  timeout tunnel 1h

userlist lepton_users
  group operators
  group viewers
$(printf '%s\n' "${entries[@]}")

frontend lepton_web
  bind ${bind}:${port}
  acl authenticated http_auth(lepton_users)
  http-request auth realm Lepton unless authenticated
  acl graphql path_beg /graphql
  http-request deny deny_status 405 if graphql METH_GET { query -m found }
  http-request set-var(txn.host) req.hdr(host)
  acl has_origin req.hdr(origin) -m found
  acl same_origin req.hdr(origin),regsub(^https?://,),strcmp(txn.host) eq 0
  http-request deny deny_status 403 if has_origin !same_origin
  http-request deny deny_status 403 if { req.hdr(sec-fetch-site) -m str cross-site }
  use_backend read_write if { http_auth_group(lepton_users) operators }
  default_backend read_only

# The password stops here: the webservers never see it.
backend read_write
  http-request del-header authorization
  server webserver 127.0.0.1:${rw}

backend read_only
  http-request del-header authorization
  server webserver_read_only 127.0.0.1:${ro}
CFG
