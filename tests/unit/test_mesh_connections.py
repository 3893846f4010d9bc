"""The live-connection table: both ends keep the same one of two duplicate connections,
the loser's dial target moves to the survivor, and the connection maker is kept told."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from router.mesh.connections import ConnectionRegistry
from router.mesh.handshake import HandshakeResult
from router.mesh.names import PeerName
from router.mesh.targets import BackoffPolicy, ConnectionMaker

A, B = PeerName(0x0A), PeerName(0x0B)
ADDR = {A: "192.0.2.10:6783", B: "192.0.2.11:6783"}


@dataclass(eq=False)
class Conn:
    """A connection record as the mesh service keeps one."""

    result: HandshakeResult
    outbound: bool
    address: str
    target: str | None
    satisfies: set[str] = field(default_factory=set)
    close_reason: str = ""
    closed: str | None = None
    started: float = 0.0
    heard: float = 0.0

    @property
    def last_heard(self) -> float:
        return self.heard

    @property
    def remote(self) -> PeerName:
        return self.result.remote_name

    def close(self, reason: str) -> None:
        self.closed = reason


def conn(ourself: PeerName, remote: PeerName, dialled_by: PeerName, conn_id: int) -> Conn:
    outbound = dialled_by == ourself
    result = HandshakeResult(
        version=1, outbound=outbound, remote_name=remote, remote_nickname="",
        remote_uid=1, remote_short_id=1, remote_overlays={}, conn_id=conn_id,
        encrypted=False, key=None, sender_high=ourself > remote, overlay_encrypted=False)
    return Conn(result, outbound, ADDR[remote], ADDR[remote] if outbound else None)


def registry(ourself: PeerName, targets: list[str]) -> tuple[ConnectionRegistry[Conn],
                                                             ConnectionMaker]:
    maker = ConnectionMaker(ourself=ourself, port=6783, discovery=False, conn_limit=10,
                            policy=BackoffPolicy(), rng=random.Random(0), now=0.0)
    maker.add_targets(targets, replace=False)
    for target in maker.dials_due(0.0):
        maker.dial_started(target, 0.0)
    return ConnectionRegistry(ourself, maker), maker


@given(a_first=st.booleans(), b_first=st.booleans())
def test_both_ends_keep_the_connection_dialled_by_the_greater_name(a_first: bool,
                                                                    b_first: bool) -> None:
    kept: dict[PeerName, int] = {}
    for ourself, remote, first in ((A, B, a_first), (B, A, b_first)):
        reg, maker = registry(ourself, [ADDR[remote]])
        by_a, by_b = conn(ourself, remote, A, 1), conn(ourself, remote, B, 2)
        order = [by_a, by_b] if first else [by_b, by_a]
        first_admission = reg.admit(order[0], 1.0)
        second = reg.admit(order[1], 1.0)
        assert first_admission.admitted and second.duplicate
        (live,) = list(reg)
        kept[ourself] = live.result.conn_id
        loser = order[0] if second.admitted else order[1]
        assert (second.displaced is loser) if second.admitted else (second.winner is live)
        assert loser.target is None  # its dial target, if any, moved to the survivor
        assert ADDR[remote] in ({live.target} | live.satisfies)
        assert maker.statistics().connections == 1
    assert kept[A] == kept[B] == 2  # B > A: the connection B dialled survives


def test_a_reused_connection_id_is_refused_and_removal_tells_the_maker() -> None:
    reg, maker = registry(A, [ADDR[B]])
    first = conn(A, B, A, 7)
    assert reg.admit(first, 1.0).admitted
    again = conn(A, B, B, 7)
    assert not reg.admit(again, 1.0).admitted
    assert again.close_reason == "connection id already in use"
    assert reg.by_id(7) is first and reg.get(B) is first and reg.peers() == {B}
    first.close_reason = "peer went away"
    assert not reg.remove(again, 2.0)  # never live: nothing to take out
    assert reg.remove(first, 2.0)
    assert len(reg) == 0 and reg.by_id(7) is None
    assert maker.statistics().connections == 0
    assert maker.statistics().disconnections == 1


def test_a_settled_connection_keeps_its_name_against_a_second_claimant() -> None:
    """issue 9 item 6: an authenticated peer claiming a connected peer's name took over."""
    reg, maker = registry(A, [ADDR[B]])
    real = conn(A, B, A, 1)  # we dialled B
    assert reg.admit(real, 0.0).admitted
    for dialled_by in (A, B):  # B dialled by A would win the tie-break against B's
        liar = conn(A, B, B, 2 + int(dialled_by))
        liar.address = "192.0.2.99:40000"
        real.heard = 20.0
        admission = reg.admit(liar, 30.0)  # 30 s old, heard 10 s ago: settled
        assert not admission.admitted and admission.refused and admission.displaced is None
        assert f"already connected at {ADDR[B]}" in liar.close_reason
        assert reg.get(B) is real and real.closed is None and real.target == ADDR[B]
    assert maker.statistics().connections == 1


def test_a_quiet_connection_can_be_replaced() -> None:
    reg, _maker = registry(A, [])
    real = conn(A, B, B, 1)  # B dialled us
    assert reg.admit(real, 0.0).admitted
    restarted = conn(A, B, B, 2)
    admission = reg.admit(restarted, 100.0)  # nothing heard from the old one for 100 s
    assert admission.admitted and admission.displaced is real
    assert reg.get(B) is restarted


def test_a_dial_reaching_a_peer_we_have_counts_as_connected_to_it() -> None:
    reg, maker = registry(A, [ADDR[B]])
    real = conn(A, B, B, 1)
    real.address = "192.0.2.11:40000"
    assert reg.admit(real, 0.0).admitted
    real.heard = 25.0
    dialled = conn(A, B, A, 2)  # our dial of B's address found B already connected...
    admission = reg.admit(dialled, 30.0)
    assert admission.refused and dialled.target is None and ADDR[B] in real.satisfies
    assert not reg.remove(dialled, 30.0)  # ...so it is not retried while B's connection lives
    assert maker.target_statuses(30.0, 0.0) == []
    real.close_reason = "gone"
    assert reg.remove(real, 31.0)
    assert [s.state for s in maker.target_statuses(31.0, 0.0)] == ["failed"]


def test_a_target_without_port_is_not_dialled_while_its_host_is_connected_inbound() -> None:
    """issue 10 item 8: the target showed "failed" next to the live inbound connection."""
    reg, maker = registry(A, ["192.0.2.11"])  # no port
    maker.dial_failed(ADDR[B], 1.0, "connection refused", retry=True)  # B was not up yet
    assert [s.state for s in maker.target_statuses(1.0, 0.0)] == ["failed"]
    inbound = conn(A, B, B, 1)
    inbound.address = "192.0.2.11:40000"
    assert reg.admit(inbound, 2.0).admitted
    assert maker.target_statuses(2.0, 0.0) == []  # dropped from the list, as Weave does
    assert maker.dials_due(100.0) == []
    assert maker.statistics().connections == 1
    inbound.close_reason = "gone"
    reg.remove(inbound, 101.0)
    assert maker.dials_due(101.0) == [ADDR[B]]  # wanted again once the peer is gone
