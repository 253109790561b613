"""Process identity on Linux: a pid plus its start time, so a reused pid is another process."""
from __future__ import annotations

import os

_self_pid = 0
_self_start = 0


def start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name can hold spaces and parentheses: split after the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


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
