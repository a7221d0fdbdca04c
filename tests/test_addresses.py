"""Tests for L{relaygate.addresses}: host:port parsing."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import HostPort, parse_host_port


class HostPortTests(SynchronousTestCase):
    """Addresses are host:port or [v6]:port."""

    def test_forms(self) -> None:
        """IPv4, names and bracketed IPv6 parse; str() round-trips."""
        self.assertEqual(parse_host_port("127.0.0.1:25"), HostPort("127.0.0.1", 25))
        self.assertEqual(parse_host_port("mx.example:2525"), HostPort("mx.example", 2525))
        self.assertEqual(parse_host_port("[::1]:25"), HostPort("::1", 25))
        self.assertEqual(str(HostPort("::1", 25)), "[::1]:25")
        self.assertEqual(parse_host_port("mx", default_port=25), HostPort("mx", 25))

    def test_errors(self) -> None:
        """Each malformed address says what is wrong."""
        for text, message in [
            ("127.0.0.1", "missing ':PORT'"),
            ("127.0.0.1:0", "'0' is not a port number (1-65535)"),
            ("127.0.0.1:http", "'http' is not a port number (1-65535)"),
            ("::1:25", "write IPv6 addresses as [ADDRESS]:PORT"),
            ("[zz]:25", "'zz' is not an IPv6 address"),
            (":25", "missing host"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parse_host_port(text)
            self.assertEqual(str(caught.exception), message, text)
