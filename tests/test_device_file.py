"""Device calibration files: written, read back, grown sample by sample, and refused when made for
something else."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest

from paretopipe.calibrate.device_file import (
    DeviceCalibration,
    add_samples,
    default_path,
    device_calibration_from_dict,
    find_device_calibration,
    load_device_calibration,
)
from paretopipe.calibrate.device_runtime import DeviceRuntime
from paretopipe.calibrate.device_samples import RECENT_SAMPLES, DeviceSample, effective_runtime
from paretopipe.errors import ConfigError

MODEL = {"name": "mobilenet_v2", "input_shape": [3, 224, 224], "leaf_modules": [], "inputs": []}
HOST = {"hostname": "h", "cpu_model": "cpu", "torch": "2.0"}
DEVICE = {"host": "127.0.0.1", "threads": 1, "cpus": [0], "cpu_quota": None, "isa": None}


def _device(name: str, cpus: tuple[int, ...]) -> SimpleNamespace:
    return SimpleNamespace(name=name, host="127.0.0.1", threads=1, cpus=cpus, cpu_quota=None, isa=None)


TESTBED = SimpleNamespace(
    name="local", path="testbed/local.toml", devices=[_device("fast", (0,)), _device("slow", (1,))]
)


def _sample(device: str, one_ms: float, when: str = "2026-12-07T10:00:00+0000", by: str = "calibrate") -> DeviceSample:
    """A sample of a device with a 10 ms profile that computed ``one_ms`` per item alone (x``one_ms/10``)."""
    return DeviceSample(DeviceRuntime(device, 10.0, one_ms, one_ms * 1.05, 100.0, one_ms + 1.5, 60, 1, 3), when, by)


def _calibration(**changes) -> DeviceCalibration:
    fields = {
        "testbed": "local",
        "model": MODEL,
        "model_label": "mobilenet_v2",
        "batch_size": 1,
        "backend": "zmq",
        "isolation": "loopback",
        "samples": {d: [_sample(d, 9.0)] for d in ("fast", "slow")},
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
    assert found is not None and found.runtimes == cal.runtimes and found.source == str(path)
    assert found.samples == cal.samples
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
        ({"samples": {}}, {}, "has no calibration for fast, slow"),
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


def test_a_file_of_the_earlier_version_gets_one_line_with_the_command_that_makes_it(tmp_path):
    # version 1 kept one measurement per device and no samples: not read, the command named
    path = default_path("local", "mobilenet_v2", 1, "zmq", "loopback", tmp_path)
    v1 = {k: v for k, v in _calibration().to_dict().items() if k != "samples"} | {"version": 1}
    path.write_text(json.dumps(v1))
    with pytest.raises(ConfigError) as err:
        find_device_calibration("local", "mobilenet_v2", 1, "zmq", "loopback", [tmp_path], "run again: CMD")
    assert str(err.value) == f"{path}: version: version 1 (this paretopipe reads 2); run again: CMD"


def test_the_figures_are_the_median_of_the_recent_samples_so_an_outlier_does_not_move_them():
    steady = [_sample("fast", ms, f"2026-12-07T10:0{i}:00+0000") for i, ms in enumerate((8.9, 9.0, 9.1, 9.0))]
    slow = _sample("fast", 12.2, "2026-12-07T10:05:00+0000")  # one measurement in a slow stretch
    with_outlier, without = effective_runtime([*steady, slow]), effective_runtime(steady)
    assert with_outlier.latency_compute_ms == pytest.approx(9.0) and without.latency_compute_ms == pytest.approx(9.0)
    assert with_outlier.latency_factor == pytest.approx(0.9)
    assert with_outlier.latency_ms == pytest.approx(10.5) and with_outlier.items == 5 * 60
    # only the most recent RECENT_SAMPLES count: a device that really became slower is followed
    became_slow = [_sample("fast", 9.0)] * RECENT_SAMPLES + [_sample("fast", 12.0)] * (RECENT_SAMPLES // 2 + 1)
    assert effective_runtime(became_slow).latency_compute_ms == pytest.approx(12.0)
    assert effective_runtime(became_slow[:-1]).latency_compute_ms == pytest.approx(9.0)
    with pytest.raises(ValueError, match="without samples"):
        effective_runtime([])


def test_describe_says_how_many_measurements_over_what_span_and_the_spread_of_the_factor():
    samples = [_sample("fast", ms, f"2026-12-07T1{i}:00:00+0000") for i, ms in enumerate((8.7, 12.2, 9.0))]
    cal = _calibration(samples={"fast": samples, "slow": [_sample("slow", 15.0, "2026-12-07T12:00:00+0000")] * 3})
    text = cal.describe()
    assert text.startswith("median of the last 3 of 3 measurements, 2026-12-07T10:00:00+0000 to 2026-12-07T12:00:00")
    assert text.endswith("one-item factor fast x0.870-1.220, slow x1.500")
    assert (
        _calibration().describe()
        == "one measurement, 2026-12-07T10:00:00+0000; one-item factor fast x0.900, slow x0.900"
    )


def test_a_measurement_is_added_to_a_matching_file_and_replaces_one_made_for_something_else(tmp_path):
    path, logged = tmp_path / "devices.json", []
    first = add_samples(path, _calibration(), logged.append, replace_other=False)
    assert first is not None and first.source == str(path) and logged == []
    later = _calibration(
        samples={d: [_sample(d, 9.4, "2026-12-07T11:00:00+0000", "pass check")] for d in ("fast", "slow")}
    )
    grown = add_samples(path, later, logged.append, replace_other=False)
    assert grown is not None and [len(s) for s in grown.samples.values()] == [2, 2]
    assert load_device_calibration(path).samples == grown.samples and grown.created == "2026-12-07T10:00:00"
    # another profile of a device: a sweep leaves the file alone, calibrate --devices starts a new one
    reprofiled = replace(later, profiles={"fast": "t9", "slow": "t2"})
    assert add_samples(path, reprofiled, logged.append, replace_other=False) is None
    assert "not added" in logged[-1] and "profile of 'fast'" in logged[-1]
    assert [len(s) for s in load_device_calibration(path).samples.values()] == [2, 2]
    new = add_samples(path, reprofiled, logged.append, replace_other=True)
    assert new is not None and [len(s) for s in new.samples.values()] == [1, 1] and "replacing" in logged[-1]
    # --fresh starts over even from a matching file
    add_samples(path, reprofiled, logged.append, replace_other=True)
    fresh = add_samples(path, reprofiled, logged.append, replace_other=True, fresh=True)
    assert fresh is not None and [len(s) for s in fresh.samples.values()] == [1, 1]
    # a file of the earlier version is replaced by calibrate --devices too
    path.write_text(json.dumps({**_calibration().to_dict(), "version": 1}))
    assert add_samples(path, later, logged.append, replace_other=True) is not None and "version 1" in logged[-1]


def test_writers_at_the_same_time_keep_each_others_samples(tmp_path):
    path, adds = tmp_path / "devices.json", 15

    def writer(name: str) -> None:
        for i in range(adds):
            sample = {d: [_sample(d, 9.0, f"{name}-{i:02d}", "pass check")] for d in ("fast", "slow")}
            add_samples(path, _calibration(samples=sample), lambda m: None, replace_other=False)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = load_device_calibration(path).samples
    for device in ("fast", "slow"):
        when = [s.measured for s in stored[device]]
        assert sorted(when) == sorted(f"{n}-{i:02d}" for n in ("a", "b") for i in range(adds))
        assert [w for w in when if w.startswith("a")] == sorted(w for w in when if w.startswith("a"))  # in order


def test_a_run_directory_from_an_earlier_version_says_to_sweep_again(tmp_path):
    from paretopipe.sweep.device_checks import run_calibration

    assert run_calibration(tmp_path) is None
    (tmp_path / "device_runtime.json").write_text("{}")
    with pytest.raises(ConfigError, match="earlier paretopipe.*run the sweep again into a new directory"):
        run_calibration(tmp_path)
