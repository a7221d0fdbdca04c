"""Read relaygate's TOML configuration into frozen dataclasses.

Every problem is reported as ``FILE: key: what is wrong`` (L{ConfigError}) before anything
listens, so an operator sees the one line to fix instead of a traceback.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from relaygate.addresses import HostPort
from relaygate.config.auth import read_auth
from relaygate.config.demo import read_demo
from relaygate.config.errors import ConfigError
from relaygate.config.limits import read_limits, read_realip
from relaygate.config.login import read_imap, read_pop3
from relaygate.config.model import Config
from relaygate.config.ops import read_health, read_log, read_metrics
from relaygate.config.routes import read_route
from relaygate.config.server import read_listen, read_server
from relaygate.config.smtp import read_smtp
from relaygate.config.table import Table
from relaygate.config.tls import read_tls


def parse(data: dict[str, Any], path: str) -> Config:
    """Build a L{Config} from already-decoded TOML C{data} that came from C{path}."""
    root = Table(path, "", data)
    base = os.path.dirname(os.path.abspath(path))
    listen = tuple(read_listen(t) for t in root.tables("listen"))
    if not listen:
        raise root.error("listen", "needs at least one [[listen]] entry")
    seen: set[HostPort] = set()
    for index, item in enumerate(listen):
        if item.address in seen:
            raise root.error(f"listen[{index}].address", f"{item.address} is listed twice")
        seen.add(item.address)
    config = Config(
        path=path,
        server=read_server(root.table("server")),
        listen=listen,
        tls=read_tls(root.table("tls"), base),
        auth=read_auth(root.table("auth"), base),
        routes=tuple(read_route(t) for t in root.tables("route")),
        smtp=read_smtp(root.table("smtp"), base),
        demo=read_demo(root.table("demo"), base),
        imap=read_imap(root.table("imap"), base),
        pop3=read_pop3(root.table("pop3"), base),
        realip=read_realip(root.table("realip")),
        limits=read_limits(root.table("limits")),
        metrics=read_metrics(root.table("metrics")),
        health=read_health(root.table("health"), "health" in data),
        log=read_log(root.table("log"), base),
    )
    root.finish()
    _check_consistency(root, config)
    return config


def _check_consistency(root: Table, config: Config) -> None:
    """Cross-section rules: what one section needs from another."""
    if not config.auth.http:
        # The embedded table passes the client's own password to the backend; after APOP,
        # CRAM-MD5 or EXTERNAL there is none, so only an auth service can serve them.
        for section, methods in (("imap", config.imap.auth), ("pop3", config.pop3.auth)):
            for method in ("apop", "cram-md5", "external"):
                if method in methods:
                    raise root.error(f"{section}.auth", f"{method!r} needs [auth] http")
    smtp_mechanisms = [method for method in config.smtp.auth if method != "none"]
    if smtp_mechanisms and not config.auth.http:
        # The embedded table checks no password: only an auth service can say yes to a login.
        raise root.error("smtp.auth", f"{smtp_mechanisms[0]!r} needs [auth] http")
    if "external" in config.smtp.auth and config.tls.verify_client == "off":
        raise root.error("smtp.auth", "'external' needs [tls] verify_client and client_ca")
    for section, methods in (("imap", config.imap.auth), ("pop3", config.pop3.auth)):
        # EXTERNAL is offered only to a client whose certificate verified.
        if "external" in methods and config.tls.verify_client == "off":
            raise root.error(
                f"{section}.auth", "'external' needs [tls] verify_client and client_ca"
            )
    for index, listen in enumerate(config.listen):
        if listen.tls != "none" and not config.tls.certificate:
            raise root.error(f"listen[{index}].tls", f"{listen.tls!r} needs [tls] certificate")
        if listen.proxy_protocol and not config.realip.trusted:
            raise root.error(
                f"listen[{index}].proxy_protocol", "needs [realip] trusted (who may send it)"
            )
        if not config.auth.http and not any(
            r.protocol in (listen.protocol, "*") for r in config.routes
        ):
            raise root.error(
                f"listen[{index}].protocol",
                f"no [auth] http and no [[route]] for {listen.protocol!r}: nothing to relay to",
            )


def load(path: str) -> Config:
    """Read and check the TOML file at C{path}.

    @raise ConfigError: for any problem, worded ``FILE: key: what is wrong``.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(data, path)
