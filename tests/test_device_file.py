"""Device calibration files: written, read back, and refused when made for something else."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from paretopipe.calibrate.device_file import (
    DeviceCalibration,
    default_path,
    device_calibration_from_dict,
    find_device_calibration,
    load_device_calibration,
)
from paretopipe.calibrate.device_runtime import DeviceRuntime
from paretopipe.errors import ConfigError

MODEL = {"name": "mobilenet_v2", "input_shape": [3, 224, 224], "leaf_modules": [], "inputs": []}
HOST = {"hostname": "h", "cpu_model": "cpu", "torch": "2.0"}
DEVICE = {"host": "127.0.0.1", "threads": 1, "cpus": [0], "cpu_quota": None, "isa": None}


def _device(name: str, cpus: tuple[int, ...]) -> SimpleNamespace:
    return SimpleNamespace(name=name, host="127.0.0.1", threads=1, cpus=cpus, cpu_quota=None, isa=None)


TESTBED = SimpleNamespace(
    name="local", path="testbed/local.toml", devices=[_device("fast", (0,)), _device("slow", (1,))]
)


def _calibration(**changes) -> DeviceCalibration:
    fields = {
        "testbed": "local",
        "model": MODEL,
        "model_label": "mobilenet_v2",
        "batch_size": 1,
        "backend": "zmq",
        "isolation": "loopback",
        "devices": {d: DeviceRuntime(d, 10.0, 9.0, 9.5, 100.0, 10.5, 60, 1, 3) for d in ("fast", "slow")},
        "profiles": {"fast": "t1", "slow": "t2"},
        "testbed_devices": {
            "fast": {"host": "127.0.0.1", "threads": 1, "cpus": [0], "cpu_quota": None, "isa": None},
            "slow": {"host": "127.0.0.1", "threads": 1, "cpus": [1], "cpu_quota": None, "isa": None},
        },
        "created": "2026-12-07T10:00:00",
        "fingerprint": HOST,
    }
    return DeviceCalibration(**{**fields, **changes})


def test_written_and_found_again(tmp_path):
    cal = _calibration()
    path = default_path("local", "mobilenet_v2", 1, "zmq", "loopback", tmp_path)
    path.write_text(json.dumps(cal.to_dict()))
    found = find_device_calibration("local", "mobilenet_v2", 1, "zmq", "loopback", [tmp_path])
    assert found is not None and found.devices == cal.devices and found.source == str(path)
    assert find_device_calibration("local", "mobilenet_v2", 8, "zmq", "loopback", [tmp_path]) is None
    found.check_matches(TESTBED, MODEL, 1, {"fast": "t1", "slow": "t2"}, HOST)  # matches: no error


@pytest.mark.parametrize(
    "changes, check, named",
    [
        ({"testbed": "other"}, {}, "testbed: calibrated for 'other', not 'local'"),
        ({"model": {**MODEL, "name": "resnet18"}}, {}, "model.name: calibrated for 'resnet18'"),
        ({"batch_size": 4}, {}, "batch_size: calibrated for 4, not 1"),
        ({}, {"fingerprint": {**HOST, "cpu_model": "another"}}, "fingerprint.cpu_model: calibrated for 'cpu'"),
        ({}, {"profiles": {"fast": "t9"}}, "profile of 'fast'"),
        ({"testbed_devices": {"fast": {**DEVICE, "threads": 2}}}, {}, "device 'fast' threads: calibrated for 2, not 1"),
        ({"devices": {}}, {}, "has no calibration for fast, slow"),
    ],
)  # fmt: skip
def test_a_calibration_for_something_else_is_refused_naming_the_mismatch(changes, check, named):
    cal = _calibration(source="calibrations/x.json", **changes)
    args = {"profiles": {"fast": "t1", "slow": "t2"}, "fingerprint": HOST} | check
    with pytest.raises(ConfigError) as err:
        cal.check_matches(TESTBED, MODEL, 1, args["profiles"], args["fingerprint"])
    assert named in str(
        err.value
    ) and "paretopipe calibrate --devices mobilenet_v2 --testbed testbed/local.toml" in str(err.value)


def test_a_file_from_an_earlier_version_says_what_to_run_again(tmp_path):
    old = tmp_path / "device_runtime.json"
    old.write_text(json.dumps({"schema": "paretopipe.device_runtime", "version": 1, "devices": {}}))
    with pytest.raises(ConfigError, match="earlier paretopipe.*run the sweep again"):
        load_device_calibration(old)
    with pytest.raises(ConfigError, match="version 0 .*calibrate --devices again"):
        device_calibration_from_dict({**_calibration().to_dict(), "version": 0}, "f.json")


def test_a_run_directory_from_an_earlier_version_says_to_sweep_again(tmp_path):
    from paretopipe.sweep.device_checks import run_calibration

    assert run_calibration(tmp_path) is None
    (tmp_path / "device_runtime.json").write_text("{}")
    with pytest.raises(ConfigError, match="earlier paretopipe.*run the sweep again into a new directory"):
        run_calibration(tmp_path)
