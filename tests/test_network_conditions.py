"""Link conditions: parsing, validation, scenario files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paretopipe.errors import ConfigError, UsageError
from paretopipe.network.conditions import (
    LinkCondition,
    Scenario,
    default_networks_path,
    format_rate,
    load_scenarios,
    parse_condition,
    parse_duration_ms,
    parse_loss_pct,
    parse_rate,
    resolve_network,
)

REPO_NETWORKS = Path(__file__).resolve().parents[1] / "testbed" / "networks.toml"


def test_parse_full_condition_any_order():
    c = parse_condition("loss=0.1% jitter=2ms bandwidth=20mbit delay=10ms")
    assert c == LinkCondition(bandwidth_bps=20e6, delay_ms=10.0, jitter_ms=2.0, loss_pct=0.1)
    assert parse_condition("bandwidth=1.5mbit, delay=250us") == LinkCondition(bandwidth_bps=1.5e6, delay_ms=0.25)
    assert parse_condition("") == LinkCondition()


def test_units():
    assert parse_rate("500kbit") == 500e3 and parse_rate("1gbit") == 1e9 and parse_rate("unlimited") is None
    assert parse_duration_ms("1.5s") == 1500.0 and parse_duration_ms("250us") == 0.25
    assert parse_loss_pct("2%") == 2.0
    assert format_rate(20e6) == "20mbit" and format_rate(1.5e9) == "1.5gbit" and format_rate(300) == "300bit"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("bandwidth=20mbps", "ambiguous bandwidth unit"),
        ("bandwidth=fast", "cannot read bandwidth"),
        ("delay=10", "cannot read delay"),
        ("loss=0.1", "cannot read loss"),
        ("speed=1mbit", "cannot read network condition"),
        ("delay=1ms delay=2ms", "twice"),
        ("delay=5ms jitter=6ms", "exceeds delay"),
        ("loss=100%", "loss must be in"),
        ("bandwidth=0mbit", "must be positive"),
    ],
)
def test_bad_conditions_say_what_is_wrong(text, fragment):
    with pytest.raises(UsageError, match=fragment) as info:
        parse_condition(text)
    assert "\n" not in str(info.value)


def test_properties():
    c = parse_condition("bandwidth=8mbit delay=10ms")
    assert c.transfer_ms(1_000_000) == pytest.approx(1000.0 + 10.0)
    assert LinkCondition(delay_ms=3).transfer_ms(10**9) == 3.0
    assert LinkCondition().is_ideal and not c.is_ideal
    assert LinkCondition.from_dict(c.to_dict()) == c
    assert LinkCondition().spec() == "unshaped"


@given(
    bw=st.one_of(st.none(), st.integers(1, 10_000).map(lambda k: k * 1e3)),
    delay=st.integers(0, 5000).map(lambda us: us / 10),
    loss=st.integers(0, 999).map(lambda x: x / 10),
)
def test_spec_round_trips(bw, delay, loss):
    c = LinkCondition(bandwidth_bps=bw, delay_ms=delay, jitter_ms=delay / 2, loss_pct=loss)
    back = parse_condition(c.spec()) if not c.is_ideal else LinkCondition()
    if bw is None:
        assert back.bandwidth_bps is None
    else:
        assert back.bandwidth_bps == pytest.approx(bw)
    assert back.delay_ms == pytest.approx(c.delay_ms) and back.jitter_ms == pytest.approx(c.jitter_ms)
    assert back.loss_pct == pytest.approx(c.loss_pct)


def test_shipped_scenarios_load():
    scenarios = load_scenarios(REPO_NETWORKS)
    assert {"local", "lan", "wifi", "4g", "3g", "constrained"} <= set(scenarios)
    assert scenarios["local"].is_ideal
    assert scenarios["4g"] == LinkCondition(bandwidth_bps=20e6, delay_ms=30.0, jitter_ms=5.0)
    assert default_networks_path().name == "networks.toml"


def test_bad_scenario_file_names_file_and_field(tmp_path):
    bad = tmp_path / "net.toml"
    bad.write_text('[slow]\nbandwidth = "2mbps"\n')
    with pytest.raises(ConfigError, match=r"net.toml: slow.bandwidth: ambiguous bandwidth unit"):
        load_scenarios(bad)
    bad.write_text("[slow]\ndelay = 10\n")
    with pytest.raises(ConfigError, match="must be a string with a unit"):
        load_scenarios(bad)
    bad.write_text("not toml [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenarios(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_scenarios(tmp_path / "missing.toml")


def test_resolve_network():
    scenarios = load_scenarios(REPO_NETWORKS)
    assert resolve_network("wifi", scenarios) == Scenario("wifi", scenarios["wifi"])
    inline = resolve_network("delay=7ms", scenarios)
    assert inline.name == "delay=7ms" and inline.condition.delay_ms == 7.0
    with pytest.raises(UsageError, match="known: 3g, 4g"):
        resolve_network("5g", scenarios)
