"""The pure decisions of admission.py and connections.py (end to end: test_floods.py, test_connections.py)."""

from __future__ import annotations

import uvicorn

from htagweb import connections
from htagweb.admission import Candidate, NewProcessLimit, address_group, make_room_from, waits_its_turn
from htagweb.connections import ConnectionLimits


def test_an_ipv6_client_counts_by_its_64_and_a_mapped_ipv4_as_itself():
    assert address_group("2001:db8:1:2:aaaa::1") == address_group("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:3::1") != address_group("2001:db8:1:2::1")
    assert address_group("::ffff:192.0.2.7") == "192.0.2.7" == address_group("192.0.2.7")
    assert address_group("not-an-ip") == "not-an-ip"


def test_new_processes_per_address_in_a_sliding_minute():
    limit = NewProcessLimit(2)

    def start(address: str, now: float) -> bool:
        """A new process, where the limit allows it."""
        if not limit.allows(address, now):
            return False
        limit.count(address, now)
        return True

    assert all(limit.allows("192.0.2.1", t) for t in (0.0, 0.5, 0.9))  # asking counts nothing
    assert [start("192.0.2.1", t) for t in (0.0, 1.0, 2.0)] == [True, True, False]
    assert start("192.0.2.2", 2.0)  # another address
    assert not start("192.0.2.1", 59.9)
    assert start("192.0.2.1", 60.0)  # the first spawn left the window
    assert not start("192.0.2.1", 60.5)
    limit = NewProcessLimit(0)
    assert all(start("192.0.2.1", float(t)) for t in range(100))


def test_provisional_first_then_least_recently_active_never_busy_nor_arriving():
    live_old = Candidate("live-old", live=True, busy=False, arriving=False, last_activity=10.0)
    live_new = Candidate("live-new", live=True, busy=False, arriving=False, last_activity=50.0)
    provisional = Candidate("provisional", live=False, busy=False, arriving=False, last_activity=40.0)
    busy = Candidate("busy", live=False, busy=True, arriving=False, last_activity=1.0)
    # given to its user, not answered yet: the oldest and provisional, yet it stays
    arriving = Candidate("arriving", live=False, busy=False, arriving=True, last_activity=0.5)
    assert make_room_from([live_old, live_new, provisional, busy, arriving]) == provisional
    assert make_room_from([live_new, live_old, busy, arriving]) == live_old
    assert make_room_from([busy, arriving, Candidate("b2", True, True, False, 0.0)]) is None


class _Transport:
    """What ConnectionLimits reads of a transport."""

    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed


def test_connections_are_limited_per_address_and_released():
    limits = ConnectionLimits(per_address=2, head_timeout=10, head_size=65536, body_timeout=30)
    first, second, third = _Transport(), _Transport(), _Transport()
    assert limits.admit("10.0.0.1", first) and limits.admit("10.0.0.1", second)
    assert not limits.admit("10.0.0.1", third)
    assert limits.admit("10.0.0.2", third)  # another address has its own
    limits.release("10.0.0.1", first)
    assert limits.admit("10.0.0.1", _Transport())
    assert not limits.admit("10.0.0.1", _Transport())
    # a connection that ended under another protocol (a WebSocket) is never released: found closed
    second.closed = True
    assert limits.admit("10.0.0.1", _Transport())


def test_an_ipv6_client_counts_by_its_64_and_no_limit_is_no_limit():
    limits = ConnectionLimits(per_address=1, head_timeout=10, head_size=65536, body_timeout=30)
    assert limits.admit("2001:db8:1:2::1", _Transport())
    assert not limits.admit("2001:db8:1:2::ffff", _Transport())
    assert limits.admit("2001:db8:1:3::1", _Transport())
    assert limits.admit("", _Transport()) and limits.admit("", _Transport())  # a Unix socket's peer
    unlimited = ConnectionLimits(per_address=0, head_timeout=10, head_size=65536, body_timeout=30)  # behind a proxy
    assert all(unlimited.admit("10.0.0.1", _Transport()) for _ in range(1000))
    assert not unlimited.open


def test_addresses_gone_are_forgotten_at_the_next_sweep(monkeypatch):
    limits = ConnectionLimits(per_address=1, head_timeout=10, head_size=65536, body_timeout=30)
    upgraded = _Transport()
    assert limits.admit("10.0.0.1", upgraded)
    assert not limits.admit("10.0.0.1", _Transport())
    assert limits.refused == {"10.0.0.1"}
    upgraded.closed = True  # its WebSocket ended: no release
    assert "10.0.0.1" in limits.open
    monkeypatch.setattr(connections.time, "monotonic", lambda: limits.swept_at + connections.SWEEP_EVERY)
    assert limits.admit("10.0.0.2", _Transport())
    assert set(limits.open) == {"10.0.0.2"}
    assert not limits.refused


def test_an_address_refused_is_said_once_until_it_holds_fewer(caplog):
    limits = ConnectionLimits(per_address=1, head_timeout=10, head_size=65536, body_timeout=30)
    held = _Transport()
    limits.admit("10.0.0.1", held)
    for _ in range(5):
        assert not limits.admit("10.0.0.1", _Transport())
    limits.release("10.0.0.1", held)
    assert limits.admit("10.0.0.1", _Transport())
    assert not limits.admit("10.0.0.1", _Transport())
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["refused connections from 10.0.0.1"] * 2


def test_a_websocket_is_made_from_a_copy_of_uvicorn_s_config_with_its_message_limit():
    made = []

    class Protocol:
        def __init__(self, config, server_state, app_state):
            made.append((config, server_state, app_state))

    config = uvicorn.Config(app=None, ws_max_size=16 * 2**20)
    config.ws_protocol_class = Protocol
    limits = ConnectionLimits(per_address=1, head_timeout=10, head_size=65536, body_timeout=30, message_size=2**20)
    make = limits.websocket_protocol(config)
    assert limits.websocket_protocol(config) is make  # one copy for every connection
    assert isinstance(make(config=config, server_state="state", app_state={}), Protocol)
    ((limited, server_state, _),) = made
    assert (limited.ws_max_size, server_state, config.ws_max_size) == (2**20, "state", 16 * 2**20)
    config.ws_max_size = 1000  # an operator's lower limit stands
    ConnectionLimits(1, 10, 65536, 30, message_size=2**20).websocket_protocol(config)(config=config, server_state=None, app_state={})
    assert made[-1][0].ws_max_size == 1000


def test_a_new_user_waits_for_processes_starting_before_ending_anyone_live():
    live = Candidate("live", live=True, busy=False, arriving=False, last_activity=1.0)
    provisional = Candidate("provisional", live=False, busy=False, arriving=False, last_activity=2.0)
    arriving = Candidate("arriving", live=False, busy=False, arriving=True, last_activity=3.0)
    assert waits_its_turn(live, [live, arriving], starting=False)
    assert waits_its_turn(live, [live], starting=True)
    assert waits_its_turn(None, [arriving], starting=False)
    assert not waits_its_turn(provisional, [live, provisional, arriving], starting=True)  # provisional: ended at once
    assert not waits_its_turn(live, [live], starting=False)  # nothing to wait for: the least recently active goes
    assert not waits_its_turn(None, [], starting=False)  # all busy: refused, not told to wait

