"""Tests for L{relaygate.listeners}: implicit-TLS listeners with real sockets and clients."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from typing_extensions import override
from zope.interface import implementer

from relaygate.addresses import HostPort
from relaygate.config.server import ListenConfig
from relaygate.listeners import (
    new_server_tls,
    server_endpoint,
)
from relaygate.routing.router import ClientTLS
from relaygate.tls.client import backend_tls_creator
from relaygate.tls.facts import (
    client_tls_info,
)
from relaygate.tls.reload import ReloadOnSIGHUP
from tests.certs import make_pki
from tests.tls_harness import (
    Peer,
    parse_config,
    reactor,
)


class Echo(Protocol):
    """Echo one line, then close; record the client's TLS facts after the handshake."""

    def __init__(self, infos: list[ClientTLS | None]) -> None:
        self._infos = infos
        self._buffer = b""

    def handshakeCompleted(self) -> None:
        self._infos.append(client_tls_info(self.transport))

    @override
    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\n" in self._buffer:
            assert self.transport is not None
            self.transport.write(self._buffer)
            self.transport.loseConnection()


implementer(IHandshakeListener)(Echo)


class ListenerTests(TestCase):
    """Implicit-TLS listeners built by L{server_endpoint}, with real sockets and real clients."""

    def setUp(self) -> None:
        self.pki = make_pki(self.mktemp())

    async def listen(self, **tls: Any) -> int:
        """Listen with implicit TLS on 127.0.0.1, port 0, with C{[tls]} C{tls}; return the port."""
        config = parse_config(self.pki.directory, tls)
        listen = ListenConfig("smtp", HostPort("127.0.0.1", 0), "implicit")
        config = dataclasses.replace(config, listen=(listen,))
        self.infos: list[ClientTLS | None] = []
        factory = Factory.forProtocol(lambda: Echo(self.infos))
        endpoint = server_endpoint(listen, config, reactor, new_server_tls(listen, config))
        port: IListeningPort = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    async def s_client(self, port: int, *args: str) -> tuple[int, str]:
        """Send one line through C{openssl s_client}; return its exit code and output."""
        command = [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof",
            "-CAfile", self.pki.ca.certificate, *args,
        ]  # fmt: skip
        result = await deferToThread(
            subprocess.run, command, input=b"ping\n", capture_output=True, timeout=60
        )
        return result.returncode, (result.stdout + result.stderr).decode(errors="replace")

    async def test_sni_over_a_real_socket(self) -> None:
        """openssl s_client gets the certificate for the name it asks, verified, and an echo."""
        directory = os.path.join(self.pki.directory, "sni")
        os.mkdir(directory)
        shutil.copyfile(self.pki.server.combined, os.path.join(directory, "default.pem"))
        shutil.copyfile(self.pki.other.combined, os.path.join(directory, "other.example.net.pem"))
        port = await self.listen(certificate="sni")
        code, output = await self.s_client(
            port, "-servername", "other.example.net", "-verify_hostname", "other.example.net"
        )
        self.assertEqual(code, 0, output)
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertIn("CN = other.example.net", output)
        self.assertIn("ping", output)
        code, output = await self.s_client(port, "-servername", "mail.example.org")
        self.assertIn("CN = localhost", output)

    async def test_tls11_refused_over_a_real_socket(self) -> None:
        """A TLS 1.1 openssl client is refused by default, and accepted when configured."""
        legacy = ("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        port = await self.listen(certificate="server.pem")
        code, output = await self.s_client(port, *legacy)
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("ping\n", output.replace("ping\n", "", 0)[-200:])
        self.assertEqual(self.infos, [])
        port = await self.listen(
            certificate="server.pem",
            protocols=["TLSv1.1", "TLSv1.2", "TLSv1.3"],
            ciphers="DEFAULT@SECLEVEL=0",
        )
        code, output = await self.s_client(port, *legacy)
        self.assertEqual(code, 0, output)
        [info] = self.infos
        assert info is not None
        self.assertEqual(info.protocol, "TLSv1.1")

    async def test_alpn_over_a_real_socket(self) -> None:
        """ALPN C{imap} at an SMTP listener is refused; ALPN C{smtp} is selected."""
        port = await self.listen(certificate="server.pem")
        code, output = await self.s_client(port, "-alpn", "imap")
        self.assertNotEqual(code, 0, output)
        self.assertIn("no application protocol", output)
        code, output = await self.s_client(port, "-alpn", "smtp")
        self.assertEqual(code, 0, output)
        self.assertIn("ALPN protocol: smtp", output)

    async def test_client_certificate_over_a_real_socket(self) -> None:
        """openssl's client certificate reaches L{client_tls_info} as C{SUCCESS} with its DN."""
        port = await self.listen(
            certificate="server.pem", client_ca="ca.crt", verify_client="required"
        )
        code, output = await self.s_client(
            port, "-cert", self.pki.client.certificate, "-key", self.pki.client.key
        )
        self.assertEqual(code, 0, output)
        [info] = self.infos
        assert info is not None
        self.assertEqual(info.verify, "SUCCESS")
        self.assertEqual(info.subject, "CN=J\\C3\\BCrgen M\\C3\\BCller,O=Acme\\, Inc.,C=DE")

    async def test_backend_creator_over_a_real_socket(self) -> None:
        """A Twisted TLS client made by L{backend_tls_creator} talks to an implicit listener."""
        port = await self.listen(certificate="server.pem")
        client = Peer()
        closed: Deferred[None] = Deferred()
        client.on_lost = closed
        endpoint = wrapClientTLS(
            backend_tls_creator("127.0.0.1", self.pki.ca.certificate),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        connected = await connectProtocol(endpoint, client)
        assert connected.transport is not None
        connected.transport.write(b"hello\n")
        await closed
        self.assertEqual(client.received, b"hello\n")

    async def test_sighup_reloads_certificates(self) -> None:
        """A real SIGHUP reaches L{ReloadOnSIGHUP} and runs the reload in the reactor thread."""
        reloaded: Deferred[None] = Deferred()
        service = ReloadOnSIGHUP(lambda: reloaded.callback(None), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        os.kill(os.getpid(), signal.SIGHUP)
        await reloaded
