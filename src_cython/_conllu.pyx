# Fast path of factorebm.datasets.conllu.load_conllu: FORM and UPOS of the word lines.
#
# One compiled pass over the decoded text replaces a Python loop over its lines. It accepts
# exactly the well-formed inputs and returns exactly what the Python parser
# (conllu._parse_forms_and_upos) returns for them; on anything it does not handle -- a
# malformed line, a line of spaces, an ID too long to be a word ID -- it returns None and the
# caller reruns the Python parser, which then raises its usual error naming file and line (or
# accepts the input). So error messages have one source, the Python parser.
from cpython.unicode cimport PyUnicode_Substring
from cpython.ref cimport PyObject

cdef extern from "Python.h":
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_UCS4 PyUnicode_READ(int kind, void* data, Py_ssize_t index) nogil
    PyObject* PyDict_SetDefault(object d, object key, object default) except NULL


cdef inline bint _all_digits(int kind, void* data, Py_ssize_t a, Py_ssize_t b) noexcept:
    """True when text[a:b] is non-empty and holds ASCII digits only."""
    cdef Py_ssize_t k
    cdef Py_UCS4 c
    if a >= b:
        return False
    for k in range(a, b):
        c = PyUnicode_READ(kind, data, k)
        if c < 48 or c > 57:
            return False
    return True


cdef bint _is_non_word_id(int kind, void* data, Py_ssize_t a, Py_ssize_t b) noexcept:
    """A multiword range 'a-b' or an empty node 'a.b', split at the first '-' (or, when there
    is none, the first '.'), both sides ASCII digits -- as conllu._check_non_word_id."""
    cdef Py_ssize_t k, sep = -1
    cdef Py_UCS4 c
    for k in range(a, b):
        if PyUnicode_READ(kind, data, k) == 45:     # '-'
            sep = k
            break
    if sep < 0:
        for k in range(a, b):
            if PyUnicode_READ(kind, data, k) == 46:  # '.'
                sep = k
                break
    if sep < 0:
        return False
    return _all_digits(kind, data, a, sep) and _all_digits(kind, data, sep + 1, b)


def parse_forms_and_upos(str text):
    """``(sents, tags)`` as ``conllu._parse_forms_and_upos(text, name)`` gives them, or None
    when the text holds a line that this fast path leaves to the Python parser."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    cdef int kind = PyUnicode_KIND(text)
    cdef void* data = PyUnicode_DATA(text)
    cdef Py_ssize_t pos = 0, end, k, n_tabs, n_words
    cdef Py_ssize_t tab[4]
    cdef Py_UCS4 c
    cdef long long value
    cdef list sents = [], tags = [], forms = [], upos = []
    cdef dict shared = {}
    cdef object form, tag
    while pos <= n:
        # The line is text[pos:end], end at the next '\n' or the end of the text; its tabs
        # are counted on the way (the first four remembered), so the line is read once.
        end = pos
        n_tabs = 0
        while end < n:
            c = PyUnicode_READ(kind, data, end)
            if c == 10:
                break
            if c == 9:
                if n_tabs < 4:
                    tab[n_tabs] = end
                n_tabs += 1
            end += 1
        if end == pos or (end == pos + 1 and PyUnicode_READ(kind, data, pos) == 13):
            if forms:
                sents.append(forms)
                tags.append(upos)
                forms = []
                upos = []
            pos = end + 1
            continue
        if PyUnicode_READ(kind, data, pos) == 35:      # '#': a comment
            pos = end + 1
            continue
        if n_tabs != 9:
            return None         # a line of spaces or a wrong column count
        n_words = len(forms)
        # A word ID is the decimal form of n_words + 1: no sign, no leading zero.
        value = -1
        if tab[0] - pos <= 18 and _all_digits(kind, data, pos, tab[0]) \
                and PyUnicode_READ(kind, data, pos) != 48:
            value = 0
            for k in range(pos, tab[0]):
                value = value * 10 + (<long long>PyUnicode_READ(kind, data, k) - 48)
        if value == n_words + 1:
            if tab[1] == tab[0] + 1 or tab[3] == tab[2] + 1:
                return None     # empty FORM or UPOS
            form = PyUnicode_Substring(text, tab[0] + 1, tab[1])
            tag = PyUnicode_Substring(text, tab[2] + 1, tab[3])
            forms.append(<object>PyDict_SetDefault(shared, form, form))
            upos.append(<object>PyDict_SetDefault(shared, tag, tag))
        elif not _is_non_word_id(kind, data, pos, tab[0]):
            return None         # an out-of-sequence or bad ID
        pos = end + 1
    if forms:
        sents.append(forms)
        tags.append(upos)
    return sents, tags
