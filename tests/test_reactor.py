"""Tests for L{relaygate.reactor}: the reactor intersections name what real reactors provide."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.interface import InterfaceClass

from relaygate.reactor import IGatewayReactor, IParentReactor, IWorkerReactor


def parts(combined: InterfaceClass) -> list[InterfaceClass]:
    """The Twisted interfaces an intersection extends, without the intersections themselves."""
    ours = {IGatewayReactor, IParentReactor, IWorkerReactor, Interface}
    return [i for i in combined.__iro__ if i not in ours]


class ReactorInterfaceTests(SynchronousTestCase):
    """The intersections ask for nothing the installed reactor lacks."""

    def test_installed_reactor_provides_every_part(self) -> None:
        """The reactor twistd installs provides each interface the intersections combine."""
        for combined in (IGatewayReactor, IParentReactor, IWorkerReactor):
            missing = [i.__name__ for i in parts(combined) if not i.providedBy(reactor)]
            self.assertEqual((combined.__name__, missing), (combined.__name__, []))

    def test_gateway_reactor_parts(self) -> None:
        """The service tree's reactor is TCP, time, the thread hop and name resolution."""
        self.assertEqual(
            sorted(i.__name__ for i in parts(IGatewayReactor)),
            [
                "IReactorFromThreads",
                "IReactorPluggableNameResolver",
                "IReactorTCP",
                "IReactorTime",
            ],
        )

    def test_parent_and_worker_extend_the_gateway(self) -> None:
        """The parent adds process spawning; a worker adds socket adoption and running."""
        self.assertTrue(IParentReactor.extends(IGatewayReactor))
        self.assertTrue(IWorkerReactor.extends(IGatewayReactor))
        extra_parent = set(parts(IParentReactor)) - set(parts(IGatewayReactor))
        extra_worker = set(parts(IWorkerReactor)) - set(parts(IGatewayReactor))
        self.assertEqual(sorted(i.__name__ for i in extra_parent), ["IReactorProcess"])
        self.assertEqual(
            sorted(i.__name__ for i in extra_worker), ["IReactorCore", "IReactorSocket"]
        )
