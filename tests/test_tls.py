"""Tests for L{relaygate.tls} and implicit-TLS listeners: in memory and with real OpenSSL peers."""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import override
from zope.interface import implementer

from relaygate.addresses import HostPort
from relaygate.config import load as config_load
from relaygate.config.errors import ConfigError
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.config.tls import TLSConfig
from relaygate.listeners import (
    new_server_tls,
    reload_certificates,
    server_endpoint,
    tls_reload_service,
)
from relaygate.routing.router import ClientTLS
from relaygate.tls.client import backend_tls_creator, https_policy
from relaygate.tls.facts import (
    CERTIFICATE_REPLIES,
    certificate_problem,
    client_tls_info,
    rfc2253_name,
    serial_hex,
    tls_facts,
)
from relaygate.tls.handshake import HandshakeResult, HandshakeTimer
from relaygate.tls.names import normalise_server_name
from relaygate.tls.reload import ReloadOnSIGHUP
from relaygate.tls.server import ALPNMismatch, ServerTLS
from tests.certs import PKI, Issued, issue, make_pki

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


class ServerCertificateTests(PKITestCase):
    """The server presents the right certificate: one file, or chosen by SNI from a directory."""

    def test_single_file_handshake_is_tls13(self) -> None:
        """A default client gets TLS 1.3 and the configured certificate."""
        link = loopback(ServerTLS(self.file_config(), "smtp"), TestClient())
        self.assertTrue(link.server.handshake_done)
        self.assertEqual(served_names(link), ["localhost", "mail.example.org"])
        info = client_tls_info(link.server_tls)
        self.assertEqual(
            info, ClientTLS(protocol="TLSv1.3", cipher=info.cipher if info else "", verify="")
        )
        assert info is not None
        self.assertIn("_", info.cipher)

    def test_key_inside_certificate_file(self) -> None:
        """Without C{key}, the certificate file itself may hold the key."""
        config = TLSConfig(certificate=self.pki.server.combined)
        link = loopback(ServerTLS(config, "smtp"), TestClient())
        self.assertTrue(link.server.handshake_done)

    def test_sni_picks_certificate_for_each_name(self) -> None:
        """Two names, two files: each SNI name gets its own certificate."""
        directory = self.certificate_directory(
            {"mail.example.org.pem": self.pki.server, "other.example.net.pem": self.pki.other}
        )
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        link = loopback(creator, TestClient(server_name="other.example.net"))
        self.assertEqual(served_names(link), ["other.example.net"])
        link = loopback(creator, TestClient(server_name="MAIL.example.org."))
        self.assertEqual(served_names(link), ["localhost", "mail.example.org"])

    def test_sni_unknown_name_gets_default_pem(self) -> None:
        """A name without a file, and a client without SNI, get C{default.pem}."""
        directory = self.certificate_directory(
            {"a.example.org.pem": self.pki.wrong_name, "default.pem": self.pki.other}
        )
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        link = loopback(creator, TestClient(server_name="nobody.example.org"))
        self.assertEqual(served_names(link), ["other.example.net"])
        link = loopback(creator, TestClient())
        self.assertEqual(served_names(link), ["other.example.net"])

    def test_sni_without_default_pem_uses_first_file(self) -> None:
        """Without C{default.pem}, the first file in name order is the default."""
        directory = self.certificate_directory(
            {"b.example.org.pem": self.pki.other, "a.example.org.pem": self.pki.wrong_name}
        )
        link = loopback(ServerTLS(TLSConfig(certificate=directory), "smtp"), TestClient())
        self.assertEqual(served_names(link), ["wrong.example.com"])

    def test_sni_wildcard_file(self) -> None:
        """C{*.example.org.pem} serves any one-label name under example.org."""
        wildcard = issue(self.pki.ca, self.pki.directory, "wildcard", ["*.example.org"])
        directory = self.certificate_directory(
            {"*.example.org.pem": wildcard, "default.pem": self.pki.other}
        )
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        link = loopback(creator, TestClient(server_name="smtp.example.org"))
        self.assertEqual(served_names(link), ["*.example.org"])

    def test_server_name_normalisation(self) -> None:
        """SNI names become lower-case file stems; a name that could leave the directory: None."""
        self.assertEqual(normalise_server_name(b"Mail.Example.ORG."), "mail.example.org")
        for bad in [None, b"", b"../etc/passwd", b"a..b", b".hidden", b"a/b", b"caf\xc3\xa9"]:
            self.assertIsNone(normalise_server_name(bad), bad)


class ProtocolGuardTests(PKITestCase):
    """TLS versions and nginx's ALPN (cross-protocol) guard."""

    def test_tls11_refused_by_default(self) -> None:
        """A TLS 1.1-only client cannot handshake with the default protocols."""
        client = TestClient(version=SSL.TLS1_1_VERSION, ciphers=b"DEFAULT@SECLEVEL=0")
        link = loopback(ServerTLS(self.file_config(), "smtp"), client)
        self.assertFalse(link.server.handshake_done)
        self.assertIsNotNone(link.server.lost)
        assert link.server.lost is not None
        self.assertIsInstance(link.server.lost.value, SSL.Error)

    def test_tls11_accepted_when_configured(self) -> None:
        """The same client succeeds when C{protocols} includes TLSv1.1 (the refusal is ours)."""
        config = self.file_config(
            protocols=("TLSv1.1", "TLSv1.2", "TLSv1.3"), ciphers="DEFAULT@SECLEVEL=0"
        )
        client = TestClient(version=SSL.TLS1_1_VERSION, ciphers=b"DEFAULT@SECLEVEL=0")
        link = loopback(ServerTLS(config, "smtp"), client)
        self.assertTrue(link.server.handshake_done)
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.protocol, "TLSv1.1")

    def test_tls13_refused_when_only_tls12(self) -> None:
        """C{protocols = ["TLSv1.2"]} caps the version."""
        link = loopback(ServerTLS(self.file_config(protocols=("TLSv1.2",)), "smtp"), TestClient())
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.protocol, "TLSv1.2")
        self.assertEqual(info.cipher, "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_alpn_without_listener_protocol_refused(self) -> None:
        """A client offering ALPN without C{smtp} is refused with no_application_protocol."""
        link = loopback(ServerTLS(self.file_config(), "smtp"), TestClient(alpn=[b"imap", b"h2"]))
        self.assertFalse(link.server.handshake_done)
        self.assertFalse(link.client.handshake_done)
        assert link.server.lost is not None and link.client.lost is not None
        self.assertIsInstance(link.server.lost.value, ALPNMismatch)
        self.assertIn("no application protocol", str(link.client.lost.value))

    def test_alpn_with_listener_protocol_selected(self) -> None:
        """A client offering the listener's protocol gets it selected."""
        link = loopback(ServerTLS(self.file_config(), "imap"), TestClient(alpn=[b"h2", b"imap"]))
        self.assertTrue(link.server.handshake_done)
        self.assertEqual(link.client_tls.negotiatedProtocol, b"imap")

    def test_no_alpn_accepted(self) -> None:
        """A client that offers no ALPN at all is fine."""
        link = loopback(ServerTLS(self.file_config(), "pop3"), TestClient())
        self.assertTrue(link.server.handshake_done)
        self.assertIsNone(link.client_tls.negotiatedProtocol)


class ClientCertificateTests(PKITestCase):
    """C{verify_client}: the handshake completes and the result is reported as nginx does."""

    def creator(self, verify_client: str) -> ServerTLS:
        """A server asking for client certificates issued by the test CA."""
        config = self.file_config(client_ca=self.pki.ca.certificate, verify_client=verify_client)
        return ServerTLS(config, "smtp")

    def test_off_reports_no_verify_fields(self) -> None:
        """With C{off}, no certificate is asked for and C{verify} is empty (nginx: no header)."""
        link = loopback(
            ServerTLS(self.file_config(), "smtp"), TestClient(certificate=self.pki.client)
        )
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual((info.verify, info.subject, info.certificate_pem), ("", "", ""))
        self.assertIsNone(certificate_problem(link.server_tls))

    def test_optional_without_certificate(self) -> None:
        """C{optional} and no certificate: C{NONE}, no problem."""
        link = loopback(self.creator("optional"), TestClient())
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.verify, "NONE")
        self.assertEqual(info.fingerprint, "")
        self.assertIsNone(certificate_problem(link.server_tls))

    def test_required_without_certificate_completes_with_no_cert(self) -> None:
        """C{required} and no certificate: the handshake completes; the front must send no_cert."""
        link = loopback(self.creator("required"), TestClient())
        self.assertTrue(link.server.handshake_done)
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.verify, "NONE")
        self.assertEqual(certificate_problem(link.server_tls), "no_cert")
        self.assertEqual(
            CERTIFICATE_REPLIES["smtp"]["no_cert"], b"421 4.7.1 No required SSL certificate\r\n"
        )

    def test_required_with_good_certificate(self) -> None:
        """A certificate from the CA: C{SUCCESS} and every field as C{openssl x509} prints it."""
        link = loopback(self.creator("required"), TestClient(certificate=self.pki.client))
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertIsNone(certificate_problem(link.server_tls))
        self.assertEqual(info.verify, "SUCCESS")
        path = self.pki.client.certificate
        subject = openssl("x509", "-in", path, "-noout", "-subject", "-nameopt", "RFC2253")
        issuer = openssl("x509", "-in", path, "-noout", "-issuer", "-nameopt", "RFC2253")
        serial = openssl("x509", "-in", path, "-noout", "-serial")
        fingerprint = openssl("x509", "-in", path, "-noout", "-fingerprint", "-sha1")
        pem = openssl("x509", "-in", path)
        self.assertEqual(info.subject, subject.strip().removeprefix("subject="))
        self.assertEqual(info.subject, "CN=J\\C3\\BCrgen M\\C3\\BCller,O=Acme\\, Inc.,C=DE")
        self.assertEqual(info.issuer, issuer.strip().removeprefix("issuer="))
        self.assertEqual(info.serial, serial.strip().removeprefix("serial="))
        self.assertEqual(
            info.fingerprint, fingerprint.strip().partition("=")[2].replace(":", "").lower()
        )
        self.assertEqual(info.certificate_pem, pem)

    def client_certificate(self, name: str, ca: Issued | None = None, **kwargs: Any) -> Issued:
        """A new client certificate (default from the test CA)."""
        ca = ca or self.pki.ca
        return issue(ca, self.pki.directory, name, ["client.example"], client=True, **kwargs)

    def test_optional_with_unknown_ca_is_cert_error(self) -> None:
        """A certificate from another CA: C{FAILED:<OpenSSL's reason>} and cert_error."""
        stranger = self.client_certificate("stranger", self.pki.unknown_ca)
        link = loopback(self.creator("optional"), TestClient(certificate=stranger))
        self.assertTrue(link.server.handshake_done)
        info = client_tls_info(link.server_tls)
        assert info is not None
        # The client sends its CA along, so OpenSSL meets an untrusted self-signed root.
        self.assertEqual(info.verify, "FAILED:self-signed certificate in certificate chain")
        self.assertEqual(info.issuer, "CN=somebody else's CA,O=relaygate tests,C=DE")
        self.assertEqual(certificate_problem(link.server_tls), "cert_error")

    def test_required_with_expired_certificate_is_cert_error(self) -> None:
        """An expired client certificate: C{FAILED:certificate has expired}."""
        now = datetime.datetime.now(datetime.UTC)
        expired = self.client_certificate(
            "expired-client", not_before=now - 9 * DAY, not_after=now - DAY
        )
        link = loopback(self.creator("required"), TestClient(certificate=expired))
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.verify, "FAILED:certificate has expired")
        self.assertEqual(certificate_problem(link.server_tls), "cert_error")

    def test_plain_transport_has_no_tls_info(self) -> None:
        """A transport without TLS gives C{None}."""
        self.assertIsNone(client_tls_info(StringTransport()))
        self.assertIsNone(certificate_problem(StringTransport()))
        self.assertIsNone(tls_facts(StringTransport()))


class NameFormatTests(PKITestCase):
    """Subject, issuer and serial formats match OpenSSL's (and so nginx's) exactly."""

    def test_rfc2253_special_characters_match_openssl(self) -> None:
        """Leading #, trailing space, multi-valued RDNs, quotes and controls as openssl prints."""
        subject = x509.Name(
            [
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),
                x509.RelativeDistinguishedName(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, '#1 "Mail" <ok>; a=b '),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, " x+y\\z\x01"),
                    ]
                ),
                x509.RelativeDistinguishedName(
                    [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.org")]
                ),
                x509.RelativeDistinguishedName(
                    [x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "custom")]
                ),
            ]
        )
        issued = issue(self.pki.ca, self.pki.directory, "odd", subject=subject)
        expected = openssl(
            "x509", "-in", issued.certificate, "-noout", "-subject", "-nameopt", "RFC2253"
        )
        self.assertEqual(rfc2253_name(issued.cert.subject), expected.strip()[len("subject=") :])

    def test_serial_keeps_leading_zero_byte(self) -> None:
        """A serial whose hex has an odd digit count gets a leading zero, as openssl prints."""
        issued = issue(
            self.pki.ca, self.pki.directory, "short", ["a.example"], serial_number=0xABC
        )
        self.assertEqual(serial_hex(issued.cert), "0ABC")
        printed = openssl("x509", "-in", issued.certificate, "-noout", "-serial")
        self.assertEqual(printed.strip(), "serial=0ABC")


class ReloadTests(PKITestCase):
    """Renewed certificates are picked up; broken ones leave the old one in service."""

    def test_directory_renewed_file_used_on_next_handshake(self) -> None:
        """Replacing C{NAME.pem} changes the certificate of the next handshake for NAME."""
        directory = self.certificate_directory({"mail.example.org.pem": self.pki.server})
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        client = TestClient(server_name="mail.example.org")
        self.assertEqual(
            served_names(loopback(creator, client)), ["localhost", "mail.example.org"]
        )
        renewed = issue(self.pki.ca, self.pki.directory, "renewed", ["mail.example.org"])
        replace_file(renewed.combined, os.path.join(directory, "mail.example.org.pem"))
        self.assertEqual(served_names(loopback(creator, client)), ["mail.example.org"])

    def test_directory_new_file_used_without_reload(self) -> None:
        """A file added for a new name serves that name at once."""
        directory = self.certificate_directory({"default.pem": self.pki.server})
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        shutil.copyfile(self.pki.other.combined, os.path.join(directory, "other.example.net.pem"))
        link = loopback(creator, TestClient(server_name="other.example.net"))
        self.assertEqual(served_names(link), ["other.example.net"])

    def test_directory_broken_renewal_keeps_old_and_logs(self) -> None:
        """A renewed file with a mismatched key: the old one serves, and an error is logged."""
        directory = self.certificate_directory(
            {"default.pem": self.pki.other, "mail.example.org.pem": self.pki.server}
        )
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        client = TestClient(server_name="mail.example.org")
        loopback(creator, client)
        path = os.path.join(directory, "mail.example.org.pem")
        with (
            open(self.pki.other.key, "rb") as key,
            open(self.pki.wrong_name.certificate, "rb") as c,
        ):
            write_file(path, key.read() + c.read())
        with capturedLogs() as events:
            first = loopback(creator, client)
            second = loopback(creator, client)
        self.assertEqual(served_names(first), ["localhost", "mail.example.org"])
        self.assertEqual(served_names(second), ["localhost", "mail.example.org"])
        [error] = errors(events)
        self.assertEqual(error["path"], path)
        self.assertIn("does not match", error["reason"])
        self.assertEqual(error["outcome"], "the previous certificate stays in service")

    def test_single_file_changes_only_on_reload(self) -> None:
        """In single-file mode a renewed file is used after L{ServerTLS.reload}, not before."""
        creator = ServerTLS(self.file_config(), "smtp")
        renewed = issue(self.pki.ca, self.pki.directory, "renewed", ["renewed.example.org"])
        replace_file(renewed.certificate, self.pki.server.certificate)
        replace_file(renewed.key, self.pki.server.key)
        self.assertEqual(
            served_names(loopback(creator, TestClient())), ["localhost", "mail.example.org"]
        )
        self.assertTrue(creator.reload())
        self.assertEqual(served_names(loopback(creator, TestClient())), ["renewed.example.org"])

    def test_single_file_broken_reload_keeps_old_and_logs(self) -> None:
        """A reload that finds a broken certificate keeps serving the old one and logs why."""
        creator = ServerTLS(self.file_config(), "smtp")
        write_file(self.pki.server.certificate, b"-----BEGIN CERTIFICATE-----\nnope\n")
        with capturedLogs() as events:
            self.assertFalse(creator.reload())
        self.assertEqual(
            served_names(loopback(creator, TestClient())), ["localhost", "mail.example.org"]
        )
        [error] = errors(events)
        self.assertEqual(error["path"], self.pki.server.certificate)

    def test_sighup_service_reloads_through_the_reactor(self) -> None:
        """The SIGHUP handler schedules C{reload} with C{callFromThread}; stopping restores it."""
        installed: dict[int, Any] = {signal.SIGHUP: "previous"}
        scheduled: list[Callable[[], object]] = []

        def install(signum: int, handler: Any) -> Any:
            previous = installed.get(signum)
            installed[signum] = handler
            return previous

        class Threads:
            def callFromThread(  # noqa: N802 (the IReactorFromThreads method)
                self, f: Callable[..., object], *a: object, **k: object
            ) -> None:
                scheduled.append(lambda: f(*a, **k))

        calls: list[str] = []
        service = ReloadOnSIGHUP(lambda: calls.append("reload"), Threads(), install)  # type: ignore[arg-type]
        service.startService()
        installed[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(calls, [])
        [run] = scheduled
        run()
        self.assertEqual(calls, ["reload"])
        service.stopService()
        self.assertEqual(installed[signal.SIGHUP], "previous")


class BackendTests(PKITestCase):
    """L{backend_tls_creator} verifies the backend by name or IP and can present a certificate."""

    def backend(self, issued: Issued) -> CertificateOptions:
        """A plain TLS server presenting C{issued}."""
        with open(issued.certificate, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        return CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(issued.private_key),
            certificate=crypto.X509.from_cryptography(chain[0]),
        )

    def test_verifies_by_name(self) -> None:
        """A certificate for C{localhost} from the CA is accepted for host C{localhost}."""
        creator = backend_tls_creator("localhost", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.server), creator)
        self.assertTrue(link.client.handshake_done)
        facts = tls_facts(link.client_tls)
        assert facts is not None
        self.assertEqual((facts.protocol, facts.verified), ("TLSv1.3", True))

    def test_verifies_by_ip_address(self) -> None:
        """IPv4 and IPv6 hosts are checked against the certificate's IP SANs."""
        for host in ["127.0.0.1", "::1"]:
            creator = backend_tls_creator(host, self.pki.ca.certificate)
            link = loopback(self.backend(self.pki.server), creator)
            self.assertTrue(link.client.handshake_done, host)

    def test_ip_not_in_certificate_refused(self) -> None:
        """An address the certificate does not name is refused."""
        creator = backend_tls_creator("127.0.0.2", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.server), creator)
        self.assertFalse(link.client.handshake_done)

    def test_wrong_name_refused(self) -> None:
        """A valid certificate for another name fails the handshake."""
        creator = backend_tls_creator("localhost", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.wrong_name), creator)
        self.assertFalse(link.client.handshake_done)
        assert link.client.lost is not None
        self.assertIn("localhost", str(link.client.lost.value))

    def test_expired_refused(self) -> None:
        """An expired certificate fails the handshake."""
        creator = backend_tls_creator("localhost", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.expired), creator)
        self.assertFalse(link.client.handshake_done)
        assert link.client.lost is not None
        self.assertIn("certificate verify failed", str(link.client.lost.value))

    def test_unknown_ca_refused(self) -> None:
        """A certificate from a CA not in the bundle fails the handshake."""
        creator = backend_tls_creator("localhost", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.untrusted), creator)
        self.assertFalse(link.client.handshake_done)
        self.assertIsNotNone(link.client.lost)

    def test_presents_client_certificate(self) -> None:
        """With C{certificate}/C{key}, the backend sees and verifies our client certificate."""
        server = ServerTLS(
            self.file_config(client_ca=self.pki.ca.certificate, verify_client="required"), "smtp"
        )
        creator = backend_tls_creator(
            "localhost", self.pki.ca.certificate, self.pki.client.certificate, self.pki.client.key
        )
        link = loopback(server, creator)
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.verify, "SUCCESS")
        self.assertEqual(info.subject, rfc2253_name(self.pki.client.cert.subject))

    def test_https_policy_verifies_with_bundle(self) -> None:
        """The treq policy accepts the CA's certificate and refuses a wrong name."""
        policy = https_policy(self.pki.ca.certificate)
        good = loopback(self.backend(self.pki.server), policy.creatorForNetloc(b"localhost", 443))
        self.assertTrue(good.client.handshake_done)
        bad = policy.creatorForNetloc(b"localhost", 443)
        self.assertFalse(loopback(self.backend(self.pki.wrong_name), bad).client.handshake_done)


def parse_config(directory: str, tls: dict[str, Any], listen_tls: str = "implicit") -> Config:
    """Parse a minimal config with one SMTP listener and the given C{[tls]} table."""
    data = {
        "listen": [{"protocol": "smtp", "address": "127.0.0.1:2525", "tls": listen_tls}],
        "tls": tls,
        "route": [{"match": "*", "backends": ["127.0.0.1:25"]}],
    }
    return config_load.parse(data, os.path.join(directory, "relaygate.toml"))


class ConfigTests(PKITestCase):
    """C{[tls]} is checked when the config is read: files load, values are known."""

    def assert_config_error(self, tls: dict[str, Any], expected: str) -> None:
        """Parsing C{tls} fails with exactly C{FILE: expected}."""
        with self.assertRaises(ConfigError) as caught:
            parse_config(self.pki.directory, tls)
        path = os.path.join(self.pki.directory, "relaygate.toml")
        self.assertEqual(str(caught.exception), f"{path}: {expected}")

    def test_defaults(self) -> None:
        """Only C{certificate}/C{key} given: TLS 1.2-1.3, AEAD ciphers, 30 s handshakes."""
        config = parse_config(
            self.pki.directory, {"certificate": "server.crt", "key": "server.key"}
        )
        self.assertEqual(config.tls.protocols, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(config.tls.handshake_timeout, 30.0)
        self.assertIn("GCM", config.tls.ciphers)
        self.assertEqual(config.listen[0].tls, "implicit")

    def test_key_not_matching_certificate(self) -> None:
        """A key that is not the certificate's is a config error on C{tls.key}."""
        key = os.path.join(self.pki.directory, "other.key")
        crt = os.path.join(self.pki.directory, "server.crt")
        self.assert_config_error(
            {"certificate": "server.crt", "key": "other.key"},
            f"tls.key: {key!r}: the private key does not match the certificate in {crt!r}",
        )

    def test_certificate_not_pem(self) -> None:
        """A certificate file without a PEM certificate is refused."""
        path = os.path.join(self.pki.directory, "server.key")
        self.assert_config_error(
            {"certificate": "server.key", "key": "server.key"},
            f"tls.certificate: {path!r}: no PEM certificate",
        )

    def test_unknown_protocol(self) -> None:
        """An unknown protocol name is refused."""
        self.assert_config_error(
            {"certificate": "server.pem", "protocols": ["SSLv3"]},
            "tls.protocols: 'SSLv3' is not one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3",
        )

    def test_protocols_with_gap(self) -> None:
        """Protocols must be a contiguous range."""
        self.assert_config_error(
            {"certificate": "server.pem", "protocols": ["TLSv1.1", "TLSv1.3"]},
            "tls.protocols: must be a range without gaps, e.g. TLSv1.2 and TLSv1.3",
        )

    def test_bad_ciphers(self) -> None:
        """A cipher string OpenSSL does not understand is refused."""
        self.assert_config_error(
            {"certificate": "server.pem", "ciphers": "NOPE-CIPHER"},
            "tls.ciphers: 'NOPE-CIPHER' selects no cipher OpenSSL knows",
        )

    def test_verify_client_needs_client_ca(self) -> None:
        """Client certificates need a CA bundle."""
        self.assert_config_error(
            {"certificate": "server.pem", "verify_client": "required"},
            "tls.verify_client: 'required' needs [tls] client_ca",
        )

    def test_client_ca_not_pem(self) -> None:
        """A client CA file without certificates is refused."""
        path = os.path.join(self.pki.directory, "ca.key")
        self.assert_config_error(
            {"certificate": "server.pem", "client_ca": "ca.key", "verify_client": "optional"},
            f"tls.client_ca: {path!r}: no PEM certificate",
        )

    def test_directory_with_key(self) -> None:
        """A certificate directory takes no C{key}."""
        self.certificate_directory({"default.pem": self.pki.server})
        self.assert_config_error(
            {"certificate": "sni", "key": "server.key"},
            "tls.key: must be left out when certificate is a directory of NAME.pem files",
        )

    def test_directory_with_broken_file(self) -> None:
        """Every file of a certificate directory must load."""
        directory = self.certificate_directory({"default.pem": self.pki.server})
        shutil.copyfile(self.pki.server.certificate, os.path.join(directory, "nokey.pem"))
        path = os.path.join(directory, "nokey.pem")
        self.assert_config_error(
            {"certificate": "sni"}, f"tls.certificate: {path!r}: no PEM private key"
        )

    def test_empty_directory(self) -> None:
        """A certificate directory needs at least one C{*.pem}."""
        directory = os.path.join(self.pki.directory, "empty")
        os.mkdir(directory)
        self.assert_config_error(
            {"certificate": "empty"},
            f"tls.certificate: {directory!r}: no *.pem file in the certificate directory",
        )

    def test_bad_handshake_timeout(self) -> None:
        """The handshake timeout must be positive."""
        self.assert_config_error(
            {"certificate": "server.pem", "handshake_timeout": 0},
            "tls.handshake_timeout: must be at least 0.001, got 0",
        )

    def test_smtp_starttls_listeners(self) -> None:
        """SMTP listeners take C{starttls} and C{starttls-required}."""
        for mode in ("starttls", "starttls-required"):
            config = parse_config(self.pki.directory, {"certificate": "server.pem"}, mode)
            self.assertEqual(config.listen[0].tls, mode)

    def test_server_tls_for_tls_listeners_only(self) -> None:
        """L{new_server_tls} builds a creator for a TLS listener and None for a plain one."""
        config = parse_config(self.pki.directory, {"certificate": "server.pem"})
        first = new_server_tls(config.listen[0], config)
        assert first is not None
        self.assertIsInstance(first, ServerTLS)
        plain = dataclasses.replace(config.listen[0], tls="none")
        self.assertIsNone(new_server_tls(plain, config))
        self.assertTrue(reload_certificates([first]))
        self.assertIsInstance(tls_reload_service([first], reactor), ReloadOnSIGHUP)
        self.assertIsNone(tls_reload_service([], reactor))


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


class HandshakeTimerTests(SynchronousTestCase):
    """The handshake timeout and summary every front shares."""

    def test_expires_on_the_clock(self) -> None:
        """An unfinished handshake calls C{expired} after the timeout, once."""
        clock = Clock()
        expired: list[bool] = []
        timer = HandshakeTimer(clock, 30.0, lambda: expired.append(True))
        timer.start()
        clock.advance(29.9)
        self.assertEqual(expired, [])
        clock.advance(0.1)
        self.assertEqual(expired, [True])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_finished_stops_the_timer(self) -> None:
        """A finished handshake cancels the timer; a plain transport shows no TLS facts."""
        clock = Clock()
        timer = HandshakeTimer(clock, 30.0, self.fail)
        timer.start()
        result = timer.finished(StringTransport())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual((result.info, result.problem, result.summary()), (None, None, ""))

    def test_summary(self) -> None:
        """The access log's tls field: protocol, cipher and the verify result when there is one."""
        info = ClientTLS(protocol="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", verify="SUCCESS")
        self.assertEqual(
            HandshakeResult(info, None).summary(), "TLSv1.3 TLS_AES_256_GCM_SHA384 verify=SUCCESS"
        )
        no_verify = ClientTLS(protocol="TLSv1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256", verify="")
        self.assertEqual(
            HandshakeResult(no_verify, None).summary(), "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256"
        )
