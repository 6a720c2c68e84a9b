"""The events of one browser page, delivered in the order the page numbered them.

In parano mode each htag event carries its page's event number (crypto/PROTOCOL.md
§7), whatever carries it: a WebSocket message, or an event POST that is an HTTP
channel of its own and may reach any worker. The user process is where a page's
events converge, so the order is checked here, end to end: event ``n`` waits for
``n-1`` (two POSTs in flight may arrive swapped), a missing one ends the page, a
number seen before (a replay) is refused, unless the process ran an event of its callback
id: an event sent again once its WebSocket was cut, answered, not run.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

#: seconds an early event waits for the one before it
WAIT = 5.0
#: marks an answer that refuses an event for its order: the parano layer tells the page, sealed
ORDER_HEADER = "x-htagweb-refused"
#: pages remembered per process (one per tab and reload): the oldest are forgotten
MAX_PAGES = 256


class _Page:
    def __init__(self) -> None:
        self.delivered = 0
        self.missing: int | None = None  # an event that never came: the page is over
        self.changed = asyncio.Condition()


class PageOrder:
    def __init__(self, wait: float = WAIT) -> None:
        self.wait = wait
        self.pages: OrderedDict[str, _Page] = OrderedDict()

    def register(self, page: str) -> None:
        """A page was loaded: its events are numbered from 1."""
        if page not in self.pages:
            self.pages[page] = _Page()
            while len(self.pages) > MAX_PAGES:
                self.pages.popitem(last=False)

    async def admit(self, page: str, seq: int, ran: bool = False) -> str | None:
        """Wait for event ``seq`` of ``page`` to be next; None when it is delivered,
        else why it is refused. ``ran``: the process ran an event of this one's callback
        id; a number delivered before is then an event sent again once its WebSocket was
        cut (crypto/PROTOCOL.md §7), admitted to be answered, not run."""
        state = self.pages.get(page)
        if state is None:
            return "this page is not known here (it was loaded before this process started): reload it"
        self.pages.move_to_end(page)
        deadline = time.monotonic() + self.wait
        async with state.changed:
            if ran and state.missing is None and seq <= state.delivered:
                return None
            while state.missing is None and seq > state.delivered + 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    state.missing = state.delivered + 1
                    state.changed.notify_all()
                    break
                try:
                    await asyncio.wait_for(state.changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            if state.missing is not None:
                return f"event {state.missing} of this page never arrived (lost or dropped on the way): out of order, reload the page"
            if seq <= state.delivered:
                return f"event {seq} of this page was delivered already (a replay)"
            state.delivered = seq
            state.changed.notify_all()
            return None
