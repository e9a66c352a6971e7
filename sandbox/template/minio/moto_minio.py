"""MinIO stand-in for the hq-bot sandbox: moto's S3 server with the deployment's keys.

What this adds to a plain `python3 -m moto.server -H 127.0.0.1 -p 59000`:

* the access key pair from `.env` (MINIO_ACCESS_KEY / MINIO_SECRET_KEY) is registered as an IAM
  user with an `s3:*` policy, and moto's request authentication is switched on
  (INITIAL_NO_AUTH_ACTION_COUNT=0): a request signed with any other key, or with a wrong
  secret, is refused (InvalidAccessKeyId / SignatureDoesNotMatch), as MinIO would;
* the buckets in MINIO_BUCKETS (default `harmoniq-uploads`) exist from the start;
* `GET|HEAD /minio/health/live` and `/minio/health/ready` answer 200 while the process serves
  (MinIO's liveness probe paths). They are answered here, in the same WSGI app, not by MinIO
  logic: "ready" does not check any quorum;
* with authentication on, an unsigned request gets 403 AccessDenied (moto itself would answer
  500), and a presigned URL gets 501 NotImplemented: moto cannot check presigned signatures
  while its authentication is on.

moto keeps everything in memory: objects are gone after the container restarts.
Set MOTO_ENFORCE_AUTH=0 to accept any signature (moto's default behaviour).
No secret value is ever printed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

HOST = os.environ.get("MOTO_HOST", "127.0.0.1")
PORT = int(os.environ.get("MOTO_PORT", "59000"))
os.environ["MOTO_PORT"] = str(PORT)  # moto builds its own URLs from this

USER_NAME = "harmoniq-sandbox"
HEALTH_PATHS = {"/minio/health/live", "/minio/health/ready"}


def log(msg: str) -> None:
    print(f"moto-minio: {msg}", file=sys.stderr, flush=True)


def env_required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        log(f"{name} is empty or missing (set it in .env)")
        sys.exit(2)
    return value


def register_keys(access_key: str, secret_key: str) -> None:
    """Create an IAM user whose only access key is the deployment's key pair."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user(region_name="us-east-1", user_name=USER_NAME)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(USER_NAME, "sandbox-s3-full-access", json.dumps(policy))
    key = iam.create_access_key(USER_NAME)
    # moto generates random key ids; swap in the deployment's pair (same object, re-indexed).
    iam.access_keys.pop(key.physical_resource_id, None)
    key.access_key_id = access_key
    key.secret_access_key = secret_key
    iam.access_keys[key.physical_resource_id] = key
    if iam.get_user_from_access_key_id(access_key) is None:
        raise RuntimeError("the access key could not be registered with moto's IAM")


def create_buckets(names: list[str]) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for name in names:
        s3.create_bucket(name, "us-east-1")
        log(f"bucket {name} created")


def s3_error(start_response: Any, status: str, code: str, message: str) -> list[bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/xml"),
            ("Content-Length", str(len(body))),
            ("X-Minio-Stand-In", "moto"),
        ],
    )
    return [body]


def wrap(app: Any, enforce: bool) -> Any:
    """Health paths, and clean errors where moto's auth check would crash (HTTP 500)."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if path in HEALTH_PATHS and method in ("GET", "HEAD"):
            start_response("200 OK", [("Content-Length", "0"), ("X-Minio-Stand-In", "moto")])
            return [b""]
        if enforce and "HTTP_AUTHORIZATION" not in environ and not path.startswith("/moto-api"):
            if "Signature=" in environ.get("QUERY_STRING", ""):
                # moto cannot check presigned URLs while authentication is on.
                return s3_error(
                    start_response,
                    "501 Not Implemented",
                    "NotImplemented",
                    "Presigned URLs are not supported by the sandbox S3 stand-in (moto)",
                )
            return s3_error(start_response, "403 Forbidden", "AccessDenied", "Access Denied.")
        return app(environ, start_response)

    return wrapped


def main() -> None:
    access_key = env_required("MINIO_ACCESS_KEY")
    secret_key = env_required("MINIO_SECRET_KEY")
    buckets = [b for b in os.environ.get("MINIO_BUCKETS", "harmoniq-uploads").split(",") if b]
    enforce = os.environ.get("MOTO_ENFORCE_AUTH", "1") not in ("0", "false", "no", "")

    from moto import settings
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    register_keys(access_key, secret_key)
    create_buckets(buckets)
    if enforce:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        log("request authentication ON: only the MINIO_ACCESS_KEY/MINIO_SECRET_KEY pair works")
    else:
        log("request authentication OFF (MOTO_ENFORCE_AUTH=0): any key is accepted")

    class Handler(MotoRequestHandler):  # type: ignore[misc, valid-type]
        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            if self.path.split("?", 1)[0] not in HEALTH_PATHS:  # keep probes out of the log
                super().log_request(code, size)

    app = wrap(DomainDispatcherApplication(create_backend_app), enforce)
    server = make_server(HOST, PORT, app, threaded=True, request_handler=Handler)

    def stop(signum: int, _frame: Any) -> None:
        log(f"signal {signum}: stopping")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"serving S3 on http://{HOST}:{PORT}")
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
