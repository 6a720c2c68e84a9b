"""The pure decisions of admission.py (the end-to-end behaviour is in test_floods.py)."""

from __future__ import annotations

from htagweb.admission import Candidate, NewProcessLimit, address_group, make_room_from


def test_an_ipv6_client_counts_by_its_64_and_a_mapped_ipv4_as_itself():
    assert address_group("2001:db8:1:2:aaaa::1") == address_group("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:3::1") != address_group("2001:db8:1:2::1")
    assert address_group("::ffff:192.0.2.7") == "192.0.2.7" == address_group("192.0.2.7")
    assert address_group("not-an-ip") == "not-an-ip"


def test_new_processes_per_address_in_a_sliding_minute():
    limit = NewProcessLimit(2)
    assert [limit.admit("192.0.2.1", t) for t in (0.0, 1.0, 2.0)] == [True, True, False]
    assert limit.admit("192.0.2.2", 2.0)  # another address
    assert not limit.admit("192.0.2.1", 59.9)
    assert limit.admit("192.0.2.1", 60.0)  # the first spawn left the window
    assert not limit.admit("192.0.2.1", 60.5)
    unlimited = NewProcessLimit(0)
    assert all(unlimited.admit("192.0.2.1", float(t)) for t in range(100))


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
