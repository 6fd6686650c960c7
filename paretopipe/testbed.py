"""Testbed files: the devices a pipeline runs on, the driver, and per-directed-link overrides.

A testbed is TOML (see ``testbed/local.toml`` and docs/testbeds.md). No torch import: the planner and
the network layer read it too. Every problem is a ConfigError naming the file and the field.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (e.g. Ubuntu 22.04 on Jetson boards)
    import tomli as tomllib

from paretopipe.errors import ConfigError, UsageError
from paretopipe.host.accelerator import DEFAULT as ACCELERATOR_DEFAULT
from paretopipe.host.accelerator import HINT as ACCELERATOR_HINT
from paretopipe.host.accelerator import check_accelerator
from paretopipe.host.isa import LEVELS as ISA_LEVELS
from paretopipe.network.conditions import LinkCondition, Scenario, ScenarioTable, resolve_network

DRIVER = "driver"
_MEM_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class Device:
    """A place a stage can run: a real host, or an emulated device on this machine."""

    name: str
    host: str
    port: int
    threads: int = 1
    cpus: tuple[int, ...] | None = None
    cpu_quota: float | None = None
    isa: str | None = None  # widest vector instructions its kernels may use (paretopipe.host.isa)
    memory_bytes: float = float("inf")  # of the accelerator, when it is not the CPU
    key: str | None = None
    ssh: str | None = None  # "user@host" or a ~/.ssh/config alias: `paretopipe workers` starts it there
    python: str | None = None  # absolute path of the board's Python that has paretopipe installed
    accelerator: str = ACCELERATOR_DEFAULT  # where its stages compute (paretopipe.host.accelerator)

    @property
    def is_local(self) -> bool:
        """True when the device is emulated on this machine (loopback host)."""
        return is_loopback(self.host)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Driver:
    """The process that feeds items and collects results. ``device``: it shares that host."""

    host: str = "127.0.0.1"
    port: int = 5550
    device: str | None = None
    rpc_port: int = 29500
    key: str | None = None
    cpus: tuple[int, ...] | None = None  # where a local driver runs (emulation: off the devices' CPUs)


@dataclass(frozen=True)
class LinkOverride:
    """A directed link whose condition is fixed by the testbed, whatever the scenario."""

    src: str
    dst: str
    label: str
    condition: LinkCondition


@dataclass(frozen=True)
class Testbed:
    """A parsed testbed file."""

    name: str
    path: str
    devices: tuple[Device, ...]
    driver: Driver = field(default_factory=Driver)
    links: tuple[LinkOverride, ...] = ()
    description: str = ""

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    def device(self, name: str) -> Device:
        """The named device. Raises UsageError listing the known ones."""
        for d in self.devices:
            if d.name == name:
                return d
        raise UsageError(f"{self.path}: no device named {name!r}", f"devices: {', '.join(self.device_names)}")

    def cpu_groups(self, names: Sequence[str] | None = None) -> list[int]:
        """A label per device (``names``, default all): devices on the same host whose ``cpus``
        overlap share those CPUs and get the same label (their stages take turns on them). A
        device without ``cpus`` gets a label of its own: nothing says which CPUs it uses."""
        devs = [self.device(n) for n in (names if names is not None else self.device_names)]
        label = list(range(len(devs)))

        def root(i: int) -> int:
            while label[i] != i:
                i = label[i]
            return i

        for i, a in enumerate(devs):
            for j in range(i):
                b = devs[j]
                if a.host == b.host and a.cpus and b.cpus and set(a.cpus) & set(b.cpus):
                    label[root(i)] = root(j)
        return [root(i) for i in range(len(devs))]

    @property
    def all_local(self) -> bool:
        return all(d.is_local for d in self.devices)

    def link(self, src: str, dst: str, scenario: Scenario) -> Scenario:
        """The scenario (label and condition) of the directed link src -> dst under ``scenario``.

        Device-to-device links get the scenario unless the testbed overrides that direction.
        The driver's links are those of the device it shares a host with (``driver.device``);
        a driver with no device sits next to the pipeline and its links are not shaped.
        """
        src_device, dst_device = self._resolve_driver(src), self._resolve_driver(dst)
        if src_device is None or dst_device is None or src_device == dst_device:
            return Scenario("local", LinkCondition())
        for o in self.links:
            if o.src == src_device and o.dst == dst_device:
                return Scenario(o.label, o.condition)
        return scenario

    def _resolve_driver(self, name: str) -> str | None:
        if name == DRIVER:
            return self.driver.device
        self.device(name)
        return name


def shipped_path(path: str | Path) -> Path:
    """``path`` itself if it exists; else, for a relative ``testbed/...`` path, the file shipped
    next to the package (so the defaults work from any directory)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    shipped = Path(__file__).resolve().parents[1] / p
    return shipped if shipped.exists() else p


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for any other name."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_memory(text: str | int | float) -> float:
    """``"2GiB"`` -> 2147483648.0; numbers are bytes; ``"unlimited"`` -> inf. Raises UsageError."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise UsageError(f"memory must be positive, got {text}")
        return float(text)
    if not isinstance(text, str):
        raise UsageError(f"memory must be a string like '2GiB', got {text!r}")
    t = text.strip().lower()
    if t in ("unlimited", "none", "inf"):
        return float("inf")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", t)
    if not m or m[2] not in _MEM_UNITS or float(m[1]) <= 0:
        raise UsageError(f"cannot read memory {text!r}", "expected e.g. 512MiB, 2GiB, 4GB or unlimited")
    return float(m[1]) * _MEM_UNITS[m[2]]


class _Fields:
    """Typed access to one TOML table, turning every problem into ConfigError(path, field)."""

    def __init__(self, path: Path, where: str, table: Any, allowed: set[str]) -> None:
        self.path, self.where = path, where
        if not isinstance(table, dict):
            raise ConfigError(path, where, f"must be a table, got {type(table).__name__}")
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(path, f"{where}.{unknown[0]}", "unknown key", f"known keys: {', '.join(sorted(allowed))}")
        self.table = table

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., check=None, hint: str | None = None
    ) -> Any:
        name = f"{self.where}.{key}" if self.where else key
        if key not in self.table:
            if default is ...:
                raise ConfigError(self.path, name, "missing", hint)
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            value_ok = False
        else:
            value_ok = isinstance(value, kind)
        if not value_ok or (check is not None and not check(value)):
            raise ConfigError(self.path, name, f"invalid value {value!r}", hint)
        return value


def load_testbed(path: str | Path, scenarios: ScenarioTable | None = None) -> Testbed:
    """Read and validate a testbed file. Raises ConfigError naming the file and the field."""
    p = shipped_path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(p, None, "file not found", "see testbed/local.toml for an example") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(p, None, f"not valid TOML: {exc}") from None
    top = _Fields(p, "", data, {"name", "description", "driver", "devices", "links"})
    port_ok = lambda v: 0 < v < 65536
    devices_raw = top.get("devices", list, hint="add [[devices]] tables")
    if not devices_raw:
        raise ConfigError(p, "devices", "no devices", "add at least one [[devices]] table")
    devices = []
    for i, raw in enumerate(devices_raw):
        f = _Fields(
            p,
            f"devices[{i}]",
            raw,
            {
                "name",
                "host",
                "port",
                "threads",
                "cpus",
                "cpu_quota",
                "isa",
                "memory",
                "key",
                "accelerator",
                *_REMOTE_KEYS,
            },
        )
        name = f.get(
            "name",
            str,
            check=lambda v: v and v != DRIVER and re.fullmatch(r"[A-Za-z0-9_.-]+", v),
            hint="letters, digits, _ . -; not 'driver'",
        )
        cpus = f.get(
            "cpus",
            list,
            None,
            check=lambda v: v and all(isinstance(c, int) and c >= 0 for c in v),
            hint="a list of CPU numbers, e.g. [0]",
        )
        try:
            memory = parse_memory(raw.get("memory", "unlimited"))
        except UsageError as exc:
            raise ConfigError(p, f"devices[{i}].memory", exc.message, exc.hint) from None
        devices.append(
            Device(
                name=name,
                host=f.get("host", str, check=bool),
                port=f.get("port", int, check=port_ok, hint="1..65535"),
                threads=f.get("threads", int, 1, check=lambda v: v >= 1),
                cpus=tuple(cpus) if cpus else None,
                cpu_quota=float(q)
                if (
                    q := f.get(
                        "cpu_quota", (int, float), None, check=lambda v: v > 0, hint="CPU-seconds per second, e.g. 0.5"
                    )
                )
                else None,
                isa=f.get("isa", str, None, check=lambda v: v in ISA_LEVELS, hint=f"one of {', '.join(ISA_LEVELS)}"),
                memory_bytes=memory,
                key=f.get("key", str, None),
                **_remote_fields(f),
                accelerator=_accelerator(f),
            )
        )
    names = [d.name for d in devices]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(p, f"devices[{i}].name", f"duplicate device name {n!r}")
    endpoints = [(d.host, d.port) for d in devices]
    for i, ep in enumerate(endpoints):
        if ep in endpoints[:i]:
            raise ConfigError(p, f"devices[{i}].port", f"{ep[0]}:{ep[1]} is used by another device")
    d = _Fields(p, "driver", data.get("driver", {}), {"host", "port", "device", "rpc_port", "key", "cpus"})
    driver_cpus = d.get(
        "cpus",
        list,
        None,
        check=lambda v: v and all(isinstance(c, int) and c >= 0 for c in v),
        hint="a list of CPU numbers, e.g. [1]",
    )
    driver = Driver(
        host=d.get("host", str, "127.0.0.1"),
        port=d.get("port", int, 5550, check=port_ok),
        device=d.get("device", str, None, check=lambda v: v in names, hint=f"one of {', '.join(names)}"),
        rpc_port=d.get("rpc_port", int, 29500, check=port_ok),
        key=d.get("key", str, None),
        cpus=tuple(driver_cpus) if driver_cpus else None,
    )
    if (driver.host, driver.port) in endpoints:
        raise ConfigError(p, "driver.port", f"{driver.host}:{driver.port} is also a device's address")
    links = []
    for i, raw in enumerate(top.get("links", list, [])):
        f = _Fields(p, f"links[{i}]", raw, {"src", "dst", "network"})
        src = f.get("src", str, check=lambda v: v in names, hint=f"one of {', '.join(names)}")
        dst = f.get("dst", str, check=lambda v, src=src: v in names and v != src, hint="another device")
        spec = f.get("network", str, hint="a scenario name or e.g. 'bandwidth=20mbit delay=10ms'")
        try:
            resolved = resolve_network(spec, scenarios if scenarios is not None else _scenarios())
        except UsageError as exc:
            raise ConfigError(p, f"links[{i}].network", exc.message, exc.hint) from None
        if resolved.trace is not None:
            raise ConfigError(
                p, f"links[{i}].network", f"{spec!r} is a trace", "a testbed's link overrides are fixed conditions"
            )
        links.append(LinkOverride(src, dst, resolved.name, resolved.condition))
    return Testbed(
        name=top.get("name", str, p.stem),
        path=str(p),
        devices=tuple(devices),
        driver=driver,
        links=tuple(links),
        description=top.get("description", str, ""),
    )


_REMOTE_KEYS = ("ssh", "python")
# an ssh destination: [user@]host or a config alias; never an option (a leading '-') nor whitespace
_SSH_TARGET = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.+-]*@)?[A-Za-z0-9_.:%\[\]-]+")


def _remote_fields(f: _Fields) -> dict[str, str | None]:
    """``ssh`` and ``python`` of one device: both or neither (a board is reached and run with them)."""
    ssh = f.get(
        "ssh",
        str,
        None,
        check=lambda v: _SSH_TARGET.fullmatch(v) and not v.startswith("-"),
        hint='"user@host" or a Host alias of ~/.ssh/config, e.g. "pi@192.168.1.102"',
    )
    python = f.get(
        "python",
        str,
        None,
        check=lambda v: v.startswith("/") and "\n" not in v,
        hint='the absolute path of the Python that has paretopipe, e.g. "/home/pi/paretopipe/.venv/bin/python"',
    )
    if (ssh is None) != (python is None):
        have, lacks = ("ssh", "python") if python is None else ("python", "ssh")
        raise ConfigError(
            f.path,
            f"{f.where}.{lacks}",
            f"missing: a device with {have} needs {lacks} too",
            "ssh says where `paretopipe workers` logs in, python what runs the worker there",
        )
    return {"ssh": ssh, "python": python}


def _accelerator(f: _Fields) -> str:
    name = f.get("accelerator", str, ACCELERATOR_DEFAULT, hint=ACCELERATOR_HINT)
    try:
        return check_accelerator(name)
    except UsageError as exc:
        raise ConfigError(f.path, f"{f.where}.accelerator", exc.message, exc.hint) from None


def _scenarios() -> ScenarioTable:
    from paretopipe.network.conditions import load_scenarios

    return load_scenarios()
