"""What an IMAP or POP3 front needs from the configuration, computed once per listener."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.protocol import Factory

from relaygate.backend.policy import BackendPolicy
from relaygate.config.login import IMAPConfig, POP3Config
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Router
from relaygate.tls.server import ServerTLS


@dataclass(frozen=True)
class LoginSettings:
    """The C{[imap]} or C{[pop3]} settings of one listener, as its fronts use them."""

    server_name: str
    auth: tuple[str, ...]
    timeout: float
    proxy_timeout: float
    auth_timeout: float
    max_line_length: int
    max_errors: int
    max_login_failures: int
    pass_error_message: bool
    xclient: bool
    backend_login: str
    backend: BackendPolicy
    tls_mode: str = "none"
    server_tls: ServerTLS | None = field(default=None, compare=False)
    """The listener's TLS (implicit, or for STARTTLS/STLS); C{None} for C{tls = "none"}."""

    @classmethod
    def from_section(
        cls,
        config: Config,
        listen: ListenConfig,
        section: IMAPConfig | POP3Config,
        server_tls: ServerTLS | None,
    ) -> LoginSettings:
        """The settings for C{listen} from its protocol's section (C{[imap]} or C{[pop3]})."""
        return cls(
            server_name=config.server.name,
            auth=section.auth,
            timeout=section.timeout,
            proxy_timeout=section.proxy_timeout,
            auth_timeout=config.auth.timeout,
            max_line_length=section.max_line_length,
            max_errors=section.max_errors,
            max_login_failures=section.max_login_failures,
            pass_error_message=section.pass_error_message,
            xclient=section.xclient,
            backend_login=section.backend_login,
            backend=BackendPolicy(
                tls=section.backend_tls,
                ca=section.backend_ca,
                certificate=section.backend_certificate,
                key=section.backend_key,
                proxy_protocol=section.backend_proxy_protocol,
                connect_timeout=config.server.connect_timeout,
                reply_timeout=section.timeout,
            ),
            tls_mode=listen.tls,
            server_tls=server_tls,
        )


class LoginFrontFactory(Factory):
    """What the IMAP and POP3 front factories share: one listener's settings and router."""

    noisy = False

    def __init__(
        self,
        config: Config,
        listen: ListenConfig,
        section: IMAPConfig | POP3Config,
        router: Router,
        reactor: IGatewayReactor,
        random: Callable[[], int] | None = None,
        *,
        server_tls: ServerTLS | None,
    ) -> None:
        self.settings = LoginSettings.from_section(config, listen, section, server_tls)
        self.router = router
        self.reactor = reactor
        self.random = random
        self.capabilities = [c.encode("ascii") for c in section.capabilities]
