/* fp_sys.h - the operating-system glue of router._fastpath.
 *
 * Everything here is a thin, allocation-free wrapper around one Linux facility the
 * Cython data plane needs and Cython cannot spell comfortably: byte order, relaxed
 * atomics, the monotonic clock, socket addresses, batched UDP send (sendmmsg with one
 * UDP_SEGMENT train per message) and receive (recvmmsg with UDP_GRO), batched TAP
 * reads, and a poll that also watches the stop eventfd. The per-packet logic (codec,
 * tables, crypto, reassembly, packing) lives in the .pxi files of fastpath.pyx.
 */
#ifndef WEAVE_FP_SYS_H
#define WEAVE_FP_SYS_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

/* ---- limits of the I/O layer ---------------------------------------------------- */
#define FP_IO_BATCH 64             /* messages per recvmmsg / sendmmsg call */
#define FP_GSO_MAX_SEGMENTS 64     /* UDP_MAX_SEGMENTS of the kernel */
#define FP_GSO_MAX_BYTES 65000     /* payload of one UDP_SEGMENT train (< 65507) */
#define FP_RX_BUFFER 65536         /* one recvmmsg buffer: a whole GRO train fits */
#define FP_RX_MAX_DATAGRAMS (FP_IO_BATCH * FP_GSO_MAX_SEGMENTS)

/* ---- byte order (wire integers are big-endian, vnet headers little-endian) ------- */
static inline uint16_t fp_get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline void fp_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint32_t fp_get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void fp_put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint64_t fp_get48(const uint8_t *p) {
    return ((uint64_t)fp_get16(p) << 32) | fp_get32(p + 2);
}
static inline void fp_put48(uint8_t *p, uint64_t v) {
    fp_put16(p, (uint16_t)(v >> 32)); fp_put32(p + 2, (uint32_t)v);
}
static inline uint64_t fp_get64(const uint8_t *p) {
    return ((uint64_t)fp_get32(p) << 32) | fp_get32(p + 4);
}
static inline void fp_put64(uint8_t *p, uint64_t v) {
    fp_put32(p, (uint32_t)(v >> 32)); fp_put32(p + 4, (uint32_t)v);
}
static inline uint16_t fp_getle16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* The TAP's virtio_net_hdr is in host order; the wire carries it little-endian. On a
 * little-endian host both are the same bytes; elsewhere the four u16 fields swap. */
static inline void fp_vnet_host_to_wire(uint8_t *dst, const uint8_t *src) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (dst != src) memcpy(dst, src, 10);
#else
    uint8_t t[10];
    memcpy(t, src, 10);
    dst[0] = t[0]; dst[1] = t[1];
    for (int i = 2; i < 10; i += 2) { dst[i] = t[i + 1]; dst[i + 1] = t[i]; }
#endif
}
#define fp_vnet_wire_to_host fp_vnet_host_to_wire

/* ---- relaxed atomics: counters and send counters shared by the two threads ------ */
static inline uint64_t fp_add64(uint64_t *p, uint64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline uint32_t fp_add32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
static inline uint64_t fp_load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline int fp_load_flag(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fp_store_flag(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
/* A try-lock on one int (0 free, 1 held): acquire on success, release on unlock. */
static inline int fp_try_lock(int *p) {
    int expected = 0;
    return __atomic_compare_exchange_n(p, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static inline void fp_unlock(int *p) { __atomic_store_n(p, 0, __ATOMIC_RELEASE); }

/* ---- clock: the threads' "now"; Python's time.monotonic() reads the same clock ---- */
static inline double fp_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- locks ------------------------------------------------------------------------ */
static inline int fp_rwlock_init(pthread_rwlock_t *l) {
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
#ifdef PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP
    /* Python's table updates must not starve behind two busy reader threads. */
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    int rc = pthread_rwlock_init(l, &a);
    pthread_rwlockattr_destroy(&a);
    return rc;
}

/* Absolute CLOCK_REALTIME deadline `seconds` from now, for pthread_cond_timedwait. */
static inline void fp_deadline_in(struct timespec *ts, double seconds) {
    clock_gettime(CLOCK_REALTIME, ts);
    if (seconds < 0) seconds = 0;
    if (seconds > 86400.0) seconds = 86400.0;
    long sec = (long)seconds;
    long nsec = (long)((seconds - (double)sec) * 1e9);
    ts->tv_sec += sec;
    ts->tv_nsec += nsec;
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec += 1; ts->tv_nsec -= 1000000000L; }
}

/* ---- socket addresses --------------------------------------------------------------- */
typedef struct {
    socklen_t len;                 /* 0: unset */
    struct sockaddr_storage ss;
} fp_addr;

/* IPv4 dotted quad or IPv6 text; 0 on success, -1 if the host is not a literal. */
static inline int fp_addr_set(fp_addr *a, const char *host, int port) {
    memset(a, 0, sizeof(*a));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&a->ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a->ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        a->len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        a->len = sizeof(*v6);
        return 0;
    }
    return -1;
}

/* Text form of an address into host (>= INET6_ADDRSTRLEN bytes); its port, or -1. */
static inline int fp_addr_text(const struct sockaddr_storage *ss, char *host, size_t hostlen) {
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)ss;
        if (!inet_ntop(AF_INET, &v4->sin_addr, host, (socklen_t)hostlen)) return -1;
        return ntohs(v4->sin_port);
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)ss;
        if (!inet_ntop(AF_INET6, &v6->sin6_addr, host, (socklen_t)hostlen)) return -1;
        return ntohs(v6->sin6_port);
    }
    return -1;
}

/* Is `ss` the address and port of `a`? (IPv4 or IPv6; flow info and scope ignored) */
static inline int fp_addr_same(const fp_addr *a, const struct sockaddr_storage *ss) {
    if (a->len == 0 || a->ss.ss_family != ss->ss_family) return 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)&a->ss;
        const struct sockaddr_in *y = (const struct sockaddr_in *)ss;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->ss;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)ss;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

static inline int fp_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Wait until fd is ready for `events` or the stop eventfd fires; timeout in ms (-1:
 * forever). Returns 1 if fd is ready, 0 on timeout or stop, -1 on error. */
static inline int fp_wait(int fd, short events, int stopfd, int timeout_ms) {
    struct pollfd p[2] = {{fd, events, 0}, {stopfd, POLLIN, 0}};
    int n = poll(p, 2, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -1;
    if (p[1].revents) return 0;
    return (p[0].revents & (events | POLLERR | POLLHUP)) ? 1 : 0;
}

/* ---- batched UDP send ------------------------------------------------------------- */
/* One closed datagram in an encoder arena, and where it goes. */
typedef struct {
    const uint8_t *data;
    uint32_t len;
    const fp_addr *to;
} fp_send_item;

typedef struct {
    struct mmsghdr msgs[FP_IO_BATCH];
    struct iovec iov[FP_IO_BATCH * FP_GSO_MAX_SEGMENTS];
    char cmsg[FP_IO_BATCH][CMSG_SPACE(sizeof(uint16_t))];
    int gso;                       /* 1 while UDP_SEGMENT works on this socket */
    uint64_t errors;               /* datagrams the kernel refused */
    uint64_t syscalls;
} fp_sender;

static inline void fp_sender_init(fp_sender *s, int gso) {
    memset(s, 0, sizeof(*s));
    s->gso = gso;
}

/* How many items starting at items[i] form one train: same address, same length,
 * except that the last may be shorter; at most FP_GSO_MAX_SEGMENTS and BYTES. */
static inline int fp_train_length(const fp_send_item *items, int n, int i, int gso) {
    if (!gso) return 1;
    uint32_t seg = items[i].len;
    uint32_t total = seg;
    int k = 1;
    while (i + k < n && k < FP_GSO_MAX_SEGMENTS) {
        const fp_send_item *it = &items[i + k];
        if (it->to != items[i].to || it->len > seg || total + it->len > FP_GSO_MAX_BYTES) break;
        total += it->len;
        k++;
        if (it->len < seg) break;  /* a shorter segment ends a train */
    }
    return k;
}

/* sendmmsg the first nmsg prepared messages. A message the kernel refuses is skipped
 * and its datagrams added to *failed, except that with GSO on, EIO/EINVAL/EMSGSIZE
 * (no segmentation offload on this path) return at once with *sent messages done. */
static inline int fp_send_once(fp_sender *s, int fd, int nmsg, int *sent, uint64_t *failed) {
    int done = 0;
    while (done < nmsg) {
        int r = sendmmsg(fd, s->msgs + done, (unsigned int)(nmsg - done), 0);
        s->syscalls++;
        if (r > 0) { done += r; continue; }
        int err = r < 0 ? errno : EIO;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
            struct pollfd p = {fd, POLLOUT, 0};
            if (poll(&p, 1, 100) > 0) continue;
        }
        if (s->gso && (err == EIO || err == EINVAL || err == EMSGSIZE)) {
            *sent = done;
            return -err;
        }
        *failed += s->msgs[done].msg_hdr.msg_iovlen;   /* skip the refused message */
        done++;
    }
    *sent = done;
    return 0;
}

/* Send n datagrams in order. Consecutive equal-sized datagrams to one address go as
 * one UDP_SEGMENT train; a socket or path refusing GSO turns it off for good and the
 * rest is sent datagram by datagram. Returns the datagrams the kernel refused. */
static inline uint64_t fp_sender_send(fp_sender *s, int fd, const fp_send_item *items, int n) {
    uint64_t failed = 0;
    int i = 0;
    while (i < n) {
        int nmsg = 0, niov = 0;
        int first[FP_IO_BATCH];
        while (i < n && nmsg < FP_IO_BATCH) {
            int k = fp_train_length(items, n, i, s->gso);
            struct msghdr *h = &s->msgs[nmsg].msg_hdr;
            memset(h, 0, sizeof(*h));
            h->msg_name = (void *)&items[i].to->ss;
            h->msg_namelen = items[i].to->len;
            h->msg_iov = &s->iov[niov];
            h->msg_iovlen = (size_t)k;
            for (int j = 0; j < k; j++) {
                s->iov[niov + j].iov_base = (void *)items[i + j].data;
                s->iov[niov + j].iov_len = items[i + j].len;
            }
            if (k > 1) {
                h->msg_control = s->cmsg[nmsg];
                h->msg_controllen = sizeof(s->cmsg[nmsg]);
                struct cmsghdr *c = CMSG_FIRSTHDR(h);
                c->cmsg_level = SOL_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t seg = (uint16_t)items[i].len;
                memcpy(CMSG_DATA(c), &seg, sizeof(seg));
            }
            first[nmsg] = i;
            niov += k;
            i += k;
            nmsg++;
        }
        int sent = 0;
        if (fp_send_once(s, fd, nmsg, &sent, &failed) < 0) {
            s->gso = 0;            /* resend from the first message not sent, one by one */
            i = first[sent];
        }
    }
    return failed;
}

/* ---- batched UDP receive with GRO --------------------------------------------------- */
typedef struct {
    struct mmsghdr msgs[FP_IO_BATCH];
    struct iovec iov[FP_IO_BATCH];
    struct sockaddr_storage from[FP_IO_BATCH];
    char cmsg[FP_IO_BATCH][CMSG_SPACE(sizeof(int)) + 64];
    uint8_t *buffers;              /* FP_IO_BATCH * FP_RX_BUFFER bytes */
    /* the received datagrams after splitting GRO trains */
    uint8_t *dgram[FP_RX_MAX_DATAGRAMS];
    uint32_t dgram_len[FP_RX_MAX_DATAGRAMS];
    int dgram_from[FP_RX_MAX_DATAGRAMS];   /* index into from[] */
    uint64_t syscalls;
} fp_receiver;

static inline int fp_receiver_init(fp_receiver *r) {
    memset(r, 0, sizeof(*r));
    r->buffers = (uint8_t *)malloc((size_t)FP_IO_BATCH * FP_RX_BUFFER);
    return r->buffers ? 0 : -1;
}

static inline void fp_receiver_free(fp_receiver *r) {
    free(r->buffers);
    r->buffers = NULL;
}

/* Ask for GRO trains; harmless where unsupported. */
static inline void fp_enable_gro(int fd) {
    int one = 1;
    (void)setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one));
}

static inline int fp_gro_size(struct msghdr *h) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof(v));
            return v;
        }
    }
    return 0;
}

/* One recvmmsg (non-blocking). Returns datagrams found (GRO trains split), 0 if none
 * waited, -errno on error. Buffers stay valid until the next call. */
static inline int fp_receiver_recv(fp_receiver *r, int fd) {
    for (int i = 0; i < FP_IO_BATCH; i++) {
        r->iov[i].iov_base = r->buffers + (size_t)i * FP_RX_BUFFER;
        r->iov[i].iov_len = FP_RX_BUFFER;
        struct msghdr *h = &r->msgs[i].msg_hdr;
        h->msg_name = &r->from[i];
        h->msg_namelen = sizeof(r->from[i]);
        h->msg_iov = &r->iov[i];
        h->msg_iovlen = 1;
        h->msg_control = r->cmsg[i];
        h->msg_controllen = sizeof(r->cmsg[i]);
        h->msg_flags = 0;
    }
    int n = recvmmsg(fd, r->msgs, FP_IO_BATCH, MSG_DONTWAIT, NULL);
    r->syscalls++;
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -errno;
    int out = 0;
    for (int i = 0; i < n; i++) {
        uint32_t len = r->msgs[i].msg_len;
        uint8_t *base = (uint8_t *)r->iov[i].iov_base;
        int seg = fp_gro_size(&r->msgs[i].msg_hdr);
        if (seg <= 0 || (uint32_t)seg >= len) seg = (int)len;
        for (uint32_t off = 0; off < len && out < FP_RX_MAX_DATAGRAMS; off += (uint32_t)seg) {
            uint32_t l = len - off < (uint32_t)seg ? len - off : (uint32_t)seg;
            r->dgram[out] = base + off;
            r->dgram_len[out] = l;
            r->dgram_from[out] = i;
            out++;
        }
        if (len == 0 && out < FP_RX_MAX_DATAGRAMS) {   /* an empty datagram is still one */
            r->dgram[out] = base; r->dgram_len[out] = 0; r->dgram_from[out] = i; out++;
        }
    }
    return out;
}

/* ---- TAP batch read ------------------------------------------------------------------- */
/* Read up to `max` frames (each: vnet header + Ethernet frame) into slots of `slot`
 * bytes. Returns frames read (0 if none waited), -errno on a hard error. */
static inline int fp_tap_read(int fd, uint8_t *buf, size_t slot, int max, uint32_t *lens) {
    int n = 0;
    while (n < max) {
        ssize_t r = read(fd, buf + (size_t)n * slot, slot);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return n ? n : -errno;
        }
        lens[n++] = (uint32_t)r;
    }
    return n;
}

#endif /* WEAVE_FP_SYS_H */
