"""Instant queries against the Prometheus HTTP API (``GET /api/v1/query``)."""

from __future__ import annotations

import math
from typing import Any

from commands.infra.gateway import InfraError
from commands.infra.http import Http


class Prometheus:
    """A Prometheus server at ``url``, queried through the hard-timeout HTTP client."""

    def __init__(self, url: str, http: Http, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.http = http
        self.timeout = timeout

    def scalar(self, query: str) -> float | None:
        """Given a PromQL expression, return its value: the sum of a vector's samples, a
        scalar's value, or None when there is no sample (or it is NaN). Raise InfraError when
        Prometheus cannot be asked or refuses the query."""
        resp = self.http.get(
            self.url + "/api/v1/query", params={"query": query}, timeout=self.timeout
        )
        body = resp.json()
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", "") if isinstance(body, dict) else ""
            raise InfraError(f"Prometheus refused the query (HTTP {resp.status}): {error}"[:300])
        data = body.get("data") or {}
        kind = data.get("resultType")
        result: Any = data.get("result")
        try:
            if kind in {"scalar", "string"}:
                values = [float(result[1])]
            elif kind == "vector":
                values = [float(sample["value"][1]) for sample in result or []]
            else:
                raise InfraError(f"Prometheus answered a {kind} where a number was expected.")
        except (TypeError, ValueError, KeyError, IndexError):
            raise InfraError("Prometheus answered in an unexpected shape.") from None
        values = [v for v in values if not math.isnan(v)]
        return sum(values) if values else None
