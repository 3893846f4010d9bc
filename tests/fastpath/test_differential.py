"""The compiled data plane and its pure-Python twin produce the same bytes.

Hypothesis builds a scenario (topology, encryption, path sizes, batches of frames of
every size to known, unknown and broadcast MACs, faults on the wire: loss, truncation,
bit flips, replays, time passing; a sniffed datagram resent with its counter raised by
2**20, or from a stranger's address; a flood of first fragments under a sniffed
connection id) and runs it on a mesh of native data planes and on a
mesh of reference data planes. Every datagram on the wire, every frame delivered to
every TAP, every upcall, counter and deadline must be equal. Frames include fastdp
heartbeats (ethertype 0x88B5 to the sender's own heartbeat MAC: an upcall, or to another's:
forwarded) and frames Python writes into the TAP (``write_tap``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.dataplane.backend import Backend, load_backend
from tests.fastpath.mesh import (
    BROADCAST_MAC,
    HEARTBEAT_TYPE,
    Mesh,
    chain,
    frame,
    full,
    heartbeat_mac,
    ipv4_frame,
    mac,
    name_of,
    vnet,
)

TOPOLOGIES = {
    "pair": (2, [(1, 2)]),
    "chain": (3, chain(3)),
    "star": (4, [(1, 2), (1, 3), (1, 4)]),
    "full": (3, full(3)),
    "ring": (4, [*chain(4), (4, 1)]),
}
STRANGER = ("192.0.2.99", 6783)  # an address no peer has
PATHS = [512, 1252, 1400, 9000, 65507]
METAS = [
    vnet(),
    vnet(flags=2),
    vnet(flags=1, csum_start=34, csum_offset=16),
    vnet(flags=1, gso_type=1, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16),
    vnet(gso_type=2),  # not a valid GSO type: the receiver drops it
]


@dataclass(frozen=True)
class FrameSpec:
    dst: str  # "bcast", "unknown", "peer", "hb" (our heartbeat MAC) or "hb-other"
    peer: int
    size: int
    meta: int
    ip: str = "raw"  # or an IPv4 packet: "df", "nodf", "icmp-error" (with DF)


@dataclass(frozen=True)
class Step:
    kind: str  # "send", "write", "replay", "advance", "forge", "stranger", "flood"
    node: int
    frames: tuple[FrameSpec, ...] = ()
    amount: float = 0.0


frame_specs = st.builds(
    FrameSpec,
    dst=st.sampled_from(["bcast", "unknown", "peer", "peer", "hb", "hb-other"]),
    peer=st.integers(1, 4),
    size=st.one_of(st.integers(0, 120), st.integers(1180, 1520), st.integers(1520, 12000),
                   st.sampled_from([65535 - 20, 65553 - 14])),
    meta=st.sampled_from(range(len(METAS))),
    ip=st.sampled_from(["raw", "raw", "df", "nodf", "icmp-error"]),
)
steps = st.one_of(
    st.builds(Step, kind=st.just("send"), node=st.integers(1, 4),
              frames=st.lists(frame_specs, min_size=1, max_size=6).map(tuple)),
    st.builds(Step, kind=st.sampled_from(["send", "write"]), node=st.integers(1, 4),
              frames=st.lists(frame_specs, min_size=1, max_size=6).map(tuple)),
    st.builds(Step, kind=st.just("replay"), node=st.integers(0, 1000)),
    st.builds(Step, kind=st.sampled_from(["forge", "stranger", "flood"]),
              node=st.integers(0, 1000)),
    st.builds(Step, kind=st.just("advance"), node=st.just(0),
              amount=st.sampled_from([0.1, 0.6, 1.0, 30.0, 700.0])),
)


@dataclass(frozen=True)
class Scenario:
    topology: str
    encrypted: bool
    cipher: str
    paths: tuple[int, ...]
    faults: tuple[tuple[int, str, int], ...]  # (wire sequence number, fault, argument)
    steps: tuple[Step, ...]


scenarios = st.builds(
    Scenario,
    topology=st.sampled_from(sorted(TOPOLOGIES)),
    encrypted=st.booleans(),
    cipher=st.sampled_from(["secretbox", "aes256gcm"]),
    paths=st.lists(st.sampled_from(PATHS), min_size=4, max_size=4).map(tuple),
    faults=st.lists(st.tuples(st.integers(1, 120), st.sampled_from(["drop", "cut", "flip"]),
                              st.integers(0, 2000)), max_size=8).map(tuple),
    steps=st.lists(steps, min_size=1, max_size=8).map(tuple),
)


def run(backend: Backend, sc: Scenario) -> list[object]:
    """Everything observable of the scenario on ``backend``."""
    n, links = TOPOLOGIES[sc.topology]
    m = Mesh(backend, n, links, encrypted=sc.encrypted, cipher=sc.cipher,
             max_datagram={i: sc.paths[i - 1] for i in range(1, n + 1)})
    faults = {seq: (kind, arg) for seq, kind, arg in sc.faults}

    def fault(seq: int, data: bytes) -> bytes | None:
        kind, arg = faults.get(seq, ("none", 0))
        if kind == "drop":
            return None
        if kind == "cut":
            return data[:arg % (len(data) + 1)]
        if kind == "flip":
            i = arg % len(data)
            return data[:i] + bytes((data[i] ^ 0x10,)) + data[i + 1:]
        return data

    now = 100.0
    for i in range(1, n + 1):  # some MACs known in advance, as after earlier traffic
        m.nodes[1].dp.learn_mac(mac(i), name_of(i), now)
    seen: list[object] = []
    for step in sc.steps:
        if step.kind == "advance":
            now += step.amount
            for node in m.nodes.values():
                seen.append(node.dp.deadline())
                node.dp.handle_timer(now)
        elif step.kind == "replay" and m.wire:
            src, to, data = m.wire[step.node % len(m.wire)]
            m.carry(src, [(to, data)], now, fault)
        elif step.kind in ("forge", "stranger", "flood") and m.wire:
            src, to, data = m.wire[step.node % len(m.wire)]
            m.carry(STRANGER if step.kind == "stranger" else src,
                    [(to, d) for d in _forgeries(step.kind, data, sc.encrypted)], now, fault)
        elif step.kind == "send":
            sender = (step.node - 1) % n + 1
            frames = [_frame(spec, sender, n) for spec in step.frames]
            m.send(sender, frames, now, fault)
        elif step.kind == "write":  # Python's frames into the TAP (heartbeats)
            writer = (step.node - 1) % n + 1
            node = m.nodes[writer]
            for spec in step.frames:
                seen.append(node.dp.write_tap(_frame(spec, writer, n)[10:]))
            node.delivered.extend(node.dp.take_local())
    seen.append(m.wire)
    for node in m.nodes.values():
        seen.extend([node.delivered, node.upcalls, node.dp.statistics(), node.dp.deadline()])
        seen.extend(node.dp.lookup_mac(mac(i), now) for i in range(1, 6))
    return seen


def _forgeries(kind: str, data: bytes, encrypted: bool) -> list[bytes]:
    """What an attacker makes of one sniffed datagram (see the module docstring)."""
    if len(data) < 20:
        return [data]
    conn_id, counter = struct.unpack_from(">QQ", data, 4)
    if kind != "flood":
        raised = (counter + (1 << 20 if kind == "forge" else 1)) % (1 << 64)
        return [data[:12] + struct.pack(">Q", raised) + data[20:]]
    length = 3000 + (20 if encrypted else 0)
    return [struct.pack(">BBHQQIHBB", 1, 3, 0, conn_id, (counter + 1 + i) % (1 << 64), length,
                        1100, 0, 3) + bytes(1100) for i in range(70)]


def _frame(spec: FrameSpec, node: int, n: int) -> bytes:
    if spec.dst in ("hb", "hb-other"):
        who = node if spec.dst == "hb" else (spec.peer - 1) % n + 1
        return METAS[spec.meta] + heartbeat_mac(who) + mac(spec.peer) + HEARTBEAT_TYPE + \
            bytes(max(spec.size, 46))
    if spec.dst == "bcast":
        dst = BROADCAST_MAC
    elif spec.dst == "unknown":
        dst = mac(100 + spec.peer)
    else:
        dst = mac((spec.peer - 1) % n + 1)
    if spec.ip == "raw" or spec.size < 28:
        return frame(dst, mac(node), spec.size, meta=METAS[spec.meta])
    return ipv4_frame(dst, mac(node), min(spec.size, 65535), df=spec.ip != "nodf",
                      proto=1 if spec.ip == "icmp-error" else 17,
                      first=3 if spec.ip == "icmp-error" else 0, meta=METAS[spec.meta])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios)
def test_native_and_reference_agree(sc: Scenario) -> None:
    native = run(load_backend("native"), sc)
    reference = run(load_backend("reference"), sc)
    assert len(native) == len(reference)
    for a, b in zip(native, reference, strict=True):
        assert a == b


@pytest.mark.parametrize(("encrypted", "cipher"),
                         [(True, "secretbox"), (True, "aes256gcm"), (False, "secretbox")])
def test_a_fixed_busy_scenario_agrees(encrypted: bool, cipher: str) -> None:
    """One large scenario always runs per cipher (and plain), whatever hypothesis picks."""
    big = tuple(FrameSpec(d, p, s, k, ip) for d, p, s, k, ip in [
        ("peer", 2, 65535 - 20, 3, "raw"), ("bcast", 1, 60, 0, "raw"),
        ("peer", 3, 1400, 2, "raw"), ("unknown", 1, 9000, 1, "raw"), ("peer", 4, 10, 0, "raw"),
        ("peer", 4, 11, 0, "raw"), ("peer", 1, 1, 4, "raw"), ("peer", 2, 1400, 0, "df"),
        ("peer", 3, 3000, 0, "nodf"), ("peer", 4, 1300, 0, "icmp-error"),
        ("hb", 2, 46, 0, "raw"), ("hb-other", 2, 46, 0, "raw"), ("hb", 1, 65553 - 14, 0, "raw"),
    ])
    sc = Scenario("ring", encrypted, cipher, (512, 1400, 9000, 1252),
                  ((3, "drop", 0), (9, "flip", 77)),
                  (Step("send", 1, big), Step("send", 3, big), Step("advance", 0, (), 1.0),
                   Step("replay", 5), Step("forge", 7), Step("stranger", 8), Step("flood", 2),
                   Step("send", 2, big), Step("write", 4, big[-3:]),
                   Step("advance", 0, (), 700.0)))
    native = run(load_backend("native"), sc)
    assert native == run(load_backend("reference"), sc)
    assert any(native[-30:])  # something was delivered
