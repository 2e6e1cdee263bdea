"""The learner: one family of optimizers over the batch-objective interface.

Every learning problem -- a chain fed by any module (:class:`factorebm.learning.ChainEnergy`),
parametric factor graphs, anything implementing :class:`factorebm.objective.BatchObjective`
-- is minimized here by the same code (:func:`minimize`); :func:`fit_chain` and
:func:`fit_graphs` only build the objective. The objective is
``mean_i L(E+_i, E-_i) + 0.5 * l2 * ||w||^2 + l1 * ||w||_1`` over the training units.

* ``"lbfgs"`` -- full-batch L-BFGS for objectives smooth in the weights (nll): the two-loop
  recursion with scipy.optimize's strong-Wolfe line search. With L1, scipy's L-BFGS-B on the
  split ``w = w+ - w-``, ``w+, w- >= 0``, with the linear penalty ``l1 * sum(w+ + w-)``
  (exact; slower per iteration).
* ``"sgd"``, ``"adagrad"`` and ``"adam"`` -- mini-batches of units. Parameters in *row
  blocks* (:mod:`factorebm.params`: sparse-feature weights, embedding tables) are updated only
  for the rows a batch touches, and the regularization of the other rows is applied lazily
  (proximal steps caught up in closed form the next time a row is used, and for every row at
  the end of each epoch); the other parameters are updated at every step. Regularization is
  proximal (composite mirror descent, Duchi, Hazan and Singer 2011): per step, soft-
  thresholding by ``lr * l1`` then scaling by ``1 / (1 + lr * l2)``. SGD's learning rate is
  ``learning_rate / epoch`` (epochs counted from 1), constant within an epoch; AdaGrad's is
  per coordinate, ``learning_rate / (eps + sqrt(sum of squared loss gradients))``; Adam's
  (Kingma and Ba 2015) ``learning_rate / (eps + sqrt(v^))`` on the bias-corrected first
  moment m^, lazily for row blocks (a row's moments move only when a batch uses it, and its
  owed regularization is caught up at its current rate).
* ``"perceptron"`` -- the averaged perceptron (Collins 2002): steps of ``-learning_rate *
  gradient of the summed batch loss`` (with the perceptron loss this is the classic update
  ``w += phi(gold) - phi(prediction)`` in energy form), returning the average
  ``(w_1 + ... + w_T) / T`` of the weights after each of the T steps (the starting weights
  ``w_0`` are not among them). It is computed with the lazy averaging trick, so sparse steps
  stay sparse: with step t adding ``d_t``, ``sum_t w_t = T w_T - sum_t (t - 1) d_t``, so it
  keeps ``u = sum_t (t - 1) d_t`` and returns ``w_T - u / T``.

Threads: ``n_threads`` (None = all cores) runs every kernel of an evaluation -- the chain
kernels over a batch's sequences, the sparse products, the row updates -- on that many
threads, for every optimizer. Every optimizer warm-starts from ``w0``, prints one line per
iteration (L-BFGS) or epoch with the loss and whatever ``callback(w, epoch)`` returns (e.g. a
dict with the dev accuracy), and is silent with ``verbose=False``. Each returns
``(w, history)`` with ``history`` a list of dicts (``"epoch"``, ``"loss"``, ``"time"`` and the
callback's entries).
"""
import time
import warnings

import numpy as np

from . import losses as _losses
from .checks import check_threads, threads_for, user_stacklevel
from .objective import BatchObjective, penalized_mean
from .params import dense_segments

__all__ = ["minimize", "fit_chain", "fit_graphs", "OPTIMIZERS", "default_optimizer"]

OPTIMIZERS = ("lbfgs", "sgd", "adagrad", "adam", "perceptron")

_EPS_ADAGRAD = 1e-8
_ADAM_BETAS = (0.9, 0.999)
_EPS_ADAM = 1e-8
# first size of a row block's buffer of caught-up rows (it grows when a batch needs more)
_FIRST_ROWS = 4096


def default_optimizer(loss):
    """The optimizer ``optimizer=None`` picks.

    L-BFGS where the objective is smooth in the weights: the NLL (free energies are smooth)
    and the energy loss. The averaged perceptron for the perceptron loss. AdaGrad for every
    loss that uses the most offending incorrect answer -- even a smooth Q such as log or mce,
    because E- = min over incorrect answers is only piecewise linear in the weights, and at
    ties (e.g. all-zero initial weights, where every answer ties) L-BFGS's line search fails.
    """
    spec = _losses.get(loss)
    if spec.name == "perceptron":
        return "perceptron"
    if spec.e_minus in ("free_energy", None) and spec.smooth:
        return "lbfgs"
    return "adagrad"


def _check_common(optimizer, loss, l1, l2, max_iter, batch_size, learning_rate):
    spec = _losses.get(loss)
    if optimizer is None:
        optimizer = default_optimizer(spec)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if l2 is None:
        l2 = 0.0 if optimizer == "perceptron" else 1e-4
    l1 = _finite_nonnegative(l1, "l1")
    l2 = _finite_nonnegative(l2, "l2")
    if optimizer == "perceptron" and (l1 or l2):
        raise ValueError("the averaged perceptron takes no regularization (l1 = l2 = 0); its "
                         "averaging is the regularizer")
    if max_iter is None:
        max_iter = 100 if optimizer == "lbfgs" else 10
    max_iter = _integer(max_iter, "max_iter", 0)
    batch_size = _integer(8 if batch_size is None else batch_size, "batch_size", 1)
    if learning_rate is None:
        learning_rate = {"sgd": 0.1, "adagrad": 0.1, "adam": 0.01,
                         "perceptron": 1.0}.get(optimizer, 0.0)
    learning_rate = float(learning_rate)
    if optimizer != "lbfgs" and not (learning_rate > 0 and np.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate}")
    return spec, optimizer, l1, l2, max_iter, batch_size, learning_rate


def _finite_nonnegative(x, name):
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}") from None
    if not (v >= 0 and np.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return v


def _integer(x, name, minimum):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


class _Reporter:
    """Collects history rows and prints one progress line per iteration/epoch."""

    def __init__(self, name, callback, verbose):
        self.name = name
        self.callback = callback
        self.verbose = verbose
        self.history = []
        self.t0 = time.perf_counter()

    def __call__(self, epoch, loss, w, **extra):
        row = {"epoch": epoch, "loss": float(loss), "time": time.perf_counter() - self.t0}
        row.update(extra)
        if self.callback is not None:
            got = self.callback(w, epoch)
            if isinstance(got, dict):
                row.update(got)
            elif got is not None:
                row["callback"] = got
        self.history.append(row)
        if callable(self.verbose):
            self.verbose(row)
        elif self.verbose:
            parts = [f"{self.name} {epoch:4d}", f"loss {row['loss']:.6g}"]
            for k, v in row.items():
                if k in ("epoch", "loss", "time"):
                    continue
                parts.append(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}")
            parts.append(f"{row['time']:.1f} s")
            print("  ".join(parts), flush=True)


def _lbfgs(fun, w0, l1, max_iter, tol, reporter, n_threads=None):
    """Minimize fun(w) -> (value, grad) (+ l1 * ||w||_1): see :func:`_lbfgs_smooth` (l1 = 0)
    and :func:`_lbfgs_b_l1` (l1 > 0)."""
    if max_iter == 0:
        return w0.copy()
    if l1 > 0:
        return _lbfgs_b_l1(fun, w0, l1, max_iter, tol, reporter)
    return _lbfgs_smooth(fun, w0, max_iter, tol, reporter, n_threads=n_threads)


def _wolfe_search():
    """scipy's scalar strong-Wolfe search (Nocedal and Wright, algorithm 3.5).

    Taken from scipy's private module because it works on the step length alone, so trial
    points can be written into one reused buffer; None when this scipy does not have it, and
    then :func:`_lbfgs_smooth` falls back to the public ``scipy.optimize.line_search`` (same
    algorithm and constants, a fresh trial vector per evaluation)."""
    try:
        from scipy.optimize._linesearch import scalar_search_wolfe2
    except ImportError:  # pragma: no cover - depends on the scipy version
        return None
    return scalar_search_wolfe2


def _lbfgs_smooth(fun, w0, max_iter, tol, reporter, n_pairs=6, gtol=1e-10, n_threads=None):
    """Plain L-BFGS (Nocedal 1980; Liu and Nocedal 1989): two-loop recursion over the last
    ``n_pairs`` (s, y) pairs and a strong-Wolfe line search (scipy's).

    Written out rather than calling scipy's L-BFGS-B because, with millions of weights, the
    bound-constrained machinery of L-BFGS-B costs more per iteration than the objective
    itself. Here the (s, y) pairs live in preallocated ring buffers and every pass over the
    weights is a fused, parallel kernel (an update plus the dot product the recursion needs
    next), about 2 * n_pairs + 6 passes per iteration. Stops when the relative decrease of the
    objective falls below ``tol``, the gradient norm below ``gtol``, after ``max_iter``
    iterations, or when the line search fails (reported when verbose).
    """
    from . import _sparse
    nt = threads_for(n_threads)
    search = _wolfe_search()
    x = np.array(w0, dtype=np.float64)
    n = x.size
    f, g = fun(x)
    g = np.ascontiguousarray(g, dtype=np.float64)
    f = float(f)
    S = np.empty((n_pairs, n))           # ring buffers: row i holds pair i's s and y
    Y = np.empty((n_pairs, n))
    rho = np.zeros(n_pairs)
    order = []                           # ring slots, oldest first
    gamma = 1.0                          # s.y / y.y of the newest pair: initial Hessian scale
    d = np.empty(n)
    x_trial = np.empty(n)
    for it in range(1, max_iter + 1):
        gg = _sparse.vec_dot(g, g, nt)
        if np.sqrt(gg) <= gtol:
            break
        # two-loop recursion: d = -H g
        np.copyto(d, g)
        if order:
            alphas = {}
            dot = _sparse.vec_dot(S[order[-1]], d, nt)
            for j in range(len(order) - 1, -1, -1):
                i = order[j]
                alphas[i] = rho[i] * dot
                nxt = S[order[j - 1]] if j > 0 else Y[order[0]]
                dot = _sparse.vec_axpy_dot(d, -alphas[i], Y[i], nxt, nt)
            dot = _sparse.vec_scale_dot(d, gamma, Y[order[0]], nt)
            for j, i in enumerate(order):
                b = rho[i] * dot
                nxt = Y[order[j + 1]] if j + 1 < len(order) else g
                dot = _sparse.vec_axpy_dot(d, alphas[i] - b, S[i], nxt, nt)
            np.negative(d, out=d)
            gd = -dot
        else:
            gd = np.nan
        if not gd < 0:                   # no memory yet, or lost descent: steepest descent
            order.clear()
            np.multiply(g, -1.0 / max(np.sqrt(gg), 1e-300), out=d)
            gd = -np.sqrt(gg)
        evaluated = {}

        def phi(alpha):
            if alpha not in evaluated:
                _sparse.vec_lincomb(x_trial, x, alpha, d, nt)
                f_t, g_t = fun(x_trial)
                evaluated.clear()        # keep one gradient: the search asks in order
                evaluated[alpha] = (float(f_t), np.ascontiguousarray(g_t, dtype=np.float64))
            return evaluated[alpha][0]

        def derphi(alpha):
            phi(alpha)
            return _sparse.vec_dot(evaluated[alpha][1], d, nt)

        if search is not None:
            alpha, _, _, _ = search(phi, derphi, phi0=f, derphi0=gd, c1=1e-4, c2=0.9,
                                    maxiter=30)
        else:                            # the public search (tests/test_optimize.py)
            last = {}

            def value_grad(z):           # line_search asks for f and g at each point apart
                if "z" not in last or not np.array_equal(last["z"], z):
                    last["z"] = np.array(z)
                    last["fg"] = fun(z)
                return last["fg"]
            with warnings.catch_warnings():  # a failure is reported below, as for scipy's
                warnings.filterwarnings(       # private search
                    "ignore", message="The line search algorithm did not converge")
                import scipy.optimize
                alpha = scipy.optimize.line_search(
                    lambda z: value_grad(z)[0], lambda z: value_grad(z)[1], x, d, gfk=g,
                    old_fval=f, c1=1e-4, c2=0.9, maxiter=30)[0]
        if alpha is None:
            if it == 1:     # not one step taken: the result is the start, untrained
                warnings.warn("lbfgs: the line search failed at iteration 1, so the weights "
                              "are the starting ones (are the features of a sensible "
                              "scale?)", RuntimeWarning, stacklevel=user_stacklevel())
            elif reporter.verbose:
                print(f"lbfgs: line search failed at iteration {it}; stopping", flush=True)
            break
        phi(alpha)                       # makes x_trial = x + alpha d and its f, g current
        f_new, g_new = evaluated[alpha]
        _sparse.vec_lincomb(x_trial, x, alpha, d, nt)
        slot = order[0] if len(order) == n_pairs else next(
            i for i in range(n_pairs) if i not in order)
        np.multiply(d, alpha, out=S[slot])
        sy, yy = _sparse.vec_sub_dots(Y[slot], g_new, g, S[slot], nt)
        if sy > 1e-12 * yy:              # curvature condition: keeps H positive definite
            if len(order) == n_pairs:
                order.pop(0)
            order.append(slot)
            rho[slot] = 1.0 / sy
            gamma = sy / yy
        f_old = f
        x, x_trial = x_trial, x          # the accepted point; the old buffer is reused
        f, g = f_new, g_new
        reporter(it, f, x)
        if f_old - f <= tol * max(abs(f_old), abs(f), 1.0):
            break
    if not reporter.history:
        reporter(0, f, x)
    return np.array(x)


def _lbfgs_b_l1(fun, w0, l1, max_iter, tol, reporter):
    """L1 by splitting w = w+ - w- with w+, w- >= 0 and the linear penalty l1 * sum(w+ + w-),
    minimized with scipy's L-BFGS-B (bound constraints)."""
    n = w0.size
    last = {}

    def split_fun(z):
        w = z[:n] - z[n:]
        v, g = fun(w)
        last["x"], last["v"] = z, v + l1 * z.sum()
        return last["v"], np.concatenate([g + l1, -g + l1])

    z0 = np.concatenate([np.maximum(w0, 0), np.maximum(-w0, 0)])
    state = {"it": 0}

    def cb(zk):
        state["it"] += 1
        v = last["v"] if "x" in last and np.array_equal(last["x"], zk) else split_fun(zk)[0]
        reporter(state["it"], v, zk[:n] - zk[n:])

    import scipy.optimize      # here, not at module level: it costs 27 MiB and 0.2 s to import
    res = scipy.optimize.minimize(split_fun, z0, jac=True, method="L-BFGS-B",
                                  bounds=[(0, None)] * (2 * n), callback=cb,
                                  options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-10,
                                           "maxcor": 10})
    if state["it"] == 0:
        reporter(0, split_fun(res.x)[0], res.x[:n] - res.x[n:])
    if not res.success and reporter.verbose:
        print(f"lbfgs: stopped after {res.nit} iterations: {res.message}", flush=True)
    return res.x[:n] - res.x[n:]


def _diverged(w):
    if not np.isfinite(w).all():
        raise ValueError("the weights became NaN or infinite (diverged?)")


def _mean_objective(objective, l2, n_threads):
    """``fun(w) -> (mean loss + 0.5 l2 ||w||^2, its gradient)`` for full-batch optimizers."""
    nt = threads_for(n_threads)
    return lambda w: penalized_mean(objective, np.ascontiguousarray(w, dtype=np.float64), l2,
                                    nt, _diverged)


class _Stochastic:
    """Mini-batch SGD / AdaGrad / Adam / averaged perceptron over a BatchObjective.

    Per mini-batch: gather it (:meth:`BatchObjective.batch`), bring the rows it touches up to
    date (the proximal steps they missed, :func:`factorebm._optim.catch_up_rows`), evaluate
    the gradient there, then one fused pass per touched row and per dense segment for the
    accumulators, the step and the proximal step (:mod:`factorebm._optim`). A batch of 32
    tagged sentences touches a few thousand of 127,000 feature rows: no work is proportional
    to the whole weight vector except the end-of-epoch catch-up.
    """

    def __init__(self, objective, optimizer, l1, l2, batch_size, learning_rate, rng,
                 n_threads):
        self.objective = objective
        self.optimizer = optimizer
        self.l1 = l1
        self.l2 = l2
        self.batch_size = batch_size
        self.eta = learning_rate
        self.rng = rng
        # The row kernels get every core and decide by their work whether a team pays; the
        # objective gets the request as it is (None: it sizes the teams by its batches).
        self.n_threads = n_threads
        self.row_threads = threads_for(n_threads)

    def run(self, w, max_iter, reporter):
        """Run ``max_iter`` epochs from ``w`` (updated in place); return the final weights
        (for the perceptron the averaged weights, a new array)."""
        from ._isa import kernel_module
        _optim = kernel_module("_optim")   # the AVX2+FMA build where the CPU has it
        obj = self.objective
        opt = self.optimizer
        adagrad, adam, perceptron = opt == "adagrad", opt == "adam", opt == "perceptron"
        l1, l2, eta, nt = self.l1, self.l2, self.eta, self.row_threads
        beta1, beta2 = _ADAM_BETAS
        blocks = obj.row_blocks()
        # Row blocks and dense segments are both (rows, cols) matrices for the kernels: a
        # dense segment is one row that every step touches.
        segments = dense_segments(w.size, blocks)

        def as_mats(v):
            return ([v[b.offset:b.offset + b.n_rows * b.n_cols].reshape(b.n_rows, b.n_cols)
                     for b in blocks] + [v[a:b].reshape(1, b - a) for a, b in segments])
        mats = as_mats(w)
        n_blocks = len(blocks)
        one_row = np.zeros(1, dtype=np.int64)
        last = [np.full(m.shape[0], -1, dtype=np.int64) for m in mats]
        # AdaGrad's sums of squared gradients (float32: a table as large as w, of which only
        # the rate's square root is taken), or Adam's second moments (float64: its bias
        # correction divides them by 1 - beta2^t); (0, K) placeholders for the other
        # optimizers (the kernels read them only when told to)
        acc = [np.zeros(m.shape, dtype=np.float32) if adagrad else
               np.zeros(m.shape) if adam else np.zeros((0, m.shape[1])) for m in mats]
        first_moment = [np.zeros(m.shape) for m in mats] if adam else None
        if perceptron:
            u = np.zeros_like(w)        # sum over steps t of (t - 1) * update (averaging)
            u_mats = as_mats(u)
        # the caught-up rows of a batch, which the gradient is evaluated at
        row_values = [np.empty((min(b.n_rows, _FIRST_ROWS), b.n_cols)) for b in blocks]
        n = obj.n_units
        step = 0
        for epoch in range(1, max_iter + 1):
            lr_epoch = eta / epoch if opt == "sgd" else eta
            perm = self.rng.permutation(n)
            obj.plan([perm[s0:s0 + self.batch_size] for s0 in range(0, n, self.batch_size)])
            epoch_loss = 0.0
            for s0 in range(0, n, self.batch_size):
                units = perm[s0:s0 + self.batch_size]
                nb = float(units.shape[0])
                batch = obj.batch(units)
                # Rows untouched since their last step still owe their proximal steps; the
                # gradient is taken at the caught-up rows.
                rate, eps, per_coord = self._catch_up_rate(step, lr_epoch)
                values = []
                for k in range(n_blocks):
                    R = batch.rows[k].shape[0]
                    if R > row_values[k].shape[0]:
                        row_values[k] = np.empty((R, blocks[k].n_cols))
                    values.append(row_values[k][:R])
                    _optim.catch_up_rows(mats[k], batch.rows[k], last[k], step - 1, acc[k],
                                         per_coord, rate, eps, l1, l2, values[k], nt)
                grad = obj.batch_gradient(batch)
                epoch_loss += obj.batch_value_and_grad(w, batch, grad.view(), self.n_threads,
                                                       values)
                seg_grads = grad.values + grad.dense_rows()
                for k, (m, g) in enumerate(zip(mats, seg_grads)):
                    rows = batch.rows[k] if k < n_blocks else one_row
                    if perceptron:
                        # this is step t = step + 1: its update enters u with weight t - 1
                        _optim.perceptron_step(m, u_mats[k], g, rows, lr_epoch, step, nt)
                    elif adagrad:
                        _optim.adagrad_step(m, acc[k], g, rows, last[k], step, eta,
                                            _EPS_ADAGRAD, nb, l1, l2, nt)
                    elif adam:
                        _optim.adam_step(m, first_moment[k], acc[k], g, rows, last[k], step,
                                         eta, beta1, beta2, _EPS_ADAM, step + 1, nb, l1, l2,
                                         nt)
                    else:
                        _optim.sgd_step(m, g, rows, last[k], step, lr_epoch, nb, l1, l2, nt)
                step += 1
            # End of epoch: every row catches up, so w is the true iterate.
            rate, eps, per_coord = self._catch_up_rate(step, lr_epoch)
            for k in range(n_blocks):
                _optim.catch_up_all(mats[k], last[k], step - 1, acc[k], per_coord, rate, eps,
                                    l1, l2)
            w_report = w - u / max(step, 1) if perceptron else w
            reporter(epoch, epoch_loss / max(n, 1), w_report)
        if perceptron:
            return w - u / max(step, 1)
        return w

    def _catch_up_rate(self, step, lr_epoch):
        """(rate, eps, per-coordinate) of the proximal steps a row owes at ``step``: SGD's
        rate of this epoch (the previous epoch's rows were all caught up at its end),
        AdaGrad's base rate over its accumulators, Adam's bias-corrected rate over its second
        moments (``rate / (eps + sqrt(v))`` with both scaled by sqrt(1 - beta2^t) is
        ``eta / (eps + sqrt(v^))``)."""
        if self.optimizer == "adagrad":
            return self.eta, _EPS_ADAGRAD, True
        if self.optimizer == "adam":
            c = np.sqrt(1.0 - _ADAM_BETAS[1] ** max(step, 1))
            return self.eta * c, _EPS_ADAM * c, True
        return lr_epoch, _EPS_ADAGRAD, False





def minimize(objective, *, optimizer=None, l1=0.0, l2=None, max_iter=None,
             batch_size=None, learning_rate=None, w0=None, callback=None, verbose=True,
             n_threads=None, random_state=None, tol=1e-9, client=None):
    """Minimize a :class:`factorebm.objective.BatchObjective`: the one learner.

    Minimizes ``loss_sum(w) / n_units + 0.5 * l2 * ||w||^2 + l1 * ||w||_1``.

    Parameters
    ----------
    objective : BatchObjective
    optimizer : {"lbfgs", "sgd", "adagrad", "adam", "perceptron"} or None
        None picks by the loss (:func:`default_optimizer`).
    l1, l2 : float
        Regularization, finite and >= 0 (``l2=None``: 1e-4, 0 for the perceptron, which takes
        none).
    max_iter : int or None
        L-BFGS iterations (default 100) or epochs (default 10); 0 returns the start.
    batch_size : int or None
        Units (sequences, graphs) per mini-batch (default 8).
    learning_rate : float or None
        Step size (defaults: 0.1 for sgd and adagrad, 0.01 for adam, 1.0 for the perceptron).
    w0 : (n_params,) float64 or None
        Warm start (default ``objective.init_params(random_state)``). Not modified.
    callback : callable ``callback(w, epoch)`` or None
        Called after every iteration/epoch with the current weights (the averaged ones for the
        perceptron); a returned dict is added to the history and the progress line.
    verbose : bool or callable
        Print one progress line per iteration/epoch; a callable ``verbose(row)`` is given
        each history row instead (to print a line of its own).
    n_threads : int or None
        Threads for every kernel of every evaluation (None = all cores).
    random_state : int, numpy Generator or None
        Seed of the starting weights and of the mini-batch order.
    tol : float
        L-BFGS relative tolerance on the objective (``ftol``).
    client : dask.distributed.Client or None
        Train data-parallel on this Dask cluster (:mod:`factorebm.distributed`): the units
        are split into shards kept by the workers, which evaluate them; the optimizer runs
        here and gives the local result, to rounding. ``n_threads`` then counts the threads
        of the optimizer's own steps; each worker uses its Dask threads. None trains here.

    Returns
    -------
    w : (n_params,) float64
    history : list of dict
    """
    if not isinstance(objective, BatchObjective):
        raise ValueError(f"expected a factorebm.objective.BatchObjective, got "
                         f"{type(objective).__name__}")
    spec, optimizer, l1, l2, max_iter, batch_size, learning_rate = _check_common(
        optimizer, objective.spec, l1, l2, max_iter, batch_size, learning_rate)
    check_threads(n_threads)
    if w0 is None:
        w = objective.init_params(random_state)
    else:
        w = objective.check_params(w0).copy()
        if not np.isfinite(w).all():
            raise ValueError("w0 contains NaN or infinite weights")
    if client is not None:
        # the same learner over the shards, from the same start and random generator
        from .distributed import DistributedObjective
        with DistributedObjective(client, objective) as shards:
            return minimize(shards, optimizer=optimizer, l1=l1, l2=l2, max_iter=max_iter,
                            batch_size=batch_size, learning_rate=learning_rate, w0=w,
                            callback=callback, verbose=verbose, n_threads=n_threads,
                            random_state=random_state, tol=tol)
    reporter = _Reporter(optimizer, callback, verbose)
    if optimizer == "lbfgs":
        w = _lbfgs(_mean_objective(objective, l2, n_threads), w, l1, max_iter, tol, reporter,
                   n_threads)
    else:
        runner = _Stochastic(objective, optimizer, l1, l2, batch_size, learning_rate,
                             np.random.default_rng(random_state), n_threads)
        w = runner.run(w, max_iter, reporter)
    return np.ascontiguousarray(w), reporter.history


def fit_chain(model, X, offsets, y, *, loss="nll", optimizer=None, l1=0.0, l2=None,
              max_iter=None, batch_size=None, learning_rate=None, w0=None, callback=None,
              verbose=True, n_threads=None, random_state=None, beta=1.0, tol=1e-9,
              client=None, **loss_params):
    """Train a :class:`~factorebm.learning.ChainEnergy` (e.g. a ``LinearChainEnergy``) on a
    tagged corpus.

    Minimizes ``mean_i L(E+_i, E-_i) + 0.5 * l2 * ||w||^2 + l1 * ||w||_1`` (see
    :func:`factorebm.learning.chain_objective`) with :func:`minimize`.

    Parameters
    ----------
    model : ChainEnergy
    X : the emission's input: for sparse features a scipy.sparse (N, n_features) matrix or a
        FactoredFeatures (which speeds up L-BFGS and spares the stochastic optimizers, which
        gather their mini-batches through its factors, the memory of X); or a ChainCorpus.
    offsets : (n+1,) int64
        Sequence i is tokens ``offsets[i]:offsets[i+1]``.
    y : (N,) int64
        Gold label ids (-1 for an unknown label, with the NLL).
    loss : str or LossSpec
        A loss of :mod:`factorebm.losses`.
    optimizer : {"lbfgs", "sgd", "adagrad", "adam", "perceptron"} or None
        None picks (:func:`default_optimizer`) L-BFGS for nll and energy, the averaged
        perceptron for the perceptron loss, AdaGrad for the margin losses (hinge, log, mce,
        lvq2, square_square, square_exp), whose E- is piecewise linear in the weights.
    l1, l2, max_iter, batch_size, learning_rate, w0, callback, verbose, n_threads,
    random_state, tol
        As in :func:`minimize` (``batch_size`` counts sequences; w0 defaults to
        ``model.init_weights(random_state)``: zeros, or small random weights when the model
        has latent substates).
    beta : float
        Inverse temperature of the NLL's free energy.
    client : dask.distributed.Client or None
        Train on this Dask cluster, the sequences split into shards held by the workers
        (:mod:`factorebm.distributed`); the result is the local one, to rounding.
    **loss_params
        Passed to the loss (``margin``, ``gamma``, ...).

    Returns
    -------
    w : (n_weights,) float64
    history : list of dict
        One row per iteration/epoch: ``epoch``, ``loss`` (the objective for L-BFGS, the mean
        mini-batch loss during the epoch otherwise), ``time`` (seconds since start), and the
        callback's entries.
    """
    from .energies.chain import ChainEnergy, ChainObjective
    if not isinstance(model, ChainEnergy):
        raise ValueError("fit_chain trains a factorebm.learning.ChainEnergy (or "
                         "LinearChainEnergy)")
    _check_common(optimizer, loss, l1, l2, max_iter, batch_size, learning_rate)
    objective = ChainObjective(model, X, offsets, y, loss, beta, **loss_params)
    if verbose:
        print(f"fit_chain: loss {objective.spec.name}, optimizer "
              f"{optimizer or default_optimizer(objective.spec)}, {objective.n_units} "
              f"sequences, {objective.corpus.n_tokens} tokens, {model.n_weights} weights",
              flush=True)
    w0 = None if w0 is None else model.check_weights(w0)
    return minimize(objective, optimizer=optimizer, l1=l1, l2=l2, max_iter=max_iter,
                    batch_size=batch_size, learning_rate=learning_rate, w0=w0,
                    callback=callback, verbose=verbose, n_threads=n_threads,
                    random_state=random_state, tol=tol, client=client)


INFERENCES = ("bp", "gibbs")


def fit_graphs(samples, *, loss="nll", optimizer=None, l1=0.0, l2=None, max_iter=None,
               batch_size=None, learning_rate=None, w0=None, callback=None, verbose=True,
               n_threads=None, random_state=None, beta=1.0, tol=1e-9, inference="bp",
               inference_options=None, client=None, **loss_params):
    """Train the shared weights of parametric factor graphs with :func:`minimize`.

    Minimizes ``mean_i L(E+_i, E-_i) + 0.5 * l2 * ||w||^2 + l1 * ||w||_1`` over
    ``samples``, a sequence of ``(ParametricGraph, target)`` pairs sharing one weight vector
    (see :func:`factorebm.learning.graph_objective`). Parameters, defaults and the returned
    ``(w, history)`` are as in :func:`fit_chain` (``batch_size`` counts graphs; the weights
    start at zero; ``client``: a Dask client, the graphs split into shards held by the
    workers), and:

    inference : {"bp", "gibbs"}
        ``"bp"``: E+, E- and the beliefs by belief propagation (exact on forests).
        ``"gibbs"``: the NLL's contrastive term from persistent Gibbs chains (persistent
        contrastive divergence, :class:`factorebm.energies.pcd.PCDGraphObjective`); loss
        "nll" only, with a stochastic optimizer (default AdaGrad; the estimate is noisy, so
        L-BFGS is refused).
    inference_options : dict or None
        With ``"bp"``: ``schedule`` ("flooding", "residual", or "trws" for the min-sum losses
        on pairwise graphs), ``damping``, ``max_iter`` and ``tol`` (as for
        :func:`factorebm.min_sum`; loopy graphs only: forests always get the exact two-pass
        sweep), and for the margin losses ``e_minus`` -- ``"most_offending"`` (default: the
        lowest answer that differs from the target, exact on forests) or ``"loss_augmented"``
        (``argmin E(y) - hamming * H(y, target)``, H the Hamming distance: the structured hinge
        with the hinge; see :mod:`factorebm.energies.graph_batch`) -- and ``hamming`` (the
        weight of each wrong label; default the loss's margin, else 1). The graphs of a batch
        are run in one kernel call (flooding runs on ``n_threads``).
        With ``"gibbs"``: ``n_chains`` (persistent chains per graph, default 10), ``n_sweeps``
        (sweeps per step, default 1), ``method`` ("gibbs" or "mh").
    """
    from .energies.graph import GraphObjective
    samples = list(samples)
    if not samples:
        raise ValueError("fit_graphs needs at least one (ParametricGraph, target) sample")
    if inference not in INFERENCES:
        raise ValueError(f"unknown inference {inference!r}; use one of {', '.join(INFERENCES)}")
    options = dict(inference_options or {})
    if inference == "gibbs":
        from .energies.pcd import PCD_OPTIONS, PCDGraphObjective
        if _losses.get(loss).name != "nll":
            raise ValueError(f"inference='gibbs' estimates the NLL's contrastive term: it "
                             f"trains loss='nll' only, not {loss!r}")
        optimizer = "adagrad" if optimizer is None else optimizer
        if optimizer == "lbfgs":
            raise ValueError("inference='gibbs' gives a stochastic gradient (persistent "
                             "chains): use a stochastic optimizer (sgd, adagrad, adam), not "
                             "lbfgs")
        unknown = sorted(set(options) - set(PCD_OPTIONS))
        if unknown:
            raise ValueError(f"unknown inference_options {unknown} for inference='gibbs'; "
                             f"it takes {', '.join(PCD_OPTIONS)}")
        _check_common(optimizer, loss, l1, l2, max_iter, batch_size, learning_rate)
        if loss_params:
            raise ValueError(f"loss 'nll' takes no parameter(s) {', '.join(loss_params)}")
        objective = PCDGraphObjective(samples, beta, random_state=random_state, **options)
    else:
        _check_common(optimizer, loss, l1, l2, max_iter, batch_size, learning_rate)
        objective = GraphObjective(samples, loss, beta, options, **loss_params)
    if w0 is not None:
        w0 = np.asarray(w0, dtype=np.float64)
        if w0.shape != (objective.n_params,):
            raise ValueError(f"w0 must have shape ({objective.n_params},), got {w0.shape}")
    return minimize(objective, optimizer=optimizer, l1=l1, l2=l2, max_iter=max_iter,
                    batch_size=batch_size, learning_rate=learning_rate, w0=w0,
                    callback=callback, verbose=verbose, n_threads=n_threads,
                    random_state=random_state, tol=tol, client=client)
