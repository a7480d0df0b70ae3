"""TLS as a district reaches the state's broker: ``amqps://``, the broker's certificate verified against the CA
file, a client certificate. The broker here is a TLS listener in the test that records the handshake (the
machine's RabbitMQ has no TLS listener), so what is checked is the TLS the transport speaks."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.brokers.rabbitmq import RabbitBroker
from messages.errors import BrokerRefused, ConfigError, ConnectionClosed

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return key, crt


def _signed(d: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
             "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return key, crt


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = _ca(tmp_path, "state-ca")
    return {"ca": ca, "other_ca": _ca(tmp_path, "other-ca"),
            "server": _signed(tmp_path, "broker", ca, "DNS:localhost"),
            "client": _signed(tmp_path, "district-1", ca, "DNS:district-1")}


class TlsListener:
    """Accepts TLS connections that present a client certificate signed by the CA, records each peer's
    certificate subject, then closes (it speaks no AMQP)."""

    def __init__(self, pki: dict[str, Any]) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"][1]))
        self.context.load_cert_chain(str(pki["server"][1]), str(pki["server"][0]))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self.failures: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    cert = tls.getpeercert() or {}
                    self.peers += [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
            except (OSError, ssl.SSLError) as e:
                self.failures.append(str(e))


@pytest.fixture
def listener(pki: dict[str, Any]) -> Iterator[TlsListener]:
    lst = TlsListener(pki)
    yield lst
    lst.sock.close()


def _broker(port: int, tls: dict[str, str]) -> RabbitBroker:
    return RabbitBroker(f"amqps://district-1:secret@localhost:{port}/%2F", tls=tls)


def test_the_client_certificate_is_presented_and_the_brokers_verified(pki: dict[str, Any],
                                                                    listener: TlsListener) -> None:
    tls = {"ca_certs": str(pki["ca"][1]), "certfile": str(pki["client"][1]), "keyfile": str(pki["client"][0])}
    with pytest.raises(ConnectionClosed):  # the listener speaks no AMQP: the handshake is what is checked
        _broker(listener.port, tls).connect()
    assert listener.peers == ["district-1"], listener.failures


def test_a_broker_certificate_from_another_ca_is_refused(pki: dict[str, Any], listener: TlsListener) -> None:
    tls = {"ca_certs": str(pki["other_ca"][1]), "certfile": str(pki["client"][1]), "keyfile": str(pki["client"][0])}
    with pytest.raises((ConnectionClosed, BrokerRefused)) as refused:
        _broker(listener.port, tls).connect()
    assert "certificate" in str(refused.value)
    assert listener.peers == []


def test_a_certificate_file_that_cannot_be_read_is_one_line(pki: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RESYNC_BROKER_CA_FILE"):
        _broker(1, {"ca_certs": str(tmp_path / "missing.crt")}).connect()
