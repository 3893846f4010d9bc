"""The sleeve data plane's behaviour, run against both backends (native and reference).

Two or more data planes back to back (``mesh.Mesh``): frames captured on one peer must
come out of another peer's TAP unchanged, along the routes the mesh computes; anything
forged, replayed, truncated or unroutable is a counted drop.
"""

from __future__ import annotations

from collections.abc import Callable

import nacl.bindings
import pytest

from router.crypto.keys import SessionKey
from router.dataplane.backend import Backend
from router.dataplane.icmp import inet_checksum
from router.errors import DecodeError, LocalProtocolError
from router.mesh.names import PeerName
from router.overlay.sleeve.packet import (
    HEADER_SIZE,
    PacketType,
    decode_header_untrusted,
    encode_heartbeat,
    open_packet_untrusted,
)
from tests.fastpath.mesh import (
    BROADCAST_MAC,
    Mesh,
    chain,
    frame,
    full,
    ipv4_frame,
    mac,
    name_of,
    vnet,
)

FIRST_COUNTER = 1 << 63  # frames count from 2**63; heartbeats (same key) from 0
SIZES = [0, 1, 46, 100, 1300, 1335, 1336, 1337, 1400, 1500, 4000, 9000, 20000, 65535]


def test_unicast_frames_of_every_size_arrive_unchanged(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    m.nodes[1].dp.learn_mac(mac(2), name_of(2), 0.0)
    frames = [frame(mac(2), mac(1), n) for n in SIZES]
    m.send(1, frames, 1.0)
    assert m.take(2) == frames
    assert m.drops(1) == {} and m.drops(2) == {}
    sent = m.stats(1)["peers"][name_of(2)]
    got = m.stats(2)["peers"][name_of(1)]
    assert sent["frames_out"] == got["frames_in"] == len(frames)
    assert sent["datagrams_out"] == got["datagrams_in"] == len(m.wire)
    assert sent["bytes_out"] == got["bytes_in"] == sum(len(d) for _, _, d in m.wire)
    assert all(len(d) <= 1400 for _, _, d in m.wire)


@pytest.mark.parametrize("encrypted", [True, False])
def test_datagrams_are_sleeve_packets_the_python_codec_opens(backend: Backend,
                                                            encrypted: bool) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    key = bytes(range(32)) if encrypted else None
    for x, y in ((1, 2), (2, 1)):
        m.nodes[x].dp.set_peer(name_of(y), 9, m.nodes[y].addr, key, 1400)
    m.nodes[1].dp.learn_mac(mac(2), name_of(2), 0.0)
    small, big = frame(mac(2), mac(1), 50), frame(mac(2), mac(1), 3000)
    m.send(1, [small, big], 1.0)
    assert len(m.wire) == 1 + 3
    skey = SessionKey(key) if key else None
    header, body = open_packet_untrusted(m.wire[0][2], key=skey, sender_high=False)
    assert (header.type, header.conn_id, header.counter) == (PacketType.FRAMES, 9, FIRST_COUNTER)
    assert body == bytes((0, 16)) + name_of(1).to_bytes(6, "big") + name_of(2).to_bytes(
        6, "big") + (len(small) - 10).to_bytes(2, "big") + small
    if key is not None:
        with pytest.raises(DecodeError, match="authentication"):
            open_packet_untrusted(m.wire[0][2], key=SessionKey(bytes(32)), sender_high=False)
    # fragments of one element sealed once: type 3, all with the element's counter
    assert [(d[1], d[12:20]) for _, _, d in m.wire[1:]] == [
        (3, (FIRST_COUNTER + 1).to_bytes(8, "big"))] * 3
    assert m.take(2) == [small, big]


def test_small_frames_are_packed_into_one_datagram(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    m.nodes[1].dp.learn_mac(mac(2), name_of(2), 0.0)
    frames = [frame(mac(2), mac(1), 40 + i) for i in range(20)]
    m.send(1, frames, 1.0)
    assert m.take(2) == frames
    # 20 records of about 80 bytes: 2 datagrams of at most 1400 bytes
    assert len(m.wire) == 2


def test_frames_to_different_destinations_keep_their_order(backend: Backend) -> None:
    m = Mesh(backend, 3, full(3))
    dp = m.nodes[1].dp
    dp.learn_mac(mac(2), name_of(2), 0.0)
    dp.learn_mac(mac(3), name_of(3), 0.0)
    to2 = [frame(mac(2), mac(1), n) for n in (10, 2000, 30, 40)]
    to3 = [frame(mac(3), mac(1), n) for n in (5000, 20, 60)]
    m.send(1, [to2[0], to3[0], to2[1], to3[1], to2[2], to2[3], to3[2]], 1.0)
    assert m.take(2) == to2
    assert m.take(3) == to3


def test_gso_super_frame_keeps_its_vnet_header(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)], max_datagram=1280)
    m.nodes[1].dp.learn_mac(mac(2), name_of(2), 0.0)
    meta = vnet(flags=1, gso_type=1, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)
    big = frame(mac(2), mac(1), 65535 - 20, meta=meta)
    m.send(1, [big], 1.0)
    assert m.take(2) == [big]
    # payload = MAC, bound header, body header, element; 1252 bytes of it per fragment
    assert len(m.wire) == -(-(20 + 14 + len(big)) // (1280 - 28))
    assert {len(d) for _, _, d in m.wire[:-1]} == {1280}


def test_broadcast_reaches_every_peer_once_along_the_tree(backend: Backend) -> None:
    m = Mesh(backend, 5, [*chain(3), (3, 4), (3, 5), (1, 5)])
    frames = [frame(BROADCAST_MAC, mac(1), 100), frame(mac(99), mac(1), 3000)]
    m.send(1, frames, 1.0)
    for i in range(2, 6):
        assert m.take(i) == frames, i
    assert m.take(1) == []
    assert all(m.drops(i) == {} for i in m.nodes)


def test_broadcast_is_never_relayed_back_where_it_came_from(backend: Backend) -> None:
    m = Mesh(backend, 3, chain(3))
    # inconsistent routes: peer 2 would pass peer 1's broadcasts to peer 1 itself
    m.nodes[2].dp.set_routes({name_of(1): name_of(1), name_of(3): name_of(3)},
                             {name_of(1): [name_of(1), name_of(3)]})
    hello = frame(BROADCAST_MAC, mac(1), 60)
    m.send(1, [hello], 1.0)
    assert m.take(2) == [hello] and m.take(3) == [hello] and m.take(1) == []
    assert [to for _, to, _ in m.wire] == [m.nodes[2].addr, m.nodes[3].addr]


def test_relay_through_a_middle_peer_and_learnt_route_back(backend: Backend) -> None:
    m = Mesh(backend, 3, chain(3))
    hello = frame(BROADCAST_MAC, mac(1), 60)
    m.send(1, [hello], 1.0)
    assert m.take(3) == [hello]
    # peer 3 learnt mac(1) behind peer 1: its reply is unicast, relayed by peer 2
    assert m.nodes[3].dp.lookup_mac(mac(1), 2.0) == name_of(1)
    reply = [frame(mac(1), mac(3), n) for n in (60, 3000, 65000)]
    m.send(3, reply, 2.0)
    assert m.take(1) == reply
    assert m.take(2) == [hello]
    assert m.stats(2)["frames_relayed"] == 1 + len(reply)


def test_relay_refragments_for_a_smaller_path(backend: Backend) -> None:
    m = Mesh(backend, 3, chain(3), max_datagram={1: 9000, 2: 700, 3: 9000})
    m.nodes[1].dp.learn_mac(mac(3), name_of(3), 0.0)
    frames = [frame(mac(3), mac(1), n) for n in (100, 1000, 8000, 30000)]
    m.send(1, frames, 1.0)
    assert m.take(3) == frames
    assert all(len(d) <= 700 for src, _, d in m.wire if src == m.nodes[2].addr)


def test_wrong_key_delivers_nothing(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    m.nodes[2].dp.set_peer(name_of(1), 1, m.nodes[1].addr, bytes(32), 1400)
    m.nodes[1].dp.set_peer(name_of(2), 1, m.nodes[2].addr, b"\x01" * 32, 1400)
    m.send(1, [frame(BROADCAST_MAC, mac(1), n) for n in (10, 5000)], 1.0)
    assert m.take(2) == []
    assert m.drops(2) == {"auth": 2}  # the datagram, and the fragmented element once whole


def test_replayed_datagrams_are_dropped(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    frames = [frame(BROADCAST_MAC, mac(1), n) for n in (10, 5000)]
    m.send(1, frames, 1.0)
    assert m.take(2) == frames
    m.carry(m.nodes[1].addr, [(to, d) for _, to, d in list(m.wire)], 2.0)
    assert m.take(2) == []
    assert m.drops(2) == {"replay": 5}  # 1 datagram + 4 fragments


@pytest.mark.parametrize("encrypted", [True, False])
def test_a_df_packet_too_big_for_the_path_gets_icmp_fragmentation_needed(
        backend: Backend, encrypted: bool) -> None:
    m = Mesh(backend, 2, [(1, 2)], encrypted=encrypted, max_datagram=1252)  # a 1280 underlay
    m.nodes[1].dp.learn_mac(mac(2), name_of(2), 0.0)
    mtu = 1252 - 20 - (20 if encrypted else 0) - 14 - 2 - 10 - 14
    big = ipv4_frame(mac(2), mac(1), 1376)
    m.send(1, [big], 1.0)
    assert m.wire == [] and m.take(2) == []
    (reply,) = m.take(1)
    assert reply[:10] == bytes(10)
    eth, ip, icmp = reply[10:24], reply[24:44], reply[44:]
    assert eth == mac(1) + mac(2) + b"\x08\x00"
    assert ip[0] == 0x45 and ip[9] == 1 and int.from_bytes(ip[2:4], "big") == 20 + len(icmp)
    assert ip[12:16] == bytes((10, 0, 0, 2)) and ip[16:20] == bytes((10, 0, 0, 1))
    assert inet_checksum(ip) == 0 and inet_checksum(icmp) == 0
    assert icmp[:2] == bytes((3, 4)) and int.from_bytes(icmp[6:8], "big") == mtu
    assert icmp[8:] == big[24:24 + 28]  # the packet's IP header and 8 bytes of payload
    assert m.drops(1) == {"too_big": 1}
    assert m.stats(1)["icmp_frag_needed"] == 1
    # what fits, has no DF, is GSO, is an ICMP error or is broadcast is carried (in pieces)
    carried = [
        ipv4_frame(mac(2), mac(1), mtu),
        ipv4_frame(mac(2), mac(1), 1376, df=False),
        ipv4_frame(mac(2), mac(1), 1376, proto=1, first=3),
        ipv4_frame(mac(2), mac(1), 9000, meta=vnet(flags=1, gso_type=1, hdr_len=54,
                                                    gso_size=1448, csum_start=34,
                                                    csum_offset=16)),
        ipv4_frame(BROADCAST_MAC, mac(1), 1376),
    ]
    m.send(1, carried, 2.0)
    assert m.take(2) == carried and m.take(1) == []
    assert m.stats(1)["icmp_frag_needed"] == 1


def test_aes256gcm_datagrams_open_with_the_documented_nonce_and_layout(
        backend: Backend) -> None:
    """MAC || AES-256-GCM(header[0:4] || body) under nonce 01 dir 00 00 counter."""
    key = bytes(range(32))
    m = Mesh(backend, 2, [(1, 2)])
    for x, y in ((1, 2), (2, 1)):
        m.nodes[x].dp.set_peer(name_of(y), 9, m.nodes[y].addr, key, 1400, "aes256gcm")
    m.nodes[1].dp.learn_mac(mac(2), name_of(2), 0.0)
    small = frame(mac(2), mac(1), 50)
    m.send(1, [small], 1.0)
    (_, _, datagram), = m.wire
    payload = datagram[HEADER_SIZE:]
    nonce = bytes((1, 0, 0, 0)) + FIRST_COUNTER.to_bytes(8, "big")  # peer 1 < peer 2
    plain = nacl.bindings.crypto_aead_aes256gcm_decrypt(payload[16:] + payload[:16], None,
                                                        nonce, key)
    assert plain[:4] == datagram[:4]
    assert plain[4:] == bytes((0, 16)) + name_of(1).to_bytes(6, "big") + name_of(2).to_bytes(
        6, "big") + (len(small) - 10).to_bytes(2, "big") + small
    assert m.take(2) == [small]
    # the other cipher, or the other key, opens nothing
    m.nodes[2].dp.set_peer(name_of(1), 9, m.nodes[1].addr, key, 1400, "secretbox")
    m.send(1, [small], 2.0)
    assert m.take(2) == [] and m.drops(2) == {"auth": 1}


@pytest.mark.parametrize("encrypted", [True, False])
def test_truncated_datagrams_are_counted_drops(backend: Backend, encrypted: bool) -> None:
    m = Mesh(backend, 2, [(1, 2)], encrypted=encrypted)
    m.send(1, [frame(BROADCAST_MAC, mac(1), 200)], 1.0, fault=lambda _, d: d[:-1])
    m.send(1, [frame(BROADCAST_MAC, mac(1), 200)], 1.0, fault=lambda _, d: d[:HEADER_SIZE - 1])
    assert m.take(2) == []
    expected = {"auth": 1, "malformed": 1} if encrypted else {"malformed": 2}
    assert m.drops(2) == expected


def test_lost_fragment_times_out(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)], reassembly_timeout=1.0)
    m.send(1, [frame(BROADCAST_MAC, mac(1), 5000)], 10.0,
           fault=lambda i, d: None if i == 2 else d)
    dp = m.nodes[2].dp
    assert m.take(2) == [] and dp.deadline() == 11.0
    dp.handle_timer(10.9)
    assert m.drops(2) == {}
    dp.handle_timer(11.0)
    assert m.drops(2) == {"reassembly": 1}
    assert dp.deadline() == float("inf")
    later = frame(BROADCAST_MAC, mac(1), 5000)
    m.send(1, [later], 12.0)
    assert m.take(2) == [later]
    assert dp.deadline() == 12.0 + 60  # the sweep of the MAC it learnt


def test_reassembly_table_is_bounded(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    frames = [frame(BROADCAST_MAC, mac(1), 3000 + i) for i in range(70)]
    # only the first of the 3 fragments of each frame arrives: 70 partial frames, of
    # which one neighbour may hold 8 (REASM_PER_PEER): 62 evicted, its oldest first
    m.send(1, frames, 1.0, fault=lambda i, d: d if i % 3 == 1 else None)
    assert m.take(2) == []
    assert m.drops(2) == {"reassembly": 62}
    assert m.nodes[2].dp.deadline() == 2.0
    m.nodes[2].dp.handle_timer(2.0)
    assert m.drops(2) == {"reassembly": 70}


def test_mac_learning_expiry_and_local_destinations(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)], mac_expiry=600.0)
    dp = m.nodes[1].dp
    m.send(1, [frame(BROADCAST_MAC, mac(1), 10)], 1.0)
    assert dp.lookup_mac(mac(1), 1.0) == name_of(1)  # learnt as local
    m.send(1, [frame(mac(1), mac(5), 10)], 2.0)  # to a local MAC: not ours to carry
    assert m.drops(1) == {"local_dst": 1}
    assert m.nodes[2].dp.lookup_mac(mac(1), 600.9) == name_of(1)
    assert m.nodes[2].dp.lookup_mac(mac(1), 601.0) is None
    assert dp.forget_mac(mac(1)) and not dp.forget_mac(mac(1))
    assert dp.lookup_mac(mac(1), 2.0) is None
    assert dp.statistics()["macs"] == 1  # mac(5)
    dp.handle_timer(62.0)  # the sweep is due 60 s after the first MAC: nothing expired yet
    assert dp.statistics()["macs"] == 1
    dp.handle_timer(700.0)
    assert dp.statistics()["macs"] == 0 and dp.deadline() == float("inf")


def test_no_route_ttl_and_loops(backend: Backend) -> None:
    m = Mesh(backend, 3, chain(3))
    dp = m.nodes[1].dp
    dp.learn_mac(mac(7), name_of(7), 0.0)  # behind a peer nobody has a route to
    assert dp.egress([frame(mac(7), mac(1), 10)], 1.0) == []
    assert m.drops(1) == {"no_route": 1}
    # peers 2 and 3 route peer 7 to each other: the frame bounces until its TTL runs out
    dp.set_routes({name_of(2): name_of(2), name_of(7): name_of(2)}, {})
    m.nodes[2].dp.set_routes({name_of(3): name_of(3), name_of(7): name_of(3)}, {})
    m.nodes[3].dp.set_routes({name_of(2): name_of(2), name_of(7): name_of(2)}, {})
    m.send(1, [frame(mac(7), mac(1), 10)], 1.0)
    assert len(m.wire) == backend.TTL
    assert m.drops(2).get("ttl", 0) + m.drops(3).get("ttl", 0) == 1
    # a frame that comes back to where it entered the mesh is dropped there
    m.nodes[2].dp.set_routes({name_of(1): name_of(1), name_of(7): name_of(1)}, {})
    m.send(1, [frame(mac(7), mac(1), 10)], 2.0)
    assert m.drops(1) == {"no_route": 1, "loop": 1}


def test_heartbeats_and_unknown_connections_go_up(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    hb = encode_heartbeat(5, 0, PeerName(name_of(1)), PeerName(name_of(2)), key=None,
                          sender_high=False)
    stranger = bytes((1, 2, 0, 0)) + (12345).to_bytes(8, "big") + bytes(8) + b"x" * 30
    frames, relays, upcalls = m.nodes[2].dp.ingress(
        [(("198.51.100.1", 9), hb), (("198.51.100.2", 7), stranger)], 1.0)
    assert (frames, relays) == ([], [])
    assert upcalls == [(backend.UPCALL_CONTROL, ("198.51.100.1", 9), hb),
                       (backend.UPCALL_UNKNOWN_CONN, ("198.51.100.2", 7), stranger)]
    assert m.stats(2)["upcalls"] == 2


def test_new_session_resets_counters_and_window(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    m.send(1, [frame(BROADCAST_MAC, mac(1), 10)], 1.0)
    old = list(m.wire)
    key = bytes(range(32))
    m.nodes[1].dp.set_peer(name_of(2), 99, m.nodes[2].addr, key, 1400)
    m.nodes[2].dp.set_peer(name_of(1), 99, m.nodes[1].addr, key, 1400)
    assert m.stats(1)["peers"][name_of(2)]["datagrams_out"] == 0
    m.send(1, [frame(BROADCAST_MAC, mac(1), 10)], 2.0)
    assert decode_header_untrusted(m.wire[-1][2]).counter == FIRST_COUNTER
    assert len(m.take(2)) == 2
    m.carry(m.nodes[1].addr, [(to, d) for _, to, d in old], 3.0)  # the old connection's
    assert m.take(2) == [] and m.nodes[2].upcalls[-1][0] == backend.UPCALL_UNKNOWN_CONN
    m.nodes[1].dp.remove_peer(name_of(2))
    assert m.nodes[1].dp.egress([frame(BROADCAST_MAC, mac(1), 10)], 4.0) == []
    assert name_of(2) not in m.stats(1)["peers"]


def test_a_removed_connection_that_comes_back_resumes_its_counters(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    m.send(1, [frame(BROADCAST_MAC, mac(1), 10)], 1.0)
    dp = m.nodes[1].dp
    dp.remove_peer(name_of(2))
    conn = decode_header_untrusted(m.wire[0][2]).conn_id
    dp.set_peer(name_of(2), conn, m.nodes[2].addr, None, 1400)  # not the key it had: fresh
    dp.remove_peer(name_of(2))
    key = bytes(32)
    for x, y in ((1, 2), (2, 1)):  # a new connection, removed after one frame
        m.nodes[x].dp.set_peer(name_of(y), 7, m.nodes[y].addr, key, 1400)
    m.send(1, [frame(BROADCAST_MAC, mac(1), 10)], 2.0)
    dp.remove_peer(name_of(2))
    dp.set_peer(name_of(2), 7, m.nodes[2].addr, key, 1400)  # ... and back: counters resume
    m.send(1, [frame(BROADCAST_MAC, mac(1), 10)], 3.0)
    counters = [decode_header_untrusted(d).counter for _, _, d in m.wire]
    assert counters == [FIRST_COUNTER, FIRST_COUNTER, FIRST_COUNTER + 1]
    assert len(m.take(2)) == 3


def test_misuse_is_a_local_protocol_error(backend: Backend) -> None:
    dp = backend.Dataplane(name_of(1))
    addr = ("192.0.2.2", 6783)
    bad_calls: list[Callable[[], object]] = [
        lambda: dp.set_peer(name_of(1), 1, addr, None, 1400),  # ourself
        lambda: dp.set_peer(1 << 48, 1, addr, None, 1400),
        lambda: dp.set_peer(name_of(2), -1, addr, None, 1400),
        lambda: dp.set_peer(name_of(2), 1, addr, b"short", 1400),
        lambda: dp.set_peer(name_of(2), 1, addr, None, 100),
        lambda: dp.set_peer(name_of(2), 1, ("host.example", 6783), None, 1400),
        lambda: dp.set_peer(name_of(2), 1, ("192.0.2.2", 0), None, 1400),
        lambda: dp.set_peer(name_of(2), 1, ("fe80::1%lo", 6783), None, 1400),
        lambda: dp.set_peer(name_of(2), 1, ("192.0.2.2\0", 6783), None, 1400),
        lambda: dp.set_peer(name_of(2), 1, addr, bytes(32), 1400, "rot13"),
        lambda: dp.set_peer(name_of(2), 1, "192.0.2.2:6783", None, 1400),  # type: ignore[arg-type]
        lambda: dp.learn_mac(b"\x01", name_of(2), 0.0),
        lambda: dp.set_routes({-5: name_of(2)}, {}),
        lambda: backend.Dataplane(name_of(1), mac_expiry=0),
    ]
    for call in bad_calls:
        with pytest.raises(LocalProtocolError):
            call()
    dp.set_peer(name_of(2), 1, addr, None, 1400)
    dp.set_peer(name_of(4), 2, ("2001:db8::4", 6783), None, 1400)  # IPv6 is fine
    with pytest.raises(LocalProtocolError, match="another peer"):
        dp.set_peer(name_of(3), 1, addr, None, 1400)
    if not backend.THREADED:
        with pytest.raises(LocalProtocolError, match="no threads"):
            dp.start(0, 0)


def test_malformed_vnet_header_from_a_peer_is_dropped(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    bad = [vnet(flags=4), vnet(gso_type=2, gso_size=100), vnet(gso_type=1),
           vnet(flags=1, csum_start=60, csum_offset=6), vnet(hdr_len=500), vnet(gso_type=0x80)]
    for meta in bad:
        m.send(1, [frame(BROADCAST_MAC, mac(1), 50, meta=meta)], 1.0)
    m.send(1, [frame(BROADCAST_MAC, mac(1), 5000, meta=bad[0])], 1.0)
    assert m.take(2) == []
    assert m.drops(2) == {"malformed": len(bad) + 1}


def test_wrong_sizes_on_egress(backend: Backend) -> None:
    m = Mesh(backend, 2, [(1, 2)])
    dp = m.nodes[1].dp
    assert dp.egress([bytes(23), frame(BROADCAST_MAC, mac(1), 65553 - 14 + 1)], 1.0) == []
    assert m.drops(1) == {"malformed": 1, "too_big": 1}
    assert m.stats(1)["frames_captured"] == 2
