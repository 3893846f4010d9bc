# The per-packet pipeline, shared by Python's batch calls and the data-plane threads.
#
# egress (frames read from the TAP, each = vnet header + Ethernet frame):
#   1. check the size (malformed / too_big); a fastdp heartbeat (ethertype 0x88B5 to our
#      heartbeat MAC, arrived through the VXLAN device) -> upcall, not forwarded
#   2. learn the source MAC as local
#   3. destination MAC -> peer (MAC table), or broadcast for group and unknown MACs;
#      a destination MAC known to be local is dropped (local_dst)
#   4. peer -> next hop (unicast route), or our broadcast hops; a unicast IPv4 packet
#      with DF set too big for the hop's path is answered with ICMP "fragmentation
#      needed" into the TAP (icmp.pxi) and dropped (too_big)
#   5. encode for each next hop (encoder.pxi: pack, fragment, seal)
# ingress (datagrams from the UDP socket):
#   1. sleeve header: malformed, or a heartbeat -> upcall, unknown connection id -> upcall
#   2. a plain session (no MAC): the source must be the peer's address and port (source)
#   3. replay window check (cheap, before any crypto; a plain session's window lets
#      strays through, see wire.pxi / PlainReplayWindow)
#   4. type 2: open (auth), and only then accept the counter (the window moves); the
#      records are all checked before any is used (malformed drops the whole datagram)
#      type 3: into reassembly (per-neighbour quota); once complete: replay check, open
#      (auth), accept
#   5. per element: for us -> learn the source MAC, deliver to the TAP; for another
#      peer -> relay to its next hop; broadcast -> relay along the origin's tree (not
#      back to where it came from) and deliver; an origin the kernel delivers from
#      (set_kernel_peers: on fastdp with us) is relayed but not delivered (kernel_peer)

cdef enum:
    SINK_COLLECT = 0               # Python's batch call: copy out
    SINK_THREAD = 1                # a thread: write the TAP (RX: queue upcalls)


cdef struct UpcallSlot:
    uint32_t kind
    uint32_t len
    sockaddr_storage addr
    uint8_t *data                  # MAX_DATAGRAM bytes


cdef struct UpcallQueue:
    pthread_mutex_t lock
    pthread_cond_t cond
    UpcallSlot *slots
    int32_t cap
    int32_t head                   # next to pop
    int32_t count
    int closed


cdef struct Sink:
    int mode
    # SINK_COLLECT: delivered elements (host order) and upcalls (datagram index, kind)
    uint8_t *buf
    size_t buf_cap
    size_t buf_used
    uint32_t *frames               # pairs: offset in buf, length
    int32_t nframes
    int32_t frames_cap             # in uint32_t
    int32_t *up                    # pairs: datagram index, kind
    int32_t nup
    int32_t up_cap                 # in int32_t
    # SINK_THREAD
    int tap_fd
    UpcallQueue *queue
    const sockaddr_storage *from_      # the current batch's source addresses
    const int *dgram_from


cdef bint grow_buffer(void **p, int32_t *cap, int32_t need, size_t item) noexcept nogil:
    cdef int32_t n = cap[0] if cap[0] else 64
    cdef void *q
    while n < need:
        n *= 2
    if n == cap[0]:
        return True
    q = realloc(p[0], n * item)
    if q == NULL:
        return False
    p[0] = q
    cap[0] = n
    return True


cdef bint upcall_push(UpcallQueue *q, uint32_t kind, const sockaddr_storage *addr,
                      const uint8_t *data, uint32_t length, int32_t limit) noexcept nogil:
    """Queue an upcall unless ``limit`` (or the capacity) are waiting already."""
    cdef UpcallSlot *s
    cdef bint ok = False
    pthread_mutex_lock(&q.lock)
    if q.count < q.cap and q.count < limit and not q.closed:
        s = &q.slots[(q.head + q.count) % q.cap]
        if s.data == NULL:
            s.data = <uint8_t *>malloc(MAX_DATAGRAM)
        if s.data != NULL:
            s.kind = kind
            s.len = length
            s.addr = addr[0]
            memcpy(s.data, data, length)
            q.count += 1
            ok = True
            pthread_cond_signal(&q.cond)
    pthread_mutex_unlock(&q.lock)
    return ok


cdef void sink_upcall(DP *dp, Sink *s, int32_t index, uint32_t kind, const uint8_t *data,
                      uint32_t length) noexcept nogil:
    if s.mode == SINK_COLLECT:
        if not grow_buffer(<void **>&s.up, &s.up_cap, 2 * s.nup + 2, sizeof(int32_t)):
            drop(dp, DROP_QUEUE_FULL)
            return
        s.up[2 * s.nup] = index
        s.up[2 * s.nup + 1] = <int32_t>kind
        s.nup += 1
    elif not upcall_push(s.queue, kind, &s.from_[s.dgram_from[index]], data, length, s.queue.cap):
        drop(dp, DROP_QUEUE_FULL)
        return
    fp_add64(&dp.upcalls, 1)


cdef void sink_heartbeat(DP *dp, Sink *s, const uint8_t *frame, uint32_t length) noexcept nogil:
    """Pass a heartbeat frame up (both modes: the upcall queue, at most
    HEARTBEAT_UPCALL_LIMIT waiting, so heartbeats never fill it for control upcalls)."""
    cdef sockaddr_storage none
    memset(&none, 0, sizeof(none))     # AF_UNSPEC: ("", 0) in Python
    if length > MAX_DATAGRAM:
        length = MAX_DATAGRAM          # a heartbeat is 60 bytes; keep a slot's bound
    if s.queue == NULL or not upcall_push(s.queue, UPCALL_HEARTBEAT_KIND, &none, frame,
                                          length, HEARTBEAT_UPCALL_LIMIT):
        drop(dp, DROP_QUEUE_FULL)
        return
    fp_add64(&dp.upcalls, 1)


cdef void sink_deliver(DP *dp, Sink *s, uint8_t *elem, uint32_t elen) noexcept nogil:
    """Hand an element (wire order; converted in place) to the TAP."""
    cdef size_t cap
    cdef void *p
    fp_vnet_wire_to_host(elem, elem)
    if s.mode == SINK_THREAD:
        if c_write(s.tap_fd, elem, elen) != <ssize_t>elen:
            drop(dp, DROP_TAP_WRITE)
            return
    else:
        if s.buf_used + elen > s.buf_cap:
            cap = s.buf_cap if s.buf_cap else 65536
            while s.buf_used + elen > cap:
                cap *= 2
            p = realloc(s.buf, cap)
            if p == NULL:
                drop(dp, DROP_QUEUE_FULL)
                return
            s.buf = <uint8_t *>p
            s.buf_cap = cap
        if not grow_buffer(<void **>&s.frames, &s.frames_cap, 2 * s.nframes + 2,
                           sizeof(uint32_t)):
            drop(dp, DROP_QUEUE_FULL)
            return
        memcpy(s.buf + s.buf_used, elem, elen)
        s.frames[2 * s.nframes] = <uint32_t>s.buf_used
        s.frames[2 * s.nframes + 1] = elen
        s.nframes += 1
        s.buf_used += elen
    fp_add64(&dp.frames_delivered, 1)


# ---- egress -------------------------------------------------------------------------------

cdef void egress_one(DP *dp, Encoder *e, Sink *s, uint8_t *elem, uint32_t elen,
                     double now) noexcept nogil:
    cdef const uint8_t *frame = elem + META_SIZE
    cdef uint64_t dest = 0
    cdef int32_t hop, origin, i
    cdef Peer *o
    cdef uint8_t reply[ICMP_REPLY_MAX]
    cdef uint32_t rlen
    fp_add64(&dp.frames_captured, 1)
    if elen < META_SIZE + MIN_FRAME:
        drop(dp, DROP_MALFORMED)
        return
    if elen > MAX_ELEMENT:
        drop(dp, DROP_TOO_BIG)
        return
    if frame[12] == (ETH_P_HEARTBEAT >> 8) and frame[13] == (ETH_P_HEARTBEAT & 0xff) and \
            dp.heartbeat_mac != 0 and fp_get48(frame) == dp.heartbeat_mac:
        sink_heartbeat(dp, s, frame, elen - META_SIZE)
        return
    fp_vnet_host_to_wire(elem, elem)
    if not frame[6] & 1:
        mac_learn(dp, fp_get48(frame + 6), dp.ourself, now)
    if not frame[0] & 1 and mac_lookup(dp, fp_get48(frame), now, &dest):
        if dest == dp.ourself:
            drop(dp, DROP_LOCAL_DST)
            return
        hop = route_hop(dp, dest)
        if hop < 0:
            drop(dp, DROP_NO_ROUTE)
            return
        rlen = frag_needed(elem, elen, overlay_mtu(&dp.peers[hop]), reply)
        if rlen:                       # DF and too big for the path: tell the sender
            drop(dp, DROP_TOO_BIG)
            fp_add64(&dp.frag_needed, 1)
            sink_deliver(dp, s, reply, rlen)
            return
        emit(e, hop, 0, INITIAL_TTL, dp.ourself, dest, elem, elen)
        return
    origin = find_name(dp, dp.ourself)
    if origin < 0 or dp.peers[origin].bcast_count == 0:
        drop(dp, DROP_NO_ROUTE)
        return
    o = &dp.peers[origin]
    for i in range(o.bcast_start, o.bcast_start + o.bcast_count):
        hop = dp.pool[i]
        if dp.peers[hop].has_session:
            emit(e, hop, FLAG_BROADCAST, INITIAL_TTL, dp.ourself, 0, elem, elen)
        else:
            drop(dp, DROP_NO_ROUTE)


cdef void egress_batch(DP *dp, Encoder *e, Sink *s, uint8_t **elems, const uint32_t *lens,
                       int32_t n, double now) noexcept nogil:
    cdef int32_t i
    for i in range(n):
        egress_one(dp, e, s, elems[i], lens[i], now)
    encoder_finish(e)


# ---- ingress ------------------------------------------------------------------------------

cdef void handle_element(DP *dp, Encoder *e, Sink *s, int32_t from_peer, uint8_t flags,
                         uint8_t ttl, uint64_t src, uint64_t dst, uint8_t *elem,
                         uint32_t elen, double now) noexcept nogil:
    cdef int32_t hop, origin, i
    cdef const uint8_t *frame = elem + META_SIZE
    fp_add64(&dp.peers[from_peer].frames_in, 1)
    if flags & FLAG_BROADCAST:
        origin = find_name(dp, src)
        if origin >= 0:
            for i in range(dp.peers[origin].bcast_start,
                           dp.peers[origin].bcast_start + dp.peers[origin].bcast_count):
                hop = dp.pool[i]
                if hop == from_peer:
                    continue
                if not dp.peers[hop].has_session:
                    drop(dp, DROP_NO_ROUTE)
                elif ttl <= 1:
                    drop(dp, DROP_TTL)
                else:
                    emit(e, hop, FLAG_BROADCAST, ttl - 1, src, 0, elem, elen)
                    fp_add64(&dp.frames_relayed, 1)
    elif dst != dp.ourself:
        hop = route_hop(dp, dst)
        if hop < 0:
            drop(dp, DROP_NO_ROUTE)
        elif ttl <= 1:
            drop(dp, DROP_TTL)
        else:
            emit(e, hop, 0, ttl - 1, src, dst, elem, elen)
            fp_add64(&dp.frames_relayed, 1)
        return
    if not frame[6] & 1:
        mac_learn(dp, fp_get48(frame + 6), src, now)
    if dp.n_kernel_peers and is_kernel_peer(dp, src):
        drop(dp, DROP_KERNEL_PEER)     # the kernel's VXLAN device delivered it already
        return
    sink_deliver(dp, s, elem, elen)


cdef bint records_ok(const uint8_t *body, uint32_t blen) noexcept nogil:
    """Does the rest of a whole-frames body split exactly into valid records?"""
    cdef uint32_t pos = BODY_HEADER, flen
    if pos == blen:
        return False
    while pos < blen:
        if blen - pos < RECORD_HEADER + META_SIZE:
            return False
        flen = fp_get16(body + pos)
        if flen < MIN_FRAME or RECORD_HEADER + META_SIZE + flen > blen - pos:
            return False
        if not vnet_ok(body + pos + RECORD_HEADER, flen):
            return False
        pos += RECORD_HEADER + META_SIZE + flen
    return True


cdef int body_check(DP *dp, const uint8_t *body, uint32_t blen) noexcept nogil:
    """Check a body header; 0 if usable, else the drop reason."""
    if blen < BODY_HEADER:
        return DROP_MALFORMED
    if body[0] & ~FLAG_BROADCAST or body[1] == 0 or \
            (body[0] & FLAG_BROADCAST and fp_get48(body + 8) != 0):
        return DROP_MALFORMED
    if fp_get48(body + 2) == dp.ourself:
        return DROP_LOOP
    return 0


cdef void ingress_records(DP *dp, Encoder *e, Sink *s, int32_t peer, uint8_t *body,
                          uint32_t blen, double now) noexcept nogil:
    """A type-2 body: its header, then whole records."""
    cdef int reason = body_check(dp, body, blen)
    cdef uint32_t pos, flen
    if reason == 0 and not records_ok(body, blen):
        reason = DROP_MALFORMED
    if reason:
        drop(dp, reason)
        return
    pos = BODY_HEADER
    while pos < blen:
        flen = fp_get16(body + pos)
        handle_element(dp, e, s, peer, body[0], body[1], fp_get48(body + 2),
                       fp_get48(body + 8), body + pos + RECORD_HEADER, META_SIZE + flen, now)
        pos += RECORD_HEADER + META_SIZE + flen


cdef bint open_payload(Encoder *e, Peer *p, uint8_t *d, uint8_t *payload,
                       uint32_t length, uint64_t counter) noexcept nogil:
    """Open [MAC | ciphertext] in place and check the bound copy of d[0:4]."""
    cdef uint8_t nonce[NONCE_SIZE]
    cdef void *ctx
    if p.cipher == CIPHER_AES256GCM:
        ctx = cipher_ctx(e, p, 0)
        make_gcm_nonce(nonce, not p.high, counter)
        if ctx == NULL or fp_gcm_open(ctx, payload + MAC_SIZE, length - MAC_SIZE, payload,
                                      nonce) != 0:
            return False
    else:
        make_nonce(nonce, not p.high, counter)
        if crypto_secretbox_open_detached(payload + MAC_SIZE, payload + MAC_SIZE, payload,
                                          length - MAC_SIZE, nonce, p.key) != 0:
            return False
    return memcmp(payload + MAC_SIZE, d, BOUND_SIZE) == 0


cdef void ingress_fragment(DP *dp, Encoder *e, Sink *s, int32_t peer, uint8_t *d,
                           uint32_t length, uint64_t counter, double now) noexcept nogil:
    """A type-3 datagram: reassemble; once complete, open and handle the one element."""
    cdef Peer *p = &dp.peers[peer]
    cdef int32_t slot
    cdef Reasm *r
    cdef uint8_t *body
    cdef uint32_t blen, extra = SEAL_OVERHEAD if p.encrypted else 0
    cdef int reason
    if length <= HEADER_SIZE + FRAG_HEADER:
        drop(dp, DROP_MALFORMED)
        return
    slot = reasm_add(dp, peer, counter, d + HEADER_SIZE, length - HEADER_SIZE, now)
    if slot == -2:
        drop(dp, DROP_MALFORMED)
    if slot < 0:
        return
    r = &dp.reasm[slot]
    if not replay_check(&p.replay, counter, not p.encrypted):
        drop(dp, DROP_REPLAY)
        return
    if p.encrypted and not open_payload(e, p, d, r.buf, r.length, counter):
        drop(dp, DROP_AUTH)
        return
    replay_accept(&p.replay, counter, not p.encrypted)
    fp_add64(&p.datagrams_in, r.count)
    fp_add64(&p.bytes_in, r.length + r.count * (HEADER_SIZE + FRAG_HEADER))
    body = r.buf + extra
    blen = r.length - extra
    reason = body_check(dp, body, blen)
    if reason == 0 and not vnet_ok(body + BODY_HEADER, blen - BODY_HEADER - META_SIZE):
        reason = DROP_MALFORMED
    if reason:
        drop(dp, reason)
        return
    handle_element(dp, e, s, peer, body[0], body[1], fp_get48(body + 2), fp_get48(body + 8),
                   body + BODY_HEADER, blen - BODY_HEADER, now)


cdef void ingress_one(DP *dp, Encoder *e, Sink *s, int32_t index, uint8_t *d, uint32_t length,
                      double now) noexcept nogil:
    cdef int32_t peer
    cdef Peer *p
    cdef uint64_t counter
    cdef uint32_t base
    if length < HEADER_SIZE or length > MAX_DATAGRAM or d[0] != VERSION or d[2] or d[3]:
        drop(dp, DROP_MALFORMED)
        return
    if d[1] == TYPE_HEARTBEAT:
        sink_upcall(dp, s, index, UPCALL_CONTROL_KIND, d, length)
        return
    if d[1] != TYPE_FRAMES and d[1] != TYPE_FRAGMENT:
        drop(dp, DROP_MALFORMED)
        return
    peer = find_conn(dp, fp_get64(d + 4))
    if peer < 0:
        sink_upcall(dp, s, index, UPCALL_UNKNOWN_CONN_KIND, d, length)
        return
    p = &dp.peers[peer]
    if not p.encrypted and not fp_addr_same(&p.addr, &s.from_[s.dgram_from[index]]):
        drop(dp, DROP_SOURCE)          # no MAC: the peer's address and port vouch for it
        return
    counter = fp_get64(d + 12)
    if not replay_check(&p.replay, counter, not p.encrypted):
        drop(dp, DROP_REPLAY)
        return
    if d[1] == TYPE_FRAGMENT:
        ingress_fragment(dp, e, s, peer, d, length, counter, now)
        return
    base = body_offset(p)
    if p.encrypted:
        if length < base:
            drop(dp, DROP_MALFORMED)
            return
        if not open_payload(e, p, d, d + HEADER_SIZE, length - HEADER_SIZE, counter):
            drop(dp, DROP_AUTH)
            return
    replay_accept(&p.replay, counter, not p.encrypted)
    fp_add64(&p.datagrams_in, 1)
    fp_add64(&p.bytes_in, length)
    ingress_records(dp, e, s, peer, d + base, length - base, now)


cdef void ingress_batch(DP *dp, Encoder *e, Sink *s, uint8_t **dgrams, const uint32_t *lens,
                        int32_t n, double now) noexcept nogil:
    cdef int32_t i
    reasm_expire(dp, now)
    for i in range(n):
        ingress_one(dp, e, s, i, dgrams[i], lens[i], now)
    encoder_finish(e)
