"""Linux's KSM for a benchmark run (``--merge-memory``): turned on while the run lasts,
as it was afterwards. It is the machine's switch (root only), which an operator who
sets ``merge_memory`` turns on; htagweb only opts its processes in."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

KSM = Path("/sys/kernel/mm/ksm")
#: pages ksmd looks at each time it wakes (every 20 ms by default) while a benchmark waits for it
#: to merge: fifty times Linux's default of 100, so that a run's idle users are merged in seconds
SETTLING_PAGES_TO_SCAN = 5000
#: full scans over every page opted in after which a moment's idle processes are merged (a page is
#: merged once it has held the same bytes over two scans)
SETTLING_SCANS = 3


@contextlib.contextmanager
def ksm_settings(**settings: int) -> Iterator[None]:
    """``settings`` written to ``/sys/kernel/mm/ksm`` for a while, then those of before."""
    before = {name: (KSM / name).read_text().strip() for name in settings}
    try:
        for name, value in settings.items():
            (KSM / name).write_text(str(value))
    except PermissionError:
        raise SystemExit(f"--merge-memory turns on Linux's KSM ({KSM}/run): run the benchmark as root") from None
    try:
        yield
    finally:
        for name, value in reversed(before.items()):
            (KSM / name).write_text(value)


def ksm_running() -> contextlib.AbstractContextManager[None]:
    """ksmd on, at the machine's own pace (Linux's default: 100 pages each 20 ms)."""
    return ksm_settings(run=1)


def settle(timeout: float = 600.0) -> float:
    """Let ksmd merge what is idle now, as it would at its own pace given time: faster, over
    ``SETTLING_SCANS`` full scans; the seconds it took."""
    start = time.monotonic()
    with ksm_settings(pages_to_scan=SETTLING_PAGES_TO_SCAN):
        target = int((KSM / "full_scans").read_text()) + SETTLING_SCANS
        while int((KSM / "full_scans").read_text()) < target:
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"ksmd did not finish {SETTLING_SCANS} full scans in {timeout:g} s")
            time.sleep(0.2)
    return time.monotonic() - start


def ksmd_cpu_seconds() -> float:
    """CPU time the kernel's ksmd thread has used since boot."""
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != "ksmd":
                continue
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # a process that ended meanwhile
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError("no ksmd thread: this kernel has no KSM")
