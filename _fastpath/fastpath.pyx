# cython: language_level=3
"""router._fastpath: the sleeve data plane, compiled (see docs/dataplane.md).

One extension module built from this file and its includes:

* ``sys.pxi``      declarations of libc, pthreads, libsodium, ``fp_sys.h`` and ``fp_gcm.h``
* ``wire.pxi``     the frames format: constants, vnet header check, nonce, replay window
* ``tables.pxi``   peers, sessions, routes, the MAC table; the DP struct and its locking
* ``reasm.pxi``    reassembly of fragmented frames
* ``icmp.pxi``     ICMP "fragmentation needed" for DF packets too big for a path
* ``encoder.pxi``  packing, fragmentation, sealing into an arena of datagrams
* ``core.pxi``     the egress and ingress pipelines
* ``threads.pxi``  the TX and RX threads and the upcall queue
* ``api.pxi``      class ``Dataplane``, the Python API (typed in ``router/_fastpath.pyi``)

``router/dataplane/reference.py`` is the pure-Python twin; ``tests/fastpath/`` runs one
suite against both. Only ``router/dataplane/backend.py`` imports this module.
"""

include "sys.pxi"
include "wire.pxi"
include "tables.pxi"
include "reasm.pxi"
include "icmp.pxi"
include "encoder.pxi"
include "core.pxi"
include "threads.pxi"
include "api.pxi"

if sodium_init() < 0:
    raise ImportError("libsodium failed to initialise")

THREADED = True
CIPHERS = ("aes256gcm", "secretbox")  # router.crypto.ciphers.Cipher names
VNET_HEADER_SIZE = META_SIZE
MAX_FRAME_SIZE = MAX_FRAME
MAX_ELEMENT_SIZE = MAX_ELEMENT
MIN_DATAGRAM_SIZE = MIN_DATAGRAM
MAX_DATAGRAM_SIZE = MAX_DATAGRAM
TTL = INITIAL_TTL
