"""The tagger's front ends: what turns the words of a sentence into emission energies.

``"features"``
    Sparse string-template features (:mod:`factorebm.features`) times a weight matrix: the
    emission is ``SparseLinear(n_features, S)``, a :class:`~factorebm.learning.LinearChainEnergy`.
``"features+chars"``
    The same plus a trained character branch (the tutorial's "trainable front end"): a
    :class:`~factorebm.charcnn.CharCNN` vector per word and a linear map to the S chain
    states, ``U = X @ W + CharCNN(chars of w_t) @ B + b``. The emission is
    ``Sum(Sequential(Select(0), SparseLinear), Sequential(Select(1), CharCNN, Linear))`` over
    the input ``(features, WordChars)``, trained jointly with the chain by
    :func:`factorebm.optimize.fit_chain`. Settings (:data:`CHAR_DEFAULTS`) widen it: the CNN
    vectors of the words at offsets -k..+k (``window``) and a ReLU layer (``hidden``),
    ``U = X @ W + relu([v(w_{t-k}) .. v(w_{t+k})] @ A + a) @ B + b``.

:class:`CharEncoder` maps words to character ids (the training alphabet; rarer characters and
characters never seen share one "unknown" id) and builds a batch's
:class:`~factorebm.charcnn.WordChars`: each distinct word of the batch once, as
``<bow> c_1 .. c_n <eow>``, plus two pseudo-words standing for the positions before and after a
sentence. :class:`CharFrontEnd` holds the encoder and the branch module, and saves both.
"""
import itertools

import numpy as np

from .charcnn import ACTIVATIONS, CharCNN, OpenMPLinear, StepScale, WordChars, matmul
from .checks import FRONT_ENDS, check_count, check_front_end, threads_for
from .indexing import ranges
from .modules import Context, ReLU, Select, Sequential, SparseLinear, Sum

__all__ = ["FRONT_ENDS", "CHAR_DEFAULTS", "check_front_end", "CharEncoder", "CharFrontEnd"]

# Settings of the character branch (SequenceTagger(chars={...}) replaces any of them).
CHAR_DEFAULTS = {
    "char_dim": 16,          # character embedding size
    "widths": [2, 3, 4],     # convolution widths
    "n_filters": 32,         # filters per width
    "activation": "relu",    # after the max over positions
    "highway": False,        # a highway layer on the word vector
    "window": 0,             # words -window..+window around the token feed the next layer
    "hidden": 0,             # units of the ReLU layer (0: a linear map straight to the states)
    "min_count": 2,          # characters seen fewer times in training share the unknown id
    "step_scale": 0.5,       # the branch's AdaGrad steps, relative to the sparse weights'
}

# Reserved character ids; the alphabet's characters follow.
_UNKNOWN, _BOW, _EOW, _BEFORE, _AFTER = range(5)
_N_RESERVED = 5
_N_PSEUDO = 2           # batch type 0: before the sentence, 1: after its end
_MAX_CODEPOINT = 0x10FFFF


class _BatchTypes(dict):
    """word -> batch type id (from _N_PSEUDO on, in order of first appearance)."""

    __slots__ = ()

    def __missing__(self, word):
        ty = self[word] = len(self) + _N_PSEUDO
        return ty


def _map_words(sents, n_tokens):
    """(tok_type (N,) int32, words in type order, the words joined) of a batch."""
    from ._features import map_tokens
    tok = np.empty(n_tokens, dtype=np.int32)
    try:
        # the compiled map numbers every word into `numbered` from _N_PSEUDO on
        numbered = {}
        if not (type(sents) is list and map_tokens(sents, {}, _N_PSEUDO, numbered, tok)):
            numbered = _BatchTypes()
            tok = np.fromiter(map(numbered.__getitem__, itertools.chain.from_iterable(sents)),
                              dtype=np.int32, count=n_tokens)
    except TypeError:
        raise ValueError("tokens must be strings") from None
    words = list(numbered)
    try:
        text = "".join(words)
    except TypeError:
        bad = next(word for word in words if not isinstance(word, str))
        raise ValueError(f"tokens must be strings, found {type(bad).__name__} {bad!r}") \
            from None
    return tok, words, text


def _codepoints(text):
    """Unicode code points of ``text`` as a uint32 array (lone surrogates kept)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def window_types(tok_type, offsets, window):
    """Each token's type at offsets ``-window..+window``: (N, 2 * window + 1) int32, with type
    0 before the sentence's first token and 1 after its last."""
    N = tok_type.shape[0]
    if window == 0:          # the token's own type: no per-token temporaries (training peak)
        return np.ascontiguousarray(tok_type.reshape(N, 1), dtype=np.int32)
    lengths = np.diff(offsets)
    seq = np.repeat(np.arange(lengths.shape[0]), lengths)
    start, stop = offsets[:-1][seq], offsets[1:][seq]
    shifts = np.arange(-window, window + 1)
    out = np.empty((N, shifts.shape[0]), dtype=np.int32)
    positions = np.arange(N)
    for i, s in enumerate(shifts.tolist()):
        j = positions + s
        inside = (j >= start) & (j < stop)
        out[:, i] = np.where(inside, tok_type[np.clip(j, 0, max(N - 1, 0))],
                             0 if s < 0 else 1)
    return out


class CharEncoder:
    """Words to character ids over a fixed alphabet.

    Parameters
    ----------
    codepoints : (A,) int
        The alphabet's code points, distinct; character ``codepoints[i]`` gets id
        ``5 + i`` (ids 0-4: unknown character, begin and end of word, before and after the
        sentence), so ``n_chars = A + 5``.
    """

    def __init__(self, codepoints):
        cp = np.asarray(codepoints)
        if cp.ndim != 1 or not (cp.dtype.kind in "iu" or cp.size == 0):
            raise ValueError("CharEncoder: codepoints must be a 1-D integer array")
        cp = np.sort(cp.astype(np.int64))
        if cp.size and (cp[0] < 0 or cp[-1] > _MAX_CODEPOINT or np.any(np.diff(cp) == 0)):
            raise ValueError("CharEncoder: codepoints must be distinct Unicode code points")
        self.codepoints = cp.astype(np.uint32)
        self.n_chars = _N_RESERVED + cp.shape[0]

    @classmethod
    def fit(cls, sents, min_count=2):
        """The alphabet of the characters seen at least ``min_count`` times in ``sents``
        (counted over tokens)."""
        min_count = check_count(min_count, "min_count")
        text = "".join(itertools.chain.from_iterable(sents))
        values, counts = np.unique(_codepoints(text), return_counts=True)
        return cls(values[counts >= min_count])

    def char_ids(self, text):
        """Character ids (int32) of the characters of ``text`` (0 where unknown)."""
        cp = _codepoints(text)
        pos = np.searchsorted(self.codepoints, cp)
        np.minimum(pos, max(self.codepoints.shape[0] - 1, 0), out=pos)
        known = (self.codepoints[pos] == cp) if self.codepoints.size else \
            np.zeros(cp.shape[0], dtype=bool)
        return np.where(known, pos + _N_RESERVED, _UNKNOWN).astype(np.int32)

    def encode(self, sents, window=0):
        """The :class:`WordChars` of a batch of sentences (each distinct word once).

        Returns
        -------
        x : WordChars, N tokens x (2 * window + 1) positions
        offsets : (n+1,) int64
        """
        lengths = np.fromiter(map(len, sents), dtype=np.int64, count=len(sents))
        offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tok, words, text = _map_words(sents, int(offsets[-1]))
        n_words = len(words)
        word_len = np.fromiter(map(len, words), dtype=np.int64, count=n_words)
        type_len = np.concatenate([[1, 1], word_len + 2])
        char_offsets = np.zeros(type_len.shape[0] + 1, dtype=np.int64)
        np.cumsum(type_len, out=char_offsets[1:])
        chars = np.empty(int(char_offsets[-1]), dtype=np.int32)
        chars[0], chars[1] = _BEFORE, _AFTER
        starts = char_offsets[_N_PSEUDO:-1]
        chars[starts] = _BOW
        chars[char_offsets[_N_PSEUDO + 1:] - 1] = _EOW
        # the characters of word i go to starts[i] + 1 ...
        inner = ranges(starts + 1, word_len)
        chars[inner] = self.char_ids(text)
        x = WordChars._from_validated(chars, char_offsets,
                                      window_types(tok, offsets, window),
                                      int(chars.max()) if chars.size else -1)
        return x, offsets

    def to_arrays(self):
        return {"codepoints": self.codepoints.astype(np.int64)}

    @classmethod
    def from_arrays(cls, arrays):
        cp = np.asarray(arrays["codepoints"])
        if cp.dtype != np.int64 or cp.ndim != 1:
            raise ValueError("character front end: codepoints must be a 1-D int64 array")
        return cls(cp)


class _FeaturesAndChars(Sum):
    """``Sum(Sequential(Select(0), SparseLinear), Sequential(Select(1), branch))`` whose
    initial parameters are made in one array: Sum's would concatenate a copy of the sparse
    weights per level of nesting, each the size of the whole model (the training's peak
    memory). The same values: the sparse weights start at zero and draw nothing from ``rng``."""

    def _init(self, rng):
        w = np.zeros(self.n_params)
        w[self.offsets[1]:] = self.modules[1].init_params(rng)
        return w


def _check_options(options):
    unknown = sorted(set(options) - set(CHAR_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown character front-end setting(s) {', '.join(unknown)}; the "
                         f"settings are {', '.join(CHAR_DEFAULTS)}")
    opts = {**CHAR_DEFAULTS, **options}
    check_count(opts["hidden"], "chars['hidden']", 0)
    if opts["activation"] not in ACTIVATIONS:
        raise ValueError(f"chars['activation'] must be one of {', '.join(ACTIVATIONS)}, got "
                         f"{opts['activation']!r}")
    return opts


class CharFrontEnd:
    """The character branch of a tagger: encoder and module (CharCNN, ReLU layer, Linear).

    Parameters
    ----------
    encoder : CharEncoder
    n_states : int, S
    **options : settings of :data:`CHAR_DEFAULTS`

    Attributes
    ----------
    branch : factorebm.modules.Sequential, WordChars (N, 2 * window + 1) -> (N, S)
    options : dict, every setting
    """

    def __init__(self, encoder, n_states, **options):
        self.encoder = encoder
        self.n_states = check_count(n_states, "n_states")
        self.options = opts = _check_options(options)
        cnn = CharCNN(encoder.n_chars, char_dim=opts["char_dim"], widths=tuple(opts["widths"]),
                      n_filters=opts["n_filters"], activation=opts["activation"],
                      highway=opts["highway"], window=opts["window"])
        layers = [cnn]
        width = cnn.n_out
        if opts["hidden"]:
            layers += [OpenMPLinear(width, opts["hidden"]), ReLU()]
            width = opts["hidden"]
        # zero: training starts from the features' energies, the branch adding nothing
        layers.append(OpenMPLinear(width, self.n_states, zero_init=True))
        self.cnn = cnn
        self.branch = Sequential(*layers)
        self.window = cnn.window
        # The branch's parameters are kept divided by step_scale (StepScale): AdaGrad's
        # steps of learning_rate per coordinate suit the sparse weights; on EWT with the
        # features of word, lower case and neighbours only, the CNN learnt to 93.83% dev with
        # half of them, 92.64% with the full steps.
        self.emission_branch = StepScale(self.branch, opts["step_scale"])

    @classmethod
    def fit(cls, sents, n_states, **options):
        """The front end for training sentences ``sents``: their alphabet, fresh modules."""
        opts = _check_options(options)
        return cls(CharEncoder.fit(sents, opts["min_count"]), n_states, **options)

    @property
    def n_params(self):
        return self.branch.n_params

    def emission(self, n_features):
        """The whole emission module over the input ``(features, WordChars)``: the sparse
        features' weights (a row block) first, then the branch's."""
        return _FeaturesAndChars(Sequential(Select(0), SparseLinear(n_features, self.n_states)),
                                 Sequential(Select(1), self.emission_branch))

    def encode(self, sents):
        """The branch's input for ``sents``: a WordChars."""
        return self.encoder.encode(sents, self.window)[0]

    def unary(self, w_branch, sents, n_threads=None):
        """The branch's emission energies (N, S) of ``sents`` for parameters ``w_branch``
        (as the emission stores them: the branch's own divided by ``step_scale``).

        What ``branch.forward`` gives (up to the order of floating-point additions), with the
        first layer after the CNN applied per word type rather than per token: a token's
        input to it is its window's type vectors side by side, so ``x @ A`` is the sum over
        window positions o of ``V[type at o] @ A_o``, and the products ``V @ A_o`` are
        computed once per type (a batch has a few times fewer types than tokens)."""
        x = self.encode(sents)
        if not x.shape[0]:
            return np.zeros((0, self.n_states))
        w_branch = np.asarray(w_branch, dtype=np.float64) * self.emission_branch.scale
        bounds = self.branch.offsets
        ws = [w_branch[bounds[i]:bounds[i + 1]] for i in range(len(self.branch.modules))]
        cnn, first, rest = self.branch.modules[0], self.branch.modules[1], self.branch.modules[2:]
        nt = threads_for(n_threads, x.shape[0])
        V = cnn.type_vectors(ws[0], x, np.arange(x.n_types, dtype=np.int64), nt)
        d, n_out = cnn.n_dim, first.n_out
        A = ws[1][:first.n_in * n_out].reshape(cnn.n_positions, d, n_out)
        h = None
        for pos in range(cnn.n_positions):
            Q = matmul(V, A[pos], n_threads=nt)       # (n_types, n_out)
            rows = np.take(Q, x.token_types[:, pos], axis=0)
            if h is None:
                h = rows
            else:
                h += rows
        h += ws[1][first.n_in * n_out:]        # the bias
        ctx = Context(n_threads, keep=False)
        for m, wm in zip(rest, ws[2:]):
            h = m.forward(wm, h, ctx)
        return h

    # ---------------------------------------------------------------- model files
    def get_config(self):
        """JSON-serializable settings (format version, number of states, every option)."""
        return {"format_version": 1, "n_states": self.n_states, "options": self.options}

    def to_arrays(self):
        """The fitted state as plain arrays: the alphabet's code points."""
        return self.encoder.to_arrays()

    @classmethod
    def from_config_and_arrays(cls, config, arrays):
        if not isinstance(config, dict) or config.get("format_version") != 1:
            raise ValueError("character front end: unknown config format")
        return cls(CharEncoder.from_arrays(arrays), config["n_states"], **config["options"])
