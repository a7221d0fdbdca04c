"""Scripted IMAP and POP3 backends for the fuzz run: they accept any login and answer OK.

The fuzz run judges the gateway, not a mail store, so these say yes to everything the gateway's
backend login sends (CAPABILITY, ID, XCLIENT, LOGIN with quoted strings or literals,
AUTHENTICATE/AUTH PLAIN with or without an initial response, USER/PASS) and answer any command
after login with a plain OK. Hand-written because no library offers a scriptable IMAP or POP3
server, and Dovecot would cost seconds per start and per failed login.
"""

from __future__ import annotations

import re

from twisted.internet.protocol import Factory, Protocol

_LITERAL = re.compile(rb"\{(\d+)(\+?)\}$")


class FakeIMAP(Protocol):
    """An IMAP4rev1 server that logs anybody in."""

    def connectionMade(self) -> None:
        self._buffer = b""
        self._literal = 0
        self._parts: list[bytes] = []
        self._sasl_tag: bytes | None = None
        self._write(b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+ AUTH=PLAIN] fake ready")

    def _write(self, *lines: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(line + b"\r\n" for line in lines))

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._literal:
                taken = self._buffer[: self._literal]
                self._buffer = self._buffer[len(taken) :]
                self._literal -= len(taken)
                self._parts.append(taken)
                if self._literal:
                    return
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                return
            self._buffer = rest
            found = _LITERAL.search(line)
            self._parts.append(line)
            if found:
                self._literal = int(found.group(1))
                if not found.group(2):
                    self._write(b"+ go ahead")
                continue
            command, self._parts = b"".join(self._parts), []
            self._command(command)

    def _command(self, line: bytes) -> None:
        if self._sasl_tag is not None:
            tag, self._sasl_tag = self._sasl_tag, None
            self._write(tag + b" OK [CAPABILITY IMAP4rev1] logged in")
            return
        words = line.split(b" ")
        tag, verb = words[0], (words[1].upper() if len(words) > 1 else b"")
        if verb == b"CAPABILITY":
            self._write(b"* CAPABILITY IMAP4rev1 ID LITERAL+ AUTH=PLAIN", tag + b" OK done")
        elif verb == b"ID":
            self._write(b"* ID NIL", tag + b" OK done")
        elif verb == b"LOGIN":
            self._write(tag + b" OK [CAPABILITY IMAP4rev1] logged in")
        elif verb == b"AUTHENTICATE" and len(words) == 3:
            self._sasl_tag = tag
            self._write(b"+ ")
        elif verb == b"AUTHENTICATE":
            self._write(tag + b" OK [CAPABILITY IMAP4rev1] logged in")
        elif verb == b"LOGOUT":
            self._write(b"* BYE bye", tag + b" OK done")
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            self._write(tag + b" OK done")


class FakePOP3(Protocol):
    """A POP3 server with an empty mailbox that logs anybody in."""

    def connectionMade(self) -> None:
        self._buffer = b""
        self._sasl = False
        self._write(b"+OK fake ready")

    def _write(self, *lines: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(line + b"\r\n" for line in lines))

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            self._command(line)

    def _command(self, line: bytes) -> None:
        if self._sasl:
            self._sasl = False
            self._write(b"+OK logged in")
            return
        words = line.split(b" ")
        verb = words[0].upper()
        if verb == b"CAPA":
            self._write(b"+OK", b"USER", b"SASL PLAIN", b"PIPELINING", b".")
        elif verb == b"AUTH" and len(words) == 2:
            self._sasl = True
            self._write(b"+ ")
        elif verb == b"QUIT":
            self._write(b"+OK bye")
            assert self.transport is not None
            self.transport.loseConnection()
        elif verb == b"LIST" or verb == b"UIDL":
            self._write(b"+OK 0 messages", b".")
        elif verb == b"STAT":
            self._write(b"+OK 0 0")
        else:
            self._write(b"+OK")


def imap_factory() -> Factory:
    factory = Factory.forProtocol(FakeIMAP)
    factory.noisy = False
    return factory


def pop3_factory() -> Factory:
    factory = Factory.forProtocol(FakePOP3)
    factory.noisy = False
    return factory
