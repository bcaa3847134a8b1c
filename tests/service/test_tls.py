"""``serve --tls-cert --tls-key [--tls-client-ca]`` with a throwaway CA made here: HTTPS works,
under mutual TLS a client without a certificate is refused and one with a certificate of the
CA is served; plain HTTP on a non-loopback address warns; ``--no-auth`` is refused there."""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .access_env import make_env
from .serve_proc import SRC, ServeProcess


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    c, k = folder / f"{stem}.pem", folder / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def make_ca(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    paths = dict(zip(("ca", "ca_key"), _write(folder, "ca", ca, ca_key), strict=True))

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return _write(folder, cn, cert, key)

    paths["server"], paths["server_key"] = leaf("server", ExtendedKeyUsageOID.SERVER_AUTH,
                                                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    paths["client"], paths["client_key"] = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("client")])
    return paths


def _context(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def test_https_serves_the_api_with_the_test_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    (tmp_path / "site").mkdir()
    env = make_env(tmp_path / "site", prerun=False)
    serve = ServeProcess(tmp_path / "site", workers=0, scheme="https", client={"verify": _context(ca["ca"])},
                         token=env.tokens["viewer"],
                         extra=["--tls-cert", str(ca["server"]), "--tls-key", str(ca["server_key"])])
    serve.start()
    try:
        assert serve.get("/api/v1/whoami")["name"] == "viewer"
        with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port: no answer
            httpx.get(f"http://127.0.0.1:{serve.port}/api/v1/status", timeout=10)
        assert "API on https://127.0.0.1" in serve.log()
    finally:
        assert serve.stop() == 0, serve.log()


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    (tmp_path / "site").mkdir()
    env = make_env(tmp_path / "site", prerun=False)
    serve = ServeProcess(tmp_path / "site", workers=0, scheme="https", token=env.tokens["viewer"],
                         client={"verify": _context(ca["ca"], (ca["client"], ca["client_key"]))},
                         extra=["--tls-cert", str(ca["server"]), "--tls-key", str(ca["server_key"]),
                                "--tls-client-ca", str(ca["ca"])])
    serve.start()
    try:
        assert serve.get("/api/v1/whoami")["role"] == "viewer"  # a certificate of the CA, and a token
        url = f"https://127.0.0.1:{serve.port}/api/v1/status"
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            httpx.get(url, verify=_context(ca["ca"]), timeout=10)  # no client certificate
        (tmp_path / "other").mkdir()
        other = make_ca(tmp_path / "other")
        with pytest.raises((httpx.TransportError, ssl.SSLError)):  # a certificate of another CA
            httpx.get(url, verify=_context(ca["ca"], (other["client"], other["client_key"])), timeout=10)
    finally:
        assert serve.stop() == 0, serve.log()


def test_plain_http_on_a_non_loopback_address_warns(tmp_path: Path) -> None:
    env = make_env(tmp_path, prerun=False)
    serve = ServeProcess(tmp_path, workers=0, token=env.tokens["viewer"], extra=["--host", "0.0.0.0"])
    serve.start()
    try:
        assert "serving plain HTTP on 0.0.0.0, a non-loopback address" in serve.log()
        assert httpx.get(f"http://127.0.0.1:{serve.port}/api/v1/status").status_code == 401  # tokens enforced
    finally:
        assert serve.stop() == 0, serve.log()
    loopback = ServeProcess(tmp_path, workers=0, token=env.tokens["viewer"])
    loopback.log_file = tmp_path / "loopback.log"
    loopback.start()
    try:
        assert "plain HTTP" not in loopback.log()
    finally:
        assert loopback.stop() == 0, loopback.log()


def test_no_auth_is_refused_off_loopback_and_tls_flags_go_together(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    base = [sys.executable, "-m", "replicant.cli", "serve", str(tmp_path), "--port", "0", "--workers", "0"]
    done = subprocess.run([*base, "--host", "0.0.0.0", "--no-auth"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0 and "--no-auth is only allowed on a loopback address" in done.stderr
    done = subprocess.run([*base, "--tls-cert", str(tmp_path / "x.pem")], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0 and "--tls-cert and --tls-key go together" in done.stderr
