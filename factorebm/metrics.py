"""Evaluation of tag sequences: token accuracy and span F1 (chunking, named entities).

Span F1 follows the CoNLL shared tasks' evaluation script ``conlleval`` (CoNLL-2000 chunking,
CoNLL-2003 NER): the tags of a sentence are read as labelled spans ``(type, start, end)``;
a predicted span is correct when a gold span has the same type, start and end; precision,
recall and F1 are micro-averaged over all spans of all sentences, and also reported per type.

Schemes
-------
``"BIO"`` (IOB2): ``B-X`` begins a span of type X, ``I-X`` continues it, ``O`` is outside.
``"BIOES"`` (also written IOBES or BILOU with L = E, U = S): also ``E-X`` ends a span and
``S-X`` is a span of one token. Any other tag (``b-X``, ``B-``, ``BX``, ``E-X`` under BIO, ...)
is a ValueError naming the sentence and the position.

Ill-formed sequences
--------------------
With ``strict=False`` (the default) spans are cut exactly as ``conlleval`` cuts them: a span
starts at ``B-X`` (or ``S-X``), and also at an ``I-X`` (or ``E-X``) that does not continue a
span of type X, such as ``I-X`` after ``O``, at the start of a sentence or after a span of
another type; a span ends before a token that starts a new span or is ``O``, and after an
``E-X`` or ``S-X``. So ``O I-PER I-PER`` holds the span ``PER`` over tokens 1-2, and every
non-``O`` tag belongs to exactly one span.

With ``strict=True`` only well-formed spans count (as in seqeval's strict mode): ``B-X I-X*``
under BIO, ``B-X I-X* E-X`` or ``S-X`` under BIOES; the tokens of an ill-formed run (an ``I-X``
without its ``B-X``, a BIOES ``B-X`` never closed by ``E-X``) belong to no span. A predicted
ill-formed span is then never correct, and an ill-formed gold span is never expected.

Both functions take lists of tag sequences, one per sentence (the format of
:meth:`factorebm.SequenceTagger.predict`).
"""
import numpy as np

__all__ = ["accuracy", "span_f1", "spans", "get", "check_scheme", "METRICS", "SCHEMES"]

SCHEMES = ("BIO", "BIOES")
METRICS = ("accuracy", "span-f1")

# Tag letters as small integers; a tag is (letter, type id).
_O, _B, _I, _E, _S = range(5)
_LETTERS = {"O": _O, "B": _B, "I": _I, "E": _E, "S": _S}


def get(name):
    """The metric function called ``name``: ``"accuracy"`` or ``"span-f1"`` (also
    ``"span_f1"``).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key == "accuracy":
        return accuracy
    if key == "span-f1":
        return span_f1
    raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")


def _check_pair(gold, pred):
    """Validate two lists of tag sequences of the same shape; return the flat tags and the
    sentence offsets (n+1,) int64."""
    for what, seqs in (("gold", gold), ("pred", pred)):
        if isinstance(seqs, (str, bytes)) or not hasattr(seqs, "__len__"):
            raise ValueError(f"{what} must be a list of tag sequences, one per sentence")
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}")
    lengths = np.zeros(len(gold) + 1, dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, pred)):
        for what, seq in (("gold", g), ("pred", p)):
            if isinstance(seq, (str, bytes)) or not hasattr(seq, "__len__"):
                raise ValueError(f"{what}[{i}] must be a sequence of tags, got "
                                 f"{type(seq).__name__} {seq!r:.40}: give one list of tags "
                                 "per sentence")
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: gold has {len(g)} tags but pred has {len(p)}")
        lengths[i + 1] = len(g)
    return np.cumsum(lengths)


def _flat(seqs):
    return [t for seq in seqs for t in seq]


def _position(offsets, index):
    """(sentence, position in it) of flat token ``index``."""
    i = int(np.searchsorted(offsets, index, side="right")) - 1
    return i, int(index - offsets[i])


def accuracy(gold, pred):
    """Token accuracy: the fraction of tokens whose predicted tag equals the gold tag.

    Parameters
    ----------
    gold, pred : list of sequences of str
        One tag sequence per sentence; ``pred[i]`` as long as ``gold[i]``.

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    ValueError
        On sequences of different lengths or zero tokens.
    """
    offsets = _check_pair(gold, pred)
    n = int(offsets[-1])
    if n == 0:
        raise ValueError("cannot score zero tokens")
    correct = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    return correct / n


def _encode(tags, offsets, scheme, what, types):
    """Letters (N,) int8 and type ids (N,) int64 of the flat ``tags``; ``types`` (dict type
    -> id) grows with the types met. ValueError naming the sentence and position of the first
    tag that is not in ``scheme``."""
    letters = "BI" if scheme == "BIO" else "BIES"
    bad = next((k for k, t in enumerate(tags) if type(t) is not str), None)
    letter_of, type_of = {}, {}
    if bad is None:
        invalid = set()
        for tag in set(tags):
            if tag == "O":
                letter_of[tag], type_of[tag] = _O, -1
            elif len(tag) > 2 and tag[0] in letters and tag[1] == "-":
                letter_of[tag] = _LETTERS[tag[0]]
                type_of[tag] = types.setdefault(tag[2:], len(types))
            else:
                invalid.add(tag)
        if invalid:
            bad = next(k for k, t in enumerate(tags) if t in invalid)
    if bad is not None:
        i, t = _position(offsets, bad)
        allowed = ", ".join(f"{c}-X" for c in letters)
        raise ValueError(f"{what}: sentence {i}, position {t}: tag {tags[bad]!r} is not O, "
                         f"{allowed} (scheme {scheme}; X a non-empty type)")
    n = len(tags)
    return (np.fromiter(map(letter_of.__getitem__, tags), dtype=np.int8, count=n),
            np.fromiter(map(type_of.__getitem__, tags), dtype=np.int64, count=n))


def _spans(letter, type_id, offsets, scheme, strict):
    """Spans of encoded tags, cut as conlleval cuts them (see the module docstring).

    Returns
    -------
    start, stop, type : (n_spans,) int64
        Flat token positions (``stop`` exclusive) and type ids, sorted by start.
    """
    n = letter.shape[0]
    nonempty = offsets[:-1] < offsets[1:]
    first = np.zeros(n, dtype=bool)
    first[offsets[:-1][nonempty]] = True
    last = np.zeros(n, dtype=bool)
    last[offsets[1:][nonempty] - 1] = True
    # the neighbours within the sentence; O (type -1) beyond its ends
    prev_l = np.where(first, _O, np.roll(letter, 1))
    prev_t = np.where(first, -1, np.roll(type_id, 1))
    next_l = np.where(last, _O, np.roll(letter, -1))
    next_t = np.where(last, -1, np.roll(type_id, -1))
    inside = letter != _O
    # conlleval's startOfChunk and endOfChunk
    opens = inside & ((letter == _B) | (letter == _S) | (prev_t != type_id)
                      | (prev_l == _E) | (prev_l == _S))
    closes = inside & ((letter == _E) | (letter == _S) | (next_l == _O) | (next_l == _B)
                       | (next_l == _S) | (next_t != type_id))
    # Every non-O token lies in exactly one span, so the k-th opening pairs with the k-th
    # closing.
    start = np.flatnonzero(opens)
    stop = np.flatnonzero(closes) + 1
    if strict:
        # within a span every token after the first is I or E of its type, and E only last
        first_l, last_l = letter[start], letter[stop - 1]
        if scheme == "BIO":
            keep = first_l == _B
        else:
            keep = (first_l == _S) | ((first_l == _B) & (last_l == _E))
        start, stop = start[keep], stop[keep]
    return start, stop, type_id[start]


def spans(tags, scheme="BIO", strict=False):
    """The labelled spans of tag sequences, as conlleval reads them.

    Parameters
    ----------
    tags : list of sequences of str
        One tag sequence per sentence.
    scheme : {"BIO", "BIOES"}
    strict : bool
        Keep only well-formed spans (see the module docstring).

    Returns
    -------
    list of list of (str, int, int)
        Per sentence, its spans ``(type, start, end)`` in order, ``end`` exclusive (token
        positions within the sentence).
    """
    scheme = check_scheme(scheme)
    offsets = _check_pair(tags, tags)
    types = {}
    letter, type_id = _encode(_flat(tags), offsets, scheme, "tags", types)
    start, stop, tid = _spans(letter, type_id, offsets, scheme, bool(strict))
    names = list(types)
    sent = np.searchsorted(offsets, start, side="right") - 1
    out = [[] for _ in range(len(tags))]
    base = offsets[sent]
    for i, a, b, t in zip(sent.tolist(), (start - base).tolist(), (stop - base).tolist(),
                          tid.tolist()):
        out[i].append((names[t], a, b))
    return out


def check_scheme(scheme):
    """The scheme's canonical name, ``"BIO"`` or ``"BIOES"`` (``"IOB2"`` and ``"IOBES"`` name
    them too); ValueError for any other."""
    key = scheme.upper() if isinstance(scheme, str) else scheme
    key = {"IOB2": "BIO", "IOBES": "BIOES"}.get(key, key)
    if key not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}")
    return key


def _prf(n_correct, n_pred, n_gold):
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def span_f1(gold, pred, scheme="BIO", strict=False):
    """Span precision, recall and F1 of predicted tags against gold tags (conlleval).

    Parameters
    ----------
    gold, pred : list of sequences of str
        One tag sequence per sentence; ``pred[i]`` as long as ``gold[i]``.
    scheme : {"BIO", "BIOES"}
        Tag scheme of both (``"IOB2"`` and ``"IOBES"`` are accepted as names too).
    strict : bool
        False: cut spans as conlleval does, an ``I-X`` that continues no span starting one.
        True: only well-formed spans count. See the module docstring.

    Returns
    -------
    dict
        ``"precision"``, ``"recall"``, ``"f1"``: micro-averaged over all spans, in [0, 1]
        (0 where undefined: no predicted or no gold spans); ``"n_gold"``, ``"n_pred"``,
        ``"n_correct"``: span counts; ``"per_type"``: type -> dict of ``"precision"``,
        ``"recall"``, ``"f1"`` and ``"support"`` (its gold spans), for every type that a
        gold or predicted tag names, sorted by type.

    Raises
    ------
    ValueError
        On an unknown scheme, sequences of different lengths, or a tag outside the scheme
        (naming ``gold`` or ``pred``, the sentence and the position).
    """
    scheme = check_scheme(scheme)
    offsets = _check_pair(gold, pred)
    types = {}
    g_letter, g_type = _encode(_flat(gold), offsets, scheme, "gold", types)
    p_letter, p_type = _encode(_flat(pred), offsets, scheme, "pred", types)
    g_start, g_stop, g_tid = _spans(g_letter, g_type, offsets, scheme, bool(strict))
    p_start, p_stop, p_tid = _spans(p_letter, p_type, offsets, scheme, bool(strict))
    # Spans of one sequence never overlap, so a predicted span can only equal the gold span
    # that starts where it starts.
    k = np.searchsorted(g_start, p_start)
    found = k < g_start.shape[0]
    k = np.where(found, k, 0)
    correct = (found & (g_start[k] == p_start) & (g_stop[k] == p_stop)
               & (g_tid[k] == p_tid)) if g_start.shape[0] else np.zeros(p_start.shape, bool)
    n_types = len(types)
    n_gold = np.bincount(g_tid, minlength=n_types)
    n_pred = np.bincount(p_tid, minlength=n_types)
    n_correct = np.bincount(p_tid[correct], minlength=n_types)
    precision, recall, f1 = _prf(int(n_correct.sum()), int(n_pred.sum()), int(n_gold.sum()))
    per_type = {}
    for name, t in sorted(types.items()):
        p, r, f = _prf(int(n_correct[t]), int(n_pred[t]), int(n_gold[t]))
        per_type[name] = {"precision": p, "recall": r, "f1": f, "support": int(n_gold[t])}
    return {"precision": precision, "recall": recall, "f1": f1,
            "n_gold": int(n_gold.sum()), "n_pred": int(n_pred.sum()),
            "n_correct": int(n_correct.sum()), "per_type": per_type}
