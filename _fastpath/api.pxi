# The Python face of the data plane: class Dataplane. Everything here runs with the GIL;
# per-packet work happens in the nogil functions of the other .pxi files.

from collections import OrderedDict

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from router.errors import LocalProtocolError

DROP_REASONS = ("no_route", "auth", "replay", "too_big", "queue_full", "malformed", "ttl",
                "reassembly", "local_dst", "loop", "tap_write", "send", "source",
                "kernel_peer")
UPCALL_CONTROL = UPCALL_CONTROL_KIND
UPCALL_UNKNOWN_CONN = UPCALL_UNKNOWN_CONN_KIND
UPCALL_HEARTBEAT = UPCALL_HEARTBEAT_KIND
HEARTBEAT_ETHERTYPE = ETH_P_HEARTBEAT


def wire_constants():
    """The sleeve format's numbers as compiled (the enums of wire.pxi and icmp.pxi), under
    their names in router.wire.sleeve (packet types as TYPE_<name>); the crypto sizes the
    format relies on under router.crypto's names. tests/unit/test_sleeve_wire.py compares
    them with the Python values."""
    return {
        "VERSION": VERSION,
        "TYPE_HEARTBEAT": TYPE_HEARTBEAT,
        "TYPE_FRAMES": TYPE_FRAMES,
        "TYPE_FRAGMENT": TYPE_FRAGMENT,
        "HEADER_SIZE": HEADER_SIZE,
        "MAC_SIZE": MAC_SIZE,
        "BOUND_SIZE": BOUND_SIZE,
        "SEALED_OVERHEAD": SEAL_OVERHEAD,
        "FRAME_COUNTER_BASE": FRAME_COUNTER_BASE,
        "BODY_SIZE": BODY_HEADER,
        "FLAG_BROADCAST": FLAG_BROADCAST,
        "INITIAL_TTL": INITIAL_TTL,
        "RECORD_HEADER_SIZE": RECORD_HEADER,
        "VNET_HEADER_SIZE": META_SIZE,
        "ETH_HEADER_SIZE": ETH_HEADER,
        "MIN_FRAME": MIN_FRAME,
        "MAX_FRAME_SIZE": MAX_FRAME,
        "MAX_ELEMENT_SIZE": MAX_ELEMENT,
        "MAX_PAYLOAD": MAX_PAYLOAD,
        "FRAG_HEADER_SIZE": FRAG_HEADER,
        "MAX_FRAGMENTS": MAX_FRAGMENTS,
        "MIN_DATAGRAM": MIN_DATAGRAM,
        "MAX_DATAGRAM": MAX_DATAGRAM,
        "KEY_SIZE": KEY_SIZE,
        "NONCE_SIZE": NONCE_SIZE,
        "GCM_NONCE_SIZE": GCM_NONCE_SIZE,
        "PLAIN_CONFIRM": PLAIN_CONFIRM,
    }


_PEER_COUNTERS = ("frames_out", "bytes_out", "datagrams_out", "frames_in", "bytes_in",
                  "datagrams_in")


cdef uint64_t _name(object value, str what) except? 0:
    if not isinstance(value, int) or not 0 <= value < (1 << 48):
        raise LocalProtocolError(f"{what} must be a 48-bit peer name, got {value!r}")
    return <uint64_t>value


cdef uint64_t _mac(object mac) except? 0:
    if not isinstance(mac, (bytes, bytearray)) or len(mac) != 6:
        raise LocalProtocolError(f"a MAC address has 6 bytes, got {mac!r}")
    return int.from_bytes(mac, "big")


cdef tuple _address(object addr):
    """(host, port) of a peer address; the host must still pass inet_pton."""
    host, port = addr if isinstance(addr, tuple) and len(addr) == 2 else (None, None)
    if not isinstance(host, str) or "\0" in host or not isinstance(port, int) \
            or not 0 < port < 65536:
        raise LocalProtocolError(f"peer address must be (IP literal, port): {addr!r}")
    return host, port


cdef bytes _as_bytes(object data):
    if type(data) is bytes:
        return <bytes>data
    return bytes(data)


cdef object _addr_tuple(const sockaddr_storage *ss):
    cdef char host[64]
    cdef int port = fp_addr_text(ss, host, sizeof(host))
    if port < 0:
        return ("", 0)
    return ((<bytes>host).decode("ascii"), port)


cdef void _sources(list pairs, sockaddr_storage *froms, int *index) except *:
    """Source addresses of a batch for the pipeline (one that is not an IP literal and a
    port stays AF_UNSPEC: it matches no peer)."""
    cdef fp_addr a
    cdef Py_ssize_t i
    for i in range(len(pairs)):
        index[i] = <int>i
        addr = pairs[i][0]
        if isinstance(addr, tuple) and len(addr) == 2 and isinstance(addr[0], str) \
                and "\0" not in addr[0] and isinstance(addr[1], int) \
                and 0 <= addr[1] < 65536 and fp_addr_set(&a, addr[0].encode(), addr[1]) == 0:
            froms[i] = a.ss


cdef class Dataplane:
    """The sleeve data plane of one router: tables, batch functions and threads.

    ``egress``/``ingress`` are the per-packet pipeline driven by Python (tests, the
    reference comparison); ``start`` hands the same pipeline to two native threads.
    Time is ``now`` in seconds of the monotonic clock (``time.monotonic()``), the clock
    the threads read.
    """

    cdef DP *dp
    cdef Encoder *enc
    cdef Sink sink
    cdef UpcallQueue *queue
    cdef Runtime *rt
    cdef uint8_t *scratch
    cdef size_t scratch_cap
    cdef uint8_t *spare
    cdef list addrs
    cdef list local                # frames egress made for the TAP, until take_local()
    cdef object retired            # name -> (conn_id, key, send_counter, replay, cipher)
    cdef uint64_t _ourself

    def __cinit__(self, ourself, *, double mac_expiry=600.0, double reassembly_timeout=1.0):
        self._ourself = _name(ourself, "ourself")
        if not mac_expiry > 0 or not reassembly_timeout > 0:
            raise LocalProtocolError("mac_expiry and reassembly_timeout must be positive")
        self.dp = dp_new(self._ourself, mac_expiry, reassembly_timeout)
        self.enc = encoder_new(self.dp, 1, 1 << 16, 64) if self.dp else NULL
        self.queue = queue_new()
        self.spare = <uint8_t *>malloc(MAX_DATAGRAM)
        if self.dp == NULL or self.enc == NULL or self.queue == NULL or self.spare == NULL:
            raise MemoryError("cannot allocate the data plane")
        self.sink.mode = SINK_COLLECT
        self.sink.queue = self.queue   # heartbeat frames egress() passes up
        self.addrs = [None] * MAX_PEERS
        self.local = []
        self.retired = OrderedDict()

    def __dealloc__(self):
        if self.rt != NULL:
            with nogil:
                runtime_stop(self.rt)
            runtime_free(self.rt)
        encoder_free(self.enc)
        queue_free(self.queue)
        free(self.scratch)
        free(self.spare)
        free(self.sink.buf)
        free(self.sink.frames)
        free(self.sink.up)
        dp_free(self.dp)

    @property
    def ourself(self):
        """Our peer name (48-bit int)."""
        return self._ourself

    @property
    def running(self):
        """True between start() and stop()."""
        return self.rt != NULL

    cdef void _not_running(self) except *:
        if self.rt != NULL:
            raise LocalProtocolError("the data-plane threads are running; stop() them first")

    # ---- tables ----------------------------------------------------------------------

    def set_peer(self, name, conn_id, addr, key, max_datagram, cipher="secretbox"):
        """Add or update the session with neighbour ``name``.

        ``addr`` is ``(ip literal, port)``; ``key`` the 32-byte frame key or None for
        an unencrypted connection; ``max_datagram`` the largest UDP payload the path
        carries (bytes, 512..65507); ``cipher`` one of CIPHERS. A new connection id, key
        or cipher starts a new session: counters, replay window and partial frames start
        afresh.
        """
        cdef uint64_t n = _name(name, "name")
        cdef fp_addr a
        cdef int32_t i, other
        cdef Peer *p
        cdef bint fresh
        cdef const uint8_t *k = NULL
        cdef int ciph
        if cipher not in CIPHERS:
            raise LocalProtocolError(f"unknown cipher {cipher!r}; known: {', '.join(CIPHERS)}")
        ciph = CIPHER_SECRETBOX
        if cipher == "aes256gcm" and key is not None:
            ciph = CIPHER_AES256GCM
        if n == self._ourself:
            raise LocalProtocolError("a peer cannot have our own name")
        if not isinstance(conn_id, int) or not 0 <= conn_id < (1 << 64):
            raise LocalProtocolError(f"connection id out of range: {conn_id!r}")
        if key is not None:
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                raise LocalProtocolError(f"a session key has {KEY_SIZE} bytes")
            k = <const uint8_t *>PyBytes_AS_STRING(key)
        if not isinstance(max_datagram, int) or not MIN_DATAGRAM <= max_datagram <= MAX_DATAGRAM:
            raise LocalProtocolError(
                f"max_datagram must be {MIN_DATAGRAM}..{MAX_DATAGRAM}, got {max_datagram!r}")
        host, port = _address(addr)
        if fp_addr_set(&a, host.encode(), port) != 0:
            raise LocalProtocolError(f"peer address must be (IP literal, port): {addr!r}")
        cdef uint64_t conn = conn_id
        cdef uint32_t maxd = max_datagram
        cdef Replay replay
        cdef uint64_t counter = 0
        cdef bint resume = False
        old = self.retired.get(n)
        if old is not None and old[0] == conn_id and old[1] == key and old[4] == ciph:
            resume = True
            counter = old[2]
            memcpy(&replay, PyBytes_AS_STRING(old[3]), sizeof(Replay))
        with nogil:
            pthread_rwlock_wrlock(&self.dp.lock)
            other = find_conn(self.dp, conn)
            i = -2 if other >= 0 and self.dp.peers[other].name != n else peer_slot(self.dp, n)
            if i >= 0:
                p = &self.dp.peers[i]
                fresh = (not p.has_session or p.conn_id != conn or p.encrypted != (k != NULL)
                         or (k != NULL and (memcmp(p.key, k, KEY_SIZE) != 0
                                            or p.cipher != ciph)))
                if fresh:
                    peer_reset_session(self.dp, i)
                    p.conn_id = conn
                    p.encrypted = k != NULL
                    p.cipher = ciph
                    if k != NULL:
                        memcpy(p.key, k, KEY_SIZE)
                        self.dp.key_gen += 1
                        p.key_gen = self.dp.key_gen
                    if resume:             # the same connection again: never reuse a nonce
                        p.send_counter = counter
                        p.replay = replay
                p.has_session = 1
                p.high = self._ourself > n
                p.max_datagram = maxd
                p.addr = a
                index_rebuild(self.dp)
            pthread_rwlock_unlock(&self.dp.lock)
        if i == -2:
            raise LocalProtocolError(f"connection id {conn_id:#x} belongs to another peer")
        if i < 0:
            raise LocalProtocolError(f"peer table full ({MAX_PEERS} peers)")
        self.retired.pop(n, None)
        self.addrs[i] = (host, port)

    def remove_peer(self, name):
        """End the session with ``name`` (no-op if there is none); routes stay as set.

        Its counters are remembered (for the last RETIRED_SESSIONS removals): set_peer
        with the same connection id and key resumes them instead of reusing nonces.
        """
        cdef uint64_t n = _name(name, "name")
        cdef int32_t i
        cdef Peer saved
        with nogil:
            pthread_rwlock_wrlock(&self.dp.lock)
            i = find_name(self.dp, n)
            if i >= 0 and self.dp.peers[i].has_session:
                saved = self.dp.peers[i]
                peer_reset_session(self.dp, i)
                self.dp.peers[i].has_session = 0
                sodium_memzero(self.dp.peers[i].key, KEY_SIZE)
                peers_collect(self.dp)
            else:
                i = -1
            pthread_rwlock_unlock(&self.dp.lock)
        if i < 0:
            return
        key = PyBytes_FromStringAndSize(<char *>saved.key, KEY_SIZE) if saved.encrypted else None
        sodium_memzero(saved.key, KEY_SIZE)
        self.retired[n] = (saved.conn_id, key, saved.send_counter,
                           PyBytes_FromStringAndSize(<char *>&saved.replay, sizeof(Replay)),
                           saved.cipher)
        self.retired.move_to_end(n)
        while len(self.retired) > RETIRED_SESSIONS:
            self.retired.popitem(last=False)

    def set_routes(self, unicast, broadcast):
        """Replace the routes: ``unicast`` dest -> next hop, ``broadcast`` origin -> hops.

        As ``router.mesh.routes.Routes.unicast`` / ``.broadcast``: broadcast frames from
        ``origin`` are passed on to its hops (sorted by name); ``broadcast[ourself]`` is
        where our own broadcasts and unknown-unicast frames go.
        """
        cdef list pairs = sorted((_name(d, "destination"), _name(h, "next hop"))
                                 for d, h in unicast.items())
        cdef list trees = sorted((_name(o, "origin"), sorted({_name(h, "hop") for h in hops}))
                                 for o, hops in broadcast.items())
        cdef Py_ssize_t total = sum(len(h) for _, h in trees)
        if total > MAX_BCAST_POOL:
            raise LocalProtocolError(f"broadcast routes name {total} hops, more than "
                                     f"{MAX_BCAST_POOL}")
        cdef Py_ssize_t npairs = len(pairs), ntrees = len(trees), j, t
        cdef uint64_t *flat = <uint64_t *>malloc((2 * npairs + 2 * ntrees + total + 1) * 8)
        if flat == NULL:
            raise MemoryError()
        cdef Py_ssize_t pos = 0
        for d, h in pairs:
            flat[pos] = d
            flat[pos + 1] = h
            pos += 2
        for o, hops in trees:
            flat[pos] = o
            flat[pos + 1] = len(hops)
            pos += 2
            for h in hops:
                flat[pos] = h
                pos += 1
        cdef bint ok
        with nogil:
            pthread_rwlock_wrlock(&self.dp.lock)
            ok = routes_apply(self.dp, flat, npairs, ntrees)
            pthread_rwlock_unlock(&self.dp.lock)
        free(flat)
        if not ok:
            raise LocalProtocolError(f"peer table full ({MAX_PEERS} peers)")

    def learn_mac(self, mac, peer, double now):
        """Remember ``mac`` behind ``peer`` (ourself: local); False if the table is full."""
        cdef uint64_t m = _mac(mac), p = _name(peer, "peer")
        return mac_learn(self.dp, m, p, now)

    def forget_mac(self, mac):
        """Forget ``mac``; True if it was in the table."""
        cdef uint64_t m = _mac(mac)
        cdef bint present
        with nogil:
            pthread_mutex_lock(&self.dp.mac_lock)
            present = self.dp.macs[mac_probe(self.dp, m)].used
            if present:
                mac_rebuild(self.dp, 0.0, False, m, True)
            pthread_mutex_unlock(&self.dp.mac_lock)
        return present

    def lookup_mac(self, mac, double now):
        """The peer behind ``mac`` (ourself for local MACs), None if unknown or expired."""
        cdef uint64_t m = _mac(mac), p = 0
        return p if mac_lookup(self.dp, m, now, &p) else None

    # ---- batches -------------------------------------------------------------------------

    cdef uint8_t *_stage(self, list items, uint32_t *lens, uint8_t **ptrs) except NULL:
        """Copy byte strings into the scratch buffer (the pipeline rewrites in place)."""
        cdef size_t total = 1, off = 0
        cdef bytes b
        cdef Py_ssize_t i
        for b in items:
            total += len(b)
        if total > self.scratch_cap:
            free(self.scratch)
            self.scratch = <uint8_t *>malloc(total)
            self.scratch_cap = total if self.scratch != NULL else 0
            if self.scratch == NULL:
                raise MemoryError()
        for i, b in enumerate(items):
            lens[i] = <uint32_t>min(len(b), 0xFFFFFFFF)
            memcpy(self.scratch + off, PyBytes_AS_STRING(b), len(b))
            ptrs[i] = self.scratch + off
            off += len(b)
        return self.scratch

    cdef list _datagrams(self):
        cdef list out = []
        cdef int32_t i
        for i in range(self.enc.nouts):
            out.append((self.addrs[self.enc.outs[i].peer], PyBytes_FromStringAndSize(
                <char *>self.enc.arena + self.enc.outs[i].off, self.enc.outs[i].len)))
        self.enc.nouts = 0
        self.enc.used = 0
        return out

    cdef list _sink_frames(self):
        """The elements the last batch handed to the (collecting) sink."""
        cdef int32_t i
        return [PyBytes_FromStringAndSize(<char *>self.sink.buf + self.sink.frames[2 * i],
                                          self.sink.frames[2 * i + 1])
                for i in range(self.sink.nframes)]

    def set_heartbeat_mac(self, mac):
        """Frames from the TAP of ethertype 0x88B5 to ``mac`` (6 bytes) become
        UPCALL_HEARTBEAT upcalls instead of being forwarded; None: no such MAC."""
        cdef uint64_t m = 0 if mac is None else _mac(mac)
        with nogil:
            pthread_rwlock_wrlock(&self.dp.lock)
            self.dp.heartbeat_mac = m
            pthread_rwlock_unlock(&self.dp.lock)

    def set_kernel_peers(self, names):
        """The origins whose frames the kernel (fastdp's VXLAN device) delivers here: their
        frames arriving over the sleeve are still relayed, but not delivered into the TAP
        (a kernel_peer drop), so no frame reaches a container twice."""
        cdef list sorted_names = sorted({_name(n, "kernel peer") for n in names})
        cdef Py_ssize_t n = len(sorted_names), j
        if n > MAX_PEERS:
            raise LocalProtocolError(f"{n} kernel peers, more than {MAX_PEERS}")
        cdef uint64_t *tmp = <uint64_t *>malloc((n + 1) * sizeof(uint64_t))
        if tmp == NULL:
            raise MemoryError()
        for j in range(n):
            tmp[j] = sorted_names[j]
        with nogil:
            pthread_rwlock_wrlock(&self.dp.lock)
            memcpy(self.dp.kernel_peers, tmp, n * sizeof(uint64_t))
            self.dp.n_kernel_peers = <int32_t>n
            pthread_rwlock_unlock(&self.dp.lock)
        free(tmp)

    def write_tap(self, frame):
        """Write an Ethernet frame (no vnet header) into the TAP; any thread may call it.

        Running: written at once (False and a tap_write drop if the TAP refuses it);
        otherwise kept for take_local() with a zero vnet header."""
        cdef bytes f = _as_bytes(frame)
        cdef bytes elem
        cdef Py_ssize_t n
        if len(f) < MIN_FRAME or len(f) > MAX_FRAME:
            raise LocalProtocolError(f"a frame is {MIN_FRAME} to {MAX_FRAME} bytes, not {len(f)}")
        elem = bytes(META_SIZE) + f
        if self.rt == NULL:
            self.local.append(elem)
            return True
        n = c_write(self.rt.tap_fd, <const char *>elem, len(elem))
        if n != len(elem):
            drop(self.dp, DROP_TAP_WRITE)
            return False
        return True

    def take_local(self):
        """Frames egress() made for the local TAP (ICMP "fragmentation needed") since the
        last call, oldest first; the threads write theirs to the TAP themselves."""
        local, self.local = self.local, []
        return local

    def egress(self, frames, double now):
        """Captured frames (vnet header + Ethernet frame each) -> [(addr, datagram)]."""
        self._not_running()
        cdef list items = [_as_bytes(f) for f in frames]
        cdef int32_t n = len(items)
        cdef uint32_t *lens = <uint32_t *>malloc((n + 1) * sizeof(uint32_t))
        cdef uint8_t **ptrs = <uint8_t **>malloc((n + 1) * sizeof(uint8_t *))
        try:
            if lens == NULL or ptrs == NULL:
                raise MemoryError()
            self._stage(items, lens, ptrs)
            self.sink.nframes = 0
            self.sink.buf_used = 0
            self.sink.nup = 0
            with nogil:
                pthread_rwlock_rdlock(&self.dp.lock)
                egress_batch(self.dp, self.enc, &self.sink, ptrs, lens, n, now)
                pthread_rwlock_unlock(&self.dp.lock)
            self.local.extend(self._sink_frames())
            return self._datagrams()
        finally:
            free(lens)
            free(ptrs)

    def ingress(self, datagrams, double now):
        """[(addr, datagram)] -> (frames for the TAP, [(addr, relayed datagram)],
        [(upcall kind, addr, datagram)])."""
        self._not_running()
        cdef list pairs = [(a, _as_bytes(d)) for a, d in datagrams]
        cdef list items = [d for _, d in pairs]
        cdef int32_t n = len(items), i
        cdef uint32_t *lens = <uint32_t *>malloc((n + 1) * sizeof(uint32_t))
        cdef uint8_t **ptrs = <uint8_t **>malloc((n + 1) * sizeof(uint8_t *))
        cdef sockaddr_storage *froms = <sockaddr_storage *>calloc(n + 1,
                                                                  sizeof(sockaddr_storage))
        cdef int *index = <int *>malloc((n + 1) * sizeof(int))
        try:
            if lens == NULL or ptrs == NULL or froms == NULL or index == NULL:
                raise MemoryError()
            self._stage(items, lens, ptrs)
            _sources(pairs, froms, index)
            self.sink.from_ = froms
            self.sink.dgram_from = index
            self.sink.nframes = 0
            self.sink.buf_used = 0
            self.sink.nup = 0
            with nogil:
                pthread_rwlock_rdlock(&self.dp.lock)
                ingress_batch(self.dp, self.enc, &self.sink, ptrs, lens, n, now)
                pthread_rwlock_unlock(&self.dp.lock)
            frames = self._sink_frames()
            upcalls = [(self.sink.up[2 * i + 1], pairs[self.sink.up[2 * i]][0],
                        pairs[self.sink.up[2 * i]][1]) for i in range(self.sink.nup)]
            return frames, self._datagrams(), upcalls
        finally:
            self.sink.from_ = NULL
            self.sink.dgram_from = NULL
            free(lens)
            free(ptrs)
            free(froms)
            free(index)

    def deadline(self):
        """When handle_timer() is next due (inf if never): reassembly and MAC expiry."""
        self._not_running()
        return min(reasm_deadline(self.dp), self.dp.next_sweep)

    def handle_timer(self, double now):
        """Expire partial frames and sweep expired MACs that are due at ``now``."""
        self._not_running()
        reasm_expire(self.dp, now)
        mac_sweep(self.dp, now)

    def statistics(self):
        """Counters: totals, drops by reason, and per neighbour with a session."""
        cdef int32_t i
        cdef Peer *p
        peers = {}
        with nogil:
            pthread_rwlock_rdlock(&self.dp.lock)
        try:
            for i in range(MAX_PEERS):
                p = &self.dp.peers[i]
                if p.used and p.has_session:
                    peers[p.name] = dict(zip(_PEER_COUNTERS, (
                        fp_load64(&p.frames_out), fp_load64(&p.bytes_out),
                        fp_load64(&p.datagrams_out), fp_load64(&p.frames_in),
                        fp_load64(&p.bytes_in), fp_load64(&p.datagrams_in))))
        finally:
            pthread_rwlock_unlock(&self.dp.lock)
        return {
            "frames_captured": fp_load64(&self.dp.frames_captured),
            "frames_delivered": fp_load64(&self.dp.frames_delivered),
            "frames_relayed": fp_load64(&self.dp.frames_relayed),
            "upcalls": fp_load64(&self.dp.upcalls),
            "macs": self.dp.mac_count,
            "mac_table_full": fp_load64(&self.dp.mac_full),
            "icmp_frag_needed": fp_load64(&self.dp.frag_needed),
            "egressed_by_rx_thread": fp_load64(&self.dp.frames_stolen),
            "drops": {r: fp_load64(&self.dp.drops[j]) for j, r in enumerate(DROP_REASONS)},
            "peers": peers,
        }

    # ---- threads -------------------------------------------------------------------------

    def start(self, int tap_fd, int udp_fd):
        """Run the pipeline in two native threads on these file descriptors.

        ``tap_fd``: a TAP opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (10-byte
        header); ``udp_fd``: the sleeve UDP socket. Both are set non-blocking and stay
        owned by the caller (close them after stop()).
        """
        self._not_running()
        cdef Runtime *rt = runtime_new(self.dp, self.queue, tap_fd, udp_fd)
        cdef int rc
        if rt == NULL:
            raise MemoryError("cannot allocate the data-plane threads")
        with nogil:
            rc = runtime_start(rt)
        if rc != 0:
            runtime_free(rt)
            raise OSError(rc, "cannot start the data-plane threads")
        self.rt = rt

    def stop(self):
        """Stop and join the threads (no-op if not running)."""
        cdef Runtime *rt = self.rt
        if rt == NULL:
            return
        with nogil:
            runtime_stop(rt)
        self.rt = NULL
        runtime_free(rt)

    def get_upcalls(self, double timeout, int limit=256):
        """Wait up to ``timeout`` s for upcalls; [(kind, (host, port), datagram)], oldest first."""
        cdef list out = []
        cdef uint32_t kind = 0, length = 0
        cdef sockaddr_storage addr
        cdef bint ready
        with nogil:
            ready = queue_wait(self.queue, timeout)
        while ready and len(out) < limit and queue_pop(self.queue, &self.spare, &kind, &length,
                                                        &addr):
            out.append((kind, _addr_tuple(&addr),
                        PyBytes_FromStringAndSize(<char *>self.spare, length)))
        return out


cdef void peer_reset_session(DP *dp, int32_t i) noexcept nogil:
    """A new session: counters, replay window and partial frames start afresh."""
    cdef Peer *p = &dp.peers[i]
    p.send_counter = FRAME_COUNTER_BASE
    memset(&p.replay, 0, sizeof(Replay))
    p.frames_out = p.bytes_out = p.datagrams_out = 0
    p.frames_in = p.bytes_in = p.datagrams_in = 0
    reasm_purge(dp, i)


cdef bint routes_apply(DP *dp, const uint64_t *flat, Py_ssize_t npairs,
                       Py_ssize_t ntrees) noexcept nogil:
    """Install routes from ``flat`` (pairs dest, hop; then origin, count, hops...)."""
    cdef Py_ssize_t pos = 0, t, j, count
    cdef int32_t i, d, h
    for i in range(MAX_PEERS):
        dp.peers[i].next_hop = -1
        dp.peers[i].bcast_start = 0
        dp.peers[i].bcast_count = 0
    dp.pool_used = 0
    for t in range(npairs):
        d = peer_slot(dp, flat[pos])
        h = peer_slot(dp, flat[pos + 1])
        pos += 2
        if d < 0 or h < 0:
            peers_collect(dp)
            return False
        dp.peers[d].next_hop = h
    for t in range(ntrees):
        d = peer_slot(dp, flat[pos])
        count = <Py_ssize_t>flat[pos + 1]
        pos += 2
        if d < 0:
            peers_collect(dp)
            return False
        dp.peers[d].bcast_start = dp.pool_used
        for j in range(count):
            h = peer_slot(dp, flat[pos + j])
            if h < 0:
                peers_collect(dp)
                return False
            dp.pool[dp.pool_used] = h
            dp.pool_used += 1
            dp.peers[d].bcast_count += 1
        pos += count
    peers_collect(dp)
    return True
