"""The deployment's object store (MinIO) through the minio SDK.

Keys come from the deployment's ``.env`` (``MINIO_ACCESS_KEY``, ``MINIO_SECRET_KEY``), read when
the client is built; :meth:`S3.reset` forgets the client after a key rotation. The endpoint comes
from settings; ``http://`` means no TLS.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error

from commands.infra.gateway import InfraError
from commands.infra.http import Http, HttpError

ACCESS_KEY, SECRET_KEY = "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"


def make_client(
    endpoint: str,
    values: Mapping[str, str],
    pool: urllib3.PoolManager,
    region: str = "us-east-1",
) -> Minio:
    """Given the endpoint URL, the deployment's env values (``MINIO_ACCESS_KEY`` and
    ``MINIO_SECRET_KEY``) and the connection pool (its timeouts and retries), return a minio
    client. Raise InfraError when the URL is not http(s) or a key is missing."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise InfraError(f"HQ_S3_ENDPOINT {endpoint} is not an http(s) URL.")
    missing = [k for k in (ACCESS_KEY, SECRET_KEY) if not values.get(k)]
    if missing:
        raise InfraError(f"The deployment's env file does not set {', '.join(missing)}.")
    return Minio(
        parts.netloc,
        access_key=values[ACCESS_KEY],
        secret_key=values[SECRET_KEY],
        secure=parts.scheme == "https",
        region=region,
        http_client=pool,
    )


LIVE_PATH = "/minio/health/live"


class S3:
    """An S3 client for one endpoint and bucket, with connect/read timeouts and no retries."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        env: Callable[[], Mapping[str, str]],
        timeout: float = 5.0,
        region: str = "us-east-1",
    ) -> None:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise InfraError(f"HQ_S3_ENDPOINT {endpoint} is not an http(s) URL.")
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.timeout = timeout
        self.region = region
        self._env = env
        self._lock = threading.Lock()
        self._client: Minio | None = None

    @property
    def client(self) -> Any:
        """The minio SDK client (built on first use from the env file's keys)."""
        with self._lock:
            if self._client is None:
                pool = urllib3.PoolManager(
                    timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
                    retries=urllib3.Retry(total=0, raise_on_status=False),
                )
                self._client = make_client(self.endpoint, self._env(), pool, self.region)
            return self._client

    def reset(self) -> None:
        """Forget the client so the next call reads the keys again (after a rotation)."""
        with self._lock:
            self._client = None

    def bucket_exists(self, bucket: str | None = None) -> bool:
        """HEAD the bucket. Return whether it exists. Raise InfraError when the server cannot
        be reached or refuses the keys."""
        name = bucket or self.bucket
        try:
            return bool(self.client.bucket_exists(name))
        except S3Error as exc:
            raise InfraError(f"S3 at {self.endpoint} refused HEAD {name}: {exc.code}.") from None
        except InfraError:
            raise
        except Exception as exc:  # urllib3 raises many types; all mean unreachable
            reason = type(exc).__name__
            raise InfraError(f"S3 at {self.endpoint} is unreachable ({reason}).") from None

    def live(self, http: Http) -> tuple[bool, str]:
        """Check liveness: MinIO's ``/minio/health/live`` when the server offers it, else a HEAD
        of the bucket (S3 servers other than MinIO). Return (ok, how it was checked). Raise
        InfraError when the server cannot be reached at all."""
        try:
            resp = http.get(self.endpoint + LIVE_PATH, timeout=self.timeout)
        except HttpError as exc:
            raise InfraError(exc.message) from None
        if resp.status == 200:
            return True, f"{LIVE_PATH} answered 200"
        exists = self.bucket_exists()
        how = (
            f"{LIVE_PATH} not offered (HTTP {resp.status}): not MinIO? "
            f"checked with HEAD bucket {self.bucket}"
        )
        if exists:
            return True, f"{how}: it exists"
        return False, f"{how}: the bucket does not exist"
