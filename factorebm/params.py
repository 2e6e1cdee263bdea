"""The layout of a flat parameter vector, and the gradient of one mini-batch.

Every architecture keeps ALL its trainable parameters in one flat float64 vector ``w`` (so
every optimizer, L-BFGS included, sees it as one vector). Some parameters are *row blocks*:
a (n_rows, n_cols) matrix stored row-major inside ``w`` -- the emission weights of sparse
features (:class:`factorebm.modules.SparseLinear`), an embedding table
(:class:`factorebm.modules.Embedding`) -- of which a mini-batch uses only a few rows. The
stochastic optimizers update those rows lazily (:mod:`factorebm.optimize`); every other
parameter is *dense* and updated at every step.

:class:`BatchGradient` is the gradient of one mini-batch in that layout: a dense vector for
the dense parameters and, per row block, the gradient of the rows the batch touches. A module's
``bprop`` receives a slice of it (:class:`GradientView`) where it would receive a slice of a
dense gradient vector.
"""
from collections import namedtuple

import numpy as np

__all__ = ["RowBlock", "dense_segments", "BatchGradient", "GradientView", "dense_gradient"]

RowBlock = namedtuple("RowBlock", ["offset", "n_rows", "n_cols"])
RowBlock.__doc__ = """A (n_rows, n_cols) row-major matrix at ``w[offset:offset + n_rows * n_cols]``
whose gradient is row-sparse."""


def _block_size(b):
    return b.n_rows * b.n_cols


def dense_segments(n_params, blocks):
    """The ``[start, stop)`` ranges of ``w`` outside the row blocks, in order.

    Parameters
    ----------
    n_params : int
    blocks : list of RowBlock, non-overlapping

    Returns
    -------
    list of (start, stop) int pairs, non-empty ranges only
    """
    segments = []
    pos = 0
    for b in sorted(blocks, key=lambda b: b.offset):
        if b.offset < pos:
            raise ValueError(f"row blocks overlap at parameter {b.offset}")
        if b.offset > pos:
            segments.append((pos, b.offset))
        pos = b.offset + _block_size(b)
    if pos > n_params:
        raise ValueError(f"a row block ends at {pos}, past the {n_params} parameters")
    if pos < n_params:
        segments.append((pos, n_params))
    return segments


class BatchGradient:
    """Gradient of a mini-batch's summed loss: dense parameters densely, row blocks by rows.

    Parameters
    ----------
    n_params : int
    blocks : list of RowBlock
    rows : list of (R_b,) int64 arrays, aligned with ``blocks``
        The distinct rows of each block that the batch touches.
    segments : list of (start, stop) or None
        ``dense_segments(n_params, blocks)`` when the caller has it already.

    Attributes
    ----------
    dense : (n_dense,) float64
        Gradient of the dense parameters, the segments of :func:`dense_segments` end to end.
    values : list of (R_b, n_cols) float64
        Gradient of the rows ``rows[b]`` of block b.
    """

    def __init__(self, n_params, blocks, rows, segments=None):
        self.n_params = n_params
        self.blocks = list(blocks)
        self.rows = list(rows)
        self.segments = dense_segments(n_params, self.blocks) if segments is None else segments
        starts = [0]
        for a, b in self.segments:
            starts.append(starts[-1] + b - a)
        self._seg_start = starts
        self.dense = np.zeros(starts[-1])
        self.values = [np.zeros((r.shape[0], b.n_cols)) for b, r in zip(self.blocks, self.rows)]

    def dense_rows(self):
        """The dense gradient cut into (1, len) rows, one per dense segment (views)."""
        return [self.dense[s:s + b - a].reshape(1, b - a)
                for (a, b), s in zip(self.segments, self._seg_start)]

    def view(self):
        """The whole gradient as a :class:`GradientView`."""
        return GradientView(self, 0, self.n_params)

    def dense_part(self, lo, hi):
        """The gradient of ``w[lo:hi]`` (inside one dense segment) as a writable view."""
        for (a, b), s in zip(self.segments, self._seg_start):
            if a <= lo and hi <= b:
                return self.dense[s + lo - a:s + hi - a]
        raise ValueError(f"parameters {lo}:{hi} are not all dense (they overlap a row block)")

    def block_part(self, lo, hi):
        """``(rows, values)`` of the row block that is exactly ``w[lo:hi]``."""
        for b, r, v in zip(self.blocks, self.rows, self.values):
            if b.offset == lo and b.offset + _block_size(b) == hi:
                return r, v
        raise ValueError(f"parameters {lo}:{hi} are not a row block of this gradient")

    def to_dense(self):
        """The full (n_params,) gradient (for tests and small models)."""
        g = np.zeros(self.n_params)
        for (a, b), s in zip(self.segments, self._seg_start):
            g[a:b] = self.dense[s:s + b - a]
        for blk, r, v in zip(self.blocks, self.rows, self.values):
            g[blk.offset:blk.offset + _block_size(blk)].reshape(blk.n_rows, blk.n_cols)[r] += v
        return g


class GradientView:
    """The slice ``[lo, hi)`` of a :class:`BatchGradient`, sliced again like an array."""

    def __init__(self, grad, lo, hi):
        self.grad = grad
        self.lo = lo
        self.hi = hi

    @property
    def shape(self):
        return (self.hi - self.lo,)

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a GradientView is sliced with [a:b] only")
        a, b, _ = key.indices(self.hi - self.lo)
        return GradientView(self.grad, self.lo + a, self.lo + max(a, b))

    def dense(self):
        """(hi - lo,) float64 writable view: the slice must hold dense parameters only."""
        return self.grad.dense_part(self.lo, self.hi)

    def rows(self):
        """``(rows (R,) int64, values (R, n_cols) float64)``: the slice must be a row block."""
        return self.grad.block_part(self.lo, self.hi)


def dense_gradient(grad):
    """The writable float64 array a module adds its dense gradient into: ``grad`` itself (a
    slice of a full gradient vector) or the dense part of a :class:`GradientView`."""
    return grad.dense() if isinstance(grad, GradientView) else grad
