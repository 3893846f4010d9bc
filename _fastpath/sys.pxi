# Declarations of the C side: libc, pthreads, libsodium and fp_sys.h (the syscall glue).
# Included first by fastpath.pyx.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove, memset


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_rwlock_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_attr_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_create(pthread_t *t, const pthread_attr_t *attr,
                       void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)
    int pthread_setname_np(pthread_t t, const char *name)   # Python.h defines _GNU_SOURCE
    int pthread_rwlock_rdlock(pthread_rwlock_t *l)
    int pthread_rwlock_wrlock(pthread_rwlock_t *l)
    int pthread_rwlock_unlock(pthread_rwlock_t *l)
    int pthread_rwlock_destroy(pthread_rwlock_t *l)
    int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *a)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *a)
    int pthread_cond_signal(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const timespec *t)
    int pthread_cond_destroy(pthread_cond_t *c)


cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec


cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<unistd.h>" nogil:
    ssize_t c_write "write" (int fd, const void *buf, size_t n)
    ssize_t c_read "read" (int fd, void *buf, size_t n)
    int c_close "close" (int fd)


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC


cdef extern from "<poll.h>" nogil:
    enum:
        POLLIN
        POLLOUT


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct sockaddr_storage:
        unsigned short ss_family


cdef extern from "fp_sys.h" nogil:
    enum:
        FP_IO_BATCH
        FP_RX_BUFFER
        FP_RX_MAX_DATAGRAMS
        INET6_ADDRSTRLEN

    int sodium_init()
    int crypto_secretbox_detached(unsigned char *c, unsigned char *mac,
                                  const unsigned char *m, unsigned long long mlen,
                                  const unsigned char *n, const unsigned char *k)
    int crypto_secretbox_open_detached(unsigned char *m, const unsigned char *c,
                                       const unsigned char *mac, unsigned long long clen,
                                       const unsigned char *n, const unsigned char *k)
    void sodium_memzero(void *p, size_t n)
    int crypto_aead_aes256gcm_is_available()

    uint16_t fp_get16(const uint8_t *p)
    void fp_put16(uint8_t *p, uint16_t v)
    uint32_t fp_get32(const uint8_t *p)
    void fp_put32(uint8_t *p, uint32_t v)
    uint64_t fp_get48(const uint8_t *p)
    void fp_put48(uint8_t *p, uint64_t v)
    uint64_t fp_get64(const uint8_t *p)
    void fp_put64(uint8_t *p, uint64_t v)
    uint16_t fp_getle16(const uint8_t *p)
    void fp_vnet_host_to_wire(uint8_t *dst, const uint8_t *src)
    void fp_vnet_wire_to_host(uint8_t *dst, const uint8_t *src)

    uint64_t fp_add64(uint64_t *p, uint64_t v)
    uint32_t fp_add32(uint32_t *p, uint32_t v)
    uint64_t fp_load64(const uint64_t *p)
    int fp_load_flag(const int *p)
    void fp_store_flag(int *p, int v)
    bint fp_try_lock(int *p)
    void fp_unlock(int *p)

    double fp_monotonic()
    int fp_rwlock_init(pthread_rwlock_t *l)
    void fp_deadline_in(timespec *ts, double seconds)

    ctypedef struct fp_addr:
        socklen_t len
        sockaddr_storage ss
    int fp_addr_set(fp_addr *a, const char *host, int port)
    int fp_addr_text(const sockaddr_storage *ss, char *host, size_t hostlen)
    bint fp_addr_same(const fp_addr *a, const sockaddr_storage *ss)
    int fp_set_nonblocking(int fd)
    int fp_wait(int fd, short events, int stopfd, int timeout_ms)

    ctypedef struct fp_send_item:
        const uint8_t *data
        uint32_t len
        const fp_addr *to
    ctypedef struct fp_sender:
        int gso
        uint64_t syscalls
    void fp_sender_init(fp_sender *s, int gso)
    uint64_t fp_sender_send(fp_sender *s, int fd, const fp_send_item *items, int n)

    ctypedef struct fp_receiver:
        sockaddr_storage *from_ "from"
        uint8_t **dgram
        uint32_t *dgram_len
        int *dgram_from
        uint64_t syscalls
    int fp_receiver_init(fp_receiver *r)
    void fp_receiver_free(fp_receiver *r)
    void fp_enable_gro(int fd)
    int fp_receiver_recv(fp_receiver *r, int fd)

    int fp_tap_read(int fd, uint8_t *buf, size_t slot, int max, uint32_t *lens)


cdef extern from "fp_gcm.h" nogil:
    enum:
        FP_GCM_TAG
        FP_GCM_NONCE

    void *fp_gcm_new()
    void fp_gcm_free(void *ctx)
    int fp_gcm_key(void *ctx, const uint8_t *key, int enc)
    int fp_gcm_seal(void *ctx, uint8_t *mac, uint8_t *data, uint32_t length, const uint8_t *nonce)
    int fp_gcm_open(void *ctx, uint8_t *data, uint32_t length, const uint8_t *mac,
                    const uint8_t *nonce)
