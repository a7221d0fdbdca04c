"""The embedded demo backend: an SMTP server that stores each message as a file.

``make run`` routes every recipient here so a newcomer sees mail go through the gateway with
no other service installed. It is Twisted's stock ESMTP server; only delivery is ours.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IReactorTCP, IStreamServerEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from typing_extensions import override
from zope.interface import implementer

from relaygate.config.demo import DemoConfig

_counter = itertools.count(1)


@implementer(IMessageSMTP)
class StoredMessage:
    """One message written to C{<directory>/tmp}, then renamed into C{<directory>/new}."""

    _log = Logger()

    def __init__(self, directory: str, sender: str, recipient: str) -> None:
        name = f"{os.getpid()}-{next(_counter):06d}.eml"
        self._partial = os.path.join(directory, "tmp", name)
        self.path = os.path.join(directory, "new", name)
        self._sender = sender
        self._recipient = recipient
        self._file = open(self._partial, "wb")

    def lineReceived(self, line: bytes) -> None:
        self._file.write(line + b"\n")

    def eomReceived(self) -> Deferred[bytes]:
        self._file.close()
        os.rename(self._partial, self.path)
        self._log.info(
            "demo backend stored a message from <{sender}> for <{recipient}> in {path}",
            sender=self._sender,
            recipient=self._recipient,
            path=self.path,
        )
        return succeed(self.path.encode())

    def connectionLost(self) -> None:
        self._file.close()
        os.unlink(self._partial)


@implementer(IMessageDelivery)
class DemoDelivery:
    """Accepts every recipient; each recipient's copy goes to its own file, like a mailbox."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._sender = ""

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        return None

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        self._sender = str(origin)
        return origin

    def validateTo(self, user: smtp.User) -> Any:
        sender, recipient = self._sender, str(user.dest)
        return lambda: StoredMessage(self._directory, sender, recipient)


class DemoFactory(ServerFactory):
    """One ESMTP server protocol per connection, all delivering into the same directory."""

    noisy = False

    def __init__(self, directory: str, name: str) -> None:
        self._directory = directory
        self._name = name

    @override
    def buildProtocol(self, addr: Any) -> smtp.ESMTP:
        server = smtp.ESMTP()
        server.host = self._name
        server.delivery = DemoDelivery(self._directory)
        server.factory = self
        return server


def demo_service(config: DemoConfig, name: str, reactor: IReactorTCP) -> IService:
    """The listening service of the demo backend (creates its directories)."""
    for sub in ("tmp", "new"):
        os.makedirs(os.path.join(config.directory, sub), exist_ok=True)
    address = config.address
    endpoint: IStreamServerEndpoint
    if address.is_ipv6:
        endpoint = TCP6ServerEndpoint(reactor, address.port, interface=address.host)
    else:
        endpoint = TCP4ServerEndpoint(reactor, address.port, interface=address.host)
    service = StreamServerEndpointService(endpoint, DemoFactory(config.directory, f"demo.{name}"))
    service._raiseSynchronously = True
    Logger().info(
        "demo backend on {address} stores messages in {directory}/new",
        address=str(address),
        directory=config.directory,
    )
    return service
