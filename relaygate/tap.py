"""twistd ``relaygate``: command-line options and the service tree they build."""

from __future__ import annotations

import sys
from typing import Any, cast

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage

from relaygate.config.errors import ConfigError
from relaygate.config.load import load
from relaygate.config.model import Config
from relaygate.reactor import IParentReactor


class Options(usage.Options):
    """``twistd relaygate -c FILE [--check]``."""

    synopsis = "[-c FILE] [--check]"
    longdesc = (
        "relaygate accepts SMTP (and IMAP/POP3) sessions, asks an nginx-compatible auth_http "
        "service or its embedded route table which backend each belongs to, and relays the "
        "session there. See docs/config.md for the configuration file."
    )
    optParameters = [
        ["config", "c", "etc/relaygate.toml", "the TOML configuration file"],
    ]
    optFlags = [
        ["check", None, "check the configuration file, print 'FILE: ok' and exit"],
    ]

    config: Config

    def postOptions(self) -> None:
        """Load the configuration now, so a bad file stops twistd before anything listens."""
        try:
            self.config = load(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["check"]:
            sys.stdout.write(f"{self['config']}: ok\n")
            sys.exit(0)


def makeService(
    options: Options | dict[str, Any], reactor: IParentReactor | None = None
) -> IService:
    """Build the gateway's services from the loaded configuration."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        # twistd installed it; it provides every interface relaygate uses (relaygate.reactor).
        installed: IParentReactor = global_reactor  # type: ignore[assignment]
        reactor = installed
    config = options.config if isinstance(options, Options) else options["config"]
    from relaygate.collector import tune_collector
    from relaygate.dispatch import lean_dispatch

    lean_dispatch(reactor)
    tune_collector(reactor)
    if config.server.workers > 1:
        from relaygate.workers import pool_service

        return pool_service(config, reactor)
    from relaygate.service import build_service
    from relaygate.textlog import TextLogService

    # SIGTERM drains and SIGHUP reloads; when done, the reactor stops and twistd exits. Every
    # reactor provides IReactorCore; the tests' MemoryReactorClock does too.
    core = cast(IReactorCore, reactor)
    gateway = build_service(config, reactor, stop=core.stop)
    # twistd's text log, when it is one, renders each line with less work (the same text).
    TextLogService().setServiceParent(gateway)
    return gateway
