# The data-plane threads (GIL released, no Python objects).
#
# TX: poll the TAP -> read up to FP_IO_BATCH frames (one read each; GSO super-frames
#     arrive whole) -> egress_batch -> flush: sendmmsg, equal-sized datagrams to one
#     peer as one UDP_SEGMENT train.
# RX: recvmmsg up to FP_IO_BATCH messages (UDP_GRO trains split into datagrams) ->
#     ingress_batch: frames written to the TAP as they complete, relays flushed like TX,
#     heartbeats and unknown connection ids pushed to the bounded upcall queue; every
#     TIMER_PERIOD the reassembly timeouts and the MAC sweep run.
# Heartbeat frames read from the TAP (either thread) go to the same queue, at most
# HEARTBEAT_UPCALL_LIMIT of them; Python writes frames into the TAP with write_tap().
# Both hold DP.lock for reading for one batch. stop() sets the flag and writes the stop
# eventfd that both polls watch, then joins.
#
# Reading the TAP is owned by one thread at a time (Runtime.tap_owner, a try-lock held
# from the read to the flush of that batch's datagrams), so frames leave in the order
# they were read. The TX thread takes it for each batch; the RX thread, right after a
# batch it delivered, takes it if free and egresses up to STEAL_BATCH frames itself:
# a container's answer to what was just written into the TAP is usually queued by the
# time the write returns (the bridge and the container's stack run in the writer's
# context), and sending it at once saves waking the TX thread: one thread wake-up less
# per host per round trip.

cdef enum:
    UPCALL_SLOTS = 256             # upcalls waiting for Python; more are counted drops
    TAP_SLOT = MAX_ELEMENT + 1     # a read filling the slot is too big (a counted drop)
    POLL_MS = 250                  # longest sleep of a thread, ms (timers, stop)
    ERROR_PAUSE_MS = 10            # pause after a failed read, ms (no busy loop)
    STEAL_BATCH = 8                # frames the RX thread egresses after a delivery

cdef double TIMER_PERIOD = 0.25    # seconds between timer runs in the RX thread


cdef struct Runtime:
    DP *dp
    int tap_fd
    int udp_fd
    int stop_fd
    int stopping
    pthread_t tx
    pthread_t rx
    int tx_started
    int rx_started
    Encoder *tx_enc
    Encoder *rx_enc
    fp_receiver *receiver
    uint8_t *tap_buf
    uint32_t tap_lens[FP_IO_BATCH]
    uint8_t *tap_ptrs[FP_IO_BATCH]
    int tap_owner                  # 1 while a thread reads the TAP and sends that batch
    uint8_t *steal_buf
    uint32_t steal_lens[STEAL_BATCH]
    uint8_t *steal_ptrs[STEAL_BATCH]
    Sink sink                      # the RX thread's
    Sink tx_sink                   # the TX thread's: ICMP replies into the TAP
    double next_timer


cdef UpcallQueue *queue_new() noexcept nogil:
    cdef UpcallQueue *q = <UpcallQueue *>calloc(1, sizeof(UpcallQueue))
    if q == NULL:
        return NULL
    q.slots = <UpcallSlot *>calloc(UPCALL_SLOTS, sizeof(UpcallSlot))
    if q.slots == NULL:
        free(q)
        return NULL
    q.cap = UPCALL_SLOTS
    pthread_mutex_init(&q.lock, NULL)
    pthread_cond_init(&q.cond, NULL)
    return q


cdef void queue_free(UpcallQueue *q) noexcept nogil:
    cdef int32_t i
    if q == NULL:
        return
    for i in range(q.cap):
        free(q.slots[i].data)
    free(q.slots)
    pthread_mutex_destroy(&q.lock)
    pthread_cond_destroy(&q.cond)
    free(q)


cdef bint queue_wait(UpcallQueue *q, double timeout) noexcept nogil:
    """Wait until an upcall is queued (True) or ``timeout`` seconds passed (False)."""
    cdef timespec deadline
    cdef bint ready
    fp_deadline_in(&deadline, timeout)
    pthread_mutex_lock(&q.lock)
    while q.count == 0 and not q.closed:
        if pthread_cond_timedwait(&q.cond, &q.lock, &deadline) != 0:
            break
    ready = q.count > 0
    pthread_mutex_unlock(&q.lock)
    return ready


cdef bint queue_pop(UpcallQueue *q, uint8_t **spare, uint32_t *kind, uint32_t *length,
                    sockaddr_storage *addr) noexcept nogil:
    """Take the oldest upcall; its buffer is swapped with ``spare`` (no copy)."""
    cdef UpcallSlot *s
    cdef uint8_t *data
    pthread_mutex_lock(&q.lock)
    if q.count == 0:
        pthread_mutex_unlock(&q.lock)
        return False
    s = &q.slots[q.head]
    data = s.data
    s.data = spare[0]
    spare[0] = data
    kind[0] = s.kind
    length[0] = s.len
    addr[0] = s.addr
    q.head = (q.head + 1) % q.cap
    q.count -= 1
    pthread_mutex_unlock(&q.lock)
    return True


cdef void *tx_main(void *arg) noexcept nogil:
    cdef Runtime *rt = <Runtime *>arg
    cdef int n
    while not fp_load_flag(&rt.stopping):
        if not fp_try_lock(&rt.tap_owner):
            sched_yield()              # the RX thread is sending a few frames
            continue
        n = fp_tap_read(rt.tap_fd, rt.tap_buf, TAP_SLOT, FP_IO_BATCH, rt.tap_lens)
        if n > 0:
            pthread_rwlock_rdlock(&rt.dp.lock)
            egress_batch(rt.dp, rt.tx_enc, &rt.tx_sink, rt.tap_ptrs, rt.tap_lens, n,
                         fp_monotonic())
            encoder_flush(rt.tx_enc)
            pthread_rwlock_unlock(&rt.dp.lock)
        fp_unlock(&rt.tap_owner)
        if n == 0:
            fp_wait(rt.tap_fd, POLLIN, rt.stop_fd, POLL_MS)
        elif n < 0:                    # the TAP is down, gone or broken: pause
            fp_wait(rt.stop_fd, POLLIN, rt.stop_fd, ERROR_PAUSE_MS)
    return NULL


cdef void rx_steal(Runtime *rt, double now) noexcept nogil:
    """Egress what the TAP holds now, if no other thread is reading it (see the top)."""
    cdef int n
    if not fp_try_lock(&rt.tap_owner):
        return
    n = fp_tap_read(rt.tap_fd, rt.steal_buf, TAP_SLOT, STEAL_BATCH, rt.steal_lens)
    if n > 0:
        pthread_rwlock_rdlock(&rt.dp.lock)
        egress_batch(rt.dp, rt.rx_enc, &rt.sink, rt.steal_ptrs, rt.steal_lens, n, now)
        encoder_flush(rt.rx_enc)
        pthread_rwlock_unlock(&rt.dp.lock)
        fp_add64(&rt.dp.frames_stolen, <uint64_t>n)
    fp_unlock(&rt.tap_owner)


cdef void *rx_main(void *arg) noexcept nogil:
    cdef Runtime *rt = <Runtime *>arg
    cdef int n
    cdef double now
    cdef uint64_t delivered
    while not fp_load_flag(&rt.stopping):
        n = fp_receiver_recv(rt.receiver, rt.udp_fd)
        now = fp_monotonic()
        if n > 0:
            pthread_rwlock_rdlock(&rt.dp.lock)
            delivered = fp_load64(&rt.dp.frames_delivered)
            ingress_batch(rt.dp, rt.rx_enc, &rt.sink, rt.receiver.dgram,
                          rt.receiver.dgram_len, n, now)
            encoder_flush(rt.rx_enc)
            delivered = fp_load64(&rt.dp.frames_delivered) - delivered
            pthread_rwlock_unlock(&rt.dp.lock)
            if delivered:
                rx_steal(rt, now)
        elif n == 0:
            fp_wait(rt.udp_fd, POLLIN, rt.stop_fd, POLL_MS)
        else:                          # an error (ICMP-reported, or a closed fd): pause
            fp_wait(rt.stop_fd, POLLIN, rt.stop_fd, ERROR_PAUSE_MS)
        if now >= rt.next_timer:
            pthread_rwlock_rdlock(&rt.dp.lock)
            reasm_expire(rt.dp, now)
            mac_sweep(rt.dp, now)
            pthread_rwlock_unlock(&rt.dp.lock)
            rt.next_timer = now + TIMER_PERIOD
    return NULL


cdef void runtime_free(Runtime *rt) noexcept nogil:
    if rt == NULL:
        return
    encoder_free(rt.tx_enc)
    encoder_free(rt.rx_enc)
    if rt.receiver != NULL:
        fp_receiver_free(rt.receiver)
        free(rt.receiver)
    free(rt.tap_buf)
    free(rt.steal_buf)
    if rt.stop_fd >= 0:
        c_close(rt.stop_fd)
    free(rt)


cdef Encoder *thread_encoder(DP *dp, int fd) noexcept nogil:
    cdef Encoder *e = encoder_new(dp, 0, THREAD_ARENA, THREAD_OUTS)
    if e == NULL:
        return NULL
    e.fd = fd
    e.sender = <fp_sender *>malloc(sizeof(fp_sender))
    e.items = <fp_send_item *>malloc(THREAD_OUTS * sizeof(fp_send_item))
    if e.sender == NULL or e.items == NULL:
        encoder_free(e)
        return NULL
    fp_sender_init(e.sender, 1)
    return e


cdef Runtime *runtime_new(DP *dp, UpcallQueue *queue, int tap_fd, int udp_fd) noexcept nogil:
    cdef Runtime *rt = <Runtime *>calloc(1, sizeof(Runtime))
    cdef int i
    if rt == NULL:
        return NULL
    rt.dp = dp
    rt.tap_fd = tap_fd
    rt.udp_fd = udp_fd
    rt.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    rt.tx_enc = thread_encoder(dp, udp_fd)
    rt.rx_enc = thread_encoder(dp, udp_fd)
    rt.receiver = <fp_receiver *>malloc(sizeof(fp_receiver))
    if rt.receiver != NULL and fp_receiver_init(rt.receiver) != 0:
        free(rt.receiver)
        rt.receiver = NULL
    rt.tap_buf = <uint8_t *>malloc(<size_t>FP_IO_BATCH * TAP_SLOT)
    rt.steal_buf = <uint8_t *>malloc(<size_t>STEAL_BATCH * TAP_SLOT)
    if rt.stop_fd < 0 or not (rt.tx_enc and rt.rx_enc and rt.receiver and rt.tap_buf
                              and rt.steal_buf):
        runtime_free(rt)
        return NULL
    for i in range(FP_IO_BATCH):
        rt.tap_ptrs[i] = rt.tap_buf + <size_t>i * TAP_SLOT
    for i in range(STEAL_BATCH):
        rt.steal_ptrs[i] = rt.steal_buf + <size_t>i * TAP_SLOT
    rt.tx_sink.mode = SINK_THREAD
    rt.tx_sink.tap_fd = tap_fd
    rt.tx_sink.queue = queue           # heartbeat frames read from the TAP
    rt.sink.mode = SINK_THREAD
    rt.sink.tap_fd = tap_fd
    rt.sink.queue = queue
    rt.sink.from_ = rt.receiver.from_
    rt.sink.dgram_from = rt.receiver.dgram_from
    return rt


cdef int runtime_start(Runtime *rt) noexcept nogil:
    """Start both threads; 0, or an errno (then nothing runs)."""
    cdef int rc
    fp_set_nonblocking(rt.tap_fd)
    fp_set_nonblocking(rt.udp_fd)
    fp_enable_gro(rt.udp_fd)
    rc = pthread_create(&rt.tx, NULL, tx_main, rt)
    if rc != 0:
        return rc
    rt.tx_started = 1
    pthread_setname_np(rt.tx, "weave-dp-tx")   # shown by top -H, ps -L, perf
    rc = pthread_create(&rt.rx, NULL, rx_main, rt)
    if rc != 0:
        runtime_stop(rt)
        return rc
    rt.rx_started = 1
    pthread_setname_np(rt.rx, "weave-dp-rx")
    return 0


cdef void runtime_stop(Runtime *rt) noexcept nogil:
    cdef uint64_t one = 1
    fp_store_flag(&rt.stopping, 1)
    c_write(rt.stop_fd, &one, sizeof(one))
    if rt.tx_started:
        pthread_join(rt.tx, NULL)
        rt.tx_started = 0
    if rt.rx_started:
        pthread_join(rt.rx, NULL)
        rt.rx_started = 0
