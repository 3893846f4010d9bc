# ICMP "fragmentation needed" (RFC 792 type 3 code 4, RFC 1191 next-hop MTU) for a
# container's IPv4 packet that has DF set and does not fit its neighbour's path in one
# datagram. router/dataplane/icmp.py is the Python twin; docs/dataplane.md, "Path MTU".
#
# Only plain IPv4 packets qualify: untagged Ethernet type 0x0800, not GSO (a TSO
# super-frame is carried whole and segmented by the receiving kernel at the container's
# MTU), DF set, not a fragment, not itself an ICMP error, from a unicast source. Anything
# else that is too big is carried in pieces (type-3 fragments), as before.
#
# The reply, written into the local TAP, comes "from" the packet's destination:
#   vnet header (10, zero) | Ethernet: dst = the sender's MAC, src = the destination MAC,
#   0x0800 | IPv4 (20): TTL 64, protocol 1, src = the packet's destination, dst = its
#   source | ICMP (8): 3, 4, checksum, 0 (2), next-hop MTU (2) | the packet's IP header
#   and the first 8 bytes of its payload.

cdef enum:
    ETH_HEADER = 14
    IPV4_MIN_HEADER = 20
    ICMP_HEADER = 8
    ICMP_QUOTE = 8                 # payload bytes quoted after the refused packet's header
    ICMP_REPLY_MAX = 130           # vnet + Ethernet + IP + ICMP + 60-byte header + quote


cdef inline uint32_t overlay_mtu(const Peer *p) noexcept nogil:
    """The largest IP packet a frame to this neighbour carries in one datagram."""
    return p.max_datagram - HEADER_SIZE - (SEAL_OVERHEAD if p.encrypted else 0) \
        - BODY_HEADER - RECORD_HEADER - META_SIZE - ETH_HEADER


cdef uint16_t inet_checksum(const uint8_t *data, uint32_t length) noexcept nogil:
    """The Internet checksum (RFC 1071) of ``data``."""
    cdef uint64_t total = 0
    cdef uint32_t i = 0
    while i + 1 < length:
        total += (<uint32_t>data[i] << 8) | data[i + 1]
        i += 2
    if i < length:
        total += <uint32_t>data[i] << 8
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return <uint16_t>(~total & 0xffff)


cdef uint32_t frag_needed(const uint8_t *elem, uint32_t elen, uint32_t mtu,
                          uint8_t *out) noexcept nogil:
    """The reply element for ``elem`` (vnet header in wire order + frame) written to
    ``out`` (ICMP_REPLY_MAX bytes) and its length; 0 when no reply is due."""
    cdef const uint8_t *f = elem + META_SIZE
    cdef const uint8_t *ip = f + ETH_HEADER
    cdef uint32_t flen = elen - META_SIZE, ihl, total, quote
    cdef uint8_t *r
    cdef uint8_t *icmp
    cdef uint16_t csum
    if (elem[1] & 0x7f) != VNET_GSO_NONE or flen < ETH_HEADER + IPV4_MIN_HEADER:
        return 0
    if fp_get16(f + 12) != 0x0800 or ip[0] >> 4 != 4:
        return 0
    ihl = (ip[0] & 15) * 4
    total = fp_get16(ip + 2)
    if ihl < IPV4_MIN_HEADER or total < ihl or total > flen - ETH_HEADER or total <= mtu:
        return 0
    if not ip[6] & 0x40 or fp_get16(ip + 6) & 0x3fff:   # DF, and not a fragment
        return 0
    if ip[12] == 0 or ip[12] >= 224:                     # no source, or not unicast
        return 0
    if ip[9] == 1 and total > ihl and (ip[ihl] == 3 or ip[ihl] == 4 or ip[ihl] == 5
                                       or ip[ihl] == 11 or ip[ihl] == 12):
        return 0                                         # never answer an ICMP error
    quote = ihl + (ICMP_QUOTE if total - ihl > ICMP_QUOTE else total - ihl)
    memset(out, 0, META_SIZE)
    r = out + META_SIZE
    memcpy(r, f + 6, 6)
    memcpy(r + 6, f, 6)
    fp_put16(r + 12, 0x0800)
    r += ETH_HEADER
    r[0] = 0x45
    r[1] = 0
    fp_put16(r + 2, <uint16_t>(IPV4_MIN_HEADER + ICMP_HEADER + quote))
    fp_put32(r + 4, 0)                                   # id 0, no flags
    r[8] = 64
    r[9] = 1
    fp_put16(r + 10, 0)
    memcpy(r + 12, ip + 16, 4)
    memcpy(r + 16, ip + 12, 4)
    csum = inet_checksum(r, IPV4_MIN_HEADER)
    fp_put16(r + 10, csum)
    icmp = r + IPV4_MIN_HEADER
    icmp[0] = 3
    icmp[1] = 4
    fp_put16(icmp + 2, 0)
    fp_put16(icmp + 4, 0)
    fp_put16(icmp + 6, <uint16_t>mtu)
    memcpy(icmp + ICMP_HEADER, ip, quote)
    csum = inet_checksum(icmp, ICMP_HEADER + quote)
    fp_put16(icmp + 2, csum)
    return META_SIZE + ETH_HEADER + IPV4_MIN_HEADER + ICMP_HEADER + quote
