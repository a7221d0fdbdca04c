"""Certificate and connection facts in nginx's formats, and its verdict on a client certificate.

L{client_tls_info} gives the C{Auth-SSL-*} facts, L{certificate_problem} the verdict
(answered with L{CERTIFICATE_REPLIES}), L{tls_facts} the summary for log events.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from cryptography.hazmat.primitives import serialization

from relaygate.routing.router import ClientTLS
from relaygate.tls.state import X509_V_OK, server_states, tls_connection, verified_backends

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
    connection = tls_connection(transport)
    if connection is None:
        return None
    cipher = connection.get_cipher_name()
    if cipher is None:
        return None
    protocol = connection.get_protocol_version_name()
    state = server_states.get(connection)
    if state is None or state.verify_client == "off":
        return ClientTLS(protocol=protocol, cipher=cipher, verify="")
    certificate = connection.get_peer_certificate(as_cryptography=True)
    if certificate is None:
        return ClientTLS(protocol=protocol, cipher=cipher, verify="NONE")
    if state.verify_error == X509_V_OK:
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
    connection = tls_connection(transport)
    state = server_states.get(connection) if connection is not None else None
    if connection is None or state is None or state.verify_client == "off":
        return None
    if state.verify_error != X509_V_OK:
        return "cert_error"
    if state.verify_client == "required" and connection.get_peer_certificate() is None:
        return "no_cert"
    return None


@dataclass(frozen=True)
class TLSFacts:
    """The TLS facts of one connection leg, for log events."""

    protocol: str
    cipher: str
    verified: bool
    """True when the peer's certificate and name were verified by L{backend_tls_creator}."""


def tls_facts(transport: object) -> TLSFacts | None:
    """What TLS a (backend or client) connection negotiated; None when not TLS or handshaking."""
    connection = tls_connection(transport)
    if connection is None:
        return None
    cipher = connection.get_cipher_name()
    if cipher is None:
        return None
    verified = connection in verified_backends
    state = server_states.get(connection)
    if state is not None and state.verify_client != "off":
        has_certificate = connection.get_peer_certificate() is not None
        verified = has_certificate and state.verify_error == X509_V_OK
    return TLSFacts(connection.get_protocol_version_name(), cipher, verified)
