# The encoder: elements (vnet header + frame, wire byte order) for a neighbour become
# sealed datagrams in an arena. One encoder per thread (TX for captured frames, RX for
# relays) plus one for Python's batch calls.
#
# Packing: each neighbour has at most one *open* datagram. An element whose body header
# (flags, ttl, source, destination) equals the open one's and whose record fits is
# appended to it; otherwise the open datagram is closed first, so datagrams to one
# neighbour leave in the order their elements came. Closing takes the neighbour's next
# counter and seals in place. At the end of a batch the still-open datagrams are closed
# in the order they were opened. An element that does not fit an empty datagram is
# sealed once under its own counter and its payload cut into type-3 fragments of
# (max_datagram - 28) bytes, queued at once.
#
# Bounds: Python's encoder grows as needed (one call, one batch); the threads' encoders
# have a fixed arena and, when the next datagram might not fit, flush (close and send
# everything) first.

cdef enum:
    THREAD_ARENA = 4 << 20         # bytes of datagrams a thread builds before sending
    THREAD_OUTS = 4096             # datagrams a thread builds before sending


cdef struct Out:
    int32_t peer
    uint32_t off
    uint32_t len


cdef struct Encoder:
    DP *dp
    int grow                       # 1: Python's (grow); 0: a thread's (flush when full)
    uint8_t *arena
    size_t cap
    size_t used
    Out *outs
    int32_t nouts
    int32_t outs_cap
    int32_t *open_off              # per peer: arena offset of its open datagram, or -1
    uint32_t *open_len             # per peer: bytes in its open datagram
    int32_t *open_pos              # per peer: its position in open_list
    int32_t *open_list             # peers in the order their open datagrams were opened
    int32_t nopen
    int fd                         # threads: the UDP socket
    fp_sender *sender
    fp_send_item *items
    void **gcm                     # cipher contexts: [2 * peer + 1] seals, [2 * peer] opens
    uint64_t *gcm_gen              # the Peer.key_gen each context holds (0: none)


cdef Encoder *encoder_new(DP *dp, int grow, size_t arena, int32_t outs) noexcept nogil:
    cdef Encoder *e = <Encoder *>calloc(1, sizeof(Encoder))
    cdef int32_t i
    if e == NULL:
        return NULL
    e.dp = dp
    e.grow = grow
    e.cap = arena
    e.outs_cap = outs
    e.fd = -1
    e.arena = <uint8_t *>malloc(arena)
    e.outs = <Out *>malloc(outs * sizeof(Out))
    e.open_list = <int32_t *>malloc(outs * sizeof(int32_t))
    e.open_off = <int32_t *>malloc(MAX_PEERS * sizeof(int32_t))
    e.open_len = <uint32_t *>malloc(MAX_PEERS * sizeof(uint32_t))
    e.open_pos = <int32_t *>malloc(MAX_PEERS * sizeof(int32_t))
    e.gcm = <void **>calloc(2 * MAX_PEERS, sizeof(void *))
    e.gcm_gen = <uint64_t *>calloc(2 * MAX_PEERS, sizeof(uint64_t))
    if not (e.arena and e.outs and e.open_list and e.open_off and e.open_len and e.open_pos
            and e.gcm and e.gcm_gen):
        encoder_free(e)
        return NULL
    for i in range(MAX_PEERS):
        e.open_off[i] = -1
    return e


cdef void encoder_free(Encoder *e) noexcept nogil:
    cdef int32_t i
    if e == NULL:
        return
    if e.gcm != NULL:
        for i in range(2 * MAX_PEERS):
            if e.gcm[i] != NULL:
                fp_gcm_free(e.gcm[i])
    free(e.gcm)
    free(e.gcm_gen)
    free(e.arena)
    free(e.outs)
    free(e.open_list)
    free(e.open_off)
    free(e.open_len)
    free(e.open_pos)
    free(e.sender)
    free(e.items)
    free(e)


cdef inline uint32_t body_offset(const Peer *p) noexcept nogil:
    return HEADER_SIZE + (SEAL_OVERHEAD if p.encrypted else 0)


cdef inline void queue_datagram(Encoder *e, int32_t peer, uint32_t off,
                                uint32_t length) noexcept nogil:
    cdef Peer *p = &e.dp.peers[peer]
    e.outs[e.nouts].peer = peer
    e.outs[e.nouts].off = off
    e.outs[e.nouts].len = length
    e.nouts += 1
    fp_add64(&p.datagrams_out, 1)
    fp_add64(&p.bytes_out, length)


cdef inline void put_sleeve_header(uint8_t *d, uint8_t ptype, uint64_t conn_id,
                                   uint64_t counter) noexcept nogil:
    d[0] = VERSION
    d[1] = ptype
    d[2] = 0
    d[3] = 0
    fp_put64(d + 4, conn_id)
    fp_put64(d + 12, counter)


# ---- cipher contexts ------------------------------------------------------------------
# An AES-256-GCM context holds an expanded key and serves one thread, so every encoder
# keeps two per peer slot (seal, open), expanded again whenever the slot's key_gen moves
# on (a new session, or the slot reused by another peer). Threads read Peer.key under
# the read lock, which set_peer's write lock excludes.

cdef void *cipher_ctx(Encoder *e, const Peer *p, int enc) noexcept nogil:
    """This encoder's AES-256-GCM context for ``p`` (enc: 1 seal, 0 open); NULL if out
    of memory."""
    cdef size_t slot = <size_t>(p - e.dp.peers) * 2 + <size_t>enc
    cdef void *ctx = e.gcm[slot]
    if ctx == NULL:
        ctx = fp_gcm_new()
        if ctx == NULL:
            return NULL
        e.gcm[slot] = ctx
        e.gcm_gen[slot] = 0
    if e.gcm_gen[slot] != p.key_gen:
        if fp_gcm_key(ctx, p.key, enc) != 0:
            e.gcm_gen[slot] = 0
            return NULL
        e.gcm_gen[slot] = p.key_gen
    return ctx


cdef void seal(Encoder *e, const Peer *p, uint8_t *mac, uint8_t *data, uint32_t length,
               uint64_t counter) noexcept nogil:
    """Seal ``data`` in place under the nonce for ``counter``; MAC to ``mac``. Should
    the cipher fail (no memory), the datagram goes out zeroed: it fails to open, is
    counted there, and leaks nothing."""
    cdef uint8_t nonce[NONCE_SIZE]
    cdef void *ctx
    if p.cipher == CIPHER_AES256GCM:
        ctx = cipher_ctx(e, p, 1)
        make_gcm_nonce(nonce, p.high, counter)
        if ctx != NULL and fp_gcm_seal(ctx, mac, data, length, nonce) == 0:
            return
        memset(mac, 0, MAC_SIZE)
        memset(data, 0, length)
        drop(e.dp, DROP_SEND)
        return
    make_nonce(nonce, p.high, counter)
    crypto_secretbox_detached(data, mac, data, length, nonce, p.key)


cdef void close_datagram(Encoder *e, int32_t peer, uint32_t off, uint32_t length) noexcept nogil:
    """Write the sleeve header, seal in place, and queue the datagram for sending."""
    cdef Peer *p = &e.dp.peers[peer]
    cdef uint8_t *d = e.arena + off
    cdef uint64_t counter = fp_add64(&p.send_counter, 1)
    put_sleeve_header(d, TYPE_FRAMES, p.conn_id, counter)
    if p.encrypted:
        memcpy(d + HEADER_SIZE + MAC_SIZE, d, BOUND_SIZE)
        seal(e, p, d + HEADER_SIZE, d + HEADER_SIZE + MAC_SIZE,
             length - HEADER_SIZE - MAC_SIZE, counter)
    queue_datagram(e, peer, off, length)


cdef inline void close_open(Encoder *e, int32_t peer) noexcept nogil:
    close_datagram(e, peer, <uint32_t>e.open_off[peer], e.open_len[peer])
    e.open_list[e.open_pos[peer]] = -1
    e.open_off[peer] = -1


cdef void encoder_finish(Encoder *e) noexcept nogil:
    """Close every open datagram, oldest first."""
    cdef int32_t i, peer
    for i in range(e.nopen):
        peer = e.open_list[i]
        if peer >= 0 and e.open_off[peer] >= 0:
            close_open(e, peer)
    e.nopen = 0


cdef void encoder_flush(Encoder *e) noexcept nogil:
    """Threads: close everything, send it (batched, UDP GSO trains), reset the arena."""
    cdef int32_t i
    cdef uint64_t failed
    encoder_finish(e)
    if e.sender != NULL and e.nouts:
        for i in range(e.nouts):
            e.items[i].data = e.arena + e.outs[i].off
            e.items[i].len = e.outs[i].len
            e.items[i].to = &e.dp.peers[e.outs[i].peer].addr
        failed = fp_sender_send(e.sender, e.fd, e.items, e.nouts)
        if failed:
            fp_add64(&e.dp.drops[DROP_SEND], failed)
    e.nouts = 0
    e.used = 0


cdef bint reserve(Encoder *e, size_t nbytes, int32_t ndatagrams) noexcept nogil:
    """Room for ``nbytes`` more arena bytes and ``ndatagrams`` more datagrams."""
    cdef size_t cap
    cdef int32_t n
    cdef void *p
    if e.used + nbytes <= e.cap and e.nouts + ndatagrams <= e.outs_cap \
            and e.nopen + ndatagrams <= e.outs_cap:
        return True
    if not e.grow:
        encoder_flush(e)
        return e.used + nbytes <= e.cap and ndatagrams <= e.outs_cap
    cap = e.cap
    while e.used + nbytes > cap:
        cap *= 2
    if cap != e.cap:
        p = realloc(e.arena, cap)
        if p == NULL:
            return False
        e.arena = <uint8_t *>p
        e.cap = cap
    n = e.outs_cap
    while e.nouts + ndatagrams > n or e.nopen + ndatagrams > n:
        n *= 2
    if n != e.outs_cap:
        p = realloc(e.outs, n * sizeof(Out))
        if p == NULL:
            return False
        e.outs = <Out *>p
        p = realloc(e.open_list, n * sizeof(int32_t))
        if p == NULL:
            return False
        e.open_list = <int32_t *>p
        e.outs_cap = n
    return True


cdef inline void put_body_header(uint8_t *b, uint8_t flags, uint8_t ttl, uint64_t src,
                                 uint64_t dst) noexcept nogil:
    b[0] = flags
    b[1] = ttl
    fp_put48(b + 2, src)
    fp_put48(b + 8, dst)


cdef void emit(Encoder *e, int32_t peer, uint8_t flags, uint8_t ttl, uint64_t src,
               uint64_t dst, const uint8_t *elem, uint32_t elen) noexcept nogil:
    """Queue one element (wire order) for neighbour ``peer`` (which has a session)."""
    cdef Peer *p = &e.dp.peers[peer]
    cdef uint32_t base = body_offset(p)
    cdef uint32_t cap = p.max_datagram
    cdef uint32_t rec = RECORD_HEADER + elen
    cdef uint8_t hdr[BODY_HEADER]
    cdef uint8_t *d
    put_body_header(hdr, flags, ttl, src, dst)
    if e.open_off[peer] >= 0:
        d = e.arena + e.open_off[peer]
        if memcmp(d + base, hdr, BODY_HEADER) == 0 and e.open_len[peer] + rec <= cap:
            fp_put16(d + e.open_len[peer], <uint16_t>(elen - META_SIZE))
            memcpy(d + e.open_len[peer] + RECORD_HEADER, elem, elen)
            e.open_len[peer] += rec
            fp_add64(&p.frames_out, 1)
            return
        close_open(e, peer)
    if base + BODY_HEADER + rec <= cap:
        if not reserve(e, cap, 1):
            drop(e.dp, DROP_QUEUE_FULL)
            return
        d = e.arena + e.used
        e.open_off[peer] = <int32_t>e.used
        e.used += cap
        memcpy(d + base, hdr, BODY_HEADER)
        fp_put16(d + base + BODY_HEADER, <uint16_t>(elen - META_SIZE))
        memcpy(d + base + BODY_HEADER + RECORD_HEADER, elem, elen)
        e.open_len[peer] = base + BODY_HEADER + rec
        e.open_pos[peer] = e.nopen
        e.open_list[e.nopen] = peer
        e.nopen += 1
        fp_add64(&p.frames_out, 1)
        return
    fragment(e, peer, hdr, elem, elen)


cdef void fragment(Encoder *e, int32_t peer, const uint8_t *hdr, const uint8_t *elem,
                   uint32_t elen) noexcept nogil:
    """Seal an element once and queue its payload as type-3 fragments."""
    cdef Peer *p = &e.dp.peers[peer]
    cdef uint32_t extra = SEAL_OVERHEAD if p.encrypted else 0
    cdef uint32_t length = extra + BODY_HEADER + elen
    cdef uint32_t fsize = p.max_datagram - HEADER_SIZE - FRAG_HEADER
    cdef uint32_t count = (length + fsize - 1) // fsize
    cdef uint32_t i, dlen
    cdef uint64_t counter
    cdef uint8_t *payload
    cdef uint8_t *d
    if count > MAX_FRAGMENTS:
        drop(e.dp, DROP_TOO_BIG)
        return
    if not reserve(e, 2 * length + count * (HEADER_SIZE + FRAG_HEADER), count):
        drop(e.dp, DROP_QUEUE_FULL)
        return
    counter = fp_add64(&p.send_counter, 1)
    payload = e.arena + e.used
    e.used += length
    memcpy(payload + extra, hdr, BODY_HEADER)
    memcpy(payload + extra + BODY_HEADER, elem, elen)
    if p.encrypted:
        payload[MAC_SIZE] = VERSION
        payload[MAC_SIZE + 1] = TYPE_FRAGMENT
        payload[MAC_SIZE + 2] = 0
        payload[MAC_SIZE + 3] = 0
        seal(e, p, payload, payload + MAC_SIZE, length - MAC_SIZE, counter)
    for i in range(count):
        dlen = fsize if i < count - 1 else length - i * fsize
        d = e.arena + e.used
        put_sleeve_header(d, TYPE_FRAGMENT, p.conn_id, counter)
        fp_put32(d + HEADER_SIZE, length)
        fp_put16(d + HEADER_SIZE + 4, <uint16_t>fsize)
        d[HEADER_SIZE + 6] = <uint8_t>i
        d[HEADER_SIZE + 7] = <uint8_t>count
        memcpy(d + HEADER_SIZE + FRAG_HEADER, payload + i * fsize, dlen)
        queue_datagram(e, peer, <uint32_t>e.used, HEADER_SIZE + FRAG_HEADER + dlen)
        e.used += HEADER_SIZE + FRAG_HEADER + dlen
    fp_add64(&p.frames_out, 1)
