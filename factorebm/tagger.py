"""Sequence labeling with a linear-chain energy model: the scikit-learn-style ``SequenceTagger``.

The architecture is the tutorial's linear-chain energy over tags ``y_1..y_T`` of a sentence ``x``::

    E(W, Y, X) = sum_t (phi(x, t) @ W_emit)[y_t] + sum_t W_trans[y_{t-1}, y_t]
                 + W_start[y_1] + W_end[y_T]

with sparse string-template features ``phi`` (:mod:`factorebm.features`). Inference is
``argmin_Y E`` (Viterbi, :func:`factorebm.chain.viterbi`) or the Gibbs distribution
(:func:`factorebm.chain.forward_backward`); learning minimizes one of the tutorial's losses
(:mod:`factorebm.losses`) with :func:`factorebm.optimize.fit_chain`.

References
----------
LeCun et al., "A Tutorial on Energy-Based Learning", 2006, sections 2-3 and 6.
Lafferty et al., "Conditional Random Fields", 2001 (the NLL loss on this architecture).
Collins, "Discriminative Training Methods for Hidden Markov Models", 2002 (the perceptron).
"""
import contextlib
import numbers
import time

import numpy as np

from . import chain, losses
from ._heap import keep_large_blocks_mapped, release_free_heap
from .features import FeatureExtractor
from .checks import check_count, check_front_end, check_real, check_threads, threads_for
from .constraints import constraint_mask, forbid_transitions, observed_transitions
from .datasets.conllu import ConlluSyntaxError, read_document
from .energies.chain import ChainEnergy, LinearChainEnergy   # not via .learning: no graphs
from .estimator import Estimator
from .modelio import load_arrays, save_arrays

MODEL_KIND = "SequenceTagger"

# Losses that make sense on a log-linear chain whose energies can be negative. The others
# (square-square, square-exponential, LVQ2) assume non-negative energies (tutorial, section 2.2).
TAGGER_LOSSES = ("nll", "hinge", "perceptron", "log", "mce")

_PARAM_NAMES = ("loss", "optimizer", "l1", "l2", "max_iter", "batch_size", "learning_rate",
                "features", "min_count", "n_substates", "n_threads", "random_state", "verbose",
                "client")
_PARAM_NAMES += ("transitions", "warm_start", "front_end", "chars", "decode", "ensemble")
# What a model file saved before a setting existed meant by it.
_PARAM_DEFAULTS = {"n_substates": 1, "transitions": "all", "warm_start": False,
                   "front_end": "features", "chars": None, "decode": "viterbi", "ensemble": 1}
# Settings of how a fitted tagger runs, not of how it was trained: load() may replace them.
_RUNTIME_PARAMS = ("n_threads", "verbose", "client", "decode")
# A connection, not a setting: never written to a model file.
_UNSAVED_PARAMS = ("client",)
TRANSITIONS = ("all", "observed")
DECODES = ("viterbi", "marginal")
# Tokens per block of a large batch's Viterbi decoding: its energies (2 MiB for 34 states)
# stay in cache between the emission sums and the decoder.
VITERBI_BLOCK_TOKENS = 8192
# factorebm.optimize.OPTIMIZERS, written out so that tagging does not load the learner
# (tests/test_startup.py checks that the two lists agree)
OPTIMIZERS = ("lbfgs", "sgd", "adagrad", "adam", "perceptron")
# The weights of an ensemble's members, once trained (each is trained in float64): averaging
# M members' marginals does not need float64's digits, and float32 halves the memory that
# training keeps for the finished members, the model file and the tagging's weight reads.
ENSEMBLE_DTYPE = np.float32


class _MemberFile:
    """The finished members of an ensemble being trained, in an anonymous temporary file
    (``tempfile.TemporaryFile``: in TMPDIR, gone when closed or when the process ends).

    Training holds one member's float64 weights and its optimizer state at a time (about
    60 MB on EWT with 3 substates); the finished members, 14.5 MB each in float32, would add
    to that in memory. A context manager: the file is closed on leaving, error or not.
    """

    def __init__(self):
        self._file = None
        self.n_members = 0
        self.n_weights = None

    def __enter__(self):
        import tempfile
        try:
            self._file = tempfile.TemporaryFile(prefix="factorebm-members-")
        except OSError as exc:
            raise _member_file_error(exc) from None
        return self

    def __exit__(self, *exc):
        self._file.close()
        return False

    def append(self, w):
        """Store the finished member ``w`` (n_weights,) as ENSEMBLE_DTYPE."""
        if self.n_weights is None:
            self.n_weights = w.shape[0]
        assert w.shape == (self.n_weights,)
        try:
            self._file.write(np.ascontiguousarray(w, dtype=ENSEMBLE_DTYPE).data)
            self._file.flush()
        except OSError as exc:
            raise _member_file_error(exc) from None
        self.n_members += 1

    def read_into(self, out):
        """Fill ``out`` (n_members, n_weights) ENSEMBLE_DTYPE with the stored members."""
        assert out.shape == (self.n_members, self.n_weights or 0) and out.flags.c_contiguous
        self._file.seek(0)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < view.nbytes:
            n = self._file.readinto(view[got:])
            if not n:
                raise OSError("the temporary file of the ensemble's finished members was cut "
                              "short")
            got += n


def _member_file_error(exc):
    import tempfile
    return OSError(exc.errno, f"training an ensemble keeps its finished members in a temporary "
                   f"file in {tempfile.gettempdir()}, which failed ({exc.strerror or exc}); set "
                   "TMPDIR to a writable folder with room for them (4 bytes per weight each)")


def _check_corpus(sents, tags=None, what="sentences"):
    """Validate ``sents`` (and ``tags``) as lists of lists of strings; return the token count."""
    if isinstance(sents, (str, bytes)) or not hasattr(sents, "__len__"):
        raise ValueError(f"{what} must be a list of sentences, each a list of token strings")
    if tags is not None and len(tags) != len(sents):
        raise ValueError(f"got {len(sents)} sentences but {len(tags)} tag sequences")
    n_tokens = 0
    for i, s in enumerate(sents):
        if isinstance(s, (str, bytes)):
            raise ValueError(f"sentence {i} is a string; expected a list of tokens")
        if tags is not None and len(tags[i]) != len(s):
            raise ValueError(f"sentence {i} has {len(s)} tokens but {len(tags[i])} tags")
        n_tokens += len(s)
    return n_tokens


def _split(flat, offsets):
    """Cut a flat per-token list into per-sentence lists along ``offsets`` (n+1,)."""
    bounds = offsets.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _check_saved_labels(labels):
    """The tag set of a model file: a 1-D array of distinct strings."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind != "U" or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty 1-D string array, got "
                         f"{labels.ndim}-D {labels.dtype}")
    # a set, not np.unique, which imports numpy.ma: a third of the model's loading time
    if len(set(labels.tolist())) != labels.shape[0]:
        raise ValueError("labels holds a tag twice")
    return labels


def _check_saved_coef(coef, ensemble=1, dtype="float64"):
    """The weights of a model file: without NaN or -inf (+inf is a forbidden state and
    allowed); 1-D float64, or one row per member of an ensemble, of the metadata's
    ``coef_dtype`` (float32 since ensembles are stored so; files without it: float64)."""
    coef = np.asarray(coef)
    ndim = 1 if ensemble == 1 else 2
    allowed = ("float64",) if ndim == 1 else ("float64", "float32")
    if not isinstance(dtype, str) or dtype not in allowed:
        raise ValueError(f"coef_dtype must be one of {', '.join(allowed)} for an ensemble of "
                         f"{ensemble}, got {dtype!r}")
    if coef.ndim != ndim or coef.dtype != np.dtype(dtype):
        raise ValueError(f"coef must be a {ndim}-D {dtype} array, got {coef.ndim}-D {coef.dtype}")
    if ndim == 2 and coef.shape[0] != ensemble:
        raise ValueError(f"coef has {coef.shape[0]} rows, not one per member of the ensemble "
                         f"of {ensemble}")
    lowest = coef.min() if coef.size else 0.0     # NaN when any weight is NaN
    if np.isnan(lowest) or lowest == -np.inf:
        raise ValueError("coef holds NaN or -inf weights")
    return np.ascontiguousarray(coef)


def _check_saved_allowed(arrays, transitions, n_labels):
    """The allowed transitions of a model file: None for transitions="all", else a
    (K+1, K+1) bool array."""
    if transitions == "all":
        return None
    if "allowed_transitions" not in arrays:
        raise ValueError(f"transitions={transitions!r} but the file holds no "
                         "allowed_transitions")
    allowed = np.asarray(arrays["allowed_transitions"])
    if allowed.dtype != np.bool_ or allowed.shape != (n_labels + 1, n_labels + 1):
        raise ValueError(f"allowed_transitions must be a ({n_labels + 1}, {n_labels + 1}) bool "
                         f"array, got {allowed.shape} {allowed.dtype}")
    return np.ascontiguousarray(allowed)


def _chain_params(model, w, allowed):
    """``(transition, start, end)`` float64 of one model's weights ``w`` (float32 for an
    ensemble's member: :meth:`ChainEnergy.chain_params`), with the transitions, starts and
    ends never seen in training forbidden (+inf) where ``allowed`` says so
    (``transitions="observed"``)."""
    transition, start, end = model.chain_params(w)
    if allowed is not None:
        transition, start, end = forbid_transitions(transition, start, end, allowed,
                                                    model.state_label)
    return transition, start, end


def _check_feasible(energies, sents, constrained=False, first=0):
    """ValueError naming the first sentence whose best energy (or free energy) is not finite:
    +inf means the model (or the caller's constraints) forbids every tagging of it, and the
    kernels then return label -1, which must never be read as a tag. ``energies`` are those
    of sentences ``first``, ``first + 1``, ... of ``sents`` (a block of the batch)."""
    bad = ~np.isfinite(energies)
    if bad.any():
        k = int(np.argmax(bad))
        i = first + k
        words = " ".join(map(str, sents[i][:8])) + (" ..." if len(sents[i]) > 8 else "")
        which = " that obeys its constraints" if constrained else ""
        raise ValueError(f"sentence {i} ({words!r}) has no tagging of finite energy{which}: "
                         "the model's +inf energies forbid every tag sequence (energy "
                         f"{energies[k]})")


def _encode_tags(tags, n_tokens, loss, known=None):
    """The tag set and tag ids of a training corpus, None meaning an unknown tag.

    Returns
    -------
    labels : (K,) ndarray of str
        The known tags (and those of ``known``, the tag set of a warm-started tagger), sorted.
    y : (N,) int64
        Tag ids, -1 for None.
    """
    flat = [t for ts in tags for t in ts]
    tag_set = set(flat)
    if None in tag_set:
        tag_set.discard(None)
        if losses.get(loss).e_minus != "free_energy":
            i, t = next((i, t) for i, ts in enumerate(tags) for t, x in enumerate(ts)
                        if x is None)
            raise ValueError(f"sentence {i}, position {t}: an unknown tag (None) needs "
                             f"loss='nll', which sums over it; loss {loss!r} compares the "
                             "gold sequence with the most offending one, which an unknown "
                             "tag leaves undefined")
    if known is not None:
        tag_set.update(known.tolist())
    if not tag_set:
        raise ValueError("every tag is None (unknown): fit needs some known tags")
    labels = np.array(sorted(tag_set))
    index = {t: i for i, t in enumerate(labels.tolist())}
    index[None] = -1
    y = np.fromiter(map(index.__getitem__, flat), dtype=np.int64, count=n_tokens)
    return labels, y


def _label_map(labels, old_labels):
    """Position in ``labels`` of each of ``old_labels`` (all of which it holds)."""
    index = {t: i for i, t in enumerate(labels.tolist())}
    return np.array([index[t] for t in old_labels.tolist()], dtype=np.int64)


def _warm_weights(model, warm, labels, column_map, random_state):
    """Initial weights of a warm-started fit: the fitted tagger's weights, moved to their
    features' and tags' new places, and the model's fresh initial weights elsewhere."""
    _, old_model, old_coef, old_labels = warm[:4]
    H = model.n_substates
    states = (_label_map(labels, old_labels)[:, None] * H + np.arange(H)).ravel()
    w0 = model.init_weights(random_state)
    W_emit, transition, start, end = model.unpack(w0)       # views: writing them writes w0
    W_old, transition_old, start_old, end_old = old_model.unpack(old_coef)
    W_emit[np.ix_(column_map, states)] = W_old
    transition[np.ix_(states, states)] = transition_old
    start[states] = start_old
    end[states] = end_old
    return w0


def _allowed_transitions(y, offsets, labels, warm):
    """The transitions seen in training, and those of a warm-started tagger's earlier ones."""
    allowed = observed_transitions(y, offsets, len(labels))
    if warm is not None and warm[4] is not None:
        where = np.append(_label_map(labels, warm[3]), len(labels))
        allowed[np.ix_(where, where)] |= warm[4]
    return allowed


def _progress_line(schedule):
    """What fit prints after each epoch (L-BFGS: iteration): ``epoch 2/4  loss 0.9096  dev
    accuracy 95.13%  57.6 s`` (seconds since the optimizer started)."""
    unit = "iteration" if schedule["optimizer"] == "lbfgs" else "epoch"
    total = schedule["max_iter"]

    def report(row):
        parts = [f"{unit} {row['epoch']:>{len(str(total))}}/{total}", f"loss {row['loss']:.4f}"]
        if "dev_accuracy" in row:
            parts.append(f"dev accuracy {100 * row['dev_accuracy']:.2f}%")
        parts.append(f"{row['time']:.1f} s")
        print("  ".join(parts), flush=True)
    return report


class SequenceTagger(Estimator):
    """Part-of-speech (or any sequence) tagger trained by shaping a linear-chain energy.

    Parameters
    ----------
    loss : str, default "nll"
        A loss of :mod:`factorebm.losses` suited to a log-linear model: "nll" (a CRF), "hinge",
        "perceptron", "log" or "mce". Losses that need non-negative energies are refused.
    optimizer : str or None
        "lbfgs", "sgd", "adagrad" or "perceptron" (averaged). None picks the averaged perceptron
        for the perceptron loss and mini-batch AdaGrad for the others: on EWT it reaches the
        accuracy of 100 L-BFGS iterations in a few epochs, in a fraction of the time.
        "lbfgs" takes only "nll": the other losses use the most offending answer as E-, whose
        ties make L-BFGS stop at its first step, so they raise ValueError.
    l1, l2 : float
        Regularization strengths (``l2=None`` means 1e-5 for AdaGrad, chosen on EWT dev, and
        the optimizer's default otherwise).
    max_iter : int or None
        Iterations (L-BFGS) or epochs (stochastic optimizers); None means 4 epochs of AdaGrad,
        6 of SGD or the perceptron, and 100 L-BFGS iterations.
    batch_size : int or None
        Sentences per mini-batch of the stochastic optimizers (None: 4 for the averaged
        perceptron, 32 for the others).
    learning_rate : float or None
        Step size of the stochastic optimizers (None: 0.2 for AdaGrad, the optimizer's default
        otherwise).
    features : dict or None
        Keyword arguments of :class:`factorebm.features.FeatureExtractor` (templates, window).
    min_count : int, default 2
        Keep features seen at least this many times in training.
    n_substates : int, default 2
        Latent substates per tag (the tutorial's latent variables Z): a tag with H substates
        is H chain states, which refine it (a determiner before a noun, another before an
        adjective, ...). Training sums them out (NLL: E+ is the free energy of the substate
        paths of the gold tags) or minimizes them (margin losses); decoding returns the tags
        of the jointly best (tags, substates) path (see ``decode``). 1 is a plain linear-chain
        CRF. On EWT dev (NLL, 4 AdaGrad epochs, min_count 2): 94.72% with 1, 95.16% with 2,
        95.28% with 3, training in 2.5, 4.1 and 6.0 s; 3 needs more memory than CRFsuite
        (170 MiB).
    decode : {"viterbi", "marginal"}, default "viterbi"
        How :meth:`predict` chooses the tags. "viterbi": the tags of the minimum-energy
        (tags, substates) path. "marginal": each token's most probable tag under the Gibbs
        distribution, its substates summed out (the answer of least expected Hamming loss,
        the tutorial's free-energy view of latent variables); with ``transitions="observed"``
        or constraints, the sequence of highest summed log-marginals among those allowed.
        Slower (forward-backward instead of Viterbi) and more accurate with latent
        substates: on EWT dev +0.09 point on average over 6 seeds with 2 substates.
        A runtime setting: ``load(path, decode=...)`` may change it.
    ensemble : int, default 1
        Train this many models on the same features, each from its own random start
        (``random_state``, ``random_state + 1``, ...), one after the other; they predict
        together by averaging their tag marginals (``decode`` is then "marginal"). The
        latent substates make the models differ. Costs ``ensemble`` times the training
        time and about that the tagging time (every member's emissions come from one pass
        over the features, their forward-backward passes from one kernel call, a block of
        sentences at a time); the members are trained in float64 and kept in float32
        (``coef_``, the model file), the finished ones in a temporary file (TMPDIR) while the
        next trains, so that memory holds one member's training at a time. On EWT, 3
        substates and 4 members reach 95.53% dev and 95.67% test (one model of 2
        substates: 95.16% and 95.20%).
    front_end : {"features", "features+chars"}
        What turns the words into emission energies (:mod:`factorebm.front_end`): the sparse
        features alone, or plus a character CNN branch trained jointly with the chain.
    chars : dict or None
        Settings of the character branch (:data:`factorebm.front_end.CHAR_DEFAULTS`).
    n_threads : int or None
        Threads for the kernels; None uses every core.
    random_state : int
        Seed of the stochastic optimizers.
    verbose : bool
        Print one progress line per epoch (L-BFGS: iteration): the loss, the dev accuracy
        with ``dev=``, and the seconds since the optimizer started.
    transitions : {"all", "observed"}, default "all"
        "observed": a tag transition never seen in training (and a tag never seen first or
        last in a sentence) gets +inf energy when tagging, so that, say, BIO output never
        has ``I-X`` after ``O``. Training is unchanged (its gold sequences obey the rule); a
        bigram with an unknown (None) tag is not seen.
    warm_start : bool, default False
        ``fit`` on a fitted tagger continues from its weights: features first seen in the
        new data (at least ``min_count`` times there) and new tags (new chain states) are
        added, with fresh weights, and the others keep their values. The optimizer's own
        state (AdaGrad's accumulated squares) starts afresh. ``n_substates`` and
        ``features`` must be those of the fitted tagger.
    client : dask.distributed.Client or None
        Train on this Dask cluster (:mod:`factorebm.distributed`): the training sentences
        are split into shards held by the workers; the model is the one local training gives,
        to rounding. Features are extracted here. Not saved with the model.
    **loss_params
        Passed to the loss (e.g. ``margin=`` for hinge).

    Attributes
    ----------
    labels_ : ndarray of str, shape (K,)
        The tag set, sorted; columns of :meth:`predict_marginals` follow this order.
    coef_ : ndarray of float64, shape (n_weights,), or of float32, (ensemble, n_weights)
        The flat weight vector of :class:`factorebm.learning.LinearChainEnergy`; one row per
        member of an ensemble, each trained in float64 and stored in float32 (files written
        before that hold float64 ensembles, which load as they are).
    feature_extractor_ : FeatureExtractor
    history_ : list
        Per-iteration progress records of the optimizer.
    allowed_transitions_ : ndarray of bool, shape (K+1, K+1), or None
        With ``transitions="observed"``: ``[i, j]`` tag i may be followed by tag j, row K:
        may start a sentence, column K: may end one (:mod:`factorebm.constraints`).
    """

    _PARAM_NAMES = _PARAM_NAMES

    def __init__(self, loss="nll", *, optimizer=None, l1=0.0, l2=None, max_iter=None,
                 batch_size=None, learning_rate=None, features=None, min_count=2,
                 n_substates=2, n_threads=None, random_state=0, verbose=True,
                 transitions="all", warm_start=False, front_end="features", chars=None,
                 decode="viterbi", ensemble=1, client=None,
                 **loss_params):
        self.loss = loss
        self.optimizer = optimizer
        self.l1 = l1
        self.l2 = l2
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.features = features
        self.min_count = min_count
        self.n_substates = n_substates
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose
        self.transitions = transitions
        self.warm_start = warm_start
        self.front_end = front_end
        self.chars = chars
        self.decode = decode
        self.ensemble = ensemble
        self.client = client
        self.loss_params = dict(loss_params)
        self._check_params()

    # ------------------------------------------------------------------ parameters
    def _check_params(self):
        """Raise ValueError naming the first bad hyper-parameter (called by ``__init__``,
        ``fit`` and ``load``): a value that would train nothing (``max_iter=0``), diverge
        (``l1=inf``) or poison the weights with NaN is refused before any work."""
        self._check_loss()
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be None or one of {', '.join(OPTIMIZERS)}; got "
                             f"{self.optimizer!r}")
        check_real(self.l1, "l1")
        check_real(self.l2, "l2", optional=True)
        check_count(self.max_iter, "max_iter", optional=True)
        check_count(self.batch_size, "batch_size", optional=True)
        check_real(self.learning_rate, "learning_rate", optional=True, positive=True)
        check_count(self.min_count, "min_count")
        check_count(self.n_substates, "n_substates")
        check_threads(self.n_threads)
        if not (isinstance(self.transitions, str) and self.transitions in TRANSITIONS):
            raise ValueError(f"transitions must be one of {', '.join(map(repr, TRANSITIONS))}, "
                             f"got {self.transitions!r}")
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise ValueError(f"warm_start must be True or False, got {self.warm_start!r}")
        check_front_end(self.front_end)
        if not (isinstance(self.decode, str) and self.decode in DECODES):
            raise ValueError(f"decode must be one of {', '.join(map(repr, DECODES))}, got "
                             f"{self.decode!r}")
        check_count(self.ensemble, "ensemble")
        if self.warm_start and self.ensemble != 1:
            raise ValueError("warm_start continues one model: it takes ensemble=1")
        if self.chars is not None and not isinstance(self.chars, dict):
            raise ValueError(f"chars must be None or a dict of character-branch settings, got "
                             f"{type(self.chars).__name__}")
        rs = self.random_state
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, numbers.Integral)
                               or rs < 0):
            raise ValueError(f"random_state must be None or an integer >= 0, got {rs!r}")
        if self.features is not None:
            if not isinstance(self.features, dict):
                raise ValueError("features must be None or a dict of FeatureExtractor "
                                 f"arguments, got {type(self.features).__name__}")
            try:
                FeatureExtractor(**self.features)
            except TypeError as exc:
                raise ValueError(f"features: {exc}") from None
        spec = losses.get(self.loss)
        unknown = sorted(set(self.loss_params) - set(spec.params))
        if unknown:
            takes = (f"takes only {', '.join(spec.params)}" if spec.params
                     else "takes no parameters")
            raise ValueError(f"unknown parameter(s) {', '.join(map(repr, unknown))}: loss "
                             f"{self.loss!r} {takes}")
        if self.loss_params:
            # the loss checks its own parameters (finite and > 0) on a dummy call
            spec.func(np.zeros(1), np.zeros(1), **self.loss_params)

    def _check_loss(self):
        if self.loss not in TAGGER_LOSSES:
            try:
                spec = losses.get(self.loss)
            except (KeyError, ValueError):
                raise ValueError(f"unknown loss {self.loss!r}; the tagger takes one of "
                                 f"{', '.join(TAGGER_LOSSES)}") from None
            why = ("it needs non-negative energies, which a log-linear chain does not have"
                   if getattr(spec, "needs_nonnegative", False) else
                   "it does not train a log-linear chain (see the tutorial, section 2.2)")
            raise ValueError(f"loss {self.loss!r} cannot train a SequenceTagger: {why}; "
                             f"use one of {', '.join(TAGGER_LOSSES)}")

    def _training_schedule(self):
        """Optimizer settings for fit_chain: the user's, else the tagger's measured defaults."""
        optimizer = self.optimizer or ("perceptron" if self.loss == "perceptron" else "adagrad")
        if optimizer == "lbfgs" and losses.get(self.loss).e_minus not in ("free_energy", None):
            # E- = min over (incorrect) answers is only piecewise linear in the weights; at the
            # all-zero start every answer ties and L-BFGS's line search fails at iteration 0,
            # which would return an all-zero model (see optimize.default_optimizer).
            raise ValueError(f"optimizer='lbfgs' cannot train loss {self.loss!r}: its E- is the "
                             "most offending answer, whose ties at the all-zero start make the "
                             "line search fail; use optimizer='adagrad' or loss='nll'")
        stochastic = optimizer != "lbfgs"
        schedule = {
            "optimizer": optimizer,
            # 4 AdaGrad epochs: EWT dev accuracy (2 substates) is at its best after 3 or 4,
            # 94.95 / 95.13 / 95.19 / 95.16 / 95.13 / 95.07% after epochs 1-6 (one substate:
            # flat from 3 on)
            "max_iter": self.max_iter if self.max_iter is not None else (
                (4 if optimizer == "adagrad" else 6) if stochastic else 100),
            # 1e-5 for AdaGrad: chosen on EWT dev (94.85% against 94.80% at fit_chain's 1e-4;
            # 3e-6 to 3e-5 are as good, 1e-3 loses a point).
            "l2": self.l2 if self.l2 is not None else (1e-5 if optimizer == "adagrad" else None),
            # The averaged perceptron wants (nearly) per-sentence updates (Collins 2002): on 400
            # EWT sentences 89.5% dev against 79.0% with batches of 32 (the same epochs). On all
            # of EWT batches of 4 match batches of 1 (94.63% / 94.58% dev) in 7.7 s, not 25.5 s.
            "batch_size": self.batch_size if self.batch_size is not None else (
                (4 if optimizer == "perceptron" else 32) if stochastic else None),
            "learning_rate": self.learning_rate if self.learning_rate is not None else (
                0.2 if optimizer == "adagrad" else None),
        }
        return {k: v for k, v in schedule.items() if v is not None}

    # ------------------------------------------------------------------ fitting
    def fit(self, sents, tags, dev=None):
        """Learn the tagger from tokenized sentences and their tags.

        Parameters
        ----------
        sents : list of list of str
        tags : list of list of str, same shape as ``sents``
        dev : (sents, tags) or None
            Held-out data whose token accuracy is reported with the progress lines.
        """
        self._check_params()
        from .optimize import fit_chain
        # Blocks of 2 MiB and more mapped separately from here on (process-wide; not where the
        # user set glibc's malloc): freed ones are returned, not kept resident (factorebm._heap)
        keep_large_blocks_mapped()
        n_substates = check_count(self.n_substates, "n_substates")
        n_tokens = _check_corpus(sents, tags)
        if n_tokens == 0:
            raise ValueError("cannot fit a tagger on zero tokens")
        t0 = time.perf_counter()
        # Everything fitted is built in locals and installed at the end: a fit that raises
        # (bad data, KeyboardInterrupt) leaves a fitted tagger as it was, still usable.
        warm = self._warm_state(n_substates)
        labels, y = _encode_tags(tags, n_tokens, self.loss, None if warm is None else warm[3])
        index = {t: i for i, t in enumerate(labels.tolist())}

        schedule = self._training_schedule()
        # The corpus is kept factored, X = S @ Phi (FeatureExtractor.factored_transform):
        # 2.5 times fewer nonzeros than X itself. L-BFGS multiplies through the factors (two
        # to three times faster than through X), and the mini-batch optimizers gather their
        # batches' rows of X through them.
        if warm is None:
            fx = FeatureExtractor(**(self.features or {}))
            X, offsets = fx.fit_transform(sents, self.min_count, factored=True)
        else:
            fx, column_map = warm[0].extended(sents, self.min_count)
            X, offsets = fx.factored_transform(sents)
        chars = None
        if self.front_end == "features":
            model = LinearChainEnergy(fx.n_features_, len(labels), n_substates)
        else:
            from .front_end import CharFrontEnd
            chars = CharFrontEnd.fit(sents, len(labels) * n_substates, **(self.chars or {}))
            model = ChainEnergy(chars.emission(fx.n_features_), len(labels), n_substates)
            X = (X, chars.encode(sents))
        w0 = (None if warm is None else
              _warm_weights(model, warm, labels, column_map, self.random_state))
        allowed = (None if self.transitions == "all" else
                   _allowed_transitions(y, offsets, labels, warm))
        if self.verbose:
            print(f"factorebm: {len(sents)} sentences, {n_tokens} tokens, "
                  f"{fx.n_features_} features, {len(labels)} tags "
                  f"(features in {time.perf_counter() - t0:.1f} s)", flush=True)

        callback = None
        if dev is not None:
            dev_sents, dev_tags = dev
            _check_corpus(dev_sents, dev_tags, what="dev sentences")
            Xd, od = fx.transform(dev_sents)
            if chars is not None:
                Xd = (Xd, chars.encode(dev_sents))
            # -2 for a tag unseen in training: no prediction (not even -1) matches it
            yd = np.array([index.get(t, -2) for ts in dev_tags for t in ts], dtype=np.int64)

            def callback(w, epoch):
                pred = model.predict(w, Xd, od, n_threads=self.n_threads)
                return {"dev_accuracy": float(np.mean(pred == yd)) if len(yd) else float("nan")}

        kwargs = dict(self.loss_params)
        kwargs.update(schedule)
        n_members = self.ensemble
        # An ensemble's finished members wait in a temporary file while the next one trains,
        # so that its weights and optimizer state are never resident next to theirs.
        finished = _MemberFile() if n_members > 1 else contextlib.nullcontext()
        try:
            with finished:
                history = []
                for m in range(n_members):
                    if self.verbose and n_members > 1:
                        print(f"member {m + 1}/{n_members}", flush=True)
                    # the members differ only by their random start, which the latent
                    # substates turn into different models
                    seed = None if self.random_state is None else self.random_state + m
                    w, h = fit_chain(model, X, offsets, y, loss=self.loss, l1=self.l1, w0=w0,
                                     callback=callback,
                                     verbose=self.verbose and _progress_line(schedule),
                                     n_threads=self.n_threads, random_state=seed,
                                     client=self.client, **kwargs)
                    if n_members == 1:
                        coef, history = np.ascontiguousarray(w, dtype=np.float64), h
                        continue
                    history.extend({**row, "member": m} for row in h)
                    # the member's optimizer state (its AdaGrad accumulators, as large as w)
                    # is free now but kept by glibc: given back first
                    release_free_heap()
                    if m < n_members - 1:
                        finished.append(w)
                    else:
                        # the last member goes straight into its row, and w is freed before
                        # the others are read back
                        coef = np.empty((n_members, w.shape[0]), ENSEMBLE_DTYPE)
                        coef[m] = w
                        del w
                        release_free_heap()
                        finished.read_into(coef[:m])
                    w = None
        finally:
            # The model caches the validated training corpus (X and its transpose) for
            # repeated objective calls; a fitted tagger must not keep the corpus alive.
            model._cache = None
        self.labels_ = labels
        self.feature_extractor_ = fx
        self.model_ = model
        self.coef_ = coef
        self.allowed_transitions_ = allowed
        self.char_front_end_ = chars
        self.history_ = history
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _warm_state(self, n_substates):
        """The fitted state that a warm-started fit continues from, or None (cold start)."""
        if not self.warm_start or not hasattr(self, "coef_"):
            return None
        fitted = self._fitted_state()
        fx, model = fitted[0], fitted[1]
        if fitted[2].ndim != 1:
            raise ValueError("warm_start continues one model, and this tagger is an ensemble; "
                             "fit with warm_start=False")
        if self.front_end != "features" or fitted[5] is not None:
            raise ValueError("warm_start continues a front_end='features' tagger only (the "
                             "character front end's weights are not extended); fit with "
                             "warm_start=False")
        if model.n_substates != n_substates:
            raise ValueError(f"warm_start: the fitted tagger has {model.n_substates} "
                             f"substate(s) per tag, n_substates is now {n_substates}; set it "
                             "back or fit with warm_start=False")
        if FeatureExtractor(**(self.features or {})).templates != fx.templates:
            raise ValueError("warm_start: features (the feature templates) differ from those "
                             "of the fitted tagger; set them back or fit with "
                             "warm_start=False")
        return fitted

    # ------------------------------------------------------------------ inference
    def _check_fitted(self):
        if not hasattr(self, "coef_"):
            raise ValueError("this SequenceTagger is not fitted yet: call fit() or load()")

    def _fitted_state(self):
        """``(feature_extractor_, model_, coef_, labels_, allowed_transitions_,
        char_front_end_)``, read together: a call that reads them once sees one fitted state,
        even while another thread fits."""
        self._check_fitted()
        return (self.feature_extractor_, self.model_, self.coef_, self.labels_,
                getattr(self, "allowed_transitions_", None),
                getattr(self, "char_front_end_", None))

    @staticmethod
    def _constraint_mask(sents, constraints, fitted):
        """The (N, S) state mask of ``constraints`` (validated), or None."""
        if constraints is None:
            return None
        _check_corpus(sents)
        return constraint_mask(constraints, [len(x) for x in sents], fitted[3],
                               fitted[1].state_label)

    def energies(self, sents):
        """The chain energies of ``sents``.

        Returns
        -------
        unary : (N, S) float64, energy of each chain state at each token
        transition : (S, S) float64, energy of state i followed by state j
        start, end : (S,) float64
        offsets : (n+1,) int64, sentence i is rows offsets[i]:offsets[i+1]

        The states are the tags (S = K) or, with ``n_substates = H``, the substates of the
        tags: state s belongs to tag ``s // H`` (``model_.state_label``). With
        ``transitions="observed"`` the transitions, starts and ends never seen in training
        are +inf.
        """
        return self._energies(sents)[:5]

    def _energies(self, sents, fitted=None):
        """:meth:`energies` plus the model and tag set they were computed with (each read
        once, so a call sees one fitted state: ``fitted``, from :meth:`_fitted_state`, when
        the caller read it already) and the number of threads to use."""
        fitted = fitted or self._fitted_state()
        n_tokens = _check_corpus(sents)
        fx, model, coef, labels, allowed, chars = fitted
        if coef.ndim != 1:
            raise ValueError(f"an ensemble of {coef.shape[0]} models has no single energy: "
                             "energies, predict_kbest and explain need a tagger fitted with "
                             "ensemble=1")
        n_threads = threads_for(self.n_threads, n_tokens)
        S = model.n_states
        n_sparse = fx.n_features_ * S      # the sparse features' W_emit comes first in coef
        # X @ W_emit without building X: summed once per word type present, then per token
        unary, offsets = fx.emissions(sents, coef[:n_sparse].reshape(-1, S), n_threads=n_threads)
        if chars is not None:              # plus the character branch, once per word type
            unary += chars.unary(coef[n_sparse:model.n_emit], sents, n_threads=n_threads)
        return (unary, *_chain_params(model, coef, allowed), offsets, model, labels, n_threads)

    def _viterbi(self, sents, constraints=None, interned=None):
        """The tags :meth:`predict` answers (by ``decode``): ``(labels (N,) int64 tag ids,
        offsets, labels_)``; ValueError when a sentence has no finite-energy tagging."""
        fitted = self._fitted_state()
        if self.decode == "marginal" or fitted[2].ndim != 1:
            return self._max_marginals(sents, constraints, fitted, interned)
        mask = self._constraint_mask(sents, constraints, fitted)
        if fitted[5] is None:
            return self._viterbi_blocks(sents, mask, fitted, interned)
        unary, transition, start, end, offsets, model, labels, n_threads = \
            self._energies(sents, fitted)
        tag_ids, energies = chain.viterbi(unary, transition, offsets, start, end, mask=mask,
                                          state_label=model.state_label, n_threads=n_threads)
        _check_feasible(energies, sents, mask is not None)
        return tag_ids, offsets, labels

    def _viterbi_blocks(self, sents, mask, fitted, interned=None):
        """:meth:`_viterbi` of a ``front_end="features"`` model a block of sentences at a time
        (:meth:`FeatureExtractor.emission_blocks`, which takes ``interned``): each block's
        energies are decoded while in cache, and a large batch never holds all of them (the
        same answer)."""
        n_tokens = _check_corpus(sents)
        fx, model, coef, labels, allowed, _ = fitted
        S = model.n_states
        transition, start, end = _chain_params(model, coef, allowed)
        n_threads = threads_for(self.n_threads, n_tokens)
        offsets, blocks = fx.emission_blocks(sents, coef[:fx.n_features_ * S].reshape(-1, S),
                                             VITERBI_BLOCK_TOKENS, n_threads, interned)
        tag_ids = np.empty(offsets[-1], dtype=np.int64)
        for first, last, unary in blocks:
            a, b = offsets[first], offsets[last]
            tag_ids[a:b], energies = chain.viterbi(
                unary, transition, offsets[first:last + 1] - a, start, end,
                mask=None if mask is None else mask[a:b], state_label=model.state_label,
                n_threads=n_threads)
            _check_feasible(energies, sents, mask is not None, first)
        return tag_ids, offsets, labels

    def predict(self, sents, constraints=None):
        """Tag each sentence with its minimum-energy tag sequence: list of list of str.

        Parameters
        ----------
        sents : list of list of str
        constraints : None or list of (dict or None)
            One entry per sentence: ``{position: tag}`` forces a tag, ``{position: set (or
            list) of tags}`` allows only those; the answer is the best tag sequence that obeys
            them, exactly (every substate of an allowed tag stays allowed).

        Raises ValueError when the model (or the constraints) forbids every tagging of a
        sentence (its +inf energies leave no finite path), rather than returning a made-up
        answer, and on a bad constraint (naming its sentence, position and tag).
        """
        tag_ids, offsets, labels = self._viterbi(sents, constraints)
        # one str object per tag, shared: three times faster than labels[tag_ids].tolist(),
        # which makes a new one per token
        return _split(list(map(labels.tolist().__getitem__, tag_ids.tolist())), offsets)

    def predict_marginals(self, sents, beta=1.0, constraints=None):
        """Per-token tag probabilities under the Gibbs distribution at inverse temperature beta.

        With ``constraints`` (as in :meth:`predict`), the distribution is conditioned on them:
        the probabilities of the tag sequences that obey them, renormalized.

        Returns
        -------
        list of ndarray
            One (T_i, K) float64 array per sentence (T_i its tokens, K the tags), columns in
            ``labels_`` order; each row sums to 1.
        """
        marginals, offsets = self._tag_marginals(sents, beta, constraints,
                                                 self._fitted_state())[:2]
        return _split(marginals, offsets)

    def _tag_marginals(self, sents, beta, constraints, fitted):
        """``(marginals (N, K), offsets)``: the tag marginals of every token (substates summed
        out), averaged over the members of an ensemble."""
        mask = self._constraint_mask(sents, constraints, fitted)
        offsets, blocks, labels = self._marginal_blocks(sents, beta, mask, fitted)
        parts = [marginals for _, _, marginals in blocks]
        marginals = (parts[0] if len(parts) == 1 else
                     np.concatenate(parts) if parts else np.empty((0, len(labels))))
        return marginals, offsets

    def _marginal_blocks(self, sents, beta, mask, fitted, interned=None):
        """``(offsets, blocks, labels_)``: the tag marginals of a batch, a block of sentences
        at a time; ``blocks`` yields ``(first, last, marginals)`` for sentences ``first`` to
        ``last - 1``: their tokens' tag marginals (their tokens, K), averaged over an
        ensemble's members. A sentence that the model (any member) cannot tag, its free energy
        +inf, raises ValueError when its block comes.

        An ensemble of the features front end runs by blocks of about VITERBI_BLOCK_TOKENS /
        M tokens (:meth:`FeatureExtractor.member_emission_blocks`, which takes ``interned``):
        its M x N x S energies are never held at once, and each block's stay in cache for the
        forward-backward. One model, or the character front end, is one block.
        """
        constrained = mask is not None
        fx, model, coef, labels, allowed, chars = fitted
        if coef.ndim == 1:
            unary, transition, start, end, offsets, model, labels, n_threads = \
                self._energies(sents, fitted)
            marginals, free_energies = chain.forward_backward(
                unary, transition, offsets, beta, start, end, mask=mask,
                state_label=model.state_label, n_threads=n_threads)
            _check_feasible(free_energies, sents, constrained)
            return offsets, iter([(0, len(sents), marginals)]), labels
        n_threads = threads_for(self.n_threads, _check_corpus(sents))
        S = model.n_states
        M = coef.shape[0]
        transition, start, end = np.empty((M, S, S)), np.empty((M, S)), np.empty((M, S))
        for m in range(M):
            transition[m], start[m], end[m] = _chain_params(model, coef[m], allowed)
        if chars is None:
            offsets, emissions = fx.member_emission_blocks(
                sents, coef, S, max(VITERBI_BLOCK_TOKENS // M, 1), n_threads, interned)
        else:
            # the character branch adds each member's energies, once per word type
            n_sparse = fx.n_features_ * S
            unary, offsets = fx.member_emissions(sents, coef, S, n_threads=n_threads)
            for m in range(M):
                unary[m] += chars.unary(coef[m, n_sparse:model.n_emit], sents,
                                        n_threads=n_threads)
            emissions = iter([(0, len(sents), unary)])

        def blocks():
            for first, last, unary in emissions:
                a, b = offsets[first], offsets[last]
                marginals, free_energies = chain.ensemble_marginals(
                    unary, transition, offsets[first:last + 1] - a, beta, start, end,
                    mask=None if mask is None else mask[a:b], state_label=model.state_label,
                    n_threads=n_threads)
                _check_feasible(free_energies.max(axis=0), sents, constrained, first)
                yield first, last, marginals
        return offsets, blocks(), labels

    def _max_marginals(self, sents, constraints, fitted, interned=None):
        """``decode="marginal"`` (and every ensemble): each token's most probable tag; where
        transitions are forbidden (``transitions="observed"``), the allowed sequence of highest
        summed log-marginals (a Viterbi pass over the tags, with zero transition energies).
        Block by block (:meth:`_marginal_blocks`)."""
        mask = self._constraint_mask(sents, constraints, fitted)
        offsets, blocks, labels = self._marginal_blocks(sents, 1.0, mask, fitted, interned)
        allowed = fitted[4]
        K = len(labels)
        if allowed is not None:
            transition, start, end = forbid_transitions(np.zeros((K, K)), np.zeros(K),
                                                        np.zeros(K), allowed)
            n_threads = threads_for(self.n_threads, int(offsets[-1]))
        tag_ids = np.empty(offsets[-1], dtype=np.int64)
        for first, last, marginals in blocks:
            a, b = offsets[first], offsets[last]
            if allowed is None:
                # a constraint's forbidden tags have probability 0, so the argmax obeys it
                tag_ids[a:b] = marginals.argmax(axis=1)
                continue
            with np.errstate(divide="ignore"):
                unary = -np.log(marginals)
            tag_ids[a:b], energies = chain.viterbi(
                unary, transition, offsets[first:last + 1] - a, start, end,
                n_threads=n_threads)
            _check_feasible(energies, sents, mask is not None, first)
        return tag_ids, offsets, labels

    def score(self, sents, tags):
        """Token accuracy in [0, 1] of :meth:`predict` against ``tags``."""
        n_tokens = _check_corpus(sents, tags)
        if n_tokens == 0:
            raise ValueError("cannot score zero tokens")
        tag_ids, _, labels = self._viterbi(sents)
        index = {t: i for i, t in enumerate(labels.tolist())}
        gold = np.fromiter((index.get(t, -1) for ts in tags for t in ts), dtype=np.int64,
                           count=n_tokens)
        return float(np.mean(tag_ids == gold))

    def predict_kbest(self, sents, k, constraints=None):
        """The k lowest-energy tag sequences of each sentence, best first (exact).

        The energy of a tag sequence is the minimum over its latent substate paths; the
        answers are distinct tag sequences (:func:`factorebm.chain.kbest` over labels).

        Parameters
        ----------
        sents : list of list of str
        k : int
            How many sequences per sentence, >= 1.
        constraints : None or list of (dict or None)
            As in :meth:`predict`.

        Returns
        -------
        list of list of (list of str, float)
            Per sentence, up to k ``(tags, energy)`` pairs with ascending energies (fewer
            when the sentence has fewer finite-energy tag sequences; one, ``([], 0.0)``, for
            an empty sentence).
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        fitted = self._fitted_state()
        mask = self._constraint_mask(sents, constraints, fitted)
        unary, transition, start, end, offsets, model, labels, n_threads = \
            self._energies(sents, fitted)
        paths, energies = chain.kbest(unary, transition, offsets, int(k), start, end,
                                      mask=mask, state_label=model.state_label,
                                      n_threads=n_threads)
        _check_feasible(energies[0], sents, mask is not None)
        found = np.isfinite(energies).sum(axis=0).tolist()
        ranked = [_split(labels[np.maximum(p, 0)].tolist(), offsets)
                  for p in paths[:max(found, default=0)]]
        energies = energies.T.tolist()
        return [[(ranked[r][i], energies[i][r]) for r in range(m)]
                for i, m in enumerate(found)]

    def explain(self, words):
        """Why the tagger tags a sentence as it does: the parts of its energy, per token.

        The energy of the predicted tags (of their best substate path, with latent
        substates) is the sum over tokens of the emission energies of the token's features
        for its state, plus the transition energies (the start energy at the first token)
        and the end energy at the last.

        Parameters
        ----------
        words : list of str
            One sentence.

        Returns
        -------
        list of dict, one per token
            ``"tag"`` (str); ``"substate"`` (int, 0 without substates); ``"emission"``: list
            of ``(feature name, energy)`` for every feature of the token, lowest energy (most
            in favour of the tag) first; ``"transition"`` (float): the energy of the
            transition from the previous token's state, or the start energy at the first
            token; and at the last token ``"end"`` (float). All of them add up to the
            sentence's energy, ``min E`` (:meth:`energies`, :func:`factorebm.chain.viterbi`).
            With ``front_end="features+chars"`` the character branch's energy is one more
            emission entry, named ``"<chars>"``.
        """
        if isinstance(words, (str, bytes)) or not hasattr(words, "__len__"):
            raise ValueError("explain takes one sentence: a list of token strings")
        sents = [words]
        fitted = self._fitted_state()
        fx, model, coef, chars = fitted[0], fitted[1], fitted[2], fitted[5]
        unary, transition, start, end, offsets, _, labels, _ = self._energies(sents, fitted)
        _, energy, states = chain.viterbi(unary, transition, offsets, start, end,
                                          return_states=True, n_threads=1)
        _check_feasible(energy, sents)
        X, _ = fx.transform(sents)
        S = model.n_states
        W_emit = coef[:fx.n_features_ * S].reshape(-1, S)
        char_unary = (None if chars is None else
                      chars.unary(coef[fx.n_features_ * S:model.n_emit], sents, n_threads=1))
        names = fx.feature_names_
        H = model.n_substates
        states = states.tolist()
        parts = []
        for t, s in enumerate(states):
            cols = X.indices[X.indptr[t]:X.indptr[t + 1]]
            contrib = X.data[X.indptr[t]:X.indptr[t + 1]] * W_emit[cols, s]
            order = np.lexsort((cols, contrib))
            emission = [(names[c], e) for c, e in zip(cols[order].tolist(),
                                                      contrib[order].tolist())]
            if char_unary is not None:
                emission.append(("<chars>", float(char_unary[t, s])))
                emission.sort(key=lambda item: item[1])
            parts.append({
                "tag": str(labels[s // H]), "substate": s % H,
                "emission": emission,
                "transition": float(start[s] if t == 0 else transition[states[t - 1], s]),
            })
        if parts:
            parts[-1]["end"] = float(end[states[-1]])
        return parts

    # ------------------------------------------------------------------ model files
    def save(self, path):
        """Write the fitted tagger to ``path`` (numpy .npz + JSON metadata; no pickle, atomic)."""
        self._check_fitted()
        arrays = {"coef": self.coef_, "labels": self.labels_.astype(str)}
        allowed = getattr(self, "allowed_transitions_", None)
        if allowed is not None:
            arrays["allowed_transitions"] = allowed
        for key, value in self.feature_extractor_.to_arrays().items():
            arrays["features." + key] = value
        params = self.get_params()
        params["verbose"] = bool(params["verbose"])
        params["warm_start"] = bool(params["warm_start"])
        # the ensemble that was fitted, whatever ensemble says now
        params["ensemble"] = 1 if self.coef_.ndim == 1 else int(self.coef_.shape[0])
        for name in _UNSAVED_PARAMS:
            params.pop(name, None)
        metadata = {"params": params, "feature_config": self.feature_extractor_.get_config()}
        if self.coef_.ndim == 2:       # a file without it holds float64 weights
            metadata["coef_dtype"] = str(self.coef_.dtype)
        chars = getattr(self, "char_front_end_", None)
        # the front end that was fitted, whatever front_end says now
        params["front_end"] = "features" if chars is None else "features+chars"
        if chars is not None:
            for key, value in chars.to_arrays().items():
                arrays["chars." + key] = value
            metadata["char_config"] = chars.get_config()
        save_arrays(path, arrays, metadata, kind=MODEL_KIND)

    @classmethod
    def load(cls, path, **params):
        """Read a tagger written by :meth:`save`. Never unpickles: an untrusted file runs no code.

        Parameters
        ----------
        path : str or os.PathLike
        **params
            Settings that replace the saved ones, e.g. ``n_threads=4`` or ``verbose=False``:
            the saved values are only defaults (a model trained with ``n_threads=2`` can tag
            with every core of another machine).
        """
        unknown = sorted(set(params) - set(_RUNTIME_PARAMS))
        if unknown:
            raise ValueError(f"load() can override only {', '.join(_RUNTIME_PARAMS)}, not "
                             f"{', '.join(unknown)} (the other settings describe the training)")
        if "n_threads" in params:
            check_threads(params["n_threads"])      # the caller's error, not the file's
        arrays, metadata = load_arrays(path, kind=MODEL_KIND)
        try:
            saved = metadata["params"]
            if not isinstance(saved, dict):
                raise ValueError("params is not a JSON object")
            saved = dict(saved)
            for key, value in _PARAM_DEFAULTS.items():    # files written before key existed
                saved.setdefault(key, value)
            params = {**saved, **params}
            loss_params = {k: params.pop(k) for k in list(params) if k not in _PARAM_NAMES}
            # __init__ validates every setting, the saved n_threads among them
            tagger = cls(**params, **loss_params)
            feature_arrays = {k[len("features."):]: v for k, v in arrays.items()
                              if k.startswith("features.")}
            fx = FeatureExtractor.from_config_and_arrays(metadata["feature_config"],
                                                         feature_arrays, copy=False)
            labels = _check_saved_labels(arrays["labels"])
            coef = _check_saved_coef(arrays["coef"], tagger.ensemble,
                                     metadata.get("coef_dtype", "float64"))
            chars = None
            if check_front_end(tagger.front_end) != "features":
                from .front_end import CharFrontEnd
                chars = CharFrontEnd.from_config_and_arrays(
                    metadata["char_config"],
                    {k[len("chars."):]: v for k, v in arrays.items() if k.startswith("chars.")})
            # the expected size from Python integers, before anything of that size is made
            n_states = len(labels) * tagger.n_substates
            n_weights = (fx.n_features_ * n_states + (0 if chars is None else chars.n_params)
                         + n_states * n_states + 2 * n_states)
            if coef.shape[-1] != n_weights:
                raise ValueError(f"weight vector has shape {coef.shape}, expected "
                                 f"{n_weights} weights for {len(labels)} tags with "
                                 f"{tagger.n_substates} substate(s) each")
            model = (LinearChainEnergy(fx.n_features_, len(labels), tagger.n_substates)
                     if chars is None else
                     ChainEnergy(chars.emission(fx.n_features_), len(labels),
                                 tagger.n_substates))
            allowed = _check_saved_allowed(arrays, tagger.transitions, len(labels))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid SequenceTagger model ({exc})") from None
        tagger.feature_extractor_ = fx
        tagger.labels_ = labels
        tagger.model_ = model
        tagger.coef_ = coef
        tagger.allowed_transitions_ = allowed
        tagger.char_front_end_ = chars
        return tagger

    def __repr__(self):
        return f"SequenceTagger(loss={self.loss!r})"


def tag_document(tagger, source, format="auto"):
    """Read a document and tag it: ``(document, codes, labels)``, a :class:`~factorebm.
    datasets.ConlluDocument`, the tag id of each word (N,) and the tag set;
    ``document.write_codes(out, codes, labels)`` writes the result. Reading, tagging and
    writing run over flat arrays (no list of tags per sentence).

    Parameters
    ----------
    tagger : SequenceTagger (fitted)
    source : str, os.PathLike or binary file object (CoNLL-U or plain text, maybe gzipped)
    format : {"auto", "conllu", "text"}
    """
    try:
        document = read_document(source, format=format)
    except ConlluSyntaxError as exc:
        if format != "auto":
            raise
        raise ValueError(f"{exc} (read as CoNLL-U because its first token line has 10 "
                         "tab-separated columns; use --format text for plain text)") from None
    codes, _, labels = tagger._viterbi(document.forms, interned=document._interned)
    return document, codes, labels.tolist()


def comments_only(document, format):
    """True for a document read as CoNLL-U by ``format="auto"`` that holds comments and no
    word: probably plain text whose lines all start with '#'."""
    return format == "auto" and document.n_words == 0 and document.n_comment_lines > 0
