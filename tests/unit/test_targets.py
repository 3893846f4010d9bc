"""The connection maker (router.mesh.targets): targets, backoff, limits, discovery, status."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import MeshTimings
from router.errors import ConfigError, LocalProtocolError
from router.mesh.names import PeerName
from router.mesh.targets import (
    MAX_DISCOVERED_TARGETS,
    AcceptLimiter,
    BackoffPolicy,
    ConnectionMaker,
    format_utc,
    parse_address,
)

US = PeerName(0x0200_0000_0001)
P2 = PeerName(0x0200_0000_0002)
P3 = PeerName(0x0200_0000_0003)
NO_JITTER = BackoffPolicy(jitter=0.0)
WALL = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def make(
    *,
    policy: BackoffPolicy = NO_JITTER,
    conn_limit: int = 200,
    discovery: bool = True,
    seed: int = 1,
    max_targets: int = 10_000,
) -> ConnectionMaker:
    return ConnectionMaker(
        ourself=US, port=6783, discovery=discovery, conn_limit=conn_limit, policy=policy,
        rng=random.Random(seed), now=0.0, max_targets=max_targets,
    )


def fail_once(cm: ConnectionMaker, addr: str, now: float) -> float:
    """Dial ``addr`` (due at ``now``), fail it, return the delay until its retry."""
    assert cm.dials_due(now) == [addr]
    cm.dial_failed(addr, now, "connection refused", retry=True)
    return cm.deadline() - now


# -- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalised", "port_given"),
    [
        ("10.0.0.1", "10.0.0.1:6783", False),
        (" 10.0.0.1:7000 ", "10.0.0.1:7000", True),
        ("[fd00::1]", "[fd00::1]:6783", False),
        ("[FD00:0::1]:7000", "[fd00::1]:7000", True),
        ("Host-1.Example.", "host-1.example:6783", False),
        ("h2:1", "h2:1", True),
    ],
)
def test_parse_address_normalises(text: str, normalised: str, port_given: bool) -> None:
    addr = parse_address(text, default_port=6783)
    assert str(addr) == normalised
    assert addr.port_given is port_given


@pytest.mark.parametrize(
    "text",
    ["", "   ", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:http", "300.1.1.1",
     "1.2.3", "fd00::1", "[fd00::1", "[fd00::1]x", "[nothex::]:1", "-bad.example", "a_b",
     "a..b", "x" * 64 + ".example", "host:1:2", "h:\u0661\u0662", "h:\u00b2", "\u0661.1.1.1"],
)
def test_bad_addresses_raise_config_error_naming_them(text: str) -> None:
    cm = make()
    with pytest.raises(ConfigError) as info:
        cm.add_targets(["10.0.0.9", text], replace=False)
    assert repr(text) in str(info.value)
    assert cm.direct_targets() == []  # nothing half-added


_address_like = st.from_regex(r"\[?[0-9a-fA-F:.%\]]{0,30}(:[0-9]{0,6})?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | _address_like)
def test_fuzz_parse_address_raises_only_config_error(text: str) -> None:
    try:
        addr = parse_address(text, default_port=6783)
    except ConfigError:
        return
    assert parse_address(str(addr), default_port=1) == addr.__class__(addr.host, addr.port, True)


# -- direct targets -----------------------------------------------------------------------


def test_add_targets_normalises_dedups_and_dials_at_once() -> None:
    cm = make()
    assert cm.add_targets(["10.0.0.2", "10.0.0.2:6783", "[::1]:7"], replace=False) == [
        "10.0.0.2:6783", "[::1]:7",
    ]
    assert cm.direct_targets() == ["10.0.0.2:6783", "[::1]:7"]
    assert cm.deadline() == 0.0
    assert sorted(cm.dials_due(0.0)) == ["10.0.0.2:6783", "[::1]:7"]
    assert cm.dials_due(0.0) == []  # in flight now
    assert cm.deadline() == math.inf


def test_replace_drops_old_targets_and_forget_removes() -> None:
    cm = make()
    cm.add_targets(["10.0.0.2", "10.0.0.3"], replace=False)
    cm.add_targets(["10.0.0.4"], replace=True)
    assert cm.direct_targets() == ["10.0.0.4:6783"]
    assert cm.dials_due(0.0) == ["10.0.0.4:6783"]
    cm.forget(["10.0.0.4"])
    assert cm.direct_targets() == []
    cm.dial_failed("10.0.0.4:6783", 1.0, "refused", retry=True)
    assert cm.deadline() == math.inf  # forgotten: not retried
    assert cm.target_statuses(1.0, WALL) == []
    cm.forget(["10.0.0.99"])  # unknown: no-op
    with pytest.raises(ConfigError):
        cm.forget(["bad address"])


def test_forget_keeps_the_live_connection_but_does_not_redial() -> None:
    cm = make()
    cm.add_targets(["10.0.0.2"], replace=False)
    (addr,) = cm.dials_due(0.0)
    cm.connected(addr, P2, 1.0, outbound=True)
    cm.forget([addr])
    assert cm.statistics().connections == 1
    cm.disconnected(addr, P2, 5.0, "peer closed")
    assert cm.dials_due(100.0) == []
    assert cm.deadline() == math.inf


def test_too_many_targets() -> None:
    cm = make(max_targets=2)
    cm.add_targets(["10.0.0.1", "10.0.0.2"], replace=False)
    with pytest.raises(ConfigError, match="too many"):
        cm.add_targets(["10.0.0.3"], replace=False)
    assert cm.add_targets(["10.0.0.3"], replace=True) == ["10.0.0.3:6783"]


def test_readding_a_waiting_target_makes_it_due_now() -> None:
    cm = make()
    cm.add_targets(["10.0.0.2"], replace=False)
    for now in (0.0, 10.0, 30.0):
        cm.dials_due(now)
        cm.dial_failed("10.0.0.2:6783", now, "refused", retry=True)
    assert cm.deadline() == 34.5  # 30 + 2 * 1.5 * 1.5
    assert cm.dials_due(31.0) == []
    cm.add_targets(["10.0.0.2:6783"], replace=False)
    assert cm.dials_due(31.0) == ["10.0.0.2:6783"]
    cm.dial_failed("10.0.0.2:6783", 31.0, "refused", retry=True)
    assert cm.deadline() == 33.0  # backoff restarted too


# -- backoff ------------------------------------------------------------------------------


def test_backoff_sequence_without_jitter_grows_by_half_and_caps() -> None:
    cm = make()
    addr = cm.add_targets(["10.0.0.2"], replace=False)[0]
    now, delays = 0.0, []
    for _ in range(20):
        delay = fail_once(cm, addr, now)
        delays.append(delay)
        now += delay
    assert delays[:5] == pytest.approx([2.0, 3.0, 4.5, 6.75, 10.125])
    assert max(delays) == 360.0
    assert delays[-1] == 360.0
    assert all(b >= a for a, b in itertools.pairwise(delays))


def test_backoff_jitter_stays_within_bounds_and_varies() -> None:
    policy = BackoffPolicy()  # jitter 0.1
    cm = make(policy=policy, seed=42)
    addr = cm.add_targets(["10.0.0.2"], replace=False)[0]
    now, base = 0.0, 2.0
    ratios = []
    for _ in range(25):
        delay = fail_once(cm, addr, now)
        assert base * 0.9 <= delay <= min(360.0, base * 1.1)
        ratios.append(delay / base)
        now += delay
        base = min(360.0, base * 1.5)
    assert len({round(r, 6) for r in ratios}) > 10  # really jittered


def test_backoff_is_reproducible_with_the_same_seed() -> None:
    def delays(seed: int) -> list[float]:
        cm = make(policy=BackoffPolicy(), seed=seed)
        addr = cm.add_targets(["10.0.0.2"], replace=False)[0]
        now, out = 0.0, []
        for _ in range(5):
            out.append(fail_once(cm, addr, now))
            now += out[-1]
        return out

    assert delays(7) == delays(7)
    assert delays(7) != delays(8)


def test_policy_from_timings_and_validation() -> None:
    assert BackoffPolicy.from_timings(MeshTimings()) == BackoffPolicy()
    with pytest.raises(LocalProtocolError):
        BackoffPolicy(initial=10.0, max=5.0)
    with pytest.raises(LocalProtocolError):
        BackoffPolicy(jitter=1.5)


def test_long_lived_connection_resets_backoff() -> None:
    cm = make()
    addr = cm.add_targets(["10.0.0.2"], replace=False)[0]
    now = 0.0
    for _ in range(4):
        now += fail_once(cm, addr, now)
    assert cm.dials_due(now) == [addr]
    cm.connected(addr, P2, now, outbound=True)
    cm.disconnected(addr, P2, now + 60.0, "connection reset")
    now += 60.0
    assert cm.deadline() == now  # redialled at once
    assert fail_once(cm, addr, now) == 2.0  # and the sequence starts over


def test_short_lived_connection_keeps_backing_off() -> None:
    cm = make()
    addr = cm.add_targets(["10.0.0.2"], replace=False)[0]
    now = fail_once(cm, addr, 0.0)  # 2
    now += fail_once(cm, addr, now)  # 3
    assert cm.dials_due(now) == [addr]
    cm.connected(addr, P2, now, outbound=True)
    cm.disconnected(addr, P2, now + 59.0, "connection reset")
    assert cm.deadline() - (now + 59.0) == 4.5


# -- never retried --------------------------------------------------------------------------


def test_retry_never_stops_dialling_until_added_again() -> None:
    cm = make()
    addr = cm.add_targets(["10.0.0.1"], replace=False)[0]
    assert cm.dials_due(0.0) == [addr]
    cm.dial_failed(addr, 0.5, "cannot connect to ourself", retry=False)
    assert cm.deadline() == math.inf
    assert cm.dials_due(1000.0) == []
    (line,) = cm.target_statuses(1000.0, WALL)
    assert (line.state, line.info, line.retry) == ("failed", "cannot connect to ourself", "never")
    assert cm.statistics().never == 1
    cm.add_targets([addr], replace=False)  # the user asks again: one more try
    assert cm.dials_due(1001.0) == [addr]


def test_our_own_discovered_address_is_never_dialled_in_a_loop() -> None:
    cm = make()
    cm.set_discovered(["10.0.0.1:6783"])  # owner unknown: it is us, the handshake will say
    assert cm.dials_due(0.0) == ["10.0.0.1:6783"]
    cm.dial_failed("10.0.0.1:6783", 0.1, "cannot connect to ourself", retry=False)
    cm.set_discovered([])
    cm.set_discovered(["10.0.0.1:6783"])  # gossip brings it back
    assert cm.dials_due(1e6) == []
    assert cm.deadline() == math.inf
    cm.set_discovered({"10.0.0.7:6783": US})  # known to be ours: not even tried
    assert cm.dials_due(1e6) == []


# -- limits ---------------------------------------------------------------------------------


def test_conn_limit_counts_live_and_in_flight() -> None:
    cm = make(conn_limit=2)
    cm.add_targets([f"10.0.0.{i}" for i in range(2, 7)], replace=False)
    first = cm.dials_due(0.0)
    assert len(first) == 2
    assert cm.dials_due(0.0) == []
    assert cm.deadline() == math.inf  # at the limit: wait for an event
    cm.connected(first[0], P2, 1.0, outbound=True)
    cm.dial_failed(first[1], 1.0, "refused", retry=True)
    assert cm.room() == 1
    (third,) = cm.dials_due(1.0)
    assert third not in first
    assert cm.room() == 0
    cm.disconnected(first[0], P2, 2.0, "closed")
    assert len(cm.dials_due(2.0)) == 1


def test_direct_targets_are_dialled_before_discovered_ones() -> None:
    cm = make(conn_limit=1)
    cm.set_discovered(["10.0.0.5:6783"])
    cm.add_targets(["10.0.0.9"], replace=False)
    assert cm.dials_due(0.0) == ["10.0.0.9:6783"]


def test_portless_target_is_not_dialled_while_that_host_is_connected_to_us() -> None:
    cm = make()
    cm.add_targets(["10.0.0.2", "10.0.0.3:6783"], replace=False)
    cm.connected("10.0.0.2:40001", P2, 0.0, outbound=False)
    cm.connected("10.0.0.3:40002", P3, 0.0, outbound=False)
    assert cm.dials_due(0.0) == ["10.0.0.3:6783"]  # an explicit port is always dialled
    cm.disconnected("10.0.0.2:40001", P2, 1.0, "closed", inbound=True)
    assert cm.dials_due(1.0) == ["10.0.0.2:6783"]


# -- discovery ------------------------------------------------------------------------------


def test_discovery_off_ignores_discovered_addresses() -> None:
    cm = make(discovery=False)
    cm.set_discovered(["10.0.0.5:6783"])
    assert cm.dials_due(0.0) == []
    assert cm.statistics().discovered_targets == 0


def test_discovered_addresses_of_connected_peers_are_not_dialled() -> None:
    cm = make()
    cm.set_discovered({"10.0.0.2:6783": P2, "10.0.0.3:6783": P3})
    cm.set_connected_peers([P2])
    assert cm.dials_due(0.0) == ["10.0.0.3:6783"]
    cm.connected("10.0.0.3:6783", P3, 0.5, outbound=True)
    cm.set_connected_peers([])
    assert cm.dials_due(1.0) == ["10.0.0.2:6783"]


def test_discovered_waiting_target_dropped_when_no_longer_discovered() -> None:
    cm = make()
    cm.set_discovered(["10.0.0.5:6783"])
    cm.dials_due(0.0)
    cm.dial_failed("10.0.0.5:6783", 0.0, "refused", retry=True)
    assert cm.deadline() == 2.0
    cm.set_discovered([])
    assert cm.deadline() == math.inf
    assert cm.target_statuses(0.0, WALL) == []


def test_bad_discovered_addresses_are_counted_drops() -> None:
    cm = make(max_targets=2)
    cm.set_discovered(["not an address", "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"])
    stats = cm.statistics()
    assert (stats.discovered_targets, stats.discovered_dropped) == (2, 2)


# -- misuse ---------------------------------------------------------------------------------


def test_events_for_unknown_dials_are_local_protocol_errors() -> None:
    cm = make()
    with pytest.raises(LocalProtocolError):
        cm.dial_failed("10.0.0.2:6783", 0.0, "refused", retry=True)
    with pytest.raises(LocalProtocolError):
        cm.connected("10.0.0.2:6783", P2, 0.0, outbound=True)
    with pytest.raises(LocalProtocolError):
        cm.disconnected("10.0.0.2:6783", P2, 0.0, "closed")


def test_driver_started_dial_and_repeated_connected_are_idempotent() -> None:
    cm = make()
    cm.dial_started("10.0.0.8:6783", 0.0)
    cm.dial_started("10.0.0.8:6783", 0.0)
    assert cm.statistics().connecting == 1
    cm.connected("10.0.0.8:6783", P2, 0.1, outbound=True)
    cm.connected("10.0.0.8:6783", P2, 0.2, outbound=True)
    assert cm.statistics().connections == 1
    with pytest.raises(LocalProtocolError):
        cm.dial_started("10.0.0.8:6783", 0.3)


# -- status ---------------------------------------------------------------------------------


def test_target_statuses_show_connecting_retrying_and_failed() -> None:
    cm = make()
    cm.add_targets(["10.0.0.2", "10.0.0.3"], replace=False)
    assert [s.state for s in cm.target_statuses(0.0, WALL)] == ["connecting", "connecting"]
    cm.dials_due(0.0)
    cm.dial_failed("10.0.0.2:6783", 0.0, "connection refused", retry=True)
    lines = {s.address: s for s in cm.target_statuses(1.0, WALL + 1.0)}
    failed = lines["10.0.0.2:6783"]
    assert (failed.state, failed.info, failed.outbound) == ("failed", "connection refused", True)
    assert failed.retry == format_utc(WALL + 2.0) == "2023-11-14 22:13:22 UTC"
    assert lines["10.0.0.3:6783"].state == "connecting"
    cm.dials_due(2.0)
    retrying = cm.target_statuses(2.0, WALL)[0]
    assert (retrying.state, retrying.info) == ("retrying", "connection refused")
    cm.connected("10.0.0.3:6783", P3, 2.0, outbound=True)
    assert [s.address for s in cm.target_statuses(2.0, WALL)] == ["10.0.0.2:6783"]
    stats = cm.statistics()
    assert (stats.direct_targets, stats.connections, stats.connecting) == (2, 1, 1)
    assert (stats.dials_started, stats.dials_failed) == (3, 1)


# -- accept limiter -------------------------------------------------------------------------


def test_accept_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = AcceptLimiter(rate=2.0, burst=3)
    assert [limiter.allow(10.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(10.4) is False  # 0.8 tokens
    assert limiter.allow(10.5) is True  # 1.0 token
    assert limiter.allow(5.0) is False  # time going backwards adds nothing
    assert [limiter.allow(1000.0) for _ in range(4)] == [True, True, True, False]  # capped
    stats = limiter.statistics()
    assert (stats.allowed, stats.refused) == (7, 4)


def test_accept_limiter_rejects_nonsense() -> None:
    with pytest.raises(LocalProtocolError):
        AcceptLimiter(rate=0.0, burst=1)
    with pytest.raises(LocalProtocolError):
        AcceptLimiter(rate=1.0, burst=0)


# -- property: the limit holds under any sequence of events ---------------------------------

_ops = st.lists(
    st.tuples(st.sampled_from(["tick", "fail", "never", "connect", "drop", "add"]),
              st.integers(0, 9), st.floats(0.0, 50.0)),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(_ops)
def test_never_more_than_conn_limit(ops: list[tuple[str, int, float]]) -> None:
    cm = make(conn_limit=3, policy=BackoffPolicy())
    cm.add_targets([f"10.0.1.{i}" for i in range(6)], replace=False)
    now = 0.0
    connecting: set[str] = set()
    live: dict[str, PeerName] = {}
    for op, i, dt in ops:
        now += dt
        if op == "tick":
            connecting |= set(cm.dials_due(now))
        elif op in ("fail", "never") and connecting:
            addr = sorted(connecting)[i % len(connecting)]
            connecting.discard(addr)
            cm.dial_failed(addr, now, "refused", retry=op == "fail")
        elif op == "connect" and connecting:
            addr = sorted(connecting)[i % len(connecting)]
            connecting.discard(addr)
            live[addr] = PeerName(i + 10)
            cm.connected(addr, live[addr], now, outbound=True)
        elif op == "drop" and live:
            addr = sorted(live)[i % len(live)]
            cm.disconnected(addr, live.pop(addr), now, "closed")
        elif op == "add":
            cm.add_targets([f"10.0.2.{i}"], replace=False)
        assert len(connecting) + len(live) <= 3
        assert cm.room() == 3 - len(connecting) - len(live)
        if cm.room() == 0:
            assert cm.deadline() == math.inf


def test_discovered_host_names_are_never_dialled_and_discovery_is_bounded() -> None:
    """issue 9 item 8: gossip could make us look up and dial any host name."""
    cm = make()
    cm.set_discovered(["evil.example:6783", "localhost:22", "10.0.0.5:6783", "[fd00::5]:6783"])
    assert sorted(cm.dials_due(0.0)) == ["10.0.0.5:6783", "[fd00::5]:6783"]
    assert cm.statistics().discovered_dropped == 2
    cm.set_discovered([f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:6783" for i in range(5000)])
    assert cm.statistics().discovered_targets == MAX_DISCOVERED_TARGETS
    cm.add_targets(["user.example"], replace=False)  # a user's own target may be a name
    assert "user.example:6783" in cm.direct_targets()
