"""Read a TLS endpoint's certificate to learn when it expires.

The certificate is fetched without verifying it: an expired or self-signed certificate must still
be read to report on it. Parsing uses cryptography (``not_valid_after_utc``, cryptography >= 42).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from commands.infra.gateway import InfraError


@dataclass(frozen=True)
class Certificate:
    endpoint: str
    subject: str
    not_after: datetime


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """Given ``host:port`` (or ``[v6]:port``), return (host, port)."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def fetch_certificate(endpoint: str, timeout: float = 5.0) -> Certificate:
    """Given ``host:port``, return the certificate the server presents (SNI = host). Raise
    InfraError when it cannot be reached, does not speak TLS, or sends no certificate."""
    host, port = split_endpoint(endpoint)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            raw.settimeout(timeout)
            sni = host if not _is_ip(host) else None
            with context.wrap_socket(raw, server_hostname=sni) as tls:
                der = tls.getpeercert(binary_form=True)
    except TimeoutError:
        raise InfraError(f"TLS {endpoint} did not answer within {timeout:g} s.") from None
    except ssl.SSLError as exc:
        raise InfraError(
            f"TLS {endpoint}: handshake failed ({exc.reason or 'SSL error'})."
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InfraError(f"TLS {endpoint} is unreachable: {reason}.") from None
    if not der:
        raise InfraError(f"TLS {endpoint} sent no certificate.")
    cert = x509.load_der_x509_certificate(der)
    return Certificate(endpoint, cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
