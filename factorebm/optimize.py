"""Optimizers that minimize the learning objectives of :mod:`factorebm.learning`.

* ``"lbfgs"`` -- full-batch L-BFGS for objectives smooth in the weights (nll): the two-loop
  recursion with scipy.optimize's strong-Wolfe line search. With L1, scipy's L-BFGS-B on the
  split ``w = w+ - w-``, ``w+, w- >= 0``, with the linear penalty ``l1 * sum(w+ + w-)``
  (exact; slower per iteration).
* ``"sgd"`` and ``"adagrad"`` -- mini-batches of sequences (or graphs). A chain mini-batch
  touches only the emission-weight rows of the features that occur in it: the batch's columns
  are renumbered, the product and the gradient run on those rows only, and the regularization
  of the other rows is applied lazily (proximal steps caught up in closed form the next time a
  row is used, and for every row at the end of each epoch). Regularization is proximal
  (composite mirror descent, Duchi, Hazan and Singer 2011): per step, soft-thresholding by
  ``lr * l1`` then scaling by ``1 / (1 + lr * l2)``. SGD's learning rate is
  ``learning_rate / epoch`` (epochs counted from 1), constant within an epoch; AdaGrad's is
  per coordinate, ``learning_rate / (eps + sqrt(sum of squared loss gradients))``.
* ``"perceptron"`` -- the averaged perceptron (Collins 2002): steps of ``-learning_rate *
  gradient of the summed batch loss`` (with the perceptron loss this is the classic update
  ``w += phi(gold) - phi(prediction)`` in energy form), returning the average
  ``(w_1 + ... + w_T) / T`` of the weights after each of the T steps (the starting weights
  ``w_0`` are not among them). It is computed with the lazy averaging trick, so sparse steps
  stay sparse: with step t adding ``d_t``, ``sum_t w_t = T w_T - sum_t (t - 1) d_t``, so it
  keeps ``u = sum_t (t - 1) d_t`` and returns ``w_T - u / T``.

Every optimizer warm-starts from ``w0``, prints one line per iteration (L-BFGS) or epoch with
the loss and whatever ``callback(w, epoch)`` returns (e.g. a dict with the dev accuracy), and
is silent with ``verbose=False``. Each returns ``(w, history)`` with ``history`` a list of
dicts (``"epoch"``, ``"loss"``, ``"time"`` and the callback's entries).
"""
import time
import warnings

import numpy as np
import scipy.sparse as sp

from . import losses as _losses
from .checks import check_threads, threads_for
from .learning import (ChainCorpus, FactoredFeatures, LinearChainEnergy, _check_csr,
                       _dense_data, _is_binary_data, _loss_params,
                       chain_batch_gradient, chain_objective, graph_objective)

__all__ = ["fit_chain", "fit_graphs", "OPTIMIZERS", "default_optimizer"]

OPTIMIZERS = ("lbfgs", "sgd", "adagrad", "perceptron")

_EPS_ADAGRAD = 1e-8


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
    l1 = float(l1)
    l2 = float(l2)
    if not (l1 >= 0 and l2 >= 0):
        raise ValueError(f"l1 and l2 must be >= 0, got l1={l1}, l2={l2}")
    if optimizer == "perceptron" and (l1 or l2):
        raise ValueError("the averaged perceptron takes no regularization (l1 = l2 = 0); its "
                         "averaging is the regularizer")
    if max_iter is None:
        max_iter = 100 if optimizer == "lbfgs" else 10
    max_iter = int(max_iter)
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if batch_size is None:
        batch_size = 8
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if learning_rate is None:
        learning_rate = {"sgd": 0.1, "adagrad": 0.1, "perceptron": 1.0}.get(optimizer, 0.0)
    learning_rate = float(learning_rate)
    if optimizer != "lbfgs" and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    return spec, optimizer, l1, l2, max_iter, batch_size, learning_rate


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
        if self.verbose:
            parts = [f"{self.name} {epoch:4d}", f"loss {row['loss']:.6g}"]
            for k, v in row.items():
                if k in ("epoch", "loss", "time"):
                    continue
                parts.append(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}")
            parts.append(f"{row['time']:.1f} s")
            print("  ".join(parts), flush=True)


def _lbfgs(fun, w0, l1, max_iter, tol, reporter):
    """Minimize fun(w) -> (value, grad) (+ l1 * ||w||_1): see :func:`_lbfgs_smooth` (l1 = 0)
    and :func:`_lbfgs_b_l1` (l1 > 0)."""
    if max_iter == 0:
        return w0.copy()
    if l1 > 0:
        return _lbfgs_b_l1(fun, w0, l1, max_iter, tol, reporter)
    return _lbfgs_smooth(fun, w0, max_iter, tol, reporter)


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
            if reporter.verbose:
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


def _prox_catch_up(W, lr, k, l1, l2):
    """Apply k proximal steps (soft-threshold lr*l1, then scale 1/(1+lr*l2)) in closed form.

    With c = 1/(1+lr*l2), k steps give |w| -> max(0, c^k |w| - lr*l1*(c + ... + c^k)), since
    the map is monotone and stays at 0 once it gets there. ``W`` (R, K) is modified in place;
    ``lr`` broadcasts against it, ``k`` is (R,).
    """
    k = k.reshape(-1, 1).astype(np.float64)
    lr = np.asarray(lr, dtype=np.float64)
    ll = lr * l2
    # c^k and c + c^2 + ... + c^k = (1 - c^k) / (lr * l2) with c = 1 / (1 + lr * l2), through
    # log1p/expm1 so that a tiny lr * l2 does not cancel (the sum tends to k).
    klog = -k * np.log1p(ll)
    ck = np.exp(klog)
    geo = np.where(ll > 0, -np.expm1(klog) / np.where(ll > 0, ll, 1.0), k)
    if l1 > 0:
        W[...] = np.sign(W) * np.maximum(0.0, ck * np.abs(W) - lr * l1 * geo)
    elif l2 > 0:
        W *= ck


def _adagrad_rate(eta, acc):
    """Per-coordinate AdaGrad step ``eta / (eps + sqrt(acc))``; 0 where nothing was seen yet,
    so a coordinate's regularization starts with its first gradient (a warm-started weight of a
    feature that has not occurred yet is not wiped out by the huge rate of an empty
    accumulator)."""
    return np.where(acc > 0, eta / (_EPS_ADAGRAD + np.sqrt(acc)), 0.0)


class _ChainStochastic:
    """Mini-batch SGD / AdaGrad / averaged perceptron on a LinearChainEnergy, sparse rows.

    Per mini-batch, the work outside the batch's gradient is a handful of Cython kernels
    (:mod:`factorebm._optim`) over the rows of the features that occur in the batch: gather the
    batch with its columns renumbered, catch those rows up on the proximal steps they missed,
    evaluate the gradient at them, then one fused pass for the accumulator, the step and the
    proximal step. All buffers are allocated once per :meth:`run`; no (n_cols, K) numpy
    temporaries are built per batch (dense work per batch would dominate: a batch of 32 EWT
    sentences touches ~3,700 of 127,000 feature rows).
    """

    def __init__(self, model, corpus, spec, params, beta, optimizer, l1, l2, batch_size,
                 learning_rate, rng, n_threads):
        self.model = model
        self.corpus = corpus
        self.spec = spec
        self.params = params
        self.beta = beta
        self.optimizer = optimizer
        self.l1 = l1
        self.l2 = l2
        self.batch_size = batch_size
        self.eta = learning_rate
        self.rng = rng
        self.n_threads = n_threads

    def _batch_buffers(self):
        """Output buffers of :func:`factorebm._optim.batch_csr`, sized for the largest batch.

        No batch holds more tokens (nonzeros) than the ``batch_size`` longest (densest)
        sequences, whatever the order. The batch's CSR indices are int32 whenever they fit,
        the dtype scipy would convert them to anyway (a copy per batch).

        Returns
        -------
        dict of arrays: ``indptr`` (max_tokens + 1,), ``indices`` (max_nnz,) int32 or int64,
        ``data`` (max_nnz,) float64, ``y`` (max_tokens,) int64, ``offsets`` (batch_size + 1,)
        int64, ``cols`` (max_cols,) int64, ``rows`` (max_cols, K) float64 (the caught-up
        weight rows), ``local_of`` (n_features,) int64 all -1 (the column map's scratch).
        """
        c = self.corpus
        X = c.X
        b = min(self.batch_size, max(c.n_sequences, 1))
        if isinstance(X, FactoredFeatures):
            cum = np.zeros(c.n_tokens + 1, dtype=np.int64)
            np.cumsum(X.row_nnz(), out=cum[1:])
            seq_nnz = cum[c.offsets[1:]] - cum[c.offsets[:-1]]
        else:
            seq_nnz = (X.indptr[c.offsets[1:]] - X.indptr[c.offsets[:-1]]).astype(np.int64)
        max_tok = int(np.sort(c.lengths)[::-1][:b].sum())
        max_nnz = int(np.sort(seq_nnz)[::-1][:b].sum())
        max_cols = min(max_nnz, self.model.n_features)
        idx = np.int32 if max(max_nnz, max_cols) < np.iinfo(np.int32).max else np.int64
        return {"indptr": np.empty(max_tok + 1, dtype=idx),
                "indices": np.empty(max_nnz, dtype=idx),
                "data": np.empty(max_nnz),
                "y": np.empty(max_tok, dtype=np.int64),
                "offsets": np.empty(b + 1, dtype=np.int64),
                "cols": np.empty(max_cols, dtype=np.int64),
                "rows": np.empty((max_cols, self.model.n_states)),
                "local_of": np.full(self.model.n_features, -1, dtype=np.int64)}

    def run(self, w, max_iter, reporter):
        """Run ``max_iter`` epochs from ``w`` (updated in place); return the final weights.

        ``w`` (n_weights,) float64 holds the current iterate: its emission block ``W``
        (n_features, K) is kept lazily (row r is exact as of step ``last[r]``; every row is
        caught up at the end of each epoch), the transition/start/end block densely.
        Returns ``w``, or for the perceptron the averaged weights (a new array).
        """
        from ._isa import kernel_module
        _optim = kernel_module("_optim")   # the AVX2+FMA build where the CPU has it
        model = self.model
        K = model.n_states
        F = model.n_features
        W, T, S, E = model.unpack(w)     # views into w: updating them updates w
        c = self.corpus
        X = c.X
        n = c.n_sequences
        opt = self.optimizer
        adagrad = opt == "adagrad"
        l1, l2 = self.l1, self.l2
        dense = w[model.n_emit:].reshape(1, -1)   # transition, start, end: one row, every step
        dense_row = np.zeros(1, dtype=np.int64)
        dense_last = np.zeros(1, dtype=np.int64)  # the dense row is never behind
        # AdaGrad's sums of squared gradients; a (0, K) placeholder for the other optimizers
        # (the kernels read it only when told it is AdaGrad's).
        acc_rows = np.zeros((F, K) if adagrad else (0, K))
        acc_dense = np.zeros(dense.shape if adagrad else (0, dense.shape[1]))
        if opt == "perceptron":
            u = np.zeros_like(w)        # sum over steps t of (t - 1) * update (averaging)
            U_rows = u[:model.n_emit].reshape(F, K)
            u_dense = u[model.n_emit:].reshape(1, -1)
        buf = self._batch_buffers()
        if isinstance(X, FactoredFeatures):
            # rows gathered through X = S @ Phi: the corpus never stores X itself
            factors = X.gather_arrays()

            def gather(seqs):
                return _optim.batch_csr_factored(
                    *factors, c.offsets, c.y, seqs, buf["local_of"], buf["indptr"],
                    buf["indices"], buf["data"], buf["y"], buf["offsets"], buf["cols"])
        else:
            # batch_csr reads an empty data array as "all ones" (binary features, no ones)
            X_data = np.empty(0) if _is_binary_data(X.data) else _dense_data(X)

            def gather(seqs):
                return _optim.batch_csr(
                    X.indptr, X.indices, X_data, c.offsets, c.y, seqs, buf["local_of"],
                    buf["indptr"], buf["indices"], buf["data"], buf["y"], buf["offsets"],
                    buf["cols"])
        last = np.full(F, -1, dtype=np.int64)
        step = 0
        for epoch in range(1, max_iter + 1):
            lr_epoch = self.eta / epoch if opt == "sgd" else self.eta
            # the catch-up's rate: AdaGrad's base rate, SGD's rate of this epoch (the
            # previous epoch's rows were all caught up at its end)
            rate = self.eta if adagrad else lr_epoch
            perm = self.rng.permutation(n)
            epoch_loss = 0.0
            for s0 in range(0, n, self.batch_size):
                s1 = min(n, s0 + self.batch_size)
                nb = s1 - s0
                n_tok, nnz, R = gather(perm[s0:s1])
                Xb = sp.csr_matrix((buf["data"][:nnz], buf["indices"][:nnz],
                                    buf["indptr"][:n_tok + 1]), shape=(n_tok, R))
                cols = buf["cols"][:R]
                W_rows = buf["rows"][:R]
                # Rows untouched since their last step still owe their proximal steps; the
                # gradient is taken at the caught-up rows.
                _optim.catch_up_rows(W, cols, last, step - 1, acc_rows, adagrad, rate,
                                     _EPS_ADAGRAD, l1, l2, W_rows)
                loss_sum, g_rows, g_T, g_S, g_E = chain_batch_gradient(
                    model, W_rows, T, S, E, Xb, buf["offsets"][:nb + 1], buf["y"][:n_tok],
                    self.spec, self.params, self.beta)
                epoch_loss += loss_sum
                g_dense = np.concatenate([g_T.ravel(), g_S, g_E]).reshape(1, -1)
                if opt == "perceptron":
                    # this is step t = step + 1: its update enters u with weight t - 1
                    _optim.perceptron_step(W, U_rows, g_rows, cols, lr_epoch, step)
                    _optim.perceptron_step(dense, u_dense, g_dense, dense_row, lr_epoch, step)
                elif adagrad:
                    _optim.adagrad_step(W, acc_rows, g_rows, cols, last, step, self.eta,
                                        _EPS_ADAGRAD, nb, l1, l2)
                    _optim.adagrad_step(dense, acc_dense, g_dense, dense_row, dense_last, 0,
                                        self.eta, _EPS_ADAGRAD, nb, l1, l2)
                else:
                    _optim.sgd_step(W, g_rows, cols, last, step, lr_epoch, nb, l1, l2)
                    _optim.sgd_step(dense, g_dense, dense_row, dense_last, 0, lr_epoch, nb,
                                    l1, l2)
                step += 1
            # End of epoch: every row catches up, so w is the true iterate.
            _optim.catch_up_all(W, last, step - 1, acc_rows, adagrad, rate, _EPS_ADAGRAD, l1,
                                l2)
            if opt == "perceptron":
                w_report = w - u / max(step, 1)
            else:
                w_report = w
            reporter(epoch, epoch_loss / max(n, 1), w_report)
        if opt == "perceptron":
            return w - u / max(step, 1)
        return w


def fit_chain(model, X, offsets, y, *, loss="nll", optimizer=None, l1=0.0, l2=None,
              max_iter=None, batch_size=None, learning_rate=None, w0=None, callback=None,
              verbose=True, n_threads=None, random_state=None, beta=1.0, tol=1e-9,
              **loss_params):
    """Train a :class:`~factorebm.learning.LinearChainEnergy` on a tagged corpus.

    Minimizes ``mean_i L(E+_i, E-_i) + 0.5 * l2 * ||w||^2 + l1 * ||w||_1`` (see
    :func:`factorebm.learning.chain_objective`).

    Parameters
    ----------
    model : LinearChainEnergy
    X : scipy.sparse (N, n_features), CSR float64 (int32 or int64 indices), or FactoredFeatures
        Token features of the whole corpus (a FactoredFeatures speeds up L-BFGS and spares
        the stochastic optimizers, which gather their mini-batches through its factors,
        the memory of X).
    offsets : (n+1,) int64
        Sequence i is tokens ``offsets[i]:offsets[i+1]``.
    y : (N,) int64
        Gold label ids.
    loss : str or LossSpec
        A loss of :mod:`factorebm.losses`.
    optimizer : {"lbfgs", "sgd", "adagrad", "perceptron"} or None
        None picks (:func:`default_optimizer`) L-BFGS for nll and energy, the averaged
        perceptron for the perceptron loss, AdaGrad for the margin losses (hinge, log, mce,
        lvq2, square_square, square_exp), whose E- is piecewise linear in the weights.
    l1, l2 : float
        Regularization; ``l2=None`` means 1e-4 (0 for the averaged perceptron, which takes
        none).
    max_iter : int or None
        L-BFGS iterations (default 100) or epochs (default 10).
    batch_size : int or None
        Sequences per mini-batch (default 8) for the stochastic optimizers.
    learning_rate : float or None
        Step size (defaults: 0.1 for sgd and adagrad, 1.0 for the perceptron).
    w0 : (n_weights,) float64 or None
        Warm start (default ``model.init_weights(random_state)``: zeros, or small random
        weights when the model has latent substates). Not modified.
    callback : callable ``callback(w, epoch)`` or None
        Called after every iteration/epoch with the current weights (the averaged ones for the
        perceptron); a returned dict is added to the history and the progress line.
    verbose : bool
        Print one progress line per iteration/epoch.
    n_threads : int or None
        OpenMP threads of the full-batch objective (None = all cores).
    random_state : int, numpy Generator or None
        Seed of the mini-batch order.
    beta : float
        Inverse temperature of the NLL's free energy.
    tol : float
        L-BFGS relative tolerance on the objective (``ftol``).
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
    if not isinstance(model, LinearChainEnergy):
        raise ValueError("fit_chain trains a factorebm.learning.LinearChainEnergy")
    spec, optimizer, l1, l2, max_iter, batch_size, learning_rate = _check_common(
        optimizer, loss, l1, l2, max_iter, batch_size, learning_rate)
    params = _loss_params(spec, beta, loss_params)
    if isinstance(X, ChainCorpus):
        corpus = X
    else:
        corpus = model._corpus(X if isinstance(X, FactoredFeatures)
                               else _check_csr(X, model.n_features), offsets, y)
    w = (model.init_weights(random_state) if w0 is None
         else model.check_weights(w0).copy())
    if n_threads is not None:
        check_threads(n_threads)      # validates
    reporter = _Reporter(optimizer, callback, verbose)
    if verbose:
        print(f"fit_chain: loss {spec.name}, optimizer {optimizer}, {corpus.n_sequences} "
              f"sequences, {corpus.n_tokens} tokens, {model.n_weights} weights", flush=True)
    if optimizer == "lbfgs":
        def fun(wv):
            return chain_objective(wv, model, corpus, None, None, spec, l2=l2, beta=beta,
                                   n_threads=n_threads, **loss_params)
        w = _lbfgs(fun, w, l1, max_iter, tol, reporter)
    else:
        rng = np.random.default_rng(random_state)
        runner = _ChainStochastic(model, corpus, spec, params, beta, optimizer, l1, l2,
                                  batch_size, learning_rate, rng, n_threads)
        w = runner.run(w, max_iter, reporter)
    return np.ascontiguousarray(w), reporter.history


def fit_graphs(samples, *, loss="nll", optimizer=None, l1=0.0, l2=None, max_iter=None,
               batch_size=None, learning_rate=None, w0=None, callback=None, verbose=True,
               random_state=None, beta=1.0, tol=1e-9, **loss_params):
    """Train the shared weights of parametric factor graphs.

    Minimizes ``mean_i L(E+_i, E-_i) + 0.5 * l2 * ||w||^2 + l1 * ||w||_1`` over
    ``samples``, a sequence of ``(ParametricGraph, target)`` pairs sharing one weight vector
    (see :func:`factorebm.learning.graph_objective`). Parameters, defaults and the returned
    ``(w, history)`` are as in :func:`fit_chain`, except that the stochastic optimizers
    update the weight vector densely (graphs are small) and ``batch_size`` counts graphs.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("fit_graphs needs at least one (ParametricGraph, target) sample")
    spec, optimizer, l1, l2, max_iter, batch_size, learning_rate = _check_common(
        optimizer, loss, l1, l2, max_iter, batch_size, learning_rate)
    _loss_params(spec, beta, loss_params)
    n_weights = samples[0][0].n_weights
    w = np.zeros(n_weights) if w0 is None else np.array(w0, dtype=np.float64)
    if w.shape != (n_weights,):
        raise ValueError(f"w0 must have shape ({n_weights},), got {w.shape}")
    reporter = _Reporter(optimizer, callback, verbose)

    def objective(wv, subset):
        return graph_objective(wv, subset, spec, l2=0.0, beta=beta, **loss_params)

    if optimizer == "lbfgs":
        def fun(wv):
            v, g = objective(wv, samples)
            return v + 0.5 * l2 * float(wv @ wv), g + l2 * wv
        return np.ascontiguousarray(_lbfgs(fun, w, l1, max_iter, tol, reporter)), \
            reporter.history

    rng = np.random.default_rng(random_state)
    n = len(samples)
    acc = np.zeros(n_weights)
    u = np.zeros(n_weights)
    step = 0
    one = np.ones(1, dtype=np.int64)
    for epoch in range(1, max_iter + 1):
        lr_epoch = learning_rate / epoch if optimizer == "sgd" else learning_rate
        perm = rng.permutation(n)
        total = 0.0
        for s0 in range(0, n, batch_size):
            batch = [samples[i] for i in perm[s0:s0 + batch_size]]
            v, g = objective(w, batch)
            total += v * len(batch)
            if optimizer == "perceptron":
                upd = -lr_epoch * g * len(batch)
                w += upd
                u += step * upd          # step t = step + 1 enters with weight t - 1
            else:
                if optimizer == "adagrad":
                    acc += g * g
                    lr = _adagrad_rate(learning_rate, acc)
                else:
                    lr = lr_epoch
                w -= lr * g
                w2 = w.reshape(1, -1)
                _prox_catch_up(w2, np.reshape(lr, (1, -1)) if np.ndim(lr) else lr, one, l1, l2)
            step += 1
        w_report = w - u / max(step, 1) if optimizer == "perceptron" else w
        reporter(epoch, total / n, w_report)
    if optimizer == "perceptron":
        w = w - u / max(step, 1)
    return np.ascontiguousarray(w), reporter.history
