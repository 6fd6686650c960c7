"""``paretopipe netem``: dry runs print commands, errors are one line with exit codes, real apply."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.cli.netem import netem_app
from paretopipe.network.conditions import parse_condition
from paretopipe.network.netns import NamespaceNetwork

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["netem", *args])


def test_every_command_has_help_with_an_example():
    for cmd in netem_app.registered_commands:
        assert cmd.callback.__doc__ and "Example: paretopipe netem" in cmd.callback.__doc__, cmd.name
        result = run(cmd.name or cmd.callback.__name__, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout


def test_apply_dry_run_prints_commands_for_a_netem_host():
    result = run("apply", "--dev", "eth0", "--network", "4g", "--dry-run", "--assume", "netem,tbf,htb")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "tc qdisc del dev eth0 root",
        "tc qdisc add dev eth0 root handle 1: netem delay 30ms 5ms limit 1000",
        "tc qdisc add dev eth0 parent 1:1 handle 10: tbf rate 20mbit burst 10000 limit 185000",
    ]
    assert "delay 30ms -> tc-netem" in result.stderr


def test_apply_dry_run_without_netem_says_what_is_not_applied():
    result = run(
        "apply", "--dev", "eth0", "--network", "bandwidth=5mbit delay=200ms loss=1%", "--dry-run", "--assume", "tbf,htb"
    )
    assert result.exit_code == 0, result.output
    assert (
        result.stdout.splitlines()[1] == "tc qdisc add dev eth0 root handle 1: tbf rate 5mbit burst 3028 limit 134100"
    )
    assert "not applied by the kernel: delay (needs netem" in result.stderr
    assert "user-space shaper applies the delay instead; loss is applied only by netem" in result.stderr


def test_apply_dry_run_with_ports():
    result = run(
        "apply", "--dev", "wlan0", "--network", "wifi", "--ports", "5550-5551", "--dry-run", "--assume", "tbf,htb,bfifo"
    )
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[1] == "tc qdisc add dev wlan0 root handle 1: htb"
    assert out[-2:] == [
        "tc filter add dev wlan0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff match ip dport "
        "5550 0xfffe flowid 1:10",
        "tc filter add dev wlan0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff match ip sport "
        "5550 0xfffe flowid 1:10",
    ]


def test_clear_dry_run():
    result = run("clear", "--dev", "eth0", "--dry-run")
    assert result.exit_code == 0 and result.stdout == "tc qdisc del dev eth0 root\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--network", "bandwidth=fast"], "Error: cannot read bandwidth 'fast'"),
        (["--network", "delay=5ms jitter=9ms"], "Error: jitter 9.0 ms exceeds delay 5.0 ms"),
        (["--network", "moon"], "Error: unknown network scenario 'moon'"),
        (["--network", "4g", "--ports", "90000"], "Error: bad port range '90000'"),
        (["--network", "4g", "--assume", "netem"], "Error: --assume describes another host"),
        (["--network", "4g", "--assume", "cake", "--dry-run"], "Error: --assume 'cake'"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_2(args, message):
    result = run("apply", "--dev", "eth0", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_bad_interface_name():
    result = run("clear", "--dev", "not a device", "--dry-run")
    assert result.exit_code == 2 and result.stderr.startswith("Error: bad interface name")


@pytest.mark.root
def test_preflight_on_this_host():
    result = run("preflight", "--format", "json")
    assert result.exit_code == 0, result.output
    import json

    rows = {r["capability"]: r["available"] for r in json.loads(result.stdout)}
    assert rows["root"] == "yes" and rows["qdisc tbf"] == "yes" and rows["qdisc htb"] == "yes"
    if rows["qdisc netem"] == "no":
        assert "no netem" in result.stderr


@pytest.mark.root
def test_apply_on_missing_device_is_a_usage_error():
    result = run("apply", "--dev", "nosuchdev0", "--network", "bandwidth=10mbit")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: no interface 'nosuchdev0'"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "checked before any tc command runs"


@pytest.mark.netns
def test_apply_show_clear_for_real_inside_a_namespace():
    """The CLI runs inside a namespace so the host's own interfaces are never touched."""
    with NamespaceNetwork(["a", "b"]) as net:

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                net.exec_argv("a", [sys.executable, "-m", "paretopipe", "netem", *args]), capture_output=True, text=True
            )

        applied = cli("apply", "--dev", "eth0", "--network", "4g", "--format", "csv")
        assert applied.returncode == 0, applied.stderr
        lines = applied.stdout.splitlines()
        assert lines[0] == "part,requested,mechanism" and lines[1] == "bandwidth,20mbit,tc-tbf"
        shown = cli("show", "--dev", "eth0")
        assert shown.returncode == 0 and "tbf 1: root" in shown.stdout and "rate 20Mbit" in shown.stdout
        if "tc-netem" not in applied.stdout:
            assert "not applied by the kernel: delay" in applied.stderr
        # a second apply replaces the first (idempotent), clear twice is fine
        again = cli("apply", "--dev", "eth0", "--network", parse_condition("bandwidth=5mbit").spec())
        assert again.returncode == 0, again.stderr
        assert "rate 5Mbit" in cli("show", "--dev", "eth0").stdout
        for expected in ("eth0: cleared", "eth0: had no shaping"):
            cleared = cli("clear", "--dev", "eth0")
            assert cleared.returncode == 0 and expected in cleared.stderr
        assert "tbf" not in cli("show", "--dev", "eth0").stdout


def test_apply_dry_run_of_a_trace_prints_the_change_commands_per_piece(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("0,20mbit,10\n5,2mbit,100\n10\n")
    result = run("apply", "--dev", "eth0", "--network", f"trace:{trace}", "--dry-run", "--assume", "netem,tbf,htb")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "tc qdisc del dev eth0 root",
        "tc qdisc add dev eth0 root handle 1: netem delay 10ms limit 1000",
        "tc qdisc add dev eth0 parent 1:1 handle 10: tbf rate 20mbit burst 10000 limit 141072",
    ]
    assert "# at t_s=5 (every 10 s): bandwidth=2mbit delay=100ms" in lines
    assert "tc qdisc change dev eth0 parent 1:1 handle 10: tbf rate 2mbit burst 3028 limit 134100" in lines


def test_apply_a_malformed_trace_is_one_line(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("0,20mbit,10\n5,2mbps,100\n")
    result = run("apply", "--dev", "eth0", "--network", f"trace:{trace}", "--dry-run", "--assume", "tbf")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "line 2, column bandwidth" in result.output


def test_seconds_is_refused_for_a_fixed_condition_and_with_dry_run():
    assert run("apply", "--dev", "eth0", "--network", "wifi", "--seconds", "1", "--dry-run").exit_code == 2
    result = run("apply", "--dev", "lo", "--network", "wifi", "--seconds", "1")
    assert result.exit_code == 2 and "--seconds is for trace scenarios" in result.output
