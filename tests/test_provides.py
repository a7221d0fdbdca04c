"""Tests for L{relaygate.provides}: a wrapper's interface declaration, built once per kind."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface, directlyProvides, implementer, providedBy

from relaygate.provides import provide_like


class IFirst(Interface):
    """A marker interface of the test transport."""


class ISecond(Interface):
    """Another marker interface of the test transport."""


@implementer(IFirst, ISecond)
class _Transport:
    """A transport-shaped object with a class-level declaration, like C{tcp.Server}."""


class _Wrapper:
    """A wrapper that copies its transport's interfaces."""


class _OtherWrapper:
    """A second wrapper class: its declarations must not be shared with L{_Wrapper}'s."""


class IExtra(Interface):
    """An interface only the test's own declare function adds."""


class IOther(Interface):
    """A second interface the test's own declare function adds."""


class ProvideLikeTests(SynchronousTestCase):
    """L{provide_like} declares what C{directlyProvides} would, and reuses the declaration."""

    def test_same_interfaces_as_directly_provides(self) -> None:
        """The wrapper provides exactly what C{directlyProvides(wrapper, spec)} gives it."""
        spec = providedBy(_Transport())
        expected = _Wrapper()
        directlyProvides(expected, spec)
        wrapper = _Wrapper()
        provide_like(wrapper, spec)
        self.assertEqual(list(providedBy(wrapper)), list(providedBy(expected)))
        self.assertEqual(list(providedBy(wrapper)), [IFirst, ISecond])

    def test_second_wrapper_gets_the_same_declaration(self) -> None:
        """A second wrapper of the class, over the same kind of transport, shares the object."""
        spec = providedBy(_Transport())
        first, second = _Wrapper(), _Wrapper()
        provide_like(first, spec)
        provide_like(second, spec)
        self.assertIs(second.__provides__, first.__provides__)  # type: ignore[attr-defined]

    def test_other_class_gets_its_own_declaration(self) -> None:
        """Declarations name their class, so another wrapper class gets its own."""
        spec = providedBy(_Transport())
        first, other = _Wrapper(), _OtherWrapper()
        provide_like(first, spec)
        provide_like(other, spec)
        self.assertIsNot(other.__provides__, first.__provides__)  # type: ignore[attr-defined]
        self.assertEqual(list(providedBy(other)), [IFirst, ISecond])

    def test_changed_transport_spec_is_followed(self) -> None:
        """After the transport gains ISSLTransport (STARTTLS), the wrapper does too."""
        transport = _Transport()
        wrapper = _Wrapper()
        provide_like(wrapper, providedBy(transport))
        self.assertFalse(ISSLTransport.providedBy(wrapper))
        directlyProvides(transport, ISSLTransport)
        provide_like(wrapper, providedBy(transport))
        self.assertTrue(ISSLTransport.providedBy(wrapper))
        self.assertTrue(IFirst.providedBy(wrapper))

    def test_declare_runs_once_per_class_and_spec(self) -> None:
        """A custom declare function runs for the first wrapper only; later ones get its result."""
        calls: list[object] = []

        def declare(target: Any, spec: Any) -> None:
            calls.append(target)
            directlyProvides(target, IExtra, IOther)

        spec = providedBy(_Transport())
        wrappers = [_Wrapper() for _ in range(3)]
        for wrapper in wrappers:
            provide_like(wrapper, spec, declare)
        self.assertEqual(calls, [wrappers[0]])
        for wrapper in wrappers:
            self.assertEqual(list(providedBy(wrapper)), [IExtra, IOther])
