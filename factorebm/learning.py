"""Architectures whose energies are linear in the weights, and the learning objective.

The tutorial's recipe (LeCun et al. 2006, sections 1-6): an architecture maps weights W to
energies, inference finds E+ (the correct answer) and E- (the most offending incorrect answer,
the minimum over all answers, or the free energy), a loss of :mod:`factorebm.losses` turns them
into ``(L, dL/dE+, dL/dE-)``, and the chain rule brings the gradient back to W.

Two architectures live here:

* :class:`ParametricGraph` -- any :class:`factorebm.FactorGraph` whose concatenated, flattened
  factor tables are ``tables = Phi @ w + offset`` with ``Phi`` a scipy.sparse matrix: weights
  can be tied across factors and across graphs (templates). The gradient is
  ``dL/dw = Phi^T dL/dtables`` with ``dL/dtables = dL/dE+ * b+ + dL/dE- * b-``, where ``b+`` and
  ``b-`` are the belief tables of E+ and E-: 0/1 indicators of the configuration for an energy
  (min-sum, latent variables minimized), the factor beliefs for a free energy (sum-product;
  clamped beliefs for the correct answer with latent variables summed out). See
  :func:`graph_objective`.
* :class:`LinearChainEnergy` -- a linear-chain tagger: emission energies ``U = X @ W_emit``
  for a sparse token-feature matrix X, plus transition, start and end energies, all in one flat
  weight vector. :func:`chain_objective` evaluates the whole corpus with two sparse products
  and one batched chain-kernel call (no Python loop over sentences).

Both objectives are ``mean_i L(E+_i, E-_i) + 0.5 * l2 * ||w||^2``; L1 is handled by the
optimizers (:mod:`factorebm.optimize`) because it is not differentiable.
"""
import weakref

import numpy as np
import scipy.sparse as sp

from . import losses as _losses
from .checks import check_labels, check_offsets, threads_for

__all__ = ["LinearChainEnergy", "chain_objective", "FactoredFeatures", "ParametricGraph",
           "graph_objective", "tied_phi"]


def _check_csr(X, n_features, what="X"):
    """Return X as a CSR matrix of float64 with matching int32/int64 indptr and indices."""
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"{what} must be a 2-D (tokens x features) matrix, got shape "
                             f"{X.shape}")
        X = sp.csr_matrix(X)
    if X.format != "csr":
        X = X.tocsr()
    if X.shape[1] != n_features:
        raise ValueError(f"{what} has {X.shape[1]} feature columns, the model has "
                         f"{n_features}")
    if X.dtype != np.float64:
        X = X.astype(np.float64)
    X = _kernel_index_dtypes(X)
    if X.nnz and not np.all(np.isfinite(X.data)):
        raise ValueError(f"{what} contains NaN or infinite feature values")
    return X


def _is_binary_data(data):
    """True for the data of a binary CSR matrix stored without an array of ones.

    Indicator features can be given as a CSR matrix whose ``data`` is the read-only view
    ``np.broadcast_to(1.0, (nnz,))`` (stride 0, no memory): the mini-batch optimizers then
    never allocate the (nnz,) float64 ones, the largest array of a tagging corpus.
    """
    return (data.ndim == 1 and data.shape[0] > 1 and data.strides[0] == 0
            and data[0] == 1.0)


def _dense_data(X):
    """``X.data`` for the product kernels: contiguous, or empty for binary data (the kernels
    read an empty data array as all ones)."""
    return np.empty(0) if _is_binary_data(X.data) else np.ascontiguousarray(X.data)


def _kernel_index_dtypes(M):
    """CSR ``M`` with indptr and indices of one dtype, int32 or int64, as the kernels take them
    (int64 where they differ)."""
    if M.indices.dtype != M.indptr.dtype or M.indices.dtype not in (np.int32, np.int64):
        M = sp.csr_matrix((M.data, M.indices.astype(np.int64), M.indptr.astype(np.int64)),
                          shape=M.shape)
    return M


def _binary_csr(M, name):
    """``M`` as CSR with matching int32/int64 index arrays, checked to hold only ones."""
    if not sp.issparse(M):
        raise ValueError(f"{name} must be a scipy.sparse matrix, got {type(M).__name__}")
    M = _kernel_index_dtypes(M.tocsr())
    if M.nnz and not (_is_binary_data(M.data) or np.all(M.data == 1.0)):
        raise ValueError(f"{name} must be binary: every stored value 1")
    return M


def _csr_transpose(M):
    return _kernel_index_dtypes(M.T.tocsr())


class FactoredFeatures:
    """A binary token x feature matrix kept as the product ``X = S @ Phi``.

    Tagging features are features of the word *types* around a token
    (:mod:`factorebm.features`): ``Phi`` (n_slots, n_features) holds the features of each
    (word type, template group) slot and ``S`` (N, n_slots) says which slots each token has,
    one per group. Then ``X @ W = S @ (Phi @ W)`` and ``X^T @ G = Phi^T @ (S^T @ G)``, and with
    far fewer slots than tokens (EWT train: about 90,000 slots for 204,577 tokens and 4.5
    million nonzeros of X) both products touch the large (n_features, K) tables a few times
    less often than X itself would. :func:`chain_objective` and
    :meth:`LinearChainEnergy.unary` take it wherever they take X; the stochastic optimizers
    use :meth:`tocsr`. Built by :meth:`factorebm.features.FeatureExtractor.factored_transform`.

    Parameters
    ----------
    S : scipy.sparse (N, n_slots), every stored value 1
    Phi : scipy.sparse (n_slots, n_features), every stored value 1
    """

    def __init__(self, S, Phi):
        self.S = _binary_csr(S, "S")
        self.Phi = _binary_csr(Phi, "Phi")
        if self.S.shape[1] != self.Phi.shape[0]:
            raise ValueError(f"S has {self.S.shape[1]} columns but Phi has {self.Phi.shape[0]} "
                             "rows (one per slot)")
        self._ST = None
        self._PhiT = None
        self._gather = None

    @property
    def shape(self):
        return (self.S.shape[0], self.Phi.shape[1])

    @property
    def n_slots(self):
        return self.Phi.shape[0]

    def __repr__(self):
        return (f"FactoredFeatures({self.shape[0]} tokens x {self.shape[1]} features through "
                f"{self.n_slots} slots)")

    def tocsr(self):
        """X itself: (N, n_features) CSR float64 of ones, sorted indices."""
        X = (self.S @ self.Phi).tocsr()
        X.sort_indices()
        return X

    def row_nnz(self):
        """(N,) int64: the number of nonzeros of each row of X."""
        per_slot = np.diff(self.Phi.indptr).astype(np.int64)
        c = np.zeros(self.S.nnz + 1, dtype=np.int64)
        np.cumsum(per_slot[self.S.indices], out=c[1:])
        return c[self.S.indptr[1:]] - c[self.S.indptr[:-1]]

    def gather_arrays(self):
        """S's and Phi's CSR arrays as the mini-batch gather reads them (cached):
        ``(S.indptr int64, S.indices int32, Phi.indptr int64, Phi.indices int32)``."""
        if self._gather is None:
            self._gather = tuple(a.astype(t, copy=False) for a, t in (
                (self.S.indptr, np.int64), (self.S.indices, np.int32),
                (self.Phi.indptr, np.int64), (self.Phi.indices, np.int32)))
        return self._gather

    def _transposes(self):
        if self._ST is None:
            self._ST = _csr_transpose(self.S)
            self._PhiT = _csr_transpose(self.Phi)
        return self._ST, self._PhiT

    def _dense(self, a, shape, name, writable=False):
        """``a`` checked to be a C-contiguous float64 array of ``shape`` (kernels trust it)."""
        if not (isinstance(a, np.ndarray) and a.dtype == np.float64 and a.flags.c_contiguous
                and a.shape == shape and (a.flags.writeable or not writable)):
            got = (f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__)
            raise ValueError(f"{name} must be a C-contiguous{' writable' if writable else ''} "
                             f"float64 array of shape {shape}, got {got}")
        return a

    def _work(self, work, K):
        if work is None:
            return np.empty((self.n_slots, K))
        return self._dense(work, (self.n_slots, K), "work", writable=True)

    def matmul(self, W, out, n_threads=1, work=None):
        """``out`` (N, K) = X @ W for W (n_features, K); ``work``: optional (n_slots, K) scratch."""
        from . import _sparse
        K = W.shape[1] if isinstance(W, np.ndarray) and W.ndim == 2 else -1
        self._dense(W, (self.shape[1], K), "W")
        self._dense(out, (self.shape[0], K), "out", writable=True)
        P = self._work(work, K)
        _sparse.csr_dense_matmul(self.Phi.indptr, self.Phi.indices, _NO_DATA, W, P, n_threads)
        _sparse.csr_dense_matmul(self.S.indptr, self.S.indices, _NO_DATA, P, out, n_threads)
        return out

    def rmatmul(self, G, out, n_threads=1, work=None):
        """``out`` (n_features, K) = X^T @ G for G (N, K) dense."""
        from . import _sparse
        K = G.shape[1] if isinstance(G, np.ndarray) and G.ndim == 2 else -1
        self._dense(G, (self.shape[0], K), "G")
        self._dense(out, (self.shape[1], K), "out", writable=True)
        ST, PhiT = self._transposes()
        A = self._work(work, K)
        _sparse.csr_dense_matmul(ST.indptr, ST.indices, _NO_DATA, G, A, n_threads)
        _sparse.csr_dense_matmul(PhiT.indptr, PhiT.indices, _NO_DATA, A, out, n_threads)
        return out

    def rmatmul_labels(self, labels, weights, out, n_threads=1, work=None):
        """``out`` (n_features, K) = X^T @ G for G given by C (label, weight) pairs per token
        (as :func:`factorebm._sparse.csr_t_label_scatter`)."""
        from . import _sparse
        K = out.shape[1] if isinstance(out, np.ndarray) and out.ndim == 2 else -1
        self._dense(out, (self.shape[1], K), "out", writable=True)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[0] != self.shape[0] or weights.shape != labels.shape:
            raise ValueError(f"labels and weights must both have shape ({self.shape[0]}, C), got "
                             f"{labels.shape} and {weights.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= K):
            raise ValueError(f"labels must lie in 0..{K - 1}")
        ST, PhiT = self._transposes()
        A = self._work(work, K)
        _sparse.csr_t_label_scatter(ST.indptr, ST.indices, _NO_DATA, labels, weights, A,
                                    n_threads)
        _sparse.csr_dense_matmul(PhiT.indptr, PhiT.indices, _NO_DATA, A, out, n_threads)
        return out


_NO_DATA = np.empty(0)      # the kernels' "every stored value is 1"


def _check_features(X, n_features, what="X"):
    """:func:`_check_csr`, or a :class:`FactoredFeatures` checked for its width."""
    if isinstance(X, FactoredFeatures):
        if X.shape[1] != n_features:
            raise ValueError(f"{what} has {X.shape[1]} feature columns, the model has "
                             f"{n_features}")
        return X
    return _check_csr(X, n_features, what)


# --------------------------------------------------------------------------------------------
# Chains
# --------------------------------------------------------------------------------------------
class LinearChainEnergy:
    """Linear-chain architecture: ``E(y, X) = sum_t U[t, y_t] + sum_t T[y_{t-1}, y_t] +
    start[y_0] + end[y_last]`` with emission energies ``U = X @ W_emit``.

    With ``n_substates = H > 1`` every label has H latent chain states (state s has label
    ``s // H``, see :attr:`state_label`); the energy of a label sequence is then the minimum
    over its state paths (margin losses) or its free energy (NLL), as in the tutorial's latent
    variable models. Start from non-symmetric weights (e.g. small random ones): with all-equal
    substates the gradient keeps them equal.

    All weights live in ONE flat float64 vector ``w`` of length :attr:`n_weights`, laid out as
    ``W_emit`` (n_features, S) row-major, then ``transition`` (S, S), ``start`` (S,),
    ``end`` (S,), with S = n_labels * n_substates chain states; :meth:`unpack` returns views
    into it, so an optimizer can update the flat vector and the views follow.

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
        n_features = int(n_features)
        n_labels = int(n_labels)
        n_substates = int(n_substates)
        if n_features < 0:
            raise ValueError(f"n_features must be >= 0, got {n_features}")
        if n_labels < 1:
            raise ValueError(f"n_labels must be >= 1, got {n_labels}")
        if n_substates < 1:
            raise ValueError(f"n_substates must be >= 1, got {n_substates}")
        self.n_features = n_features
        self.n_labels = n_labels
        self.n_substates = n_substates
        self.n_states = S = n_labels * n_substates
        self.state_label = (None if n_substates == 1 else
                            np.repeat(np.arange(n_labels, dtype=np.int64), n_substates))
        self.n_emit = n_features * S
        self.n_weights = self.n_emit + S * S + 2 * S
        self._cache = None

    def __repr__(self):
        sub = f", n_substates={self.n_substates}" if self.n_substates > 1 else ""
        return (f"LinearChainEnergy(n_features={self.n_features}, n_labels={self.n_labels}"
                f"{sub}, n_weights={self.n_weights})")

    def init_weights(self, random_state=None, scale=0.01):
        """Initial weights, shape (n_weights,) float64: zeros without substates; with
        substates small random values (``scale`` * standard normal) to break their symmetry."""
        if self.n_substates == 1:
            return np.zeros(self.n_weights)
        w = np.random.default_rng(random_state).standard_normal(self.n_weights)
        w *= scale      # in place: w is the model's largest array
        return w

    def check_weights(self, w):
        w = np.asarray(w)
        if w.shape != (self.n_weights,):
            raise ValueError(f"weight vector must have shape ({self.n_weights},) for "
                             f"{self.n_features} features and {self.n_states} chain states, "
                             f"got {w.shape}")
        if w.dtype != np.float64 or not w.flags.c_contiguous:
            w = np.ascontiguousarray(w, dtype=np.float64)
        return w

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
        w = self.check_weights(w)
        S = self.n_states
        e = self.n_emit
        return (w[:e].reshape(self.n_features, S), w[e:e + S * S].reshape(S, S),
                w[e + S * S:e + S * S + S], w[e + S * S + S:])

    def pack(self, W_emit, transition, start=None, end=None):
        """Inverse of :meth:`unpack`: the flat (n_weights,) vector."""
        S = self.n_states
        W_emit = np.asarray(W_emit, dtype=np.float64)
        transition = np.asarray(transition, dtype=np.float64)
        start = np.zeros(S) if start is None else np.asarray(start, dtype=np.float64)
        end = np.zeros(S) if end is None else np.asarray(end, dtype=np.float64)
        for name, a, shape in (("W_emit", W_emit, (self.n_features, S)),
                               ("transition", transition, (S, S)),
                               ("start", start, (S,)), ("end", end, (S,))):
            if a.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        return np.concatenate([W_emit.ravel(), transition.ravel(), start, end])

    def unary(self, w, X, n_threads=None):
        """Emission energies ``U = X @ W_emit``, shape (N, S) float64 (S = K without substates).

        Parameters
        ----------
        w : (n_weights,) float64
        X : scipy.sparse matrix (N, n_features), CSR preferred (float64 data, int32 or int64
            indices; other forms are converted), or :class:`FactoredFeatures`
        n_threads : int or None
            OpenMP threads for the product; None = all cores (or ``OMP_NUM_THREADS``).
        """
        from . import _sparse
        W_emit = self.unpack(w)[0]
        X = _check_features(X, self.n_features)
        out = np.empty((X.shape[0], self.n_states))
        nt = threads_for(n_threads, X.shape[0])
        if isinstance(X, FactoredFeatures):
            return X.matmul(W_emit, out, nt)
        _sparse.csr_dense_matmul(X.indptr, X.indices, _dense_data(X), W_emit, out, nt)
        return out

    def predict(self, w, X, offsets, n_threads=None):
        """Minimum-energy label sequences (joint minimum over substates): (N,) int64."""
        from . import chain
        _, T, S, E = self.unpack(w)
        labels, _ = chain.viterbi(self.unary(w, X, n_threads), T, offsets, S, E,
                                  state_label=self.state_label, n_threads=n_threads)
        return labels

    def _corpus(self, X, offsets, y):
        """The validated corpus with the transpose of X cached between calls on the same X."""
        if isinstance(X, ChainCorpus):
            if X.model_shape != (self.n_features, self.n_labels):
                raise ValueError("this ChainCorpus was built for a different model shape")
            return X
        # what must be the same objects for the cached corpus to still describe X
        parts = ((X.S, X.Phi) if isinstance(X, FactoredFeatures) else
                 (X.data, X.indices, X.nnz) if sp.issparse(X) else None)
        c = self._cache
        if (c is not None and parts is not None and c[0]() is X and len(c[1]) == len(parts)
                and all(a is b if isinstance(a, (np.ndarray, sp.spmatrix)) else a == b
                        for a, b in zip(c[1], parts))
                and np.array_equal(c[2].offsets, offsets) and np.array_equal(c[2].y, y)):
            return c[2]
        corpus = ChainCorpus(self, X, offsets, y)
        try:
            self._cache = (weakref.ref(X), parts, corpus) if parts is not None else None
        except TypeError:  # not weak-referenceable: no caching
            self._cache = None
        return corpus


class ChainCorpus:
    """A validated training corpus for :class:`LinearChainEnergy`, with precomputed indices.

    Built once per corpus (``chain_objective`` caches it on the model for the same X object):
    the CSR transpose of X (so the gradient product gives each thread its own output rows)
    and the token indices of sequence starts, ends and transitions.

    Attributes
    ----------
    X : (N, n_features) CSR float64, or :class:`FactoredFeatures`
    XT : (n_features, N) CSR float64, the transpose of a CSR X (built on first use)
    offsets : (n+1,) int64
    y : (N,) int64 gold labels
    lengths : (n,) int64
    seq_of_token : (N,) int64, the sequence of each token
    first, last : (n_nonempty,) int64, first / last token of each non-empty sequence
    first_seq : (n_nonempty,) int64, which sequence each entry of ``first`` belongs to
    inner : (N - n_nonempty,) int64, tokens t that have a predecessor t-1 in their sequence
    """

    def __init__(self, model, X, offsets, y):
        X = _check_features(X, model.n_features)
        N = X.shape[0]
        self.model_shape = (model.n_features, model.n_labels)
        self.X = X
        self._XT = None
        self.offsets = check_offsets(offsets, N)
        self.y = check_labels(y, N, model.n_labels)
        self.n_sequences = self.offsets.size - 1
        self.n_tokens = N
        self.lengths = np.diff(self.offsets)
        self.seq_of_token = np.repeat(np.arange(self.n_sequences), self.lengths)
        nonempty = self.lengths > 0
        self.first_seq = np.flatnonzero(nonempty)
        self.first = self.offsets[:-1][nonempty]
        self.last = self.offsets[1:][nonempty] - 1
        is_first = np.zeros(N, dtype=bool)
        is_first[self.first] = True
        self.inner = np.flatnonzero(~is_first)
        self._buffers = {}

    @property
    def XT(self):
        """(n_features, N) CSR float64, the transpose of X, built on first use: only full-batch
        gradients need it, and it is as large as X itself."""
        if self._XT is None:
            self._XT = _csr_transpose(self.X)
        return self._XT

    def emissions(self, W_emit, out, n_threads):
        """``out`` (N, K) = X @ W_emit."""
        from . import _sparse
        X = self.X
        if isinstance(X, FactoredFeatures):
            return X.matmul(W_emit, out, n_threads,
                            self._workspace("slots", (X.n_slots, W_emit.shape[1])))
        _sparse.csr_dense_matmul(X.indptr, X.indices, _dense_data(X), W_emit, out, n_threads)
        return out

    def emission_gradient(self, emit, out, n_threads):
        """``out`` (n_features, K) = X^T @ G, G the gradient with respect to the emission
        energies: ``("dense", G (N, K))`` or ``("labels", labels (N, C), weights (N, C))``."""
        from . import _sparse
        X = self.X
        if isinstance(X, FactoredFeatures):
            work = self._workspace("slots", (X.n_slots, out.shape[1]))
            if emit[0] == "dense":
                return X.rmatmul(emit[1], out, n_threads, work)
            return X.rmatmul_labels(emit[1], emit[2], out, n_threads, work)
        XT = self.XT
        if emit[0] == "dense":
            _sparse.csr_dense_matmul(XT.indptr, XT.indices, XT.data, emit[1], out, n_threads)
        else:
            _sparse.csr_t_label_scatter(XT.indptr, XT.indices, XT.data, emit[1], emit[2], out,
                                        n_threads)
        return out

    def _workspace(self, name, shape):
        """A float64 scratch array owned by this corpus (contents undefined)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape:
            buf = self._buffers[name] = np.empty(shape)
        return buf


def _pair_counts(labels, tokens, weights, K):
    """sum over tokens t of weights[t] * onehot(labels[t-1], labels[t]), shape (K, K)."""
    idx = labels[tokens - 1] * K + labels[tokens]
    return _bincount(idx, weights, K * K).reshape(K, K)


def _bincount(idx, weights, size):
    # np.bincount returns int64 for empty input even with weights: keep float64 always.
    return np.bincount(idx, weights=weights, minlength=size).astype(np.float64, copy=False)


def _chain_terms(U, transition, start, end, offsets, y, first, last, first_seq, inner,
                 seq_of_token, spec, beta, params, n_threads, chain, state_label=None):
    """Loss and energy-gradient pieces for one batch of sequences.

    ``U`` (N, S) are state energies; ``y`` (N,) gold labels; ``state_label`` (S,) maps states
    to labels (None: states are labels).

    Returns
    -------
    loss : (n,) per-sequence loss (0 for empty sequences)
    g_trans, g_start, g_end : gradients of sum_i loss_i with respect to the transition, start
        and end energies
    emit : ("labels", states (N, C) int64, weights (N, C)) or ("dense", G (N, S)): the gradient
        of sum_i loss_i with respect to U
    """
    S = U.shape[1]
    n = offsets.size - 1
    N = U.shape[0]
    nonempty = np.diff(offsets) > 0
    kind = spec.e_minus
    gold_mask = None if state_label is None else (state_label[None, :] == y[:, None])
    # E+ and its "beliefs": a state path (energy, latent states minimized) or state marginals
    # and summed pairwise marginals (clamped free energy, latent states summed out).
    if state_label is None:
        e_plus = chain.sequence_energy(U, transition, offsets, y, start, end)
        plus = ("path", y)
    elif kind == "free_energy":
        marg_c, e_plus, pair_c = chain.forward_backward(
            U, transition, offsets, beta, start, end, mask=gold_mask, return_pairwise=True,
            n_threads=n_threads)
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
        spec.check_energies(ep, em, stacklevel=4)
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
            d_tok = d[seq_of_token]
            g_trans += _pair_counts(states, inner, d_tok[inner], S)
            g_start += _bincount(states[first], d[first_seq], S)
            g_end += _bincount(states[last], d[first_seq], S)
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
            g_start += c * marg_t[first].sum(axis=0)
            g_end += c * marg_t[last].sum(axis=0)
            if dense is None:
                dense = np.multiply(marg_t, c, out=marg_t)   # the kernel's fresh array
            else:
                dense += marg_t * c
    if dense is not None:
        rows = np.arange(N)
        for states, d_tok in zip(paths, path_weights):
            dense[rows, states] += d_tok     # one entry per row: no repeated index
        return loss, g_trans, g_start, g_end, ("dense", dense)
    C = len(paths)
    labels = np.empty((N, C), dtype=np.int64)
    weights = np.empty((N, C))
    for c, (states, d_tok) in enumerate(zip(paths, path_weights)):
        labels[:, c] = states
        weights[:, c] = d_tok
    return loss, g_trans, g_start, g_end, ("labels", labels, weights)


def _loss_params(spec, beta, loss_params):
    """Validate beta and the loss's parameters; return them with beta filled in where the loss
    takes one (square_exp)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    spec.check_params(loss_params)
    params = dict(loss_params)
    if "beta" in spec.params:
        params.setdefault("beta", beta)
    return params


def chain_objective(w, model, X, offsets, y, loss="nll", *, l2=0.0, beta=1.0, n_threads=None,
                    **loss_params):
    """Average per-sequence loss over a corpus plus ``0.5 * l2 * ||w||^2``, and its gradient.

    E+ is the gold sequence's energy (:func:`factorebm.chain.sequence_energy`); E- is, by the
    loss's :attr:`~factorebm.losses.LossSpec.e_minus`, the most offending incorrect sequence
    (:func:`factorebm.chain.most_offending`), the Viterbi minimum over all sequences (perceptron)
    or the free energy at inverse temperature ``beta`` (NLL, from
    :func:`factorebm.chain.forward_backward`). The gradient with respect to the emission
    energies is sparse (gold and offending label per token) for margin losses, or the gold
    indicator minus the posterior marginals for NLL, and reaches ``W_emit`` through one
    parallel product with the cached transpose of X.

    Parameters
    ----------
    w : (n_weights,) float64
        Flat weights of ``model``.
    model : LinearChainEnergy
    X : scipy.sparse (N, n_features) matrix, FactoredFeatures or ChainCorpus
        Token features; the CSR transpose (of X, or of the factors of a FactoredFeatures) is
        computed once and cached on ``model`` while the same X object (not modified in place)
        is passed again.
    offsets : (n+1,) int64
        Sequence i is tokens ``offsets[i]:offsets[i+1]``.
    y : (N,) int64
        Gold label of every token.
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
        OpenMP threads for the sparse products and the chain kernels; None = all cores (or
        ``OMP_NUM_THREADS``), but at most one per 8192 tokens.
    **loss_params
        Passed to the loss (e.g. ``margin=1.0`` for hinge).

    Returns
    -------
    value : float
    grad : (n_weights,) float64
    """
    from . import _sparse, chain
    spec = _losses.get(loss)
    params = _loss_params(spec, beta, loss_params)
    w = model.check_weights(w)
    if isinstance(X, ChainCorpus):
        corpus = X
    else:
        corpus = model._corpus(X if sp.isspmatrix_csr(X) or isinstance(X, FactoredFeatures)
                               else _check_csr(X, model.n_features), offsets, y)
    nt = threads_for(n_threads, corpus.n_tokens)
    W_emit, transition, start, end = model.unpack(w)
    K = model.n_states
    # The (N, S) emission buffer is reused between calls on the same corpus (it never leaves
    # this function): a fresh 28 MB array per call at EWT scale costs page faults.
    U = corpus.emissions(W_emit, corpus._workspace("unary", (corpus.n_tokens, K)), nt)
    loss_i, g_trans, g_start, g_end, emit = _chain_terms(
        U, transition, start, end, corpus.offsets, corpus.y, corpus.first, corpus.last,
        corpus.first_seq, corpus.inner, corpus.seq_of_token, spec, beta, params, nt, chain,
        model.state_label)
    n = max(corpus.n_sequences, 1)
    grad = np.empty(model.n_weights)
    g_emit = grad[:model.n_emit].reshape(model.n_features, K)
    corpus.emission_gradient(emit, g_emit, nt)
    e = model.n_emit
    grad[e:e + K * K] = g_trans.ravel()
    grad[e + K * K:e + K * K + K] = g_start
    grad[e + K * K + K:] = g_end
    value = float(loss_i.sum()) / n
    if l2:
        # an OpenMP reduction, not BLAS: BLAS threads left spinning would contend with ours
        value += 0.5 * l2 * _sparse.vec_dot(w, w, nt)
    # grad = grad / n + l2 * w in one pass over the weights
    _sparse.scale_add(grad, 1.0 / n, w, float(l2), nt)
    return value, grad


def chain_batch_gradient(model, W_rows, transition, start, end, Xb, offsets_b, y_b, spec,
                         params, beta=1.0, n_threads=1):
    """Loss and gradient of one mini-batch, restricted to the feature rows it uses.

    Parameters
    ----------
    model : LinearChainEnergy
    W_rows : (R, S) float64
        The emission weight rows of the R features present in the batch (S chain states).
    transition, start, end : the chain weights
    Xb : (N_b, R) CSR
        The batch's token features with columns renumbered to index ``W_rows``.
    offsets_b : (n_b+1,) int64, y_b : (N_b,) int64

    Returns
    -------
    loss_sum : float
        Sum of the per-sequence losses.
    g_rows : (R, S), g_trans : (S, S), g_start, g_end : (S,)
        Gradients of the loss SUM.
    """
    from . import _sparse, chain
    K = model.n_states
    N = Xb.shape[0]
    U = np.empty((N, K))
    _sparse.csr_dense_matmul(Xb.indptr, Xb.indices, Xb.data, W_rows, U, 1)
    lengths = np.diff(offsets_b)
    nonempty = lengths > 0
    first_seq = np.flatnonzero(nonempty)
    first = offsets_b[:-1][nonempty]
    last = offsets_b[1:][nonempty] - 1
    is_first = np.zeros(N, dtype=bool)
    is_first[first] = True
    inner = np.flatnonzero(~is_first)
    seq_of_token = np.repeat(np.arange(lengths.size), lengths)
    loss_i, g_trans, g_start, g_end, emit = _chain_terms(
        U, transition, start, end, offsets_b, y_b, first, last, first_seq, inner,
        seq_of_token, spec, beta, params, n_threads, chain, model.state_label)
    g_rows = np.zeros((Xb.shape[1], K))
    if emit[0] == "dense":
        _sparse.csr_t_dense_scatter(Xb.indptr, Xb.indices, Xb.data, emit[1], g_rows)
    else:
        _sparse.csr_label_scatter_t(Xb.indptr, Xb.indices, Xb.data, emit[1], emit[2], g_rows)
    return float(loss_i.sum()), g_rows, g_trans, g_start, g_end


# --------------------------------------------------------------------------------------------
# General factor graphs
# --------------------------------------------------------------------------------------------
def tied_phi(table_sizes, template_of_factor, n_templates=None):
    """The Phi of factors that share templates: factor f's table is template ``t_f``'s weights.

    Parameters
    ----------
    table_sizes : sequence of int
        Flattened table size of each factor, in the graph's factor order.
    template_of_factor : sequence of int
        Template id of each factor; factors with the same id must have the same table size.
    n_templates : int or None
        Number of templates (default: max id + 1).

    Returns
    -------
    Phi : (sum(table_sizes), n_weights) scipy.sparse.csr_matrix of 0/1
        The weights are the templates' tables concatenated in template-id order.
    template_offset : (n_templates + 1,) int64
        Template t owns weights ``template_offset[t]:template_offset[t+1]``.
    """
    sizes = np.asarray(table_sizes, dtype=np.int64)
    tmpl = np.asarray(template_of_factor, dtype=np.int64)
    if sizes.shape != tmpl.shape:
        raise ValueError("table_sizes and template_of_factor must have one entry per factor")
    if tmpl.size and tmpl.min() < 0:
        raise ValueError("template ids must be >= 0")
    n_templates = int(tmpl.max()) + 1 if n_templates is None and tmpl.size else (
        n_templates or 0)
    tsize = np.full(n_templates, -1, dtype=np.int64)
    for f, (s, t) in enumerate(zip(sizes, tmpl)):
        if t >= n_templates:
            raise ValueError(f"factor {f}: template id {t} >= n_templates {n_templates}")
        if tsize[t] not in (-1, s):
            raise ValueError(f"factor {f}: table size {s} differs from the size {tsize[t]} of "
                             f"other factors using template {t}")
        tsize[t] = s
    tsize[tsize < 0] = 0
    toff = np.concatenate([[0], np.cumsum(tsize)])
    cols = np.concatenate([toff[t] + np.arange(s) for s, t in zip(sizes, tmpl)]) \
        if sizes.size else np.zeros(0, dtype=np.int64)
    rows = np.arange(cols.size)
    Phi = sp.csr_matrix((np.ones(cols.size), (rows, cols)), shape=(cols.size, int(toff[-1])))
    return Phi, toff


class ParametricGraph:
    """A factor graph whose factor tables are a linear function of shared weights.

    ``tables = Phi @ w + offset`` where ``tables`` is the concatenation of every factor's
    energy table flattened row-major over its scope, in the graph's factor insertion order.

    Parameters
    ----------
    graph : FactorGraph
        Its structure (variables, factor scopes) is used; its tables are overwritten by
        :meth:`set_weights` (through ``graph.set_factor_energies``).
    phi : scipy.sparse matrix or array, shape (total_table_size, n_weights)
    offset : (total_table_size,) float64 or None
        Constant energies added to the tables (e.g. +inf for forbidden configurations).
    """

    def __init__(self, graph, phi, offset=None):
        self.graph = graph
        shapes = [tuple(graph.cardinality(v) for v in scope) for scope in self._scopes(graph)]
        self.table_shapes = shapes
        sizes = np.array([int(np.prod(s)) for s in shapes], dtype=np.int64)
        self.table_offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.table_offset[-1])
        phi = sp.csr_matrix(phi, dtype=np.float64)
        if phi.shape[0] != total:
            raise ValueError(f"phi has {phi.shape[0]} rows but the graph's factor tables have "
                             f"{total} entries in all")
        if phi.nnz and not np.all(np.isfinite(phi.data)):
            raise ValueError("phi contains NaN or infinite entries (use offset for +inf)")
        self.phi = phi
        self.phi_T = phi.T.tocsr()
        self.n_weights = phi.shape[1]
        if offset is None:
            self.offset = None
        else:
            offset = np.asarray(offset, dtype=np.float64).ravel()
            if offset.shape != (total,):
                raise ValueError(f"offset must have shape ({total},), got {offset.shape}")
            if np.any(np.isnan(offset)) or np.any(offset == -np.inf):
                raise ValueError("offset contains NaN or -inf")
            self.offset = offset
        self._scope_vars = self._scopes(graph)

    @staticmethod
    def _scopes(graph):
        return [graph.factor_scope(i) for i in range(graph.n_factors)]

    def tables(self, w):
        """Flat energy tables ``Phi @ w + offset``, shape (total_table_size,)."""
        t = self.phi @ np.asarray(w, dtype=np.float64)
        if self.offset is not None:
            t = t + self.offset
        return t

    def set_weights(self, w):
        """Write ``Phi @ w + offset`` into the graph's factors."""
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.n_weights,):
            raise ValueError(f"weights must have shape ({self.n_weights},), got {w.shape}")
        t = self.tables(w)
        for i, shape in enumerate(self.table_shapes):
            self.graph.set_factor_energies(i, t[self.table_offset[i]:self.table_offset[i + 1]]
                                           .reshape(shape))

    def indicator(self, assignment):
        """0/1 flat table vector of a full assignment (every variable in every scope)."""
        out = np.zeros(self.table_offset[-1])
        for i, scope in enumerate(self._scope_vars):
            idx = tuple(self._label_index(v, assignment[v]) for v in scope)
            out[self.table_offset[i] + np.ravel_multi_index(idx, self.table_shapes[i])] = 1.0
        return out

    def _label_index(self, var, label):
        if isinstance(label, (int, np.integer)):
            return int(label)
        return list(self.graph.labels(var)).index(label)

    def beliefs_vector(self, factor_beliefs):
        """Concatenate per-factor belief tables (insertion order) into a flat vector."""
        return np.concatenate([np.asarray(b, dtype=np.float64).ravel()
                               for b in factor_beliefs]) if factor_beliefs else np.zeros(0)


def _latent_vars(graph):
    return [v for v in graph.variables if graph.is_latent(v)]


def _graph_sample_terms(pg, target, spec, beta, params, inference):
    """(loss, dL/dtables, min(E+, E-)) for one sample; the graph's tables already hold
    Phi @ w + offset."""
    fe = inference
    g = pg.graph
    latent = _latent_vars(g)
    visible = [v for v in g.variables if v not in latent]
    missing = [v for v in visible if v not in target]
    if missing:
        raise ValueError(f"target does not give a label to visible variable {missing[0]!r}")
    target = {v: target[v] for v in visible}
    kind = spec.e_minus
    if kind == "free_energy":
        clamped = fe.sum_product(g, beta=beta, evidence=target)
        free = fe.sum_product(g, beta=beta)
        e_plus = clamped.free_energy
        b_plus = pg.beliefs_vector(clamped.factor_beliefs)
        e_minus = free.free_energy
        b_minus = pg.beliefs_vector(free.factor_beliefs)
    else:
        if latent:
            r = fe.min_sum(g, evidence=target)
            full = dict(target)
            full.update(r.latent)
            e_plus = r.energy
        else:
            full = target
            e_plus = g.energy(target)
        b_plus = pg.indicator(full)
        e_minus = b_minus = None
        if kind in ("most_offending", "min_all"):
            if kind == "most_offending":
                assign, e_minus = fe.most_offending(g, target)
            else:
                r = fe.min_sum(g)
                assign = dict(r.assignment)
                assign.update(r.latent)
                e_minus = r.energy
            assign = dict(assign)
            if latent and any(v not in assign for v in latent):
                r = fe.min_sum(g, evidence={v: assign[v] for v in visible})
                assign.update(r.latent)
            b_minus = pg.indicator(assign)
    lo, dp, dm = spec(e_plus, e_minus, **params)
    dtab = dp * b_plus
    if b_minus is not None and dm != 0.0:
        dtab = dtab + dm * b_minus
    return float(lo), dtab, min(e_plus, np.inf if e_minus is None else e_minus)


def graph_objective(w, samples, loss="nll", *, l2=0.0, beta=1.0, **loss_params):
    """Average loss over (ParametricGraph, target) samples plus ``0.5 * l2 * ||w||^2``.

    For each sample the graph's tables are set to ``Phi @ w + offset``; E+ is the target's
    energy with latent variables minimized (``fe.min_sum`` with the visible target as evidence),
    or its clamped free energy (latent variables summed out) for NLL; E- is
    ``fe.most_offending``, the ``fe.min_sum`` minimum (perceptron) or ``fe.free_energy`` (NLL).
    ``dL/dtables = dL/dE+ * b+ + dL/dE- * b-`` (indicator tables of the minimizing
    configurations, or factor beliefs for free energies), ``dL/dw = Phi^T dL/dtables``.
    Exact on forests (trees, chains); on loopy graphs min-sum / the Bethe free energy make it
    an approximation. The loop over samples is in Python (one inference call per sample).

    Parameters
    ----------
    w : (n_weights,) float64
    samples : sequence of (ParametricGraph, dict)
        Each target dict gives every visible variable a label (index or name); every graph has
        the same ``n_weights``.
    loss, l2, beta, **loss_params
        As in :func:`chain_objective` (including the RuntimeWarning for a loss that assumes
        non-negative energies).

    Returns
    -------
    value : float
    grad : (n_weights,) float64
    """
    from . import inference
    spec = _losses.get(loss)
    params = _loss_params(spec, beta, loss_params)
    if len(samples) == 0:
        raise ValueError("graph_objective needs at least one sample")
    w = np.ascontiguousarray(w, dtype=np.float64)
    grad = np.zeros_like(w)
    total = 0.0
    lowest = np.inf
    for i, (pg, target) in enumerate(samples):
        if pg.n_weights != w.size:
            raise ValueError(f"sample {i}: its ParametricGraph has {pg.n_weights} weights, w "
                             f"has {w.size}")
        pg.set_weights(w)
        lo, dtab, low = _graph_sample_terms(pg, target, spec, beta, params, inference)
        total += lo
        grad += pg.phi_T @ dtab
        lowest = min(lowest, low)
    spec.check_energies(lowest)
    n = len(samples)
    value = total / n
    grad /= n
    if l2:
        value += 0.5 * l2 * float(w @ w)
        grad += l2 * w
    return value, grad
