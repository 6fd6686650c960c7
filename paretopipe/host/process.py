"""Whether a process is still there: used by cleanup of stale cgroups and namespaces, and by
workers watching their parent. Pure standard library."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and has not exited (a zombie, exited but not reaped, counts as gone).

    A process owned by another user counts as alive (it exists; we may not signal it).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (not Linux) or the process just went away
        return os.path.exists(f"/proc/{pid}") if os.path.isdir("/proc") else True
