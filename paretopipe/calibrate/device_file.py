"""Device calibrations as files: the device runtime calibration of one testbed, model, batch size,
backend and isolation, with the host fingerprint and what it was measured against.

``paretopipe calibrate --devices`` and ``paretopipe sweep`` write one under ``calibrations/``
(:func:`default_path`); ``plan``, ``run`` and ``sweep`` find it (:func:`find_device_calibration`)
and refuse one made for something else (:meth:`DeviceCalibration.check_matches`), naming the
mismatch and the command that makes a fresh one. No torch import. Format: docs/file-formats.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretopipe.calibrate.device_runtime import DeviceRuntime
from paretopipe.errors import ConfigError
from paretopipe.plan.plan_file import safe_name

SCHEMA = "paretopipe.calibrate.device_file"
VERSION = 1
#: Fingerprint fields that must match the host planning with the file (a calibration from another
#: machine, CPU or torch version says nothing about this one).
FINGERPRINT_KEYS = ("hostname", "cpu_model", "torch")
#: What a testbed device must still have for its calibration to hold.
DEVICE_KEYS = ("host", "threads", "cpus", "cpu_quota", "isa")


def default_path(
    testbed: str,
    model_label: str,
    batch_size: int,
    backend: str,
    isolation: str = "loopback",
    directory: str | Path = "calibrations",
) -> Path:
    """``calibrations/devices-<testbed>-<model>-b<batch>-<backend>-<isolation>.json``."""
    return Path(directory) / f"devices-{testbed}-{safe_name(model_label)}-b{batch_size}-{backend}-{isolation}.json"


def calibrate_command(
    testbed_path: str, model: Mapping[str, Any], batch_size: int, backend: str, isolation: str
) -> str:
    """The command that makes a fresh device calibration for these keys."""
    cmd = f"paretopipe calibrate --devices {model.get('name')} --testbed {testbed_path} --batch-size {batch_size}"
    if model.get("input_shape"):
        cmd += f" --input-shape {'x'.join(map(str, model['input_shape']))}"
    if backend != "zmq":
        cmd += f" --backend {backend}"
    if isolation != "loopback":
        cmd += f" --isolation {isolation}"
    return cmd


def testbed_devices(testbed: Any) -> dict[str, dict[str, Any]]:
    """Per device of a :class:`~paretopipe.testbed.Testbed`, what its calibration depends on (:data:`DEVICE_KEYS`)."""
    out = {}
    for dev in testbed.devices:
        d = {k: getattr(dev, k, None) for k in DEVICE_KEYS}
        d["cpus"] = list(d["cpus"] or [])
        out[dev.name] = d
    return out


@dataclass(frozen=True)
class DeviceCalibration:
    """The device runtime calibration of every device of one testbed for one model and batch size."""

    testbed: str
    model: dict[str, Any]  # the model spec (ModelSpec.to_dict())
    model_label: str
    batch_size: int
    backend: str
    isolation: str
    devices: dict[str, DeviceRuntime]
    profiles: dict[str, str]  # device -> the `created` stamp of the profile it was measured against
    testbed_devices: dict[str, dict[str, Any]]  # device -> DEVICE_KEYS as the testbed had them
    created: str = ""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where it was read from (not stored)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "testbed": self.testbed,
            "model": self.model,
            "model_label": self.model_label,
            "batch_size": self.batch_size,
            "backend": self.backend,
            "isolation": self.isolation,
            "created": self.created,
            "fingerprint": self.fingerprint,
            "profiles": self.profiles,
            "testbed_devices": self.testbed_devices,
            "devices": {d: r.to_dict() for d, r in self.devices.items()},
        }

    def check_matches(
        self,
        testbed: Any,
        model: Mapping[str, Any],
        batch_size: int,
        profiles: Mapping[str, str],
        fingerprint: Mapping[str, Any],
        testbed_path: str | None = None,
    ) -> None:
        """Raise ConfigError unless this calibration is for ``testbed`` (its name and devices),
        ``model`` (a spec dict), ``batch_size``, the profiles it was measured against (device ->
        ``created``) and this host (``fingerprint``, :data:`FINGERPRINT_KEYS`). The error names
        the first mismatch and the command that makes a fresh calibration."""
        where = self.source or "device calibration"
        redo = "make a fresh one: " + calibrate_command(
            testbed_path or testbed.path, model, batch_size, self.backend, self.isolation
        )

        def refuse(what: str, have: object, need: object) -> None:
            raise ConfigError(where, what, f"calibrated for {have!r}, not {need!r}", redo)

        if self.testbed != testbed.name:
            refuse("testbed", self.testbed, testbed.name)
        for key in ("name", "input_shape", "leaf_modules", "inputs"):  # weight values do not change timing
            have, need = self.model.get(key), model.get(key)
            if key != "name":
                have, need = list(have or []), list(need or [])
            if have != need:
                refuse(f"model.{key}", have, need)
        if self.batch_size != batch_size:
            refuse("batch_size", self.batch_size, batch_size)
        now = testbed_devices(testbed)
        for name, have in self.testbed_devices.items():
            if name in now and have != now[name]:
                key = next(k for k in DEVICE_KEYS if have.get(k) != now[name].get(k))
                refuse(f"device {name!r} {key}", have.get(key), now[name].get(key))
        missing = sorted(set(now) - set(self.devices))
        if missing:
            raise ConfigError(where, "devices", f"has no calibration for {', '.join(missing)}", redo)
        for name, created in profiles.items():
            if name in self.profiles and self.profiles[name] != created:
                raise ConfigError(
                    where,
                    f"profile of {name!r}",
                    f"measured against the profile created {self.profiles[name]}, the profile now is from {created}",
                    redo,
                )
        for key in FINGERPRINT_KEYS:
            if self.fingerprint.get(key) != fingerprint.get(key):
                refuse(f"fingerprint.{key}", self.fingerprint.get(key), fingerprint.get(key))


def device_calibration_from_dict(data: Any, source: str = "<device calibration>") -> DeviceCalibration:
    """Validate a device calibration dict. Raises ConfigError naming the source and field (a file
    from another version: the command to run again)."""
    if isinstance(data, dict) and data.get("schema") == "paretopipe.device_runtime":
        raise ConfigError(
            source,
            "schema",
            "a device runtime file from an earlier paretopipe",
            "delete it and run the sweep again (or paretopipe calibrate --devices)",
        )
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(source, "schema", f"not a {SCHEMA} file")
    if data.get("version") != VERSION:
        raise ConfigError(
            source,
            "version",
            f"version {data.get('version')!r} (this paretopipe reads {VERSION})",
            "run paretopipe calibrate --devices again",
        )
    try:
        devices = {str(d): DeviceRuntime.from_dict(r) for d, r in dict(data["devices"]).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(source, "devices", f"malformed device runtime ({exc!r})") from None
    try:
        return DeviceCalibration(
            testbed=str(data["testbed"]),
            model=dict(data["model"]),
            model_label=str(data["model_label"]),
            batch_size=int(data["batch_size"]),
            backend=str(data["backend"]),
            isolation=str(data["isolation"]),
            devices=devices,
            profiles={str(k): str(v) for k, v in dict(data["profiles"]).items()},
            testbed_devices={str(k): dict(v) for k, v in dict(data["testbed_devices"]).items()},
            created=str(data.get("created", "")),
            fingerprint=dict(data.get("fingerprint", {})),
            source=source,
        )
    except KeyError as exc:
        raise ConfigError(source, str(exc.args[0]), "missing") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(source, None, f"malformed ({exc})") from None


def load_device_calibration(path: str | Path) -> DeviceCalibration:
    """Read a device calibration file. Raises ConfigError if it is missing, unreadable or malformed."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(p, None, "file not found", "run paretopipe calibrate --devices first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(p, None, f"cannot read: {exc}") from None
    return device_calibration_from_dict(data, str(p))


def find_device_calibration(
    testbed: str,
    model_label: str,
    batch_size: int,
    backend: str,
    isolation: str = "loopback",
    directories: Iterable[str | Path] = ("calibrations",),
) -> DeviceCalibration | None:
    """The device calibration for these keys if a file exists, else None. Raises ConfigError if
    the file is unreadable (it is not checked against the host here: :meth:`~DeviceCalibration.check_matches`)."""
    for d in directories:
        p = default_path(testbed, model_label, batch_size, backend, isolation, d)
        if p.is_file():
            return load_device_calibration(p)
    return None


def stored_calibration(
    testbed: Any,
    model: Mapping[str, Any],
    model_label: str,
    batch_size: int,
    backend: str,
    isolation: str,
    profiles_created: Mapping[str, str],
    directory: str | Path,
    log: Callable[[str], None],
) -> DeviceCalibration | None:
    """The device calibration stored in ``directory`` for these keys, checked against this host,
    ``model`` (a spec dict), ``testbed`` and the profiles' ``created`` stamps; None (and the log
    says what that means) if there is none. Raises ConfigError, naming the mismatch and the command
    for a fresh one, if it does not match."""
    from paretopipe.host.fingerprint import fingerprint

    cal = find_device_calibration(testbed.name, model_label, batch_size, backend, isolation, [directory])
    if cal is None:
        path = default_path(testbed.name, model_label, batch_size, backend, isolation, directory)
        log(
            f"device calibration: none ({path} does not exist): stages are priced from the profiles alone, "
            "which can miss what workers really take by tens of percent; make one with: "
            + calibrate_command(testbed.path, model, batch_size, backend, isolation)
        )
        return None
    cal.check_matches(testbed, model, batch_size, profiles_created, fingerprint())
    log(f"device calibration: {cal.source} (created {cal.created})")
    return cal
