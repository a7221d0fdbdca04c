"""Loopback integration tests of the SMTP relay with real peers (issue #3, "Tests (trial)").

relaygate runs from a TOML config on the real reactor; clients are swaks, Python's smtplib and
a raw socket; backends are Postfix's smtp-sink and a scripted server that records every byte;
the auth service is a real nginx-protocol HTTP service. Each test checks the exact replies the
client got and what the backend did or did not receive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import smtplib
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from typing_extensions import override

from relaygate.addresses import HostPort
from relaygate.config.load import load
from relaygate.config.model import Config
from tests.authservice import AuthService, hang, ok_to, refuse, start_auth_service
from tests.peers import (
    RawClient,
    Relay,
    ScriptedBackend,
    SmtpSink,
    connect_raw,
    dead_port,
    reserve_port,
    run_swaks,
    smtplib_client,
    start_backend,
    start_garbage_server,
    start_relay,
    start_smtp_sink,
    stuff,
    unstuff,
)

reactor: Any = _global_reactor
ETC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "etc")
Replies = list[tuple[int, bytes]]

MESSAGE = (
    b"From: <alice@client.test>\r\n"
    b"To: <bob@seed.example>\r\n"
    b"Subject: through the gateway\r\n"
    b"\r\n"
    b"Hello from the relay tests.\r\n"
    b".A line that starts with a dot.\r\n"
    b"..Two dots.\r\n"
    b"\r\n"
    b"Last line.\r\n"
)
# What smtp-sink and the demo backend store for MESSAGE: LF line ends, dots unstuffed.
MESSAGE_LF = MESSAGE.replace(b"\r\n", b"\n")

# smtplib's sendmail gives the message's size when the server offers SIZE (as relaygate does).
SENDMAIL_MAIL = b"MAIL FROM:<alice@client.test> size=%d" % len(MESSAGE)
# swaks ends DATA with CRLF "." CRLF after the data it is given: leave out the last CRLF.
SWAKS_DATA = MESSAGE[:-2]

R_SENDER_OK = (250, b"2.1.0 Ok")
R_RCPT_OK = (250, b"2.1.5 Ok")
R_QUEUED = (250, b"2.0.0 Ok: queued")
R_NO_RECIPIENTS = (554, b"5.5.1 Error: no valid recipients")
R_AUTH_SERVICE = (451, b"4.3.2 Internal server error")


def config_text(*sections: str, smtp: str = "", server: str = "", xclient: bool = False) -> str:
    """A relaygate config: one SMTP listener (its port becomes 0), C{sections}, C{[smtp]} keys."""
    body = "\n".join(sections)
    return (
        f'[server]\nname = "gw.test"\n{server}\n\n'
        '[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:2525"\n\n'
        f"{body}\n\n[smtp]\nxclient = {str(xclient).lower()}\n{smtp}\n"
    )


def route(match: str, *ports: int) -> str:
    """A C{[[route]]} sending C{match} to the given 127.0.0.1 ports, in order."""
    backends = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
    return f'[[route]]\nprotocol = "smtp"\nmatch = "{match}"\nbackends = [{backends}]\n'


def auth_section(url: str, timeout: float = 5.0) -> str:
    """An C{[auth]} section asking the auth_http service at C{url}."""
    return f'[auth]\nhttp = "{url}"\ntimeout = {timeout}\n'


def seed_answer(port: int) -> Callable[[dict[str, str]], dict[str, str]]:
    """The seed's nginx http block: C{add_header Auth-Server 127.0.0.1; Auth-Port; return 200}."""
    return lambda headers: {"Auth-Server": "127.0.0.1", "Auth-Port": str(port)}


def transaction(
    port: int, sender: str, recipients: list[str], message: bytes, source: str | None = None
) -> Replies:
    """One smtplib transaction (runs in a thread): the replies to MAIL, each RCPT and DATA.

    DATA is sent even when every RCPT was refused, to see the gateway's own answer.
    """
    replies: Replies = []
    with smtplib_client(port, source) as client:
        client.ehlo()
        replies.append(client.mail(sender))
        for recipient in recipients:
            replies.append(client.rcpt(recipient))
        try:
            replies.append(client.data(message))
        except smtplib.SMTPDataError as e:
            assert isinstance(e.smtp_error, bytes)
            replies.append((e.smtp_code, e.smtp_error))
    return replies


def commands_of(backend: ScriptedBackend) -> list[bytes]:
    """The backend's commands without the final QUIT (whose timing the client doesn't see)."""
    return [line for line in backend.commands if line != b"QUIT"]


class SeedScenarioTests(TestCase):
    """The seed's setup with relaygate in nginx's place: auth service, backend, config as is.

    Here the auth service also sends C{Auth-Status: OK}, as nginx's documentation shows;
    L{SeedExactAnswerTests} runs the same tests with the seed's answer, which has none.
    """

    def answer(self, port: int) -> Callable[[dict[str, str]], dict[str, str]]:
        """The auth service's answer routing to the backend at C{port}."""
        return ok_to("127.0.0.1", port)

    async def _start(self) -> tuple[SmtpSink, AuthService, Relay]:
        """smtp-sink, the auth answer pointing at it, relaygate on etc/seed-nginx.toml."""
        sink = await start_smtp_sink(self)
        auth = await start_auth_service(self, self.answer(sink.port))
        config = load(os.path.join(ETC, "seed-nginx.toml"))
        config = dataclasses.replace(
            config, auth=dataclasses.replace(config.auth, http=(auth.url,))
        )
        relay = await start_relay(self, config)
        return sink, auth, relay

    async def test_swaks_delivers_through_the_seed_setup(self) -> None:
        """swaks's message reaches the sink byte for byte; the auth service got nginx's headers."""
        sink, auth, relay = await self._start()
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(SWAKS_DATA)
        result = await run_swaks(
            *("--server", f"127.0.0.1:{relay.port}", "--ehlo", "client.test"),
            *("--from", "alice@client.test", "--to", "bob@seed.example", "--data", "@" + path),
        )
        self.assertEqual(result.code, 0, result.out + result.err)
        self.assertEqual(
            result.final_replies(),
            [
                "220 localhost ESMTP",
                "250 ENHANCEDSTATUSCODES",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok",
                "221 2.0.0 localhost Bye",
            ],
        )
        await sink.sessions_ended(1)
        [message] = sink.messages()
        self.assertEqual(
            (message.helo, message.mail, message.rcpts, message.content),
            (b"localhost", b"<alice@client.test>", [b"<bob@seed.example>"], MESSAGE_LF),
        )
        [request] = auth.requests
        self.assertEqual(
            {name: request.get(name) for name in _SEED_HEADERS},
            {
                "auth-method": "none",
                "auth-protocol": "smtp",
                "auth-smtp-helo": "client.test",
                "auth-smtp-from": "MAIL FROM:<alice@client.test>",
                "auth-smtp-to": "RCPT TO:<bob@seed.example>",
                "client-ip": "127.0.0.1",
            },
        )

    async def test_smtplib_delivers_through_the_seed_setup(self) -> None:
        """smtplib's sendmail succeeds; one auth request per RCPT; the sink got each message."""
        sink, auth, relay = await self._start()

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib_client(relay.port) as client:
                return client.sendmail(
                    "alice@client.test", ["bob@seed.example", "carol@seed.example"], MESSAGE
                )

        self.assertEqual(await deferToThread(send), {})
        await sink.sessions_ended(1)
        [message] = sink.messages()
        self.assertEqual(
            (message.mail, message.rcpts, message.content),
            (SENDMAIL_MAIL[10:], [b"<bob@seed.example>", b"<carol@seed.example>"], MESSAGE_LF),
        )
        self.assertEqual(
            [
                (r["auth-method"], r["auth-smtp-helo"], r["auth-smtp-to"].lower(), r["client-ip"])
                for r in auth.requests
            ],
            [
                ("none", "client.test", "rcpt to:<bob@seed.example>", "127.0.0.1"),
                ("none", "client.test", "rcpt to:<carol@seed.example>", "127.0.0.1"),
            ],
        )


class SeedExactAnswerTests(SeedScenarioTests):
    """The seed's own auth answer: only Auth-Server and Auth-Port, no Auth-Status.

    nginx accepts it (ngx_mail_auth_http_process_headers fails only on an Auth-Status other than
    OK/WAIT, or on a missing Auth-Server/Auth-Port), so the seed's mail flows through nginx.
    """

    @override
    def answer(self, port: int) -> Callable[[dict[str, str]], dict[str, str]]:
        return seed_answer(port)


_SEED_HEADERS = (
    "auth-method",
    "auth-protocol",
    "auth-smtp-helo",
    "auth-smtp-from",
    "auth-smtp-to",
    "client-ip",
)


class BackendReplyTests(TestCase):
    """The backend's own refusals reach the client unchanged (smtp-sink as the backend)."""

    async def _transaction(self, *sink_options: str) -> tuple[Replies, list[str], int]:
        sink = await start_smtp_sink(self, *sink_options)
        relay = await start_relay(self, config_text(route("*", sink.port)))
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@sink.example"], MESSAGE
        )
        await sink.sessions_ended(1)
        return replies, sink.commands(), len(sink.messages())

    async def test_backend_5xx_at_rcpt_reaches_the_client(self) -> None:
        """A 550 from the backend at RCPT is the client's reply; no DATA reaches the backend."""
        text = "550 5.1.1 <bob@sink.example>: Recipient address rejected: User unknown"
        replies, commands, _ = await self._transaction("-f", "RCPT", "-B", text)
        self.assertEqual(replies, [R_SENDER_OK, (550, text[4:].encode()), R_NO_RECIPIENTS])
        self.assertEqual(
            commands[:3],
            ["EHLO gw.test", "MAIL FROM:<alice@client.test>", "RCPT TO:<bob@sink.example>"],
        )
        self.assertNotIn("DATA", commands)

    async def test_backend_4xx_at_rcpt_reaches_the_client(self) -> None:
        """A 450 from the backend at RCPT is the client's reply; no DATA reaches the backend."""
        text = "450 4.2.0 <bob@sink.example>: Recipient address rejected: Try again"
        replies, commands, _ = await self._transaction("-r", "RCPT", "-b", text)
        self.assertEqual(replies, [R_SENDER_OK, (450, text[4:].encode()), R_NO_RECIPIENTS])
        self.assertNotIn("DATA", commands)

    async def test_backend_5xx_at_end_of_data_is_the_final_reply(self) -> None:
        """The backend's 554 to the dot is the client's final reply (no 2xx anywhere for it)."""
        text = "554 5.7.1 Message content rejected"
        replies, commands, _ = await self._transaction("-f", ".", "-B", text)
        self.assertEqual(replies, [R_SENDER_OK, R_RCPT_OK, (554, text[4:].encode())])
        self.assertEqual(commands[3:5], ["DATA", "."])

    async def test_backend_4xx_at_end_of_data_is_the_final_reply(self) -> None:
        """The backend's 451 to the dot is the client's final reply."""
        text = "451 4.3.0 Backend busy, try again"
        replies, commands, _ = await self._transaction("-r", ".", "-b", text)
        self.assertEqual(replies, [R_SENDER_OK, R_RCPT_OK, (451, text[4:].encode())])
        self.assertEqual(commands[3:5], ["DATA", "."])

    async def test_backend_refusing_mail_answers_the_rcpt(self) -> None:
        """The backend's refusal of MAIL is the client's reply to its RCPT (MAIL went first)."""
        text = "553 5.7.1 <alice@client.test>: Sender address rejected: Access denied"
        replies, commands, _ = await self._transaction("-f", "MAIL", "-B", text)
        self.assertEqual(replies, [R_SENDER_OK, (553, text[4:].encode()), R_NO_RECIPIENTS])
        self.assertEqual(commands[:2], ["EHLO gw.test", "MAIL FROM:<alice@client.test>"])
        self.assertFalse([line for line in commands if line.startswith(("RCPT", "DATA"))])

    async def test_backend_refusing_data_answers_the_data(self) -> None:
        """A backend answering DATA with 451 instead of 354: the client's DATA gets that 451."""
        backend = await start_backend(
            self, respond=lambda step: b"451 4.3.0 Try later" if step == b"DATA" else None
        )
        relay = await start_relay(self, config_text(route("*", backend.port)))
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@x.example"], MESSAGE
        )
        self.assertEqual(replies, [R_SENDER_OK, R_RCPT_OK, (451, b"4.3.0 Try later")])
        self.assertEqual(backend.messages, [])


class BackendFailureTests(TestCase):
    """A backend that is down or goes away gives 4xx, never 5xx, and nothing is half-delivered."""

    async def test_backend_down_gives_451_at_rcpt(self) -> None:
        """With nothing listening at the backend's port, RCPT gets 451 4.4.1."""
        relay = await start_relay(self, config_text(route("*", dead_port(self))))
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@x.example"], MESSAGE
        )
        self.assertEqual(
            replies,
            [
                R_SENDER_OK,
                (451, b"4.4.1 Cannot reach the mail server, try again later"),
                R_NO_RECIPIENTS,
            ],
        )

    async def test_backend_greeting_421_gives_451_at_rcpt(self) -> None:
        """A backend that greets with 421 counts as down: 451 4.4.1 and no transaction there."""
        backend = await start_backend(
            self, respond=lambda step: b"421 4.3.2 Busy" if step == b"CONNECT" else None
        )
        relay = await start_relay(self, config_text(route("*", backend.port)))
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@x.example"], MESSAGE
        )
        self.assertEqual(
            replies,
            [
                R_SENDER_OK,
                (451, b"4.4.1 Cannot reach the mail server, try again later"),
                R_NO_RECIPIENTS,
            ],
        )
        await backend.all_closed()
        self.assertEqual(backend.commands, [])

    async def test_failover_to_the_second_backend(self) -> None:
        """A route whose first backend is dead delivers to its second."""
        sink = await start_smtp_sink(self)
        relay = await start_relay(self, config_text(route("*", dead_port(self), sink.port)))
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@x.example"], MESSAGE
        )
        self.assertEqual(replies, [R_SENDER_OK, R_RCPT_OK, (250, b"2.0.0 Ok")])
        await sink.sessions_ended(1)
        [message] = sink.messages()
        self.assertEqual((message.rcpts, message.content), ([b"<bob@x.example>"], MESSAGE_LF))

    async def test_backend_closing_at_mail_gives_451_at_rcpt(self) -> None:
        """A backend that hangs up after MAIL makes RCPT fail with 451 4.4.2."""
        sink = await start_smtp_sink(self, "-q", "MAIL")
        relay = await start_relay(self, config_text(route("*", sink.port)))
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@x.example"], MESSAGE
        )
        self.assertEqual(
            replies,
            [
                R_SENDER_OK,
                (451, b"4.4.2 Lost the connection to the mail server, try again later"),
                (451, b"4.4.2 Lost the connection to the mail server, try again later"),
            ],
        )
        await sink.sessions_ended(1)
        self.assertEqual(sink.messages(), [])

    async def test_backend_dropping_mid_data_gives_451_after_the_dot(self) -> None:
        """A backend that drops the connection inside DATA: 451 4.4.2 to the dot, no message."""
        backend = await start_backend(self, drop_after=1000)
        relay = await start_relay(self, config_text(route("*", backend.port)))
        message = MESSAGE + b"x" * 998 + b"\r\n" + b"y" * 998 + b"\r\n"
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@x.example"], message * 30
        )
        self.assertEqual(
            replies,
            [
                R_SENDER_OK,
                R_RCPT_OK,
                (451, b"4.4.2 Lost the connection to the mail server, try again later"),
            ],
        )
        await backend.all_closed()
        self.assertEqual(backend.messages, [])
        self.assertEqual(
            backend.commands,
            [
                b"EHLO gw.test",
                b"MAIL FROM:<alice@client.test>",
                b"RCPT TO:<bob@x.example>",
                b"DATA",
            ],
        )


class AuthServiceFailureTests(TestCase):
    """The auth service down, slow, garbled or failing: 451 4.3.2 at RCPT and no relaying."""

    async def _rcpt_replies(
        self, url: str, timeout: float = 5.0
    ) -> tuple[Replies, ScriptedBackend]:
        backend = await start_backend(self)
        relay = await start_relay(self, config_text(auth_section(url, timeout)))
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@x.example"], MESSAGE
        )
        return replies, backend

    async def test_auth_service_down_gives_451(self) -> None:
        """Nothing listening at the auth URL: 451 4.3.2 at RCPT."""
        replies, backend = await self._rcpt_replies(f"http://127.0.0.1:{dead_port(self)}/auth")
        self.assertEqual(replies, [R_SENDER_OK, R_AUTH_SERVICE, R_NO_RECIPIENTS])
        self.assertEqual(backend.sessions, [])

    async def test_auth_service_timeout_gives_451(self) -> None:
        """An auth service that never answers: 451 4.3.2 once [auth] timeout has passed."""
        auth = await start_auth_service(self, hang())
        replies, backend = await self._rcpt_replies(auth.url, timeout=0.5)
        self.assertEqual(replies, [R_SENDER_OK, R_AUTH_SERVICE, R_NO_RECIPIENTS])
        self.assertEqual(len(auth.requests), 1)
        self.assertEqual(backend.sessions, [])

    async def test_auth_service_garbage_gives_451(self) -> None:
        """An auth service answering something that is not HTTP: 451 4.3.2 at RCPT."""
        port = await start_garbage_server(self, b"SSH-2.0-OpenSSH_9.2p1\r\n")
        replies, backend = await self._rcpt_replies(f"http://127.0.0.1:{port}/auth")
        self.assertEqual(replies, [R_SENDER_OK, R_AUTH_SERVICE, R_NO_RECIPIENTS])
        self.assertEqual(backend.sessions, [])

    async def test_auth_service_http_500_gives_451(self) -> None:
        """An auth service answering HTTP 500: 451 4.3.2 at RCPT."""
        auth = await start_auth_service(self, lambda headers: 500)
        replies, backend = await self._rcpt_replies(auth.url)
        self.assertEqual(replies, [R_SENDER_OK, R_AUTH_SERVICE, R_NO_RECIPIENTS])
        self.assertEqual(len(auth.requests), 1)
        self.assertEqual(backend.sessions, [])

    async def test_auth_refusal_gives_550_with_its_text(self) -> None:
        """An Auth-Status text other than OK is shown to the client as 550 5.7.1 <text>."""
        auth = await start_auth_service(self, refuse("Relaying to this domain is not allowed"))
        replies, backend = await self._rcpt_replies(auth.url)
        self.assertEqual(
            replies,
            [R_SENDER_OK, (550, b"5.7.1 Relaying to this domain is not allowed"), R_NO_RECIPIENTS],
        )
        self.assertEqual(backend.sessions, [])

    async def test_auth_error_code_replaces_the_code(self) -> None:
        """With Auth-Error-Code: 450 4.7.1 the refusal carries that code."""
        auth = await start_auth_service(
            self, refuse("Greylisted, come back later", Auth_Error_Code="450 4.7.1")
        )
        replies, backend = await self._rcpt_replies(auth.url)
        self.assertEqual(
            replies, [R_SENDER_OK, (450, b"4.7.1 Greylisted, come back later"), R_NO_RECIPIENTS]
        )
        self.assertEqual(backend.sessions, [])


class RoutingTests(TestCase):
    """The embedded [[route]] table: unrouted domains and one backend per transaction."""

    async def test_unrouted_domain_gets_550_at_rcpt(self) -> None:
        """A recipient domain no route covers is refused with 550 5.7.1 at RCPT."""
        backend = await start_backend(self)
        relay = await start_relay(self, config_text(route("routed.example", backend.port)))
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@elsewhere.example"], MESSAGE
        )
        self.assertEqual(
            replies, [R_SENDER_OK, (550, b"5.7.1 Relay access denied"), R_NO_RECIPIENTS]
        )
        self.assertEqual(backend.sessions, [])

    async def test_recipient_for_another_backend_gets_452(self) -> None:
        """The second backend's recipient gets 452 4.5.3 and goes in the next transaction."""
        first = await start_backend(self)
        second = await start_backend(self)
        relay = await start_relay(
            self,
            config_text(route("one.example", first.port), route("two.example", second.port)),
        )

        def send() -> list[dict[str, tuple[int, bytes]]]:
            with smtplib_client(relay.port) as client:
                refused = client.sendmail(
                    "alice@client.test", ["bob@one.example", "carol@two.example"], MESSAGE
                )
                again = client.sendmail("alice@client.test", ["carol@two.example"], MESSAGE)
                return [refused, again]

        self.assertEqual(
            await deferToThread(send),
            [
                {
                    "carol@two.example": (
                        452,
                        b"4.5.3 Too many recipients: send this one in a new transaction",
                    )
                },
                {},
            ],
        )
        self.assertEqual(first.messages, [stuff(MESSAGE)])
        self.assertEqual(second.messages, [stuff(MESSAGE)])
        self.assertEqual(
            [line for line in first.commands if line.startswith(b"RCPT")],
            [b"RCPT TO:<bob@one.example>"],
        )
        self.assertEqual(
            [line for line in second.commands if line.startswith(b"RCPT")],
            [b"RCPT TO:<carol@two.example>"],
        )


class PipeliningTests(TestCase):
    """RFC 2920: replies in order, and one backend connection for a session's transactions."""

    async def test_swaks_pipelining_gets_every_reply_in_order(self) -> None:
        """swaks --pipeline sends MAIL, two RCPTs and DATA at once; the replies come in order."""
        backend = await start_backend(self)
        relay = await start_relay(self, config_text(route("*", backend.port)))
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(SWAKS_DATA)
        result = await run_swaks(
            *("--server", f"127.0.0.1:{relay.port}", "--ehlo", "client.test", "--pipeline"),
            *("--from", "alice@client.test", "--to", "bob@x.example,carol@x.example"),
            *("--data", "@" + path),
        )
        self.assertEqual(result.code, 0, result.out + result.err)
        self.assertEqual(
            result.final_replies(),
            [
                "220 gw.test ESMTP",
                "250 ENHANCEDSTATUSCODES",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued",
                "221 2.0.0 gw.test Bye",
            ],
        )
        self.assertEqual(
            commands_of(backend),
            [
                b"EHLO gw.test",
                b"MAIL FROM:<alice@client.test>",
                b"RCPT TO:<bob@x.example>",
                b"RCPT TO:<carol@x.example>",
                b"DATA",
            ],
        )
        self.assertEqual(backend.messages, [stuff(MESSAGE)])

    async def test_pipelined_transactions_share_one_backend_connection(self) -> None:
        """Commands written at once get their replies in order; two transactions, one backend."""
        backend = await start_backend(self)
        relay = await start_relay(self, config_text(route("*", backend.port)))
        client = await connect_raw(self, relay.port)
        self.assertEqual(len(await client.exchange(b"EHLO client.test\r\n")), 1)
        replies = await client.exchange(
            b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@x.example>\r\n"
            b"RCPT TO:<carol@x.example>\r\nDATA\r\n",
            4,
        )
        self.assertEqual(
            replies,
            [
                b"250 2.1.0 Ok",
                b"250 2.1.5 Ok",
                b"250 2.1.5 Ok",
                b"354 End data with <CR><LF>.<CR><LF>",
            ],
        )
        replies = await client.exchange(
            stuff(MESSAGE) + b".\r\nMAIL FROM:<dave@client.test>\r\n"
            b"RCPT TO:<erin@x.example>\r\nDATA\r\n",
            4,
        )
        self.assertEqual(
            replies,
            [
                b"250 2.0.0 Ok: queued",
                b"250 2.1.0 Ok",
                b"250 2.1.5 Ok",
                b"354 End data with <CR><LF>.<CR><LF>",
            ],
        )
        replies = await client.exchange(b"Subject: second\r\n\r\nTwo.\r\n.\r\nQUIT\r\n", 2)
        self.assertEqual(replies, [b"250 2.0.0 Ok: queued", b"221 2.0.0 gw.test Bye"])
        await client.closed
        self.assertEqual(len(backend.sessions), 1)
        self.assertEqual(backend.messages, [stuff(MESSAGE), b"Subject: second\r\n\r\nTwo.\r\n"])
        self.assertEqual(
            commands_of(backend),
            [
                b"EHLO gw.test",
                b"MAIL FROM:<alice@client.test>",
                b"RCPT TO:<bob@x.example>",
                b"RCPT TO:<carol@x.example>",
                b"DATA",
                b"MAIL FROM:<dave@client.test>",
                b"RCPT TO:<erin@x.example>",
                b"DATA",
            ],
        )


def big_message(size: int) -> bytes:
    """A message of at least C{size} bytes of varied CRLF lines, some starting with dots."""
    lines = [b"From: <alice@client.test>", b"Subject: big", b""]
    total = 0
    number = 0
    while total < size:
        digest = hashlib.sha256(b"%d" % number).hexdigest().encode()
        line = (b"." * (number % 3) if number % 5 == 0 else b"") + digest * (1 + number % 4)
        lines.append(line)
        total += len(line) + 2
        number += 1
    return b"\r\n".join(lines) + b"\r\n"


class LargeMessageTests(TestCase):
    """A 20 MiB message is relayed byte for byte."""

    async def test_20_mib_message_is_byte_identical_at_the_backend(self) -> None:
        """The recording backend receives exactly the dot-stuffed bytes smtplib sent."""
        backend = await start_backend(self)
        relay = await start_relay(self, config_text(route("*", backend.port)))
        message = big_message(20 * 1024 * 1024)
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@x.example"], message
        )
        self.assertEqual(replies, [R_SENDER_OK, R_RCPT_OK, R_QUEUED])
        [wire] = backend.messages
        self.assertEqual(hashlib.sha256(wire).digest(), hashlib.sha256(stuff(message)).digest())
        self.assertEqual(hashlib.sha256(unstuff(wire)).digest(), hashlib.sha256(message).digest())

    async def test_20_mib_message_is_identical_at_smtp_sink(self) -> None:
        """smtp-sink stores the same 20 MiB message smtplib sent (as LF lines, unstuffed)."""
        sink = await start_smtp_sink(self)
        relay = await start_relay(self, config_text(route("*", sink.port)))
        message = big_message(20 * 1024 * 1024)
        replies = await deferToThread(
            transaction, relay.port, "alice@client.test", ["bob@x.example"], message
        )
        self.assertEqual(replies, [R_SENDER_OK, R_RCPT_OK, (250, b"2.0.0 Ok")])
        await sink.sessions_ended(1)
        [stored] = sink.messages()
        self.assertEqual(
            hashlib.sha256(stored.content).digest(),
            hashlib.sha256(message.replace(b"\r\n", b"\n")).digest(),
        )


class PromptAckTests(TestCase):
    """A message body is acknowledged promptly on the real stack (listener, wrappers, front)."""

    async def test_the_clients_socket_leaves_delayed_ack_mode_during_the_body(self) -> None:
        """After the command rounds the kernel delays ACKs on the gateway's socket to the client
        (C{TCP_QUICKACK} reads 0); once the first body bytes reached the backend it no longer
        does, so a client whose Nagle holds the body's end is not left waiting 40 ms."""
        quickack = getattr(socket, "TCP_QUICKACK", None)
        if quickack is None:
            raise SkipTest("TCP_QUICKACK is Linux's")
        backend = await start_backend(self)
        relay = await start_relay(self, config_text(route("*", backend.port)))
        client = await connect_raw(self, relay.port)
        for command in (b"EHLO client.test", b"MAIL FROM:<a@client.test>", b"RCPT TO:<b@x.ex>"):
            [reply] = await client.exchange(command + b"\r\n")
            self.assertTrue(reply.startswith(b"250"), reply)
        self.assertEqual(
            await client.exchange(b"DATA\r\n"), [b"354 End data with <CR><LF>.<CR><LF>"]
        )
        gateway = gateway_socket(client)
        if gateway.getsockopt(socket.IPPROTO_TCP, quickack) != 0:
            raise SkipTest("this kernel did not judge the session interactive")
        first = b"Subject: prompt\r\n\r\n" + b"y" * 998 + b"\r\n"
        arrived = backend.bytes_arrived(first)
        client.send(first)
        await arrived
        self.assertEqual(gateway.getsockopt(socket.IPPROTO_TCP, quickack), 1)
        self.assertEqual(await client.exchange(b".\r\n"), [b"250 2.0.0 Ok: queued"])
        self.assertEqual(backend.messages, [first])


def gateway_socket(client: RawClient) -> socket.socket:
    """The gateway's own socket of C{client}'s connection (the reactor reads from it)."""
    assert client.transport is not None
    host = client.transport.getHost()
    assert isinstance(host, IPv4Address)
    [server] = [
        reader
        for reader in reactor.getReaders()
        if isinstance(reader, tcp.Server) and reader.getPeer().port == host.port
    ]
    return server.getHandle()


class LimitTests(TestCase):
    """Every limit has its reply, and nothing over a limit reaches the backend."""

    async def test_command_line_over_2048_octets_gets_500(self) -> None:
        """A 3000-octet command line gets 500 5.5.2; the session goes on."""
        backend = await start_backend(self)
        relay = await start_relay(self, config_text(route("*", backend.port)))
        client = await connect_raw(self, relay.port)
        await client.exchange(b"EHLO client.test\r\n")
        replies = await client.exchange(
            b"MAIL FROM:<" + b"a" * 3000 + b"@client.test>\r\nNOOP\r\n", 2
        )
        self.assertEqual(replies, [b"500 5.5.2 Error: line too long", b"250 2.0.0 Ok"])
        self.assertEqual(backend.sessions, [])

    async def test_size_parameter_over_the_limit_gets_552_at_mail(self) -> None:
        """MAIL FROM with SIZE= over max_message_size gets 552 5.3.4."""
        backend = await start_backend(self)
        relay = await start_relay(
            self, config_text(route("*", backend.port), smtp="max_message_size = 10000")
        )
        client = await connect_raw(self, relay.port)
        await client.exchange(b"EHLO client.test\r\n")
        replies = await client.exchange(b"MAIL FROM:<alice@client.test> SIZE=10001\r\n")
        self.assertEqual(replies, [b"552 5.3.4 Message size exceeds fixed limit"])
        self.assertEqual(backend.sessions, [])

    async def test_body_over_the_limit_gets_552_and_nothing_is_delivered(self) -> None:
        """A body over max_message_size gets 552 5.3.4; the backend never sees its end."""
        backend = await start_backend(self)
        relay = await start_relay(
            self, config_text(route("*", backend.port), smtp="max_message_size = 10000")
        )
        replies = await deferToThread(
            transaction,
            relay.port,
            "alice@client.test",
            ["bob@x.example"],
            MESSAGE + (b"z" * 998 + b"\r\n") * 20,
        )
        self.assertEqual(
            replies, [R_SENDER_OK, R_RCPT_OK, (552, b"5.3.4 Message size exceeds fixed limit")]
        )
        await backend.all_closed()
        self.assertEqual(backend.messages, [])
        self.assertNotIn(b"\r\n.\r\n", backend.sessions[0].received)

    async def test_recipients_over_the_limit_get_452(self) -> None:
        """The recipient after max_recipients gets 452 4.5.3; the others are delivered."""
        backend = await start_backend(self)
        relay = await start_relay(
            self, config_text(route("*", backend.port), smtp="max_recipients = 2")
        )
        replies = await deferToThread(
            transaction,
            relay.port,
            "alice@client.test",
            ["bob@x.example", "carol@x.example", "dave@x.example"],
            MESSAGE,
        )
        self.assertEqual(
            replies,
            [
                R_SENDER_OK,
                R_RCPT_OK,
                R_RCPT_OK,
                (452, b"4.5.3 Error: too many recipients"),
                R_QUEUED,
            ],
        )
        self.assertEqual(
            [line for line in backend.commands if line.startswith(b"RCPT")],
            [b"RCPT TO:<bob@x.example>", b"RCPT TO:<carol@x.example>"],
        )
        self.assertEqual(backend.messages, [stuff(MESSAGE)])

    async def test_too_many_errors_get_421_and_close(self) -> None:
        """The error that reaches max_errors gets 421 4.7.0 and the connection closes."""
        backend = await start_backend(self)
        relay = await start_relay(
            self, config_text(route("*", backend.port), smtp="max_errors = 3")
        )
        client = await connect_raw(self, relay.port)
        replies = await client.exchange(b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n", 3)
        await client.closed
        self.assertEqual(
            replies,
            [
                b"500 5.5.2 Error: command not recognized",
                b"500 5.5.2 Error: command not recognized",
                b"421 4.7.0 Error: too many errors",
            ],
        )
        self.assertEqual(len(client.replies), 4)
        self.assertEqual(backend.sessions, [])

    async def test_idle_client_gets_421_and_close(self) -> None:
        """A client silent for [server] idle_timeout gets 421 4.4.2 and is disconnected."""
        backend = await start_backend(self)
        relay = await start_relay(
            self, config_text(route("*", backend.port), server="idle_timeout = 0.2")
        )
        client = await connect_raw(self, relay.port)
        await client.closed
        self.assertEqual(
            client.replies, [b"220 gw.test ESMTP", b"421 4.4.2 gw.test Error: timeout exceeded"]
        )
        self.assertEqual(backend.sessions, [])


SMUGGLED = (
    b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@x.example>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nSmuggled.\r\n"
)
R_BARE_NEWLINE = b"550 5.6.11 Message refused: bare CR or LF in the message body"


class SmugglingTests(TestCase):
    """End-of-data look-alikes with bare CR or LF are refused, and never reach the backend."""

    async def _smuggle(self, sequence: bytes) -> None:
        backend = await start_backend(self)
        relay = await start_relay(self, config_text(route("*", backend.port)))
        client = await connect_raw(self, relay.port)
        await client.exchange(b"EHLO client.test\r\n")
        replies = await client.exchange(
            b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@x.example>\r\nDATA\r\n", 3
        )
        self.assertEqual(replies[2], b"354 End data with <CR><LF>.<CR><LF>")
        replies = await client.exchange(
            b"Subject: hello\r\n\r\nHello." + sequence + SMUGGLED + b".\r\nQUIT\r\n", 2
        )
        self.assertEqual(replies, [R_BARE_NEWLINE, b"221 2.0.0 gw.test Bye"])
        await backend.all_closed()
        self.assertEqual(backend.messages, [])
        self.assertEqual(
            backend.commands,
            [
                b"EHLO gw.test",
                b"MAIL FROM:<alice@client.test>",
                b"RCPT TO:<bob@x.example>",
                b"DATA",
            ],
        )
        self.assertNotIn(b"evil@attacker.example", bytes(backend.sessions[0].received))

    async def test_lf_dot_lf(self) -> None:
        """A body with LF . LF then another transaction gets 550 5.6.11; nothing is relayed."""
        await self._smuggle(b"\n.\n")

    async def test_crlf_dot_lf(self) -> None:
        """A body with CRLF . LF then another transaction gets 550 5.6.11; nothing is relayed."""
        await self._smuggle(b"\r\n.\n")

    async def test_lf_dot_crlf(self) -> None:
        """A body with LF . CRLF then another transaction gets 550 5.6.11; nothing is relayed."""
        await self._smuggle(b"\n.\r\n")

    async def test_cr_dot_cr(self) -> None:
        """A body with CR . CR then another transaction gets 550 5.6.11; nothing is relayed."""
        await self._smuggle(b"\r.\r")

    async def test_crlf_dot_cr(self) -> None:
        """A body with CRLF . CR then another transaction gets 550 5.6.11; nothing is relayed."""
        await self._smuggle(b"\r\n.\r")

    async def test_cr_dot_crlf(self) -> None:
        """A body with CR . CRLF then another transaction gets 550 5.6.11; nothing is relayed."""
        await self._smuggle(b"\r.\r\n")

    async def test_smtp_sink_gets_no_smuggled_message(self) -> None:
        """With smtp-sink behind the gateway, LF . LF smuggling delivers nothing at all."""
        sink = await start_smtp_sink(self)
        relay = await start_relay(self, config_text(route("*", sink.port)))
        client = await connect_raw(self, relay.port)
        await client.exchange(b"EHLO client.test\r\n")
        await client.exchange(
            b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@x.example>\r\nDATA\r\n", 3
        )
        replies = await client.exchange(
            b"Subject: hello\r\n\r\nHello.\n.\n" + SMUGGLED + b".\r\nQUIT\r\n", 2
        )
        self.assertEqual(replies, [R_BARE_NEWLINE, b"221 2.0.0 gw.test Bye"])
        await sink.sessions_ended(1)
        self.assertEqual(sink.messages(), [])
        self.assertEqual(
            [line for line in sink.commands() if line.startswith("MAIL")],
            ["MAIL FROM:<alice@client.test>"],
        )


XCLIENT_EXTENSIONS = (b"PIPELINING", b"XCLIENT NAME ADDR PORT PROTO HELO LOGIN", b"8BITMIME")


class XclientTests(TestCase):
    """With xclient = true the backend learns the real client through XCLIENT."""

    async def _send_from(self, source: str, backend: ScriptedBackend) -> int:
        relay = await start_relay(
            self,
            config_text(route("*", backend.port), xclient=True),
        )

        def send() -> int:
            with smtplib_client(relay.port, source) as client:
                assert client.sock is not None
                port: int = client.sock.getsockname()[1]
                self.assertEqual(
                    client.sendmail("alice@client.test", ["bob@x.example"], MESSAGE), {}
                )
                return port

        port: int = await deferToThread(send)
        return port

    async def test_backend_gets_xclient_then_ehlo(self) -> None:
        """The backend sees XCLIENT ADDR PORT NAME PROTO HELO, then EHLO again, then MAIL."""
        backend = await start_backend(self, extensions=XCLIENT_EXTENSIONS)
        port = await self._send_from("127.0.0.1", backend)
        self.assertEqual(
            commands_of(backend),
            [
                b"EHLO gw.test",
                b"XCLIENT ADDR=127.0.0.1 PORT=%d NAME=[UNAVAILABLE] PROTO=ESMTP HELO=client.test"
                % port,
                b"EHLO gw.test",
                SENDMAIL_MAIL,
                b"RCPT TO:<bob@x.example>",
                b"DATA",
            ],
        )
        self.assertEqual(backend.messages, [stuff(MESSAGE)])

    async def test_xclient_carries_the_client_address(self) -> None:
        """A client bound to 127.0.0.2 shows up as ADDR=127.0.0.2."""
        backend = await start_backend(self, extensions=XCLIENT_EXTENSIONS)
        port = await self._send_from("127.0.0.2", backend)
        self.assertEqual(
            backend.commands[1],
            b"XCLIENT ADDR=127.0.0.2 PORT=%d NAME=[UNAVAILABLE] PROTO=ESMTP HELO=client.test"
            % port,
        )

    async def test_no_xclient_to_a_backend_that_does_not_offer_it(self) -> None:
        """A backend without XCLIENT in its EHLO reply gets none."""
        backend = await start_backend(self)
        await self._send_from("127.0.0.1", backend)
        self.assertEqual(
            commands_of(backend),
            [
                b"EHLO gw.test",
                SENDMAIL_MAIL,
                b"RCPT TO:<bob@x.example>",
                b"DATA",
            ],
        )


class DemoConfigTests(TestCase):
    """What C{make run} starts: etc/demo.toml with its embedded demo backend."""

    async def test_demo_config_stores_the_message(self) -> None:
        """A message sent through etc/demo.toml's gateway lands as a file in the demo directory."""
        config: Config = load(os.path.join(ETC, "demo.toml"))
        assert config.demo is not None
        # The demo backend's port must be known before the routes are built: hold a free one.
        holder = reserve_port()
        self.addCleanup(holder.close)
        demo_address = HostPort("127.0.0.1", holder.getsockname()[1])
        directory = os.path.abspath(self.mktemp())
        config = dataclasses.replace(
            config,
            demo=dataclasses.replace(config.demo, address=demo_address, directory=directory),
            routes=tuple(dataclasses.replace(r, backends=(demo_address,)) for r in config.routes),
        )
        relay = await start_relay(self, config)

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib_client(relay.port) as client:
                return client.sendmail("alice@client.test", ["bob@anywhere.example"], MESSAGE)

        self.assertEqual(await deferToThread(send), {})
        [name] = os.listdir(os.path.join(directory, "new"))
        with open(os.path.join(directory, "new", name), "rb") as f:
            self.assertEqual(f.read(), MESSAGE_LF)


_FLOOD_LIMIT = 8 * 1024 * 1024
_SMALL_BUFFER = 65536


def _flood_without_reading(port: int, line: bytes) -> tuple[int, int, bytes]:
    """Send C{line} over and over without reading, until the gateway stops taking it (a send
    makes no progress for 2 s) or C{_FLOOD_LIMIT} octets went; then read every reply owed.

    Runs in a thread. Returns the octets sent before the gateway stopped reading, the number
    of replies received, and the last reply line.
    """
    stream = line * (_FLOOD_LIMIT // len(line) + 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Small buffers on the client side, so that the kernel holds little of the flood.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SMALL_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SMALL_BUFFER)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        received = b""
        while b"\r\n" not in received:
            received += sock.recv(4096)
        sock.settimeout(2)
        sent = 0
        while sent < _FLOOD_LIMIT:
            try:
                sent += sock.send(stream[sent : sent + 16384])
            except TimeoutError:
                break
        flooded = sent
        # Finish the line cut off by the last send, then say QUIT; read every reply meanwhile.
        sock.settimeout(30)
        rest = stream[sent : sent + (-sent) % len(line)] + b"QUIT\r\n"
        owed = -(-sent // len(line)) + 1
        finals = 0
        last = b""
        buffer = received[received.index(b"\r\n") + 2 :]
        while finals < owed:
            if rest:
                sock.setblocking(False)
                try:
                    rest = rest[sock.send(rest) :]
                except BlockingIOError:
                    pass
                sock.settimeout(30)
            chunk = sock.recv(262144)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for reply_line in lines:
                if reply_line[3:4] == b" ":
                    finals += 1
                    last = reply_line
    return flooded, finals, last


class ReplyBacklogTests(TestCase):
    """A client that does not read its replies is not read (issue #11, defect 1)."""

    async def test_client_that_never_reads_is_not_read(self) -> None:
        """The gateway stops reading a client that pipelines EHLO without reading the replies,
        then answers every command once the client reads."""
        relay = await start_relay(self, config_text(route("*", dead_port(self))))
        [(_, port)] = relay.reactor.listening
        listening: Any = port
        # Accepted sockets inherit these from the listening socket: little kernel buffering.
        listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SMALL_BUFFER)
        listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SMALL_BUFFER)
        line = b"EHLO client.test\r\n"
        flooded, finals, last = await deferToThread(_flood_without_reading, relay.port, line)
        # Kernel buffers, one read and the transport's bound: well under 2 MiB, not the 8 MiB
        # (and the ~45 MiB of replies) a gateway that never stops reading takes.
        self.assertLess(flooded, 2 * 1024 * 1024)
        self.assertEqual(finals, -(-flooded // len(line)) + 1)
        self.assertEqual(last, b"221 2.0.0 gw.test Bye")


def _half_close_session(port: int, steps: list[bytes], last: bytes) -> tuple[list[bytes], bytes]:
    """Run in a thread: greet, send each of C{steps} and read its reply, then write C{last},
    shut down the sending side (SHUT_WR) and read until the gateway closes.

    Returns the replies to the steps and every byte received after the half-close.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        buffer = b""
        replies: list[bytes] = []
        for step in [b"", *steps]:
            sock.sendall(step)
            reply = b""
            while not reply:
                while b"\r\n" not in buffer:
                    chunk = sock.recv(65536)
                    assert chunk, f"closed early after {replies!r}"
                    buffer += chunk
                line, buffer = buffer.split(b"\r\n", 1)
                if line[3:4] == b" ":
                    reply = line
            replies.append(reply)
        sock.sendall(last)
        sock.shutdown(socket.SHUT_WR)
        received = buffer
        while chunk := sock.recv(65536):
            received += chunk
    return replies[1:], received


class HalfCloseTests(TestCase):
    """A client that half-closes gets every reply it is owed (issue #11, defect 5), also
    through the limits wrapper (L{relaygate.wrapping})."""

    async def start(self) -> tuple[ScriptedBackend, Relay]:
        backend = await start_backend(self)
        config = config_text(route("*", backend.port), "[limits]\nconnections_per_address = 5")
        return backend, await start_relay(self, config)

    async def test_body_dot_quit_then_shutdown(self) -> None:
        """Body, dot and QUIT in one write, then SHUT_WR: the 250, the 221, one delivery."""
        backend, relay = await self.start()
        replies, received = await deferToThread(
            _half_close_session,
            relay.port,
            [
                b"EHLO client.test\r\n",
                b"MAIL FROM:<alice@client.test>\r\n",
                b"RCPT TO:<bob@x.example>\r\n",
                b"DATA\r\n",
            ],
            stuff(MESSAGE) + b".\r\nQUIT\r\n",
        )
        self.assertEqual(
            replies,
            [
                b"250 ENHANCEDSTATUSCODES",
                b"250 2.1.0 Ok",
                b"250 2.1.5 Ok",
                b"354 End data with <CR><LF>.<CR><LF>",
            ],
        )
        self.assertEqual(received, b"250 2.0.0 Ok: queued\r\n221 2.0.0 gw.test Bye\r\n")
        self.assertEqual(backend.messages, [stuff(MESSAGE)])

    async def test_mail_rcpt_quit_then_shutdown(self) -> None:
        """MAIL, RCPT and QUIT in one write, then SHUT_WR: every reply, then the close."""
        backend, relay = await self.start()
        replies, received = await deferToThread(
            _half_close_session,
            relay.port,
            [b"EHLO client.test\r\n"],
            b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@x.example>\r\nQUIT\r\n",
        )
        self.assertEqual(replies, [b"250 ENHANCEDSTATUSCODES"])
        self.assertEqual(received, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n221 2.0.0 gw.test Bye\r\n")
        self.assertEqual(
            commands_of(backend),
            [b"EHLO gw.test", b"MAIL FROM:<alice@client.test>", b"RCPT TO:<bob@x.example>"],
        )
        self.assertEqual(backend.messages, [])
