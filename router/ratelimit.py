"""Rate-limited log lines: a storm of alike warnings costs a few lines, with a count.

A reconnect storm once wrote 61,018 ``refusing connection`` warnings (10 MB). Here each
message has a *key* (what it is about, e.g. ``("refusing", remote IP)``): per key, the
first ``burst`` messages of each ``interval`` are logged, the rest are counted, and the
first message logged after that says how many were left out::

    refusing connection: too many connection attempts (suppressed 4,210 similar messages)

Sans-IO: :class:`LogLimiter` decides, taking ``now`` (seconds, any monotonic clock) as an
argument; :class:`RateLimitedLog` puts it in front of a :class:`logging.Logger`. At most
``max_keys`` keys are tracked; when a storm brings more, the oldest key's window is
dropped (its count, if any, goes to a shared overflow key, so nothing vanishes unsaid).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from router.errors import LocalProtocolError

DEFAULT_BURST = 5  # lines per key per interval
DEFAULT_INTERVAL = 60.0  # seconds
DEFAULT_MAX_KEYS = 256
OVERFLOW_KEY = ("*overflow*",)


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


@dataclass(frozen=True)
class LimiterStatistics:
    """Lines let through and left out since start."""

    logged: int
    suppressed: int
    keys: int


class LogLimiter:
    """Whether one more message for ``key`` may be logged now (see the module docstring)."""

    def __init__(self, *, burst: int = DEFAULT_BURST, interval: float = DEFAULT_INTERVAL,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if burst < 1 or interval <= 0 or max_keys < 1:
            raise LocalProtocolError("log limiter needs burst >= 1, interval > 0, max_keys >= 1")
        self._burst = burst
        self._interval = interval
        self._max_keys = max_keys
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()
        self._logged = 0
        self._suppressed = 0
        self._carried = 0  # counts of evicted keys, reported with the next line of any key

    def allow(self, key: Hashable, now: float) -> int | None:
        """None: leave this message out (counted). Otherwise log it, saying that this
        many similar messages were left out before it (0: none)."""
        window = self._windows.get(key)
        report = 0
        if window is None or now - window.start >= self._interval:
            report = window.suppressed if window is not None else 0
            window = _Window(start=now)
            self._windows[key] = window
            self._evict()
        self._windows.move_to_end(key)
        if window.logged >= self._burst:
            window.suppressed += 1
            self._suppressed += 1
            return None
        window.logged += 1
        self._logged += 1
        report += self._carried
        self._carried = 0
        return report

    def _evict(self) -> None:
        while len(self._windows) > self._max_keys:
            _, oldest = self._windows.popitem(last=False)
            self._carried += oldest.suppressed

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(self._logged, self._suppressed, len(self._windows))


class RateLimitedLog:
    """A logger whose lines go through a :class:`LogLimiter` (one per instance)."""

    def __init__(self, logger: logging.Logger, limiter: LogLimiter | None = None) -> None:
        self.logger = logger
        self.limiter = limiter if limiter is not None else LogLimiter()

    def log(self, level: int, key: Hashable, now: float, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` is over its budget; True if logged."""
        if not self.logger.isEnabledFor(level):
            return False
        left_out = self.limiter.allow(key, now)
        if left_out is None:
            return False
        if left_out:
            msg = f"{msg} (suppressed {left_out:,} similar messages)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, now: float, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, now, msg, *args)

    def info(self, key: Hashable, now: float, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, now, msg, *args)
