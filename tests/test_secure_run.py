"""--secure end to end: CURVE on every link of a local run, workers that ignore peers without an
allow-listed key, workers bound exactly to their testbed address, and clear errors before any work."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.errors import ConfigError, UsageError
from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.runtime.session import MeasureOptions, Session, preflight
from paretopipe.testbed import load_testbed
from paretopipe_backends.base import Endpoint, TransportOptions, TransportTimeout
from paretopipe_backends.security import CurveConfig, generate_keypairs
from paretopipe_backends.zeromq import ZmqTransport
from tests.fixtures.testbeds import local_testbed

ROOT = Path(__file__).resolve().parents[1]
SKIPNET = {"name": "tests.fixtures.toy_models:skipnet", "input_shape": [3, 16, 16], "source": "factory", "seed": 0}
PLAN = Plan(model=SKIPNET, batch_size=1, cuts=(PlanCut(3, "body_1_0"),), devices=("a", "b"))
runner = CliRunner()


def _testbed(tmp_path: Path, keys: dict[str, str] | None = None, host_b: str = "127.0.0.1") -> Path:
    """A local testbed; ``keys`` maps endpoint -> key prefix (omitted endpoints get no key)."""
    extra = {name: f'key = "{prefix}"' for name, prefix in (keys or {}).items()}
    return local_testbed(tmp_path, name="sec", hosts={"b": host_b}, extra=extra)


@pytest.fixture
def secure_testbed(tmp_path: Path) -> Path:
    generate_keypairs(tmp_path / "keys", ["driver", "a", "b"])
    return _testbed(tmp_path, {n: str(tmp_path / "keys" / n) for n in ("driver", "a", "b")})


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.integration
def test_secure_run_is_exact_and_ignores_peers_without_an_allowed_key(secure_testbed: Path, tmp_path: Path):
    tb = load_testbed(secure_testbed)
    options = MeasureOptions(latency_items=5, throughput_items=10, warmup=1)
    with Session(tb, secure=True, startup_timeout_s=60, timeout_s=20, allow_models=["tests.fixtures"]) as session:
        assert all("--secure" in psutil.Process(pid).cmdline() for pid in session.workers.pids().values())
        pids = session.workers.pids()
        assert session.measure(PLAN, Scenario("local", LinkCondition()), options).output_exact is True

        # Peers calling themselves "driver": one with its own CURVE key, one in plain text, and
        # (the control) one holding the real driver key, whose ping the worker does answer.
        generate_keypairs(tmp_path / "rogue", ["driver"])
        keys = {"a": tmp_path / "keys" / "a"}
        rogue_curve = CurveConfig.from_key_prefixes("driver", {**keys, "driver": tmp_path / "rogue" / "driver"})
        real_curve = CurveConfig.from_key_prefixes("driver", {**keys, "driver": tmp_path / "keys" / "driver"})
        a = tb.device("a")
        setup = {
            "kind": "setup",
            "spec": {
                "config": "rogue",
                "stage": 0,
                "stages": 1,
                "model": SKIPNET,
                "batch_size": 1,
                "cuts": [],
                "cut_names": [],
                "next_peer": "driver",
            },
        }
        for curve in (rogue_curve, None, real_curve):
            peer = ZmqTransport(
                Endpoint("driver", "127.0.0.1", 0),
                {"a": Endpoint("a", a.host, a.port)},
                options=TransportOptions(send_timeout_s=1.0, curve=curve),
            )
            with peer:
                if curve is real_curve:
                    peer.send("a", {"kind": "ping", "nonce": "control"})
                    assert session.transport.recv(timeout_s=5.0).header["nonce"] == "control"
                    continue
                for msg in (setup, {"kind": "stop"}):
                    with pytest.raises(TransportTimeout):
                        peer.send("a", msg)
        with pytest.raises(TransportTimeout):  # the worker never acted: no 'ready' reached the driver
            session.transport.recv(timeout_s=1.0)
        assert session.workers.pids() == pids and session.driver.ping("a")["pid"] == pids["a"]
        again = session.measure(PLAN, Scenario("local", LinkCondition()), options)
    assert again.output_exact is True


def test_missing_key_is_one_error_naming_the_file_and_field_before_any_work(tmp_path: Path):
    generate_keypairs(tmp_path / "keys", ["driver", "a"])
    path = _testbed(tmp_path, {n: str(tmp_path / "keys" / n) for n in ("driver", "a")})
    with pytest.raises(ConfigError, match=r"devices\[1\]\.key: missing"):
        preflight(load_testbed(path), "zmq", secure=True)
    result = runner.invoke(
        app,
        [
            "run",
            "tests.fixtures.toy_models:skipnet",
            "--cuts",
            "3",
            "--devices",
            "a,b",
            "--testbed",
            str(path),
            "--secure",
        ],
    )
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert str(path) in line and "devices[1].key" in line
    # a key named in the testbed whose files are missing: same shape, the file named too
    broken = _testbed(
        tmp_path,
        {
            "driver": str(tmp_path / "keys" / "driver"),
            "a": str(tmp_path / "keys" / "a"),
            "b": str(tmp_path / "nowhere" / "b"),
        },
    )
    result = runner.invoke(app, ["worker", "--testbed", str(broken), "--device", "b", "--secure"])
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert str(broken) in line and "devices[1].key" in line and "key file not found" in line


@pytest.mark.parametrize(
    "command",
    [
        ["run", "tests.fixtures.toy_models:skipnet", "--cuts", "3", "--devices", "a,b"],
        ["sweep", "tests.fixtures.toy_models:skipnet", "--network", "lan", "--stages", "2", "--cuts", "3"],
        ["worker", "--device", "a"],
    ],
)
def test_secure_with_rpc_is_refused_with_one_line(secure_testbed: Path, tmp_path: Path, command: list[str]):
    extra = ["-o", str(tmp_path / "run")] if command[0] == "sweep" else []
    result = runner.invoke(app, [*command, "--testbed", str(secure_testbed), "--backend", "rpc", "--secure", *extra])
    assert result.exit_code == 2
    assert "--secure needs the zmq backend" in _one_error_line(result)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="zmq backend"):
        preflight(load_testbed(secure_testbed), "rpc", secure=True)


def _listening(pid: int, timeout_s: float = 60.0) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = {
            f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process(pid).net_connections("tcp") if c.status == "LISTEN"
        }
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("the worker never listened")


@pytest.mark.integration
def test_worker_binds_exactly_its_testbed_address_unless_bind_all(tmp_path: Path):
    path = _testbed(tmp_path, host_b="127.0.0.2")
    port_b = load_testbed(path).device("b").port
    exact = subprocess.Popen(
        [sys.executable, "-m", "paretopipe", "worker", "--testbed", str(path), "--device", "b"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port_a = load_testbed(path).device("a").port
    anywhere = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paretopipe",
            "worker",
            "--testbed",
            str(path),
            "--device",
            "a",
            "--bind-all",
            "--insecure",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert _listening(exact.pid) == {f"127.0.0.2:{port_b}"}
        assert _listening(anywhere.pid) == {f"0.0.0.0:{port_a}"}
    finally:
        for proc in (exact, anywhere):
            proc.terminate()
            proc.wait(timeout=10)
