# The tables Python sets (peers and their sessions, unicast and broadcast routes) and
# the MAC table, with the one struct (DP) that owns everything of a data plane.
#
# Locking: DP.lock is a writer-preferring rwlock. The TX and RX threads hold it for
# reading for the length of one batch; Python takes it for writing to change peers or
# routes. The MAC table, written by both threads, has its own mutex. Counters shared by
# the threads are bumped with relaxed atomics. Replay windows and the reassembly table
# belong to the RX thread alone.

from libc.math cimport INFINITY

cdef enum:
    MAX_PEERS = 4096               # peers known to the tables (sessions and route targets)
    INDEX_SLOTS = 8192             # open-addressing index size (2 * MAX_PEERS)
    MAX_BCAST_POOL = 65536         # broadcast next hops over all origins
    MAX_MACS = 8192                # MAC entries between two sweeps
    MAC_SLOTS = 16384              # 2 * MAX_MACS
    MAC_SWEEP_INTERVAL = 60        # seconds between removals of expired MACs
    REASM_SLOTS = 64               # frames being reassembled at once
    REASM_PER_PEER = 8             # of them from one neighbour (reasm.pxi)


cdef struct Peer:
    uint64_t name
    int used
    int has_session
    int encrypted
    int cipher                     # CIPHER_* of an encrypted session
    uint64_t key_gen               # DP.key_gen when the key was set: encoders re-key on change
    int high                       # our name > theirs: the direction byte of our nonces
    uint64_t conn_id
    uint32_t max_datagram
    uint8_t key[KEY_SIZE]
    fp_addr addr
    uint64_t send_counter          # next counter (atomic: TX and RX relays both send)
    Replay replay                  # RX only
    int32_t reasm_used             # reassembly slots this neighbour holds (RX only)
    int32_t next_hop               # unicast route to this peer: index, or -1
    int32_t bcast_start            # broadcast hops for frames from this origin
    int32_t bcast_count
    uint64_t frames_out
    uint64_t bytes_out
    uint64_t datagrams_out
    uint64_t frames_in
    uint64_t bytes_in
    uint64_t datagrams_in


cdef struct MacEntry:
    uint64_t mac
    uint64_t peer                  # the origin peer's name; ourself for local MACs
    double seen
    int used


cdef struct Reasm:
    int used
    int32_t peer                   # the neighbour (index) the fragments come from
    uint64_t counter               # the element's counter (its nonce)
    uint32_t length                # payload bytes
    uint32_t fsize
    uint32_t count
    uint32_t received
    uint64_t seq                   # allocation order (DP.reasm_seq): the oldest has the least
    uint64_t bits[4]
    double started
    uint8_t *buf                   # MAX_PAYLOAD bytes, allocated on first use


cdef struct DP:
    uint64_t ourself
    uint64_t heartbeat_mac         # frames to it with ETH_P_HEARTBEAT go up; 0: none
    uint64_t *kernel_peers         # sorted: origins the kernel delivers (set_kernel_peers)
    int32_t n_kernel_peers
    uint64_t key_gen               # bumped for every session key set (under the write lock)
    double mac_expiry
    double reasm_timeout
    double next_sweep
    Peer *peers
    int32_t *by_name
    int32_t *by_conn
    int32_t *pool
    int32_t pool_used
    MacEntry *macs
    int32_t mac_count
    Reasm *reasm
    uint64_t reasm_seq             # the next Reasm.seq
    pthread_rwlock_t lock
    pthread_mutex_t mac_lock
    uint64_t drops[N_DROPS]
    uint64_t frames_captured
    uint64_t frames_delivered
    uint64_t frames_relayed
    uint64_t upcalls
    uint64_t mac_full
    uint64_t frag_needed           # ICMP "fragmentation needed" replies written to the TAP
    uint64_t frames_stolen         # frames the RX thread egressed (threads.pxi)


cdef inline uint32_t hash64(uint64_t key, int bits) noexcept nogil:
    return <uint32_t>((key * <uint64_t>0x9E3779B97F4A7C15) >> (64 - bits))


cdef inline void drop(DP *dp, int reason) noexcept nogil:
    fp_add64(&dp.drops[reason], 1)


cdef DP *dp_new(uint64_t ourself, double mac_expiry, double reasm_timeout) noexcept nogil:
    cdef DP *dp = <DP *>calloc(1, sizeof(DP))
    if dp == NULL:
        return NULL
    dp.ourself = ourself
    dp.mac_expiry = mac_expiry
    dp.reasm_timeout = reasm_timeout
    dp.next_sweep = INFINITY
    dp.peers = <Peer *>calloc(MAX_PEERS, sizeof(Peer))
    dp.by_name = <int32_t *>malloc(INDEX_SLOTS * sizeof(int32_t))
    dp.by_conn = <int32_t *>malloc(INDEX_SLOTS * sizeof(int32_t))
    dp.pool = <int32_t *>malloc(MAX_BCAST_POOL * sizeof(int32_t))
    dp.macs = <MacEntry *>calloc(MAC_SLOTS, sizeof(MacEntry))
    dp.reasm = <Reasm *>calloc(REASM_SLOTS, sizeof(Reasm))
    dp.kernel_peers = <uint64_t *>calloc(MAX_PEERS, sizeof(uint64_t))
    if not (dp.peers and dp.by_name and dp.by_conn and dp.pool and dp.macs and dp.reasm
            and dp.kernel_peers):
        dp_free(dp)
        return NULL
    fp_rwlock_init(&dp.lock)
    pthread_mutex_init(&dp.mac_lock, NULL)
    index_rebuild(dp)
    return dp


cdef void dp_free(DP *dp) noexcept nogil:
    cdef int i
    if dp == NULL:
        return
    if dp.peers:
        for i in range(MAX_PEERS):
            sodium_memzero(dp.peers[i].key, KEY_SIZE)
    if dp.reasm:
        for i in range(REASM_SLOTS):
            free(dp.reasm[i].buf)
    free(dp.peers)
    free(dp.by_name)
    free(dp.by_conn)
    free(dp.pool)
    free(dp.macs)
    free(dp.reasm)
    free(dp.kernel_peers)
    pthread_rwlock_destroy(&dp.lock)
    pthread_mutex_destroy(&dp.mac_lock)
    free(dp)


# ---- peer index (rebuilt whole by Python under the write lock) ------------------------

cdef void index_rebuild(DP *dp) noexcept nogil:
    cdef int32_t i
    cdef uint32_t h
    for i in range(INDEX_SLOTS):
        dp.by_name[i] = -1
        dp.by_conn[i] = -1
    for i in range(MAX_PEERS):
        if not dp.peers[i].used:
            continue
        h = hash64(dp.peers[i].name, 13)
        while dp.by_name[h] >= 0:
            h = (h + 1) & (INDEX_SLOTS - 1)
        dp.by_name[h] = i
        if dp.peers[i].has_session:
            h = hash64(dp.peers[i].conn_id, 13)
            while dp.by_conn[h] >= 0:
                h = (h + 1) & (INDEX_SLOTS - 1)
            dp.by_conn[h] = i


cdef inline int32_t find_name(const DP *dp, uint64_t name) noexcept nogil:
    cdef uint32_t h = hash64(name, 13)
    cdef int32_t i
    while True:
        i = dp.by_name[h]
        if i < 0 or dp.peers[i].name == name:
            return i
        h = (h + 1) & (INDEX_SLOTS - 1)


cdef inline int32_t find_conn(const DP *dp, uint64_t conn_id) noexcept nogil:
    cdef uint32_t h = hash64(conn_id, 13)
    cdef int32_t i
    while True:
        i = dp.by_conn[h]
        if i < 0 or dp.peers[i].conn_id == conn_id:
            return i
        h = (h + 1) & (INDEX_SLOTS - 1)


cdef inline bint is_kernel_peer(const DP *dp, uint64_t name) noexcept nogil:
    """Is ``name`` one of the origins the kernel delivers (binary search)?"""
    cdef int32_t lo = 0, hi = dp.n_kernel_peers - 1, mid
    while lo <= hi:
        mid = (lo + hi) >> 1
        if dp.kernel_peers[mid] == name:
            return True
        if dp.kernel_peers[mid] < name:
            lo = mid + 1
        else:
            hi = mid - 1
    return False


cdef inline int32_t route_hop(const DP *dp, uint64_t dest) noexcept nogil:
    """The neighbour (index) frames for ``dest`` go to, or -1 if there is none."""
    cdef int32_t i = find_name(dp, dest)
    if i < 0:
        return -1
    i = dp.peers[i].next_hop
    if i < 0 or not dp.peers[i].has_session:
        return -1
    return i


cdef int32_t peer_slot(DP *dp, uint64_t name) noexcept nogil:
    """Index of the entry for ``name``, creating (and indexing) it if needed; -1 if full."""
    cdef int32_t i = find_name(dp, name)
    cdef uint32_t h
    if i >= 0:
        return i
    for i in range(MAX_PEERS):
        if not dp.peers[i].used:
            memset(&dp.peers[i], 0, sizeof(Peer))
            dp.peers[i].used = 1
            dp.peers[i].name = name
            dp.peers[i].next_hop = -1
            h = hash64(name, 13)
            while dp.by_name[h] >= 0:
                h = (h + 1) & (INDEX_SLOTS - 1)
            dp.by_name[h] = i
            return i
    return -1


cdef void peers_collect(DP *dp) noexcept nogil:
    """Free entries with no session, no route and no broadcast role, then reindex."""
    cdef int32_t i, j
    cdef Peer *p
    cdef char keep[MAX_PEERS]
    memset(keep, 0, sizeof(keep))
    for i in range(MAX_PEERS):
        p = &dp.peers[i]
        if not p.used or not (p.has_session or p.next_hop >= 0 or p.bcast_count):
            continue
        keep[i] = 1
        if p.next_hop >= 0:
            keep[p.next_hop] = 1
        for j in range(p.bcast_start, p.bcast_start + p.bcast_count):
            keep[dp.pool[j]] = 1
    for i in range(MAX_PEERS):
        if dp.peers[i].used and not keep[i]:
            sodium_memzero(dp.peers[i].key, KEY_SIZE)
            dp.peers[i].used = 0
    index_rebuild(dp)


# ---- MAC table (open addressing; no deletion except by sweep) ---------------------------

cdef inline uint32_t mac_probe(const DP *dp, uint64_t mac) noexcept nogil:
    """The slot holding ``mac`` or the empty slot where it would go."""
    cdef uint32_t h = hash64(mac, 14)
    while dp.macs[h].used and dp.macs[h].mac != mac:
        h = (h + 1) & (MAC_SLOTS - 1)
    return h


cdef bint mac_learn(DP *dp, uint64_t mac, uint64_t peer, double now) noexcept nogil:
    """Remember that ``mac`` is behind ``peer`` as of ``now``; False if the table is full."""
    cdef bint ok = True
    pthread_mutex_lock(&dp.mac_lock)
    cdef uint32_t h = mac_probe(dp, mac)
    cdef MacEntry *e = &dp.macs[h]
    if not e.used:
        if dp.mac_count >= MAX_MACS:
            ok = False
        else:
            e.used = 1
            e.mac = mac
            dp.mac_count += 1
            if dp.next_sweep == INFINITY:
                dp.next_sweep = now + MAC_SWEEP_INTERVAL
    if ok:
        e.peer = peer
        e.seen = now
    pthread_mutex_unlock(&dp.mac_lock)
    if not ok:
        fp_add64(&dp.mac_full, 1)
    return ok


cdef bint mac_lookup(DP *dp, uint64_t mac, double now, uint64_t *peer) noexcept nogil:
    """The peer behind ``mac`` unless unknown or not seen for mac_expiry seconds."""
    cdef bint found = False
    pthread_mutex_lock(&dp.mac_lock)
    cdef MacEntry *e = &dp.macs[mac_probe(dp, mac)]
    if e.used and now - e.seen < dp.mac_expiry:
        peer[0] = e.peer
        found = True
    pthread_mutex_unlock(&dp.mac_lock)
    return found


cdef void mac_rebuild(DP *dp, double now, bint expire, uint64_t forget,
                      bint do_forget) noexcept nogil:
    """Reinsert the entries that stay (not expired, not forgotten); caller holds mac_lock."""
    cdef MacEntry *old = dp.macs
    cdef MacEntry *fresh = <MacEntry *>calloc(MAC_SLOTS, sizeof(MacEntry))
    cdef int32_t i
    if fresh == NULL:
        return
    dp.macs = fresh
    dp.mac_count = 0
    for i in range(MAC_SLOTS):
        if not old[i].used:
            continue
        if expire and now - old[i].seen >= dp.mac_expiry:
            continue
        if do_forget and old[i].mac == forget:
            continue
        fresh[mac_probe(dp, old[i].mac)] = old[i]
        dp.mac_count += 1
    free(old)


cdef void mac_sweep(DP *dp, double now) noexcept nogil:
    """Drop expired entries once next_sweep has come."""
    pthread_mutex_lock(&dp.mac_lock)
    if now >= dp.next_sweep:
        mac_rebuild(dp, now, True, 0, False)
        dp.next_sweep = now + MAC_SWEEP_INTERVAL if dp.mac_count else INFINITY
    pthread_mutex_unlock(&dp.mac_lock)
