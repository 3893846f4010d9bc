# cython: language_level=3
"""router.wire._cborscan: the structure scan of ``router/wire/cbor.py``, compiled.

The same walk as ``cbor._scan`` (one step per item head, no value built), with the same
error messages, in a C loop: a full topology of a large mesh is hundreds of kilobytes of
small items, and walking them in Python was most of the cost of handling gossip.
``tests/wire/test_cborscan.py`` checks the two against each other on random inputs.
"""

from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc


cdef inline bint _arg_width(int info, int* width) noexcept nogil:
    if info == 24:
        width[0] = 1
    elif info == 25:
        width[0] = 2
    elif info == 26:
        width[0] = 4
    elif info == 27:
        width[0] = 8
    else:
        return False
    return True


def scan(const unsigned char[::1] data, int max_depth, Py_ssize_t max_items,
         bint allow_int_keys):
    """None if ``data`` is exactly one item of the accepted subset, else what is wrong."""
    cdef Py_ssize_t size = data.shape[0]
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t depth = 0
    cdef int initial, major, info, width, i
    cdef uint64_t arg, count
    cdef uint64_t* remaining
    cdef unsigned char* is_map
    if size == 0:
        return "empty CBOR input"
    if max_depth < 0:
        max_depth = 0
    remaining = <uint64_t*>malloc((max_depth + 1) * sizeof(uint64_t))
    is_map = <unsigned char*>malloc(max_depth + 1)
    if remaining == NULL or is_map == NULL:
        free(remaining)
        free(is_map)
        raise MemoryError()
    try:
        while True:
            if pos >= size:
                return "truncated CBOR item"
            initial = data[pos]
            major = initial >> 5
            info = initial & 0x1F
            if depth and is_map[depth - 1] and remaining[depth - 1] % 2 == 0:
                if not (major == 3 or (allow_int_keys and (major == 0 or major == 1))):
                    return "CBOR map key is not a text string"
            pos += 1
            # the item head's argument
            if major == 6:
                return "CBOR tags are not allowed"
            if major == 7:
                if info == 20 or info == 21 or info == 22:
                    arg = 0
                elif info == 25 or info == 26 or info == 27:
                    arg = 0
                else:
                    return f"CBOR simple value {info} is not allowed"
            elif info < 24:
                arg = info
            elif _arg_width(info, &width):
                if pos + width > size:
                    return "truncated CBOR item head"
                arg = 0
                for i in range(width):
                    arg = (arg << 8) | data[pos + i]
                pos += width
            elif info == 31:
                return "indefinite-length CBOR items are not allowed"
            else:
                return f"reserved CBOR additional information {info}"
            # the item's body
            if major == 2 or major == 3:
                if arg > <uint64_t>(size - pos):
                    return "truncated CBOR string"
                pos += <Py_ssize_t>arg
            elif major == 4 or major == 5:
                if arg > <uint64_t>max_items:
                    return f"CBOR container of {arg} items exceeds {max_items}"
                count = arg * 2 if major == 5 else arg
                if count > <uint64_t>(size - pos):
                    return "truncated CBOR container"
                if depth >= max_depth:
                    return f"CBOR nested deeper than {max_depth}"
                if count:
                    remaining[depth] = count
                    is_map[depth] = major == 5
                    depth += 1
                    continue
            elif major == 7:
                if info == 25:
                    pos += 2
                elif info == 26:
                    pos += 4
                elif info == 27:
                    pos += 8
                if pos > size:
                    return "truncated CBOR float"
            # one item finished: close every container it completes
            while depth:
                remaining[depth - 1] -= 1
                if remaining[depth - 1]:
                    break
                depth -= 1
            if not depth:
                break
        if pos != size:
            return f"{size - pos} trailing bytes after the CBOR item"
        return None
    finally:
        free(remaining)
        free(is_map)
