#!/bin/bash
# coturn for the hq-bot sandbox. The config file is written here, at container start, from the
# environment (COTURN_SECRET from .env), into the container's private /tmp with mode 0600, so
# the secret is never on a command line (`ps`, `docker inspect` of the command).
set -Eeuo pipefail

: "${COTURN_SECRET:?COTURN_SECRET must be set (from .env)}"
PORT="${TURN_PORT:-53478}"
REALM="${TURN_REALM:-harmoniq.sandbox}"
CONF="${TURN_CONF:-/tmp/turnserver.conf}"

umask 077
tmp="$(mktemp "${CONF}.XXXXXX")"
cat >"$tmp" <<CONF
# written by entrypoint.sh at container start; do not edit (recreate the container instead)
listening-ip=127.0.0.1
relay-ip=127.0.0.1
listening-port=${PORT}
min-port=${TURN_MIN_PORT:-53500}
max-port=${TURN_MAX_PORT:-53599}
realm=${REALM}
use-auth-secret
static-auth-secret=${COTURN_SECRET}
fingerprint
no-tls
no-dtls
no-cli
no-multicast-peers
no-software-attribute
allow-loopback-peers
denied-peer-ip=0.0.0.0-255.255.255.255
allowed-peer-ip=127.0.0.1
userdb=/tmp/turndb
pidfile=/tmp/turnserver.pid
log-file=stdout
simple-log
CONF
mv -f -- "$tmp" "$CONF"
unset COTURN_SECRET

exec turnserver -c "$CONF" "$@"
