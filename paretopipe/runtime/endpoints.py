"""Endpoints of a testbed and the one place transports are created from a testbed.

Also what a run needs to move a testbed elsewhere or secure it: :func:`relocated` gives every
endpoint a new host (namespace isolation), :func:`render_testbed` writes a testbed file the workers can
load, :func:`curve_config` builds the CURVE keys of one endpoint from the testbed's ``key``
fields (``--secure``), and :func:`worker_exposure` / :func:`driver_exposure` decide whether an
endpoint reachable beyond loopback may run without them (only with ``--insecure``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from paretopipe.errors import ConfigError, UsageError
from paretopipe.network.conditions import LinkCondition
from paretopipe.network.trace import TracedCondition
from paretopipe.testbed import DRIVER, Device, Testbed, is_loopback
from paretopipe_backends import get_transport
from paretopipe_backends.base import Endpoint, Transport, TransportOptions

if TYPE_CHECKING:
    from paretopipe_backends.security import CurveConfig


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
    shaping: Mapping[str, LinkCondition | TracedCondition] | None = None,
) -> Transport:
    """A transport for endpoint ``me`` of ``testbed`` (not started) talking to all the others."""
    eps = endpoints(testbed)
    cls = get_transport(backend)
    peers = {name: ep for name, ep in eps.items() if name != me}
    factory = getattr(cls, "for_testbed", None)
    if factory is not None:  # backends that need more than addresses (rendezvous, ranks)
        return factory(testbed, me, options=options, shaping=shaping)
    return cls(eps[me], peers, shaping=shaping, options=options)


# ---- security --------------------------------------------------------------------------------------


def key_prefixes(testbed: Testbed) -> dict[str, str]:
    """``{endpoint: absolute key path without suffix}`` from the testbed's ``key`` fields.

    A relative key is read from the working directory (as ``paretopipe keys`` prints it) or, when
    its files are not there, from the testbed file's directory. Raises ConfigError naming the
    testbed file and the first endpoint without a key.
    """
    fields = [("driver.key", DRIVER, testbed.driver.key)]
    fields += [(f"devices[{i}].key", d.name, d.key) for i, d in enumerate(testbed.devices)]
    out = {}
    for field, name, key in fields:
        if not key:
            raise ConfigError(
                testbed.path,
                field,
                f"missing: --secure needs a CURVE key pair for every endpoint ({name} has none)",
                f"create keys with: paretopipe keys {' '.join(n for _, n, _ in fields)} -o keys, "
                f'then add key = "keys/{name}"',
            )
        p = Path(key).expanduser()
        if not p.is_absolute() and not Path(f"{p}.key").exists():
            beside = Path(testbed.path).resolve().parent / p
            p = beside if Path(f"{beside}.key").exists() else p
        out[name] = str(p.resolve())
    return out


def curve_config(testbed: Testbed, me: str) -> CurveConfig:
    """The CURVE settings of endpoint ``me``: its pair, and every testbed endpoint's public key as
    peer key and allow-list. Raises ConfigError (missing ``key`` field, missing or bad key file)."""
    from paretopipe_backends.security import CurveConfig

    prefixes = key_prefixes(testbed)
    try:
        return CurveConfig.from_key_prefixes(me, prefixes)
    except ConfigError as exc:
        field = "driver.key" if me == DRIVER else f"devices[{testbed.device_names.index(me)}].key"
        raise ConfigError(testbed.path, field, exc.message, exc.hint) from None


def worker_exposure(device: Device, backend: str, *, bind_all: bool, secure: bool, insecure: bool) -> str | None:
    """Whether a worker may start, and the line to print when it runs exposed on purpose.

    A worker listening beyond loopback (a non-loopback testbed address, or ``bind_all``) without
    ``secure`` starts only with ``insecure``; it returns the one line saying what that means
    (None on loopback or with ``secure``). Raises UsageError otherwise, and for both flags at once.
    """
    if secure and insecure:
        raise UsageError("--secure and --insecure contradict each other", "give one of them")
    where = f"*:{device.port}" if bind_all else device.address
    if secure or not (bind_all or not is_loopback(device.host)):
        return None
    if not insecure:
        hint = (
            "the rpc backend cannot be secured: on a network you trust, pass --insecure"
            if backend == "rpc"
            else "add CURVE keys to the testbed and use --secure, or pass --insecure on a network you trust"
        )
        raise UsageError(f"worker {device.name!r} would listen on {where} beyond loopback without --secure", hint)
    return f"insecure: {_exposed_meaning(f'worker {device.name} on {where}', backend)}"


def driver_exposure(testbed: Testbed, backend: str, *, secure: bool, insecure: bool) -> str | None:
    """The warning a driver prints when links of ``testbed`` beyond loopback run without CURVE
    (None when all are on loopback or ``secure``). Over rpc such a testbed needs ``insecure``:
    raises UsageError without it, and for both flags at once."""
    if secure and insecure:
        raise UsageError("--secure and --insecure contradict each other", "give one of them")
    exposed = [DRIVER] if not is_loopback(testbed.driver.host) else []
    exposed += [d.name for d in testbed.devices if not d.is_local]
    if secure or not exposed:
        return None
    if backend == "rpc" and not insecure:
        raise UsageError(
            f"--backend rpc with endpoints beyond loopback ({', '.join(exposed)}) needs --insecure",
            "rpc unpickles what it receives: use it on a network you trust, and say so with --insecure",
        )
    return f"{'insecure' if insecure else 'warning'}: {_exposed_meaning(', '.join(exposed), backend)}"


def _exposed_meaning(who: str, backend: str) -> str:
    if backend == "rpc":
        return f"{who} unauthenticated over rpc: anyone who can reach these ports can run code in them"
    return (
        f"{who} without authentication or encryption: anyone who can reach these ports can read the "
        "tensors, disturb measurements and make workers build what their owners allowed (docs/threat-model.md)"
    )


# ---- moving a testbed ------------------------------------------------------------------------------


def relocated(testbed: Testbed, hosts: Mapping[str, str]) -> Testbed:
    """A copy of ``testbed`` whose driver and devices have the hosts in ``hosts`` (by endpoint
    name; others keep theirs) and absolute key paths, e.g. the addresses of network namespaces."""
    keys = key_prefixes(testbed) if testbed.driver.key and all(d.key for d in testbed.devices) else {}
    devices = tuple(
        dataclasses.replace(d, host=hosts.get(d.name, d.host), key=keys.get(d.name, d.key)) for d in testbed.devices
    )
    driver = dataclasses.replace(
        testbed.driver, host=hosts.get(DRIVER, testbed.driver.host), key=keys.get(DRIVER, testbed.driver.key)
    )
    return dataclasses.replace(testbed, devices=devices, driver=driver)


def with_free_ports(testbed: Testbed) -> Testbed:
    """``testbed`` with the driver's port, its RPC rendezvous port and every device's port moved to
    ports free on this machine now, so a local run beside another user of the same file cannot
    collide (write it with :func:`render_testbed` for the workers)."""
    socks = [socket.socket() for _ in range(len(testbed.devices) + 2)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        ports = [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    devices = tuple(dataclasses.replace(d, port=port) for d, port in zip(testbed.devices, ports[2:]))
    driver = dataclasses.replace(testbed.driver, port=ports[0], rpc_port=ports[1])
    return dataclasses.replace(testbed, devices=devices, driver=driver)


def render_testbed(testbed: Testbed, comment: str = "") -> str:
    """``testbed`` as a testbed file (link overrides are left out: workers never read them)."""
    q = json.dumps  # a JSON string is a valid TOML basic string

    def table(values: dict) -> list[str]:
        return [
            f"{k} = {q(v) if isinstance(v, str) else json.dumps(list(v) if isinstance(v, tuple) else v)}"
            for k, v in values.items()
            if v is not None
        ]

    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"name = {q(testbed.name)}", f"description = {q(testbed.description)}", "", "[driver]"]
    drv = testbed.driver
    lines += table(
        {
            "host": drv.host,
            "port": drv.port,
            "device": drv.device,
            "rpc_port": drv.rpc_port,
            "key": drv.key,
            "cpus": drv.cpus,
        }
    )
    for d in testbed.devices:
        memory = None if math.isinf(d.memory_bytes) else int(d.memory_bytes)
        lines += ["", "[[devices]]"] + table(
            {
                "name": d.name,
                "host": d.host,
                "port": d.port,
                "threads": d.threads,
                "cpus": d.cpus,
                "cpu_quota": d.cpu_quota,
                "isa": d.isa,
                "memory": memory,
                "key": d.key,
            }
        )
    return "\n".join(lines) + "\n"
