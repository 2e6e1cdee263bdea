"""Trainable modules: the tutorial's multi-module architectures, with fprop and bprop.

LeCun et al. (2006), section 6 (and LeCun, Bottou, Orr and Mueller 1998): an architecture is a
chain of modules; each computes its output from its input and parameters (``fprop``) and, given
the gradient of the loss with respect to its output, adds the gradient with respect to its
parameters and returns the one with respect to its input (``bprop``). The architecture produces
energies (e.g. the emission energies of a chain, :class:`factorebm.learning.ChainEnergy`); the
modules never see labels or losses.

All trainable parameters of an architecture live in ONE flat float64 vector ``w``; a module
reads its own slice (``w[:m.n_params]`` of what it is given), and composites hand their
children consecutive slices. So every optimizer, L-BFGS included, sees an architecture as one
vector::

    from factorebm import modules as nn
    m = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, K))
    w = m.init_params(random_state=0)          # (m.n_params,) float64
    y = m.fprop(w, x)                          # remembers what bprop needs
    grad = np.zeros(m.n_params)
    dx = m.bprop(w, dy, grad)                  # adds dL/dw into grad; returns dL/dx

``fprop`` remembers its intermediate values per thread and per top-level module: ``bprop``
uses those of the latest ``fprop`` of the same module in the same thread (so several threads
may run the same architecture at once). Dense products go through numpy (BLAS); sparse
products through the Cython kernels of :mod:`factorebm.sparse` (no Python loop per token).

Gradients with respect to an output may be dense arrays or a :class:`LabelGradient` (a few
(column, weight) pairs per row, what a margin loss gives for chain emissions): a
:class:`SparseLinear` uses it as it is, the other modules expand it.

Row blocks. A :class:`SparseLinear` weight matrix and an :class:`Embedding` table are *row
blocks* (:mod:`factorebm.params`): a mini-batch touches few of their rows, and the stochastic
optimizers update only those. ``row_blocks()`` says where they lie in the module's slice and
``touched_rows(x)`` which rows an input uses.
"""
import threading
import weakref

import numpy as np

from .checks import check_count as _check_count
from .params import GradientView, RowBlock, dense_gradient
from .sparse import CSRFeatures, FactoredFeatures, LocalRows, as_features

__all__ = ["Module", "Linear", "SparseLinear", "Embedding", "Tanh", "ReLU", "Sigmoid",
           "Sequential", "Concat", "Sum", "Parallel", "Select", "LabelGradient", "Context",
           "CharCNN", "WordChars"]


class LabelGradient:
    """A gradient (N, n_cols) with C nonzero entries per row, given as (column, weight) pairs.

    Row t is ``sum_c weights[t, c] * onehot(labels[t, c])``: the gradient of a margin loss with
    respect to a chain's emission energies (the gold state and the most offending state of
    each token).

    Parameters
    ----------
    labels : (N, C) int64, columns in ``0..n_cols-1``
    weights : (N, C) float64
    n_cols : int
    """

    def __init__(self, labels, weights, n_cols):
        self.labels = labels
        self.weights = weights
        self.n_cols = int(n_cols)

    @property
    def shape(self):
        return (self.labels.shape[0], self.n_cols)

    def toarray(self):
        """The dense (N, n_cols) float64 gradient."""
        out = np.zeros(self.shape)
        rows = np.arange(self.labels.shape[0])
        for c in range(self.labels.shape[1]):
            np.add.at(out, (rows, self.labels[:, c]), self.weights[:, c])
        return out


def dense_dy(dy):
    """A module's output gradient as a dense array (a LabelGradient expanded)."""
    return dy.toarray() if isinstance(dy, LabelGradient) else dy


class Context:
    """The state of one forward / backward evaluation.

    Attributes
    ----------
    n_threads : int or None
        Threads for the sparse kernels (None: all cores, one per 8192 rows at most).
    keep : bool
        Whether fprop keeps what bprop needs (False for prediction).
    row_values : dict
        ``id(rows) -> W[rows]``: rows of a row block already gathered by the caller, for a
        :class:`SparseLinear` fed a LocalRows whose ``cols`` is that ``rows`` array.
    """

    def __init__(self, n_threads=None, keep=True, reuse_buffers=False):
        self.n_threads = n_threads
        self.keep = keep
        # id(rows array) -> the current weights of those rows of a row block, when the caller
        # (a stochastic optimizer catching the rows up) gathered them already
        self.row_values = {}
        self._saved = {}
        self._reuse = reuse_buffers
        self._buffers = {}

    def save(self, module, value):
        if self.keep:
            self._saved.setdefault(id(module), []).append(value)

    def restore(self, module):
        stack = self._saved.get(id(module))
        if not stack:
            raise ValueError(f"{module!r}: bprop without a matching fprop (call fprop first, "
                             "in the same thread)")
        return stack.pop()

    def output(self, module, shape):
        """A float64 array for a module's output: reused between evaluations when this
        context was made with ``reuse_buffers`` (a learning objective evaluating the same
        corpus again), else new."""
        if not self._reuse:
            return np.empty(shape)
        key = ("out", id(module))
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape:
            buf = self._buffers[key] = np.empty(shape)
        return buf

    def scratch(self, module, name, shape):
        """A float64 scratch array (contents undefined), kept between evaluations."""
        key = (name, id(module))
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape:
            buf = self._buffers[key] = np.empty(shape)
        return buf

    def clear(self):
        """Forget what fprop kept (buffers stay)."""
        self._saved = {}


_local = threading.local()


def _contexts():
    d = getattr(_local, "contexts", None)
    if d is None:
        d = _local.contexts = weakref.WeakKeyDictionary()
    return d


def _rng(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


class Module:
    """Base class: a map from an input (and its slice of ``w``) to an output, and back.

    Two levels of the same passes:

    * :meth:`fprop` / :meth:`bprop` -- for users: validate everything (lengths, NaN, shapes)
      and keep the forward state per thread;
    * :meth:`forward` / :meth:`backward` -- for composites and learning objectives, which
      validated their inputs once: the state travels in an explicit :class:`Context` (one per
      evaluation), with the thread count and reusable buffers.

    Subclasses set ``n_params`` (and ``n_in`` / ``n_out``, input / output width, when known)
    and implement ``forward(w, x, ctx)``, ``backward(w, dy, grad, ctx)``, and where they
    apply ``check_input(x)`` and ``_init(rng)``.
    """

    n_params = 0
    n_in = None
    n_out = None

    # ---------------------------------------------------------------- public
    def init_params(self, random_state=None):
        """Initial parameters, (n_params,) float64 (each module's own scheme)."""
        return self._init(_rng(random_state))

    def fprop(self, w, x):
        """Forward pass: the output for input ``x`` and parameters ``w`` (n_params,).

        Raises ValueError naming the module for a ``w`` of the wrong length, NaN or infinite
        parameters, an input of the wrong shape or dtype, or NaN in the input -- before any
        kernel runs.
        """
        w = self.check_params(w)
        x = self.check_input(x)
        ctx = Context()
        y = self.forward(w, x, ctx)
        _contexts()[self] = ctx
        return y

    def bprop(self, w, dy, grad):
        """Backward pass for the latest :meth:`fprop` of this module in this thread.

        Parameters
        ----------
        w : (n_params,) float64, the parameters fprop used
        dy : array of the output's shape (or a :class:`LabelGradient`): dL/d(output)
        grad : (n_params,) float64, writable
            dL/dw is ADDED into it.

        Returns
        -------
        dL/d(input), or None when the input is not differentiable (ids, sparse features).
        """
        w = self.check_params(w)
        if not (isinstance(grad, GradientView) or (
                isinstance(grad, np.ndarray) and grad.dtype == np.float64
                and grad.shape == (self.n_params,) and grad.flags.writeable)):
            got = f"{grad.dtype} {grad.shape}" if isinstance(grad, np.ndarray) else type(grad)
            raise ValueError(f"{self!r}: grad must be a writable float64 array of shape "
                             f"({self.n_params},), got {got}")
        ctx = _contexts().pop(self, None)
        if ctx is None:
            raise ValueError(f"{self!r}: bprop without a matching fprop (call fprop first, "
                             "in the same thread)")
        return self.backward(w, dy, grad, ctx)

    def check_params(self, w):
        """``w`` as a contiguous (n_params,) float64 array; ValueError naming the module for
        a wrong length or NaN / infinite entries."""
        w = np.asarray(w)
        if w.shape != (self.n_params,):
            raise ValueError(f"{self!r}: w must have {self.n_params} parameters, got an array "
                             f"of shape {w.shape}")
        if w.dtype != np.float64 or not w.flags.c_contiguous:
            w = np.ascontiguousarray(w, dtype=np.float64)
        if self.n_params and not np.isfinite(w).all():
            bad = int(np.flatnonzero(~np.isfinite(w))[0])
            raise ValueError(f"{self!r}: w[{bad}] = {w[bad]} is not finite")
        return w

    def row_blocks(self):
        """Row blocks (:class:`factorebm.params.RowBlock`) within this module's slice."""
        return []

    def touched_rows(self, x):
        """For each of :meth:`row_blocks`, the (R,) int64 distinct rows that input x uses."""
        return []

    def __call__(self, w, x):
        return self.fprop(w, x)

    def check_input(self, x):
        """``x`` validated (NaN included) and converted to what :meth:`forward` takes;
        ValueError naming the module and the expected shape otherwise."""
        return x

    def forward(self, w, x, ctx):
        """The output for input ``x`` and parameters ``w`` (trusted), keeping in ``ctx`` what
        :meth:`backward` needs."""
        raise NotImplementedError

    def backward(self, w, dy, grad, ctx):
        """Add dL/dw into ``grad`` (an array or a :class:`factorebm.params.GradientView`) for
        the matching :meth:`forward` of ``ctx``; return dL/d(input) or None."""
        raise NotImplementedError

    # ---------------------------------------------------------------- for subclasses
    def _init(self, rng):
        return np.zeros(self.n_params)


def _check_float_input(module, x, n_in):
    """x as a float64 (n, n_in) array, named errors otherwise (NaN included)."""
    if isinstance(x, np.ndarray) and x.dtype == np.float64 and x.ndim == 2 \
            and x.shape[1] == n_in:
        a = x
    else:
        a = np.asarray(x) if not isinstance(x, np.ndarray) else x
        if a.dtype.kind not in "fiub" or a.ndim != 2 or a.shape[1] != n_in:
            raise ValueError(f"{module!r}: input must be a (n, {n_in}) float array, got "
                             f"{a.dtype} {a.shape}")
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{module!r}: input contains NaN or infinite values")
    return a


def check_output_grad(module, dy, shape):
    """ValueError naming the module when its output gradient dy does not have ``shape``."""
    if dy.shape != shape:
        raise ValueError(f"{module!r}: dy must have the output's shape {shape}, got {dy.shape}")


# ------------------------------------------------------------------------------ layers
class Linear(Module):
    """``y = x @ W + b``: x (n, n_in) float64, W (n_in, n_out), b (n_out,).

    Parameters: W row-major, then b (when ``bias``). Initialized uniformly in +-sqrt(6 /
    (n_in + n_out)) (Glorot and Bengio 2010), b = 0.
    """

    def __init__(self, n_in, n_out, bias=True):
        self.n_in = _check_count(n_in, "n_in")
        self.n_out = _check_count(n_out, "n_out")
        self.bias = bool(bias)
        self.n_params = self.n_in * self.n_out + (self.n_out if self.bias else 0)

    def __repr__(self):
        return f"Linear({self.n_in}, {self.n_out}{'' if self.bias else ', bias=False'})"

    def _init(self, rng):
        w = np.zeros(self.n_params)
        s = np.sqrt(6.0 / (self.n_in + self.n_out))
        w[:self.n_in * self.n_out] = rng.uniform(-s, s, self.n_in * self.n_out)
        return w

    def check_input(self, x):
        return _check_float_input(self, x, self.n_in)

    def forward(self, w, x, ctx):
        if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == self.n_in):
            x = _check_float_input(self, x, self.n_in)
        W = w[:self.n_in * self.n_out].reshape(self.n_in, self.n_out)
        y = x @ W
        if self.bias:
            y += w[self.n_in * self.n_out:]
        ctx.save(self, x)
        return y

    def backward(self, w, dy, grad, ctx):
        x = ctx.restore(self)
        dy = dense_dy(dy)
        check_output_grad(self, dy, (x.shape[0], self.n_out))
        g = dense_gradient(grad)
        nw = self.n_in * self.n_out
        g[:nw].reshape(self.n_in, self.n_out)[...] += x.T @ dy
        if self.bias:
            g[nw:] += dy.sum(axis=0)
        return dy @ w[:nw].reshape(self.n_in, self.n_out).T


class SparseLinear(Module):
    """``y = X @ W`` for sparse features X (N, n_features) and W (n_features, n_out).

    The input is a scipy.sparse matrix (CSR preferred), a
    :class:`factorebm.sparse.FactoredFeatures` or :class:`~factorebm.sparse.CSRFeatures`, or a
    mini-batch :class:`~factorebm.sparse.LocalRows`; the products run in the Cython kernels on
    ``ctx.n_threads`` threads. The input is not differentiable (bprop returns None). W is a
    row block: a mini-batch's gradient touches only the rows of the features it uses.
    Initialized to zero (a log-linear model starts flat).
    """

    def __init__(self, n_features, n_out):
        self.n_in = _check_count(n_features, "n_features", 0)
        self.n_out = _check_count(n_out, "n_out")
        self.n_params = self.n_in * self.n_out

    @property
    def n_features(self):
        return self.n_in

    def __repr__(self):
        return f"SparseLinear({self.n_in}, {self.n_out})"

    def row_blocks(self):
        return [RowBlock(0, self.n_in, self.n_out)]

    def touched_rows(self, x):
        if isinstance(x, LocalRows):
            return [x.cols]
        X = as_features(x, self.n_in, f"{self!r} input")
        X = X if not hasattr(X, "tocsr") else X.tocsr()
        return [np.unique(X.indices).astype(np.int64)]

    def check_input(self, x):
        return as_features(x, self.n_in, f"{self!r} input")

    def forward(self, w, x, ctx):
        from . import _sparse
        from .checks import threads_for
        if not isinstance(x, (LocalRows, CSRFeatures, FactoredFeatures)):     # raw input inside a composite
            x = self.check_input(x)
        W = w.reshape(self.n_in, self.n_out)
        N = x.shape[0]
        nt = threads_for(ctx.n_threads, N)
        out = ctx.output(self, (N, self.n_out))
        if isinstance(x, LocalRows):
            rows = ctx.row_values.get(id(x.cols))
            if rows is None:
                rows = ctx.scratch(self, "rows", (x.cols.shape[0], self.n_out))
                # mode="clip": cols are valid ids, and "raise" copies through a temporary
                np.take(W, x.cols, axis=0, out=rows, mode="clip")
            Xb = x.X
            _sparse.csr_dense_matmul(Xb.indptr, Xb.indices, Xb.data, rows, out, nt)
        else:
            work = (ctx.scratch(self, "slots", (x.n_slots, self.n_out))
                    if hasattr(x, "n_slots") else None)
            x.matmul(W, out, nt, work)
        ctx.save(self, x)
        return out

    def backward(self, w, dy, grad, ctx):
        from . import _sparse
        from .checks import threads_for
        x = ctx.restore(self)
        N, K = x.shape[0], self.n_out
        if dy.shape != (N, K):
            raise ValueError(f"{self!r}: dy must have shape {(N, K)}, got {dy.shape}")
        nt = threads_for(ctx.n_threads, N)
        if isinstance(x, LocalRows):
            if isinstance(grad, GradientView):
                rows, values = grad.rows()
                if rows.shape[0] != x.cols.shape[0]:
                    raise ValueError(f"{self!r}: the gradient's rows are not the batch's "
                                     "features")
            else:
                values = np.zeros((x.cols.shape[0], K))
            Xb = x.X
            if isinstance(dy, LabelGradient):
                _sparse.csr_label_scatter_t(Xb.indptr, Xb.indices, Xb.data, dy.labels,
                                            dy.weights, values, nt)
            else:
                _sparse.csr_t_dense_scatter(Xb.indptr, Xb.indices, Xb.data,
                                            np.ascontiguousarray(dy), values, nt)
            if not isinstance(grad, GradientView):
                grad.reshape(self.n_in, K)[x.cols] += values
            return None
        G = dense_gradient(grad).reshape(self.n_in, K)
        work = (ctx.scratch(self, "slots", (x.n_slots, K)) if hasattr(x, "n_slots") else None)
        if isinstance(dy, LabelGradient):
            x.rmatmul_labels(dy.labels, dy.weights, G, nt, work, accumulate=True)
        else:
            x.rmatmul(np.ascontiguousarray(dy, dtype=np.float64), G, nt, work,
                      accumulate=True)
        return None


class Embedding(Module):
    """``y = table[ids]``: ids (n,) int in ``0..n_items-1`` -> (n, dim).

    The table (n_items, dim) is a row block. Initialized N(0, 0.1^2). The input (ids) is not
    differentiable.
    """

    def __init__(self, n_items, dim):
        self.n_items = _check_count(n_items, "n_items")
        self.n_out = _check_count(dim, "dim")
        self.n_params = self.n_items * self.n_out

    def __repr__(self):
        return f"Embedding({self.n_items}, {self.n_out})"

    def _init(self, rng):
        return rng.normal(0.0, 0.1, self.n_params)

    def row_blocks(self):
        return [RowBlock(0, self.n_items, self.n_out)]

    def touched_rows(self, x):
        return [np.unique(self.check_input(x))]

    def check_input(self, x):
        ids = np.asarray(x)
        if ids.ndim != 1 or not (ids.dtype.kind in "iu" or ids.size == 0):
            raise ValueError(f"{self!r}: input must be a 1-D array of integer ids, got "
                             f"{ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_items):
            bad = int(np.flatnonzero((ids < 0) | (ids >= self.n_items))[0])
            raise ValueError(f"{self!r}: id {ids[bad]} at position {bad} is not in "
                             f"0..{self.n_items - 1}")
        return ids

    def forward(self, w, x, ctx):
        x = self.check_input(x)
        ctx.save(self, x)
        return w.reshape(self.n_items, self.n_out)[x]

    def backward(self, w, dy, grad, ctx):
        ids = ctx.restore(self)
        dy = dense_dy(dy)
        check_output_grad(self, dy, (ids.shape[0], self.n_out))
        if isinstance(grad, GradientView):
            rows, values = grad.rows()
            np.add.at(values, np.searchsorted(rows, ids), dy)
        else:
            np.add.at(grad.reshape(self.n_items, self.n_out), ids, dy)
        return None


class _Elementwise(Module):
    """A parameter-free elementwise nonlinearity."""

    def forward(self, w, x, ctx):
        y = self._forward(x)
        ctx.save(self, y)
        return y

    def backward(self, w, dy, grad, ctx):
        y = ctx.restore(self)
        dy = dense_dy(dy)
        check_output_grad(self, dy, y.shape)
        return dy * self._derivative(y)

    def check_input(self, x):
        a = np.asarray(x, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"{self!r}: input contains NaN or infinite values")
        return a

    def __repr__(self):
        return f"{type(self).__name__}()"


class Tanh(_Elementwise):
    """``y = tanh(x)``."""

    def _forward(self, x):
        return np.tanh(x)

    def _derivative(self, y):
        return 1.0 - y * y


class ReLU(_Elementwise):
    """``y = max(x, 0)`` (derivative 0 at 0)."""

    def _forward(self, x):
        return np.maximum(x, 0.0)

    def _derivative(self, y):
        return (y > 0).astype(np.float64)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` elementwise, without overflow for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class Sigmoid(_Elementwise):
    """``y = 1 / (1 + exp(-x))``, without overflow."""

    def _forward(self, x):
        return sigmoid(x)

    def _derivative(self, y):
        return y * (1.0 - y)


class Select(Module):
    """Picks one part of a structured input: ``x[key]`` (a tuple index or a dict key), so that
    branches of a :class:`Sum` or :class:`Concat` can read different inputs. No parameters;
    the input is not differentiated through it."""

    def __init__(self, key):
        self.key = key

    def __repr__(self):
        return f"Select({self.key!r})"

    def _pick(self, x):
        try:
            return x[self.key]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{self!r}: the input has no part {self.key!r}") from None

    def forward(self, w, x, ctx):
        return self._pick(x)

    def backward(self, w, dy, grad, ctx):
        return None


# ------------------------------------------------------------------------------ composites
class _Composite(Module):
    """Children in order, each with its consecutive slice of ``w``."""

    def __init__(self, *modules):
        if not modules:
            raise ValueError(f"{type(self).__name__} needs at least one module")
        for m in modules:
            if not isinstance(m, Module):
                raise ValueError(f"{type(self).__name__}: {m!r} is not a factorebm module")
        self.modules = tuple(modules)
        self.offsets = np.concatenate([[0], np.cumsum([m.n_params for m in modules])]).astype(
            np.int64).tolist()
        self.n_params = self.offsets[-1]

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(repr, self.modules))})"

    def _slices(self, w):
        o = self.offsets
        return [w[o[i]:o[i + 1]] for i in range(len(self.modules))]

    def _init(self, rng):
        return np.concatenate([m.init_params(rng) for m in self.modules]) if self.n_params \
            else np.zeros(0)

    def row_blocks(self):
        return [RowBlock(b.offset + o, b.n_rows, b.n_cols)
                for m, o in zip(self.modules, self.offsets) for b in m.row_blocks()]

    def _children_inputs(self, x):
        return [x] * len(self.modules)

    def touched_rows(self, x):
        return [r for m, xi in zip(self.modules, self._children_inputs(x))
                for r in m.touched_rows(xi)]

    def check_input(self, x):
        return x


def _sum_inputs(dxs):
    dxs = [d for d in dxs if d is not None]
    if not dxs:
        return None
    total = dense_dy(dxs[0]).copy()
    for d in dxs[1:]:
        total += dense_dy(d)
    return total


class Sequential(_Composite):
    """``y = m_k(... m_2(m_1(x)))``. Adjacent widths are checked where the modules know them."""

    def __init__(self, *modules):
        super().__init__(*modules)
        for a, b in zip(self.modules[:-1], self.modules[1:]):
            if a.n_out is not None and b.n_in is not None and a.n_out != b.n_in \
                    and not isinstance(b, _Elementwise):
                raise ValueError(f"Sequential: {a!r} outputs {a.n_out} columns but {b!r} "
                                 f"takes {b.n_in}")
        self.n_in = self.modules[0].n_in
        outs = [m.n_out for m in self.modules if m.n_out is not None]
        self.n_out = outs[-1] if outs else None

    def check_input(self, x):
        return self.modules[0].check_input(x)

    def touched_rows(self, x):
        # Row blocks take the architecture's input: only modules before the first one with
        # parameters can transform it (Select); later modules must have no row blocks.
        rows = []
        for m in self.modules:
            blocks = m.row_blocks()
            if blocks:
                rows.extend(m.touched_rows(x))
            if m.n_params:
                break
            x = m.forward(np.zeros(0), x, Context(keep=False))
        seen = len(rows)
        if seen != len(self.row_blocks()):
            raise ValueError(f"{self!r}: a module with row blocks (SparseLinear, Embedding) "
                             "must read the architecture's input directly, not the output of "
                             "a module with parameters")
        return rows

    def forward(self, w, x, ctx):
        for m, wi in zip(self.modules, self._slices(w)):
            x = m.forward(wi, x, ctx)
        return x

    def backward(self, w, dy, grad, ctx):
        o = self.offsets
        for i in range(len(self.modules) - 1, -1, -1):
            if dy is None:
                raise ValueError(f"{self!r}: {self.modules[i + 1]!r} returns no input gradient "
                                 f"but {self.modules[i]!r} before it has parameters")
            m = self.modules[i]
            dy = m.backward(w[o[i]:o[i + 1]], dy, grad[o[i]:o[i + 1]], ctx)
            if dy is None and not any(mm.n_params for mm in self.modules[:i]):
                return None
        return dy


class Sum(_Composite):
    """``y = m_1(x) + m_2(x) + ...``: the same input to each, outputs added (same shape)."""

    def __init__(self, *modules):
        super().__init__(*modules)
        outs = {m.n_out for m in self.modules if m.n_out is not None}
        if len(outs) > 1:
            raise ValueError(f"Sum: the modules output different widths {sorted(outs)}")
        self.n_out = outs.pop() if outs else None

    def forward(self, w, x, ctx):
        ys = [m.forward(wi, x, ctx) for m, wi in zip(self.modules, self._slices(w))]
        y = ys[0]
        for other in ys[1:]:
            if other.shape != y.shape:
                raise ValueError(f"{self!r}: outputs of shapes {y.shape} and {other.shape} "
                                 "cannot be added")
            # a new array first: a child's output may be a buffer it reuses
            y = y + other if y is ys[0] else np.add(y, other, out=y)
        return y

    def backward(self, w, dy, grad, ctx):
        o = self.offsets
        dxs = [m.backward(w[o[i]:o[i + 1]], dy, grad[o[i]:o[i + 1]], ctx)
               for i, m in reversed(list(enumerate(self.modules)))]
        return _sum_inputs(dxs)


class Concat(_Composite):
    """``y = [m_1(x), m_2(x), ...]`` joined on the last axis: the same input to each."""

    def __init__(self, *modules):
        super().__init__(*modules)
        outs = [m.n_out for m in self.modules]
        self.n_out = sum(outs) if all(o is not None for o in outs) else None

    def forward(self, w, x, ctx):
        ys = [m.forward(wi, x, ctx) for m, wi in zip(self.modules, self._slices(w))]
        ctx.save(self, [y.shape[-1] for y in ys])
        return np.concatenate(ys, axis=-1)

    def _split(self, dy, widths):
        dy = dense_dy(dy)
        bounds = np.cumsum([0] + widths)
        if dy.shape[-1] != bounds[-1]:
            raise ValueError(f"{self!r}: dy has {dy.shape[-1]} columns, the output {bounds[-1]}")
        return [np.ascontiguousarray(dy[..., bounds[i]:bounds[i + 1]])
                for i in range(len(widths))]

    def backward(self, w, dy, grad, ctx):
        parts = self._split(dy, ctx.restore(self))
        o = self.offsets
        dxs = [m.backward(w[o[i]:o[i + 1]], parts[i], grad[o[i]:o[i + 1]], ctx)
               for i, m in reversed(list(enumerate(self.modules)))]
        return _sum_inputs(dxs)


class Parallel(Concat):
    """``y = [m_1(x_1), m_2(x_2), ...]`` for a tuple input ``(x_1, x_2, ...)``: one part per
    module, outputs joined on the last axis; bprop returns the tuple of input gradients."""

    def _children_inputs(self, x):
        if not isinstance(x, (tuple, list)) or len(x) != len(self.modules):
            raise ValueError(f"{self!r}: the input must be a tuple of {len(self.modules)} parts,"
                             f" one per module")
        return list(x)

    def check_input(self, x):
        return tuple(m.check_input(xi) for m, xi in zip(self.modules, self._children_inputs(x)))

    def forward(self, w, x, ctx):
        parts = self._children_inputs(x)
        ys = [m.forward(wi, xi, ctx) for m, wi, xi in zip(self.modules, self._slices(w), parts)]
        ctx.save(self, [y.shape[-1] for y in ys])
        return np.concatenate(ys, axis=-1)

    def backward(self, w, dy, grad, ctx):
        parts = self._split(dy, ctx.restore(self))
        o = self.offsets
        dxs = [None] * len(self.modules)
        for i in range(len(self.modules) - 1, -1, -1):
            dxs[i] = self.modules[i].backward(w[o[i]:o[i + 1]], parts[i], grad[o[i]:o[i + 1]],
                                            ctx)
        return tuple(dxs)


# The character CNN has a file of its own (factorebm.charcnn), built on the classes above:
# exported here on first use (PEP 562), which also keeps the two files from importing each
# other at load time.
def __getattr__(name):
    if name in ("CharCNN", "WordChars"):
        from . import charcnn
        return getattr(charcnn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
