"""An S3 endpoint for tests: moto in server mode, on a free port, for the whole session.

Import the fixtures into a test module (``from s3 import s3_server, s3_bucket  # noqa: F401``):

- ``s3_server``: :class:`S3Server` (``.endpoint_url``, ``.storage_options``: what s3fs needs
  to reach it with dummy credentials). Started once per session, stopped at the end.
- ``s3_bucket``: a fresh bucket name unique to the test (created empty).

Server mode keeps the S3 protocol real (HTTP, signatures, multipart) while the data lives
in the moto process's memory; nothing is patched in this process.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

__all__ = ["S3Server", "s3_bucket", "s3_server", "start_s3"]

KEY, SECRET, REGION = "testing", "testing", "us-east-1"


@dataclass
class S3Server:
    endpoint_url: str
    _server: object

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options for this endpoint (dummy credentials, no instance cache)."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": KEY,
            "secret": SECRET,
            "client_kwargs": {"region_name": REGION},
            "skip_instance_cache": True,
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)

    def stop(self) -> None:
        self._server.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_s3(timeout: float = 20.0) -> S3Server:
    """Starts moto's threaded server on 127.0.0.1 at a free port and waits until it answers."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto S3 server did not listen on port {port} within {timeout}s") from None
            time.sleep(0.05)
    return S3Server(endpoint_url=f"http://127.0.0.1:{port}", _server=server)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server for the whole session."""
    server = start_s3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket unique to the test."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:20]}"
    client = boto3.client(
        "s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION
    )
    client.create_bucket(Bucket=name)  # us-east-1 takes no LocationConstraint (s3fs.mkdir sends one)
    client.close()
    return name
