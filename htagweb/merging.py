"""Memory merging (Linux's KSM): the pages user processes hold alike, kept once.

A user process is a fork of the fork-server, and most of the 5 MB an idle one
holds alone (bench/RESULTS.md, "USS per idle user") are pages it wrote that hold
the same bytes as the other users' of the same app: reference counts raised and
dropped again, the interpreter's counters, the same app built the same way at
the same addresses. Linux's kernel same-page merging finds such pages and keeps
one copy, copy-on-write. A user process opts its anonymous memory in
(``PR_SET_MEMORY_MERGE``, Linux 6.4) once its arrival is over: not before, since
merging a spare's pages would undo its rehearsal (the copies it made so that its
user does not wait for them).

Off unless ``merge_memory`` is set: the machine's ``ksmd`` must run (a root's
switch, ``/sys/kernel/mm/ksm/run``), it scans with CPU time of its own, and a
merged page is a timing side channel between processes (crypto/THREAT_MODEL.md).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

PR_SET_MEMORY_MERGE, PR_GET_MEMORY_MERGE = 67, 68
KSM_RUN = Path("/sys/kernel/mm/ksm/run")
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def merge_memory() -> None:
    """Opt this process' memory in (a kernel that cannot refuses: the fork-server said so at its start)."""
    _prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0)


def why_unmerged(run_file: Path = KSM_RUN) -> str | None:
    """Why processes that opt in would not be merged on this machine, in words for
    the log; None when they will be."""
    if _prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) < 0:
        reason = os.strerror(ctypes.get_errno())
        return f"this kernel cannot merge a process' memory (prctl PR_SET_MEMORY_MERGE: {reason}; Linux 6.4 or later, with KSM)"
    try:
        state = run_file.read_text().strip()
    except OSError as exc:
        return f"this machine has no KSM ({run_file}: {exc.strerror})"
    if state == "1":
        return None
    return f"KSM does not run on this machine ({run_file} is {state}): nothing is merged until root writes 1 to it"
