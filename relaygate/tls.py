"""TLS for relaygate: the front door's server contexts, and verified client contexts to backends.

Front door (one L{ServerTLS} per listener, shared by all its connections):

  - certificates from C{[tls] certificate}/C{key} files, reloaded by L{ServerTLS.reload} (SIGHUP,
    see L{ReloadOnSIGHUP}), or from a directory of C{NAME.pem} files chosen by SNI and re-read
    when a file changes on disk;
  - TLS 1.2+ and a modern AEAD cipher list by default (C{[tls] protocols}, C{ciphers});
  - nginx's cross-protocol (ALPACA) guard: a client whose ALPN list lacks the listener's
    protocol name is refused during the handshake;
  - client certificates verified the way nginx's C{ssl_verify_client} does it: the result is
    recorded and the handshake completes, so the front can answer with nginx's reply
    (L{certificate_problem}, L{CERTIFICATE_REPLIES}); L{client_tls_info} gives the facts in
    nginx's C{Auth-SSL-*} formats.

Backends: L{backend_tls_creator} (service_identity checks the name or IP address),
L{https_policy} for treq, L{tls_facts} for log events.

The SMTP/IMAP/POP3 fronts call C{transport.startTLS(server_tls)} for STARTTLS; implicit-TLS
listeners get the same object through C{relaygate.listeners}.
"""

from __future__ import annotations

import hashlib
import os
import signal
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IReactorFromThreads,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.ssl import (
    Certificate,
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from typing_extensions import override
from zope.interface import implementer

from relaygate.routing.router import ClientTLS

if TYPE_CHECKING:
    # Twisted defines the trust-root interface only in its private module; it is used here
    # for annotations alone.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

    from relaygate.config import TLSConfig

TLS_VERSIONS: Final = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}
"""The C{[tls] protocols} names (nginx's C{ssl_protocols} spelling) and OpenSSL's versions."""

DEFAULT_PROTOCOLS: Final = ("TLSv1.2", "TLSv1.3")

DEFAULT_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
"""Forward-secret AEAD suites for TLS 1.2 (Mozilla's "intermediate" list without DHE).

TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults, as nginx does.
"""

DEFAULT_HANDSHAKE_TIMEOUT: Final = 30.0

VERIFY_CLIENT_MODES: Final = ("off", "optional", "required")

CertificateProblem = Literal["cert_error", "no_cert"]

CERTIFICATE_REPLIES: Final[dict[str, dict[CertificateProblem, bytes]]] = {
    "smtp": {
        "cert_error": b"421 4.7.1 SSL certificate error\r\n",
        "no_cert": b"421 4.7.1 No required SSL certificate\r\n",
    },
    "imap": {
        "cert_error": b"* BYE SSL certificate error\r\n",
        "no_cert": b"* BYE No required SSL certificate\r\n",
    },
    "pop3": {
        "cert_error": b"-ERR SSL certificate error\r\n",
        "no_cert": b"-ERR No required SSL certificate\r\n",
    },
}
"""What nginx sends, then closes, when L{certificate_problem} is not C{None}.

From nginx C{src/mail/ngx_mail_{smtp,imap,pop3}_module.c} (C{cert_error}, C{no_cert}); sent
instead of the greeting (implicit TLS) or of the reply to the next command (STARTTLS).
"""

_X509_V_OK: Final = 0


class CertificateError(Exception):
    """A certificate, key or CA file that cannot be used; the message names the problem."""


class PrivateKeyError(CertificateError):
    """The private key is missing, unreadable, encrypted, or not the certificate's."""


class ALPNMismatch(SSL.Error):
    """The client offered ALPN protocols, none of them the listener's: refused like nginx.

    A subclass of L{SSL.Error} so that L{TLSMemoryBIOProtocol} treats it as a failed handshake
    (it sends OpenSSL's C{no_application_protocol} alert and reports this to C{connectionLost}).
    """


# -- files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyAndChain:
    """A private key and its certificate chain (leaf first), checked to belong together."""

    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(f"{path!r}: {e.strerror}") from None


def _certificates_in(path: str, data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(f"{path!r}: not a valid PEM certificate: {e}") from None


def _private_key_in(path: str, data: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PrivateKeyError(f"{path!r}: encrypted private keys are not supported") from None
    except (ValueError, crypto.Error) as e:
        reason = "no PEM private key" if b"PRIVATE KEY-----" not in data else str(e)
        raise PrivateKeyError(f"{path!r}: {reason}") from None
    except Exception as e:  # cryptography raises UnsupportedAlgorithm for odd key types
        raise PrivateKeyError(f"{path!r}: {e}") from None


def load_key_and_chain(certificate: str, key: str = "") -> KeyAndChain:
    """Read a certificate chain and its private key, and check that they match.

    @param certificate: a PEM file: the server's certificate, then its intermediates. When
        C{key} is empty the same file must also hold the private key (a C{NAME.pem}).
    @raise CertificateError: naming the file and what is wrong with it; L{PrivateKeyError}
        when the key is the problem.
    """
    data = _read(certificate)
    chain = _certificates_in(certificate, data)
    if not chain:
        raise CertificateError(f"{certificate!r}: no PEM certificate")
    key_data = data
    if key:
        try:
            key_data = _read(key)
        except CertificateError as e:
            raise PrivateKeyError(str(e)) from None
    private_key = _private_key_in(key or certificate, key_data)
    leaf_key = chain[0].public_key()
    if private_key.public_key() != leaf_key:
        raise PrivateKeyError(
            f"{key or certificate!r}: the private key does not match the certificate"
            f" in {certificate!r}"
        )
    return KeyAndChain(private_key, tuple(chain))


def load_ca_bundle(path: str) -> tuple[x509.Certificate, ...]:
    """Read a PEM bundle of CA certificates (at least one).

    @raise CertificateError: when the file cannot be read or holds no certificate.
    """
    certificates = _certificates_in(path, _read(path))
    if not certificates:
        raise CertificateError(f"{path!r}: no PEM certificate")
    return tuple(certificates)


def check_cipher_string(ciphers: str) -> None:
    """Check that OpenSSL accepts C{ciphers} as a cipher list (for TLS 1.2 and older).

    @raise CertificateError: with OpenSSL's reason.
    """
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise CertificateError(f"{ciphers!r} selects no cipher OpenSSL knows") from None


def directory_files(directory: str) -> list[str]:
    """The C{*.pem} file names in a certificate directory, sorted."""
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise CertificateError(f"{directory!r}: {e.strerror}") from None
    return sorted(n for n in names if n.endswith(".pem") and not n.startswith("."))


def default_file(directory: str) -> str:
    """The file served to clients whose SNI name has no file: C{default.pem}, else the first.

    @raise CertificateError: when the directory holds no C{*.pem} file.
    """
    names = directory_files(directory)
    if not names:
        raise CertificateError(f"{directory!r}: no *.pem file in the certificate directory")
    return os.path.join(directory, "default.pem" if "default.pem" in names else names[0])


def check_directory(directory: str) -> None:
    """Load every C{NAME.pem} of a certificate directory, as L{ServerTLS} will.

    @raise CertificateError: for the first file that cannot serve, or an empty directory.
    """
    for name in directory_files(directory):
        load_key_and_chain(os.path.join(directory, name))
    default_file(directory)


# -- nginx's formats ----------------------------------------------------------------------------

_openssl = Binding.lib
_ffi = Binding.ffi


def _short_name(oid: x509.ObjectIdentifier) -> str | None:
    """OpenSSL's short name for an attribute type (C{CN}, C{emailAddress}); None if unknown.

    pyOpenSSL and cryptography do not expose OpenSSL's object table; nginx prints these names
    (C{XN_FLAG_FN_SN}), so ask the same table through cryptography's OpenSSL binding.
    """
    nid = _openssl.OBJ_txt2nid(oid.dotted_string.encode("ascii"))
    if nid == 0:
        return None
    return str(_ffi.string(_openssl.OBJ_nid2sn(nid)).decode("ascii"))


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV (definite length)."""
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    length = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _dump_value(attribute: x509.NameAttribute[Any]) -> str:
    """C{#} and the DER of the value in upper-case hex: OpenSSL's form for unknown types."""
    value = attribute.value
    if isinstance(value, bytes):
        # x500UniqueIdentifier: a BIT STRING, with no unused bits.
        return "#" + _der(0x03, b"\0" + value).hex().upper()
    # cryptography keeps the string type it parsed only in a private attribute; it writes
    # custom OIDs as UTF8String (tag 12), so that is the fallback.
    string_type = getattr(attribute, "_type", None)
    tag = int(getattr(string_type, "value", 12))
    encoding = {30: "utf-16-be", 28: "utf-32-be"}.get(tag, "utf-8")
    return "#" + _der(tag, value.encode(encoding)).hex().upper()


def _escape_rfc2253(value: str) -> str:
    """Escape one attribute value as OpenSSL's C{ASN1_STRFLGS_RFC2253} does.

    That is: C{,+"\\<>;} get a backslash; a leading C{#} or space and a trailing space get a
    backslash; control characters and every byte of a non-ASCII character's UTF-8 encoding
    become C{\\XX} (upper-case hex). So C{Jürgen} is C{J\\C3\\BCrgen}, as nginx sends it.
    """
    out: list[str] = []
    last = len(value) - 1
    for index, char in enumerate(value):
        code = ord(char)
        if code > 0x7F:
            out.extend(f"\\{byte:02X}" for byte in char.encode("utf-8"))
        elif char in ',+"\\<>;' or (char == " " and index in (0, last)):
            out.append("\\" + char)
        elif char == "#" and index == 0:
            out.append("\\#")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\{code:02X}")
        else:
            out.append(char)
    return "".join(out)


def rfc2253_name(name: x509.Name) -> str:
    """A distinguished name as nginx's C{$ssl_client_s_dn}: C{X509_NAME_print_ex(XN_FLAG_RFC2253)}.

    Last RDN first, C{,} between RDNs, C{+} inside a multi-valued RDN, OpenSSL short names, and
    L{_escape_rfc2253} values (nginx has used this RFC 2253 form since 1.11.6).
    """
    entries = [(index, attribute) for index, rdn in enumerate(name.rdns) for attribute in rdn]
    out = []
    previous = -1
    for index, attribute in reversed(entries):
        if previous != -1:
            out.append("+" if index == previous else ",")
        previous = index
        short_name = _short_name(attribute.oid)
        if short_name is None:
            # XN_FLAG_DUMP_UNKNOWN_FIELDS: an attribute OpenSSL has no name for is printed as
            # its dotted OID and the DER of its value.
            out.append(f"{attribute.oid.dotted_string}={_dump_value(attribute)}")
        elif isinstance(attribute.value, bytes):
            out.append(f"{short_name}={_dump_value(attribute)}")
        else:
            out.append(f"{short_name}={_escape_rfc2253(attribute.value)}")
    return "".join(out)


def serial_hex(certificate: x509.Certificate) -> str:
    """The serial number as nginx's C{$ssl_client_serial}: upper-case hex, whole bytes.

    OpenSSL's C{i2a_ASN1_INTEGER}: two digits per byte of the magnitude, C{-} when negative.
    """
    number = certificate.serial_number
    digits = f"{abs(number):X}"
    if len(digits) % 2:
        digits = "0" + digits
    return ("-" if number < 0 else "") + digits


def sha1_fingerprint(certificate: x509.Certificate) -> str:
    """nginx's C{$ssl_client_fingerprint}: SHA-1 of the DER certificate, lower-case hex."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


def verify_error_string(error: int) -> str:
    """OpenSSL's text for a certificate verification error number (as after C{FAILED:})."""
    return str(_ffi.string(_openssl.X509_verify_cert_error_string(error)).decode("ascii"))


# -- server side --------------------------------------------------------------------------------


@dataclass
class _ServerConnectionState:
    """What relaygate learned about one server-side TLS connection while it handshook."""

    verify_client: str
    verify_error: int = _X509_V_OK


_server_states: weakref.WeakKeyDictionary[SSL.Connection, _ServerConnectionState] = (
    weakref.WeakKeyDictionary()
)
_verified_backends: weakref.WeakSet[SSL.Connection] = weakref.WeakSet()


def _record_verification(
    connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    """Verify callback: note the error instead of failing the handshake (C{ssl_verify_client}).

    Keeping the I{last} error matches C{SSL_get_verify_result}, which nginx reports: OpenSSL
    overwrites the store's error for each problem its callback lets through. (pyOpenSSL resets
    that error once the callback accepts, so C{SSL_get_verify_result} itself would say OK.)
    """
    state = _server_states.get(connection)
    if not ok and state is not None:
        state.verify_error = error
    return True


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


def _file_signature(*paths: str) -> tuple[tuple[int, int, int, int], ...] | None:
    """What changes when a file is renewed (mtime, size, inode, device), or None if missing."""
    try:
        stats = [os.stat(p) for p in paths]
    except FileNotFoundError:
        return None
    return tuple((s.st_mtime_ns, s.st_size, s.st_ino, s.st_dev) for s in stats)


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
        signature = _file_signature(*paths)
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
            names=_dns_names(material.chain[0]),
        )
        return True


def _dns_names(certificate: x509.Certificate) -> list[str]:
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in sans.value.get_values_for_type(x509.DNSName)]


def normalise_server_name(raw: bytes | None) -> str | None:
    """The SNI name as a safe lower-case file-name stem, or None when it cannot be one.

    Clients send A-labels (RFC 6066 §3); anything but letters, digits, C{-} and C{.} in proper
    labels is refused here, so a name can never walk out of the certificate directory.
    """
    if not raw:
        return None
    try:
        name = raw.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    labels = name.split(".")
    if not name or len(name) > 253 or any(not label for label in labels):
        return None
    if not all(c.isascii() and (c.isalnum() or c == "-") for c in name.replace(".", "")):
        return None
    return name


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
        _server_states[connection] = _ServerConnectionState(self.verify_client)
        if self.verify_client != "off":
            # VERIFY_PEER without FAIL_IF_NO_PEER_CERT, and a callback that records instead of
            # failing: the handshake completes, and the front answers like nginx. Set on the
            # connection, since an SNI context switch does not carry the verify mode over.
            connection.set_verify(SSL.VERIFY_PEER, _record_verification)
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


def _tls_connection(transport: object) -> SSL.Connection | None:
    """The pyOpenSSL connection behind an L{ISSLTransport} (implicit TLS or after STARTTLS)."""
    if not ISSLTransport.providedBy(transport):
        return None
    handle = transport.getHandle()  # type: ignore[attr-defined]
    return handle if isinstance(handle, SSL.Connection) else None


def client_tls_info(transport: object) -> ClientTLS | None:
    """The TLS facts of a client connection, in nginx's C{Auth-SSL-*} formats.

    Call it once the handshake is done (C{IHandshakeListener.handshakeCompleted}, or any data
    received over TLS). C{None} when the transport is not TLS or is still handshaking.

      - C{protocol}: C{TLSv1.3} (C{SSL_get_version}); C{cipher}: OpenSSL's name;
      - C{verify}: C{""} when client certificates are off (nginx then sends no
        C{Auth-SSL-Verify}, C{-Subject} ... headers: send only non-empty fields), C{NONE}
        without a certificate, C{SUCCESS}, or C{FAILED:<OpenSSL's reason>};
      - C{subject}, C{issuer}: RFC 2253 (L{rfc2253_name}); C{serial}: upper-case hex;
        C{fingerprint}: SHA-1, lower-case hex; C{certificate_pem}: the PEM as nginx's
        C{$ssl_client_raw_cert} (the auth_http client escapes it for C{Auth-SSL-Cert}).
    """
    connection = _tls_connection(transport)
    if connection is None:
        return None
    cipher = connection.get_cipher_name()
    if cipher is None:
        return None
    protocol = connection.get_protocol_version_name()
    state = _server_states.get(connection)
    if state is None or state.verify_client == "off":
        return ClientTLS(protocol=protocol, cipher=cipher, verify="")
    certificate = connection.get_peer_certificate(as_cryptography=True)
    if certificate is None:
        return ClientTLS(protocol=protocol, cipher=cipher, verify="NONE")
    if state.verify_error == _X509_V_OK:
        verify = "SUCCESS"
    else:
        verify = "FAILED:" + verify_error_string(state.verify_error)
    return ClientTLS(
        protocol=protocol,
        cipher=cipher,
        verify=verify,
        subject=rfc2253_name(certificate.subject),
        issuer=rfc2253_name(certificate.issuer),
        serial=serial_hex(certificate),
        fingerprint=sha1_fingerprint(certificate),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


def certificate_problem(transport: object) -> CertificateProblem | None:
    """Whether the front must refuse the session for its client certificate, as nginx does.

    nginx's C{ngx_mail_verify_cert}: with client certificates on (optional or required), a
    certificate that failed verification is C{cert_error}; with C{required}, no certificate is
    C{no_cert}. Send C{CERTIFICATE_REPLIES[protocol][problem]} and close.
    """
    connection = _tls_connection(transport)
    state = _server_states.get(connection) if connection is not None else None
    if connection is None or state is None or state.verify_client == "off":
        return None
    if state.verify_error != _X509_V_OK:
        return "cert_error"
    if state.verify_client == "required" and connection.get_peer_certificate() is None:
        return "no_cert"
    return None


@dataclass(frozen=True)
class HandshakeResult:
    """What a finished client handshake showed: the facts passed to the auth service and
    the logs, and nginx's verdict on the client certificate (C{None} when it passes)."""

    info: ClientTLS | None
    problem: CertificateProblem | None

    def summary(self) -> str:
        """The client leg for the access log's C{tls} field, e.g. C{TLSv1.3 CIPHER verify=...}."""
        if self.info is None:
            return ""
        verify = f" verify={self.info.verify}" if self.info.verify else ""
        return f"{self.info.protocol} {self.info.cipher}{verify}"


class HandshakeTimer:
    """Bounds a client's TLS handshake by C{[tls] handshake_timeout}, for every front.

    C{expired} runs when the client has not finished in time (no reply can reach it then);
    L{finished} stops the timer and reads what the handshake showed.
    """

    def __init__(self, clock: IReactorTime, timeout: float, expired: Callable[[], None]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._expired = expired
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Start timing a handshake (implicit TLS on connect, or after STARTTLS)."""
        self.stop()
        self._call = self._clock.callLater(self._timeout, self._fire)

    def stop(self) -> None:
        """Forget the timer (the handshake finished, or the connection is gone)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def finished(self, transport: object) -> HandshakeResult:
        """The handshake is done: stop timing it and read its facts and certificate verdict."""
        self.stop()
        return HandshakeResult(client_tls_info(transport), certificate_problem(transport))

    def _fire(self) -> None:
        self._call = None
        self._expired()


class ReloadOnSIGHUP(Service):
    """Call C{reload} when the process gets SIGHUP, while the service runs.

    The signal handler only schedules the reload with C{callFromThread}, the reactor-safe way
    to leave a signal handler (it wakes the reactor, as Twisted's own SIGINT handler does).
    """

    _log = Logger()

    def __init__(
        self,
        reload: Callable[[], object],
        reactor: IReactorFromThreads,
        install: Callable[[int, Any], Any] = signal.signal,
    ) -> None:
        """@param install: C{signal.signal}, or a stand-in for tests."""
        self._reload = reload
        self._reactor = reactor
        self._install = install
        self._previous: Any = None

    @override
    def startService(self) -> None:
        super().startService()
        self._previous = self._install(signal.SIGHUP, self._on_signal)

    @override
    def stopService(self) -> None:
        super().stopService()
        previous = self._previous if self._previous is not None else signal.SIG_DFL
        self._install(signal.SIGHUP, previous)
        self._previous = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self._reload_now)

    def _reload_now(self) -> None:
        self._log.info("SIGHUP: reloading certificates")
        try:
            self._reload()
        except Exception:
            self._log.failure("while reloading certificates")


# -- backend side -------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _bundle_trust_root(path: str, signature: object) -> IOpenSSLTrustRoot:
    certificates = [Certificate(crypto.X509.from_cryptography(c)) for c in load_ca_bundle(path)]
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)
    return root


def trust_root(ca: str) -> IOpenSSLTrustRoot:
    """The CAs to trust: C{""} or C{"system"} for the OS store, else a PEM bundle's path.

    A bundle is read once per change on disk.
    @raise CertificateError: when the bundle cannot be read.
    """
    if ca in ("", "system"):
        system: IOpenSSLTrustRoot = platformTrust()
        return system
    return _bundle_trust_root(ca, _file_signature(ca))


@lru_cache(maxsize=32)
def _client_certificate(certificate: str, key: str, signature: object) -> PrivateCertificate:
    material = load_key_and_chain(certificate, key)
    pem = material.chain[0].public_bytes(serialization.Encoding.PEM)
    key_pem = material.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    client: PrivateCertificate = PrivateCertificate.fromCertificateAndKeyPair(
        Certificate.loadPEM(pem), KeyPair.load(key_pem, crypto.FILETYPE_PEM)
    )
    return client


@implementer(IOpenSSLClientConnectionCreator)
class _VerifiedBackend:
    """Wraps Twisted's client creator to remember which connections it verified (L{tls_facts})."""

    def __init__(self, inner: IOpenSSLClientConnectionCreator) -> None:
        self._inner = inner

    def clientConnectionForTLS(self, tls_protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = self._inner.clientConnectionForTLS(tls_protocol)
        _verified_backends.add(connection)
        return connection


def backend_tls_creator(
    host: str, ca: str, certificate: str = "", key: str = ""
) -> IOpenSSLClientConnectionCreator:
    """A verifying client creator for a backend at C{host} (for C{startTLS} or a TLS endpoint).

    The handshake fails unless the backend's chain leads to C{ca} (L{trust_root}) and
    service_identity finds C{host} in it: a DNS name, or an IP address (IPv4 or IPv6, without
    brackets) as an C{iPAddress} SAN. Twisted's L{optionsForClientTLS} handles both (it uses
    C{IPAddress_ID} for addresses and then sends no SNI, per RFC 6066).

    @param certificate: a PEM chain to present as client certificate (with C{key}, or holding
        the key itself); empty for none.
    @raise CertificateError: when a file cannot be loaded.
    """
    client: PrivateCertificate | None = None
    if certificate:
        signature = _file_signature(certificate, key) if key else _file_signature(certificate)
        client = _client_certificate(certificate, key, signature)
    inner = optionsForClientTLS(host, trustRoot=trust_root(ca), clientCertificate=client)
    return _VerifiedBackend(inner)


def https_policy(ca: str = "") -> IPolicyForHTTPS:
    """The HTTPS policy for treq's C{Agent} (the auth service): verify against C{ca}.

    Twisted's L{BrowserLikePolicyForHTTPS} already verifies host names (and IP addresses) with
    service_identity; it only needs the trust root. C{ca} as in L{trust_root}.
    """
    policy: IPolicyForHTTPS = BrowserLikePolicyForHTTPS(trustRoot=trust_root(ca))
    return policy


@dataclass(frozen=True)
class TLSFacts:
    """The TLS facts of one connection leg, for log events."""

    protocol: str
    cipher: str
    verified: bool
    """True when the peer's certificate and name were verified by L{backend_tls_creator}."""


def tls_facts(transport: object) -> TLSFacts | None:
    """What TLS a (backend or client) connection negotiated; None when not TLS or handshaking."""
    connection = _tls_connection(transport)
    if connection is None:
        return None
    cipher = connection.get_cipher_name()
    if cipher is None:
        return None
    verified = connection in _verified_backends
    state = _server_states.get(connection)
    if state is not None and state.verify_client != "off":
        has_certificate = connection.get_peer_certificate() is not None
        verified = has_certificate and state.verify_error == _X509_V_OK
    return TLSFacts(connection.get_protocol_version_name(), cipher, verified)
