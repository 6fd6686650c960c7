"""The helper ``paretopipe workers`` runs on a board: start, inspect and stop its workers there.

It is sent over SSH as ``PYTHON -c SOURCE ACTION`` with a JSON request on stdin, and prints one
JSON object on stdout; so it imports nothing but the standard library (the board's paretopipe may
be another version, which is what ``probe`` reports). Actions:

- ``probe``: the board's Python, paretopipe and torch versions, and per device whether its worker
  runs (pid file and a live process whose command line is that worker) and its log's last lines.
- ``start``: write the given files under the state directory, then start every worker not already
  running, detached (a session of its own, stdin closed, output to ``worker-NAME.log``), and write
  ``worker-NAME.pid``.
- ``stop``: SIGTERM each worker's process group, SIGKILL after the grace period, remove the pid file.

See docs/testbeds.md#starting-workers-over-ssh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

LOG_TAIL_LINES = 3


def _pid_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, f"worker-{name}.pid")


def _log_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, f"worker-{name}.log")


def _is_worker(pid: int, name: str) -> bool:
    """True when ``pid`` is alive and (where /proc tells) runs ``paretopipe worker --device name``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not ours
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return True  # no /proc (macOS): the pid file is all there is
    return b"worker" in argv and b"--device" in argv and name.encode() in argv


def _running_pid(state_dir: str, name: str) -> int | None:
    try:
        with open(_pid_path(state_dir, name)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_worker(pid, name) else None


def _log_tail(state_dir: str, name: str) -> list[str]:
    try:
        with open(_log_path(state_dir, name), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-LOG_TAIL_LINES:]


def _version(module: str) -> str | None:
    if module == "paretopipe":
        # not a directory named paretopipe in the login's home (a clone): the installed package
        sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
        try:
            import paretopipe  # light: its public names are imported lazily

            return str(paretopipe.__version__)
        except Exception:
            return None
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def probe(request: dict) -> dict:
    """Versions of this Python's packages, and the state of each named worker."""
    state_dir = request["dir"]
    workers = {}
    for name in request["devices"]:
        pid = _running_pid(state_dir, name)
        workers[name] = {"running": pid is not None, "pid": pid, "log_tail": _log_tail(state_dir, name)}
    return {
        "python": sys.executable,
        "versions": {"paretopipe": _version("paretopipe"), "torch": _version("torch")},
        "workers": workers,
    }


def start(request: dict) -> dict:
    """Write ``files`` (relative path -> {text, mode}) under ``dir``, then start each worker that is
    not running. Returns per worker its pid and whether it was started now."""
    state_dir = request["dir"]
    os.makedirs(state_dir, exist_ok=True)
    for rel, spec in request.get("files", {}).items():
        path = os.path.join(state_dir, rel)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # written aside, then renamed: a worker of the same board reading it never sees half a file
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, spec.get("mode", 0o644))
        with os.fdopen(fd, "w") as f:
            f.write(spec["text"])
        os.chmod(tmp, spec.get("mode", 0o644))
        os.replace(tmp, path)
    out = {}
    for worker in request["workers"]:
        name = worker["name"]
        pid = _running_pid(state_dir, name)
        if pid is not None:
            out[name] = {"pid": pid, "started": False}
            continue
        with open(_log_path(state_dir, name), "wb") as log:
            proc = subprocess.Popen(
                worker["argv"],
                cwd=state_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, **worker.get("env", {})),
                start_new_session=True,  # its own session: the SSH connection's end does not hang it up
            )
        with open(_pid_path(state_dir, name), "w") as f:
            f.write(f"{proc.pid}\n")
        out[name] = {"pid": proc.pid, "started": True}
    return {"workers": out}


def stop(request: dict) -> dict:
    """Stop each named worker (SIGTERM to its process group, SIGKILL after ``grace_s``)."""
    state_dir, grace_s = request["dir"], float(request.get("grace_s", 5.0))
    out = {}
    for name in request["devices"]:
        pid = _running_pid(state_dir, name)
        how = "not running"
        if pid is not None:
            how = "SIGTERM"
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _is_worker(pid, name) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _is_worker(pid, name):
                _signal_group(pid, signal.SIGKILL)
                how = "SIGKILL"
        try:
            os.remove(_pid_path(state_dir, name))
        except OSError:
            pass
        out[name] = {"pid": pid, "stopped": how}
    return {"workers": out}


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the worker leads its own session (start_new_session)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


ACTIONS = {"probe": probe, "start": start, "stop": stop}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ACTIONS:
        print(f"usage: remote_agent.py {{{','.join(ACTIONS)}}} < request.json", file=sys.stderr)
        return 2
    request = json.load(sys.stdin)
    print(json.dumps(ACTIONS[argv[0]](request)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
