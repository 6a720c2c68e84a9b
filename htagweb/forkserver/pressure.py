"""Whether the machine's CPUs are contended: the fork-server's spares are work
ahead of need, done when it takes no CPU time from users.

A crowd's clicks wait behind whatever else is runnable; refilling the pool of
spares meanwhile (a fork, then the new process' first steps, several
milliseconds of CPU each) doubled their slowest replies in the runtime bench.
Linux's pressure stall information (``/proc/pressure/cpu``, "some" line) counts
the microseconds during which some task waited for a CPU: under a small share
of the time elapsed, the machine is calm. Where the file does not exist (a
kernel built without PSI) the machine counts as calm, as before this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

PSI_CPU = Path("/proc/pressure/cpu")
#: seconds over which contention is measured
WINDOW = 0.02
#: share of a window during which some task may wait for a CPU, for a calm machine
CALM = 0.2


class CpuPressure:
    def __init__(self, path: Path = PSI_CPU, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self.available = path.exists()
        #: the window being measured: when it started and the stall total then
        self.since = clock()
        self.stalled = self._read()
        self.calm = True

    def is_calm(self) -> bool:
        """Whether the CPUs were calm over the last window (measured anew once a window has passed)."""
        if not self.available:
            return True
        now = self.clock()
        elapsed = now - self.since
        if elapsed < WINDOW:
            return self.calm
        stalled = self._read()
        # a window long past says nothing of now: start a fresh one, and wait for it
        self.calm = elapsed < 2 * WINDOW and (stalled - self.stalled) / 1e6 < CALM * elapsed
        self.since, self.stalled = now, stalled
        return self.calm

    def _read(self) -> int:
        """Microseconds some task waited for a CPU since boot."""
        try:
            some = self.path.read_text().split("\n", 1)[0]
        except OSError:
            self.available = False
            return 0
        return int(some.rpartition("total=")[2])
