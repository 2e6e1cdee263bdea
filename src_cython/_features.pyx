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
from cython.parallel cimport parallel, prange, threadid
from _typedefs cimport intp_t
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy

cdef extern from *:
    void __builtin_prefetch(const void* p) nogil


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

cdef extern from "_hash.h" nogil:
    uint64_t febm_hash_bytes(const uint8_t* s, intp_t n)


cdef intp_t _split(const uint8_t* base, intp_t size, uint8_t sep, intp_t n,
                   intp_t* starts) noexcept nogil:
    """Split base[:size] at every byte ``sep``, expecting n >= 1 strings: starts[k] is where
    string k begins, for k < n, and starts[n] = size + 1, so that string k ends at
    starts[k + 1] - 1. Returns the number of strings found (capped at n + 1); when it is not
    n, starts is incomplete."""
    cdef intp_t pos = 0, k = 0, end
    cdef const uint8_t* hit
    while True:
        hit = <const uint8_t*>memchr(base + pos, sep, size - pos) if pos < size else NULL
        end = size if hit == NULL else hit - base
        if k >= n:
            return k + 1
        starts[k] = pos
        k += 1
        if hit == NULL:
            break
        pos = end + 1
    starts[n] = size + 1
    return k


def split_and_build_string_table(const uint8_t[::1] buf, uint8_t sep, intp_t[::1] start_out,
                                 intp_t[::1] stop_out, int32_t[::1] table_out):
    """Split ``buf`` at every byte ``sep`` into n = len(start_out) strings and insert them
    into ``table_out`` as :func:`build_string_table` does, in one pass.

    Returns the number of strings found; when it is not n (a string holds ``sep``) the
    outputs are incomplete and the caller must split another way. ``table_out`` has a
    power-of-two size > 2n and is filled with -1 by the caller.
    """
    cdef intp_t n = start_out.shape[0]
    cdef intp_t size = buf.shape[0]
    cdef intp_t k, i
    cdef const uint8_t* base = &buf[0] if size else NULL
    cdef intp_t* starts
    if n == 0:
        return 0
    starts = <intp_t*>malloc((n + 1) * sizeof(intp_t))
    if starts == NULL:
        raise MemoryError()
    with nogil:
        k = _split(base, size, sep, n, starts)
        if k == n:
            for i in range(n):
                start_out[i] = starts[i]
                stop_out[i] = starts[i + 1] - 1
    free(starts)
    if k != n:
        return k
    build_string_table(buf, start_out, stop_out, table_out)
    return k


cdef enum:
    # How many strings ahead the table slot is prefetched: a table of a large vocabulary
    # does not fit in cache, and without prefetching every insert or probe waits on memory.
    _AHEAD = 16


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
    cdef uint64_t* slots
    if n == 0:
        return
    slots = <uint64_t*>malloc(n * sizeof(uint64_t))
    if slots == NULL:
        raise MemoryError()
    with nogil:
        # First every string's home slot (a sequential pass), then the inserts, each
        # prefetching the slot of the string _AHEAD places on.
        for k in range(n):
            slots[k] = febm_hash_bytes(base + start[k], stop[k] - start[k]) & mask
        for k in range(n):
            if k + _AHEAD < n:
                __builtin_prefetch(&table_out[slots[k + _AHEAD]])
            length = stop[k] - start[k]
            slot = slots[k]
            while True:
                j = table_out[slot]
                if j < 0:
                    table_out[slot] = <int32_t>k
                    break
                if stop[j] - start[j] == length and (
                        length == 0 or memcmp(base + start[j], base + start[k], length) == 0):
                    break
                slot = (slot + 1) & mask
    free(slots)


def split_and_lookup_strings(const uint8_t[::1] buf, const intp_t[::1] start,
                             const intp_t[::1] stop, const int32_t[::1] table,
                             const uint8_t[::1] query, uint8_t sep, intp_t[::1] out):
    """:func:`build_string_table`'s lookup: ``out[k]`` = id of string k in the table, or -1,
    for the m = len(out) strings of ``query`` split at every byte
    ``sep``.

    Returns the number of strings found in ``query``; when it is not m (a string holds
    ``sep``) ``out`` is left unfilled and the caller must look the strings up another way.
    """
    cdef intp_t m = out.shape[0]
    cdef intp_t size = query.shape[0]
    cdef uint64_t mask = <uint64_t>table.shape[0] - 1
    cdef intp_t pos, k, j, length
    cdef uint64_t slot
    cdef const uint8_t* base = &buf[0] if buf.shape[0] else NULL
    cdef const uint8_t* qbase = &query[0] if size else NULL
    cdef intp_t* q_start
    cdef uint64_t* slots
    if m == 0:
        return 0
    q_start = <intp_t*>malloc((m + 1) * sizeof(intp_t))
    slots = <uint64_t*>malloc(m * sizeof(uint64_t))
    if q_start == NULL or slots == NULL:
        free(q_start)
        free(slots)
        raise MemoryError()
    with nogil:
        # Pass 1: split, then hash (sequential); q_start[k + 1] - 1 ends string k.
        k = _split(qbase, size, sep, m, q_start)
        if k == m:
            for j in range(m):
                slots[j] = febm_hash_bytes(qbase + q_start[j],
                                           q_start[j + 1] - 1 - q_start[j]) & mask
        # Pass 2: probe, prefetching the slot of the string _AHEAD places on.
        if k == m:
            for k in range(m):
                if k + _AHEAD < m:
                    __builtin_prefetch(&table[slots[k + _AHEAD]])
                pos = q_start[k]
                length = q_start[k + 1] - 1 - pos
                slot = slots[k]
                out[k] = -1
                while True:
                    j = table[slot]
                    if j < 0:
                        break
                    if stop[j] - start[j] == length and (
                            length == 0 or memcmp(base + start[j], qbase + pos, length) == 0):
                        out[k] = j
                        break
                    slot = (slot + 1) & mask
            k = m
    free(q_start)
    free(slots)
    return k


from cpython.ref cimport PyObject


cdef extern from "Python.h":
    PyObject* PyDict_GetItem(object d, object key)


def map_tokens(list sents, object index, Py_ssize_t n_known, object overflow,
               int32_t[::1] out):
    """Fill ``out`` (N,) with the type id of every token of ``sents``, in order.

    A word of ``index`` (a dict) whose id is below ``n_known`` keeps that id; any other word
    is looked up in, or numbered into, ``overflow`` (a dict, ids ``n_known``, ``n_known + 1``,
    ... in order of first appearance), as ``features._type_of`` does: ``overflow``'s keys
    are plain str (a str subclass's value is copied). ``index`` is only read. ``sents`` must
    be a list of lists (returns False, touching nothing, when one is not); ``out`` has one
    slot per token. A token that is not a str raises TypeError. Returns True when done.
    """
    cdef Py_ssize_t pos = 0, n = out.shape[0], ty
    cdef PyObject* found
    if not isinstance(index, dict) or not isinstance(overflow, dict):
        raise TypeError("map_tokens: index and overflow must be dicts")
    for sent in sents:
        if type(sent) is not list:
            return False
    for sent in sents:
        for word in <list>sent:
            if pos >= n:
                raise ValueError("map_tokens: more tokens than output slots")
            found = PyDict_GetItem(index, word)
            if found != NULL:
                ty = <object>found
                if ty < n_known:
                    out[pos] = <int32_t>ty
                    pos += 1
                    continue
            found = PyDict_GetItem(overflow, word)
            if found == NULL:
                if type(word) is not str:
                    if not isinstance(word, str):
                        raise TypeError("tokens must be strings")
                    word = str.__str__(word)    # numpy.str_ & co: cache a plain str
                ty = n_known + len(<dict>overflow)
                overflow[word] = ty
            else:
                ty = <object>found
            out[pos] = <int32_t>ty
            pos += 1
    if pos != n:
        raise ValueError("map_tokens: fewer tokens than output slots")
    return True


def map_interned(list sents, list distinct, const int32_t[::1] ids, object index,
                 Py_ssize_t n_known, object overflow, int32_t[::1] out):
    """:func:`map_tokens` for sentences whose words are ``distinct[ids[t]]`` (t numbering the
    tokens in order), with ``distinct`` in order of first appearance (a
    :class:`~factorebm.datasets.ConlluDocument`'s forms): each distinct word is looked up
    once, not once per token, and the ids come out the same.

    First checks that every token IS ``distinct[ids[t]]`` (the same object: a pointer
    comparison per token), so sentences changed since they were interned are never mapped
    by stale ids; returns False, touching nothing, when they are not, or are not a list of
    lists of str. Returns True when done.
    """
    cdef Py_ssize_t pos = 0, n = out.shape[0], n_distinct = len(distinct), u, ty
    cdef PyObject* found
    cdef int32_t* type_of
    if not isinstance(index, dict) or not isinstance(overflow, dict):
        raise TypeError("map_interned: index and overflow must be dicts")
    if ids.shape[0] != n:
        return False
    for sent in sents:
        if type(sent) is not list:
            return False
        for word in <list>sent:
            if (pos >= n or ids[pos] < 0 or ids[pos] >= n_distinct
                    or <PyObject*>word != <PyObject*>distinct[ids[pos]]):
                return False
            pos += 1
    if pos != n:
        return False
    for word in distinct:
        if type(word) is not str:
            return False
    type_of = <int32_t*>malloc(max(n_distinct, 1) * sizeof(int32_t))
    if type_of == NULL:
        raise MemoryError()
    try:
        for u in range(n_distinct):
            word = distinct[u]
            found = PyDict_GetItem(index, word)
            if found != NULL:
                ty = <object>found
                if ty < n_known:
                    type_of[u] = <int32_t>ty
                    continue
            found = PyDict_GetItem(overflow, word)
            if found == NULL:
                ty = n_known + len(<dict>overflow)
                overflow[word] = ty
            else:
                ty = <object>found
            type_of[u] = <int32_t>ty
        with nogil:
            for pos in range(n):
                out[pos] = type_of[ids[pos]]
    finally:
        free(type_of)
    return True


# ---------------------------------------------------------------------------------------------
# Emission energies U = X @ W without building X (tagging).
#
# A token's row of X is the union over groups g of the ids of the type at t + shift[g], so
#   U[t] = sum_g P[type at t + shift[g], g],   P[ty, g] = sum of the W rows of ty's ids in g.
# P is computed once per (type present in the batch, group): a batch of N tokens holds far
# fewer types than tokens (EWT test: ~25,000 tokens, ~5,500 types), so the W rows (a table of
# n_features x S doubles, too large for cache) are read a few times less often, and each
# token then adds G rows of the small P table.

cdef extern from "_sparse_rows.h" nogil:
    void febm_sum_rows_i32(const int32_t* idx, int64_t nnz, const double* dense, int64_t K,
                           double* out)
    void febm_sum_rows_f32_i32(const int32_t* idx, int64_t nnz, const float* dense, int64_t K,
                               double* out)
    void febm_add_rows(const double* const* rows, int64_t n, int64_t K, double* out)


def is_segment_table(const intp_t[:, ::1] seg, intp_t n_ids):
    """True when ``seg`` (n_types, G+1) splits ``n_ids`` ids into consecutive segments: read
    row by row without each row's last column, then the last row's last column, its entries
    go from 0 to ``n_ids`` without decreasing, and each row's last entry is the next row's
    first (checked on every model load, so compiled)."""
    cdef intp_t n_types = seg.shape[0], width = seg.shape[1], ty, g, prev = 0
    cdef bint ok = n_types > 0 and width > 0 and seg[0, 0] == 0
    if not ok:
        return False
    with nogil:
        for ty in range(n_types):
            for g in range(width - 1):
                if seg[ty, g] < prev:
                    ok = False
                prev = seg[ty, g]
            if ty + 1 < n_types and seg[ty, width - 1] != seg[ty + 1, 0]:
                ok = False
            if not ok:
                break
        if ok:
            ok = seg[n_types - 1, width - 1] >= prev and seg[n_types - 1, width - 1] == n_ids
    return ok


def type_ids_in_order(const intp_t[:, ::1] seg, const int32_t[::1] type_ids,
                      const intp_t[::1] group_bounds):
    """True when every segment ``type_ids[seg[ty, g]:seg[ty, g + 1]]`` strictly increases
    within its group's columns ``group_bounds[g]:group_bounds[g + 1]``: what makes the
    assembled rows sorted (checked on every model load, so compiled).

    The caller has checked ``seg`` (n_types, G+1) as a segment table of ``type_ids``
    (non-decreasing, from 0 to ``len(type_ids)``) and ``group_bounds`` (G+1,).
    """
    cdef intp_t n_types = seg.shape[0], n_groups = seg.shape[1] - 1, ty, g, k, prev, hi
    cdef bint ok = True
    if group_bounds.shape[0] != n_groups + 1:
        raise ValueError("group_bounds must have one more entry than seg has groups")
    with nogil:
        for ty in range(n_types):
            for g in range(n_groups):
                prev = group_bounds[g] - 1
                hi = group_bounds[g + 1]
                for k in range(seg[ty, g], seg[ty, g + 1]):
                    if type_ids[k] <= prev or type_ids[k] >= hi:
                        ok = False
                        break
                    prev = type_ids[k]
                if not ok:
                    break
            if not ok:
                break
    return ok


# The batch's P is built once (present_types, type_table), for one model or for every member
# of an ensemble at once (each (type, group)'s feature ids read once for all members); the
# per-token sums (token_emissions) then run over the whole batch or a block of sentences at a
# time into one reused buffer (tagging a large document: its N x S energies, 136 MB for
# 500,000 tokens and 34 states, cost more to first-touch than to compute, and a block stays in
# cache for the decoder).

ctypedef fused weight_t:
    float
    double


cdef intp_t _present_types(const int32_t[::1] tok_type, int32_t[::1] slot,
                           int32_t* used) noexcept nogil:
    """Number the types present in the batch, pseudo-types 0 and 1 (sentence boundaries)
    first: ``used[u]`` is the u-th, ``slot[ty]`` (-1 on entry) its number; returns how many."""
    cdef intp_t n_used = 0, t, ty
    for ty in range(2):
        slot[ty] = <int32_t>n_used
        used[n_used] = <int32_t>ty
        n_used += 1
    for t in range(tok_type.shape[0]):
        ty = tok_type[t]
        if slot[ty] < 0:
            slot[ty] = <int32_t>n_used
            used[n_used] = <int32_t>ty
            n_used += 1
    return n_used


cdef inline void _token_rows(const int32_t[::1] tok_type, const intp_t[::1] shift,
                             const int32_t[::1] slot, intp_t t, intp_t start, intp_t stop,
                             const double* P, intp_t width, const double** rows) noexcept nogil:
    """``rows[g]``: the row of P (rows of ``width`` doubles, G per present type) of the type
    at t + shift[g] in group g, for every group g."""
    cdef intp_t g, G = shift.shape[0]
    for g in range(G):
        rows[g] = P + (slot[_neighbour_type(tok_type, t + shift[g], start, stop)] * G + g) * width


def present_types(const int32_t[::1] tok_type, int32_t[::1] slot, int32_t[::1] used):
    """Number the types present in a batch: ``slot[ty]`` gets the row of P of each type ``ty``
    of ``tok_type``, pseudo-types 0 and 1 (sentence boundaries) first, in order of first
    appearance; ``used[r]`` the type of row r. Returns the number of rows.

    ``slot`` (n_types,) filled with -1 by the caller, every ``tok_type`` entry below n_types
    (a :class:`_TypeCache` snapshot's ids); ``used`` holds at least
    ``min(len(tok_type), n_types) + 2`` entries.
    """
    cdef intp_t N = tok_type.shape[0], n_used
    if slot.shape[0] < 2 or used.shape[0] < min(N, slot.shape[0]) + 2:
        raise ValueError("present_types: slot or used too short")
    with nogil:
        n_used = _present_types(tok_type, slot, &used[0])
    return n_used


def type_table(const int32_t[::1] used, const intp_t[:, ::1] seg, const int32_t[::1] type_ids,
               const weight_t[:, ::1] coef, intp_t n_features, double[:, :, ::1] P,
               int n_threads=1):
    """``P[r, g, m * S:(m + 1) * S]`` = the sum of member m's emission rows of the features
    of type ``used[r]`` in template group g.

    ``coef`` (M, n_weights), float32 or float64: one member per row (one row for a single
    model), whose first ``n_features * S`` entries are its emission matrix (n_features, S)
    row-major. P (n_rows, G, M * S) float64: the sums are float64 whatever the weights' type,
    in the same order (float32 weights give the sums of the weights widened to float64).
    ``used`` from :func:`present_types` (n_rows entries); ``seg`` and ``type_ids`` the
    snapshot's segment table (checked on load).
    """
    cdef intp_t n_rows = P.shape[0], G = P.shape[1], MS = P.shape[2], M = coef.shape[0]
    cdef intp_t stride = coef.shape[1], S, r, g, m, p0, nnz
    cdef const weight_t* W0
    cdef const int32_t* ids0 = &type_ids[0] if type_ids.shape[0] else NULL
    if M == 0 or MS % M or used.shape[0] < n_rows or seg.shape[1] != G + 1:
        raise ValueError("type_table: shapes of used, seg, coef and P do not agree")
    S = MS // M
    if n_features < 0 or n_features * S > stride:
        raise ValueError(f"type_table: coef rows of {stride} weights cannot hold "
                         f"{n_features} x {S} emission weights")
    if n_rows == 0 or G == 0 or S == 0:
        return
    # no features: every segment is empty and the row sums never read the weights or ids
    W0 = &coef[0, 0] if stride else NULL
    with nogil:
        for r in prange(n_rows, num_threads=n_threads, schedule="dynamic", chunksize=64):
            for g in range(G):
                p0 = seg[used[r], g]
                nnz = seg[used[r], g + 1] - p0
                for m in range(M):
                    if weight_t is float:
                        febm_sum_rows_f32_i32(ids0 + p0, nnz, W0 + m * stride, S,
                                              &P[r, g, m * S])
                    else:
                        febm_sum_rows_i32(ids0 + p0, nnz, W0 + m * stride, S, &P[r, g, m * S])


def token_emissions(const int32_t[::1] tok_type, const intp_t[::1] offsets, intp_t first,
                    intp_t last, const intp_t[::1] shift, const double[:, :, ::1] P,
                    const int32_t[::1] slot, double[:, :, ::1] out, int n_threads=1):
    """``out[m, t - offsets[first]]`` = sum over groups g of member m's part of
    ``P[slot[type at t + shift[g]], g]`` for the tokens t of sentences ``first`` to
    ``last - 1``: their rows of ``X @ W_m``.

    ``P`` (n_rows, G, M * S) and ``slot`` come from :func:`type_table` and
    :func:`present_types` over this same ``tok_type``, so every type met has its row; ``out``
    is (M, at least the block's token count, S).
    """
    cdef intp_t n_sents = offsets.shape[0] - 1, G = P.shape[1], M = out.shape[0]
    cdef intp_t S = out.shape[2], MS = P.shape[2]
    cdef intp_t i, t, start, stop, base, m, g
    cdef const double** all_rows
    cdef const double** rows
    cdef const double* P0 = &P[0, 0, 0] if P.shape[0] and G and MS else NULL
    if not (0 <= first <= last <= n_sents) or offsets[n_sents] > tok_type.shape[0]:
        raise ValueError("token_emissions: sentence range out of the batch")
    if shift.shape[0] != G or MS != M * S or out.shape[1] < offsets[last] - offsets[first]:
        raise ValueError("token_emissions: shapes of shift, P and out do not agree")
    if offsets[last] == offsets[first] or S == 0 or M == 0:
        return
    base = offsets[first]
    all_rows = <const double**>malloc(max(n_threads, 1) * (G + 8) * sizeof(double*))
    if all_rows == NULL:
        raise MemoryError()
    try:
        with nogil, parallel(num_threads=n_threads):
            rows = all_rows + threadid() * (G + 8)      # padded: no shared cache line
            for i in prange(first, last, schedule="dynamic", chunksize=16):
                start = offsets[i]
                stop = offsets[i + 1]
                for t in range(start, stop):
                    _token_rows(tok_type, shift, slot, t, start, stop, P0, MS, rows)
                    for m in range(M):
                        febm_add_rows(rows, G, S, &out[m, t - base, 0])
                        for g in range(G):      # member m + 1's rows are S further on
                            rows[g] = rows[g] + S
    finally:
        free(all_rows)
