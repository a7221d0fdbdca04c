"""Property tests for the auth_http request headers (L{relaygate.routing.http}): whatever a
client sends, no CR, LF or NUL reaches a header value, and the credentials are escaped by
nginx's rules (DESIGN.md, "The auth_http protocol")."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from hypothesis import given
from hypothesis import strategies as st
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from relaygate.config.auth import AuthConfig
from relaygate.routing.http import HTTPRouter, escape_auth_value
from relaygate.routing.router import AuthRequest, ClientTLS, ProxyAddresses, RouterUnavailable
from tests import properties  # noqa: F401 (loads the Hypothesis profile)

# Bytes rich in what must never reach a header raw.
_bytes = st.binary(max_size=60) | st.lists(
    st.sampled_from([b"\r", b"\n", b"\x00", b" ", b"%", b"%0D", b"a", b"\xc3\xa9", b"\x7f"]),
    max_size=10,
).map(b"".join)
_text = _bytes.map(lambda b: b.decode("utf-8", "replace"))


def _nginx_escape(value: bytes) -> bytes:
    """nginx's NGX_ESCAPE_MAIL_AUTH, byte by byte: 0x00-0x1F, space and C{%} become C{%XX}."""
    return b"".join(b"%%%02X" % c if c <= 0x20 or c == 0x25 else bytes((c,)) for c in value)


@implementer(IAgent)
class _RecordingAgent:
    """Records the headers of each request and refuses the connection."""

    def __init__(self) -> None:
        self.headers: list[Headers] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,  # noqa: N803 (IAgent's name)
    ) -> Deferred[IResponse]:
        assert headers is not None
        self.headers.append(headers)
        return fail(ConnectionRefusedError())


_requests = st.builds(
    AuthRequest,
    protocol=st.sampled_from(["smtp", "imap", "pop3"]),
    client_ip=st.sampled_from(["192.0.2.7", "2001:db8::7"]) | _text,
    client_port=st.integers(0, 65535),
    method=st.sampled_from(["none", "plain", "login", "cram-md5", "apop", "external"]),
    user=_bytes,
    password=_bytes,
    salt=_bytes,
    attempt=st.integers(1, 10),
    client_host=_text,
    helo=_bytes,
    mail_from=_bytes,
    rcpt_to=_bytes,
    tls=st.none()
    | st.builds(
        ClientTLS,
        protocol=_text,
        cipher=_text,
        verify=_text,
        subject=_text,
        issuer=_text,
        serial=_text,
        fingerprint=_text,
        certificate_pem=_text,
    ),
    proxy=st.none()
    | st.builds(
        ProxyAddresses,
        addr=_text,
        port=st.integers(0, 65535),
        server_addr=_text,
        server_port=st.integers(0, 65535),
    ),
)


class EscapePropertyTests(SynchronousTestCase):
    """L{escape_auth_value} against nginx's rule."""

    @given(_bytes | st.binary(max_size=300))
    def test_matches_nginx(self, value: bytes) -> None:
        """The same bytes as nginx's rule; URL-unescaping gives the value back."""
        escaped = escape_auth_value(value)
        self.assertEqual(escaped, _nginx_escape(value))
        self.assertEqual(unquote_to_bytes(escaped), value)
        self.assertIsNone(re.search(rb"[\x00-\x20]", escaped))


class RequestHeaderPropertyTests(SynchronousTestCase):
    """Any request: headers are sent clean, or not at all."""

    @given(_requests, st.booleans())
    def test_no_cr_lf_nul_in_any_header(self, request: AuthRequest, pass_cert: bool) -> None:
        """Every value sent is free of CR, LF and NUL; Auth-User/-Pass unescape to the values."""
        agent = _RecordingAgent()
        config = AuthConfig(http=("http://auth.example/auth",), pass_client_cert=pass_cert)
        router = HTTPRouter(config, HTTPClient(agent), Clock())
        failures: list[Any] = []
        router.lookup(request).addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        failures[0].trap(RouterUnavailable)
        if not agent.headers:
            return  # refused before sending: a value could not be sent safely
        [headers] = agent.headers
        for name, values in headers.getAllRawHeaders():
            for value in values:
                self.assertIsNone(re.search(rb"[\r\n\x00]", value), (name, value))
        self.assertEqual(headers.getRawHeaders(b"Auth-User"), [_nginx_escape(request.user)])
        self.assertEqual(headers.getRawHeaders(b"Auth-Pass"), [_nginx_escape(request.password)])
