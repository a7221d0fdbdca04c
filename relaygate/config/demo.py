"""C{[demo]}: the embedded demo backend."""

from __future__ import annotations

import os
from dataclasses import dataclass

from relaygate.addresses import HostPort
from relaygate.config.table import Table


@dataclass(frozen=True)
class DemoConfig:
    """C{[demo]}: the embedded demo backend that stores each message as a file."""

    address: HostPort
    directory: str


def read_demo(t: Table, base: str) -> DemoConfig | None:
    """Read C{[demo]}; C{None} when the section is absent."""
    if not t.data:
        return None
    demo = DemoConfig(
        address=t.address("address"),
        directory=os.path.normpath(os.path.join(base, t.string("directory", "var/demo-mail"))),
    )
    t.finish()
    return demo
