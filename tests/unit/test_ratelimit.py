"""Rate-limited log lines (router/ratelimit.py): time is an argument."""

from __future__ import annotations

import logging

import pytest

from router.errors import LocalProtocolError
from router.ratelimit import LogLimiter, RateLimitedLog


def test_first_burst_per_interval_then_a_count() -> None:
    lim = LogLimiter(burst=3, interval=10.0)
    assert [lim.allow("k", 0.0) for _ in range(3)] == [0, 0, 0]
    assert all(lim.allow("k", 1.0 + i / 1000) is None for i in range(1000))
    assert lim.allow("k", 9.9) is None
    assert lim.allow("k", 10.0) == 1001  # the next window's first line carries the count
    assert lim.allow("k", 10.1) == 0
    assert lim.statistics().suppressed == 1001 and lim.statistics().logged == 5


def test_keys_are_independent() -> None:
    lim = LogLimiter(burst=1, interval=10.0)
    assert lim.allow(("refusing", "10.0.0.1"), 0.0) == 0
    assert lim.allow(("refusing", "10.0.0.1"), 0.0) is None
    assert lim.allow(("refusing", "10.0.0.2"), 0.0) == 0


def test_key_table_is_bounded_and_evicted_counts_are_still_told() -> None:
    lim = LogLimiter(burst=1, interval=100.0, max_keys=4)
    lim.allow("a", 0.0)
    assert lim.allow("a", 0.0) is None  # one suppressed for "a"
    told = [lim.allow(i, 1.0) for i in range(1000)]
    assert lim.statistics().keys == 4
    assert told.count(1) == 1 and sum(t or 0 for t in told) == 1  # "a"'s count, told once


def test_evicted_count_is_reported_on_the_next_line() -> None:
    lim = LogLimiter(burst=1, interval=100.0, max_keys=1)
    lim.allow("a", 0.0)
    lim.allow("a", 0.0)
    lim.allow("a", 0.0)  # two suppressed
    assert lim.allow("b", 1.0) == 2  # "a" evicted: its count goes out with "b"'s line


def test_bad_settings() -> None:
    with pytest.raises(LocalProtocolError):
        LogLimiter(burst=0)


def test_logger_wrapper_writes_bounded_lines(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("test.ratelimit"), LogLimiter(burst=2, interval=60))
    caplog.set_level(logging.INFO, logger="test.ratelimit")
    for i in range(61_018):
        log.warning(("refusing", "10.0.0.9"), i / 1000, "<-[%s] refusing connection: %s",
                    "10.0.0.9:1234", "too many connection attempts")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # two per minute of the storm's 61 s
    assert lines[2].endswith("(suppressed 59,998 similar messages)")
    assert log.info("other", 0.0, "x")  # another key has its own budget
