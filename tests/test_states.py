"""The recipient state machine (store/states.py): every allowed move, and every other one raises."""

import itertools

import pytest

from store.states import ALLOWED, NEW, IllegalTransition, Status, can_transition, message_status, transition

pytestmark = pytest.mark.unit

# The moves the spool makes, written out independently of ALLOWED: (from, to, why)
EXPECTED = {
    (NEW, "queued"), (NEW, "scheduled"),
    ("scheduled", "queued"), ("scheduled", "sending"), ("scheduled", "cancelled"), ("scheduled", "bounced"),
    ("scheduled", "scheduled"), ("queued", "scheduled"), ("deferred", "scheduled"),     # (re)scheduling
    ("queued", "queued"), ("queued", "sending"), ("queued", "cancelled"), ("queued", "bounced"),
    ("deferred", "queued"), ("deferred", "sending"), ("deferred", "cancelled"), ("deferred", "bounced"),
    ("sending", "delivered"), ("sending", "deferred"), ("sending", "bounced"), ("sending", "failed"),
    ("sending", "queued"), ("sending", "sending"),
    ("delivered", "bounced"), ("delivered", "queued"),
    ("bounced", "bounced"), ("bounced", "queued"),
    ("failed", "bounced"), ("failed", "queued"),
    ("cancelled", "queued"),
}


def test_allowed_moves_are_exactly_the_expected_ones():
    for current, new in itertools.product((NEW, *Status.ALL), Status.ALL):
        assert can_transition(current, new) == ((current, new) in EXPECTED), (current, new)
        if (current, new) in EXPECTED:
            assert transition(current, new) == new
        else:
            with pytest.raises(IllegalTransition) as exc:
                transition(current, new)
            assert exc.value.current == current and exc.value.new == new
            assert "illegal recipient transition" in str(exc.value)


@pytest.mark.parametrize("current,new", [
    ("delivered", "deferred"),     # a late 4xx must not undo a delivery
    ("delivered", "sending"),      # a delivered recipient is never claimed again
    ("cancelled", "delivered"),    # a cancelled recipient is not delivered behind the admin's back
    ("failed", "delivered"),
    ("sending", "cancelled"),      # cancel is refused while a transaction is running
    (NEW, "delivered"),
    ("queued", "nonsense"),
])
def test_named_illegal_moves_raise(current, new):
    with pytest.raises(IllegalTransition):
        transition(current, new)


def test_every_status_has_a_row_and_final_statuses_only_reopen_by_resend_or_bounce():
    assert set(ALLOWED) == {NEW, *Status.ALL}
    for final in Status.FINAL:
        assert ALLOWED[final] <= {Status.QUEUED, Status.BOUNCED}


def test_message_status_is_the_least_final_recipient_status():
    assert message_status(["delivered", "deferred"]) == "deferred"
    assert message_status(["delivered", "bounced"]) == "bounced"
    assert message_status(["sending", "queued"]) == "sending"
    assert message_status([]) == "unknown"
