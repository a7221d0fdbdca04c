"""Tests for L{relaygate.service.Gateway} and L{relaygate.ops.lifecycle}: reload and drain."""

from __future__ import annotations

import os
import signal
from typing import Any, cast

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from relaygate.config.load import load
from relaygate.ops.lifecycle import SignalHandlers, SwitchFactory
from relaygate.ops.wrapper import OpsFactory
from relaygate.policy import LimitedFactory
from relaygate.reactor import IGatewayReactor
from relaygate.service import build_service
from relaygate.smtp.factory import SMTPFrontFactory
from tests.certs import make_pki
from tests.test_ops_sessions import FakeHooks

BASE = """
[server]
name = "gw.example"
drain_timeout = 10.0

[[listen]]
protocol = "smtp"
address = "127.0.0.1:2525"

[[route]]
match = "*"
backends = ["127.0.0.1:25"]
"""

SECOND_LISTENER = """
[[listen]]
protocol = "smtp"
address = "127.0.0.1:2526"
"""


class GatewayTests(SynchronousTestCase):
    """Reload swaps factories behind open sockets; the drain stops listening and the process."""

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "relaygate.toml")
        self.write(BASE)
        self.reactor = MemoryReactorClock()
        self.stopped = 0
        self.gateway = build_service(
            load(self.path), cast(IGatewayReactor, self.reactor), stop=self.stop
        )
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)

    def stop(self) -> None:
        self.stopped += 1

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def front(self, index: int = 0) -> SMTPFrontFactory:
        listener = list(self.gateway.listeners.values())[index]
        wrapper = listener.switch.wrapped_factory
        assert isinstance(wrapper, OpsFactory)
        factory = wrapper.wrapped_factory
        assert isinstance(factory, SMTPFrontFactory)
        return factory

    def test_reload_keeps_socket_and_swaps_factory(self) -> None:
        """A valid reload keeps the listening port and gives new connections the new config."""
        old = self.front()
        self.write(BASE.replace('name = "gw.example"', 'name = "new.example"'))
        with capturedLogs() as events:
            self.assertTrue(self.gateway.reload())
        self.assertEqual(len(self.reactor.tcpServers), 1)
        new = self.front()
        self.assertIsNot(new, old)
        self.assertEqual(self.gateway.generation.config.server.name, "new.example")
        self.assertEqual(
            self.gateway.scrape.get_sample_value(
                "relaygate_config_reloads_total", {"result": "success"}
            ),
            1.0,
        )
        self.assertEqual(events[-1]["log_format"], "reloaded {path} (generation {number})")

    def test_reload_opens_and_closes_listeners(self) -> None:
        """Listeners added to the file are opened; those removed are closed."""
        self.write(BASE + SECOND_LISTENER)
        self.gateway.reload()
        self.assertEqual(sorted(p[0] for p in self.reactor.tcpServers), [2525, 2526])
        self.write(BASE.replace("2525", "2526") + "")
        self.gateway.reload()
        self.assertEqual(len(self.gateway.listeners), 1)
        (kept,) = self.gateway.listeners.values()
        self.assertIs(kept.service.factory, kept.switch)

    def test_reload_keeps_limit_counts_and_takes_drain_timeout(self) -> None:
        """Unchanged [limits] keep their store; a new drain_timeout applies to a later drain."""
        limited = BASE + "[limits]\nconnections_per_address = 5\n"
        self.write(limited)
        self.gateway.reload()
        before = self.front_limits()
        self.write(limited.replace("drain_timeout = 10.0", "drain_timeout = 3.0"))
        self.gateway.reload()
        self.assertIs(self.front_limits(), before)
        hooks = FakeHooks()
        hooks.session = self.gateway.sessions.open("smtp", "c", "l", hooks)
        self.gateway.terminate()
        self.reactor.advance(3.0)
        self.assertEqual(hooks.closed, ["shutdown"])

    def test_broken_certificate_keeps_running(self) -> None:
        """A reload whose certificate no longer loads is a failure; the old TLS stays."""
        pki = make_pki(os.path.join(os.path.dirname(self.path), "pki"))
        tls = f'[tls]\ncertificate = "{pki.server.certificate}"\nkey = "{pki.server.key}"\n'
        self.write(
            BASE.replace(
                'address = "127.0.0.1:2525"', 'address = "127.0.0.1:2525"\ntls = "starttls"'
            )
            + tls
        )
        self.assertTrue(self.gateway.reload())
        generation = self.gateway.generation
        with open(pki.server.certificate, "w") as f:
            f.write("not a certificate")
        with capturedLogs() as events:
            self.assertFalse(self.gateway.reload())
        self.assertIs(self.gateway.generation, generation)
        self.assertIn(pki.server.certificate, events[-1]["error"])

    def front_limits(self) -> object:
        (listener,) = self.gateway.listeners.values()
        limited = listener.switch.wrapped_factory
        assert isinstance(limited, LimitedFactory)
        return limited.limits

    def test_invalid_reload_keeps_running(self) -> None:
        """An invalid file is logged as FILE: key: what is wrong and counted; nothing changes."""
        old = self.front()
        generation = self.gateway.generation
        self.write(BASE.replace("drain_timeout = 10.0", "drain_timeout = -1"))
        with capturedLogs() as events:
            self.assertFalse(self.gateway.reload())
        self.assertIs(self.front(), old)
        self.assertIs(self.gateway.generation, generation)
        self.assertEqual(
            events[-1]["error"],
            f"{self.path}: server.drain_timeout: must be at least 0, got -1",
        )
        self.assertEqual(
            self.gateway.scrape.get_sample_value(
                "relaygate_config_reloads_total", {"result": "failure"}
            ),
            1.0,
        )

    def test_old_generation_retired_when_its_sessions_end(self) -> None:
        """The old router and services stay until the old configuration's sessions end."""
        old = self.gateway.generation
        session = self.gateway.sessions.open("smtp", "c", "l", FakeHooks(), old.number)
        self.write(BASE)
        self.gateway.reload()
        self.assertIs(old.services.parent, self.gateway)
        session.end()
        self.assertIsNone(old.services.parent)
        self.assertFalse(old.services.running)

    def test_sigterm_drains_then_stops(self) -> None:
        """SIGTERM closes the listeners at once and stops the process when sessions end."""
        session = self.gateway.sessions.open("smtp", "c", "l", FakeHooks())
        self.gateway.terminate()
        (listener,) = self.gateway.listeners.values()
        self.assertFalse(listener.service.running)
        self.assertEqual(self.stopped, 0)
        session.end()
        self.assertEqual(self.stopped, 1)

    def test_drain_timeout_stops(self) -> None:
        """At drain_timeout the process stops with sessions still open."""
        hooks = FakeHooks()
        hooks.session = self.gateway.sessions.open("smtp", "c", "l", hooks)
        self.gateway.terminate()
        self.reactor.advance(9.9)
        self.assertEqual(self.stopped, 0)
        self.reactor.advance(0.1)
        self.assertEqual((self.stopped, hooks.closed), (1, ["shutdown"]))

    def test_second_sigterm_stops_at_once(self) -> None:
        """A second SIGTERM cuts the drain short; the process is stopped once."""
        hooks = FakeHooks()
        hooks.session = self.gateway.sessions.open("smtp", "c", "l", hooks)
        self.gateway.terminate()
        self.gateway.terminate()
        self.assertEqual((self.stopped, hooks.closed), (1, ["shutdown"]))

    def test_reload_ignored_while_draining(self) -> None:
        """SIGHUP during a drain changes nothing."""
        self.gateway.sessions.open("smtp", "c", "l", FakeHooks())
        self.gateway.terminate()
        self.assertFalse(self.gateway.reload())


class SwitchFactoryTests(SynchronousTestCase):
    """The switch hands connections to the current factory."""

    def test_switch(self) -> None:
        """After a switch new connections get the new factory's protocols."""
        first, second = Factory.forProtocol(Protocol), Factory.forProtocol(Protocol)
        switch = SwitchFactory(first)
        switch.doStart()
        built = switch.buildProtocol(None)  # type: ignore[arg-type]
        assert built is not None
        self.assertIs(cast(Any, built).factory, first)
        switch.switch(second)
        self.assertEqual((first.numPorts, second.numPorts), (0, 1))
        built = switch.buildProtocol(None)  # type: ignore[arg-type]
        self.assertIs(cast(Any, built).factory, second)
        switch.doStop()
        self.assertEqual(second.numPorts, 0)


class ThreadlessReactor(MemoryReactorClock):
    """Runs callFromThread work at once (there is no other thread here)."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        f(*args, **kwargs)


class SignalHandlersTests(SynchronousTestCase):
    """Signals are taken over once the reactor runs and given back at stop."""

    def test_take_over_and_dispatch(self) -> None:
        """Each signal runs its callback through callFromThread; stop restores the old ones."""
        installed: dict[int, Any] = {signal.SIGTERM: "term", signal.SIGINT: "int"}

        def install(number: int, handler: Any) -> Any:
            previous = installed.get(number)
            installed[number] = handler
            return previous

        calls: list[str] = []
        reactor = ThreadlessReactor()
        service = SignalHandlers(
            reactor,
            lambda: calls.append("term"),
            lambda: calls.append("int"),
            lambda: calls.append("hup"),
            install,
        )
        service.startService()
        self.assertEqual(installed[signal.SIGTERM], "term")
        reactor.running = True
        for f, args, kwargs in reactor.whenRunningHooks:
            f(*args, **kwargs)
        for number in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            installed[number](number, None)
        self.assertEqual(calls, ["hup", "term", "int"])
        service.stopService()
        self.assertEqual(
            (installed[signal.SIGTERM], installed[signal.SIGINT], installed[signal.SIGHUP]),
            ("term", "int", signal.SIG_DFL),
        )
