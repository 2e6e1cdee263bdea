"""Constraints on tag sequences: allowed tags per position, allowed tag transitions.

Both are +inf energies on the chain (LeCun et al. 2006: a forbidden configuration is one of
infinite energy), so every inference -- Viterbi, k-best, marginals -- obeys them exactly, latent
substates included:

* a constraint ``{position: tag or set of tags}`` on a sentence is a mask over the chain's
  states at that token (:func:`constraint_mask`): every substate of an allowed tag stays,
  every other state gets +inf energy, so the answer is the best one among the tag sequences
  that obey it;
* ``allowed`` transitions (:func:`observed_transitions`, e.g. the tag bigrams seen in
  training, so that BIO output never has ``I-X`` after ``O``) give +inf transition, start
  and end energies to the rest (:func:`forbid_transitions`).

``allowed`` is one (K+1, K+1) bool array over the K tags: ``allowed[i, j]`` says tag i may be
followed by tag j, ``allowed[K, j]`` that tag j may start a sentence, ``allowed[i, K]`` that
tag i may end one (``allowed[K, K]``, the empty sentence, is always True).
"""
import numbers
from collections.abc import Mapping

import numpy as np

__all__ = ["constraint_mask", "observed_transitions", "forbid_transitions"]


def _tags_of(allowed, i, pos):
    """The tags a constraint value names, as a list (a tag or a collection of tags)."""
    if isinstance(allowed, str):
        return [allowed]
    if isinstance(allowed, (set, frozenset, list, tuple)):
        if not allowed:
            raise ValueError(f"sentence {i}, position {pos}: the set of allowed tags is empty "
                             "(no tagging could obey it)")
        return list(allowed)
    raise ValueError(f"sentence {i}, position {pos}: a constraint is a tag or a set of tags, "
                     f"got {type(allowed).__name__} {allowed!r}")


def constraint_mask(constraints, lengths, labels, state_label=None):
    """The chain-state mask of per-sentence tag constraints.

    Parameters
    ----------
    constraints : None or sequence of (dict or None)
        One entry per sentence: None (unconstrained) or ``{position: tag}`` /
        ``{position: set, list or tuple of tags}``, positions counted from 0.
    lengths : (n,) int
        Tokens per sentence.
    labels : (K,) array of str
        The tag set; tag k owns the chain states s with ``state_label[s] == k``.
    state_label : (S,) int64 or None
        State -> tag map (latent substates); None: the states are the tags (S = K).

    Returns
    -------
    mask : (N, S) bool or None
        ``mask[t, s]``: state s is allowed at token t (N = sum of lengths); None when
        nothing is constrained.

    Raises
    ------
    ValueError
        Naming the sentence (and position, and tag) of a bad constraint: a count that does not
        match the sentences, a position that is not an integer or lies outside its sentence, an
        unknown tag, an empty set of allowed tags.
    """
    if constraints is None:
        return None
    n = len(lengths)
    if isinstance(constraints, (str, bytes, Mapping)) or not hasattr(constraints, "__len__"):
        raise ValueError("constraints must be None or a list holding one dict (or None) per "
                         f"sentence, got {type(constraints).__name__}")
    if len(constraints) != n:
        raise ValueError(f"got {n} sentences but {len(constraints)} constraint entries "
                         "(one dict or None per sentence)")
    index = {t: k for k, t in enumerate(np.asarray(labels).tolist())}
    K = len(index)
    rows, tag_sets = [], []
    start = 0
    for i, (c, T) in enumerate(zip(constraints, lengths)):
        T = int(T)
        if c is not None:
            if not isinstance(c, Mapping):
                raise ValueError(f"constraints[{i}] must be a dict {{position: tag or set of "
                                 f"tags}} or None, got {type(c).__name__}")
            for pos, allowed in c.items():
                if isinstance(pos, bool) or not isinstance(pos, numbers.Integral):
                    raise ValueError(f"sentence {i}: constraint position {pos!r} is not an "
                                     "integer")
                if not 0 <= pos < T:
                    raise ValueError(f"sentence {i}: constraint position {pos} is out of range"
                                     f" (the sentence has {T} tokens, positions 0..{T - 1})")
                ids = np.zeros(K, dtype=bool)
                for tag in _tags_of(allowed, i, pos):
                    try:
                        k = index.get(tag)
                    except TypeError:       # unhashable
                        k = None
                    if k is None:
                        raise ValueError(f"sentence {i}, position {pos}: unknown tag {tag!r} "
                                         f"(the tagger's tags: {', '.join(index)})")
                    ids[k] = True
                rows.append(start + int(pos))
                tag_sets.append(ids)
        start += T
    if not rows:
        return None
    lab = np.arange(K) if state_label is None else np.asarray(state_label)
    mask = np.ones((start, lab.shape[0]), dtype=bool)
    mask[np.asarray(rows, dtype=np.int64)] = np.stack(tag_sets)[:, lab]
    return mask


def observed_transitions(y, offsets, n_labels):
    """The tag transitions (and first and last tags) seen in a tagged corpus.

    Parameters
    ----------
    y : (N,) int64
        Tag ids in 0..n_labels-1, or -1 for an unknown tag (a bigram with an unknown tag is
        not seen; nor is the first or last tag of a sentence when it is unknown).
    offsets : (n+1,) int64
        Sentence i is ``y[offsets[i]:offsets[i+1]]``.
    n_labels : int
        K.

    Returns
    -------
    allowed : (K+1, K+1) bool
        As in the module docstring.
    """
    y = np.asarray(y, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    K = int(n_labels)
    allowed = np.zeros((K + 1, K + 1), dtype=bool)
    allowed[K, K] = True
    nonempty = offsets[1:] > offsets[:-1]
    first = offsets[:-1][nonempty]
    last = offsets[1:][nonempty] - 1
    first_tag, last_tag = y[first], y[last]
    allowed[K, first_tag[first_tag >= 0]] = True
    allowed[last_tag[last_tag >= 0], K] = True
    inner = np.ones(y.shape[0], dtype=bool)
    inner[first] = False
    t = np.flatnonzero(inner)
    prev, cur = y[t - 1], y[t]
    seen = (prev >= 0) & (cur >= 0)
    allowed[prev[seen], cur[seen]] = True
    return allowed


def forbid_transitions(transition, start, end, allowed, state_label=None):
    """Chain energies with +inf on every transition, start and end that ``allowed`` forbids.

    Parameters
    ----------
    transition : (S, S) float64
    start, end : (S,) float64
    allowed : (K+1, K+1) bool
        As in the module docstring.
    state_label : (S,) int64 or None
        State -> tag map; None: the states are the tags.

    Returns
    -------
    transition, start, end : new arrays (the inputs are not modified)
    """
    K = allowed.shape[0] - 1
    lab = np.arange(K) if state_label is None else np.asarray(state_label)
    inf = np.inf
    return (np.where(allowed[lab[:, None], lab[None, :]], transition, inf),
            np.where(allowed[K, lab], start, inf), np.where(allowed[lab, K], end, inf))
