"""The batch objective: the one interface between a learning problem and the learner.

The tutorial's learning machine is four parts (LeCun et al. 2006, section 1): an architecture
(energies from parameters and input), an inference procedure (E+, E-, free energies, beliefs),
a loss of those energies, and an optimizer. The first three meet here: a
:class:`BatchObjective` holds a training set, an architecture and a loss, and answers one
question for the optimizer (:mod:`factorebm.optimize`), locally or on a cluster
(:mod:`factorebm.distributed`): *given the parameters w and a batch of training units
(sequences, graphs), what is the summed loss and its gradient?*

* :meth:`BatchObjective.value_and_grad` -- over every unit: the sum of the losses and its
  dense (n_params,) gradient (full-batch optimizers: L-BFGS).
* :meth:`BatchObjective.batch` and :meth:`BatchObjective.batch_value_and_grad` -- over a
  mini-batch: :meth:`batch` gathers the units' data and says which rows of each row block
  (:mod:`factorebm.params`) they touch, so that a stochastic optimizer can bring those rows up
  to date first; the gradient then comes as a :class:`factorebm.params.BatchGradient`.

Sums, not means: the optimizer divides by the number of units and adds the regularization, so
shards of a training set can be evaluated apart and added up (data parallelism).
"""
import numpy as np

from . import losses as _losses
from .checks import check_beta
from .params import BatchGradient, dense_segments

__all__ = ["BatchObjective", "Batch", "loss_setup", "penalized_mean"]


def penalized_mean(objective, w, l2, n_threads, nonfinite):
    """The full-batch objective ``mean loss + 0.5 * l2 * ||w||^2`` and its gradient.

    Parameters
    ----------
    objective : BatchObjective
    w : (n_params,) contiguous float64, already checked for its length
    l2 : float >= 0
    n_threads : int
        Threads of the objective and of the two passes over w (an OpenMP reduction, not BLAS:
        BLAS threads left spinning would contend with the kernels').
    nonfinite : callable
        ``nonfinite(w)`` raises ValueError when w holds NaN or inf; called only when
        ``||w||^2`` is not finite (the finiteness check costs no pass of its own).

    Returns
    -------
    value : float
    grad : (n_params,) float64
    """
    from . import _sparse
    ww = _sparse.vec_dot(w, w, n_threads)
    if not np.isfinite(ww):
        nonfinite(w)
    loss_sum, grad = objective.value_and_grad(w, n_threads)
    grad = np.ascontiguousarray(grad, dtype=np.float64)
    n = max(objective.n_units, 1)
    # grad = grad / n + l2 * w in one pass over the weights
    _sparse.scale_add(grad, 1.0 / n, w, float(l2), n_threads)
    return loss_sum / n + (0.5 * l2 * ww if l2 else 0.0), grad


def loss_setup(loss, beta, loss_params):
    """The loss's spec and its validated parameters, with ``beta`` filled in where the loss
    takes one (square_exp); ``beta`` itself must be a finite number > 0.

    Returns
    -------
    spec : factorebm.losses.LossSpec
    params : dict
    """
    spec = _losses.get(loss)
    beta = check_beta(beta)
    spec.check_params(loss_params)
    params = dict(loss_params)
    if "beta" in spec.params:
        params.setdefault("beta", beta)
    return spec, params


class Batch:
    """A gathered mini-batch: ``units`` (n_b,) int64, ``rows`` (one (R_b,) int64 array of
    touched rows per row block of the objective) and whatever data the objective gathered."""

    def __init__(self, units, rows=(), **data):
        self.units = units
        self.rows = list(rows)
        self.__dict__.update(data)

    @property
    def n_units(self):
        return int(self.units.shape[0])


class BatchObjective:
    """Interface of a learning problem as the optimizers see it.

    Subclasses set ``n_params``, ``n_units``, ``spec`` (the :class:`~factorebm.losses.LossSpec`)
    and implement :meth:`value_and_grad` and :meth:`unit_value_and_grad`; objectives with row
    blocks also override :meth:`row_blocks`, :meth:`batch` and :meth:`batch_value_and_grad`.
    """

    n_params = 0
    n_units = 0
    spec = None

    def row_blocks(self):
        """Row blocks (:class:`factorebm.params.RowBlock`) of the parameter vector."""
        return []

    def init_params(self, random_state=None):
        """Starting parameters (n_params,) float64."""
        return np.zeros(self.n_params)

    def check_params(self, w):
        """``w`` as a contiguous (n_params,) float64 array (ValueError naming both lengths, or
        the dtype of a complex one: a cast would drop its imaginary parts)."""
        w = np.asarray(w)
        if w.shape != (self.n_params,):
            raise ValueError(f"the parameter vector must have {self.n_params} entries, got an "
                             f"array of shape {w.shape}")
        if w.dtype.kind == "c":
            raise ValueError(f"the parameter vector must hold real numbers, got dtype {w.dtype}")
        return np.ascontiguousarray(w, dtype=np.float64)

    def value_and_grad(self, w, n_threads=None):
        """Sum over all units of the loss, and its gradient (n_params,) float64."""
        return self.unit_value_and_grad(w, np.arange(self.n_units), n_threads)

    def unit_value_and_grad(self, w, units, n_threads=None):
        """Sum over ``units`` ((n_b,) int64) of the loss, and its dense gradient."""
        raise NotImplementedError

    def plan(self, batches):
        """Told, at the start of each epoch of a stochastic optimizer, the mini-batches
        ((n_b,) int64 unit arrays) it will ask for, in order. Local objectives ignore it; a
        distributed one fetches what the steps need in one round trip."""

    def batch(self, units):
        """Gather the mini-batch ``units`` ((n_b,) int64): a :class:`Batch`."""
        return Batch(np.asarray(units, dtype=np.int64))

    def batch_value_and_grad(self, w, batch, grad, n_threads=None, row_values=None):
        """Sum over the batch of the loss; its gradient is ADDED into ``grad`` (a
        :class:`~factorebm.params.GradientView` of a BatchGradient for this batch).
        ``row_values``: optionally, per row block, the current weights of ``batch.rows[b]``
        (a stochastic optimizer has them at hand after its catch-up)."""
        value, g = self.unit_value_and_grad(w, batch.units, n_threads)
        grad.dense()[...] += g
        return value

    def batch_gradient(self, batch):
        """A zero :class:`~factorebm.params.BatchGradient` laid out for ``batch``."""
        layout = self.__dict__.get("_layout")
        if layout is None:
            blocks = self.row_blocks()
            layout = self._layout = (blocks, dense_segments(self.n_params, blocks))
        return BatchGradient(self.n_params, layout[0], batch.rows, layout[1])
