# Assembly of the token x feature CSR matrix for sequence tagging (issue [pos]).
#
# Every feature of a token is a feature of the word TYPE found at some window offset from it
# (offset 0: the token's own word; offset -1: the word before it; ...). The Python side keeps,
# per word type and per offset group, the sorted column ids of that type's features, in one
# flat buffer:
#
#   type_ids[seg[ty, g] : seg[ty, g + 1]]   column ids contributed by type ty in group g
#
# so a token's row is the concatenation over groups g of the ids of the type at position
# t + shift[g], or of a boundary pseudo-type when that position falls outside the sentence
# (type 0 before its start, type 1 after its end). Column ids are numbered group by group in
# increasing group order, so concatenating in group order gives sorted rows for free.
#
# Two passes, both over (token, group) with no Python objects: the first counts each row's
# entries (-> indptr), the second copies the ids into the indices buffer that the caller
# allocated with the size the first pass found.
from _typedefs cimport intp_t
from libc.stdint cimport int32_t, uint8_t, uint64_t
from libc.string cimport memcmp


cdef inline intp_t _neighbour_type(const int32_t[::1] tok_type, intp_t j, intp_t start,
                                   intp_t stop) noexcept nogil:
    if j < start:
        return 0
    if j >= stop:
        return 1
    return tok_type[j]


def row_lengths(const int32_t[::1] tok_type, const intp_t[::1] offsets,
                const intp_t[::1] shift, const intp_t[:, ::1] seg, intp_t[::1] indptr_out):
    """Fill ``indptr_out`` (N+1,) with the CSR row pointer of the batch's feature matrix.

    Parameters
    ----------
    tok_type : (N,) int32
        Word-type id of every token (>= 2; 0 and 1 are the boundary pseudo-types).
    offsets : (n+1,) int64
        Sentence i is tokens offsets[i]:offsets[i+1].
    shift : (G,) int64
        Window offset of each feature group.
    seg : (n_types, G+1) int64
        Segment bounds of every type's ids per group, see the module comment.
    indptr_out : (N+1,) int64
        Output: indptr_out[t+1] - indptr_out[t] is the number of features of token t.

    The caller has checked that every type id is < n_types and offsets are non-decreasing.
    """
    cdef intp_t n_sents = offsets.shape[0] - 1
    cdef intp_t n_groups = shift.shape[0]
    cdef intp_t i, t, g, start, stop, ty, total = 0
    with nogil:
        indptr_out[0] = 0
        for i in range(n_sents):
            start = offsets[i]
            stop = offsets[i + 1]
            for t in range(start, stop):
                for g in range(n_groups):
                    ty = _neighbour_type(tok_type, t + shift[g], start, stop)
                    total += seg[ty, g + 1] - seg[ty, g]
                indptr_out[t + 1] = total


def fill_indices(const int32_t[::1] tok_type, const intp_t[::1] offsets,
                 const intp_t[::1] shift, const intp_t[:, ::1] seg,
                 const int32_t[::1] type_ids, const intp_t[::1] indptr,
                 int32_t[::1] indices_out):
    """Fill ``indices_out`` (nnz,) with the column ids of every token's features, row by row.

    Parameters as :func:`row_lengths`, plus ``type_ids`` (the flat id buffer that ``seg``
    points into) and ``indptr`` as :func:`row_lengths` computed it; ``indices_out`` has
    ``indptr[N]`` entries.
    """
    cdef intp_t n_sents = offsets.shape[0] - 1
    cdef intp_t n_groups = shift.shape[0]
    cdef intp_t i, t, g, k, start, stop, ty, pos
    with nogil:
        for i in range(n_sents):
            start = offsets[i]
            stop = offsets[i + 1]
            for t in range(start, stop):
                pos = indptr[t]
                for g in range(n_groups):
                    ty = _neighbour_type(tok_type, t + shift[g], start, stop)
                    for k in range(seg[ty, g], seg[ty, g + 1]):
                        indices_out[pos] = type_ids[k]
                        pos += 1


# ---------------------------------------------------------------------------------------------
# A read-only hash table from feature strings (UTF-8 bytes) to column ids.
#
# Word types first seen at tagging time need their feature strings looked up in the training
# vocabulary. A Python dict of all feature names costs a hash and an insert per name every time
# a model is loaded; this table is built from the saved name buffer in one compiled pass and
# probed only for the strings of the new types. Open addressing with linear probing; the table
# has at least twice as many slots as names, so every probe sequence reaches an empty slot (-1).

cdef uint64_t _FNV_OFFSET = 14695981039346656037ULL
cdef uint64_t _FNV_PRIME = 1099511628211ULL


cdef inline uint64_t _fnv1a(const uint8_t* s, intp_t n) noexcept nogil:
    cdef uint64_t h = _FNV_OFFSET
    cdef intp_t i
    for i in range(n):
        h = (h ^ s[i]) * _FNV_PRIME
    return h


def build_string_table(const uint8_t[::1] buf, const intp_t[::1] start, const intp_t[::1] stop,
                       int32_t[::1] table_out):
    """Insert strings ``buf[start[k]:stop[k]]``, k = 0..n-1, into ``table_out``.

    ``table_out`` has a power-of-two size > 2n and is filled with -1 by the caller; afterwards
    it holds k at some slot of every string (the first k of equal strings). The caller has
    checked 0 <= start[k] <= stop[k] <= len(buf).
    """
    cdef intp_t n = start.shape[0]
    cdef uint64_t mask = <uint64_t>table_out.shape[0] - 1
    cdef intp_t k, j, length
    cdef uint64_t slot
    cdef const uint8_t* base = &buf[0] if buf.shape[0] else NULL
    with nogil:
        for k in range(n):
            length = stop[k] - start[k]
            slot = _fnv1a(base + start[k], length) & mask
            while True:
                j = table_out[slot]
                if j < 0:
                    table_out[slot] = <int32_t>k
                    break
                if stop[j] - start[j] == length and (
                        length == 0 or memcmp(base + start[j], base + start[k], length) == 0):
                    break
                slot = (slot + 1) & mask


def lookup_strings(const uint8_t[::1] buf, const intp_t[::1] start, const intp_t[::1] stop,
                   const int32_t[::1] table, const uint8_t[::1] query,
                   const intp_t[::1] q_start, const intp_t[::1] q_stop, intp_t[::1] out):
    """``out[i]`` = id of string ``query[q_start[i]:q_stop[i]]`` in the table, or -1.

    ``buf``, ``start``, ``stop`` and ``table`` as :func:`build_string_table` left them; the
    caller has checked the query bounds.
    """
    cdef intp_t m = q_start.shape[0]
    cdef uint64_t mask = <uint64_t>table.shape[0] - 1
    cdef intp_t i, j, length
    cdef uint64_t slot
    cdef const uint8_t* base = &buf[0] if buf.shape[0] else NULL
    cdef const uint8_t* qbase = &query[0] if query.shape[0] else NULL
    with nogil:
        for i in range(m):
            length = q_stop[i] - q_start[i]
            slot = _fnv1a(qbase + q_start[i], length) & mask
            out[i] = -1
            while True:
                j = table[slot]
                if j < 0:
                    break
                if stop[j] - start[j] == length and (
                        length == 0 or memcmp(base + start[j], qbase + q_start[i], length) == 0):
                    out[i] = j
                    break
                slot = (slot + 1) & mask
