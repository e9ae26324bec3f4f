"""relay/delivery/destinations.py: parking dead destinations, one probe per interval (pure, no network)."""

import pytest

from relay.delivery.destinations import PROBE_FIRST, PROBE_WAIT, Destinations
from relay.errors import ConnectError

pytestmark = pytest.mark.unit

ERR = ConnectError(421, "4.4.1", "connection refused", True, stage="connect")


def test_unreachable_parks_probe_backs_off_and_reachable_unparks():
    d = Destinations(cap=4000.0)
    assert d.admit("mx:x.test", 0.0) == "send"
    assert d.after("mx:x.test", ERR, 100.0) is False                 # parked
    assert d.admit("mx:x.test", 101.0) == "wait"
    assert d.next_probe("mx:x.test", 101.0) == pytest.approx(100.0 + PROBE_FIRST)
    d.handed_back("mx:x.test", 7)
    assert d.status()[0].waiting == 7 and d.status()[0].last_error.startswith("421 4.4.1")
    assert d.admit("mx:x.test", 100.0 + PROBE_FIRST) == "probe"      # exactly one probe
    assert d.admit("mx:x.test", 100.0 + PROBE_FIRST) == "wait"
    assert d.next_probe("mx:x.test", 200.0) == pytest.approx(200.0 + PROBE_WAIT)   # while it runs
    d.after("mx:x.test", ERR, 200.0)                                  # the probe failed: twice as long
    assert d.status()[0].failures == 2 and d.next_probe("mx:x.test", 201.0) == pytest.approx(200.0 + 60)
    assert d.admit("mx:x.test", 260.0) == "probe"
    assert d.after("mx:x.test", None, 261.0) is True                  # reached: free again
    assert d.admit("mx:x.test", 262.0) == "send" and len(d) == 0


def test_probe_interval_is_capped_and_an_unfinished_probe_can_be_retried():
    d = Destinations(cap=100.0)
    for i in range(10):
        d.after("route:hub", ERR, float(i))
    assert d.next_probe("route:hub", 9.0) == pytest.approx(9.0 + 100.0)
    assert d.admit("route:hub", 500.0) == "probe"
    d.release_probe("route:hub")                                      # cancelled: no verdict
    assert d.admit("route:hub", 500.0) == "probe"
    assert d.status()[0].as_dict()["destination"] == "route:hub"
