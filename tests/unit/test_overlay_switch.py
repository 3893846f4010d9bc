"""The per-peer overlay choice (router.overlay.switch), with time as an argument.

Two switches are also run back to back (A's heartbeats are B's "heard" events) over a
link that is blocked and unblocked at random: every time the link works again for a
minute, both ends are back on fastdp within that minute, however often it flapped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.overlay.switch import (
    Choice,
    Health,
    Overlay,
    OverlaySwitch,
    Reason,
    SleeveState,
    SwitchConfig,
)

CFG = SwitchConfig()  # interval 1 s, timeout 5 s, hold 10 s, retry_max 20 s


def fastdp_peer(sw: OverlaySwitch, peer: str = "b", now: float = 0.0) -> None:
    sw.peer_offers(peer, True, now)
    sw.encryption_required(peer, False, now)
    sw.sleeve_established(peer, now)


def drive(sw: OverlaySwitch, start: float, end: float,
          heard: Callable[[float], bool] = lambda t: False, peer: str = "b") -> float:
    """Run ``sw`` from ``start`` to ``end``: timers, heartbeats sent; the peer answers each
    heartbeat when ``heard(t)``, and sends its own every second then too."""
    t = start
    next_own = start
    while t <= end:
        sw.handle_timer(t)
        sw.heartbeats_to_send(t)
        if heard(t) and t >= next_own:
            sw.heartbeat_heard(peer, t)
            next_own = t + CFG.interval
        deadline = sw.deadline()
        step = min(deadline if deadline is not None else math.inf, next_own)
        t = max(step, t + 0.01) if step > t else t + 0.01
    return t


def test_reasons_in_order() -> None:
    off = OverlaySwitch(fastdp_enabled=False)
    fastdp_peer(off)
    off.heartbeat_heard("b", 1.0)
    assert off.choice("b") == Choice("b", Overlay.SLEEVE, Reason.DISABLED, 0.0,
                                     SleeveState.ESTABLISHED)
    assert off.heartbeats_to_send(1.0) == []  # --no-fastdp: no probes at all

    sw = OverlaySwitch()
    sw.peer_offers("b", False, 0.0)
    assert sw.choice("b").reason is Reason.NOT_OFFERED  # type: ignore[union-attr]
    assert sw.heartbeats_to_send(0.0) == []
    sw.encryption_required("b", True, 0.0)
    sw.peer_offers("b", True, 0.0)
    assert sw.choice("b").describe() == "sleeve (encryption required)"  # type: ignore[union-attr]
    sw.encryption_required("b", False, 0.5)
    assert sw.choice("b").reason is Reason.WAITING  # type: ignore[union-attr]
    assert sw.heartbeats_to_send(0.5) == ["b"]
    sw.heartbeat_heard("b", 0.7)
    assert sw.choice("b") == Choice("b", Overlay.FASTDP, None, 0.7)
    assert sw.choice("b").describe() == "fastdp"  # type: ignore[union-attr]
    sw.encryption_required("b", True, 0.8)  # a policy change applies at once
    assert sw.choice("b").reason is Reason.ENCRYPTION  # type: ignore[union-attr]


def test_heartbeats_lost_falls_back_then_returns_after_the_hold() -> None:
    sw = OverlaySwitch()
    fastdp_peer(sw)
    drive(sw, 0.0, 30.0, heard=lambda t: True)
    assert sw.choice("b").overlay is Overlay.FASTDP  # type: ignore[union-attr]
    sw.changes()
    last = 30.0
    sw.heartbeat_heard("b", last)
    assert sw.deadline() is not None and sw.deadline() <= last + CFG.timeout  # type: ignore[operator]
    sw.handle_timer(last + CFG.timeout - 0.01)
    assert sw.choice("b").overlay is Overlay.FASTDP  # type: ignore[union-attr]
    sw.handle_timer(last + CFG.timeout)
    choice = sw.choice("b")
    assert choice == Choice("b", Overlay.SLEEVE, Reason.LOST, last, SleeveState.ESTABLISHED)
    assert choice.describe(lambda t: f"t={t:g}") == "sleeve (heartbeats lost since t=30)"
    assert sw.changes() == [choice]

    back = 200.0
    drive(sw, last + CFG.timeout, back + CFG.hold - 0.5, heard=lambda t: t >= back)
    assert sw.health("b") is Health.HOLD and sw.choice("b") == choice  # still "since 30"
    drive(sw, back + CFG.hold - 0.5, back + CFG.hold + 0.5, heard=lambda t: True)
    assert sw.choice("b").overlay is Overlay.FASTDP  # type: ignore[union-attr]
    stats = sw.statistics()
    assert (stats.to_sleeve, stats.to_fastdp, stats.flaps, stats.on_fastdp) == (1, 2, 0, 1)


def test_flapping_keeps_sleeve_and_its_time_until_the_path_holds() -> None:
    sw = OverlaySwitch()
    fastdp_peer(sw)
    drive(sw, 0.0, 10.0, heard=lambda t: True)
    end = drive(sw, 10.0, 20.0)
    lost = sw.choice("b")
    assert lost is not None and lost.reason is Reason.LOST
    t = end
    for _ in range(5):  # heard for 4 s (less than the hold), then gone again
        t = drive(sw, t, t + 4.0, heard=lambda _t: True)
        assert sw.choice("b") == lost
        t = drive(sw, t, t + 8.0)
        assert sw.choice("b") == lost and sw.health("b") is Health.LOST
    assert sw.statistics().flaps == 5 and sw.statistics().to_sleeve == 1
    resumed = t
    drive(sw, t, t + CFG.hold + 2.0, heard=lambda _t: True)
    now_choice = sw.choice("b")
    assert now_choice is not None and now_choice.overlay is Overlay.FASTDP
    assert now_choice.since <= resumed + CFG.hold + CFG.interval


def test_probes_never_stop_and_their_gap_is_bounded() -> None:
    sw = OverlaySwitch()
    fastdp_peer(sw)
    sent: list[float] = []
    t = 0.0
    while t < 3600.0:
        sw.handle_timer(t)
        if sw.heartbeats_to_send(t):
            sent.append(t)
        t = sw.deadline()  # type: ignore[assignment]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert max(gaps) == CFG.retry_max and len(sent) > 3600 / CFG.retry_max - 5


def test_a_gone_peer_is_forgotten_and_config_is_checked() -> None:
    sw = OverlaySwitch()
    fastdp_peer(sw)
    sw.peer_gone("b", 1.0)
    assert sw.choice("b") is None and sw.deadline() is None and sw.changes() == []
    sw.heartbeat_heard("b", 2.0)  # a stray heartbeat creates nothing
    assert sw.choices() == {}
    with pytest.raises(ValueError):
        SwitchConfig(interval=5.0, timeout=5.0)


def test_sleeve_state_is_part_of_the_choice() -> None:
    sw = OverlaySwitch()
    sw.peer_offers("b", False, 0.0)
    sw.changes()
    sw.sleeve_heard("b", 0.5)
    [c] = sw.changes()
    assert c.sleeve is SleeveState.HEARD and not c.sleeve_up
    sw.sleeve_established("b", 1.0, 1500)
    [c] = sw.changes()
    assert c.sleeve_up and c.sleeve_mtu == 1500
    assert c.reason is Reason.NOT_OFFERED and c.since == 0.0
    sw.sleeve_path_mtu("b", 1400, 1.5)
    assert sw.choice("b").sleeve_mtu == 1400  # type: ignore[union-attr]
    sw.sleeve_failed("b", 2.0)
    assert sw.choice("b").sleeve is SleeveState.FAILED  # type: ignore[union-attr]
    assert sw.choice("b").sleeve_up is False  # type: ignore[union-attr]
    sw.sleeve_path_mtu("nobody", 1400, 2.0)  # not a peer: nothing made
    assert "nobody" not in sw.choices()


def test_lost_heartbeats_keep_fastdp_until_the_sleeve_is_established() -> None:
    sw = OverlaySwitch()
    sw.peer_offers("b", True, 0.0)
    sw.encryption_required("b", False, 0.0)
    sw.heartbeat_heard("b", 0.5)  # fastdp proved before the sleeve is
    assert sw.choice("b").overlay is Overlay.FASTDP  # type: ignore[union-attr]
    sw.handle_timer(0.5 + CFG.timeout)
    held = sw.choice("b")
    assert held is not None and held.overlay is Overlay.FASTDP and held.held
    assert held.reason is Reason.LOST and held.since == 0.5
    assert held.describe(lambda t: f"t={t:g}") == \
        "fastdp (heartbeats lost since t=0.5; sleeve not established)"
    assert sw.statistics().held == 1 and sw.statistics().to_sleeve == 0
    sw.sleeve_heard("b", 6.0)  # one way is not enough
    assert sw.choice("b").overlay is Overlay.FASTDP  # type: ignore[union-attr]
    sw.sleeve_established("b", 7.0, 1500)
    moved = sw.choice("b")
    assert moved == Choice("b", Overlay.SLEEVE, Reason.LOST, 0.5, SleeveState.ESTABLISHED, 1500)
    assert sw.statistics().to_sleeve == 1 and sw.statistics().held == 0

    # Held, then the path comes back: fastdp again, no longer held, nothing counted.
    sw2 = OverlaySwitch()
    sw2.peer_offers("b", True, 0.0)
    sw2.heartbeat_heard("b", 0.0)
    sw2.handle_timer(CFG.timeout)
    assert sw2.choice("b").held  # type: ignore[union-attr]
    drive(sw2, CFG.timeout, CFG.timeout + CFG.hold + 2, heard=lambda t: True)
    back = sw2.choice("b")
    assert back is not None and back.overlay is Overlay.FASTDP and not back.held
    assert back.reason is None and sw2.statistics().to_sleeve == 0
    # A peer never on fastdp is on sleeve whatever its sleeve says.
    sw3 = OverlaySwitch()
    sw3.peer_offers("b", True, 0.0)
    assert sw3.choice("b").overlay is Overlay.SLEEVE  # type: ignore[union-attr]


# --- two switches back to back -------------------------------------------------------------


def run_pair(blocked: Callable[[float], bool], until: float
             ) -> dict[str, list[tuple[float, Overlay]]]:
    """A and B exchange heartbeats (delivered at once unless ``blocked(t)``)."""
    a, b = OverlaySwitch(), OverlaySwitch()
    fastdp_peer(a, "B")
    fastdp_peer(b, "A")
    log: dict[str, list[tuple[float, Overlay]]] = {"A": [], "B": []}
    t = 0.0
    while t <= until:
        for me, sw, other in (("A", a, b), ("B", b, a)):
            sw.handle_timer(t)
            if sw.heartbeats_to_send(t) and not blocked(t):
                other.heartbeat_heard(me, t)
        for me, sw in (("A", a), ("B", b)):
            log[me] += [(t, c.overlay) for c in sw.changes()]
        deadlines = [d for d in (a.deadline(), b.deadline()) if d is not None]
        t = max(min(deadlines), t + 1e-3)
    return log


def overlay_at(log: list[tuple[float, Overlay]], t: float) -> Overlay:
    current = Overlay.SLEEVE
    for when, overlay in log:
        if when > t:
            break
        current = overlay
    return current


@settings(max_examples=60, deadline=None)
@given(periods=st.lists(st.tuples(st.floats(0.5, 400.0), st.floats(60.0, 200.0)),
                        min_size=1, max_size=6))
def test_back_to_back_the_fallback_never_sticks(periods: list[tuple[float, float]]) -> None:
    """Blocked for `down` seconds, then open for `up` (>= 60) seconds, repeatedly."""
    windows: list[tuple[float, float]] = []
    t = 30.0  # first 30 s open: both reach fastdp
    for down, up in periods:
        windows.append((t, t + down))
        t += down + up

    def blocked(now: float) -> bool:
        return any(start <= now < end for start, end in windows)

    log = run_pair(blocked, t)
    for who in ("A", "B"):
        assert overlay_at(log[who], 29.0) is Overlay.FASTDP, log[who]
        for start, end in windows:
            if end - start > CFG.timeout + CFG.interval:
                assert overlay_at(log[who], end) is Overlay.SLEEVE, (who, start, end, log[who])
            assert overlay_at(log[who], end + 60.0) is Overlay.FASTDP, (who, end, log[who])
