"""Token features for sequence tagging: string templates mapped once to CSR column ids.

A tagger's emission energies are ``U = X @ W`` (DESIGN.md), with ``X`` the sparse
token x feature matrix built here. Features are the classic ones of feature-based taggers
(Ratnaparkhi 1996; Collins 2002; Toutanova et al. 2003): the word and its lowercase form,
prefixes and suffixes, the word's shape and a few orthographic flags, and the lowercase words
(and some of their suffixes and shapes) in a window around the token.

Why it is fast
--------------
Each feature of a token is a feature of the word *type* found at some window offset from it:
``suffix3=ing`` of the token's own word (offset 0), ``lower[-1]=the`` of the word before it
(offset -1), and so on. So the strings are built and looked up once per (word type, offset
group), not once per token: a word type's column ids per group are cached in flat integer
arrays, a token costs one dict lookup (word -> type id), and the whole batch's CSR matrix is
assembled by one compiled pass over (token, group) pairs (``factorebm._features``). Positions
outside the sentence are two boundary pseudo-types, whose features (``BOS[-1]``, ``EOS[+1]``,
...) are the begin- and end-of-sentence indicators.

Column ids are numbered group by group in increasing offset order, and each type's ids within
a group are sorted, so every row of ``X`` comes out with sorted, distinct column indices.

The training types' ids are saved with the model, so a loaded extractor starts warm. Types
first seen later have their strings looked up in a compiled hash table over the saved name
buffer, which spares building a Python dict of every feature name at each model load.

Templates
---------
``templates`` maps a window offset to the names of the templates applied to the word at that
offset. Valued templates give ``name=value`` (``name[+1]=value`` away from offset 0); flags give
``name`` when they hold.

========================  ==================================================================
``bias``                  always on (the per-label bias)
``word``                  the word as written
``lower``                 the lowercased word
``prefixN``, ``suffixN``  first / last N characters of the lowercased word (when it has >= N)
``shape``                 character classes: ``X`` upper, ``x`` lower, ``d`` digit, other
                          characters as themselves, runs cut at 4 (``Xxxxx``, ``dd.dd``)
``short_shape``           the same with every run cut to one (``Xx``, ``d.d``)
``has_digit``             flag: some character is a digit
``has_hyphen``            flag: contains ``-``
``all_caps``              flag: all cased characters are upper case (``str.isupper``)
``title``                 flag: ``str.istitle`` (``Paris``, ``New-York``)
``init_cap``              flag: the first character is upper case
``punct``                 flag: every character is Unicode punctuation or a symbol
========================  ==================================================================
"""
import functools
import itertools
import numbers
import re
import string
import threading
import unicodedata

import numpy as np

from ._heap import release_free_heap
from .checks import check_threads, threads_for
from .indexing import ranges

__all__ = ["FeatureExtractor", "default_templates", "TEMPLATE_NAMES"]

# Version of the layout of get_config() / to_arrays(); from_config_and_arrays refuses newer.
_FORMAT_VERSION = 1
_N_PSEUDO = 2            # type 0: before the sentence start, type 1: after its end
_SEP = "\x1f"            # ASCII unit separator between strings in a saved buffer
# Template offsets beyond this many tokens only ever see the sentence boundary; the bound
# keeps the compiled position arithmetic (and int64 arrays of offsets) far from overflow.
_MAX_OFFSET = 1 << 16


# --------------------------------------------------------------------------------------------
# Templates, evaluated once per word type (never per token) by _word_values.

def _char_class(c):
    if c.isupper():
        return "X"
    if c.islower() or c.isalpha():
        return "x"
    if c.isdigit():
        return "d"
    return c


_ASCII_CLASSES = str.maketrans(string.ascii_uppercase + string.ascii_lowercase + string.digits,
                               "X" * 26 + "x" * 26 + "d" * 10)
_LONG_RUN = re.compile(r"(.)\1{4,}", re.DOTALL)
_ANY_RUN = re.compile(r"(.)\1+", re.DOTALL)


def _classes(word):
    """The word with every character replaced by its class (see ``shape``)."""
    if word.isascii():
        return word.translate(_ASCII_CLASSES)
    return "".join(map(_char_class, word))


# Callables, not r"\1" templates: re re-parses a template string on every call.
def _keep_four(match):
    return match.group(1) * 4


def _keep_one(match):
    return match.group(1)


def _is_punct(word):
    return bool(word) and all(unicodedata.category(c)[0] in "PS" for c in word)


_FIXED_TEMPLATES = ("bias", "word", "lower", "shape", "short_shape", "has_digit",
                    "has_hyphen", "all_caps", "title", "init_cap", "punct")
_FLAGS = frozenset(["bias", "has_digit", "has_hyphen", "all_caps", "title", "init_cap",
                    "punct"])
_AFFIX_RE = re.compile(r"(prefix|suffix)([1-9][0-9]?)\Z")
TEMPLATE_NAMES = _FIXED_TEMPLATES + ("prefixN", "suffixN")
_ASCII_PUNCT = string.punctuation    # every printable ASCII character that is not alnum/space


def _parse_template(name):
    """None for a fixed template; (n, is_prefix) for prefixN / suffixN; ValueError otherwise."""
    if name in _FIXED_TEMPLATES:
        return None
    m = _AFFIX_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown feature template {name!r}; known: "
                         f"{', '.join(TEMPLATE_NAMES)} (N = 1..99)")
    return int(m.group(2)), m.group(1) == "prefix"


def _word_values(word, affixes):
    """Every template's value for one word type: a string, "" for a flag that holds, None
    when the feature is absent. ``affixes``: (name, n, is_prefix) of the affix templates."""
    lower = word.lower()
    classes = _classes(word)
    if word.isascii():
        punct = bool(word) and not word.strip(_ASCII_PUNCT)
    else:
        punct = _is_punct(word)
    values = {
        "bias": "",
        "word": word,
        "lower": lower,
        "shape": _LONG_RUN.sub(_keep_four, classes),
        "short_shape": _ANY_RUN.sub(_keep_one, classes),
        # A digit is the only source of "d" and an upper-case letter of "X" in `classes`.
        "has_digit": "" if "d" in classes else None,
        "has_hyphen": "" if "-" in word else None,
        "all_caps": "" if word.isupper() else None,
        "title": "" if word.istitle() else None,
        "init_cap": "" if classes[:1] == "X" else None,
        "punct": "" if punct else None,
    }
    n = len(lower)
    for name, k, is_prefix in affixes:
        values[name] = None if n < k else (lower[:k] if is_prefix else lower[n - k:])
    return values


_WORD_TEMPLATES = ("bias", "word", "lower", "prefix1", "prefix2", "prefix3", "prefix4",
                   "suffix1", "suffix2", "suffix3", "suffix4", "shape", "short_shape",
                   "has_digit", "has_hyphen", "all_caps", "title", "init_cap", "punct")
_NEAR_TEMPLATES = ("lower", "suffix1", "suffix2", "suffix3", "short_shape")
_FAR_TEMPLATES = ("lower",)


def default_templates(window=2):
    """The default templates for English part-of-speech tagging.

    Parameters
    ----------
    window : int
        Neighbours at offsets ``-window .. +window`` contribute their lowercase form; the
        neighbours at +-1 also their suffixes 1-3 and short shape.

    Returns
    -------
    dict
        Offset (int) -> tuple of template names.
    """
    window = int(window)
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    templates = {0: _WORD_TEMPLATES}
    for o in range(1, window + 1):
        near = _NEAR_TEMPLATES if o == 1 else _FAR_TEMPLATES
        templates[-o] = near
        templates[o] = near
    return dict(sorted(templates.items()))


def _normalize_templates(templates):
    """Validate templates (a dict or a list of [offset, names] pairs) -> sorted dict."""
    if templates is None:
        return default_templates()
    items = templates.items() if isinstance(templates, dict) else templates
    out = {}
    try:
        items = list(items)
    except TypeError:
        raise ValueError("templates must be a dict {offset: [names]} or a list of "
                         "[offset, names] pairs") from None
    for item in items:
        try:
            offset, names = item
        except (TypeError, ValueError):
            raise ValueError(f"templates: bad entry {item!r}, expected (offset, names)") from None
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
            raise ValueError(f"templates: offset {offset!r} is not an integer")
        offset = int(offset)
        if abs(offset) > _MAX_OFFSET:
            raise ValueError(f"templates: offset {offset} is out of range (at most "
                             f"{_MAX_OFFSET} tokens either way)")
        if offset in out:
            raise ValueError(f"templates: offset {offset} given twice")
        if isinstance(names, str):
            raise ValueError(f"templates[{offset}]: expected a list of template names, got "
                             f"the string {names!r}")
        names = tuple(names)
        if not names:
            raise ValueError(f"templates[{offset}]: no template names")
        if len(set(names)) != len(names):
            raise ValueError(f"templates[{offset}]: duplicate template names in {names}")
        for name in names:
            _parse_template(name)
        out[offset] = names
    if not out:
        raise ValueError("templates: at least one offset group is needed")
    return dict(sorted(out.items()))


def _offset_tag(offset):
    return "" if offset == 0 else f"[{offset:+d}]"


# --------------------------------------------------------------------------------------------
# Saving string lists as plain arrays (no object dtype, so no pickle)

def _check_block_tokens(block_tokens):
    if isinstance(block_tokens, bool) or not isinstance(block_tokens, (int, np.integer)) \
            or block_tokens < 1:
        raise ValueError(f"block_tokens must be an integer >= 1, got {block_tokens!r}")
    return int(block_tokens)


def _encode_strings(strings):
    """list of str -> (uint8 UTF-8 buffer of the strings joined by \\x1f, int64 char lengths)."""
    buf = np.frombuffer(_SEP.join(strings).encode("utf-8"), dtype=np.uint8).copy()
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    return buf, lengths


def _decode_strings(buf, lengths, what):
    n = lengths.shape[0]
    try:
        text = buf.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what}: buffer is not valid UTF-8") from None
    if n == 0:
        if text:
            raise ValueError(f"{what}: buffer holds text but no lengths")
        return []
    parts = text.split(_SEP)
    if len(parts) == n:
        # No string holds the separator (each one that did would add a part).
        return parts
    # Some string contains the separator itself: fall back to the stored lengths.
    if np.any(lengths < 0) or int(lengths.sum()) + n - 1 != len(text):
        raise ValueError(f"{what}: string lengths do not match the buffer")
    parts = []
    pos = 0
    for length in lengths.tolist():
        parts.append(text[pos:pos + length])
        pos += length + 1
    return parts


# Word types whose feature strings FeatureExtractor.fit materializes at once.
_FIT_CHUNK_TYPES = 2048


class _AutoIndex(dict):
    """key -> consecutive id in order of first lookup."""

    __slots__ = ()

    def __missing__(self, key):
        i = self[key] = len(self)
        return i


class _TypeCache:
    """One published state of the word-type cache: what the compiled passes of a batch read.

    ``index`` maps a word to its type id (>= 2; ids 0 and 1 are the sentence-boundary
    pseudo-types). ``seg[:n_types]`` and ``ids[:n_ids]`` hold every type's column ids per
    offset group, as ``factorebm._features`` reads them: type ``ty``'s ids in group ``g`` are
    ``ids[seg[ty, g]:seg[ty, g + 1]]``.

    Why it is safe to share between threads: a snapshot never changes once published. The
    cache grows by publishing a new snapshot (under the extractor's lock) whose arrays extend
    the old ones, in the same buffers when they have room: rows below an earlier snapshot's
    ``n_types`` (and ids below its ``n_ids``) are never written again, so a kernel still
    reading an older snapshot, without the GIL, sees the very bytes it was handed. The
    snapshots of one generation share ``index``, which only gains entries, each added after
    the snapshot that holds its row was published; a reader takes an entry only when its id
    lies below its own snapshot's ``n_types``. Trimming the cache starts a new generation:
    a new dict and new buffers, never the old ones.
    """

    __slots__ = ("index", "seg", "ids", "n_types", "n_ids")

    def __init__(self, index, seg, ids, n_types, n_ids):
        self.index = index
        self.seg = seg          # (capacity >= n_types, G+1) int64
        self.ids = ids          # (capacity >= n_ids,) int32
        self.n_types = n_types
        self.n_ids = n_ids

    def seg_view(self):
        return self.seg[:self.n_types]

    def ids_view(self):
        return self.ids[:self.n_ids]

    def extended(self, seg_rel, flat, shared=True):
        """A new snapshot holding this one's types plus ``seg_rel.shape[0]`` more.

        Parameters
        ----------
        seg_rel : (m, G+1) int64
            The new types' segment bounds, counted from 0 in ``flat``.
        flat : (M,) int32
            Their column ids.
        shared : bool
            Write the new rows into this snapshot's buffers when they have room (only for
            the latest snapshot of its generation, under the lock); else copy everything.
        """
        t0, i0 = self.n_types, self.n_ids
        t1, i1 = t0 + seg_rel.shape[0], i0 + flat.shape[0]
        seg, ids = self.seg, self.ids
        if not shared or t1 > seg.shape[0]:
            seg = np.empty((max(t1, 2 * seg.shape[0]) if shared else t1, seg.shape[1]),
                           dtype=np.int64)
            seg[:t0] = self.seg[:t0]
        if not shared or i1 > ids.shape[0]:
            ids = np.empty(max(i1, 2 * ids.shape[0]) if shared else i1, dtype=np.int32)
            ids[:i0] = self.ids[:i0]
        seg[t0:t1] = seg_rel
        seg[t0:t1] += i0
        ids[i0:i1] = flat
        return _TypeCache(self.index if shared else None, seg, ids, t1, i1)


def _type_of(index, n_known, overflow, word):
    """Type id of ``word`` for a batch read against a snapshot of ``n_known`` types: its
    cached id, else its id among the batch's new words (``overflow``, numbered on from
    ``n_known`` in order of first appearance, keyed by plain str). TypeError for a token that
    is not a str. ``_features.map_tokens`` is the compiled twin."""
    ty = index.get(word)
    if ty is not None and ty < n_known:
        return ty
    ty = overflow.get(word)
    if ty is None:
        if not isinstance(word, str):
            raise TypeError("tokens must be strings")
        ty = overflow[_as_str(word)] = n_known + len(overflow)
    return ty


def _segments(ids, key, n_new, n_groups, n_features):
    """Segment table and flat column ids of new word types, their strings in any order.

    Parameters
    ----------
    ids : (M,) int64
        Column id of each feature string of the new types, -1 for a string outside the
        vocabulary (dropped).
    key : (M,) int64
        ``new_type * G + group`` of each string (``new_type`` counted from 0).
    n_new, n_groups, n_features : int

    Returns
    -------
    seg : (n_new, G+1) int64
        Type ``i``'s ids in group ``g`` are ``flat[seg[i, g]:seg[i, g + 1]]``.
    flat : (number kept,) int32
        Sorted within every (type, group) segment.
    """
    keep = ids >= 0
    ids = ids[keep]
    key = key[keep]
    # Order the strings by (type, group) segment and by id within it: ids lie below
    # n_features, so key dominates the combined value.
    stride = max(n_features, 1)
    combined = key * stride + ids
    combined.sort()
    flat = (combined % stride).astype(np.int32)
    bounds = np.zeros(n_new * n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(key, minlength=n_new * n_groups), out=bounds[1:])
    rows = np.arange(n_new)[:, None] * n_groups + np.arange(n_groups + 1)[None, :]
    return bounds[rows], flat


def _as_str(word):
    """``word`` as an exact str (a str subclass such as numpy.str_ becomes a plain copy)."""
    return word if type(word) is str else str.__str__(word)


class _TemplateColumns(dict):
    """Template name -> (values, where) for a batch of words, computed on first access.

    ``values``: list of the template's strings for the words that have the feature (None for
    a flag); ``where``: int64 indices of those words, or None when every word has it. Same
    definitions as ``_word_values``.
    """

    __slots__ = ("words", "affixes", "_lower", "_classes")

    def __init__(self, words, affixes):
        super().__init__()
        self.words = words
        self.affixes = affixes      # name -> (n, is_prefix)
        self._lower = None
        self._classes = None

    @property
    def lower(self):
        if self._lower is None:
            self._lower = [w.lower() for w in self.words]
        return self._lower

    @property
    def classes(self):
        if self._classes is None:
            self._classes = list(map(_classes, self.words))
        return self._classes

    def _per_class_string(self, func):
        """``[func(c) for c in classes]``, calling ``func`` once per distinct class string
        (words of one shape share it: a batch has far fewer of them than words)."""
        classes = self.classes
        memo = {c: func(c) for c in set(classes)}
        return [memo[c] for c in classes]

    def _flag(self, holds):
        return None, np.flatnonzero(np.fromiter(holds, dtype=bool, count=len(self.words)))

    def __missing__(self, name):
        words = self.words
        if name == "bias":
            out = None, np.arange(len(words), dtype=np.int64)
        elif name == "word":
            out = words, None
        elif name == "lower":
            out = self.lower, None
        elif name == "shape":
            out = self._per_class_string(lambda c: _LONG_RUN.sub(_keep_four, c)), None
        elif name == "short_shape":
            out = self._per_class_string(lambda c: _ANY_RUN.sub(_keep_one, c)), None
        elif name == "has_digit":
            out = self._flag(["d" in c for c in self.classes])
        elif name == "has_hyphen":
            out = self._flag(["-" in w for w in words])
        elif name == "all_caps":
            out = self._flag([w.isupper() for w in words])
        elif name == "title":
            out = self._flag([w.istitle() for w in words])
        elif name == "init_cap":
            out = self._flag([c[:1] == "X" for c in self.classes])
        elif name == "punct":
            out = self._flag([(bool(w) and not w.strip(_ASCII_PUNCT)) if w.isascii()
                              else _is_punct(w) for w in words])
        else:
            k, is_prefix = self.affixes[name]
            lower = self.lower
            where = [i for i, x in enumerate(lower) if len(x) >= k]
            if is_prefix:
                values = [lower[i][:k] for i in where]
            else:
                values = [lower[i][-k:] for i in where]
            out = values, np.array(where, dtype=np.int64)
        self[name] = out
        return out


# --------------------------------------------------------------------------------------------


class FeatureExtractor:
    """Map tokenized sentences to a sparse token x feature matrix.

    Parameters
    ----------
    templates : dict or list, optional
        Offset (int) -> sequence of template names (see the module docstring), or the same as
        a list of ``[offset, names]`` pairs. Default: :func:`default_templates` ``(window)``.
    window : int, optional
        Width of the default templates' neighbour window (default 2: offsets -2..+2); only
        with ``templates=None``.
    cache_size : int
        Word types first seen after ``fit`` are cached too (their features cannot change, as
        the vocabulary is frozen); when more than ``cache_size`` of them accumulate, the cache
        is cut back to the training types before the next batch.

    Attributes
    ----------
    n_features_ : int
        Number of columns of ``X``: the features seen at least ``min_count`` times in training.
    vocabulary_ : dict
        Feature string -> column id.
    feature_names_ : list of str
        Feature strings in column order.
    min_count_ : int
        The ``min_count`` used by ``fit``.

    Notes
    -----
    A fitted extractor is safe to use from several threads at once: word types first seen
    after ``fit`` join the cache as a new immutable snapshot published under a lock (see
    ``_TypeCache``), and a call that raises leaves the cache as it was.
    """

    def __init__(self, templates=None, window=None, cache_size=500_000):
        if templates is not None and window is not None:
            raise ValueError("give either templates or window, not both")
        if templates is None:
            templates = default_templates(2 if window is None else window)
        self.templates = _normalize_templates(templates)
        if isinstance(cache_size, bool) or not isinstance(cache_size, (int, np.integer)) \
                or cache_size < 0:
            raise ValueError(f"cache_size must be an integer >= 0, got {cache_size!r}")
        cache_size = int(cache_size)
        self.cache_size = cache_size
        self._shift = np.array(list(self.templates), dtype=np.int64)
        # Per group: (template name, feature-string prefix) pairs.
        self._groups = []
        for offset, names in self.templates.items():
            tag = _offset_tag(offset)
            self._groups.append(tuple(
                (name, name + tag if name in _FLAGS else name + tag + "=") for name in names))
        affixes = {}
        for names in self.templates.values():
            for name in names:
                parsed = _parse_template(name)
                if parsed is not None:
                    affixes[name] = (name,) + parsed
        self._affixes = tuple(affixes.values())
        self._lock = threading.Lock()     # held to publish or trim the word-type cache
        self._fitted = False

    def __getstate__(self):
        # copy.deepcopy and pickle (a Dask worker's copy, never a model file): all but the
        # lock, which belongs to this object alone
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- fitted state

    def _set_fitted(self, names_buf, names_len, min_count, group_bounds, cache):
        """Install a fitted state, all of it at once (a fit that raises changes nothing)."""
        self._names = None          # list of str, decoded from _names_buf on first need
        self._names_buf = names_buf     # uint8: UTF-8 feature names joined by _SEP
        self._names_len = names_len     # (n_features_,) int64: their lengths in characters
        self._table = None          # (start, stop, table) of the compiled string lookup
        self._vocab = None          # dict, built on first need
        self.n_features_ = names_len.shape[0]
        self.min_count_ = min_count
        self._group_bounds = group_bounds
        # The training types: kept when the cache is trimmed, and saved with the model.
        self._n_fit_types = cache.n_types
        self._n_fit_ids = cache.n_ids
        self._cache = cache
        self._fitted = True

    def _snapshot(self):
        """The current word-type cache, trimmed back to the training types first when more
        than ``cache_size`` types have joined it since."""
        with self._lock:        # the lock also orders this read after the last publication
            cache = self._cache
            if cache.n_types - self._n_fit_types > self.cache_size:
                n_words = self._n_fit_types - _N_PSEUDO
                cache = self._cache = _TypeCache(
                    dict(itertools.islice(cache.index.items(), n_words)),
                    cache.seg[:self._n_fit_types].copy(), cache.ids[:self._n_fit_ids].copy(),
                    self._n_fit_types, self._n_fit_ids)
            return cache

    @property
    def vocabulary_(self):
        self._check_fitted()
        if self._vocab is None:
            names = self.feature_names_
            self._vocab = dict(zip(names, range(len(names))))
        return self._vocab

    @property
    def feature_names_(self):
        self._check_fitted()
        if self._names is None:
            self._names = _decode_strings(self._names_buf, self._names_len, "feature_names")
        return self._names

    def _string_table(self):
        """The compiled lookup table over the feature names (built on first need)."""
        if self._table is None:
            from . import _features
            buf = self._names_buf
            n = self.n_features_
            size = 1 << max(2, int(2 * n + 1).bit_length())
            table = np.full(size, -1, dtype=np.int32)
            start = np.empty(n, dtype=np.int64)
            stop = np.empty(n, dtype=np.int64)
            if not n or _features.split_and_build_string_table(buf, ord(_SEP), start, stop,
                                                               table) != n:
                # Some name holds the separator, or there are none: use real byte lengths.
                nbytes = np.fromiter((len(f.encode("utf-8")) for f in self.feature_names_),
                                     dtype=np.int64, count=n)
                start = np.zeros(n, dtype=np.int64)
                np.cumsum(nbytes[:-1] + 1, out=start[1:])
                stop = start + nbytes
                table.fill(-1)
                _features.build_string_table(buf, start, stop, table)
            self._table = (start, stop, table)
        return self._table

    def _lookup_joined(self, text, m):
        """Column ids (-1 if absent) of the ``m`` strings that ``text`` joins by the separator,
        as an (m,) int64 array; None when ``text`` does not split into ``m`` strings (some
        string holds the separator)."""
        if m == 0:
            return np.zeros(0, dtype=np.int64)
        from . import _features
        # A lone surrogate (from surrogateescape decoding) has no UTF-8 form; its surrogatepass
        # bytes are invalid UTF-8, so they match no vocabulary string, as an unseen string
        # would not.
        query = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        start, stop, table = self._string_table()
        out = np.empty(m, dtype=np.int64)
        if _features.split_and_lookup_strings(self._names_buf, start, stop, table, query,
                                              ord(_SEP), out) != m:
            return None
        return out

    def _lookup(self, strings):
        """Column ids of feature strings (a list of str), -1 for those not in the vocabulary.

        Returns
        -------
        (len(strings),) int64
        """
        m = len(strings)
        if m == 0:
            return np.zeros(0, dtype=np.int64)
        ids = self._lookup_joined(_SEP.join(strings), m)
        if ids is None:     # a word holding the separator: rare, take the dict path
            return np.fromiter(map(self.vocabulary_.get, strings, itertools.repeat(-1)),
                               dtype=np.int64, count=m)
        return ids

    def _check_fitted(self):
        if not self._fitted:
            raise ValueError("this FeatureExtractor is not fitted yet: call fit(sents) first")

    # ---------------------------------------------------------------- per word type

    def _pseudo_strings(self):
        """Feature strings of the two boundary pseudo-types, per group."""
        before, after = [], []
        for offset in self.templates:
            tag = _offset_tag(offset)
            before.append([f"BOS{tag}"] if offset < 0 else [])
            after.append([f"EOS{tag}"] if offset > 0 else [])
        return [before, after]

    def _type_strings(self, word):
        """Feature strings of one word type, per group (a list of G lists)."""
        values = _word_values(word, self._affixes)
        return [[prefix + v for name, prefix in group if (v := values[name]) is not None]
                for group in self._groups]

    def _flat_strings(self, per_type):
        """Flatten per-type, per-group string lists.

        Returns
        -------
        flat : list of str
            All strings, type by type, group by group.
        lengths : (n_types * G,) int64
            Number of strings of each (type, group), row-major.
        """
        flat = []
        extend = flat.extend
        lengths = []
        append = lengths.append
        for groups in per_type:
            for feats in groups:
                extend(feats)
                append(len(feats))
        return flat, np.array(lengths, dtype=np.int64)

    def _type_rows(self, words):
        """Segment table (from 0) and column ids of word types not in the cache, as
        :func:`_segments` returns them. Reads the fitted vocabulary only."""
        query, key = self._batch_strings(words, joined=True)
        ids = self._lookup_joined(query, key.shape[0])
        if ids is None:     # a word holding the separator: look its strings up one by one
            ids = self._lookup(self._batch_strings(words)[0])
        return _segments(ids, key, len(words), len(self._groups), self.n_features_)

    def _publish(self, snap, words, seg_rel, flat, tok_type):
        """Add a batch's new word types to the cache; return the batch's types and the
        snapshot that covers them.

        ``words`` were numbered from ``snap.n_types`` on (``tok_type`` refers to them so);
        another thread may have published since ``snap`` was taken, some of the same words
        among others: those keep the id they already have, the rest are appended, and
        ``tok_type`` is renumbered to match (in place).
        """
        m = len(words)
        with self._lock:
            cur = self._cache
            if cur.index is not snap.index:
                # Trimmed since: the old generation's buffers may be in use beyond
                # snap.n_types, so this batch gets a private copy (rare).
                return tok_type, snap.extended(seg_rel, flat, shared=False)
            if cur is snap:
                fresh = None
                new_ids = None
                add_seg, add_flat = seg_rel, flat
            else:
                index = cur.index
                known = np.fromiter((index.get(w, -1) for w in words), dtype=np.int64,
                                    count=m)
                fresh = known < 0
                new_ids = known
                new_ids[fresh] = cur.n_types + np.arange(int(fresh.sum()))
                lengths = seg_rel[:, -1] - seg_rel[:, 0]
                add_flat = flat[np.repeat(fresh, lengths)]
                add_seg = seg_rel[fresh]
                start = np.zeros(add_seg.shape[0], dtype=np.int64)
                np.cumsum(lengths[fresh][:-1], out=start[1:])
                add_seg = add_seg - add_seg[:, :1] + start[:, None]
            nxt = cur.extended(add_seg, add_flat)
            # Publish first, then index: an index entry never points past a published row,
            # even when an interrupt falls between the two.
            self._cache = nxt
            added = words if fresh is None else itertools.compress(words, fresh.tolist())
            cur.index.update(zip(added, range(cur.n_types, nxt.n_types)))
        if new_ids is not None and m:
            new = tok_type >= snap.n_types
            tok_type[new] = new_ids[tok_type[new] - snap.n_types]
        return tok_type, nxt

    def _batch_strings(self, words, joined=False):
        """Feature strings of a batch of word types, built template by template.

        The same strings as ``_type_strings`` gives each word, but each template's values
        are computed for the whole batch in one list comprehension, which costs far less
        per string than a loop over words and their templates.

        Returns
        -------
        flat : list of str, or str when ``joined``
            The strings, (group, template) by (group, template); with ``joined``, the same
            strings already joined by the separator ``\x1f`` (one ``join`` per template,
            without a str object per string).
        key : (number of strings,) int64
            ``i * G + g`` for the string of ``words[i]`` in group ``g``.
        """
        n_groups = len(self._groups)
        n = len(words)
        columns = _TemplateColumns(words, {a[0]: a[1:] for a in self._affixes})
        base = np.arange(n, dtype=np.int64) * n_groups
        flat = []
        keys = []
        for g, group in enumerate(self._groups):
            for name, prefix in group:
                values, where = columns[name]
                count = len(values) if values is not None else where.shape[0]
                if count == 0:
                    continue
                if joined:
                    if values is None:      # a flag, on where `where` says
                        flat.append(_SEP.join(itertools.repeat(prefix, count)))
                    else:
                        flat.append(prefix + (_SEP + prefix).join(values))
                elif values is None:
                    flat.extend(itertools.repeat(prefix, count))
                else:
                    flat.extend([prefix + v for v in values])
                keys.append((base if where is None else base[where]) + g)
        key = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        return (_SEP.join(flat) if joined else flat), key

    # ---------------------------------------------------------------- batches

    @staticmethod
    def _check_sents(sents):
        if isinstance(sents, (str, bytes)):
            raise ValueError("sents must be a list of sentences (lists of token strings), "
                             "got a single string")
        if not isinstance(sents, (list, tuple)):
            sents = list(sents)
        kinds = set(map(type, sents))
        if any(issubclass(k, (str, bytes)) for k in kinds):
            raise ValueError("sents must be a list of sentences (lists of token strings), "
                             "not a list of strings: wrap a single sentence as [tokens]")
        return sents

    def _map_tokens(self, sents, cache, interned=None):
        """Token -> type id for a batch read against the snapshot ``cache``.

        Returns
        -------
        tok_type : (N,) int32
            Words of the cache keep their ids; the others (``new``) are numbered from
            ``cache.n_types`` on, in order of first appearance.
        offsets : (n+1,) int64
        new : list of str
            The words not in ``cache``, in id order, as plain str. Nothing is cached yet.
        """
        n = len(sents)
        try:
            lengths = np.fromiter(map(len, sents), dtype=np.int64, count=n)
        except TypeError:
            raise ValueError("every sentence must be a sequence of token strings (with a "
                             "length)") from None
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        n_tokens = int(offsets[-1])
        overflow = {}
        try:
            tok_type = np.empty(n_tokens, dtype=np.int32)
            # Compiled for the usual list of lists, once per distinct word where the caller
            # knows them (``interned``: a ConlluDocument's distinct forms and each token's,
            # checked to be the tokens themselves); anything else takes the generic path.
            if not (type(sents) is list
                    and (interned is not None
                         and _map_interned(sents, interned, cache, overflow, tok_type)
                         or _map_compiled(sents, cache.index, cache.n_types, overflow,
                                          tok_type))):
                overflow.clear()
                lookup = functools.partial(_type_of, cache.index, cache.n_types, overflow)
                tok_type = np.fromiter(map(lookup, itertools.chain.from_iterable(sents)),
                                       dtype=np.int32, count=n_tokens)
        except TypeError:
            bad = [w for s in sents for w in s if not isinstance(w, str)][:1]
            if not bad:
                raise
            bad = bad[0]
            raise ValueError(f"tokens must be strings, found {type(bad).__name__} "
                             f"{bad!r}") from None
        return tok_type, offsets, list(overflow)

    def _assemble(self, tok_type, offsets, cache, binary=False):
        """The CSR feature matrix of a batch mapped against ``cache``; ``binary=True`` stores
        its data (all 1.0) as a read-only stride-0 view instead of an (nnz,) array of ones
        (see :func:`factorebm.learning._is_binary_data`)."""
        import scipy.sparse as sp
        from . import _features
        n_tokens = tok_type.shape[0]
        seg = cache.seg_view()
        indptr = np.empty(n_tokens + 1, dtype=np.int64)
        _features.row_lengths(tok_type, offsets, self._shift, seg, indptr)
        nnz = int(indptr[-1])
        indices = np.empty(nnz, dtype=np.int32)
        _features.fill_indices(tok_type, offsets, self._shift, seg, cache.ids_view(), indptr,
                               indices)
        if nnz <= np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)
        else:   # scipy keeps indices and indptr in one dtype
            indices = indices.astype(np.int64)
        data = np.broadcast_to(np.float64(1.0), (nnz,)) if binary and nnz > 1 else np.ones(nnz)
        X = sp.csr_matrix((data, indices, indptr), shape=(n_tokens, self.n_features_),
                          copy=False)
        X.has_sorted_indices = True
        return X

    # ---------------------------------------------------------------- public API

    def fit(self, sents, min_count=1):
        """Build the feature vocabulary from training sentences.

        Parameters
        ----------
        sents : list of list of str
            Tokenized sentences.
        min_count : int
            Keep the features occurring on at least this many training tokens.

        Returns
        -------
        self
        """
        self._fit(sents, min_count)
        return self

    def _fit(self, sents, min_count):
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) \
                or min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
        sents = self._check_sents(sents)
        n_groups = len(self._groups)
        empty = _TypeCache({}, np.zeros((0, n_groups + 1), dtype=np.int64),
                           np.zeros(0, dtype=np.int32), _N_PSEUDO, 0)
        tok_type, offsets, words = self._map_tokens(sents, empty)
        n_tokens = tok_type.shape[0]
        if n_tokens == 0:
            raise ValueError("fit: the training sentences hold no tokens")
        _check_encodable(words)
        n_types = len(words) + _N_PSEUDO
        counts = self._neighbour_counts(tok_type, offsets, n_types)
        # Provisional ids in order of first appearance, one C-level dict lookup per string.
        # The types' strings are made a chunk of types at a time: most are repeats of
        # strings already numbered, and holding all of them at once (several per type and
        # group) would cost more memory than the finished vocabulary and the feature matrix.
        provisional = _AutoIndex()
        id_chunks = []
        length_chunks = []
        per_type = itertools.chain(self._pseudo_strings(), map(self._type_strings, words))
        while True:
            flat, lengths = self._flat_strings(itertools.islice(per_type, _FIT_CHUNK_TYPES))
            if not lengths.shape[0]:
                break
            id_chunks.append(np.fromiter(map(provisional.__getitem__, flat), dtype=np.int64,
                                         count=len(flat)))
            length_chunks.append(lengths)
        del flat
        prov_ids = np.concatenate(id_chunks)
        lengths = np.concatenate(length_chunks)
        del id_chunks, length_chunks
        n_prov = len(provisional)
        key = np.repeat(np.arange(n_types * n_groups, dtype=np.int64), lengths)
        entry_group = key % n_groups
        # A feature's token count: the tokens having, at its group's offset, a type that has it.
        feature_count = np.bincount(prov_ids, weights=counts[entry_group, key // n_groups],
                                    minlength=n_prov)
        # Every string belongs to one group (its name carries the offset); number the kept
        # ones group by group, so that rows assembled in group order come out sorted.
        feature_group = np.empty(n_prov, dtype=np.int64)
        feature_group[prov_ids] = entry_group
        kept = np.flatnonzero(feature_count >= min_count)
        kept = kept[np.argsort(feature_group[kept], kind="stable")]
        group_bounds = np.zeros(n_groups + 1, dtype=np.int64)
        np.cumsum(np.bincount(feature_group[kept], minlength=n_groups), out=group_bounds[1:])
        remap = np.full(n_prov, -1, dtype=np.int64)
        remap[kept] = np.arange(kept.shape[0])
        prov_names = list(provisional)
        del provisional
        names = [prov_names[p] for p in kept.tolist()]
        del prov_names
        # The names as Python strings cost more than the fitted model's weights' worth of
        # memory; the UTF-8 buffer holds them and feature_names_ decodes it on demand.
        names_buf, names_len = _encode_strings(names)
        del names
        seg, flat = _segments(remap[prov_ids], key, n_types, n_groups, names_len.shape[0])
        del key, prov_ids
        cache = _TypeCache(dict(zip(words, range(_N_PSEUDO, n_types))), seg, flat, n_types,
                           flat.shape[0])
        self._set_fitted(names_buf, names_len, int(min_count), group_bounds, cache)
        release_free_heap()
        return tok_type, offsets, cache

    def _neighbour_counts(self, tok_type, offsets, n_types):
        """counts[g, ty]: how many tokens have type ``ty`` at their group-``g`` offset."""
        n_tokens = tok_type.shape[0]
        lengths = np.diff(offsets)
        sent_of = np.repeat(np.arange(lengths.shape[0]), lengths)
        start = offsets[sent_of]
        stop = offsets[sent_of + 1]
        positions = np.arange(n_tokens, dtype=np.int64)
        counts = np.zeros((len(self._groups), n_types), dtype=np.int64)
        for g, shift in enumerate(self._shift.tolist()):
            j = positions + shift
            inside = (j >= start) & (j < stop)
            neighbour = np.where(inside, tok_type[np.clip(j, 0, n_tokens - 1)],
                                 0 if shift < 0 else 1)
            counts[g] = np.bincount(neighbour, minlength=n_types)
        return counts

    def _map_batch(self, sents, interned=None):
        """Token types and offsets of a batch, the types first seen in it added to the cache
        (``interned``: see :meth:`emission_blocks`).

        Returns
        -------
        tok_type : (N,) int32
        offsets : (n+1,) int64
        cache : _TypeCache
            A snapshot holding every type of ``tok_type``: hand the compiled passes its
            arrays, never the extractor's current ones (another thread may publish a new
            snapshot meanwhile).
        """
        self._check_fitted()
        sents = self._check_sents(sents)
        cache = self._snapshot()
        tok_type, offsets, new = self._map_tokens(sents, cache, interned)
        if new:
            seg_rel, flat = self._type_rows(new)
            tok_type, cache = self._publish(cache, new, seg_rel, flat, tok_type)
        return tok_type, offsets, cache

    def transform(self, sents):
        """The feature matrix of a batch of sentences.

        Parameters
        ----------
        sents : list of list of str
            Tokenized sentences; empty sentences are allowed.

        Returns
        -------
        X : scipy.sparse.csr_matrix, shape (N, n_features_), float64
            N = total number of tokens; row ``offsets[i] + t`` holds the features of token ``t``
            of sentence ``i`` as 1.0 entries, with sorted int32 column indices. Features not
            in the training vocabulary are dropped; an unseen word still gets its affix, shape,
            flag and neighbour features.
        offsets : ndarray, shape (n+1,), int64
            Sentence ``i`` is rows ``offsets[i]:offsets[i+1]``.
        """
        tok_type, offsets, cache = self._map_batch(sents)
        return self._assemble(tok_type, offsets, cache), offsets

    def emissions(self, sents, W, n_threads=None):
        """Emission energies ``X @ W`` of a batch, without building the feature matrix X.

        What :meth:`transform` followed by the sparse product gives (up to the order of the
        floating-point additions), computed once per word type present in the batch and
        group of templates, then summed per token: the fast path of tagging.

        Parameters
        ----------
        sents : list of list of str
        W : (n_features_, S) float64
            Energy of each of S states per unit of each feature.
        n_threads : int or None
            OpenMP threads (:func:`factorebm.checks.threads_for`: None uses every core, as
            the batch's size warrants; more than the cores is clamped to them).

        Returns
        -------
        U : (N, S) float64
            Row ``offsets[i] + t`` is token ``t`` of sentence ``i``.
        offsets : (n+1,) int64
        """
        self._check_fitted()
        check_threads(n_threads)        # refused before any work, not after
        W = self._check_W(W)
        tok_type, offsets, cache = self._map_batch(sents)
        U = self._member_sums(tok_type, offsets, cache, W.reshape(1, -1), W.shape[1],
                              threads_for(n_threads, tok_type.shape[0]))
        return U[0], offsets

    def emission_blocks(self, sents, W, block_tokens=8192, n_threads=None, interned=None):
        """:meth:`emissions` a block of whole sentences at a time, in one reused buffer.

        The words are mapped, and each present type's rows summed, once for the whole batch
        as :meth:`emissions` does; only the per-token sums are done block by block. So
        tagging a large document never holds its N x S energies: first-touching that much
        fresh memory costs more than the sums, and a block stays in cache for the decoder.

        Parameters
        ----------
        sents, W, n_threads : as :meth:`emissions`
        block_tokens : int
            Most tokens of a block; a longer sentence is a block of its own.
        interned : (list of str, (N,) int32) or None
            The batch's distinct words and each token's index among them (a
            :class:`~factorebm.datasets.ConlluDocument`'s), so that each distinct word is
            looked up once; ignored unless every token is that very string object.

        Returns
        -------
        offsets : (n+1,) int64
        blocks : iterator of ``(first, last, U)``
            Consecutive blocks of sentences ``first`` to ``last - 1``: U (their tokens, S)
            float64 is a view of one buffer that the next block overwrites (use it before
            asking for the next). Bad input raises here, before the first block.
        """
        self._check_fitted()
        check_threads(n_threads)
        W = self._check_W(W)
        block_tokens = _check_block_tokens(block_tokens)
        tok_type, offsets, cache = self._map_batch(sents, interned)
        nt = threads_for(n_threads, tok_type.shape[0])
        blocks = self._emission_blocks(tok_type, offsets, cache, W.reshape(1, -1), W.shape[1],
                                       block_tokens, nt)
        return offsets, ((first, last, U[0]) for first, last, U in blocks)

    def member_emission_blocks(self, sents, coef, n_states, block_tokens=8192,
                               n_threads=None, interned=None):
        """:meth:`member_emissions` a block of whole sentences at a time, as
        :meth:`emission_blocks` does for one model: an ensemble tags a large document without
        holding its M x N x S energies (4 GB for a million tokens of 4 members).

        Parameters
        ----------
        sents, coef, n_states, n_threads : as :meth:`member_emissions`
        block_tokens, interned : as :meth:`emission_blocks`

        Returns
        -------
        offsets : (n+1,) int64
        blocks : iterator of ``(first, last, U)``
            Consecutive blocks of sentences ``first`` to ``last - 1``: U (M, their tokens,
            n_states) float64, C-contiguous, a view of one buffer that the next block
            overwrites. Bad input raises here, before the first block.
        """
        self._check_fitted()
        check_threads(n_threads)
        coef, n_states = self._check_coef(coef, n_states)
        block_tokens = _check_block_tokens(block_tokens)
        tok_type, offsets, cache = self._map_batch(sents, interned)
        nt = threads_for(n_threads, tok_type.shape[0])
        return offsets, self._emission_blocks(tok_type, offsets, cache, coef, n_states,
                                              block_tokens, nt)

    def _emission_blocks(self, tok_type, offsets, cache, coef, S, block_tokens, nt):
        """The blocks of :meth:`member_emission_blocks` of a mapped batch (one member for
        :meth:`emission_blocks`)."""
        from . import _features
        M = coef.shape[0]
        slot, P = self._type_table(tok_type, cache, coef, S, nt)
        n = offsets.shape[0] - 1
        longest = int(np.diff(offsets).max()) if n else 0
        buf = np.empty(M * max(min(block_tokens, tok_type.shape[0]), longest, 1) * S)
        first = 0
        while first < n:
            # the most sentences from first on whose tokens fit in a block (at least one)
            last = int(np.searchsorted(offsets, offsets[first] + block_tokens, side="right")) - 1
            last = min(max(last, first + 1), n)
            # (M, the block's tokens, S), C-contiguous: the kernels take it as it is
            U = buf[:M * int(offsets[last] - offsets[first]) * S].reshape(M, -1, S)
            _features.token_emissions(tok_type, offsets, first, last, self._shift, P, slot,
                                      U, nt)
            yield first, last, U
            first = last

    def member_emissions(self, sents, coef, n_states, n_threads=None):
        """The emission energies of every member of an ensemble in one pass: ``U[m] = X @
        W_m``, as :meth:`emissions` gives them one matrix at a time (float64 weights: the
        same values bit for bit), each (type, group)'s feature rows read once for all members.

        Parameters
        ----------
        sents : list of list of str
        coef : (M, n_weights) float32 or float64, C-contiguous
            One member per row, whose first ``n_features_ * n_states`` weights are its
            emission matrix (n_features_, n_states), row-major (a tagger's ``coef_``). The
            sums are float64 whatever the weights' type.
        n_states : int
        n_threads : int or None
            As in :meth:`emissions`.

        Returns
        -------
        U : (M, N, n_states) float64
        offsets : (n+1,) int64
        """
        self._check_fitted()
        check_threads(n_threads)
        coef, n_states = self._check_coef(coef, n_states)
        tok_type, offsets, cache = self._map_batch(sents)
        return self._member_sums(tok_type, offsets, cache, coef, n_states,
                                 threads_for(n_threads, tok_type.shape[0])), offsets

    def _check_coef(self, coef, n_states):
        """``(coef, n_states)`` of :meth:`member_emissions`, checked: ValueError otherwise."""
        if (not isinstance(coef, np.ndarray) or coef.ndim != 2
                or coef.dtype not in (np.float32, np.float64)
                or not coef.flags.c_contiguous):
            raise ValueError("coef must be a C-contiguous 2-D float32 or float64 array, got "
                             f"{getattr(coef, 'shape', None)} "
                             f"{getattr(coef, 'dtype', type(coef).__name__)}")
        if isinstance(n_states, bool) or not isinstance(n_states, numbers.Integral) \
                or n_states < 1:
            raise ValueError(f"n_states must be an integer >= 1, got {n_states!r}")
        if coef.shape[1] < self.n_features_ * n_states:
            raise ValueError(f"coef rows of {coef.shape[1]} weights cannot hold "
                             f"{self.n_features_} x {n_states} emission weights")
        return coef, int(n_states)

    def _check_W(self, W):
        W = np.ascontiguousarray(W, dtype=np.float64)
        if W.ndim != 2 or W.shape[0] != self.n_features_:
            raise ValueError(f"W must have shape ({self.n_features_}, S), got {W.shape}")
        return W

    def _type_table(self, tok_type, cache, coef, S, nt):
        """``(slot, P)`` of a mapped batch (``_features.present_types``, ``type_table``):
        P (present types, groups, M * S) holds each present type's summed emission rows per
        template group for each of the M members (rows) of ``coef``."""
        from . import _features
        slot = np.full(cache.n_types, -1, dtype=np.int32)
        used = np.empty(min(tok_type.shape[0], cache.n_types) + 2, dtype=np.int32)
        n_rows = _features.present_types(tok_type, slot, used)
        # a numpy buffer: numpy backs it with huge pages where the kernel allows it, so that
        # first-touching it (tens of MB for an ensemble) costs few page faults
        P = np.empty((n_rows, self._shift.shape[0], coef.shape[0] * S))
        _features.type_table(used, cache.seg_view(), cache.ids_view(), coef, self.n_features_,
                             P, nt)
        return slot, P

    def _member_sums(self, tok_type, offsets, cache, coef, S, nt):
        """U (M, N, S): every member's emission energies of a mapped batch."""
        from . import _features
        slot, P = self._type_table(tok_type, cache, coef, S, nt)
        U = np.empty((coef.shape[0], tok_type.shape[0], S))
        _features.token_emissions(tok_type, offsets, 0, offsets.shape[0] - 1, self._shift, P,
                                  slot, U, nt)
        return U

    def factored_transform(self, sents):
        """:meth:`transform`'s matrix as the product of two binary matrices, ``X = S @ Phi``.

        Every feature of a token is a feature of the word type at some window offset from it,
        so X factors through (word type, template group) slots: ``Phi`` (n_slots,
        n_features_) holds each slot's features and ``S`` (N, n_slots) each token's G slots.
        The learning objective multiplies through the factors, which are much smaller than X
        (:class:`factorebm.learning.FactoredFeatures`).

        Returns
        -------
        X : FactoredFeatures, shape (N, n_features_)
        offsets : (n+1,) int64
        """
        tok_type, offsets, cache = self._map_batch(sents)
        return self._factored(tok_type, offsets, cache), offsets

    def _factored(self, tok_type, offsets, cache):
        """The :class:`~factorebm.learning.FactoredFeatures` of a batch mapped against
        ``cache``."""
        import scipy.sparse as sp
        from .sparse import FactoredFeatures
        N = tok_type.shape[0]
        G = len(self._groups)
        seg = cache.seg_view()
        # the type at t + shift[g] of every (token, group), as in _features.row_lengths
        seq = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
        start, stop = offsets[:-1][seq], offsets[1:][seq]
        pos = np.arange(N)[:, None] + self._shift[None, :]                   # (N, G)
        inside = (pos >= start[:, None]) & (pos < stop[:, None])
        ty = np.where(inside, tok_type[np.clip(pos, 0, max(N - 1, 0))],
                      np.where(pos < start[:, None], 0, 1))
        # number the (type, group) pairs that occur, in (type, group) order
        key = (ty * G + np.arange(G)[None, :]).ravel()
        used = np.zeros(cache.n_types * G, dtype=bool)
        used[key] = True
        slot_key = np.flatnonzero(used)
        slot_of = np.cumsum(used, dtype=np.int64) - 1
        S = sp.csr_matrix((np.broadcast_to(np.float64(1.0), (key.shape[0],)),
                           slot_of[key].astype(np.int32), np.arange(0, N * G + 1, G)),
                          shape=(N, slot_key.shape[0]), copy=False)
        # each slot's feature ids: the type's segment of the group in the id buffer
        s_ty, s_g = slot_key // G, slot_key % G
        lo = seg[s_ty, s_g]
        lengths = seg[s_ty, s_g + 1] - lo
        indptr = np.zeros(slot_key.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        flat = ranges(lo, lengths)
        Phi = sp.csr_matrix((np.broadcast_to(np.float64(1.0), (flat.shape[0],)),
                             cache.ids_view()[flat], indptr),
                            shape=(slot_key.shape[0], self.n_features_), copy=False)
        return FactoredFeatures(S, Phi)

    def fit_transform(self, sents, min_count=1, factored=False):
        """``fit(sents, min_count)`` then ``transform(sents)``, sharing the token mapping;
        with ``factored=True``, :meth:`factored_transform`'s ``X = S @ Phi`` instead."""
        return self._fit_transform(sents, min_count, factored=factored)

    def _fit_transform(self, sents, min_count=1, binary=False, factored=False):
        """:meth:`fit_transform`, optionally with binary (data-free) X as in ``_assemble``, or
        factored as :meth:`factored_transform` gives it."""
        tok_type, offsets, cache = self._fit(sents, min_count)
        X = (self._factored(tok_type, offsets, cache) if factored
             else self._assemble(tok_type, offsets, cache, binary))
        del tok_type
        release_free_heap()        # the factoring's temporaries too
        return X, offsets

    def extended(self, sents, min_count=1):
        """A new extractor whose vocabulary is this one's plus the features of ``sents`` seen
        on at least ``min_count`` of their tokens: the vocabulary of warm-started training.
        This extractor is left as it is.

        Every column keeps its offset group, so rows stay sorted; the columns are renumbered
        (``column_map`` says where each of this extractor's features went). The new
        extractor's training word types are this one's and those of ``sents``, their columns
        looked up in the grown vocabulary.

        Parameters
        ----------
        sents : list of list of str
        min_count : int
            Count threshold of the features first seen in ``sents`` (all of this extractor's
            features are kept).

        Returns
        -------
        fx : FeatureExtractor
            Fitted; ``fx.n_features_ >= self.n_features_``.
        column_map : (self.n_features_,) int64
            Column of each of this extractor's features in ``fx``.
        """
        self._check_fitted()
        new = FeatureExtractor(templates=self.templates, cache_size=self.cache_size)
        new._fit(sents, min_count)          # validates sents and min_count
        n_groups = len(self._groups)
        old_bounds = self._group_bounds
        n_old = np.diff(old_bounds)
        # new.feature_names_ are in group order, and a name belongs to one group (it holds
        # its offset), so the added names come out in group order too
        new_names = new.feature_names_
        added = np.flatnonzero(self._lookup(new_names) < 0)
        added_group = np.repeat(np.arange(n_groups), np.diff(new._group_bounds))[added]
        n_added = np.bincount(added_group, minlength=n_groups)
        bounds = np.zeros(n_groups + 1, dtype=np.int64)
        np.cumsum(n_old + n_added, out=bounds[1:])
        column_map = (np.arange(self.n_features_, dtype=np.int64)
                      + np.repeat(bounds[:-1] - old_bounds[:-1], n_old))
        old_names = self.feature_names_
        added_bounds = np.concatenate([[0], np.cumsum(n_added)]).tolist()
        names = []
        for g, (a, b) in enumerate(zip(old_bounds[:-1].tolist(), old_bounds[1:].tolist())):
            names.extend(old_names[a:b])
            names.extend(new_names[i]
                         for i in added[added_bounds[g]:added_bounds[g + 1]].tolist())
        names_buf, names_len = _encode_strings(names)
        del names
        with self._lock:        # no thread adds to the index while it is read
            n_words = self._n_fit_types - _N_PSEUDO
            words = list(itertools.islice(self._cache.index, n_words))
        known = set(words)
        words += [w for w in itertools.islice(new._cache.index, new._n_fit_types - _N_PSEUDO)
                  if w not in known]
        fx = FeatureExtractor(templates=self.templates, cache_size=self.cache_size)
        # the vocabulary first (the lookups below read it), then the types' columns in it
        blank = _TypeCache({}, np.zeros((_N_PSEUDO, n_groups + 1), dtype=np.int64),
                           np.zeros(0, dtype=np.int32), _N_PSEUDO, 0)
        fx._set_fitted(names_buf, names_len, int(min_count), bounds, blank)
        flat, lengths = fx._flat_strings(fx._pseudo_strings())
        key = np.repeat(np.arange(_N_PSEUDO * n_groups, dtype=np.int64), lengths)
        seg, ids = _segments(fx._lookup(flat), key, _N_PSEUDO, n_groups, fx.n_features_)
        if words:
            word_seg, word_ids = fx._type_rows(words)
            seg = np.concatenate([seg, word_seg + ids.shape[0]])
            ids = np.concatenate([ids, word_ids])
        n_types = _N_PSEUDO + len(words)
        fx._set_fitted(names_buf, names_len, int(min_count), bounds,
                       _TypeCache(dict(zip(words, range(_N_PSEUDO, n_types))), seg, ids,
                                  n_types, ids.shape[0]))
        return fx, column_map

    # ---------------------------------------------------------------- saving

    def get_config(self):
        """JSON-serializable settings: ``FeatureExtractor(**...)`` minus fitted state.

        Returns
        -------
        dict
            ``{"format_version", "templates": [[offset, [names]], ...], "cache_size",
            "min_count"}`` (``min_count`` is None before fit).
        """
        return {
            "format_version": _FORMAT_VERSION,
            "templates": [[o, list(names)] for o, names in self.templates.items()],
            "cache_size": self.cache_size,
            "min_count": self.min_count_ if self._fitted else None,
        }

    def to_arrays(self):
        """The fitted state as plain numpy arrays (no object dtype, so no pickle needed).

        Returns
        -------
        dict of str -> ndarray
            ``feature_names`` (uint8): the feature strings in column order, UTF-8, joined by
            ``\\x1f``; ``feature_name_lengths`` (n_features_,) int64: their lengths in
            characters; ``group_bounds`` (G+1,) int64: the columns of offset group ``g`` are
            ``group_bounds[g]:group_bounds[g+1]``. ``type_words`` (uint8) and
            ``type_word_lengths`` (int64): the training word types in type-id order (ids 2, 3, ...); ``type_seg`` (n_types, G+1) int64 and
            ``type_ids`` int32: their cached column ids per offset group (types 0 and 1 are
            the sentence-boundary pseudo-types), so a loaded extractor starts with a warm cache.
        """
        self._check_fitted()
        n_words = self._n_fit_types - _N_PSEUDO
        with self._lock:        # no thread adds to the index while it is read
            cache = self._cache
            words = list(itertools.islice(cache.index, n_words))
        words, word_lengths = _encode_strings(words)
        return {
            "feature_names": self._names_buf.copy(),
            "feature_name_lengths": self._names_len.copy(),
            "type_words": words,
            "type_word_lengths": word_lengths,
            "group_bounds": self._group_bounds.copy(),
            "type_seg": cache.seg[:self._n_fit_types].copy(),
            "type_ids": cache.ids[:self._n_fit_ids].copy(),
        }

    @classmethod
    def from_config_and_arrays(cls, config, arrays, copy=True):
        """Rebuild a fitted extractor from :meth:`get_config` and :meth:`to_arrays` output.

        Every array is checked (dtypes, shapes, bounds), since it may come from an untrusted
        file: a bad one raises ValueError rather than reaching the compiled assembly loop.
        ``copy=False`` keeps the arrays themselves rather than copies, for a caller that owns
        them and will not change them (a model file's loader: 4 MB less to copy).
        """
        if not isinstance(config, dict):
            raise ValueError("feature extractor config must be a dict")
        version = config.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"feature extractor config: bad format_version {version!r}")
        if version > _FORMAT_VERSION:
            raise ValueError(f"feature extractor config: format_version {version} is newer "
                             f"than this factorebm supports ({_FORMAT_VERSION})")
        for key in ("templates", "min_count"):
            if key not in config:
                raise ValueError(f"feature extractor config: missing key {key!r}")
        fx = cls(templates=config["templates"], cache_size=config.get("cache_size", 500_000))
        n_groups = len(fx._groups)

        def get(key, dtype, ndim):
            if key not in arrays:
                raise ValueError(f"feature extractor arrays: missing {key!r}")
            a = np.asarray(arrays[key])
            if a.dtype != dtype or a.ndim != ndim:
                raise ValueError(f"feature extractor arrays: {key!r} must be {ndim}-D "
                                 f"{np.dtype(dtype).name}, got {a.ndim}-D {a.dtype}")
            return np.ascontiguousarray(a)

        from ._conllu import utf8_length
        from ._features import is_segment_table, type_ids_in_order
        names_buf = get("feature_names", np.uint8, 1)
        names_len = get("feature_name_lengths", np.int64, 1)
        n_features = names_len.shape[0]
        n_chars = utf8_length(names_buf)     # the names are decoded on first need only
        if n_chars < 0:
            raise ValueError("feature extractor arrays: feature_names is not valid UTF-8")
        if np.any(names_len < 0) or int(names_len.sum()) + max(n_features - 1, 0) != n_chars:
            raise ValueError("feature extractor arrays: feature_name_lengths do not match "
                             "the feature_names buffer")
        words = _decode_strings(get("type_words", np.uint8, 1),
                                get("type_word_lengths", np.int64, 1), "type_words")
        seg = get("type_seg", np.int64, 2)
        ids = get("type_ids", np.int32, 1)
        n_types = len(words) + _N_PSEUDO
        if seg.shape != (n_types, n_groups + 1):
            raise ValueError(f"feature extractor arrays: type_seg has shape {seg.shape}, "
                             f"expected {(n_types, n_groups + 1)}")
        if not is_segment_table(seg, ids.shape[0]):
            raise ValueError("feature extractor arrays: type_seg is not a valid segment table "
                             "for type_ids")
        bounds = get("group_bounds", np.int64, 1)
        if (bounds.shape[0] != n_groups + 1 or bounds[0] != 0 or bounds[-1] != n_features
                or np.any(np.diff(bounds) < 0)):
            raise ValueError("feature extractor arrays: group_bounds does not split the "
                             f"{n_features} features into {n_groups} groups")
        # Every id must lie in its group's column range and increase within its segment:
        # that is what makes the assembled rows sorted.
        if not type_ids_in_order(seg, ids, bounds):
            raise ValueError("feature extractor arrays: type_ids holds column ids outside "
                             "their group's range or out of order")
        index = dict(zip(words, range(_N_PSEUDO, n_types)))
        if len(index) != len(words):
            raise ValueError("feature extractor arrays: duplicate word types")
        min_count = config["min_count"]
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"feature extractor config: bad min_count {min_count!r}")
        # Feature names are decoded, and their lookup table built, on first need.
        own = np.array if copy else np.asarray
        fx._set_fitted(own(names_buf), own(names_len), min_count, own(bounds),
                       _TypeCache(index, own(seg), own(ids), n_types, ids.shape[0]))
        return fx

    def __repr__(self):
        state = f"n_features_={self.n_features_}" if self._fitted else "not fitted"
        return f"FeatureExtractor({len(self.templates)} offset groups, {state})"


def _map_interned(sents, interned, cache, overflow, out):
    from ._features import map_interned
    distinct, ids = interned
    if type(distinct) is not list or not map_interned(sents, distinct, ids, cache.index,
                                                      cache.n_types, overflow, out):
        overflow.clear()
        return False
    return True


def _map_compiled(sents, index, n_known, overflow, out):
    from ._features import map_tokens
    return map_tokens(sents, index, n_known, overflow, out)


def _check_encodable(words):
    """ValueError naming the first word that UTF-8 cannot encode (a lone surrogate such as
    '\\udcff', left by ``errors="surrogateescape"`` decoding): a fitted vocabulary is saved as
    UTF-8."""
    try:
        _SEP.join(words).encode("utf-8")
    except UnicodeEncodeError:
        bad = next(w for w in words if not _encodable(w))
        raise ValueError(f"cannot fit on the token {bad!r}: it holds a lone surrogate, which "
                         "is not Unicode text (decode the input strictly, or replace such "
                         "characters)") from None


def _encodable(word):
    try:
        word.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

