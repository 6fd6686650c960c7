"""Testbed files: the shipped ones load; every malformed field is one error naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from paretopipe.errors import ConfigError, UsageError
from paretopipe.network.conditions import LinkCondition, Scenario, load_scenarios
from paretopipe.testbed import load_testbed, parse_memory

ROOT = Path(__file__).resolve().parents[1]
WIFI = Scenario("wifi", LinkCondition(bandwidth_bps=50e6, delay_ms=5.0, jitter_ms=1.0))


@pytest.mark.parametrize("name", ["local", "local-3", "pi-pair.example", "pi-gpu.example"])
def test_shipped_testbeds_load(name):
    tb = load_testbed(ROOT / "testbed" / f"{name}.toml")
    assert len(tb.devices) >= 2
    assert tb.all_local == (not name.startswith("pi"))


def test_the_local_slow_device_is_limited_to_128_bit_vectors():
    tb = load_testbed(ROOT / "testbed" / "local.toml")
    assert tb.device("slow").isa == "sse41" and tb.device("slow").cpu_quota is None
    assert tb.device("fast").isa is None


def test_devices_whose_cpus_overlap_on_one_host_share_a_cpu(tmp_path):
    text = ""
    for i, (host, cpus) in enumerate(
        [
            ("127.0.0.1", [0]),
            ("127.0.0.1", [1]),
            ("127.0.0.1", [1, 2]),
            ("10.0.0.2", [1]),
            ("127.0.0.1", None),
            ("127.0.0.1", [2]),
        ]
    ):
        text += f'[[devices]]\nname = "d{i}"\nhost = "{host}"\nport = {7000 + i}\n' + (
            f"cpus = {cpus}\n" if cpus else ""
        )
    tb = load_testbed(_write(tmp_path, text))
    assert tb.cpu_groups() == [0, 1, 1, 3, 4, 1]  # d1, d2 and d5 overlap (through d2); another host or no cpus: alone
    assert tb.cpu_groups(["d5", "d0", "d2"]) == [0, 1, 0]
    assert load_testbed(ROOT / "testbed" / "local.toml").cpu_groups() == [0, 1]


def test_links_scenario_override_and_driver():
    tb = load_testbed(ROOT / "testbed" / "pi-pair.example.toml")
    assert tb.link("pi1", "pi2", WIFI) == WIFI
    # the driver shares pi1's host: its link to pi1 is local, to pi2 it is pi1's link
    assert tb.link("driver", "pi1", WIFI).name == "local"
    assert tb.link("pi2", "driver", WIFI) == WIFI
    local = load_testbed(ROOT / "testbed" / "local.toml")
    assert local.link("slow", "driver", WIFI).name == "local"


def _write(tmp_path, text):
    p = tmp_path / "tb.toml"
    p.write_text(text)
    return p


GOOD = """
[[devices]]
name = "a"
host = "127.0.0.1"
port = 6001
[[devices]]
name = "b"
host = "127.0.0.1"
port = 6002
"""


def test_asymmetric_link_override(tmp_path):
    p = _write(tmp_path, GOOD + '[[links]]\nsrc = "a"\ndst = "b"\nnetwork = "bandwidth=10mbit delay=20ms"\n')
    tb = load_testbed(p)
    assert tb.link("a", "b", WIFI).condition == LinkCondition(bandwidth_bps=10e6, delay_ms=20.0)
    assert tb.link("b", "a", WIFI) == WIFI


@pytest.mark.parametrize(
    "text,field",
    [
        ("", "devices"),
        ("[[devices]]\nhost = '127.0.0.1'\nport = 1\n", "devices[0].name"),
        ("[[devices]]\nname = 'a'\nport = 1\n", "devices[0].host"),
        ("[[devices]]\nname = 'a'\nhost = 'h'\nport = 'x'\n", "devices[0].port"),
        ("[[devices]]\nname = 'a'\nhost = 'h'\nport = 70000\n", "devices[0].port"),
        ("[[devices]]\nname = 'a'\nhost = 'h'\nport = 1\ncpu_quota = -1\n", "devices[0].cpu_quota"),
        ("[[devices]]\nname = 'a'\nhost = 'h'\nport = 1\ncpus = 'zero'\n", "devices[0].cpus"),
        ("[[devices]]\nname = 'a'\nhost = 'h'\nport = 1\nisa = 'neon'\n", "devices[0].isa"),
        ("[[devices]]\nname = 'a'\nhost = 'h'\nport = 1\naccelerator = 'gpu'\n", "devices[0].accelerator"),
        ("[[devices]]\nname = 'a'\nhost = 'h'\nport = 1\naccelerator = 0\n", "devices[0].accelerator"),
        ("[[devices]]\nname = 'a'\nhost = 'h'\nport = 1\nmemory = '2 bananas'\n", "devices[0].memory"),
        ("[[devices]]\nname = 'a'\nhost = 'h'\nport = 1\ncolour = 'red'\n", "devices[0].colour"),
        (GOOD + "[driver]\ndevice = 'zz'\n", "driver.device"),
        (GOOD + "[driver]\nhost='127.0.0.1'\nport = 6001\n", "driver.port"),
        (GOOD + "[[links]]\nsrc = 'a'\ndst = 'b'\nnetwork = 'moon'\n", "links[0].network"),
        (GOOD + "[[links]]\nsrc = 'a'\ndst = 'a'\nnetwork = 'wifi'\n", "links[0].dst"),
        (GOOD + "[[devices]]\nname = 'a'\nhost = 'h'\nport = 9\n", "devices[2].name"),
        ("devices = 3\n", "devices"),
        ("[[devices\n", None),
    ],
)
def test_malformed_field_is_named(tmp_path, text, field):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_testbed(p)
    assert str(p) in str(err.value)
    if field:
        assert f": {field}:" in str(err.value)


def test_accelerator_defaults_to_the_cpu_and_a_bad_one_is_one_line(tmp_path):
    tb = load_testbed(_write(tmp_path, GOOD))
    assert {d.accelerator for d in tb.devices} == {"cpu"}
    gpu = load_testbed(_write(tmp_path, "[[devices]]\nname = 'g'\nhost = 'h'\nport = 1\naccelerator = 'cuda:0'\n"))
    assert gpu.device("g").accelerator == "cuda:0"
    bare = load_testbed(_write(tmp_path, "[[devices]]\nname = 'g'\nhost = 'h'\nport = 1\naccelerator = 'cuda'\n"))
    assert bare.device("g").accelerator == "cuda:0"  # so a profile taken with --accelerator cuda:0 matches
    with pytest.raises(ConfigError) as err:
        load_testbed(_write(tmp_path, "[[devices]]\nname = 'g'\nhost = 'h'\nport = 1\naccelerator = 'gpu0'\n"))
    assert str(err.value).endswith(
        "devices[0].accelerator: unknown accelerator 'gpu0'; one of cpu, mps, cuda, cuda:N (e.g. cuda:0)"
    )


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_testbed("/nonexistent/tb.toml")


def test_unknown_device_lists_known(tmp_path):
    tb = load_testbed(_write(tmp_path, GOOD))
    with pytest.raises(UsageError, match="devices: a, b"):
        tb.device("c")


def test_parse_memory():
    assert parse_memory("2GiB") == 2 * 2**30
    assert parse_memory("512MB") == 512e6
    assert parse_memory("unlimited") == float("inf")
    with pytest.raises(UsageError):
        parse_memory("-1GB")


def test_shipped_scenarios():
    sc = load_scenarios(ROOT / "testbed" / "networks.toml")
    assert {"local", "lan", "wifi", "4g", "3g", "constrained"} <= set(sc)
    assert sc["constrained"] == LinkCondition(bandwidth_bps=5e6, delay_ms=200.0)
    assert sc["local"].is_ideal


def test_with_free_ports_moves_only_the_ports(tmp_path):
    from paretopipe.runtime.endpoints import render_testbed, with_free_ports

    tb = load_testbed(ROOT / "testbed" / "local.toml")
    moved = with_free_ports(tb)
    ports = [moved.driver.port, moved.driver.rpc_port, *(d.port for d in moved.devices)]
    assert len(set(ports)) == len(ports) and all(p > 0 for p in ports)
    assert [(d.name, d.cpus, d.cpu_quota, d.threads) for d in moved.devices] == [
        (d.name, d.cpus, d.cpu_quota, d.threads) for d in tb.devices
    ]
    path = tmp_path / "copy.toml"
    path.write_text(render_testbed(moved))
    again = load_testbed(path)
    assert again.driver == moved.driver and again.devices == moved.devices
