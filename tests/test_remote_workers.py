"""``paretopipe workers``: ssh command lines, testbed fields, the board's helper, and up/status/run/down
against an OpenSSH server in a network namespace (a temporary ssh config; ~/.ssh is never touched)."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.errors import ConfigError, TransportError, UsageError
from paretopipe.runtime.remote import (
    AGENT_SOURCE,
    Boards,
    WorkerOptions,
    board_files,
    local_versions,
    remote_devices,
    version_differences,
    worker_argv,
    workers_status,
    workers_up,
)
from paretopipe.runtime.ssh import SshSettings, ssh_argv, ssh_error
from paretopipe.testbed import load_testbed

ROOT = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
runner = CliRunner()


def _testbed(tmp_path: Path, devices: str, driver: str = "") -> Path:
    path = tmp_path / "tb.toml"
    path.write_text(f'name = "boards"\n[driver]\nhost = "10.0.0.1"\nport = 5550\n{driver}\n{devices}')
    return path


BOARD = '[[devices]]\nname = "{name}"\nhost = "10.0.0.{n}"\nport = 5551\n'


# ---- command lines -------------------------------------------------------------------------------


def test_ssh_argv_is_a_list_with_batch_mode_and_the_remote_command_quoted():
    argv = ssh_argv("pi@10.0.0.2", ["/opt/my venv/bin/python", "-c", "print('x'); rm -rf /"], SshSettings())
    assert argv[:1] == ["ssh"] and "BatchMode=yes" in argv and "ConnectTimeout=10" in argv
    assert argv[-3:-1] == ["--", "pi@10.0.0.2"]  # the destination can never be read as an option
    assert shlex.split(argv[-1]) == ["/opt/my venv/bin/python", "-c", "print('x'); rm -rf /"]
    with_config = ssh_argv("pi1", ["true"], SshSettings(config_file=Path("/tmp/cfg"), connect_timeout_s=3))
    assert with_config[1:3] == ["-F", "/tmp/cfg"] and "ConnectTimeout=3" in with_config
    for bad in ("-oProxyCommand=x", "pi@host name", ""):
        with pytest.raises(ValueError):
            ssh_argv(bad, ["true"], SshSettings())


def test_ssh_failures_become_one_line_with_a_hint():
    denied = ssh_error("pi2", "pi@h", ["/x/python"], 255, "pi@h: Permission denied (publickey).\n")
    assert "pi2 (pi@h): ssh failed: pi@h: Permission denied (publickey)." in str(denied)
    assert "ssh-copy-id pi@h" in str(denied)
    assert "host key" in str(ssh_error("pi2", "pi@h", ["x"], 255, "Host key verification failed.\n"))
    missing = ssh_error("pi2", "pi@h", ["/x/python", "-c"], 127, "bash: /x/python: No such file or directory\n")
    assert "'/x/python' was not found there" in str(missing) and "python" in (missing.hint or "")
    assert isinstance(missing, TransportError)


def test_worker_argv_carries_the_security_flags_and_allowances():
    tb = load_testbed(ROOT / "testbed" / "pi-pair.example.toml")
    dev = tb.device("pi2")
    argv = worker_argv(dev, WorkerOptions(secure=True, allow_models=("mypkg.models",), weights_dirs=("/w",)))
    assert argv[:4] == [dev.python, "-m", "paretopipe", "worker"]
    assert argv[argv.index("--device") + 1] == "pi2" and argv[argv.index("--testbed") + 1] == "testbed.toml"
    assert "--secure" in argv and "--insecure" not in argv
    assert argv[argv.index("--allow-model") + 1] == "mypkg.models" and argv[argv.index("--weights-dir") + 1] == "/w"


def test_version_differences_name_each_package():
    here = {"paretopipe": "0.1.0", "torch": "2.5.1"}
    assert version_differences(dict(here), here) == []
    assert version_differences({"paretopipe": "0.1.0", "torch": None}, here) == ["torch missing (here 2.5.1)"]


# ---- testbed fields --------------------------------------------------------------------------------


def test_the_pi_example_has_ssh_and_python_for_every_device():
    tb = load_testbed(ROOT / "testbed" / "pi-pair.example.toml")
    assert all(d.ssh and d.python and d.python.startswith("/") for d in tb.devices)
    assert [d.name for d in remote_devices(tb)] == ["pi1", "pi2"]
    assert [d.name for d in remote_devices(tb, ["pi2"])] == ["pi2"]


@pytest.mark.parametrize(
    ("fields", "where", "problem"),
    [
        ('ssh = "pi@h"\n', "devices[0].python", "missing"),
        ('python = "/usr/bin/python3"\n', "devices[0].ssh", "missing"),
        ('ssh = "-oProxyCommand=evil"\npython = "/p"\n', "devices[0].ssh", "invalid value"),
        ('ssh = "pi@h x"\npython = "/p"\n', "devices[0].ssh", "invalid value"),
        ('ssh = "pi@h"\npython = "venv/bin/python"\n', "devices[0].python", "invalid value"),
        ('ssh = "pi@h"\npython = 3\n', "devices[0].python", "invalid value"),
    ],
)
def test_bad_ssh_fields_are_one_error_naming_the_field(tmp_path, fields, where, problem):
    with pytest.raises(ConfigError) as err:
        load_testbed(_testbed(tmp_path, BOARD.format(name="pi1", n=2) + fields))
    assert err.value.field == where and problem in str(err.value)


def test_a_device_without_ssh_is_refused_by_name(tmp_path):
    devices = BOARD.format(name="pi1", n=2) + 'ssh = "pi@h"\npython = "/p"\n' + BOARD.format(name="pi2", n=3)
    tb = load_testbed(_testbed(tmp_path, devices))
    with pytest.raises(UsageError, match="devices without ssh: pi2"):
        remote_devices(tb)
    result = runner.invoke(app, ["workers", "status", "--testbed", str(tb.path)])
    assert result.exit_code == 2 and result.stderr.startswith("Error: ") and "pi2" in result.stderr
    assert "Traceback" not in result.output


def test_up_refuses_workers_beyond_loopback_without_secure_or_insecure_before_logging_in(tmp_path):
    tb = _testbed(tmp_path, BOARD.format(name="pi1", n=2) + 'ssh = "pi@h"\npython = "/p"\n')
    result = runner.invoke(app, ["workers", "up", "--testbed", str(tb), "--ssh-config", "/nonexistent"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.splitlines()[-1].startswith("Error: worker 'pi1' would listen on 10.0.0.2:5551 beyond")
    both = runner.invoke(app, ["workers", "up", "--testbed", str(tb), "--secure", "--insecure"])
    assert both.exit_code == 2 and "contradict" in both.stderr


def test_secure_boards_get_every_public_key_and_only_their_own_secret(tmp_path):
    from paretopipe_backends.security import generate_keypairs

    generate_keypairs(tmp_path / "keys", ["driver", "pi1", "pi2"])
    devices = "".join(
        BOARD.format(name=n, n=i + 2) + f'ssh = "pi@{n}"\npython = "/p"\nkey = "keys/{n}"\n'
        for i, n in enumerate(["pi1", "pi2"])
    )
    tb = load_testbed(_testbed(tmp_path, devices, driver='key = "keys/driver"'))
    files = board_files(tb, tb.device("pi2"), secure=True)
    assert sorted(files) == ["keys/driver.key", "keys/pi1.key", "keys/pi2.key", "keys/pi2.key_secret", "testbed.toml"]
    assert files["keys/pi2.key_secret"]["mode"] == 0o600
    copied = tmp_path / "copy.toml"
    copied.write_text(files["testbed.toml"]["text"])
    assert load_testbed(copied).device("pi1").key == "keys/pi1"  # relative to the board's state directory
    assert sorted(board_files(tb, tb.device("pi2"), secure=False)) == ["testbed.toml"]


class _FakeBoards(Boards):
    """Boards whose helper answers from a dict (no ssh): records the actions asked of it."""

    def __init__(self, testbed, versions):
        super().__init__(testbed, remote_devices(testbed), SshSettings(), "state")
        self.versions, self.actions, self.pids = versions, [], {}

    def call(self, device, action, request):
        self.actions.append((device.name, action))
        if action == "start":
            self.pids[device.name] = 1000 + len(self.pids)
            return {"workers": {device.name: {"pid": self.pids[device.name], "started": True}}}
        worker = {"running": device.name in self.pids, "pid": self.pids.get(device.name), "log_tail": []}
        return {"python": "/p", "versions": self.versions, "workers": {device.name: worker}}


def test_up_refuses_boards_whose_versions_differ_unless_allowed(tmp_path):
    devices = "".join(BOARD.format(name=n, n=i + 2) + 'ssh = "pi@h"\npython = "/p"\n' for i, n in enumerate("ab"))
    tb = load_testbed(_testbed(tmp_path, devices))
    here = local_versions()
    boards = _FakeBoards(tb, {"paretopipe": here["paretopipe"], "torch": "1.0.0"})
    options = WorkerOptions(backend="rpc", insecure=True)  # rpc: no port to wait for
    with pytest.raises(UsageError) as err:
        workers_up(boards, options)
    assert f"a: torch 1.0.0 (here {here['torch']}); b: torch 1.0.0" in str(err.value)
    assert "--allow-version-mismatch" in str(err.value) and {a for _, a in boards.actions} == {"probe"}
    rows = workers_up(boards, options, allow_version_mismatch=True)
    assert [(r["device"], r["worker"], r["pid"], r["versions"]) for r in rows] == [
        ("a", "started", "1000", f"differ: torch 1.0.0 (here {here['torch']})"),
        ("b", "started", "1001", f"differ: torch 1.0.0 (here {here['torch']})"),
    ]
    assert [s.differs for s in workers_status(_FakeBoards(tb, dict(here)))] == [[], []]


# ---- the board's helper, run here ---------------------------------------------------------------


def _agent(action: str, request: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", AGENT_SOURCE, action], input=json.dumps(request), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.integration
def test_the_helper_starts_reports_and_stops_a_detached_process(tmp_path):
    state = str(tmp_path / "state")
    # a stand-in whose command line looks like a worker's: the helper only signals processes that do
    argv = [sys.executable, "-c", "import time; print('listening', flush=True); time.sleep(60)", "worker"]
    argv += ["--device", "d1"]
    request = {"dir": state, "files": {"a/b.txt": {"text": "hi", "mode": 0o600}}, "workers": []}
    request["workers"] = [{"name": "d1", "argv": argv, "env": {"X": "1"}}]
    started = _agent("start", request)["workers"]["d1"]
    assert started["started"] and (Path(state) / "a/b.txt").read_text() == "hi"
    assert _agent("start", request)["workers"]["d1"] == {"pid": started["pid"], "started": False}
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and not _agent("probe", {"dir": state, "devices": ["d1"]})["workers"]["d1"]["log_tail"]
    ):
        time.sleep(0.1)
    probe = _agent("probe", {"dir": state, "devices": ["d1", "d2"]})
    assert probe["workers"]["d1"] == {"running": True, "pid": started["pid"], "log_tail": ["listening"]}
    assert probe["workers"]["d2"]["running"] is False
    assert probe["versions"]["paretopipe"] and probe["python"] == sys.executable
    stopped = _agent("stop", {"dir": state, "devices": ["d1"], "grace_s": 5})["workers"]["d1"]
    assert stopped == {"pid": started["pid"], "stopped": "SIGTERM"}
    assert _agent("probe", {"dir": state, "devices": ["d1"]})["workers"]["d1"]["running"] is False
    assert _agent("stop", {"dir": state, "devices": ["d1"]})["workers"]["d1"]["stopped"] == "not running"


# ---- over ssh, into a network namespace ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _sshd_in_namespace(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """An OpenSSH server in a namespace that accepts a fresh key; yields (ssh config, board address,
    driver address). Everything lives under ``tmp_path``."""
    from paretopipe.network.netns import NamespaceNetwork

    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host_key", "id_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "id_ed25519.pub").read_text())
    with NamespaceNetwork(["board"], host_node="driver", subnet="auto") as net:
        board, driver = net.address("board"), net.address("driver")
        (keys / "sshd_config").write_text(
            f"ListenAddress {board}\nPort 22\nHostKey {keys / 'host_key'}\n"
            f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            f"UsePAM no\nStrictModes no\nPidFile {keys / 'sshd.pid'}\n"
        )
        (keys / "known_hosts").write_text(f"{board} {(keys / 'host_key.pub').read_text()}")
        (keys / "config").write_text(
            f"Host board\n  HostName {board}\n  User root\n  IdentityFile {keys / 'id_ed25519'}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {keys / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        log = open(tmp_path / "sshd.log", "wb")
        sshd = subprocess.Popen(
            net.exec_argv("board", [str(SSHD), "-D", "-e", "-f", str(keys / "sshd_config")]),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection((board, 22), timeout=0.5):
                    break
                assert sshd.poll() is None and time.monotonic() < deadline, (tmp_path / "sshd.log").read_text()
                time.sleep(0.1)
            yield keys / "config", board, driver
        finally:
            sshd.terminate()
            sshd.wait(timeout=10)
            log.close()


def _cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.skipif(SSHD is None, reason="OpenSSH's sshd is not installed (apt-get install openssh-server)")
def test_workers_up_status_run_down_over_ssh(tmp_path):
    with _sshd_in_namespace(tmp_path) as (config, board, driver):
        (tmp_path / "keys").mkdir()
        assert _cli("keys", "driver", "b1", "b2", "-o", str(tmp_path / "keys"))[0] == 0
        devices = "".join(
            f'[[devices]]\nname = "{n}"\nhost = "{board}"\nport = {5601 + i}\nssh = "board"\n'
            f'python = "{sys.executable}"\nkey = "keys/{n}"\n'
            for i, n in enumerate(["b1", "b2"])
        )
        tb = tmp_path / "tb.toml"
        tb.write_text(
            f'name = "boards"\n[driver]\nhost = "{driver}"\nport = {_free_port()}\nkey = "keys/driver"\n{devices}'
        )
        remote = str(tmp_path / "remote")
        common = ["--testbed", str(tb), "--ssh-config", str(config), "--remote-dir", remote, "--format", "json"]

        code, out, err = _cli("workers", "status", *common)
        assert code == 0, err
        assert [(r["device"], r["reachable"], r["worker"], r["versions"]) for r in json.loads(out)] == [
            ("b1", "yes", "stopped", "match"),
            ("b2", "yes", "stopped", "match"),
        ]
        try:
            code, out, err = _cli("workers", "up", *common, "--secure", "--timeout", "90")
            assert code == 0, err
            up = {r["device"]: r for r in json.loads(out)}
            assert {r["worker"] for r in up.values()} == {"started"}
            assert (Path(remote) / "boards" / "keys" / "b1.key_secret").exists()
            code, out, _ = _cli("workers", "status", *common)
            assert [(r["worker"], r["pid"]) for r in json.loads(out)] == [
                ("running", up["b1"]["pid"]),
                ("running", up["b2"]["pid"]),
            ]
            code, out, err = _cli(
                "run", "mobilenet_v3_small", "--input-shape", "3x32x32", "--cuts", "3", "--devices", "b1,b2",
                "--testbed", str(tb), "--secure", "--mode", "latency", "--items", "3", "--warmup", "1",
                "--format", "json",
            )  # fmt: skip
            assert code == 0, err
            rows = {r["metric"]: r["measured"] for r in json.loads(out)}
            assert rows["latency_items"] == 3 and rows["output_exact"] is True
        finally:
            code, out, err = _cli("workers", "down", *common, "--out", str(tmp_path / "run"))
        assert code == 0, err
        assert [(r["device"], r["worker"]) for r in json.loads(out)] == [("b1", "stopped"), ("b2", "stopped")]
        for name in ("b1", "b2"):
            log = (tmp_path / "run" / f"worker-{name}.log").read_text()
            assert f"worker {name} listening on {board}:" in log and "CURVE" in log
        code, out, _ = _cli("workers", "status", *common)
        assert {r["worker"] for r in json.loads(out)} == {"stopped"}

        # a board whose python is not there, and one that does not answer: one line each
        tb.write_text(tb.read_text().replace(f'python = "{sys.executable}"', 'python = "/nonexistent/python"', 1))
        code, _, err = _cli("workers", "up", *common, "--secure", "-d", "b1")
        assert code == 4 and err.splitlines()[-1].startswith("Error: b1 (board): '/nonexistent/python' was not found")
        unreachable = tmp_path / "config-unreachable"
        unreachable.write_text(config.read_text() + "  Port 2\n")  # nothing listens there: refused at once
        code, _, err = _cli(
            "workers", "status", *common[:2], "--ssh-config", str(unreachable), "--remote-dir", remote, "-d", "b2"
        )
        assert code == 4 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("Error: b2 (board): ssh failed: ssh: connect to host")
        assert len(err.strip().splitlines()) == 2, err  # the 'this machine' line, then one error line
        code, out, err = _cli(
            "workers", "down", *common[:2], "--ssh-config", str(unreachable), "--remote-dir", remote,
            "--out", str(tmp_path / "run2"), "--format", "json",
        )  # fmt: skip
        assert code == 4 and [r["worker"] for r in json.loads(out)] == ["unknown", "unknown"]
        assert err.strip().splitlines()[-1].startswith("Error: b1 (board): ssh failed") and "2 of 2" in err
