"""TLS of ``replicant serve``: HTTPS with ``--tls-cert``/``--tls-key``, mutual TLS with
``--tls-client-ca`` (a client without a certificate signed by that CA is refused during the
handshake), and the checks of where the service listens: ``--no-auth`` only on loopback, a
warning for plain HTTP on any other address."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replicant.errors import ConfigError
from replicant.service.auth import is_loopback

__all__ = ["TlsOptions", "uvicorn_options", "check_exposure", "PLAIN_HTTP_WARNING"]

PLAIN_HTTP_WARNING = "warning: serving plain HTTP on {host}, a non-loopback address: tokens and data cross the network " \
                     "unencrypted; use --tls-cert and --tls-key"


@dataclass(frozen=True)
class TlsOptions:
    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_flags(cls, cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsOptions | None:
        """Raises ConfigError: one of cert/key without the other, a client CA without them, a missing file."""
        if cert is None and key is None:
            if client_ca is not None:
                raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if cert is None or key is None:
            raise ConfigError("--tls-cert and --tls-key go together")
        for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{flag}: no file {str(path)!r}")
        return cls(Path(cert), Path(key), None if client_ca is None else Path(client_ca))


def uvicorn_options(tls: TlsOptions | None) -> dict[str, Any]:
    if tls is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    if tls.client_ca is not None:
        options |= {"ssl_ca_certs": str(tls.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options


def check_exposure(host: str, *, no_auth: bool, tls: TlsOptions | None, warn: Callable[[str], None]) -> None:
    """Raises ConfigError for ``--no-auth`` off loopback; warns of plain HTTP off loopback."""
    if no_auth and not is_loopback(host):
        raise ConfigError(f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1), not {host!r}")
    if no_auth:
        warn("warning: --no-auth: the API and dashboard are open to every user of this machine")
    if tls is None and not is_loopback(host):
        warn(PLAIN_HTTP_WARNING.format(host=host))
