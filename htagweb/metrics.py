"""The server-wide counters of ``/_htagweb/metrics``: their names, in one table.

The fork-server keeps them (it sees every user process and every worker); a
front adds to those of :data:`FRONT_COUNTERS` on its error paths.
"""

from __future__ import annotations

from .ends import End

COUNTERS = {
    "spawns": "User processes created.",
    "expiries": "User processes ended after timeout_inactivity.",
    "kills": "User processes ended by the fork-server (interaction timeout, limits, source reloaded, htagweb kill, shutdown grace).",
    "interaction_timeouts": "Handlers that ran longer than timeout_interaction.",
    "resource_kills": "User processes killed over their memory or open-files limit.",
    "crashes": "User processes that died on their own (an exception, a signal, an app that could not be built).",
    "bridge_errors": "Exchanges cut because their user process died.",
    "parano_rejections": "Parano messages refused (tampered, replayed, malformed, expired ticket...).",
    "evictions": "Idle or provisional user processes ended to make room for a new user at max_processes.",
    "address_refusals": "New user processes refused over new_processes_per_minute from one address.",
    "fork_failures": "New user processes that could not be had (a fork refused, a zygote stuck): their users were asked to try again.",
}

#: counted by the fronts through the fork-server's ``count`` request
FRONT_COUNTERS = frozenset({"bridge_errors", "parano_rejections"})

#: the counter each end adds to when its process is reaped (kills by the fork-server add to ``kills``
#: as well; evictions are counted when decided)
BY_END = {
    End.EXPIRED: "expiries",
    End.CRASHED: "crashes",
    End.BROKEN: "crashes",
    End.INTERACTION_TIMEOUT: "interaction_timeouts",
    End.MEMORY_LIMIT: "resource_kills",
    End.OPEN_FILES_LIMIT: "resource_kills",
}
#: ends the fork-server decided (an eviction is counted as such only, at the moment it is decided)
KILLS = frozenset({End.RELOADED, End.KILLED, End.INTERACTION_TIMEOUT, End.MEMORY_LIMIT, End.OPEN_FILES_LIMIT, End.SHUTDOWN_GRACE})
