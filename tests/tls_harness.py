"""Shared pieces of the TLS tests: in-memory loopbacks, test clients, a PKI per test case."""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from typing_extensions import override
from zope.interface import implementer

from relaygate.config import load as config_load
from relaygate.config.model import Config
from relaygate.config.tls import TLSConfig
from tests.certs import PKI, Issued, make_pki

reactor: Any = _global_reactor
DAY = datetime.timedelta(days=1)


class Peer(Protocol):
    """An application protocol that records what happens on its (TLS) transport."""

    def __init__(self) -> None:
        self.received = b""
        self.handshake_done = False
        self.lost: Failure | None = None
        self.on_lost: Deferred[None] | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason
        if self.on_lost is not None:
            self.on_lost.callback(None)


implementer(IHandshakeListener)(Peer)


@dataclasses.dataclass
class Loopback:
    """Both ends of an in-memory TLS connection."""

    server: Peer
    client: Peer
    server_tls: TLSMemoryBIOProtocol
    client_tls: TLSMemoryBIOProtocol
    pump: IOPump


def loopback(
    server_creator: IOpenSSLServerConnectionCreator,
    client_creator: IOpenSSLClientConnectionCreator,
) -> Loopback:
    """Handshake C{client_creator} against C{server_creator} over iosim, as far as it goes."""
    server, client = Peer(), Peer()
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        server_creator, False, Factory.forProtocol(lambda: server), clock=clock
    )
    client_factory = TLSMemoryBIOFactory(
        client_creator, True, Factory.forProtocol(lambda: client), clock=clock
    )
    client_tls, server_tls, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    return Loopback(server, client, server_tls, client_tls, pump)  # type: ignore[arg-type]


@implementer(IOpenSSLClientConnectionCreator)
class TestClient:
    """A permissive test client: chosen SNI, ALPN, versions, ciphers and client certificate."""

    def __init__(
        self,
        server_name: str | None = None,
        alpn: list[bytes] | None = None,
        certificate: Issued | None = None,
        version: int | None = None,
        ciphers: bytes | None = None,
    ) -> None:
        self._server_name = server_name
        self._alpn = alpn
        self._context = SSL.Context(SSL.TLS_METHOD)
        if version is not None:
            self._context.set_min_proto_version(version)
            self._context.set_max_proto_version(version)
        if ciphers is not None:
            self._context.set_cipher_list(ciphers)
        if certificate is not None:
            self._context.use_certificate_chain_file(certificate.certificate)
            self._context.use_privatekey_file(certificate.key)

    def clientConnectionForTLS(self, tls_protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name.encode("ascii"))
        if self._alpn:
            connection.set_alpn_protos(self._alpn)
        return connection


def served_names(link: Loopback) -> list[str]:
    """The DNS names of the certificate the server presented to the client."""
    peer = link.client_tls.getPeerCertificate()
    assert peer is not None
    sans = peer.to_cryptography().extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(n) for n in sans.value.get_values_for_type(x509.DNSName)]


def replace_file(source: str, destination: str) -> None:
    """Put C{source}'s content at C{destination} the way renewal tools do (new file, rename)."""
    temporary = destination + ".new"
    shutil.copyfile(source, temporary)
    os.replace(temporary, destination)


def write_file(path: str, data: bytes) -> None:
    """Write C{data} as a new file at C{path} (rename over the old one)."""
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)


def openssl(*args: str) -> str:
    """Run the C{openssl} command line tool and return its standard output."""
    result = subprocess.run(["openssl", *args], capture_output=True, check=True, timeout=60)
    return result.stdout.decode()


def errors(events: Sequence[LogEvent]) -> list[LogEvent]:
    """The events of level error or worse."""
    return [e for e in events if e["log_level"] >= LogLevel.error]


class PKITestCase(SynchronousTestCase):
    """Makes a fresh test PKI in a temporary directory for each test."""

    def setUp(self) -> None:
        self.pki: PKI = make_pki(os.path.abspath(self.mktemp()))

    def file_config(self, issued: Issued | None = None, **kwargs: Any) -> TLSConfig:
        """A C{[tls]} section serving C{issued} (default the server certificate) from files."""
        issued = issued or self.pki.server
        return TLSConfig(certificate=issued.certificate, key=issued.key, **kwargs)

    def certificate_directory(self, files: dict[str, Issued]) -> str:
        """A certificate directory holding C{files} as C{NAME.pem} (key and chain)."""
        directory = os.path.join(self.pki.directory, "sni")
        os.makedirs(directory, exist_ok=True)
        for name, issued in files.items():
            shutil.copyfile(issued.combined, os.path.join(directory, name))
        return directory


def parse_config(directory: str, tls: dict[str, Any], listen_tls: str = "implicit") -> Config:
    """Parse a minimal config with one SMTP listener and the given C{[tls]} table."""
    data = {
        "listen": [{"protocol": "smtp", "address": "127.0.0.1:2525", "tls": listen_tls}],
        "tls": tls,
        "route": [{"match": "*", "backends": ["127.0.0.1:25"]}],
    }
    return config_load.parse(data, os.path.join(directory, "relaygate.toml"))
