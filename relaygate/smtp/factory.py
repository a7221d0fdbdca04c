"""One SMTP listener's factory: the sessions it builds and what they share.

Every session of a listener reads the same L{SMTPSettings}, asks the same router and may
carry on with a backend connection another session left in the listener's L{BackendPool}.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ServerFactory
from typing_extensions import override

from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Router
from relaygate.smtp.backend_pool import BackendPool
from relaygate.smtp.front import SMTPFront
from relaygate.smtp.settings import SMTPSettings
from relaygate.tls.server import ServerTLS


class SMTPFrontFactory(ServerFactory):
    """Builds an L{SMTPFront} per connection on one listener."""

    noisy = False

    def __init__(
        self,
        config: Config,
        listen: ListenConfig,
        router: Router,
        reactor: IGatewayReactor,
        *,
        server_tls: ServerTLS | None,
    ) -> None:
        self.settings = SMTPSettings.from_config(config, listen, server_tls)
        self.router = router
        self.reactor = reactor
        self.backend_pool = BackendPool(
            reactor,
            self.settings.backend_connection_cache,
            self.settings.backend_connection_reuse,
        )

    @override
    def buildProtocol(self, addr: IAddress | None) -> SMTPFront:
        front = SMTPFront(self.settings, self.router, self.reactor, self.backend_pool)
        front.factory = self
        return front

    @override
    def stopFactory(self) -> None:
        """The listener stopped (drain, reload, exit): close the kept backend connections."""
        self.backend_pool.close()
