"""The retry schedule is a pure function: tested with explicit times and random numbers, no clock."""

import pytest

from relay.spool.retry import RetryPolicy, backoff, is_expired, named_wait, next_attempt

pytestmark = pytest.mark.unit

P = RetryPolicy()
T0 = 1_000_000.0


def test_backoff_doubles_from_five_minutes_and_caps_at_4000s():
    assert [backoff(n, P, 0.5) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]
    assert backoff(50, P, 0.5) == 4000


def test_jitter_stays_within_ten_percent():
    assert backoff(1, P, 0.0) == 270
    assert abs(backoff(1, P, 0.999999) - 330) < 0.01
    assert backoff(10, P, 0.0) == 3600


def test_next_attempt_uses_backoff_from_now():
    d = next_attempt(T0 + 10, T0, 1, "451 4.3.0 try later", P, 0.5)
    assert not d.expired and d.next_attempt_at == T0 + 10 + 300 and not d.greylist
    d = next_attempt(T0 + 1000, T0, 3, None, P, 0.5)
    assert d.next_attempt_at == T0 + 1000 + 1200


def test_greylisting_wait_is_honoured():
    d = next_attempt(T0, T0, 1, "Greylisted, please try again in 60 seconds", P, 0.5)
    assert d.greylist and d.next_attempt_at == T0 + 65
    assert named_wait("4.7.1 Greylisting in action, please come back later. try again in 5 minutes") == 300
    assert named_wait("451 4.7.1 Please retry in 300s") == 300
    assert named_wait("450 4.2.0 Recipient address rejected: Greylisted for 120 seconds") == 120
    assert named_wait("451 4.3.0 Temporary failure 2024 server") is None
    assert named_wait(None) is None


def test_expired_after_max_lifetime_and_last_try_at_the_deadline():
    life = P.max_lifetime
    assert next_attempt(T0 + life, T0, 30, None, P).expired
    assert next_attempt(T0 + life + 1, T0, 1, None, P).expired
    d = next_attempt(T0 + life - 100, T0, 30, None, P, 0.5)
    assert not d.expired and d.next_attempt_at == T0 + life - 1
    assert next_attempt(T0 + life - 1, T0, 30, None, P).expired    # the final try failed
    assert is_expired(T0 + life, T0, P) and not is_expired(T0 + life - 1, T0, P)


def test_custom_policy():
    p = RetryPolicy(first=10, cap=25, jitter=0, max_lifetime=100)
    assert [backoff(n, p, 0.9) for n in (1, 2, 3)] == [10, 20, 25]
    assert next_attempt(T0 + 100, T0, 1, None, p).expired
