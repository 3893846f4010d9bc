# The sleeve frames format (docs/wire-format.md, "Sleeve frames"). Integers big-endian
# except the vnet header fields (virtio byte order, little-endian).
#
# type 2 (frames): one or more whole elements, sealed per datagram
#   sleeve header (20)  version 1 | type 2 | reserved 0 (2) | conn id (8) | counter (8)
#   [MAC (16)]          encrypted only; then sealed: [header[0:4]] body
#   body                flags (1) | ttl (1) | source name (6) | destination name (6),
#                       then records to the end: frame length n (2) | vnet (10) | frame (n)
# type 3 (fragment): one piece of one element sealed once, too big for one datagram
#   sleeve header (20)  version 1 | type 3 | reserved 0 | conn id | counter (of the element)
#   fragment (8)        payload length (4) | fragment size (2) | index (1) | count (1)
#   data                payload bytes [index * size, ...), where the payload is
#                       [MAC (16) | sealed: 01 03 00 00 |] flags ttl src dst (14) | vnet | frame
#
# The Python copy of these numbers is router/wire/sleeve.py; wire_constants() (api.pxi)
# exports the compiled ones under its names and tests/unit/test_sleeve_wire.py compares
# them, so change both together.

cdef enum:
    VERSION = 1
    TYPE_HEARTBEAT = 1
    TYPE_FRAMES = 2
    TYPE_FRAGMENT = 3
    HEADER_SIZE = 20
    MAC_SIZE = 16
    BOUND_SIZE = 4
    SEAL_OVERHEAD = 20             # MAC + the bound copy of the header's first 4 bytes
    BODY_HEADER = 14
    RECORD_HEADER = 2
    META_SIZE = 10                 # struct virtio_net_hdr without num_buffers
    FRAG_HEADER = 8
    FLAG_BROADCAST = 2
    INITIAL_TTL = 16               # hops a frame may take across the mesh
    MIN_FRAME = 14                 # an Ethernet header
    MAX_FRAME = 65553              # 64 KiB IP packet + Ethernet + one 802.1Q tag
    MAX_ELEMENT = 65563            # META_SIZE + MAX_FRAME
    MAX_PAYLOAD = 65597            # SEAL_OVERHEAD + BODY_HEADER + MAX_ELEMENT
    MAX_FRAGMENTS = 255
    MIN_DATAGRAM = 512             # smallest max_datagram a peer may have (bytes)
    MAX_DATAGRAM = 65507           # IPv4 UDP payload limit
    KEY_SIZE = 32
    NONCE_SIZE = 24                # secretbox
    GCM_NONCE_SIZE = 12            # AES-256-GCM
    REPLAY_WINDOW = 1024           # counters, as router.crypto.nonces.ReplayWindow
    REPLAY_WORDS = 16              # REPLAY_WINDOW / 64
    PLAIN_CONFIRM = 4              # strays in a row that move a plain window (nonces.py)
    RETIRED_SESSIONS = 256         # removed sessions whose counters are remembered

# Ciphers of an encrypted session (router.crypto.ciphers.Cipher, same numbers).
cdef enum:
    CIPHER_SECRETBOX = 0           # XSalsa20-Poly1305 (libsodium)
    CIPHER_AES256GCM = 1           # AES-256-GCM (OpenSSL), with a key of its own

# Frames count from 2**63: the connection's heartbeats (sealed by Python with the same
# key, transport and direction) count from 0, so no nonce is ever used twice.
cdef uint64_t FRAME_COUNTER_BASE = <uint64_t>1 << 63

# virtio_net_hdr values (include/uapi/linux/virtio_net.h)
cdef enum:
    VNET_F_NEEDS_CSUM = 1
    VNET_F_DATA_VALID = 2
    VNET_GSO_NONE = 0
    VNET_GSO_TCPV4 = 1
    VNET_GSO_UDP = 3
    VNET_GSO_TCPV6 = 4
    VNET_GSO_UDP_L4 = 5
    VNET_GSO_ECN = 0x80

# Drop reasons: indices into DP.drops, names in DROP_REASONS (same order).
cdef enum:
    DROP_NO_ROUTE = 0
    DROP_AUTH
    DROP_REPLAY
    DROP_TOO_BIG
    DROP_QUEUE_FULL
    DROP_MALFORMED
    DROP_TTL
    DROP_REASSEMBLY
    DROP_LOCAL_DST
    DROP_LOOP
    DROP_TAP_WRITE
    DROP_SEND
    DROP_SOURCE                    # plain session: not from the peer's address and port
    DROP_KERNEL_PEER               # from a peer the kernel (fastdp) delivers: not twice
    N_DROPS

cdef enum:
    UPCALL_CONTROL_KIND = 1        # a non-frame packet (heartbeat): Python's SleeveDemux
    UPCALL_UNKNOWN_CONN_KIND = 2   # frames for a connection id the data plane lacks
    UPCALL_HEARTBEAT_KIND = 3      # a fastdp heartbeat frame from the TAP (no vnet header)
    ETH_P_HEARTBEAT = 0x88B5       # fastdp heartbeat ethertype (overlay/fastdp/heartbeat.py)
    HEARTBEAT_UPCALL_LIMIT = 128   # heartbeat upcalls waiting at most (half the queue)


cdef inline bint vnet_ok(const uint8_t *meta, uint32_t frame_len) noexcept nogil:
    """Is a received vnet header one the kernel accepts for a frame of this length?"""
    cdef uint8_t flags = meta[0]
    cdef uint8_t gso = meta[1] & 0x7f
    if flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID):
        return False
    if gso != VNET_GSO_NONE and gso != VNET_GSO_TCPV4 and gso != VNET_GSO_UDP \
            and gso != VNET_GSO_TCPV6 and gso != VNET_GSO_UDP_L4:
        return False
    if gso == VNET_GSO_NONE and (meta[1] & VNET_GSO_ECN):
        return False
    if gso != VNET_GSO_NONE and fp_getle16(meta + 4) == 0:
        return False
    if fp_getle16(meta + 2) > frame_len:
        return False
    if flags & VNET_F_NEEDS_CSUM and \
            <uint32_t>fp_getle16(meta + 6) + fp_getle16(meta + 8) + 2 > frame_len:
        return False
    return True


cdef inline void make_nonce(uint8_t *nonce, bint sender_high, uint64_t counter) noexcept nogil:
    """router.crypto.nonces.make_nonce(Transport.UDP, sender_high, counter)."""
    memset(nonce, 0, NONCE_SIZE)
    nonce[0] = 1
    nonce[1] = 1 if sender_high else 0
    fp_put64(nonce + 16, counter)


cdef inline void make_gcm_nonce(uint8_t *nonce, bint sender_high, uint64_t counter) noexcept nogil:
    """router.crypto.ciphers.gcm_nonce(sender_high, counter): 01 dir 00 00 counter."""
    nonce[0] = 1
    nonce[1] = 1 if sender_high else 0
    nonce[2] = 0
    nonce[3] = 0
    fp_put64(nonce + 4, counter)


cdef struct Replay:
    # Counters (highest - 1023 .. highest]; bit (c % 1024) says c was accepted.
    uint64_t highest
    int any
    uint32_t stray_run             # plain sessions: strays in a row (PlainReplayWindow)
    uint64_t stray_last            # the last of them
    uint64_t bits[REPLAY_WORDS]


cdef inline bint replay_stray(const Replay *r, uint64_t counter) noexcept nogil:
    """Outside the window: too old, or REPLAY_WINDOW or more ahead."""
    if not r.any:
        return False
    if counter > r.highest:
        return counter - r.highest >= REPLAY_WINDOW
    return r.highest - counter >= REPLAY_WINDOW


cdef inline bint replay_check(const Replay *r, uint64_t counter, bint plain) noexcept nogil:
    """ReplayWindow.check (encrypted) or PlainReplayWindow.check (plain: strays pass)."""
    if not r.any or counter > r.highest:
        return True
    if r.highest - counter >= REPLAY_WINDOW:
        return plain
    cdef uint32_t bit = counter % REPLAY_WINDOW
    return not (r.bits[bit >> 6] >> (bit & 63)) & 1


cdef inline void replay_accept(Replay *r, uint64_t counter, bint plain) noexcept nogil:
    """ReplayWindow.accept / PlainReplayWindow.accept for a counter that passed the check.

    A plain stray leaves the window alone until PLAIN_CONFIRM strays in a row (each at
    most REPLAY_WINDOW above the one before) confirm it: then it restarts there."""
    cdef uint64_t c
    cdef uint32_t bit
    if plain and replay_stray(r, counter):
        if r.stray_run > 0 and counter > r.stray_last and \
                counter - r.stray_last <= REPLAY_WINDOW:
            r.stray_run += 1
        else:
            r.stray_run = 1
        r.stray_last = counter
        if r.stray_run < PLAIN_CONFIRM:
            return
        r.stray_run = 0
        memset(r.bits, 0, sizeof(r.bits))
        r.highest = counter
    elif not r.any or counter - r.highest >= REPLAY_WINDOW and counter > r.highest:
        memset(r.bits, 0, sizeof(r.bits))
        r.any = 1
        r.highest = counter
    elif counter > r.highest:
        c = r.highest + 1
        while c < counter:
            bit = c % REPLAY_WINDOW
            r.bits[bit >> 6] &= ~(<uint64_t>1 << (bit & 63))
            c += 1
        r.highest = counter
    bit = counter % REPLAY_WINDOW
    r.bits[bit >> 6] |= <uint64_t>1 << (bit & 63)
