"""Sparse token-feature matrices as the learning kernels read them.

A tagger's emission energies are ``U = X @ W`` for a sparse token x feature matrix X and
dense weights W (n_features, S); their gradient is ``X^T @ G``. This module holds the three
forms X takes, all with the same product methods (``matmul``, ``rmatmul``,
``rmatmul_labels``) over the Cython kernels of :mod:`factorebm._sparse`:

* :class:`CSRFeatures` -- a validated CSR matrix, its transpose built once on first need;
* :class:`FactoredFeatures` -- binary features kept factored, ``X = S @ Phi`` through
  (word type, template group) slots, a few times smaller than X itself (built by
  :meth:`factorebm.features.FeatureExtractor.factored_transform`);
* :class:`LocalRows` -- one mini-batch of X with its columns renumbered to the features it
  uses, and which features those are (``cols``): the batch multiplies only ``W[cols]``.

:class:`SequenceGather` cuts mini-batches of sequences out of the first two forms.
Everything here is data and products; nothing knows of labels or losses.
"""
import numpy as np

from .checks import check_threads

__all__ = ["FactoredFeatures", "CSRFeatures", "LocalRows", "SequenceGather", "as_features",
           "prepare_features", "check_csr", "is_binary_data", "NO_DATA"]

NO_DATA = np.empty(0)      # the kernels' "every stored value is 1"


def _sp():
    import scipy.sparse     # lazy: importing factorebm must stay fast
    return scipy.sparse


def is_binary_data(data):
    """True for the data of a binary CSR matrix stored without an array of ones.

    Indicator features can be given as a CSR matrix whose ``data`` is the read-only view
    ``np.broadcast_to(1.0, (nnz,))`` (stride 0, no memory): the mini-batch optimizers then
    never allocate the (nnz,) float64 ones, the largest array of a tagging corpus.
    """
    return (data.ndim == 1 and data.shape[0] > 1 and data.strides[0] == 0
            and data[0] == 1.0)


def _kernel_data(X):
    """``X.data`` for the product kernels: contiguous, or empty for binary data (the kernels
    read an empty data array as all ones)."""
    return NO_DATA if is_binary_data(X.data) else np.ascontiguousarray(X.data)


def _kernel_index_dtypes(M):
    """CSR ``M`` with indptr and indices of one dtype, int32 or int64, as the kernels take them
    (int64 where they differ)."""
    if M.indices.dtype != M.indptr.dtype or M.indices.dtype not in (np.int32, np.int64):
        M = _sp().csr_matrix((M.data, M.indices.astype(np.int64), M.indptr.astype(np.int64)),
                             shape=M.shape)
    return M


def _binary_csr(M, name):
    """``M`` as CSR with matching int32/int64 index arrays, checked to hold only ones."""
    sp = _sp()
    if not sp.issparse(M):
        raise ValueError(f"{name} must be a scipy.sparse matrix, got {type(M).__name__}")
    M = _kernel_index_dtypes(M.tocsr())
    if M.nnz and not (is_binary_data(M.data) or np.all(M.data == 1.0)):
        raise ValueError(f"{name} must be binary: every stored value 1")
    return M


def _csr_transpose(M):
    return _kernel_index_dtypes(M.T.tocsr())


def check_csr(X, n_features=None, what="X"):
    """``X`` as a CSR matrix of float64 with matching int32/int64 indptr and indices.

    Dense 2-D arrays and other sparse formats are converted; NaN or infinite values, and a
    width other than ``n_features`` (when given), raise ValueError naming ``what``.
    """
    sp = _sp()
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"{what} must be a 2-D (tokens x features) matrix, got shape "
                             f"{X.shape}")
        X = sp.csr_matrix(X)
    if X.format != "csr":
        X = X.tocsr()
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{what} has {X.shape[1]} feature columns, the model has "
                         f"{n_features}")
    if X.dtype != np.float64:
        X = X.astype(np.float64)
    X = _kernel_index_dtypes(X)
    if X.nnz and not (is_binary_data(X.data) or np.all(np.isfinite(X.data))):
        raise ValueError(f"{what} contains NaN or infinite feature values")
    return X


def _dense(a, shape, name, writable=False):
    """``a`` checked to be a C-contiguous float64 array of ``shape`` (kernels trust it)."""
    if not (isinstance(a, np.ndarray) and a.dtype == np.float64 and a.flags.c_contiguous
            and a.shape == shape and (a.flags.writeable or not writable)):
        got = (f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__)
        raise ValueError(f"{name} must be a C-contiguous{' writable' if writable else ''} "
                         f"float64 array of shape {shape}, got {got}")
    return a


def _nt(n_threads):
    nt = check_threads(n_threads)
    return 1 if nt is None else nt


class _Products:
    """The products of a token x feature matrix X (N, n_features) with dense operands,
    validated here (the kernels trust their arrays) and computed by a subclass's
    ``_matmul``, ``_rmatmul`` and ``_rmatmul_labels``."""

    def matmul(self, W, out, n_threads=1, work=None, accumulate=False):
        """``out`` (N, K) = X @ W (``+=`` with ``accumulate``) for W (n_features, K).
        ``work``: optional scratch a subclass may use (FactoredFeatures: (n_slots, K))."""
        K = W.shape[1] if isinstance(W, np.ndarray) and W.ndim == 2 else -1
        _dense(W, (self.shape[1], K), "W")
        _dense(out, (self.shape[0], K), "out", writable=True)
        return self._matmul(W, out, _nt(n_threads), work, accumulate)

    def rmatmul(self, G, out, n_threads=1, work=None, accumulate=False):
        """``out`` (n_features, K) = X^T @ G (``+=`` with ``accumulate``) for G (N, K)."""
        K = G.shape[1] if isinstance(G, np.ndarray) and G.ndim == 2 else -1
        _dense(G, (self.shape[0], K), "G")
        _dense(out, (self.shape[1], K), "out", writable=True)
        return self._rmatmul(G, out, _nt(n_threads), work, accumulate)

    def rmatmul_labels(self, labels, weights, out, n_threads=1, work=None, accumulate=False):
        """``out`` (n_features, K) = X^T @ G (``+=`` with ``accumulate``) for G given by C
        (label, weight) pairs per token: ``labels`` (N, C) in 0..K-1, ``weights`` (N, C)
        (as :func:`factorebm._sparse.csr_t_label_scatter`)."""
        K = out.shape[1] if isinstance(out, np.ndarray) and out.ndim == 2 else -1
        _dense(out, (self.shape[1], K), "out", writable=True)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[0] != self.shape[0] or weights.shape != labels.shape:
            raise ValueError(f"labels and weights must both have shape ({self.shape[0]}, C), "
                             f"got {labels.shape} and {weights.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= K):
            raise ValueError(f"labels must lie in 0..{K - 1}")
        return self._rmatmul_labels(labels, weights, out, _nt(n_threads), work, accumulate)


class CSRFeatures(_Products):
    """A token x feature matrix X as one validated CSR matrix.

    The transpose, which the gradient ``X^T @ G`` multiplies with (so that every output row
    belongs to one thread), is built on first need and kept: it is as large as X.

    Parameters
    ----------
    X : scipy.sparse matrix or 2-D array, (N, n_features)
    """

    def __init__(self, X):
        self.X = check_csr(X)
        self._XT = None

    @property
    def shape(self):
        return self.X.shape

    def __repr__(self):
        return f"CSRFeatures({self.shape[0]} tokens x {self.shape[1]} features)"

    def tocsr(self):
        return self.X

    def row_nnz(self):
        """(N,) int64: the number of nonzeros of each row."""
        return np.diff(self.X.indptr).astype(np.int64)

    def _transpose(self):
        if self._XT is None:
            self._XT = _csr_transpose(self.X)
        return self._XT

    def _matmul(self, W, out, nt, work, accumulate):
        from . import _sparse
        X = self.X
        _sparse.csr_dense_matmul(X.indptr, X.indices, _kernel_data(X), W, out, nt, accumulate)
        return out

    def _rmatmul(self, G, out, nt, work, accumulate):
        from . import _sparse
        XT = self._transpose()
        _sparse.csr_dense_matmul(XT.indptr, XT.indices, _kernel_data(XT), G, out, nt,
                                 accumulate)
        return out

    def _rmatmul_labels(self, labels, weights, out, nt, work, accumulate):
        from . import _sparse
        XT = self._transpose()
        _sparse.csr_t_label_scatter(XT.indptr, XT.indices, _kernel_data(XT), labels, weights,
                                    out, nt, accumulate)
        return out


class FactoredFeatures(_Products):
    """A binary token x feature matrix kept as the product ``X = S @ Phi``.

    Tagging features are features of the word *types* around a token
    (:mod:`factorebm.features`): ``Phi`` (n_slots, n_features) holds the features of each
    (word type, template group) slot and ``S`` (N, n_slots) says which slots each token has,
    one per group. Then ``X @ W = S @ (Phi @ W)`` and ``X^T @ G = Phi^T @ (S^T @ G)``, and with
    far fewer slots than tokens (EWT train: about 90,000 slots for 204,577 tokens and 4.5
    million nonzeros of X) both products touch the large (n_features, K) tables a few times
    less often than X itself would. The learning objectives take it wherever they take X; the
    stochastic optimizers gather their mini-batches through its factors
    (:class:`SequenceGather`). Built by
    :meth:`factorebm.features.FeatureExtractor.factored_transform`.

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

    def _work(self, work, K):
        if work is None:
            return np.empty((self.n_slots, K))
        return _dense(work, (self.n_slots, K), "work", writable=True)

    def _matmul(self, W, out, nt, work, accumulate):
        from . import _sparse
        P = self._work(work, W.shape[1])
        _sparse.csr_dense_matmul(self.Phi.indptr, self.Phi.indices, NO_DATA, W, P, nt)
        _sparse.csr_dense_matmul(self.S.indptr, self.S.indices, NO_DATA, P, out, nt, accumulate)
        return out

    def _rmatmul(self, G, out, nt, work, accumulate):
        from . import _sparse
        ST, PhiT = self._transposes()
        A = self._work(work, G.shape[1])
        _sparse.csr_dense_matmul(ST.indptr, ST.indices, NO_DATA, G, A, nt)
        _sparse.csr_dense_matmul(PhiT.indptr, PhiT.indices, NO_DATA, A, out, nt, accumulate)
        return out

    def _rmatmul_labels(self, labels, weights, out, nt, work, accumulate):
        from . import _sparse
        ST, PhiT = self._transposes()
        A = self._work(work, out.shape[1])
        _sparse.csr_t_label_scatter(ST.indptr, ST.indices, NO_DATA, labels, weights, A, nt)
        _sparse.csr_dense_matmul(PhiT.indptr, PhiT.indices, NO_DATA, A, out, nt, accumulate)
        return out


class LocalRows:
    """One mini-batch of a feature matrix with its columns renumbered.

    ``X`` (N_b, R) CSR holds the batch's tokens over local columns 0..R-1 and ``cols`` (R,)
    int64 says which feature each local column is: ``X_batch @ W == X @ W[cols]``. Local
    columns are numbered in order of first occurrence.

    Attributes
    ----------
    X : scipy.sparse.csr_matrix (N_b, R), float64 data, int32 or int64 indices
    cols : (R,) int64 distinct feature ids
    n_features : int
        Width of the full matrix the batch was cut from.
    """

    def __init__(self, X, cols, n_features):
        self.X = X
        self.cols = cols
        self.n_features = n_features

    @property
    def shape(self):
        return (self.X.shape[0], self.n_features)

    def __repr__(self):
        return (f"LocalRows({self.X.shape[0]} tokens using {self.cols.shape[0]} of "
                f"{self.n_features} features)")


def prepare_features(x):
    """``x`` with every scipy.sparse matrix in it (at top level, or inside tuples, lists and
    dicts) validated and wrapped as :class:`CSRFeatures`, once: a corpus given as raw CSR then
    keeps its transpose between evaluations."""
    if hasattr(x, "format") and hasattr(x, "tocsr"):        # a scipy.sparse matrix
        return CSRFeatures(x)
    if isinstance(x, (tuple, list)):
        return type(x)(prepare_features(p) for p in x)
    if isinstance(x, dict):
        return {k: prepare_features(v) for k, v in x.items()}
    return x


def as_features(X, n_features=None, what="X"):
    """``X`` as :class:`FactoredFeatures`, :class:`LocalRows` or :class:`CSRFeatures` (a CSR
    matrix, another sparse format or a dense 2-D array is validated and wrapped)."""
    if isinstance(X, (FactoredFeatures, CSRFeatures, LocalRows)):
        if n_features is not None and X.shape[1] != n_features:
            raise ValueError(f"{what} has {X.shape[1]} feature columns, the model has "
                             f"{n_features}")
        return X
    return CSRFeatures(check_csr(X, n_features, what))


class SequenceGather:
    """Cuts mini-batches of sequences out of a feature matrix, columns renumbered.

    Output buffers are allocated once, sized for the ``batch_size`` longest (densest)
    sequences, and reused: the :class:`LocalRows` a :meth:`gather` returns is valid until the
    next call. The gather is one compiled pass over the batch's nonzeros
    (:func:`factorebm._optim.batch_csr`, or :func:`~factorebm._optim.batch_csr_factored`
    through the factors of a :class:`FactoredFeatures`, which never builds X).

    Parameters
    ----------
    X : FactoredFeatures or CSRFeatures, (N, n_features)
    offsets : (n+1,) int64, sequence boundaries
    batch_size : int, the largest number of sequences per batch
    """

    def __init__(self, X, offsets, batch_size):
        self.X = X
        self.offsets = offsets
        n = offsets.shape[0] - 1
        b = min(batch_size, max(n, 1))
        cum = np.zeros(X.shape[0] + 1, dtype=np.int64)
        np.cumsum(X.row_nnz(), out=cum[1:])
        seq_nnz = cum[offsets[1:]] - cum[offsets[:-1]]
        lengths = np.diff(offsets)
        max_tok = int(np.sort(lengths)[::-1][:b].sum())
        max_nnz = int(np.sort(seq_nnz)[::-1][:b].sum())
        max_cols = min(max_nnz, X.shape[1])
        # int32 indices whenever they fit: the dtype scipy would convert them to anyway
        idx = np.int32 if max(max_nnz, max_cols) < np.iinfo(np.int32).max else np.int64
        self._indptr = np.empty(max_tok + 1, dtype=idx)
        self._indices = np.empty(max_nnz, dtype=idx)
        self._data = np.empty(max_nnz)
        self._cols = np.empty(max_cols, dtype=np.int64)
        self._local_of = np.full(X.shape[1], -1, dtype=np.int64)
        self._offsets = np.empty(b + 1, dtype=np.int64)
        self._y = np.empty(max_tok, dtype=np.int64)
        self._dummy_y = np.zeros(X.shape[0], dtype=np.int64)
        from ._isa import kernel_module
        self._optim = kernel_module("_optim")   # the AVX2+FMA build where the CPU has it

    def gather(self, seqs, y=None):
        """The batch of sequences ``seqs`` ((n_b,) int64, at most ``batch_size`` of them).

        Returns
        -------
        rows : LocalRows (N_b tokens)
        offsets : (n_b + 1,) int64, the batch's sequence boundaries from 0
        y_b : (N_b,) int64, the batch's entries of ``y`` ((N,) int64), or None
        """
        _optim = self._optim
        X = self.X
        seqs = np.ascontiguousarray(seqs, dtype=np.int64)
        yy = self._dummy_y if y is None else y
        if isinstance(X, FactoredFeatures):
            n_tok, nnz, R = _optim.batch_csr_factored(
                *X.gather_arrays(), self.offsets, yy, seqs, self._local_of, self._indptr,
                self._indices, self._data, self._y, self._offsets, self._cols)
        else:
            M = X.X
            n_tok, nnz, R = _optim.batch_csr(
                M.indptr, M.indices, _kernel_data(M), self.offsets, yy, seqs, self._local_of,
                self._indptr, self._indices, self._data, self._y, self._offsets, self._cols)
        Xb = _sp().csr_matrix((self._data[:nnz], self._indices[:nnz],
                               self._indptr[:n_tok + 1]), shape=(n_tok, R))
        rows = LocalRows(Xb, self._cols[:R], X.shape[1])
        return rows, self._offsets[:seqs.shape[0] + 1], (None if y is None else self._y[:n_tok])
