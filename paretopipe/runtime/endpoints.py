"""Endpoints of a testbed and the one place transports are created from a testbed."""

from __future__ import annotations

from typing import Mapping

from backends import get_transport
from backends.base import Endpoint, Transport, TransportOptions
from paretopipe.network.conditions import LinkCondition
from paretopipe.testbed import DRIVER, Testbed


def endpoints(testbed: Testbed) -> dict[str, Endpoint]:
    """The driver and every device of ``testbed`` as named endpoints."""
    eps = {DRIVER: Endpoint(DRIVER, testbed.driver.host, testbed.driver.port)}
    for d in testbed.devices:
        eps[d.name] = Endpoint(d.name, d.host, d.port)
    return eps


def make_transport(
    backend: str,
    testbed: Testbed,
    me: str,
    *,
    options: TransportOptions | None = None,
    shaping: Mapping[str, LinkCondition] | None = None,
) -> Transport:
    """A transport for endpoint ``me`` of ``testbed`` (not started) talking to all the others."""
    eps = endpoints(testbed)
    cls = get_transport(backend)
    peers = {name: ep for name, ep in eps.items() if name != me}
    factory = getattr(cls, "for_testbed", None)
    if factory is not None:  # backends that need more than addresses (rendezvous, ranks)
        return factory(testbed, me, options=options, shaping=shaping)
    return cls(eps[me], peers, shaping=shaping, options=options)
