#!/bin/bash
# PostgreSQL 15 entrypoint for the hq-bot sandbox, after the official postgres image's:
#   * on an empty data directory: initdb with DB_USER as the bootstrap superuser and DB_PASSWORD
#     as its password (SCRAM-SHA-256), create DB_NAME owned by DB_USER, run
#     /docker-entrypoint-initdb.d/*.sql|*.sh against it, write pg_hba.conf;
#   * then exec postgres in the foreground as the postgres user (it is PID 1: SIGINT = fast
#     shutdown, SIGTERM = smart shutdown, both clean).
# The password goes to initdb through a pipe, never on a command line or in a log.
set -Eeuo pipefail

PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
export PATH="${PGBIN}:${PATH}"
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
SOCKET_DIR="${PGSOCKET_DIR:-/var/run/postgresql}"

log() { printf 'entrypoint: %s\n' "$*" >&2; }

if [[ "${1:-}" != "postgres" ]]; then
    exec "$@"
fi

# As root (a volume owned by root, a changed mount): fix ownership, then drop privileges.
if [[ "$(id -u)" == "0" ]]; then
    mkdir -p -- "${PGDATA}" "${SOCKET_DIR}"
    chown postgres:postgres -- "${PGDATA}" "${SOCKET_DIR}"
    chmod 700 -- "${PGDATA}"
    chmod 2775 -- "${SOCKET_DIR}"
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" "$@"
fi

: "${DB_USER:?DB_USER must be set (from .env)}"
: "${DB_NAME:?DB_NAME must be set (from .env)}"
if [[ ! -s "${PGDATA}/PG_VERSION" ]]; then
    : "${DB_PASSWORD:?DB_PASSWORD must be set (from .env) to initialise the database}"
    log "empty data directory ${PGDATA}: initialising (superuser ${DB_USER}, database ${DB_NAME})"
    initdb --username="${DB_USER}" --pwfile=<(printf '%s\n' "${DB_PASSWORD}") \
        --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 -D "${PGDATA}" >/dev/null

    cat >"${PGDATA}/pg_hba.conf" <<'EOF'
# hq-bot sandbox (written by docker-entrypoint.sh on first start)
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   scram-sha-256
EOF
    cat >>"${PGDATA}/postgresql.conf" <<'EOF'

# hq-bot sandbox
password_encryption = scram-sha-256
EOF

    # Temporary server on the Unix socket only, for the database and the init scripts.
    pg_ctl -D "${PGDATA}" -w -o "-c listen_addresses='' -c unix_socket_directories=${SOCKET_DIR}" \
        -l "${PGDATA}/init.log" start >/dev/null
    psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc -q -h "${SOCKET_DIR}" -U "${DB_USER}")
    if [[ "${DB_NAME}" != "postgres" ]]; then
        "${psql[@]}" -d postgres -v dbname="${DB_NAME}" -v owner="${DB_USER}" <<'EOF'
CREATE DATABASE :"dbname" OWNER :"owner";
EOF
    fi
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) log "running $f"; "${psql[@]}" -d "${DB_NAME}" -f "$f" ;;
            *.sh) log "running $f"; bash "$f" ;;
            *) log "ignoring $f" ;;
        esac
    done
    pg_ctl -D "${PGDATA}" -m fast -w stop >/dev/null
    rm -f -- "${PGDATA}/init.log"
    log "initialisation complete"
else
    log "existing data directory ${PGDATA} (PostgreSQL $(cat "${PGDATA}/PG_VERSION")): no init"
fi

exec "$@"
