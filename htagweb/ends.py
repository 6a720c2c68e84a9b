"""Why a user process ended, as codes: the exit codes a user process ends with,
and the reasons the fork-server tells a front, which turns them into words for
the user (see :mod:`htagweb.front`).

A user process that ends on its own says why with its exit code; one the
fork-server ends is remembered with the reason it was ended for. Anything else
(an exit code not listed, a signal nobody sent) is a crash.
"""

from __future__ import annotations

import enum
import os


class Exit(enum.IntEnum):
    """Exit codes of a user process (and of a spare), one per cause."""

    #: asked to end (SIGTERM: server stop, reload, ``htagweb kill``), on_destroy ran
    STOPPED = 0
    #: idle for ``timeout_inactivity``, on_destroy ran
    EXPIRED = 10
    #: its app could not be built: the user was shown why, the next page starts afresh
    BROKEN = 11
    #: an exception (or SystemExit) escaped the process' own loop
    CRASHED = 12
    #: its fork-server was gone (killed, or chosen by the OOM killer)
    ORPHANED = 13


class End(str, enum.Enum):
    """Why a user process is gone, as the fork-server tells a front."""

    EXPIRED = "expired"
    STOPPED = "stopped"
    RELOADED = "reloaded"
    KILLED = "killed"
    #: ended to make room for a new user at max_processes (idle, or its page never went live)
    EVICTED = "evicted"
    BROKEN = "broken"
    CRASHED = "crashed"
    INTERACTION_TIMEOUT = "interaction_timeout"
    MEMORY_LIMIT = "memory_limit"
    OPEN_FILES_LIMIT = "open_files_limit"
    SHUTDOWN_GRACE = "shutdown_grace"
    #: unknown to this fork-server: the process belonged to one that is gone
    LOST = "lost"


#: what a user process that ended on its own said with its exit code
BY_EXIT_CODE = {Exit.STOPPED: End.STOPPED, Exit.EXPIRED: End.EXPIRED, Exit.BROKEN: End.BROKEN, Exit.ORPHANED: End.LOST}


def from_status(status: int) -> End:
    """The end a ``waitpid`` status tells of, for a process nobody ended."""
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) in BY_EXIT_CODE:
        return BY_EXIT_CODE[Exit(os.WEXITSTATUS(status))]
    return End.CRASHED


def describe(status: int) -> str:
    """A ``waitpid`` status in words, for the log."""
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"
