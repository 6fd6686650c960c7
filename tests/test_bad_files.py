"""Hostile testbed, networks and plan files through the CLI: exit code 2 and exactly one
``Error:`` line naming the file and the field; never a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paretopipe.cli import app

runner = CliRunner()
MODEL = "tests.fixtures.toy_models:skipnet"

TESTBED = """name = "bad"
description = "a testbed to break"
[driver]
host = "127.0.0.1"
port = 5550
[[devices]]
name = "a"
host = "127.0.0.1"
port = 5551
[[devices]]
name = "b"
host = "127.0.0.1"
port = 5552
[[links]]
src = "a"
dst = "b"
network = "wifi"
"""

NETWORKS = """[lan]
bandwidth = "1gbit"
delay = "0.2ms"
[wifi]
description = "home wifi"
bandwidth = "50mbit"
delay = "5ms"
jitter = "1ms"
"""

PLAN = {
    "schema": "paretopipe.plan",
    "version": 1,
    "id": "c3-a+b",
    "model": {"name": MODEL, "input_shape": [3, 16, 16], "source": "factory", "seed": 0},
    "batch_size": 1,
    "cuts": [{"index": 3, "after": "body_1_0", "tensors": ["body_1_0", "stem"], "nbytes": 16384}],
    "devices": ["a", "b"],
    "network": "lan",
    "links": [],
    "predicted": {},
    "profiles": [],
    "testbed": None,
    "meta": {},
}


def _drop_line(text: str, line: str, occurrence: int = 0) -> str:
    lines = text.splitlines(keepends=True)
    hits = [i for i, ln in enumerate(lines) if ln.strip() == line]
    del lines[hits[occurrence]]
    return "".join(lines)


def _sub(text: str, old: str, new: str, occurrence: int = 0) -> str:
    parts = text.split(old)
    assert len(parts) > occurrence + 1, old
    return old.join(parts[: occurrence + 1]) + new + old.join(parts[occurrence + 1 :])


def _error_line(result, path: Path) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert "Traceback" not in result.stderr and str(path) in lines[0], lines[0]
    return lines[0]


# ---- testbed files (paretopipe plan --testbed) ------------------------------------------------

TESTBED_CASES = {
    "invalid-toml": (lambda t: t.replace('name = "bad"', 'name = "bad'), "not valid TOML"),
    "empty": (lambda t: "", "devices: missing"),
    "devices-missing": (lambda t: t.split("[[devices]]")[0], "devices: missing"),
    "devices-empty": (lambda t: "devices = []\n" + t.split("[[devices]]")[0], "devices: no devices"),
    "device-name-missing": (lambda t: _drop_line(t, 'name = "a"'), "devices[0].name: missing"),
    "device-host-missing": (lambda t: _drop_line(t, 'host = "127.0.0.1"', 1), "devices[0].host: missing"),
    "device-port-missing": (lambda t: _drop_line(t, "port = 5552"), "devices[1].port: missing"),
    "link-src-missing": (lambda t: _drop_line(t, 'src = "a"'), "links[0].src: missing"),
    "link-dst-missing": (lambda t: _drop_line(t, 'dst = "b"'), "links[0].dst: missing"),
    "link-network-missing": (lambda t: _drop_line(t, 'network = "wifi"'), "links[0].network: missing"),
    "name-type": (lambda t: t.replace('name = "bad"', "name = 5"), "name: invalid value"),
    "description-type": (
        lambda t: t.replace('description = "a testbed to break"', "description = []"),
        "description: invalid value",
    ),
    "devices-type": (lambda t: "devices = 5\n" + t.split("[[devices]]")[0], "devices: invalid value"),
    "device-type": (lambda t: "devices = [5]\n" + t.split("[[devices]]")[0], "devices[0]: must be a table"),
    "driver-type": (lambda t: "driver = 5\n" + t.split("[driver]")[1].split("\n", 3)[3], "driver: must be a table"),
    "port-type": (lambda t: t.replace("port = 5551", 'port = "5551"'), "devices[0].port: invalid value"),
    "port-range": (lambda t: t.replace("port = 5551", "port = 70000"), "devices[0].port: invalid value"),
    "threads-type": (
        lambda t: t.replace("port = 5551", "port = 5551\nthreads = 1.5"),
        "devices[0].threads: invalid value",
    ),
    "cpus-type": (lambda t: t.replace("port = 5551", 'port = 5551\ncpus = "0"'), "devices[0].cpus: invalid value"),
    "quota-type": (
        lambda t: t.replace("port = 5551", 'port = 5551\ncpu_quota = "half"'),
        "devices[0].cpu_quota: invalid value",
    ),
    "memory-type": (lambda t: t.replace("port = 5551", "port = 5551\nmemory = true"), "devices[0].memory"),
    "memory-unit": (lambda t: t.replace("port = 5551", 'port = 5551\nmemory = "2 parsecs"'), "devices[0].memory"),
    "key-type": (lambda t: t.replace("port = 5551", "port = 5551\nkey = 7"), "devices[0].key: invalid value"),
    "driver-port-type": (lambda t: t.replace("port = 5550", "port = [5550]"), "driver.port: invalid value"),
    "driver-device-unknown": (
        lambda t: t.replace("port = 5550", 'port = 5550\ndevice = "zz"'),
        "driver.device: invalid value",
    ),
    "links-type": (lambda t: "links = 5\n" + t.split("[[links]]")[0], "links: invalid value"),
    "link-network-type": (lambda t: t.replace('network = "wifi"', "network = 5"), "links[0].network: invalid value"),
    "link-network-unknown": (lambda t: t.replace('network = "wifi"', 'network = "moon"'), "links[0].network"),
    "unknown-top": (lambda t: "colour = 1\n" + t, "colour: unknown key"),
    "unknown-driver": (lambda t: t.replace("port = 5550", "port = 5550\nspeed = 1"), "driver.speed: unknown key"),
    "unknown-device": (lambda t: t.replace("port = 5552", "port = 5552\nspeed = 1"), "devices[1].speed: unknown key"),
    "unknown-link": (
        lambda t: t.replace('network = "wifi"', 'network = "wifi"\nspeed = 1'),
        "links[0].speed: unknown key",
    ),
    "duplicate-device": (lambda t: t.replace('name = "b"', 'name = "a"'), "devices[1].name"),
}


@pytest.mark.parametrize("case", sorted(TESTBED_CASES))
def test_bad_testbed(tmp_path: Path, case: str):
    change, expected = TESTBED_CASES[case]
    path = tmp_path / "testbed.toml"
    path.write_text(change(TESTBED))
    result = runner.invoke(
        app, ["plan", MODEL, "--testbed", str(path), "--profiles", str(tmp_path / "p"), "-o", str(tmp_path / "out")]
    )
    assert expected in _error_line(result, path)
    assert not (tmp_path / "out").exists()


# ---- networks files (paretopipe sweep --networks) -----------------------------------------------

NETWORK_CASES = {
    "invalid-toml": (lambda t: t.replace("[wifi]", "[wifi"), "not valid TOML"),
    "scenario-type": (lambda t: "4g = 5\n" + t, "4g: must be a table"),
    "bandwidth-type": (lambda t: t.replace('bandwidth = "50mbit"', "bandwidth = 50"), "wifi.bandwidth"),
    "bandwidth-unit": (lambda t: t.replace('bandwidth = "50mbit"', 'bandwidth = "50mbps"'), "wifi.bandwidth"),
    "bandwidth-value": (lambda t: t.replace('bandwidth = "50mbit"', 'bandwidth = "fast"'), "wifi.bandwidth"),
    "delay-type": (lambda t: t.replace('delay = "5ms"', "delay = 5"), "wifi.delay"),
    "loss-unit": (lambda t: t.replace('jitter = "1ms"', 'loss = "0.1"'), "wifi.loss"),
    "jitter-over-delay": (lambda t: t.replace('jitter = "1ms"', 'jitter = "9ms"'), "wifi.jitter"),
    "description-type": (lambda t: t.replace('description = "home wifi"', "description = 5"), "wifi.description"),
    "unknown-field": (lambda t: t.replace('delay = "5ms"', 'delay = "5ms"\nspeed = "x"'), "wifi.speed: unknown key"),
}


@pytest.mark.parametrize("case", sorted(NETWORK_CASES))
def test_bad_networks_file(tmp_path: Path, case: str):
    change, expected = NETWORK_CASES[case]
    path = tmp_path / "networks.toml"
    path.write_text(change(NETWORKS))
    tb = tmp_path / "testbed.toml"
    tb.write_text(TESTBED.split("[[links]]")[0])
    result = runner.invoke(
        app,
        [
            "sweep",
            MODEL,
            "--testbed",
            str(tb),
            "--networks",
            str(path),
            "--network",
            "wifi",
            "--stages",
            "2",
            "--profiles",
            str(tmp_path / "p"),
            "-o",
            str(tmp_path / "run"),
        ],
    )
    assert expected in _error_line(result, path)
    assert not (tmp_path / "run").exists()


# ---- plan files (paretopipe run --plan) ---------------------------------------------------------


def _without(key: str):
    def change(plan: dict) -> dict:
        *outer, last = key.split(".")
        target = plan
        for k in outer:
            target = target[int(k[5:-1])] if k.startswith("cuts[") else target[k]
        del target[last]
        return plan

    return change


def _with(key: str, value):
    def change(plan: dict) -> dict:
        *outer, last = key.split(".")
        target = plan
        for k in outer:
            target = target["cuts"][int(k[5:-1])] if k.startswith("cuts[") else target[k]
        target[last] = value
        return plan

    return change


PLAN_CASES = {
    **{
        f"missing-{k}": (_without(k), f"{k}: missing")
        for k in ("schema", "version", "model", "model.name", "model.input_shape", "batch_size", "cuts", "devices")
    },
    "missing-cut-index": (lambda p: (p["cuts"][0].pop("index"), p)[1], "cuts[0].index: missing"),
    "missing-cut-after": (lambda p: (p["cuts"][0].pop("after"), p)[1], "cuts[0].after: missing"),
    "schema-value": (_with("schema", "paretopipe.profile"), "schema"),
    "version-type": (_with("version", "1"), "version"),
    "model-type": (_with("model", "skipnet"), "model: invalid value"),
    "model-name-type": (_with("model.name", 5), "model.name: invalid value"),
    "model-shape-type": (_with("model.input_shape", "3x16x16"), "model.input_shape: invalid value"),
    "model-shape-items": (_with("model.input_shape", [3, "16", 16]), "model.input_shape"),
    "model-seed-type": (_with("model.seed", "zero"), "model.seed"),
    "model-leaf-type": (_with("model.leaf_modules", "Gate"), "model.leaf_modules"),
    "model-unknown": (_with("model.colour", "red"), "model.colour: unknown key"),
    "batch-type": (_with("batch_size", "1"), "batch_size: invalid value"),
    "batch-bool": (_with("batch_size", True), "batch_size: invalid value"),
    "cuts-type": (_with("cuts", "3"), "cuts: invalid value"),
    "cut-type": (_with("cuts", [3]), "cuts[0]"),
    "cut-index-type": (lambda p: (p["cuts"][0].update(index="3"), p)[1], "cuts[0].index: invalid value"),
    "cut-tensors-type": (lambda p: (p["cuts"][0].update(tensors=5), p)[1], "cuts[0].tensors"),
    "cut-nbytes-type": (lambda p: (p["cuts"][0].update(nbytes="many"), p)[1], "cuts[0].nbytes"),
    "cut-unknown": (lambda p: (p["cuts"][0].update(colour=1), p)[1], "cuts[0].colour: unknown key"),
    "devices-type": (_with("devices", "a,b"), "devices"),
    "devices-count": (_with("devices", ["a"]), "devices"),
    "network-type": (_with("network", 5), "network: invalid value"),
    "links-type": (_with("links", 5), "links: invalid value"),
    "predicted-type": (_with("predicted", [1]), "predicted: invalid value"),
    "profiles-type": (_with("profiles", "x"), "profiles: invalid value"),
    "meta-type": (_with("meta", "x"), "meta: invalid value"),
    "testbed-type": (_with("testbed", 5), "testbed: invalid value"),
    "unknown-top": (_with("colour", "red"), "colour: unknown key"),
}


@pytest.mark.parametrize("case", sorted(PLAN_CASES))
def test_bad_plan(tmp_path: Path, case: str):
    change, expected = PLAN_CASES[case]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(change(json.loads(json.dumps(PLAN)))))
    tb = tmp_path / "testbed.toml"
    tb.write_text(TESTBED.split("[[links]]")[0])
    result = runner.invoke(app, ["run", "--plan", str(path), "--testbed", str(tb)])
    assert expected in _error_line(result, path)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a plan must be a JSON object"),
        ("", "not valid JSON"),
        ("\udcff", "not valid JSON"),
    ],
)
def test_unreadable_plan(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "plan.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    tb = tmp_path / "testbed.toml"
    tb.write_text(TESTBED.split("[[links]]")[0])
    result = runner.invoke(app, ["run", "--plan", str(path), "--testbed", str(tb)])
    assert expected in _error_line(result, path)


def test_the_unchanged_files_are_valid(tmp_path: Path):
    """The bases the cases break are themselves accepted (so every failure above is the change's)."""
    from paretopipe.network.conditions import load_scenarios
    from paretopipe.plan.plan_file import plan_from_dict
    from paretopipe.testbed import load_testbed

    (tmp_path / "n.toml").write_text(NETWORKS)
    scenarios = load_scenarios(tmp_path / "n.toml")
    (tmp_path / "t.toml").write_text(TESTBED)
    assert load_testbed(tmp_path / "t.toml", scenarios).links[0].label == "wifi"
    assert plan_from_dict(PLAN).id == "c3-a+b"
    assert re.fullmatch(r"c3-a\+b", PLAN["id"])
