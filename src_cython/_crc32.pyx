# CRC-32 of model-file members (factorebm.modelio), with the carry-less multiply where the CPU
# has it: see _crc32.h. Equal to zlib.crc32 on every input (tests/test_modelio.py).
from libc.stdint cimport uint8_t, uint32_t

cdef extern from "_crc32.h" nogil:
    int crc32_has_clmul()
    void crc32_init_table()
    uint32_t crc32_fast(uint32_t crc, const uint8_t* p, size_t n, int use_clmul)

crc32_init_table()      # at import, so that no two threads ever build the table at once
cdef int _CLMUL = crc32_has_clmul()

# True where this module is faster than zlib.crc32 (the CPU has the carry-less multiply).
FAST = bool(_CLMUL)


def crc32(const uint8_t[::1] data, uint32_t crc=0):
    """``zlib.crc32(data, crc)`` for a contiguous byte buffer, the GIL released.

    Parameters
    ----------
    data : contiguous buffer of bytes (bytes, bytearray, uint8 ndarray)
    crc : int
        The CRC of the bytes before ``data`` (0 to start).
    """
    cdef size_t n = data.shape[0]
    cdef const uint8_t* p = &data[0] if n else NULL
    cdef uint32_t out
    with nogil:
        out = crc32_fast(crc, p, n, _CLMUL)
    return out
