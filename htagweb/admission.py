"""Who may have a new user process, and who makes room for them: pure decisions,
taken by the fork-server (the one process that sees every spawn).

On the open internet most clients are not users: crawlers, uptime probes,
scanners. Each cookieless page load would cost a process for ``timeout_inactivity``,
so a flood of them could fill ``max_processes`` and lock real users out. Hence:

- a limit on new processes per client address and minute (:class:`NewProcessLimit`), and
  one on the live processes of an address: at it, the address' own processes make room;
- at the cap, a process whose page never went live (no WebSocket, SSE stream or event
  since it was served) is *provisional* and makes room first, then the least recently
  active idle process (:func:`make_room_from`); a 503 only when every process is busy.
  A process given to a user a moment ago that has not answered them yet is *arriving*:
  ending it would refuse that user in place of the new one, so it makes no room, and a new
  user who finds only such processes (or processes still being forked), or else only live
  ones, waits its turn: they will be provisional in a moment, and make room before anyone live.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

WINDOW = 60.0
#: seconds a process given to a user is kept from making room while it has not answered them
#: (a page whose front never connects, a worker killed meanwhile, must not hold a place for ever)
ARRIVAL_GRACE = 2.0


def address_group(address: str) -> str:
    """What one client is: an IPv4 address, or an IPv6 /64 (one host gets a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a Unix socket peer, a test client: as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class NewProcessLimit:
    """At most ``per_minute`` new processes per client in any 60 seconds (0: no limit). A client
    is its :func:`address_group`, which the caller has worked out already. Asking is apart from
    counting: a client told to wait its turn, or refused for want of room, started no process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._spawns: dict[str, deque[float]] = {}

    def allows(self, group: str, now: float) -> bool:
        """Whether the client ``group`` may have one more new process now."""
        if not self.per_minute or not group:
            return True
        times = self._spawns.get(group)
        while times and now - times[0] >= WINDOW:
            times.popleft()
        return times is None or len(times) < self.per_minute

    def count(self, group: str, now: float) -> None:
        """A new process started for the client ``group``."""
        if not self.per_minute or not group:
            return
        self._spawns.setdefault(group, deque()).append(now)
        if len(self._spawns) > 10000:  # forget the clients that went quiet
            self._spawns = {k: v for k, v in self._spawns.items() if v and now - v[-1] < WINDOW}


@dataclass(frozen=True)
class Candidate:
    """A user process as the cap sees it."""

    key: str
    live: bool  # its page opened a WebSocket or SSE stream, or sent an event
    busy: bool  # a handler is running
    arriving: bool  # given to its user under ARRIVAL_GRACE ago, and has not answered them yet
    last_activity: float  # monotonic time of its last exchange
    address: str = ""  # its first page's client (address_group), "" if unknown


def make_room_from(candidates: Iterable[Candidate]) -> Candidate | None:
    """The process that gives way to a new user: provisional ones first, then live ones,
    each the least recently active first; never a busy or an arriving one. None: all are."""
    idle = [c for c in candidates if not c.busy and not c.arriving]
    return min(idle, key=lambda c: (c.live, c.last_activity), default=None)


def waits_its_turn(victim: Candidate | None, candidates: Iterable[Candidate], starting: bool) -> bool:
    """Whether a new user waits rather than end ``victim`` (None: none can be ended): while processes
    are ``starting`` (being forked) or arriving, they will be provisional in a moment, and make room
    before anyone live."""
    return (victim is None or victim.live) and (starting or any(candidate.arriving for candidate in candidates))
