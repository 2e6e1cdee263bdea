# Compiled CoNLL-U passes of factorebm.datasets.conllu, over the file's bytes.
#
# scan_document finds the word lines of CoNLL-U bytes: per word the byte spans of its FORM and
# of one label column. It serves load_conllu (forms and labels, document_strings) and
# ConlluDocument (the file kept as bytes; write_document writes it back with the UPOS column
# replaced, every other byte kept).
#
# The scan accepts exactly the inputs that the Python parsers of conllu.py accept
# (_parse_sentences, _parse_forms_and_labels), and finds what they find; on anything else --
# a malformed line, an ID too long to be a word ID, bytes that are not UTF-8 -- it reports
# failure and the caller reruns the Python parser, which raises its usual error naming file
# and line. So error messages have one source, the Python parser.
from cpython.ref cimport PyObject
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset
from libc.stdint cimport int32_t, uint32_t, uint64_t

from _typedefs cimport intp_t, uint8_t

cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    object PyList_New(Py_ssize_t n)
    void PyList_SET_ITEM(object lst, Py_ssize_t i, object item)    # steals a reference
    void Py_INCREF(object o)

cdef extern from "_hash.h" nogil:
    uint64_t febm_hash_bytes(const uint8_t* s, intp_t n)

cdef enum:
    # columns of a word's row in the spans array: FORM start, FORM stop, label start, stop
    N_SPAN = 4
    # stats: words, sentences, comment lines, blank lines
    N_STATS = 4
    # the last column (MISC), whose field ends at the line's end
    LAST_COLUMN = 9


cdef Py_ssize_t utf8_error(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """Index of the first byte of ``s[:n]`` where strict UTF-8 decoding fails (what Python's
    decoder rejects: stray continuation bytes, overlong forms, surrogates, code points past
    U+10FFFF, truncated sequences), or -1 when it is all valid."""
    cdef Py_ssize_t i = 0, need, k
    cdef uint8_t c, lo, hi
    cdef uint64_t word
    while i < n:
        # eight ASCII bytes at a time
        if i + 8 <= n:
            memcpy(&word, s + i, 8)
            if (word & 0x8080808080808080ULL) == 0:
                i += 8
                continue
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if c < 0xC2:
            return i
        elif c < 0xE0:
            need = 1
        elif c < 0xF0:
            need = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif c < 0xF5:
            need = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            return i
        if i + need >= n:
            return i        # truncated at the end
        if s[i + 1] < lo or s[i + 1] > hi:
            return i
        for k in range(2, need + 1):
            if s[i + k] < 0x80 or s[i + k] > 0xBF:
                return i
        i += need + 1
    return -1


def utf8_error_index(const uint8_t[::1] data):
    """:func:`utf8_error` of a bytes-like object (for the tests)."""
    if data.shape[0] == 0:
        return -1
    return utf8_error(&data[0], data.shape[0])


def utf8_length(const uint8_t[::1] data):
    """``len(bytes(data).decode("utf-8"))`` without decoding: the number of characters of
    strict UTF-8 bytes, or -1 where Python's decoder would refuse them (a model's feature
    names, a megabyte checked at every load)."""
    cdef Py_ssize_t n = data.shape[0], i, count = 0
    if n == 0:
        return 0
    with nogil:
        if utf8_error(&data[0], n) >= 0:
            count = -1
        else:
            for i in range(n):
                count += (data[i] & 0xC0) != 0x80     # every byte but continuation bytes
    return count


cdef bint _is_space(const uint8_t* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """True when the (valid UTF-8) bytes s[a:b] are one or more characters for which
    ``str.isspace`` is true."""
    cdef Py_ssize_t i = a
    cdef uint8_t c
    cdef uint32_t cp
    if a >= b:
        return False
    while i < b:
        c = s[i]
        if c < 0x80:
            if not (c == 32 or 9 <= c <= 13 or 28 <= c <= 31):
                return False
            i += 1
            continue
        if c < 0xE0:
            cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F)
            i += 2
        elif c < 0xF0:
            cp = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
            i += 3
        else:
            return False        # nothing past the BMP is a space
        if not (cp == 0x85 or cp == 0xA0 or cp == 0x1680 or 0x2000 <= cp <= 0x200A
                or cp == 0x2028 or cp == 0x2029 or cp == 0x202F or cp == 0x205F
                or cp == 0x3000):
            return False
    return True


cdef bint _digits(const uint8_t* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """True when s[a:b] is non-empty and holds ASCII digits only."""
    cdef Py_ssize_t k
    if a >= b:
        return False
    for k in range(a, b):
        if s[k] < 48 or s[k] > 57:
            return False
    return True


cdef bint _non_word_id(const uint8_t* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """A multiword range 'a-b' or an empty node 'a.b' (conllu._check_non_word_id)."""
    cdef Py_ssize_t k, sep = -1
    for k in range(a, b):
        if s[k] == 45:      # '-'
            sep = k
            break
    if sep < 0:
        for k in range(a, b):
            if s[k] == 46:  # '.'
                sep = k
                break
    return sep >= 0 and _digits(s, a, sep) and _digits(s, sep + 1, b)


cdef inline Py_ssize_t _find_tab(const uint8_t* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Index of the first tab in s[a:b], or b."""
    cdef const uint8_t* hit = <const uint8_t*>memchr(s + a, 9, b - a) if b > a else NULL
    return (hit - s) if hit != NULL else b


cdef int _scan(const uint8_t* s, Py_ssize_t begin, Py_ssize_t n, int column,
               intp_t* spans, Py_ssize_t max_words, intp_t* word_offsets,
               Py_ssize_t max_sents, intp_t* stats) noexcept nogil:
    """Scan the CoNLL-U bytes s[begin:n] (valid UTF-8) as conllu._parse_sentences does.

    Fills ``spans`` (one row of N_SPAN per word line: FORM and column ``column``, 1 to 9;
    room for ``max_words``) and ``word_offsets`` (sentence i has words
    word_offsets[i]:word_offsets[i+1]; room for ``max_sents`` + 1 entries), and ``stats``
    (N_STATS,). A sentence is a run of comment and token lines between blank lines. Returns
    0; -1 on a line that the Python parser would refuse; -2 when the outputs are too small.
    """
    cdef Py_ssize_t pos = begin, end, stop, k, n_tabs, n_words = 0, n_sents = 0
    cdef Py_ssize_t in_sent_words = 0, n_find
    cdef Py_ssize_t tab[LAST_COLUMN + 1]
    cdef const uint8_t* hit
    cdef long long value
    cdef bint in_sentence = False, is_comment
    cdef intp_t n_comments = 0, n_blank = 0
    # the tabs up to the label's are found by memchr, the others only counted
    n_find = column + 1 if column < LAST_COLUMN else LAST_COLUMN
    while pos < n:
        hit = <const uint8_t*>memchr(s + pos, 10, n - pos)
        end = (hit - s) if hit != NULL else n
        stop = end
        if stop > pos and s[stop - 1] == 13:
            stop -= 1
        is_comment = stop > pos and s[pos] == 35        # '#'
        if is_comment:
            n_comments += 1
        else:
            n_tabs = 0
            k = pos
            while n_tabs < n_find:
                k = _find_tab(s, k, stop)
                if k == stop:
                    break
                tab[n_tabs] = k
                n_tabs += 1
                k += 1
            if n_tabs == n_find:
                for k in range(tab[n_find - 1] + 1, stop):
                    n_tabs += s[k] == 9
            if n_tabs != LAST_COLUMN:
                if stop > pos and not _is_space(s, pos, stop):
                    return -1       # a wrong column count
                n_blank += 1
                in_sentence = False
                pos = end + 1
                continue
            tab[LAST_COLUMN] = stop     # the end of the last field
        if not in_sentence:
            if n_sents == max_sents:
                return -2
            in_sentence = True
            word_offsets[n_sents] = n_words
            n_sents += 1
            in_sent_words = 0
        if not is_comment:
            # a word ID is the decimal form of in_sent_words + 1: no sign, no leading zero
            value = -1
            if tab[0] - pos <= 18 and _digits(s, pos, tab[0]) and s[pos] != 48:
                value = 0
                for k in range(pos, tab[0]):
                    value = value * 10 + (s[k] - 48)
            if value == in_sent_words + 1:
                if tab[1] == tab[0] + 1:
                    return -1       # empty FORM
                if n_words == max_words:
                    return -2
                spans[n_words * N_SPAN] = tab[0] + 1
                spans[n_words * N_SPAN + 1] = tab[1]
                spans[n_words * N_SPAN + 2] = tab[column - 1] + 1
                spans[n_words * N_SPAN + 3] = tab[column]
                n_words += 1
                in_sent_words += 1
            elif _digits(s, pos, tab[0]) or not _non_word_id(s, pos, tab[0]):
                return -1           # an out-of-sequence or bad ID
        pos = end + 1
    word_offsets[n_sents] = n_words
    stats[0] = n_words
    stats[1] = n_sents
    stats[2] = n_comments
    stats[3] = n_blank
    return 0


def count_lines(const uint8_t[::1] data, Py_ssize_t begin=0):
    """Number of lines of ``data[begin:]``: its newlines plus one."""
    cdef Py_ssize_t n = data.shape[0], k, count = 1
    if begin < 0 or begin > n:
        raise ValueError("begin must be in 0..len(data)")
    with nogil:
        for k in range(begin, n):
            count += data[k] == 10
    return count


def scan_document(const uint8_t[::1] data, Py_ssize_t begin, int column,
                  intp_t[:, ::1] spans, intp_t[::1] word_offsets, intp_t[::1] stats):
    """Scan the CoNLL-U bytes ``data[begin:]`` for their word lines.

    Fills ``spans`` (4 columns, int64, one row per word line: FORM start, FORM stop, and the
    start and stop of the field of column ``column`` (1 to 9; 3 is UPOS), byte offsets into
    ``data``), ``word_offsets`` (sentence i holds words word_offsets[i]:word_offsets[i+1])
    and ``stats`` (4,): words, sentences, comment lines, blank lines. :func:`count_lines`
    rows of ``spans`` and one more entry of ``word_offsets`` are always room enough.

    Returns 1; 0 (the outputs then undefined) when the bytes are not UTF-8 or hold a line that
    the Python parser would refuse; -1 when the outputs are too small.
    """
    cdef Py_ssize_t n = data.shape[0]
    cdef const uint8_t* d
    cdef int status = -1
    if (stats.shape[0] != N_STATS or begin < 0 or begin > n or spans.shape[1] != N_SPAN
            or word_offsets.shape[0] < 1 or column < 1 or column > LAST_COLUMN):
        raise ValueError("stats must have 4 entries, spans 4 columns, word_offsets one at "
                         "least; 0 <= begin <= len(data) and 1 <= column <= 9")
    stats[:] = 0
    word_offsets[0] = 0
    if n == 0:
        return 1
    d = &data[0]
    with nogil:
        if utf8_error(d, n) < 0:
            status = _scan(d, begin, n, column, &spans[0, 0] if spans.shape[0] else NULL,
                           spans.shape[0], &word_offsets[0], word_offsets.shape[0] - 1,
                           &stats[0])
    return 1 if status == 0 else (-1 if status == -2 else 0)


def document_strings(const uint8_t[::1] data, const intp_t[:, ::1] spans,
                     const intp_t[::1] word_offsets, Py_ssize_t n_sents, int field,
                     bint skip_empty=False, list distinct=None, int32_t[::1] ids=None):
    """The strings of a scanned document: per sentence a list of str, decoded from the spans
    ``spans[:, 2 * field:2 * field + 2]`` of its words (field 0: FORM, 1: the label column);
    sentences without words are left out with ``skip_empty``. Equal strings are one shared
    str object, found by a hash table over the bytes, so each distinct one is decoded once.

    Given an empty list ``distinct`` and ``ids`` (one entry per word), the distinct strings are
    appended to ``distinct`` in order of first appearance and ``ids[j]`` is word j's: what a
    tagger maps to its vocabulary once per distinct word rather than once per word.
    """
    cdef Py_ssize_t n_words = word_offsets[n_sents] if n_sents > 0 else 0
    cdef Py_ssize_t i, j, a, b, size = 1024, n_unique = 0, slot, u, col = 2 * field
    cdef Py_ssize_t capacity = 1 << 16
    cdef intp_t* table
    cdef intp_t* grown
    # The bytes of the distinct strings, one after the other (string u is
    # ubytes[ustart[u]:ustart[u + 1]]): compared against there, in a buffer that stays in
    # cache, not at their first place in the document.
    cdef uint8_t* ubytes
    cdef uint8_t* more
    cdef intp_t* ustart
    cdef uint64_t* hashes
    cdef uint64_t h
    cdef const uint8_t* d = &data[0] if data.shape[0] else NULL
    cdef list uniques = [], out = [], strings
    cdef object form
    if (n_sents < 0 or n_sents >= word_offsets.shape[0] or n_words > spans.shape[0]
            or field < 0 or field > 1):
        raise ValueError("n_sents does not match word_offsets and spans, or field not 0 or 1")
    cdef bint with_ids = distinct is not None
    if with_ids:
        if (len(distinct) or ids is None or ids.shape[0] < n_words or skip_empty
                or n_words > 2**31 - 1):
            raise ValueError("distinct must be an empty list, ids hold an entry per word, "
                             "and skip_empty be off")
        uniques = distinct
    table = <intp_t*>malloc(size * sizeof(intp_t))
    ubytes = <uint8_t*>malloc(capacity)
    ustart = <intp_t*>malloc((n_words + 2) * sizeof(intp_t))
    hashes = <uint64_t*>malloc((n_words + 1) * sizeof(uint64_t))
    try:
        if table == NULL or ubytes == NULL or ustart == NULL or hashes == NULL:
            raise MemoryError()
        memset(table, -1, size * sizeof(intp_t))
        ustart[0] = 0
        for i in range(n_sents):
            if skip_empty and word_offsets[i] == word_offsets[i + 1]:
                continue
            # a list of the sentence's length, filled in place (no appends)
            strings = PyList_New(word_offsets[i + 1] - word_offsets[i])
            for j in range(word_offsets[i], word_offsets[i + 1]):
                a = spans[j, col]
                b = spans[j, col + 1]
                h = febm_hash_bytes(d + a, b - a)
                slot = h & (size - 1)
                while True:
                    u = table[slot]
                    if u < 0:
                        break
                    if (hashes[u] == h and ustart[u + 1] - ustart[u] == b - a
                            and memcmp(ubytes + ustart[u], d + a, b - a) == 0):
                        break
                    slot = (slot + 1) & (size - 1)
                if u < 0:
                    u = n_unique
                    n_unique += 1
                    table[slot] = u
                    hashes[u] = h
                    if ustart[u] + (b - a) > capacity:
                        capacity = 2 * (ustart[u] + (b - a))
                        more = <uint8_t*>realloc(ubytes, capacity)
                        if more == NULL:
                            raise MemoryError()
                        ubytes = more
                    memcpy(ubytes + ustart[u], d + a, b - a)
                    ustart[u + 1] = ustart[u] + (b - a)
                    uniques.append(PyUnicode_DecodeUTF8(<const char*>d + a, b - a, NULL))
                    if 2 * n_unique > size:         # keep the table at most half full
                        grown = <intp_t*>malloc(2 * size * sizeof(intp_t))
                        if grown == NULL:
                            raise MemoryError()
                        free(table)
                        table = grown
                        size *= 2
                        memset(table, -1, size * sizeof(intp_t))
                        for u in range(n_unique):
                            slot = hashes[u] & (size - 1)
                            while table[slot] >= 0:
                                slot = (slot + 1) & (size - 1)
                            table[slot] = u
                        u = n_unique - 1
                if with_ids:
                    ids[j] = <int32_t>u
                form = uniques[u]
                Py_INCREF(form)
                PyList_SET_ITEM(strings, j - word_offsets[i], form)
            out.append(strings)
    finally:
        free(table)
        free(ubytes)
        free(ustart)
        free(hashes)
    return out


def label_codes(upos, dict index, const intp_t[::1] word_offsets, intp_t[::1] codes):
    """``codes[w]`` = ``index[tag]`` for the tag of every word ``w``, ``upos`` holding one
    sequence of str per sentence; a tag not yet in ``index`` is added with the next number
    once it is known to be a non-empty str without tabs or line breaks.

    Returns -1, or the sentence whose tags are the wrong number or not such strings (the
    caller names the problem), ``codes`` then partly filled."""
    cdef Py_ssize_t n_sents = word_offsets.shape[0] - 1, i, w, stop
    cdef object tags, tag, code
    if len(upos) != n_sents or codes.shape[0] < (word_offsets[n_sents] if n_sents > 0 else 0):
        raise ValueError("upos and codes do not match word_offsets")
    for i in range(n_sents):
        tags = upos[i]
        if isinstance(tags, str) or len(tags) != word_offsets[i + 1] - word_offsets[i]:
            return i
        w = word_offsets[i]
        stop = word_offsets[i + 1]
        for tag in tags:
            if w == stop:
                return i    # a sequence that yields more items than its len() says
            code = index.get(tag) if isinstance(tag, str) else None
            if code is None:
                if (not isinstance(tag, str) or len(tag) == 0 or "\t" in tag or "\n" in tag
                        or "\r" in tag):
                    return i
                code = len(index)
                index[tag] = code
            codes[w] = code
            w += 1
        if w != stop:
            return i
    return -1


def write_document(const uint8_t[::1] data, const intp_t[:, ::1] spans,
                   const intp_t[::1] codes, const uint8_t[::1] labels,
                   const intp_t[::1] label_offsets, uint8_t[::1] out,
                   Py_ssize_t first=0, Py_ssize_t last=-1):
    """Write into ``out`` the bytes of ``data`` that words ``first`` to ``last - 1`` (-1: to
    the end) cover, with the UPOS field of word ``i`` (bytes ``spans[i, 2]`` to
    ``spans[i, 3]``) replaced by label ``codes[i]``, the bytes
    ``labels[label_offsets[c]:label_offsets[c + 1]]``; returns the bytes written.

    A range starts where the previous word's field ends (the start of ``data`` for word 0)
    and stops where its last word's field ends (the end of ``data`` for the last word), so
    consecutive ranges write the whole document, piece by piece. The caller validates:
    spans from :func:`fill_document` of this ``data``, codes in range, labels' offsets; the
    range and the room in ``out`` are checked here."""
    cdef Py_ssize_t n_words = spans.shape[0], i, src, stop, dst = 0, a, c, m
    cdef const uint8_t* d
    cdef const uint8_t* lab
    cdef uint8_t* o
    if last < 0:
        last = n_words
    if not 0 <= first <= last <= n_words or codes.shape[0] < last:
        raise ValueError("write_document: word range out of the document")
    src = spans[first - 1, 3] if first > 0 else 0
    if first == last:           # nothing, or all of a document without words
        stop = data.shape[0] if n_words == 0 else src
    else:
        stop = data.shape[0] if last == n_words else spans[last - 1, 3]
    # the room needed, before any byte is written
    m = stop - src
    for i in range(first, last):
        c = codes[i]
        m += label_offsets[c + 1] - label_offsets[c] - (spans[i, 3] - spans[i, 2])
    if out.shape[0] < m:
        raise ValueError(f"write_document: out holds {out.shape[0]} bytes, {m} needed")
    if m == 0:
        return 0
    d = &data[0]
    o = &out[0]
    lab = &labels[0] if labels.shape[0] else NULL
    with nogil:
        for i in range(first, last):
            a = spans[i, 2]
            memcpy(o + dst, d + src, a - src)
            dst += a - src
            c = codes[i]
            m = label_offsets[c + 1] - label_offsets[c]
            memcpy(o + dst, lab + label_offsets[c], m)
            dst += m
            src = spans[i, 3]
        memcpy(o + dst, d + src, stop - src)
        dst += stop - src
    return dst
