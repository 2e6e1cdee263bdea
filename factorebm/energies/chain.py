"""Chain architectures: any emission module feeding a linear chain, and its learning objective.

The energy of a label sequence y (and latent substates z) of a sequence x is (LeCun et al.
2006, section 6)::

    E(y, z | x) = sum_t U[t, (y_t, z_t)] + sum_t T[s_{t-1}, s_t] + start[s_0] + end[s_last]

with emission energies ``U = emission.fprop(w_emit, x)`` from any module of
:mod:`factorebm.modules` (a linear map of sparse features, a network over characters, a sum of
both) and transition, start and end energies over the chain states s = (y, z). All weights
live in one flat vector: the emission's parameters first, then ``transition`` (S, S),
``start`` (S,) and ``end`` (S,), S = n_labels * n_substates.

Inference is the batched chain kernels (:mod:`factorebm.chain`): E+ is the gold sequence's
energy (latent substates minimized) or its clamped free energy (summed out, NLL); E- the most
offending incorrect sequence, the minimum over all sequences (perceptron) or the free energy.
The loss (:mod:`factorebm.losses`) turns them into dL/dE+ and dL/dE-; the chain gives dL/dU --
gold and offending state indicators per token (a :class:`factorebm.modules.LabelGradient`)
for margin losses, clamped minus free state marginals for the NLL -- and the emission's bprop
brings it to its parameters. One batched kernel call per term, no Python loop over sequences.

Partial labels: a gold label -1 means "unknown"; the NLL then uses the free energy clamped to
the known labels only (the unknown ones summed over).
"""
import threading
import weakref

import numpy as np

from .. import chain
from ..checks import check_labels, check_offsets, threads_for
from ..indexing import part_ranges
from ..modules import Context, LabelGradient, Module, SparseLinear
from ..objective import Batch, BatchObjective, loss_setup, penalized_mean
from ..sparse import CSRFeatures, FactoredFeatures, SequenceGather, prepare_features

__all__ = ["ChainEnergy", "LinearChainEnergy", "ChainCorpus", "ChainObjective",
           "chain_objective", "chain_terms"]

# init_weights draws its symmetry-breaking noise this many weights at a time
_NOISE_SLICE = 1 << 20


class ChainEnergy:
    """A linear chain whose emission energies come from a module: ``U = emission(w_emit, X)``.

    Parameters
    ----------
    emission : factorebm.modules.Module
        Maps the input X (one row per token: sparse features, dense vectors, ...) to the
        (N, S) emission energies, S = n_labels * n_substates.
    n_labels : int
        Number of labels K (>= 1).
    n_substates : int
        Latent states per label H (>= 1): label ``s // H`` for state s (:attr:`state_label`).
        The energy of a label sequence is then the minimum over its state paths (margin
        losses) or its free energy (NLL), as in the tutorial's latent-variable models.

    Attributes
    ----------
    n_states : int, S
    n_emit : int, the emission's parameters (the first entries of w)
    n_weights : int, len(w) = n_emit + S*S + 2*S
    state_label : (S,) int64 or None (no substates)
    """

    def __init__(self, emission, n_labels, n_substates=1):
        if not isinstance(emission, Module):
            raise ValueError(f"emission must be a factorebm.modules.Module, got "
                             f"{type(emission).__name__}")
        for name, v in (("n_labels", n_labels), ("n_substates", n_substates)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.emission = emission
        self.n_labels = int(n_labels)
        self.n_substates = int(n_substates)
        self.n_states = S = self.n_labels * self.n_substates
        if emission.n_out is not None and emission.n_out != S:
            raise ValueError(f"the emission {emission!r} outputs {emission.n_out} columns, the "
                             f"chain has {S} states ({self.n_labels} labels x "
                             f"{self.n_substates} substates)")
        self.state_label = (None if self.n_substates == 1 else
                            np.repeat(np.arange(self.n_labels, dtype=np.int64),
                                      self.n_substates))
        self.n_emit = emission.n_params
        self.n_weights = self.n_emit + S * S + 2 * S
        self._cache = None

    @property
    def n_params(self):
        return self.n_weights

    def __repr__(self):
        sub = f", n_substates={self.n_substates}" if self.n_substates > 1 else ""
        return (f"ChainEnergy({self.emission!r}, n_labels={self.n_labels}{sub}, "
                f"n_weights={self.n_weights})")

    # ---------------------------------------------------------------- weights
    def init_weights(self, random_state=None, scale=0.01):
        """Initial weights (n_weights,) float64: the emission's own initialization and zero
        chain energies; with substates, plus ``scale`` * standard normal noise on every weight
        to break their symmetry (with all-equal substates the gradient keeps them equal)."""
        rng = (random_state if isinstance(random_state, np.random.Generator)
               else np.random.default_rng(random_state))
        w = np.zeros(self.n_weights)
        w[:self.n_emit] = self.emission.init_params(rng)
        if self.n_substates > 1:
            # in slices of a million: the same numbers as one draw of n_weights (the
            # generator's stream does not depend on how it is cut), without a second array
            # of w's size, which glibc may keep (resident) once freed: EWT, 3 substates,
            # 28 MB of the training's peak memory
            for a in range(0, self.n_weights, _NOISE_SLICE):
                noise = rng.standard_normal(min(_NOISE_SLICE, self.n_weights - a))
                noise *= scale
                w[a:a + noise.shape[0]] += noise
        return w

    def check_weights(self, w):
        w = np.asarray(w)
        if w.shape != (self.n_weights,):
            raise ValueError(f"weight vector must have shape ({self.n_weights},) for "
                             f"{self.n_emit} emission parameters and {self.n_states} chain "
                             f"states, got {w.shape}")
        if w.dtype != np.float64 or not w.flags.c_contiguous:
            w = np.ascontiguousarray(w, dtype=np.float64)
        return w

    def unpack(self, w):
        """Views of the flat weights: ``(w_emit (n_emit,), transition (S, S), start (S,),
        end (S,))``; writing through them writes ``w``."""
        w = self.check_weights(w)
        return (w[:self.n_emit], *self.chain_params(w))

    def chain_params(self, w):
        """``(transition (S, S), start (S,), end (S,))`` float64 of flat weights of any float
        type (an ensemble's float32 members): the chain's own weights, which follow the
        emission's; views of ``w`` when it is float64, else widened copies of them only."""
        if np.shape(w) != (self.n_weights,):
            raise ValueError(f"weight vector must have shape ({self.n_weights},), got "
                             f"{np.shape(w)}")
        S = self.n_states
        tail = np.asarray(w[self.n_emit:], dtype=np.float64)
        return tail[:S * S].reshape(S, S), tail[S * S:S * S + S], tail[S * S + S:]

    def pack(self, w_emit, transition, start=None, end=None):
        """Inverse of :meth:`unpack`: the flat (n_weights,) vector."""
        S = self.n_states
        w_emit = np.asarray(w_emit, dtype=np.float64).ravel()
        transition = np.asarray(transition, dtype=np.float64)
        start = np.zeros(S) if start is None else np.asarray(start, dtype=np.float64)
        end = np.zeros(S) if end is None else np.asarray(end, dtype=np.float64)
        for name, a, shape in (("emission weights", w_emit, (self.n_emit,)),
                               ("transition", transition, (S, S)),
                               ("start", start, (S,)), ("end", end, (S,))):
            if a.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        return np.concatenate([w_emit, transition.ravel(), start, end])

    def row_blocks(self):
        """The emission's row blocks (it comes first in w)."""
        return self.emission.row_blocks()

    # ---------------------------------------------------------------- inference
    def check_input(self, X):
        return self.emission.check_input(prepare_features(X))

    def unary(self, w, X, n_threads=None):
        """Emission energies ``U = emission(w_emit, X)``, shape (N, S) float64."""
        w = self.check_weights(w)
        _check_finite(w)
        X = self.check_input(X)
        U = self.emission.forward(w[:self.n_emit], X, Context(n_threads, keep=False))
        return self._check_unary(U, _n_tokens(X))

    def _check_unary(self, U, N):
        if U.shape != (N, self.n_states):
            raise ValueError(f"the emission {self.emission!r} gave energies of shape {U.shape}"
                             f", the chain needs ({N}, {self.n_states})")
        return U

    def predict(self, w, X, offsets, n_threads=None):
        """Minimum-energy label sequences (joint minimum over substates): (N,) int64."""
        _, T, S, E = ChainEnergy.unpack(self, w)
        labels, _ = chain.viterbi(self.unary(w, X, n_threads), T, offsets, S, E,
                                  state_label=self.state_label, n_threads=n_threads)
        return labels

    # ---------------------------------------------------------------- corpus cache
    def _corpus(self, X, offsets, y):
        """The validated corpus, cached between calls on the same X object (whose transpose
        the corpus keeps)."""
        if isinstance(X, ChainCorpus):
            if X.model_key != self._corpus_key():
                raise ValueError("this ChainCorpus was built for a different model shape")
            return X
        # what must be the same objects for the cached corpus to still describe X
        parts = _identity_parts(X)
        c = self._cache
        if (c is not None and parts is not None and c[0]() is X and len(c[1]) == len(parts)
                and all(a is b if isinstance(a, np.ndarray) or hasattr(a, "shape") else a == b
                        for a, b in zip(c[1], parts))
                and np.array_equal(c[2].offsets, offsets) and np.array_equal(c[2].y, y)):
            return c[2]
        corpus = ChainCorpus(self, X, offsets, y)
        try:
            self._cache = (weakref.ref(X), parts, corpus) if parts is not None else None
        except TypeError:      # not weak-referenceable: no caching
            self._cache = None
        return corpus

    def _corpus_key(self):
        return (self.n_emit, self.n_labels, self.n_substates, repr(self.emission))


def _identity_parts(X):
    if isinstance(X, FactoredFeatures):
        return (X.S, X.Phi)
    if isinstance(X, CSRFeatures):
        return (X.X,)
    if hasattr(X, "format") and hasattr(X, "indices"):        # a scipy.sparse matrix
        return (X.data, X.indices, X.nnz)
    if isinstance(X, np.ndarray):
        return (X,)
    return None


def _n_tokens(X):
    """The number of token rows of an emission input."""
    if hasattr(X, "shape"):
        return int(X.shape[0])
    if isinstance(X, (tuple, list)) and X:
        return _n_tokens(X[0])
    if isinstance(X, dict) and X:
        return _n_tokens(next(iter(X.values())))
    raise ValueError(f"cannot tell the number of tokens of an input of type {type(X).__name__}")


def _check_finite(w):
    """ValueError at the first NaN or infinite weight (before any kernel runs)."""
    if not np.isfinite(w).all():
        bad = int(np.flatnonzero(~np.isfinite(w))[0])
        raise ValueError(f"w[{bad}] = {w[bad]} is not finite")


class LinearChainEnergy(ChainEnergy):
    """The linear chain of sparse features: ``ChainEnergy(SparseLinear(n_features, S),
    n_labels, n_substates)``, ``U = X @ W_emit``.

    Weights: ``W_emit`` (n_features, S) row-major, then ``transition`` (S, S), ``start``,
    ``end`` (S,); :meth:`unpack` returns ``W_emit`` as a matrix. Starts from zero weights
    (without substates) or small random ones (with).

    Parameters
    ----------
    n_features : int
        Number of feature columns of the token-feature matrices X.
    n_labels : int
        Number of labels K (>= 1).
    n_substates : int
        Latent states per label H (>= 1).
    """

    def __init__(self, n_features, n_labels, n_substates=1):
        for name, v, lo in (("n_features", n_features, 0), ("n_labels", n_labels, 1),
                            ("n_substates", n_substates, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        super().__init__(SparseLinear(int(n_features), int(n_labels) * int(n_substates)),
                         n_labels, n_substates)
        self.n_features = int(n_features)

    def __repr__(self):
        sub = f", n_substates={self.n_substates}" if self.n_substates > 1 else ""
        return (f"LinearChainEnergy(n_features={self.n_features}, n_labels={self.n_labels}"
                f"{sub}, n_weights={self.n_weights})")

    def unpack(self, w):
        """Views of the flat weights (S = n_labels * n_substates chain states).

        Returns
        -------
        W_emit : (n_features, S) float64
            Emission energy of state k for a unit of feature f.
        transition : (S, S) float64
            Energy of state i followed by state j.
        start, end : (S,) float64
            Energy of the first / last state.
        """
        w_emit, T, S, E = super().unpack(w)
        return w_emit.reshape(self.n_features, self.n_states), T, S, E

    def pack(self, W_emit, transition, start=None, end=None):
        W_emit = np.asarray(W_emit, dtype=np.float64)
        if W_emit.shape != (self.n_features, self.n_states):
            raise ValueError(f"W_emit must have shape {(self.n_features, self.n_states)}, got "
                             f"{W_emit.shape}")
        return super().pack(W_emit, transition, start, end)


# --------------------------------------------------------------------------------------------
class ChainCorpus:
    """A validated training corpus of a :class:`ChainEnergy`, with precomputed indices.

    Built once per corpus (``chain_objective`` caches it on the model for the same X object).

    Attributes
    ----------
    X : the emission's validated input (a CSRFeatures or FactoredFeatures for sparse features)
    offsets : (n+1,) int64
    y : (N,) int64 gold labels (-1: unknown)
    n_sequences, n_tokens : int
    index : _SequenceIndex, token indices of sequence starts, ends and transitions
    """

    def __init__(self, model, X, offsets, y):
        X = model.check_input(X)
        N = _n_tokens(X)
        self.model_key = model._corpus_key()
        self.X = X
        self.offsets = check_offsets(offsets, N)
        self.y = _check_gold(y, N, model.n_labels)
        self.n_sequences = self.offsets.size - 1
        self.n_tokens = N
        self.index = _SequenceIndex(self.offsets)
        self.contexts = threading.local()     # evaluation buffers, see ChainObjective


def _check_gold(y, n_tokens, n_labels, what="y"):
    """Gold labels: ids in 0..n_labels-1, or -1 for an unknown label (partial labelling)."""
    y = np.asarray(y)
    if y.size and np.issubdtype(y.dtype, np.integer) and y.min() < 0:
        if (y < -1).any():
            bad = int(np.flatnonzero(y < -1)[0])
            raise ValueError(f"{what}[{bad}] = {y[bad]} is not a label id in [0, {n_labels}) "
                             "(or -1 for an unknown label)")
        known = check_labels(np.where(y == -1, 0, y), n_tokens, n_labels, what)
        known[y == -1] = -1
        return known
    return check_labels(y, n_tokens, n_labels, what)


class _SequenceIndex:
    """Token indices of a batch of sequences that the chain gradient needs.

    Attributes
    ----------
    offsets : (n+1,) int64
    lengths : (n,) int64
    seq_of_token : (N,) int64, the sequence of each token
    first, last : (n_nonempty,) int64, first / last token of each non-empty sequence
    first_seq : (n_nonempty,) int64, which sequence each entry of ``first`` belongs to
    inner : (N - n_nonempty,) int64, tokens t that have a predecessor t-1 in their sequence
    """

    def __init__(self, offsets):
        self.offsets = offsets
        N = int(offsets[-1])
        self.lengths = lengths = np.diff(offsets)
        self.seq_of_token = np.repeat(np.arange(lengths.size), lengths)
        nonempty = lengths > 0
        self.nonempty = nonempty
        self.first_seq = np.flatnonzero(nonempty)
        self.first = offsets[:-1][nonempty]
        self.last = offsets[1:][nonempty] - 1
        is_first = np.zeros(N, dtype=bool)
        is_first[self.first] = True
        self.inner = np.flatnonzero(~is_first)


# --------------------------------------------------------------------------------------------
def _pair_counts(states, tokens, weights, S):
    """sum over tokens t of weights[t] * onehot(states[t-1], states[t]), shape (S, S)."""
    idx = states[tokens - 1] * S + states[tokens]
    return _bincount(idx, weights, S * S).reshape(S, S)


def _bincount(idx, weights, size):
    # np.bincount returns int64 for empty input even with weights: keep float64 always.
    return np.bincount(idx, weights=weights, minlength=size).astype(np.float64, copy=False)


def chain_terms(U, transition, start, end, y, index, spec, beta, params, n_threads,
                state_label=None):
    """Loss and energy gradients of one batch of sequences: the chain's inference part.

    Parameters
    ----------
    U : (N, S) float64, state energies
    transition : (S, S), start, end : (S,)
    y : (N,) int64, gold labels (-1: unknown, NLL only)
    index : _SequenceIndex of the batch
    spec, params : the loss (:func:`factorebm.objective.loss_setup`)
    beta : float, inverse temperature of free energies
    n_threads : int or None
    state_label : (S,) int64 state -> label, or None (states are labels)

    Returns
    -------
    loss : (n,) per-sequence loss (0 for empty sequences)
    g_trans, g_start, g_end : gradients of sum_i loss_i with respect to the transition, start
        and end energies
    dU : (N, S) float64 array or LabelGradient, the gradient of sum_i loss_i with respect to U
    """
    S = U.shape[1]
    offsets = index.offsets
    n = offsets.size - 1
    N = U.shape[0]
    nonempty = index.nonempty
    kind = spec.e_minus
    unknown = y < 0
    partial = bool(unknown.any())
    if partial and kind != "free_energy":
        raise ValueError(f"unknown gold labels (-1) need a free-energy loss (nll): loss "
                         f"{spec.name!r} compares the gold sequence with the most offending "
                         "one, which an unknown label leaves undefined")
    # E+ and its "beliefs": a state path (energy, latent states minimized) or state marginals
    # and summed pairwise marginals (clamped free energy, latent states summed out).
    if state_label is None and not partial:
        e_plus = chain.sequence_energy(U, transition, offsets, y, start, end)
        plus = ("path", y)
    else:
        states = np.arange(S) if state_label is None else state_label
        gold_mask = states[None, :] == y[:, None]
        if partial:
            gold_mask[unknown] = True
        if kind == "free_energy":
            marg_c, e_plus, pair_c = chain.forward_backward(
                U, transition, offsets, beta, start, end, mask=gold_mask,
                return_pairwise=True, n_threads=n_threads)
            plus = ("soft", marg_c, pair_c)
        else:
            _, e_plus, gold_states = chain.viterbi(U, transition, offsets, start, end,
                                                   mask=gold_mask, return_states=True,
                                                   n_threads=n_threads)
            plus = ("path", gold_states)
    if kind == "free_energy":
        marg, e_minus, pair = chain.forward_backward(U, transition, offsets, beta, start, end,
                                                     return_pairwise=True, n_threads=n_threads)
        minus = ("soft", marg, pair)
    elif kind == "most_offending":
        _, e_minus, other = chain.most_offending(U, transition, offsets, y, start, end,
                                                 state_label=state_label, return_states=True,
                                                 n_threads=n_threads)
        minus = ("path", other)
    elif kind == "min_all":
        _, e_minus, other = chain.viterbi(U, transition, offsets, start, end,
                                          return_states=True, n_threads=n_threads)
        minus = ("path", other)
    else:
        e_minus = None
        minus = None

    loss = np.zeros(n)
    d_plus = np.zeros(n)
    d_minus = np.zeros(n)
    if nonempty.any():
        ep = e_plus[nonempty]
        em = None if e_minus is None else np.asarray(e_minus)[nonempty]
        if em is not None and not np.all(np.isfinite(em)):
            raise ValueError("a non-empty sequence has no incorrect answer of finite energy "
                             "(a single label?); margin losses need at least 2 labels")
        spec.check_energies(ep, em)
        lo, dp, dm = spec(ep, em, **params)
        loss[nonempty] = lo
        d_plus[nonempty] = dp
        d_minus[nonempty] = dm

    g_trans = np.zeros((S, S))
    g_start = np.zeros(S)
    g_end = np.zeros(S)
    paths, path_weights, dense = [], [], None
    for term, d in ((plus, d_plus), (minus, d_minus)):
        if term is None:
            continue
        if term[0] == "path":
            states = np.ascontiguousarray(term[1], dtype=np.int64)
            d_tok = d[index.seq_of_token]
            g_trans += _pair_counts(states, index.inner, d_tok[index.inner], S)
            g_start += _bincount(states[index.first], d[index.first_seq], S)
            g_end += _bincount(states[index.last], d[index.first_seq], S)
            paths.append(states)
            path_weights.append(d_tok)
        else:
            # The pairwise marginals come summed over the batch, so dL/dF must be the same
            # number for every sequence (it is: +-1 for the NLL).
            _, marg_t, pair_t = term
            d_nz = d[nonempty]
            if d_nz.size and not np.all(d_nz == d_nz[0]):
                raise ValueError(f"loss {spec.name!r}: a free-energy loss must have the same "
                                 "dL/dF for every sequence (the pairwise beliefs are summed)")
            c = float(d_nz[0]) if d_nz.size else 0.0
            g_trans += c * pair_t
            g_start += c * marg_t[index.first].sum(axis=0)
            g_end += c * marg_t[index.last].sum(axis=0)
            if dense is None:
                dense = np.multiply(marg_t, c, out=marg_t)   # the kernel's fresh array
            else:
                dense += marg_t * c
    if dense is not None:
        rows = np.arange(N)
        for states, d_tok in zip(paths, path_weights):
            dense[rows, states] += d_tok     # one entry per row: no repeated index
        return loss, g_trans, g_start, g_end, dense
    C = len(paths)
    labels = np.empty((N, C), dtype=np.int64)
    weights = np.empty((N, C))
    for c, (states, d_tok) in enumerate(zip(paths, path_weights)):
        labels[:, c] = states
        weights[:, c] = d_tok
    return loss, g_trans, g_start, g_end, LabelGradient(labels, weights, S)


# --------------------------------------------------------------------------------------------
class ChainObjective(BatchObjective):
    """The batch objective of a :class:`ChainEnergy` on a tagged corpus (units: sequences).

    Parameters
    ----------
    model : ChainEnergy
    X, offsets, y : the corpus (or a ChainCorpus as X, with offsets and y None)
    loss : str or LossSpec
    beta : float, inverse temperature of free energies (and of square_exp unless given)
    **loss_params : passed to the loss
    """

    def __init__(self, model, X, offsets=None, y=None, loss="nll", beta=1.0, **loss_params):
        if not isinstance(model, ChainEnergy):
            raise ValueError(f"expected a ChainEnergy (or LinearChainEnergy), got "
                             f"{type(model).__name__}")
        self.spec, self.params = loss_setup(loss, beta, loss_params)
        self.beta = float(beta)
        self.model = model
        self.corpus = model._corpus(X, offsets, y)
        self.n_params = model.n_weights
        self.n_units = self.corpus.n_sequences
        self._gathers = {}

    def row_blocks(self):
        return self.model.row_blocks()

    def init_params(self, random_state=None):
        return self.model.init_weights(random_state)

    def check_params(self, w):
        return self.model.check_weights(w)

    def _context(self, n_threads):
        # Kept on the corpus, per thread: repeated evaluations of one corpus reuse their
        # (N, S) buffers (a fresh 28 MB array per call at EWT scale costs page faults), and
        # threads evaluating at once must not share them.
        local = self.corpus.contexts
        ctx = getattr(local, "ctx", None)
        if ctx is None:
            ctx = local.ctx = Context(reuse_buffers=True)
        ctx.n_threads = n_threads
        ctx.clear()
        return ctx

    def _evaluate(self, w, X, offsets, y, index, grad_emit, grad_chain, n_threads, ctx):
        """Loss sum of one batch of sequences; adds the gradient into ``grad_emit`` (the
        emission's slice: an array or a GradientView) and ``grad_chain`` ((S*S + 2S,))."""
        model = self.model
        w_emit, T, S, E = ChainEnergy.unpack(model, w)
        U = model._check_unary(model.emission.forward(w_emit, X, ctx), offsets[-1])
        loss_i, g_trans, g_start, g_end, dU = chain_terms(
            U, T, S, E, y, index, self.spec, self.beta, self.params, n_threads,
            model.state_label)
        model.emission.backward(w_emit, dU, grad_emit, ctx)
        k = model.n_states
        grad_chain[:k * k] += g_trans.ravel()
        grad_chain[k * k:k * k + k] += g_start
        grad_chain[k * k + k:] += g_end
        return float(loss_i.sum())

    def value_and_grad(self, w, n_threads=None):
        """Sum of the per-sequence losses over the corpus, and its gradient (n_weights,)."""
        c = self.corpus
        nt = threads_for(n_threads, c.n_tokens)
        grad = np.zeros(self.n_params)
        e = self.model.n_emit
        value = self._evaluate(w, c.X, c.offsets, c.y, c.index, grad[:e], grad[e:], nt,
                               self._context(nt))
        return value, grad

    def unit_value_and_grad(self, w, units, n_threads=None):
        batch = self.batch(units)
        g = self.batch_gradient(batch)
        value = self.batch_value_and_grad(w, batch, g.view(), n_threads)
        return value, g.to_dense()

    def _gather(self, X, seqs, batch_size, y=None):
        """A mini-batch of the emission input: sparse features through a reused
        SequenceGather (LocalRows, and with ``y`` the batch's labels too), arrays by token
        rows, tuples and dicts part by part. Returns ``(input, y_b or None)``."""
        if isinstance(X, (FactoredFeatures, CSRFeatures)):
            g = self._gathers.get(id(X))
            if g is None or g[1] < batch_size:
                g = self._gathers[id(X)] = (SequenceGather(X, self.corpus.offsets, batch_size),
                                            batch_size, X)
            rows, _, y_b = g[0].gather(seqs, y)
            return rows, y_b
        if isinstance(X, np.ndarray):
            return X[self._tokens(seqs)], None
        if isinstance(X, (tuple, list)):
            return type(X)(self._gather(part, seqs, batch_size)[0] for part in X), None
        if isinstance(X, dict):
            return {k: self._gather(v, seqs, batch_size)[0] for k, v in X.items()}, None
        if hasattr(X, "take_tokens"):
            return X.take_tokens(self._tokens(seqs)), None
        raise ValueError(f"cannot cut mini-batches out of an input of type {type(X).__name__};"
                         " give it a take_tokens(token_ids) method")

    def _tokens(self, seqs):
        return part_ranges(self.corpus.offsets, seqs)

    def batch(self, units, batch_size=None):
        """Gather the sequences ``units``: their emission input (sparse features as LocalRows
        with renumbered columns), labels, offsets and the rows of each row block they use."""
        seqs = np.ascontiguousarray(units, dtype=np.int64)
        c = self.corpus
        if seqs.size and (seqs.min() < 0 or seqs.max() >= c.n_sequences):
            raise ValueError(f"sequence ids must lie in 0..{c.n_sequences - 1}")
        Xb, y = self._gather(c.X, seqs, max(batch_size or 0, seqs.shape[0]), c.y)
        offsets = np.zeros(seqs.shape[0] + 1, dtype=np.int64)
        np.cumsum(c.index.lengths[seqs], out=offsets[1:])
        if y is None:
            y = c.y[self._tokens(seqs)]
        rows = self.model.emission.touched_rows(Xb)
        return Batch(seqs, rows, X=Xb, offsets=offsets, y=y, index=_SequenceIndex(offsets))

    def batch_value_and_grad(self, w, batch, grad, n_threads=None, row_values=None):
        # None: a thread team only where the batch's chain work (tokens x states^2) pays
        # for one -- a mini-batch of 32 tagged sentences with 34 states does, a toy one not
        S = self.model.n_states
        nt = threads_for(n_threads, int(batch.offsets[-1]) * S * S, 65536)
        e = self.model.n_emit
        ctx = Context(nt)
        if row_values is not None:
            ctx.row_values = {id(r): v for r, v in zip(batch.rows, row_values)}
        return self._evaluate(w, batch.X, batch.offsets, batch.y, batch.index, grad[:e],
                              grad[e:].dense(), nt, ctx)


def chain_objective(w, model, X, offsets, y, loss="nll", *, l2=0.0, beta=1.0, n_threads=None,
                    **loss_params):
    """Average per-sequence loss over a corpus plus ``0.5 * l2 * ||w||^2``, and its gradient.

    E+ is the gold sequence's energy (latent substates minimized) or, for the NLL, its clamped
    free energy (substates summed out); E- is, by the loss's
    :attr:`~factorebm.losses.LossSpec.e_minus`, the most offending incorrect sequence
    (:func:`factorebm.chain.most_offending`), the Viterbi minimum over all sequences
    (perceptron) or the free energy at inverse temperature ``beta`` (NLL, from
    :func:`factorebm.chain.forward_backward`). The gradient with respect to the emission
    energies is sparse (gold and offending state per token) for margin losses, or the clamped
    minus free marginals for NLL, and reaches the emission's parameters through its bprop
    (for sparse features one parallel product with the cached transpose of X).

    Parameters
    ----------
    w : (n_weights,) float64
        Flat weights of ``model``.
    model : ChainEnergy or LinearChainEnergy
    X : the emission's input (for sparse features: a scipy.sparse (N, n_features) matrix,
        FactoredFeatures), or a ChainCorpus
        The validated corpus is cached on ``model`` while the same X object (not modified in
        place) is passed again.
    offsets : (n+1,) int64
        Sequence i is tokens ``offsets[i]:offsets[i+1]``.
    y : (N,) int64
        Gold label of every token (-1 for an unknown label, with the NLL).
    loss : str or LossSpec
        A loss of :mod:`factorebm.losses`. Losses needing non-negative energies (square_square,
        square_exp, lvq2) are accepted but are meaningless on a log-linear chain whose
        energies can be negative (see the losses' docstrings): when some E+ or E- is
        negative, one RuntimeWarning is emitted per call.
    l2 : float
        L2 penalty ``0.5 * l2 * ||w||^2``.
    beta : float
        Inverse temperature of the free energy (NLL); also passed to losses that take a
        ``beta`` parameter (square_exp) unless given in ``loss_params``.
    n_threads : int or None
        Threads for the kernels; None = all cores, but at most one per 8192 tokens.
    **loss_params
        Passed to the loss (e.g. ``margin=1.0`` for hinge).

    Returns
    -------
    value : float
    grad : (n_weights,) float64
    """
    obj = ChainObjective(model, X, offsets, y, loss, beta, **loss_params)
    w = model.check_weights(w)
    return penalized_mean(obj, w, l2, threads_for(n_threads, obj.corpus.n_tokens),
                          _check_finite)
