"""The child processes selftune runs its heavy work in (a job's training, an export): started so that
serving goes first, and dying with the process that started them.

- ``lower_priority``: called by the parent right after the spawn; the child then gets the cores only
  when requests leave them idle (Linux ``SCHED_IDLE``), or runs at nice 19 (``low``).
- ``exit_with_parent`` and ``orphaned``: called by the child; a parent killed with SIGKILL (whose
  claims then lapse, so another process takes the work over) must not leave its children working.
- ``alive``: whether a process id still runs on this host.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from contextlib import suppress

log = logging.getLogger("selftune.children")


def lower_priority(pid: int, priority: str) -> None:
    """Let serving go first on a shared CPU: ``priority`` is ``SELFTUNE_TRAIN_PRIORITY``. Called at once
    after the spawn, while the child is still single-threaded: its threads (torch's, OpenMP's)
    inherit the policy."""
    if priority == "normal":
        return
    try:
        if priority == "idle" and hasattr(os, "sched_setscheduler"):
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, pid, 19)
    except OSError as e:  # the process already ended, or the platform refuses: it goes on as it is
        log.warning("could not lower the priority of process %d: %s", pid, e)


def exit_with_parent() -> None:
    """On Linux, have the kernel kill this process the moment its parent dies (``orphaned`` covers
    the rest: other platforms, and a parent that died before this call)."""
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def orphaned(parent: int) -> bool:
    """True once the process that started us (``parent``, read at start) is gone."""
    return parent > 1 and os.getppid() != parent


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
