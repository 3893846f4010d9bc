"""Fuzzing the receive path: hostile datagrams are counted drops, never exceptions.

Random bytes, and datagrams that carry a valid sleeve header and connection id (so they
reach the body parser of an unencrypted session) with random flags, names, records and
fragment headers, are fed to both backends. Neither may raise or crash, both must
produce the same frames, relays, upcalls and counters, and a datagram that is dropped
leaves nothing behind but its counter.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.crypto.nonces import PLAIN_CONFIRM, PlainReplayWindow
from router.dataplane.backend import Backend, load_backend
from tests.fastpath.mesh import Mesh, name_of

SOURCE = ("192.0.2.2", 6783)
STRANGER = ("192.0.2.2", 6784)  # the peer's host, another port
CONN = 0x1122334455667788


def plane(backend: Backend, encrypted: bool, cipher: str = "secretbox") -> Mesh:
    m = Mesh(backend, 3, [(1, 2), (1, 3)], encrypted=encrypted, cipher=cipher)
    for node in m.nodes.values():
        node.dp.set_peer(name_of(2) if node.name != name_of(2) else name_of(1), CONN,
                         SOURCE, bytes(32) if encrypted else None, 1400, cipher)
    return m


names = st.sampled_from([name_of(3), name_of(3), name_of(9), 0, name_of(1), (1 << 48) - 1])
valid_metas = st.tuples(
    st.sampled_from([0, 0, 1, 2]), st.sampled_from([0, 0, 1, 4]), st.integers(0, 20),
    st.integers(1, 1500), st.integers(0, 14), st.integers(0, 6),
).map(lambda t: struct.pack("<BBHHHH", t[0], t[1], t[2], t[3] if t[1] else 0, t[4], t[5]))
metas = st.one_of(valid_metas, valid_metas, st.binary(min_size=10, max_size=10))
elements = st.tuples(metas, st.binary(min_size=14, max_size=200)).map(lambda t: t[0] + t[1])


@st.composite
def body_headers(draw: st.DrawFn, flags: int) -> bytes:
    dst = 0 if flags & 2 else draw(st.sampled_from([name_of(1), name_of(3), name_of(9), 0]))
    return struct.pack(">BB6s6s", flags, draw(st.sampled_from([16, 16, 16, 1, 2, 0])),
                       draw(names).to_bytes(6, "big"), dst.to_bytes(6, "big"))


@st.composite
def frame_bodies(draw: st.DrawFn) -> list[bytes]:
    """One body of whole records, or the fragments of one element (maybe not all)."""
    flags = draw(st.sampled_from([0, 0, 0, 2, 2, 1, 1, 3, 4, 0x80]))
    header = draw(body_headers(flags))
    if not flags & 1:
        body = header
        for element in draw(st.lists(elements, min_size=1, max_size=3)):
            body += struct.pack(">H", len(element) - 10) + element
        return [body]
    element = draw(elements)
    fsize = draw(st.integers(10, 120))
    count = -(-len(element) // fsize)
    frame_id = draw(st.integers(0, 2))
    parts = [header + struct.pack(">IIHBB", frame_id, len(element), fsize, i, 0)
             + element[i * fsize:(i + 1) * fsize] for i in range(count)]
    return draw(st.permutations(parts))[:draw(st.integers(1, count))]


def mutate(data: bytes, how: int, where: int) -> bytes:
    if how == 1:
        return data[:where % (len(data) + 1)]
    if how == 2:
        i = where % len(data)
        return data[:i] + bytes((data[i] ^ (1 << (where % 8)),)) + data[i + 1:]
    return data


@st.composite
def datagrams(draw: st.DrawFn) -> list[bytes]:
    """Datagrams of valid-looking sleeve headers, a few broken; some bodies mutated."""
    out = []
    for body in draw(frame_bodies()):
        fields = [1, 2, 0, CONN, draw(st.integers(0, 5000))]
        broken = draw(st.sampled_from([None] * 8 + [0, 1, 2, 3]))
        if broken is not None:
            fields[broken] = draw(st.sampled_from([(0, 2), (1, 3), (1, 256), (0, 1)][broken]))
        out.append(mutate(struct.pack(">BBHQQ", *fields) + body,
                          draw(st.sampled_from([0] * 6 + [1, 2])), draw(st.integers(0, 1000))))
    return out


inputs = st.lists(st.one_of(datagrams(), datagrams(), datagrams(),
                            st.binary(max_size=120).map(lambda b: [b])),
                  min_size=1, max_size=8).map(lambda groups: [d for g in groups for d in g])


def feed(backend: Backend, batch: list[bytes], encrypted: bool,
         cipher: str = "secretbox", stranger_every: int = 0) -> list[object]:
    """Every ``stranger_every``-th datagram (if not 0) comes from another address."""
    m = plane(backend, encrypted, cipher)
    seen: list[object] = []
    sources = [STRANGER if stranger_every and n % stranger_every == 0 else SOURCE
               for n in range(len(batch))]
    for i in (1, 2, 3):
        out = m.nodes[i].dp.ingress(list(zip(sources, batch, strict=True)), 5.0)
        seen.extend([out, m.nodes[i].dp.statistics(), m.nodes[i].dp.deadline()])
        m.nodes[i].dp.handle_timer(10.0)
        seen.append(m.nodes[i].dp.statistics()["drops"])
    return seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=inputs, encrypted=st.booleans(), cipher=st.sampled_from(["secretbox", "aes256gcm"]),
       stranger_every=st.sampled_from([0, 0, 1, 3]))
def test_hostile_datagrams_are_counted_drops_on_both_backends(batch: list[bytes],
                                                              encrypted: bool,
                                                              cipher: str,
                                                              stranger_every: int) -> None:
    native = feed(load_backend("native"), batch, encrypted, cipher, stranger_every)
    assert native == feed(load_backend("reference"), batch, encrypted, cipher, stranger_every)
    for stats in native[1::4]:
        assert isinstance(stats, dict)
        assert all(v >= 0 for v in stats["drops"].values())


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    for name in ("native", "reference"):
        m = plane(load_backend(name), encrypted=True)
        frames, relays, upcalls = m.nodes[1].dp.ingress([(SOURCE, data)], 1.0)
        assert frames == [] and relays == []
        stats = m.stats(1)
        assert stats["upcalls"] + sum(stats["drops"].values()) == 1
        assert len(upcalls) == stats["upcalls"]


counters = st.lists(st.one_of(st.integers(0, 3000), st.integers((1 << 64) - 2000, (1 << 64) - 1),
                              st.integers(1 << 63, (1 << 63) + 3000),
                              st.integers(1 << 20, (1 << 20) + 2 * PLAIN_CONFIRM)),
                    min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(sequence=counters)
def test_a_plain_window_is_the_python_plain_replay_window(sequence: list[int]) -> None:
    """Plain sessions screen counters as router.crypto.nonces.PlainReplayWindow."""
    element = bytes(10) + b"\xff" * 6 + b"\x02" + bytes(5) + b"\x08\x00" + b"ping"
    body = struct.pack(">BB6s6s", 2, 16, name_of(2).to_bytes(6, "big"), bytes(6))
    body += struct.pack(">H", len(element) - 10) + element
    for name in ("native", "reference"):
        m = plane(load_backend(name), encrypted=False)
        model = PlainReplayWindow()
        for counter in sequence:
            datagram = struct.pack(">BBHQQ", 1, 2, 0, CONN, counter) + body
            frames, _, _ = m.nodes[1].dp.ingress([(SOURCE, datagram)], 1.0)
            assert bool(frames) == model.check_and_accept(counter), (name, counter)
