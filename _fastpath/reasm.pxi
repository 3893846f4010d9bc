# Reassembly of fragmented elements (RX thread only). An element too big for one
# datagram to a neighbour is sealed once and its payload travels as up to MAX_FRAGMENTS
# type-3 datagrams sharing the element's counter. Key: (neighbour, counter). Fragments
# are not authenticated one by one: the whole payload is opened once complete, so a
# forged or inconsistent fragment costs at most the element it pretends to belong to.
# Bounded: REASM_SLOTS elements at once, at most REASM_PER_PEER of them from one
# neighbour, so a neighbour (or whoever forges its connection id) flooding first
# fragments churns only its own slots. A new element of a neighbour at its quota evicts
# one of that neighbour's; otherwise it takes a free slot, or, with none, evicts one of
# the neighbour holding the most. Of those, the one with the fewest pieces received goes
# first (the oldest among equals): a flood of first pieces evicts its own kind before an
# element whose pieces are arriving. An element not complete reasm_timeout
# seconds after its first fragment, or evicted, is a counted drop (reassembly). The
# cheap checks (source of a plain session, replay window, fragment header) run before a
# fragment is stored; the MAC, over the whole payload, once it is complete.


cdef int32_t reasm_find(const DP *dp, int32_t peer, uint64_t counter) noexcept nogil:
    cdef int32_t i
    for i in range(REASM_SLOTS):
        if dp.reasm[i].used and dp.reasm[i].counter == counter and dp.reasm[i].peer == peer:
            return i
    return -1


cdef void reasm_release(DP *dp, int32_t slot) noexcept nogil:
    dp.reasm[slot].used = 0
    dp.peers[dp.reasm[slot].peer].reasm_used -= 1


cdef bint reasm_before(const DP *dp, const Reasm *r, const Reasm *v) noexcept nogil:
    """Is ``r`` evicted before ``v``? The neighbour holding more slots, then fewer
    pieces received, then older (allocated earlier)."""
    cdef int32_t nr = dp.peers[r.peer].reasm_used, nv = dp.peers[v.peer].reasm_used
    if nr != nv:
        return nr > nv
    if r.received != v.received:
        return r.received < v.received
    return r.seq < v.seq


cdef int32_t reasm_alloc(DP *dp, int32_t peer) noexcept nogil:
    """A slot for a new element of ``peer``: see the top for who is evicted."""
    cdef int32_t i, victim = -1, own = dp.peers[peer].reasm_used >= REASM_PER_PEER
    cdef Reasm *r
    if not own:
        for i in range(REASM_SLOTS):
            if not dp.reasm[i].used:
                victim = i
                break
    if victim < 0:
        for i in range(REASM_SLOTS):
            r = &dp.reasm[i]
            if not r.used or (own and r.peer != peer):
                continue
            if victim < 0 or reasm_before(dp, r, &dp.reasm[victim]):
                victim = i
        reasm_release(dp, victim)
        drop(dp, DROP_REASSEMBLY)
    if dp.reasm[victim].buf == NULL:
        dp.reasm[victim].buf = <uint8_t *>malloc(MAX_PAYLOAD)
        if dp.reasm[victim].buf == NULL:
            return -1
    return victim


cdef void reasm_expire(DP *dp, double now) noexcept nogil:
    cdef int32_t i
    for i in range(REASM_SLOTS):
        if dp.reasm[i].used and now - dp.reasm[i].started >= dp.reasm_timeout:
            reasm_release(dp, i)
            drop(dp, DROP_REASSEMBLY)


cdef double reasm_deadline(const DP *dp) noexcept nogil:
    cdef double t = INFINITY
    cdef int32_t i
    for i in range(REASM_SLOTS):
        if dp.reasm[i].used and dp.reasm[i].started + dp.reasm_timeout < t:
            t = dp.reasm[i].started + dp.reasm_timeout
    return t


cdef void reasm_purge(DP *dp, int32_t peer) noexcept nogil:
    """Forget a neighbour's partial frames (its session ended or changed)."""
    cdef int32_t i
    for i in range(REASM_SLOTS):
        if dp.reasm[i].peer == peer:
            dp.reasm[i].used = 0
    dp.peers[peer].reasm_used = 0


cdef int32_t reasm_add(DP *dp, int32_t peer, uint64_t counter, const uint8_t *f,
                       uint32_t flen, double now) noexcept nogil:
    """Store one fragment (f = fragment header + data) of the element ``counter``.

    Returns the slot once the payload is complete (the slot is already free again and
    its buffer valid until the next reasm_alloc), -1 while incomplete, -2 if malformed.
    """
    cdef uint32_t length = fp_get32(f)
    cdef uint32_t fsize = fp_get16(f + 4)
    cdef uint32_t index = f[6]
    cdef uint32_t count = f[7]
    cdef uint32_t extra = SEAL_OVERHEAD if dp.peers[peer].encrypted else 0
    cdef uint32_t dlen = flen - FRAG_HEADER
    cdef int32_t s
    cdef Reasm *r
    if length < extra + BODY_HEADER + META_SIZE + MIN_FRAME or \
            length > extra + BODY_HEADER + MAX_ELEMENT or fsize == 0 or \
            count != (length + fsize - 1) // fsize or index >= count:
        return -2
    if dlen != (fsize if index < count - 1 else length - index * fsize):
        return -2
    s = reasm_find(dp, peer, counter)
    if s < 0:
        s = reasm_alloc(dp, peer)
        if s < 0:
            drop(dp, DROP_REASSEMBLY)
            return -1
        r = &dp.reasm[s]
        r.used = 1
        r.peer = peer
        dp.peers[peer].reasm_used += 1
        r.counter = counter
        r.length = length
        r.fsize = fsize
        r.count = count
        r.received = 0
        r.seq = dp.reasm_seq
        dp.reasm_seq += 1
        memset(r.bits, 0, sizeof(r.bits))
        r.started = now
    r = &dp.reasm[s]
    if r.length != length or r.fsize != fsize:
        return -2
    if (r.bits[index >> 6] >> (index & 63)) & 1:
        return -2
    r.bits[index >> 6] |= <uint64_t>1 << (index & 63)
    memcpy(r.buf + index * fsize, f + FRAG_HEADER, dlen)
    r.received += 1
    if r.received < r.count:
        return -1
    reasm_release(dp, s)
    return s
