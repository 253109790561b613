"""Process identity on Linux: a pid plus its start time, so a reused pid is another process."""
from __future__ import annotations

import os

_self_pid = 0
_self_start = 0


class CantTell(Exception):
    """The process's state can't be read (hidepid, no file descriptor left, ...): neither alive nor dead."""


def _read_start(pid: int) -> int | None:
    """Start time from /proc/PID/stat; None for a zombie. Raises OSError when the file can't be read."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # the command name can hold spaces and parentheses: split after the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; None if there is none, or
    if it can't be read (use live_start where "can't tell" must not count as "gone")."""
    try:
        return _read_start(pid)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def live_start(pid: int) -> int | None:
    """Start time of the process that now has this pid; None only when provably there is none (no
    such pid, or a zombie). CantTell when /proc won't say: hidden by hidepid, unreadable, or no fd
    left to open it with; then kill(pid, 0), which needs no fd and sees through hidepid, decides
    whether the pid exists at all."""
    if not 0 < pid < (1 << 31):
        return None
    try:
        return _read_start(pid)
    except OSError as e:
        err: OSError = e
    except (ValueError, IndexError) as e:  # a torn or unexpected stat line
        raise CantTell(f"pid {pid}: unreadable /proc/{pid}/stat ({e})") from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # exists, another user's
    raise CantTell(f"pid {pid} exists but /proc/{pid}/stat can't be read ({err.strerror or err})")


def self_identity() -> tuple[int, int]:
    """(pid, start) of the calling process, cached until it forks."""
    global _self_pid, _self_start
    if not _self_pid:
        pid = os.getpid()
        st = start_time(pid)
        assert st is not None
        _self_pid, _self_start = pid, st
    return _self_pid, _self_start


def _forget_self() -> None:
    global _self_pid, _self_start
    _self_pid = _self_start = 0


os.register_at_fork(after_in_child=_forget_self)
