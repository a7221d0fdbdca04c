"""Tests for L{relaygate.config.load}: the TOML contract and its one-line error messages."""

from __future__ import annotations

import glob
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import HostPort
from relaygate.config.errors import ConfigError
from relaygate.config.load import load, parse

HERE = os.path.dirname(os.path.abspath(__file__))
ETC = os.path.join(os.path.dirname(HERE), "etc")


def minimal(**sections: Any) -> dict[str, Any]:
    """The smallest valid config, with C{sections} replacing or adding tables."""
    data: dict[str, Any] = {
        "listen": [{"protocol": "smtp", "address": "127.0.0.1:2525"}],
        "route": [{"match": "*", "backends": ["127.0.0.1:25"]}],
    }
    data.update(sections)
    return data


class ParseTests(SynchronousTestCase):
    """Every error names the file and the key."""

    def assert_error(self, data: dict[str, Any], message: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse(data, "gw.toml")
        self.assertEqual(str(caught.exception), message)

    def test_defaults(self) -> None:
        """A minimal file gets the documented defaults."""
        config = parse(minimal(server={"name": "gw.test"}), "gw.toml")
        self.assertEqual(config.server.name, "gw.test")
        self.assertEqual(config.server.idle_timeout, 300.0)
        self.assertEqual(config.listen[0].tls, "none")
        self.assertEqual(config.smtp.max_message_size, 52428800)
        self.assertEqual(config.smtp.max_recipients, 100)
        self.assertEqual(config.smtp.max_line_length, 2048)
        self.assertEqual(config.routes[0].backends, (HostPort("127.0.0.1", 25),))

    def test_unknown_key(self) -> None:
        """A typo is an error, not silently ignored."""
        self.assert_error(minimal(server={"nmae": "x"}), "gw.toml: server.nmae: unknown key")

    def test_unknown_section(self) -> None:
        """An unknown top-level table is an error."""
        self.assert_error(minimal(mail={}), "gw.toml: mail: unknown key")

    def test_wrong_type(self) -> None:
        """A string where a number belongs names both."""
        self.assert_error(
            minimal(smtp={"max_recipients": "ten"}),
            "gw.toml: smtp.max_recipients: expected an integer, got 'ten'",
        )

    def test_bool_is_not_a_number(self) -> None:
        """true is not accepted as 1."""
        self.assert_error(
            minimal(server={"idle_timeout": True}),
            "gw.toml: server.idle_timeout: expected a number, got True",
        )

    def test_bad_listen_address(self) -> None:
        """A bad address names its [[listen]] entry."""
        self.assert_error(
            minimal(listen=[{"protocol": "smtp", "address": "localhost"}]),
            "gw.toml: listen[0].address: 'localhost': missing ':PORT'",
        )

    def test_bad_choice(self) -> None:
        """A value outside its set lists the choices."""
        self.assert_error(
            minimal(listen=[{"protocol": "smtp", "address": "127.0.0.1:1", "tls": "yes"}]),
            "gw.toml: listen[0].tls: expected one of none, starttls, starttls-required, "
            "implicit; got 'yes'",
        )

    def test_missing_listen(self) -> None:
        """At least one listener is needed."""
        self.assert_error({"route": []}, "gw.toml: listen: needs at least one [[listen]] entry")

    def test_nothing_to_relay_to(self) -> None:
        """Without [auth] http and without a route the listener has nowhere to go."""
        self.assert_error(
            minimal(route=[]),
            "gw.toml: listen[0].protocol: no [auth] http and no [[route]] for 'smtp': "
            "nothing to relay to",
        )

    def test_route_without_backends(self) -> None:
        """A route needs a backend."""
        self.assert_error(
            minimal(route=[{"match": "*", "backends": []}]),
            "gw.toml: route[0].backends: needs at least one host:port",
        )

    def test_control_characters_refused(self) -> None:
        """CR/LF can't enter a value that may end up on the wire."""
        self.assert_error(
            minimal(server={"name": "a\r\nb"}),
            "gw.toml: server.name: must not contain CR, LF or NUL",
        )

    def test_duplicate_listener(self) -> None:
        """The same address twice is refused before anything listens."""
        listen = {"protocol": "smtp", "address": "127.0.0.1:2525"}
        self.assert_error(
            minimal(listen=[listen, listen]),
            "gw.toml: listen[1].address: 127.0.0.1:2525 is listed twice",
        )

    def test_unknown_extension(self) -> None:
        """Only extensions the gateway can honour may be advertised."""
        self.assert_error(
            minimal(smtp={"extensions": ["CHUNKING"]}),
            "gw.toml: smtp.extensions: 'CHUNKING' is not one of PIPELINING, SIZE, 8BITMIME, "
            "ENHANCEDSTATUSCODES, SMTPUTF8, DSN",
        )

    def test_auth_url(self) -> None:
        """[auth] http must be an http(s) URL."""
        self.assert_error(
            minimal(auth={"http": "localhost:8008/auth"}),
            "gw.toml: auth.http: 'localhost:8008/auth' is not an http:// or https:// URL",
        )


class FileTests(SynchronousTestCase):
    """Reading files: missing, not TOML, and the shipped examples."""

    def test_missing_file(self) -> None:
        """A missing file is one line."""
        with self.assertRaises(ConfigError) as caught:
            load("/nonexistent/relaygate.toml")
        self.assertEqual(str(caught.exception), "/nonexistent/relaygate.toml: no such file")

    def test_not_toml(self) -> None:
        """A syntax error names the file and the position."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server\n")
        with self.assertRaises(ConfigError) as caught:
            load(path)
        self.assertTrue(str(caught.exception).startswith(f"{path}: not valid TOML: "))

    def test_every_example_loads(self) -> None:
        """Every file in etc/ is a valid configuration."""
        paths = sorted(glob.glob(os.path.join(ETC, "*.toml")))
        self.assertIn(os.path.join(ETC, "seed-nginx.toml"), paths)
        for path in paths:
            load(path)

    def test_seed_config(self) -> None:
        """etc/seed-nginx.toml is the seed's nginx setup: auth_http, no XCLIENT, 5 s timeout."""
        config = load(os.path.join(ETC, "seed-nginx.toml"))
        self.assertEqual(config.auth.http, ("http://127.0.0.1:8008/auth-smtppass.php",))
        self.assertFalse(config.smtp.xclient)
        self.assertEqual(config.smtp.auth, ("none",))
        self.assertEqual(config.server.idle_timeout, 5.0)
