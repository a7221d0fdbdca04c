"""The whole configuration, as read from one file."""

from __future__ import annotations

from dataclasses import dataclass

from relaygate.config.auth import AuthConfig
from relaygate.config.demo import DemoConfig
from relaygate.config.limits import LimitsConfig, RealIPConfig
from relaygate.config.login import IMAPConfig, POP3Config
from relaygate.config.ops import HealthConfig, LogConfig, MetricsConfig
from relaygate.config.routes import RouteConfig
from relaygate.config.server import ListenConfig, ServerConfig
from relaygate.config.smtp import SMTPConfig
from relaygate.config.tls import TLSConfig


@dataclass(frozen=True)
class Config:
    """The whole configuration, as read from one file."""

    path: str
    server: ServerConfig
    listen: tuple[ListenConfig, ...]
    tls: TLSConfig
    auth: AuthConfig
    routes: tuple[RouteConfig, ...]
    smtp: SMTPConfig
    demo: DemoConfig | None = None
    # The section types are frozen dataclasses, so one shared default instance is safe.
    imap: IMAPConfig = IMAPConfig()  # noqa: RUF009
    pop3: POP3Config = POP3Config()  # noqa: RUF009
    realip: RealIPConfig = RealIPConfig()  # noqa: RUF009
    limits: LimitsConfig = LimitsConfig()  # noqa: RUF009
    metrics: MetricsConfig = MetricsConfig()  # noqa: RUF009
    health: HealthConfig = HealthConfig()  # noqa: RUF009
    log: LogConfig = LogConfig()  # noqa: RUF009
