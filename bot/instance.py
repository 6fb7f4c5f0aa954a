"""Who this process is, and whether a process named in a lease or a claim still exists.

Leases (the scheduler's) and claims (outbox rows being sent) name their holder as
``host:pid:start:nonce`` — the host name, the process id, the process's start time in clock
ticks since boot (``/proc/<pid>/stat``, field 22) and a random nonce. A holder on *this* host
whose process is gone — no such pid, or a pid now used by a later process (other start time) —
is known to be dead, and what it held can be taken over at once instead of after its lease: a
service restarted by systemd five seconds after ``kill -9`` serves again in seconds, not when
the dead process's 30 s lease and 60 s claims run out. Holders on other hosts are judged by
their leases alone (nothing here can see their processes).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from functools import cache


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot; None if unknown/absent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """A process that may hold a lease or a claim."""

    host: str
    pid: int
    start: str  # "" when the platform cannot tell
    nonce: str

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}:{self.nonce}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """A holder from its string; ``host:pid:nonce`` (before start times) is read too."""
        parts = text.rsplit(":", 3)
        if len(parts) == 3:  # host:pid:nonce
            parts = [parts[0], parts[1], "", parts[2]]
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3])

    def is_gone(self) -> bool:
        """True only when this holder is on this host and its process no longer runs."""
        if self.host != socket.gethostname():
            return False
        if not _pid_exists(self.pid):
            return True
        if not self.start:
            return False
        now = _start_ticks(self.pid)
        return now is not None and now != self.start


@cache
def _this(pid: int) -> tuple[str, str]:
    return socket.gethostname(), _start_ticks(pid) or ""


def new_holder() -> Holder:
    """This process, with a fresh nonce (each lease or deliverer in it has its own)."""
    pid = os.getpid()
    host, start = _this(pid)
    return Holder(host, pid, start, uuid.uuid4().hex[:6])


def holder_is_gone(text: str) -> bool:
    """Whether the holder named ``text`` is known to be dead (see the module docstring)."""
    holder = Holder.parse(text)
    return holder is not None and holder.is_gone()
