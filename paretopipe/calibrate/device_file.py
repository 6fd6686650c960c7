"""Device calibrations as files: the device runtime measurements of one testbed, model, batch
size, backend and isolation, with the host fingerprint and what they were measured against.

A file keeps every measurement it was made from, per device (:mod:`.device_samples`);
:attr:`DeviceCalibration.runtimes` are the figures plans are priced with, the median over the
most recent. ``paretopipe calibrate --devices`` and ``paretopipe sweep`` (before planning when none
is stored, and at every pass check) add theirs to the one under ``calibrations/``
(:func:`default_path`, :func:`add_samples`); ``plan``, ``run`` and ``sweep`` find it
(:func:`find_device_calibration`) and refuse one made for something else
(:meth:`DeviceCalibration.check_matches`), naming the mismatch and the command that makes a fresh
one. No torch import. Format: docs/file-formats.md#device-calibrations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from paretopipe.calibrate.device_runtime import DeviceRuntime
from paretopipe.calibrate.device_samples import RECENT_SAMPLES, DeviceSample, effective_runtime, factor_range, recent
from paretopipe.errors import ConfigError
from paretopipe.plan.plan_file import safe_name, write_json_atomic

SCHEMA = "paretopipe.calibrate.device_file"
VERSION = 2
#: Seconds a writer waits for another one adding to the same file before giving up.
LOCK_TIMEOUT_S = 60.0
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
    """The device runtime measurements of every device of one testbed for one model and batch size."""

    testbed: str
    model: dict[str, Any]  # the model spec (ModelSpec.to_dict())
    model_label: str
    batch_size: int
    backend: str
    isolation: str
    samples: dict[str, list[DeviceSample]]  # device -> its measurements, oldest first
    profiles: dict[str, str]  # device -> the `created` stamp of the profile it was measured against
    testbed_devices: dict[str, dict[str, Any]]  # device -> DEVICE_KEYS as the testbed had them
    created: str = ""  # when the file was started
    fingerprint: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where it was read from (not stored)

    @property
    def runtimes(self) -> dict[str, DeviceRuntime]:
        """Per device, the figures plans are priced with (:func:`~.device_samples.effective_runtime`)."""
        return {d: effective_runtime(s) for d, s in self.samples.items() if s}

    def describe(self) -> str:
        """How many measurements the figures are the median of, over what span, and each device's
        one-item factor over them, e.g. ``median of the last 9 of 23 measurements,
        2026-12-07T10:00:00+0000 to 2026-12-07T12:40:00+0000; one-item factor fast x0.873-1.224``."""
        if not any(self.samples.values()):
            return "no measurements"
        total = max(len(s) for s in self.samples.values())
        used = [x for s in self.samples.values() for x in recent(s)]
        first, last = min(x.measured for x in used), max(x.measured for x in used)
        span = f"{first} to {last}" if first != last else first
        ranges = []
        for d, s in self.samples.items():
            if s:
                low, high = factor_range(s)
                ranges.append(f"{d} x{low:.3f}" + (f"-{high:.3f}" if high != low else ""))
        how = (
            "one measurement"
            if total == 1
            else f"median of the last {min(total, RECENT_SAMPLES)} of {total} measurements"
        )
        return f"{how}, {span}; one-item factor {', '.join(ranges)}"

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
            "devices": {d: r.to_dict() for d, r in self.runtimes.items()},  # for reading: what plans use
            "samples": {d: [x.to_dict() for x in s] for d, s in self.samples.items()},
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
        found = self._mismatch(testbed.name, model, batch_size, testbed_devices(testbed), profiles, fingerprint)
        if found is not None:
            what, problem = found
            raise ConfigError(where, what, problem, redo)

    def _mismatch(
        self,
        testbed_name: str,
        model: Mapping[str, Any],
        batch_size: int,
        devices_now: Mapping[str, Mapping[str, Any]],
        profiles: Mapping[str, str],
        fingerprint: Mapping[str, Any],
    ) -> tuple[str, str] | None:
        """The first key this calibration was made for something else on, as (field, problem);
        None if it holds for all of them. Devices and profiles count where both sides have them."""

        def differ(have: object, need: object) -> str:
            return f"calibrated for {have!r}, not {need!r}"

        if self.testbed != testbed_name:
            return "testbed", differ(self.testbed, testbed_name)
        for key in ("name", "input_shape", "leaf_modules", "inputs"):  # weight values do not change timing
            have, need = self.model.get(key), model.get(key)
            if key != "name":
                have, need = list(have or []), list(need or [])
            if have != need:
                return f"model.{key}", differ(have, need)
        if self.batch_size != batch_size:
            return "batch_size", differ(self.batch_size, batch_size)
        for name, have_dev in self.testbed_devices.items():
            if name in devices_now and dict(have_dev) != dict(devices_now[name]):
                key = next(k for k in DEVICE_KEYS if have_dev.get(k) != devices_now[name].get(k))
                return f"device {name!r} {key}", differ(have_dev.get(key), devices_now[name].get(key))
        missing = sorted(set(devices_now) - {d for d, s in self.samples.items() if s})
        if missing:
            return "devices", f"has no calibration for {', '.join(missing)}"
        for name, created in profiles.items():
            if name in self.profiles and self.profiles[name] != created:
                return (
                    f"profile of {name!r}",
                    f"measured against the profile created {self.profiles[name]}, the profile now is from {created}",
                )
        for key in FINGERPRINT_KEYS:
            if self.fingerprint.get(key) != fingerprint.get(key):
                return f"fingerprint.{key}", differ(self.fingerprint.get(key), fingerprint.get(key))
        return None

    def difference(self, other: DeviceCalibration) -> str | None:
        """Why ``other`` (a new measurement) cannot be added to this calibration, in a few words;
        None if it can: the same keys, devices, testbed entries, profiles and host."""
        keys = ("testbed", "model_label", "batch_size", "backend", "isolation")
        for key in keys:
            if getattr(self, key) != getattr(other, key):
                return f"{key}: {getattr(self, key)!r}, not {getattr(other, key)!r}"
        if set(self.samples) != set(other.samples):
            return f"devices: {', '.join(sorted(self.samples))}, not {', '.join(sorted(other.samples))}"
        found = self._mismatch(
            other.testbed, other.model, other.batch_size, other.testbed_devices, other.profiles, other.fingerprint
        )
        return None if found is None else f"{found[0]}: {found[1]}"

    def with_samples_of(self, other: DeviceCalibration) -> DeviceCalibration:
        """This calibration with ``other``'s samples added after its own (check :meth:`difference` first)."""
        merged = {d: [*s, *other.samples.get(d, [])] for d, s in self.samples.items()}
        return replace(self, samples=merged)


def device_calibration_from_dict(
    data: Any, source: str = "<device calibration>", redo: str | None = None
) -> DeviceCalibration:
    """Validate a device calibration dict. Raises ConfigError naming the source and field; a file
    from another version gets one line with the command that makes it again (``redo``, else the
    generic one)."""
    again = redo or "run the sweep again, or paretopipe calibrate --devices again"
    if isinstance(data, dict) and data.get("schema") == "paretopipe.device_runtime":
        raise ConfigError(source, "schema", "a device runtime file from an earlier paretopipe", again)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(source, "schema", f"not a {SCHEMA} file")
    if data.get("version") != VERSION:
        raise ConfigError(
            source, "version", f"version {data.get('version')!r} (this paretopipe reads {VERSION})", again
        )
    try:
        samples = {str(d): [DeviceSample.from_dict(x) for x in s] for d, s in dict(data["samples"]).items()}
    except KeyError as exc:
        raise ConfigError(source, "samples", f"missing {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(source, "samples", f"malformed device runtime sample ({exc})") from None
    try:
        return DeviceCalibration(
            testbed=str(data["testbed"]),
            model=dict(data["model"]),
            model_label=str(data["model_label"]),
            batch_size=int(data["batch_size"]),
            backend=str(data["backend"]),
            isolation=str(data["isolation"]),
            samples=samples,
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


def load_device_calibration(path: str | Path, redo: str | None = None) -> DeviceCalibration:
    """Read a device calibration file. Raises ConfigError if it is missing, unreadable, malformed
    or from another version (naming ``redo``, the command that makes it again, if given)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(p, None, "file not found", "run paretopipe calibrate --devices first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(p, None, f"cannot read: {exc}") from None
    return device_calibration_from_dict(data, str(p), redo)


def add_samples(
    path: str | Path,
    new: DeviceCalibration,
    log: Callable[[str], None],
    replace_other: bool,
    fresh: bool = False,
) -> DeviceCalibration | None:
    """Add ``new``'s samples to the device calibration at ``path`` and return what was written.

    The file is re-read under a lock (``.<name>.lock`` beside it) and written atomically, so
    writers at the same time keep each other's samples. Without a file (or with ``fresh``),
    ``new`` is written as it is. A file made for something else (:meth:`~DeviceCalibration.difference`),
    unreadable or of another version is replaced if ``replace_other`` (and the log says why);
    otherwise it is left as it is, the log says why, and None is returned. Raises OSError if the
    file cannot be written, ``filelock.Timeout`` if another writer holds it for :data:`LOCK_TIMEOUT_S`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(p.with_name(f".{p.name}.lock"), timeout=LOCK_TIMEOUT_S):
        out = replace(new, source="")
        if p.exists() and fresh:
            log(f"device calibration: starting {p} over, its earlier measurements dropped")
        elif p.exists():
            why = None
            try:
                old = load_device_calibration(p)
                why = old.difference(new)
            except ConfigError as exc:
                why = exc.message
            if why is None:
                out = old.with_samples_of(new)
            elif replace_other:
                log(f"device calibration: replacing {p}, which cannot take this measurement ({why})")
            else:
                log(f"device calibration: measurement not added to {p}, which cannot take it ({why})")
                return None
        write_json_atomic(out.to_dict(), p)
    return replace(out, source=str(p))


def find_device_calibration(
    testbed: str,
    model_label: str,
    batch_size: int,
    backend: str,
    isolation: str = "loopback",
    directories: Iterable[str | Path] = ("calibrations",),
    redo: str | None = None,
) -> DeviceCalibration | None:
    """The device calibration for these keys if a file exists, else None. Raises ConfigError if
    the file is unreadable or from another version (naming ``redo``, the command that makes it
    again, if given); it is not checked against the host here: :meth:`~DeviceCalibration.check_matches`."""
    for d in directories:
        p = default_path(testbed, model_label, batch_size, backend, isolation, d)
        if p.is_file():
            return load_device_calibration(p, redo)
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

    command = calibrate_command(testbed.path, model, batch_size, backend, isolation)
    cal = find_device_calibration(
        testbed.name, model_label, batch_size, backend, isolation, [directory], f"run again: {command}"
    )
    if cal is None:
        path = default_path(testbed.name, model_label, batch_size, backend, isolation, directory)
        log(
            f"device calibration: none ({path} does not exist): stages are priced from the profiles alone, "
            "which can miss what workers really take by tens of percent; make one with: " + command
        )
        return None
    cal.check_matches(testbed, model, batch_size, profiles_created, fingerprint())
    log(f"device calibration: {cal.source}: {cal.describe()}")
    return cal
