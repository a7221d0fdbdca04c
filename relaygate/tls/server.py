"""The front door's server contexts: one L{ServerTLS} per listener, shared by its connections.

Certificates from a file or an SNI directory, TLS 1.2+ with AEAD ciphers by default, nginx's
ALPN (ALPACA) guard, and client certificates verified the way nginx's C{ssl_verify_client}
does it (recorded in L{relaygate.tls.state}, the handshake completes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from relaygate.tls.errors import CertificateError
from relaygate.tls.files import KeyAndChain, default_file, file_signature, load_key_and_chain
from relaygate.tls.names import dns_names, normalise_server_name
from relaygate.tls.settings import TLS_VERSIONS
from relaygate.tls.state import ServerConnectionState, record_verification, server_states

if TYPE_CHECKING:
    from relaygate.config.tls import TLSConfig


class ALPNMismatch(SSL.Error):
    """The client offered ALPN protocols, none of them the listener's: refused like nginx.

    A subclass of L{SSL.Error} so that L{TLSMemoryBIOProtocol} treats it as a failed handshake
    (it sends OpenSSL's C{no_application_protocol} alert and reports this to C{connectionLost}).
    """


def _alpn_guard(protocol: str) -> Callable[[SSL.Connection, list[bytes]], bytes]:
    """An ALPN select callback that accepts only C{protocol}, as nginx's mail module does.

    nginx (C{ngx_mail_ssl_alpn_select}) selects C{smtp}/C{imap}/C{pop3} with
    C{SSL_select_next_proto} and answers C{SSL_TLSEXT_ERR_ALERT_FATAL} when the client's list
    lacks it; OpenSSL calls the callback only when the client offers ALPN at all. pyOpenSSL
    turns an exception from the callback into that fatal alert.
    """
    wanted = protocol.encode("ascii")

    def select(connection: SSL.Connection, offered: list[bytes]) -> bytes:
        if wanted in offered:
            return wanted
        # In pyOpenSSL's shape (an error queue of (library, function, reason)), which
        # TLSMemoryBIOProtocol inspects.
        reason = f"no application protocol: the client's ALPN list {offered!r} lacks {wanted!r}"
        raise ALPNMismatch([("relaygate", "alpn_select", reason)])

    return select


@dataclass(frozen=True)
class _ContextSettings:
    """Everything but the certificate that goes into a listener's contexts."""

    protocol: str
    min_version: int
    max_version: int
    ciphers: bytes
    client_ca: str
    verify_client: str

    @classmethod
    def from_config(cls, config: TLSConfig, protocol: str) -> _ContextSettings:
        versions = [TLS_VERSIONS[p] for p in config.protocols]
        return cls(
            protocol=protocol,
            min_version=min(versions),
            max_version=max(versions),
            ciphers=config.ciphers.encode("ascii"),
            client_ca=config.client_ca,
            verify_client=config.verify_client,
        )


def _new_context(
    settings: _ContextSettings,
    material: KeyAndChain,
    on_server_name: Callable[[SSL.Connection], None] | None,
) -> SSL.Context:
    """One server context for one certificate.

    Built with pyOpenSSL rather than L{twisted.internet.ssl.CertificateOptions}, which cannot
    refuse an ALPN mismatch (its select callback answers an empty protocol), cannot record a
    verification result instead of failing, and offers no per-certificate contexts for SNI. The
    options below are the ones CertificateOptions sets, plus no renegotiation.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_RENEGOTIATION
        # No resumption: a resumed session skips the verify callback, so a client
        # certificate's recorded result would be lost (nginx purges such sessions instead).
        | SSL.OP_NO_TICKET
    )
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_min_proto_version(settings.min_version)
    context.set_max_proto_version(settings.max_version)
    context.set_cipher_list(settings.ciphers)
    context.set_session_id(b"relaygate-" + settings.protocol.encode("ascii"))
    context.use_certificate(crypto.X509.from_cryptography(material.chain[0]))
    for intermediate in material.chain[1:]:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(intermediate))
    context.use_privatekey(crypto.PKey.from_cryptography_key(material.key))  # type: ignore[arg-type]
    context.check_privatekey()
    if settings.client_ca:
        context.load_verify_locations(settings.client_ca)
        # The CA names the server sends with its certificate request, so a client with
        # several certificates can pick the right one (nginx's ssl_client_certificate).
        context.load_client_ca(settings.client_ca.encode())
    context.set_alpn_select_callback(_alpn_guard(settings.protocol))
    if on_server_name is not None:
        context.set_tlsext_servername_callback(on_server_name)
    return context


class _CertificateFile:
    """A certificate file (and key file) and the context built from it.

    L{refresh} rebuilds the context when the files changed on disk. A file that no longer loads
    leaves the previous context in service and logs one error event per change.
    """

    _log = Logger()

    def __init__(
        self,
        certificate: str,
        key: str,
        build: Callable[[KeyAndChain], SSL.Context],
    ) -> None:
        self.certificate = certificate
        self.key = key
        self._build = build
        self.context: SSL.Context | None = None
        self._signature: object = None

    def refresh(self) -> bool:
        """Reload if the files changed; C{False} when they changed and could not be used."""
        paths = (self.certificate, self.key) if self.key else (self.certificate,)
        signature = file_signature(*paths)
        if signature is not None and signature == self._signature:
            return True
        self._signature = signature
        try:
            material = load_key_and_chain(self.certificate, self.key)
            context = self._build(material)
        except (CertificateError, SSL.Error) as e:
            self._log.error(
                "cannot load the certificate {path}: {reason}; {outcome}",
                path=self.certificate,
                reason=str(e),
                outcome=(
                    "the previous certificate stays in service"
                    if self.context is not None
                    else "not in service"
                ),
            )
            return False
        self.context = context
        self._log.info(
            "loaded the certificate {path} for {names}",
            path=self.certificate,
            names=dns_names(material.chain[0]),
        )
        return True


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The front door's TLS for one listener: L{IOpenSSLServerConnectionCreator} plus settings.

    Give it to C{endpoints.wrapServerTLS} (implicit TLS) or to C{transport.startTLS} (STARTTLS).
    C{handshake_timeout} is the configured limit the front enforces; C{verify_client} the
    client-certificate policy L{certificate_problem} applies.

    Certificates come from C{[tls] certificate}:

      - a file (with C{key}, or holding the key too): reloaded by L{reload} only;
      - a directory of C{NAME.pem} files, each a private key and its chain: the client's SNI
        name picks C{NAME.pem}, else C{*.PARENT.pem} (a wildcard), else the default file
        (C{default.pem}, or the first file in name order); each file is re-read on the next
        handshake that uses it after it changed on disk (one C{stat} per handshake).
    """

    _log = Logger()

    def __init__(self, config: TLSConfig, protocol: str) -> None:
        """Load the certificates now.

        @param protocol: the listener's protocol (C{smtp}, C{imap}, C{pop3}): the one ALPN name
            this listener accepts.
        @raise CertificateError: when a certificate cannot be loaded.
        """
        self.protocol = protocol
        self.handshake_timeout = config.handshake_timeout
        self.verify_client = config.verify_client
        self._settings = _ContextSettings.from_config(config, protocol)
        self._directory = config.certificate if os.path.isdir(config.certificate) else ""
        self._files: dict[str, _CertificateFile] = {}
        if self._directory:
            self._default = self._file(default_file(self._directory))
        else:
            self._default = _CertificateFile(config.certificate, config.key, self._build)
        if not self._default.refresh() or self._default.context is None:
            # Log events already said why; the config check makes this rare at start-up.
            raise CertificateError(f"{self._default.certificate!r}: cannot be loaded")

    def _build(self, material: KeyAndChain) -> SSL.Context:
        callback = self._on_server_name if self._directory else None
        return _new_context(self._settings, material, callback)

    def _file(self, path: str) -> _CertificateFile:
        entry = self._files.get(path)
        if entry is None:
            entry = self._files[path] = _CertificateFile(path, "", self._build)
        return entry

    def serverConnectionForTLS(self, tls_protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """A new server-side connection on the default (or only) certificate."""
        if self._directory:
            self._default.refresh()
        assert self._default.context is not None
        connection = SSL.Connection(self._default.context)
        server_states[connection] = ServerConnectionState(self.verify_client)
        if self.verify_client != "off":
            # VERIFY_PEER without FAIL_IF_NO_PEER_CERT, and a callback that records instead of
            # failing: the handshake completes, and the front answers like nginx. Set on the
            # connection, since an SNI context switch does not carry the verify mode over.
            connection.set_verify(SSL.VERIFY_PEER, record_verification)
        return connection

    def context_for_name(self, name: str) -> SSL.Context | None:
        """The context serving SNI name C{name} in directory mode, after a freshness check."""
        if not self._directory:
            return self._default.context
        parent = name.partition(".")[2]
        candidates = [f"{name}.pem"] + ([f"*.{parent}.pem"] if parent else [])
        for filename in candidates:
            path = os.path.join(self._directory, filename)
            if not os.path.isfile(path):
                self._files.pop(path, None)
                continue
            entry = self._file(path)
            entry.refresh()
            if entry.context is not None:
                return entry.context
        return None

    def _on_server_name(self, connection: SSL.Connection) -> None:
        """Servername callback: switch the connection to the context for the client's name."""
        raw = connection.get_servername()
        try:
            name = normalise_server_name(raw)
            context = self.context_for_name(name) if name else None
            if context is not None and context is not connection.get_context():
                connection.set_context(context)
        except Exception:
            # An exception must not escape into OpenSSL's callback; the default certificate
            # then serves the handshake.
            self._log.failure("while choosing a certificate for {name!r}", name=raw)

    def reload(self) -> bool:
        """Re-read the certificate files now (SIGHUP); C{False} if one could not be used.

        A broken file logs an error event and leaves the previous certificate in service. In
        directory mode this also re-chooses the default file and forgets removed files.
        """
        if not self._directory:
            return self._default.refresh()
        try:
            path = default_file(self._directory)
        except CertificateError as e:
            self._log.error("cannot reload {path}: {reason}", path=self._directory, reason=str(e))
            return False
        candidate = self._file(path)
        ok = candidate.refresh()
        if candidate.context is not None:
            self._default = candidate
        for stale in [p for p in self._files if not os.path.isfile(p)]:
            del self._files[stale]
        for entry in list(self._files.values()):
            ok = entry.refresh() and ok
        return ok
