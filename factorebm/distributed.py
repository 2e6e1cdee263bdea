"""Data-parallel training and tagging on a Dask cluster (``dask.distributed``).

The pattern of CRF-Spark and of dlib's distributed structural SVM, on an existing engine:
the training units (sequences, graphs) are cut into contiguous *shards*, each shard is sent
ONCE to a worker, where a :class:`ShardActor` builds its own local objective
(:class:`~factorebm.learning.ChainObjective`, :class:`~factorebm.learning.GraphObjective`)
and keeps it, with the Cython kernels' caches, for the whole training. Every evaluation
sends each shard what it needs and sums what comes back; the optimizer runs on the client.
Losses are sums over units (:mod:`factorebm.objective`), so the sum of the shards' sums is
the single-machine objective, to rounding.

* Full batch (L-BFGS): each evaluation sends w to every shard, which returns its loss sum and
  its (n_params,) gradient.
* Mini-batches (SGD, AdaGrad, Adam, the averaged perceptron), synchronously: each step's
  mini-batch -- drawn by the client's random generator exactly as locally -- is split among
  the shards that hold its units. At the start of an epoch one round trip fetches, for every
  step, which rows of each row block (:mod:`factorebm.params`) each shard's part touches
  (:meth:`DistributedObjective.plan`). Per step the client catches up the union of those rows
  (the lazy proximal steps of :mod:`factorebm.optimize`) and sends each shard only the dense
  parameters and the caught-up values of *its* rows; each returns its loss sum, its dense
  gradient and the gradient of its rows, which the client merges (union of rows, summed
  values). The rest of w never travels.

Shards are sums evaluated apart and added in shard order, so a shard evaluated again gives
the same numbers wherever it runs: when a worker is lost, its shards are rebuilt on the
surviving workers (their data sent again from the client, which keeps the corpus) and the
interrupted round is redone, giving the model an uninterrupted run gives. A lost connection
to the scheduler raises :class:`ConnectionError`: training never returns a partial model.

The workers run the kernels on their Dask thread count (``nthreads``). Dask's nannies set
``OMP_NUM_THREADS=1`` in the workers, which :func:`factorebm.checks.available_cores`
obeys: start workers of several threads with ``OMP_NUM_THREADS`` equal to their thread count
(:func:`connect` does for the local clusters it starts); the kernels then also keep a
small mini-batch part on one thread (their size rule, :func:`factorebm.checks.threads_for`).
The nannies also set ``MALLOC_TRIM_THRESHOLD_``, which makes every evaluation fault the
pages of its large arrays in again; :func:`connect` leaves it out (for other clusters: set
``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_`` to null in the Dask
configuration of the workers).

Dask is optional (``pip install factorebm[dask]``): it is imported here only by the functions
that need it, and :func:`require_dask` says how to install it.

References
----------
CRF-Spark (a linear-chain CRF trainer on Apache Spark), and D. King's distributed
structural SVM in dlib (``svm_struct_controller_node`` / ``svm_struct_processing_node``,
2011): the map-reduce of loss and gradient over shards that stay on the workers.
Rocklin, M., "Dask: Parallel computation with blocked algorithms and task scheduling"
(SciPy 2015); actors: https://distributed.dask.org/en/stable/actors.html.
"""
import contextlib
import copy
import io
import os
import sys
import threading
import time

import numpy as np

from .objective import Batch, BatchObjective
from .params import dense_segments

__all__ = ["DistributedObjective", "ShardActor", "connect", "require_dask", "shard_bounds",
           "tag_files", "tagged_name", "DASK_EXTRA"]

DASK_EXTRA = "pip install factorebm[dask]"

# How long the client waits for a shard to be (re)built on a worker before it tries another
# one, and how often a shard may fail (its worker dying) in one round before training stops:
# an input that crashes every worker it reaches must not loop forever.
PLACE_TIMEOUT_S = 60.0
MAX_SHARD_FAILURES = 3


def require_dask(what="client="):
    """Import ``distributed`` or raise ImportError naming the extra that installs it.

    Parameters
    ----------
    what : str
        The option that needs Dask, for the message (``client=``, ``--scheduler``).

    Returns
    -------
    module
        ``distributed``.
    """
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as exc:
        raise ImportError(f"{what} needs Dask's distributed scheduler, which is not "
                          f"installed: {DASK_EXTRA} (or pip install 'dask[distributed]')"
                          ) from exc
    return distributed


def _check_client(client):
    distributed = require_dask()
    if not isinstance(client, distributed.Client):
        raise ValueError(f"client must be a dask.distributed.Client, got "
                         f"{type(client).__name__} (connect with "
                         "dask.distributed.Client(address) or factorebm.distributed.connect)")
    return distributed


# -------------------------------------------------------------------------------- sharding
def shard_bounds(weights, n_shards):
    """Cut units into at most ``n_shards`` contiguous, non-empty ranges of about equal weight.

    Parameters
    ----------
    weights : (n,) array_like of float >= 0
        Cost of each unit (tokens of a sequence, table entries of a graph).
    n_shards : int >= 1

    Returns
    -------
    bounds : (m+1,) int64, 1 <= m <= n_shards
        Shard k holds units ``bounds[k]:bounds[k+1]``; ``bounds[0] = 0``, ``bounds[-1] = n``.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.shape[0]
    if n == 0:
        raise ValueError("cannot shard zero units")
    m = max(1, min(int(n_shards), n))
    cum = np.concatenate([[0.0], np.cumsum(w + 1e-9)])    # + 1e-9: empty units count a little
    targets = cum[-1] * np.arange(1, m) / m
    inner = np.searchsorted(cum, targets, side="left")
    bounds = np.unique(np.concatenate([[0], np.clip(inner, 1, n - 1), [n]])).astype(np.int64)
    return bounds


class _BinaryCSR:
    """A CSR matrix of ones sent without its data array (rebuilt as a stride-0 view of 1.0,
    :func:`factorebm.sparse.is_binary_data`): the ones would be a third of its bytes."""

    def __init__(self, M):
        self.indptr = M.indptr
        self.indices = M.indices
        self.shape = M.shape

    def matrix(self):
        import scipy.sparse as sp
        nnz = self.indices.shape[0]
        data = np.broadcast_to(np.float64(1.0), (nnz,)) if nnz > 1 else np.ones(nnz)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=self.shape)


class _FactoredPayload:
    """The token rows ``a:b`` of a FactoredFeatures ``X = S @ Phi``, with only the slots
    (rows of Phi) those tokens use."""

    def __init__(self, X, a, b):
        import scipy.sparse as sp
        S = X.S[a:b]
        used, local = np.unique(S.indices, return_inverse=True)
        S = sp.csr_matrix((np.ones(local.shape[0]), local.astype(S.indices.dtype), S.indptr),
                          shape=(b - a, used.shape[0]))
        self.S = _BinaryCSR(S)
        self.Phi = _BinaryCSR(X.Phi[used])

    def build(self):
        from .sparse import FactoredFeatures
        return FactoredFeatures(self.S.matrix(), self.Phi.matrix())


def _token_slice(X, a, b):
    """Token rows ``a:b`` of an emission input, in a form that travels cheaply."""
    from .sparse import CSRFeatures, FactoredFeatures, is_binary_data
    if isinstance(X, FactoredFeatures):
        return _FactoredPayload(X, a, b)
    if isinstance(X, CSRFeatures):
        M = X.X[a:b] if not is_binary_data(X.X.data) else None
        if M is None:
            import scipy.sparse as sp
            part = X.X
            lo, hi = part.indptr[a], part.indptr[b]
            M = _BinaryCSR(sp.csr_matrix((np.ones(hi - lo), part.indices[lo:hi],
                                          part.indptr[a:b + 1] - lo),
                                         shape=(b - a, part.shape[1])))
        return M
    if isinstance(X, np.ndarray):
        return X[a:b]
    if isinstance(X, (tuple, list)):
        return type(X)(_token_slice(p, a, b) for p in X)
    if isinstance(X, dict):
        return {k: _token_slice(v, a, b) for k, v in X.items()}
    if hasattr(X, "take_tokens"):
        return X.take_tokens(np.arange(a, b, dtype=np.int64))
    raise ValueError(f"cannot cut shards out of an input of type {type(X).__name__}; give it "
                     "a take_tokens(token_ids) method")


def _unpack_input(X):
    if isinstance(X, (_FactoredPayload, _BinaryCSR)):
        return X.build() if isinstance(X, _FactoredPayload) else X.matrix()
    if isinstance(X, (tuple, list)):
        return type(X)(_unpack_input(p) for p in X)
    if isinstance(X, dict):
        return {k: _unpack_input(v) for k, v in X.items()}
    return X


def _loss_params(objective):
    """The loss parameters the objective was built with (``beta`` is its own argument)."""
    return {k: v for k, v in objective.params.items() if k != "beta"}


def _build_chain(model, X, offsets, y, loss, beta, params):
    from .energies.chain import ChainObjective
    return ChainObjective(model, _unpack_input(X), offsets, y, loss, beta, **params)


def _build_graphs(samples, loss, beta, params, inference_options=None, first_sample=0):
    from .energies.graph import GraphObjective
    return GraphObjective(samples, loss, beta, inference_options, first_sample=first_sample,
                          **params)


def _loss_name(spec):
    """A registered loss travels by name; another LossSpec as itself (it must pickle)."""
    from . import losses
    try:
        return spec.name if losses.get(spec.name) is spec else spec
    except ValueError:
        return spec


def _unit_weights(objective):
    """The cost of each unit, for balancing shards: tokens of a sequence, table entries of a
    graph, 1 otherwise."""
    from .energies.chain import ChainObjective
    from .energies.graph import GraphObjective
    if isinstance(objective, ChainObjective):
        return np.diff(objective.corpus.offsets)
    if isinstance(objective, GraphObjective):
        return np.array([pg.table_offset[-1] for pg, _ in objective.samples], dtype=np.float64)
    return np.ones(objective.n_units)


def _shard_recipe(objective, lo, hi):
    """``(build, args)``: ``build(*args)`` on a worker gives the objective of units lo..hi-1.

    An objective of another kind can take part by defining ``shard_recipe(lo, hi)``."""
    from .energies.chain import ChainObjective
    from .energies.graph import GraphObjective
    if hasattr(objective, "shard_recipe"):
        return objective.shard_recipe(lo, hi)
    if isinstance(objective, ChainObjective):
        c = objective.corpus
        a, b = int(c.offsets[lo]), int(c.offsets[hi])
        model = copy.copy(objective.model)
        model._cache = None           # the corpus cache (a weak reference) stays here
        return _build_chain, (model, _token_slice(c.X, a, b), c.offsets[lo:hi + 1] - a,
                              c.y[a:b], _loss_name(objective.spec), objective.beta,
                              _loss_params(objective))
    if isinstance(objective, GraphObjective):
        return _build_graphs, (objective.samples[lo:hi], _loss_name(objective.spec),
                               objective.beta, _loss_params(objective),
                               objective.inference_options,
                               objective.graphs.first_sample + lo)
    raise ValueError(f"cannot split a {type(objective).__name__} into shards: give it a "
                     "shard_recipe(lo, hi) method returning (build, args)")


# -------------------------------------------------------------------------------- workers
def _worker_threads():
    """The Dask thread count of the worker running this code (None off a worker)."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        return None
    state = getattr(worker, "state", worker)
    return getattr(state, "nthreads", None)


class ShardActor:
    """One shard of a training set on a Dask worker (a Dask actor): builds the shard's local
    objective once and answers the client's evaluations with it.

    Parameters
    ----------
    recipe : (build, args)
        ``build(*args)`` returns the shard's :class:`~factorebm.objective.BatchObjective`.

    Every method returns its result followed by the seconds it computed, which the client
    compares with the round's wall time (the communication share).
    """

    def __init__(self, recipe):
        t0 = time.perf_counter()
        build, args = recipe
        self.objective = build(*args)
        # The worker's Dask threads. Where OMP_NUM_THREADS says the same, None: all of them
        # with the kernels' size rule (one thread per 8192 tokens at most), which keeps a
        # small mini-batch part on one thread (an OpenMP team costs more than it saves
        # there, and far more on a busy machine).
        from .checks import available_cores
        threads = _worker_threads()
        self.n_threads = None if threads in (None, available_cores()) else threads
        blocks = self.objective.row_blocks()
        self._blocks = blocks
        self._segments = dense_segments(self.objective.n_params, blocks)
        self._w = None
        self.build_seconds = time.perf_counter() - t0

    def info(self):
        """``({"n_units", "n_params", "n_threads", "build_seconds"}, 0.0)``."""
        obj = self.objective
        return {"n_units": obj.n_units, "n_params": obj.n_params,
                "n_threads": self.n_threads, "build_seconds": self.build_seconds}, 0.0

    def value_and_grad(self, w):
        """``(loss sum, gradient (n_params,), seconds)`` over the whole shard."""
        t0 = time.perf_counter()
        value, grad = self.objective.value_and_grad(w, self.n_threads)
        return float(value), np.ascontiguousarray(grad), time.perf_counter() - t0

    def rows(self, batches):
        """For each mini-batch part (an (n_b,) int64 array of the shard's unit ids, or None),
        the rows of each row block it touches: ``(list of (list of (R,) int64 or None),
        seconds)``."""
        t0 = time.perf_counter()
        out = []
        for units in batches:
            if units is None:
                out.append(None)
                continue
            batch = self.objective.batch(units)
            out.append([np.array(r, dtype=np.int64) for r in batch.rows])  # buffers are reused
        return out, time.perf_counter() - t0

    def step(self, units, dense, row_values, checks):
        """Loss sum and gradient of the mini-batch part ``units``.

        Parameters
        ----------
        units : (n_b,) int64, the shard's unit ids
        dense : (n_dense,) float64, the dense parameters (the dense segments end to end)
        row_values : list of (R_b, n_cols) float64
            Current (caught-up) weights of the rows :meth:`rows` gave for these units.
        checks : list of (R_b, sum of the row ids)
            What the client believes the rows are: a batch gathered differently raises.

        Returns
        -------
        (loss sum, dense gradient (n_dense,), list of row gradients (R_b, n_cols), seconds)
        """
        t0 = time.perf_counter()
        obj = self.objective
        if self._w is None:
            self._w = np.zeros(obj.n_params)
        w = self._w
        pos = 0
        for a, b in self._segments:
            w[a:b] = dense[pos:pos + b - a]
            pos += b - a
        batch = obj.batch(units)
        for blk, rows, values, check in zip(self._blocks, batch.rows, row_values, checks):
            if (rows.shape[0], int(rows.sum())) != tuple(check):
                raise RuntimeError("a shard gathered a mini-batch with other rows than it "
                                   "reported (non-deterministic batch gathering)")
            # the rows a module reads straight from w (an Embedding) are current too
            w[blk.offset:blk.offset + blk.n_rows * blk.n_cols].reshape(
                blk.n_rows, blk.n_cols)[rows] = values
        grad = obj.batch_gradient(batch)
        value = obj.batch_value_and_grad(w, batch, grad.view(), self.n_threads,
                                         list(row_values) if row_values else None)
        return float(value), grad.dense, grad.values, time.perf_counter() - t0


# -------------------------------------------------------------------------------- client
def _nbytes(x):
    """Payload bytes of a message: array buffers and scalars (pickling adds a few dozen
    bytes of header per array)."""
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    if isinstance(x, (bytes, bytearray)):
        return len(x)
    return 8 if isinstance(x, (int, float, np.generic)) else 0


class _Shard:
    def __init__(self, index, lo, hi):
        self.index = index
        self.lo = lo
        self.hi = hi
        self.worker = None
        self.future = None       # the actor's future: the actor lives while it is held
        self.actor = None
        self.failures = 0


class DistributedObjective(BatchObjective):
    """A :class:`~factorebm.objective.BatchObjective` evaluated by shards on a Dask cluster.

    Parameters
    ----------
    client : dask.distributed.Client
    objective : BatchObjective
        The local objective (a ChainObjective or GraphObjective, or any objective with a
        ``shard_recipe(lo, hi)`` method). Its units are cut into shards of about equal cost
        and each is sent once to a worker; the client keeps ``objective`` itself, from which
        it rebuilds the shards of a lost worker.
    n_shards : int or None
        Default: one per worker.

    Attributes
    ----------
    bounds : (n_shards+1,) int64, shard k holds units ``bounds[k]:bounds[k+1]``
    stats : dict
        Per round kind (``"value_and_grad"``, ``"rows"``, ``"step"``): ``rounds``,
        ``wall_s`` (client wall time), ``compute_s`` (sum over rounds of the slowest shard's
        compute time), ``bytes_sent`` and ``bytes_received`` (array payloads), and
        ``recoveries`` (shards rebuilt after a worker was lost).
    """

    def __init__(self, client, objective, n_shards=None):
        self._distributed = _check_client(client)
        if not isinstance(objective, BatchObjective):
            raise ValueError(f"expected a factorebm.objective.BatchObjective, got "
                             f"{type(objective).__name__}")
        self.client = client
        self.local = objective
        self.n_params = objective.n_params
        self.n_units = objective.n_units
        self.spec = objective.spec
        self._blocks = objective.row_blocks()
        self._segments = dense_segments(self.n_params, self._blocks)
        self.stats = {}
        self._planned = []
        # one round trip at a time; the epoch's plan is taken step by step under it too
        self._lock = threading.RLock()
        if n_shards is not None and (isinstance(n_shards, bool) or not isinstance(
                n_shards, (int, np.integer)) or n_shards < 1):
            raise ValueError(f"n_shards must be None or an integer >= 1, got {n_shards!r}")
        workers = self._live_workers()
        if not workers:
            raise ValueError("the Dask cluster has no workers")
        if n_shards is None:
            n_shards = len(workers)
        self.bounds = shard_bounds(_unit_weights(objective), n_shards)
        self._shards = [_Shard(k, int(a), int(b))
                        for k, (a, b) in enumerate(zip(self.bounds[:-1], self.bounds[1:]))]
        order = sorted(workers)
        try:
            self._place(self._shards,
                        {s.index: order[s.index % len(order)] for s in self._shards})
        except Exception as exc:          # a worker lost while the shards were sent
            if not self._is_worker_loss(exc):
                raise
            self._recover([s for s in self._shards if s.actor is None], exc)

    @property
    def n_shards(self):
        return len(self._shards)

    def row_blocks(self):
        return self._blocks

    def init_params(self, random_state=None):
        return self.local.init_params(random_state)

    def check_params(self, w):
        return self.local.check_params(w)

    def close(self):
        """Release the shards' actors (their workers drop the shard data)."""
        for s in self._shards:
            if s.future is not None:
                s.future.release()
            s.future = s.actor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- cluster state
    def _connection_lost(self, exc=None):
        return ConnectionError(
            f"lost the connection to the Dask scheduler (client status {self.client.status!r})"
            f"{'' if exc is None else f': {exc}'}; training stopped and returned no model")

    def _live_workers(self):
        """``{address: nthreads}`` of the cluster's workers; ConnectionError when the
        scheduler cannot be reached."""
        if self.client.status not in ("running", "newly-created"):
            raise self._connection_lost()
        try:
            return dict(self.client.nthreads(callback_timeout=PLACE_TIMEOUT_S))
        except (OSError, TimeoutError, self._distributed.TimeoutError) as exc:
            raise self._connection_lost(exc) from exc
        except Exception as exc:      # a client closed meanwhile raises its own kinds
            if self.client.status not in ("running", "newly-created"):
                raise self._connection_lost(exc) from exc
            raise

    def _place(self, shards, where):
        """Build ``shards`` on the workers ``where[shard.index]``: their data is scattered
        to that worker once, then a ShardActor builds the local objective there."""
        client = self.client
        data = {}
        try:
            for s in shards:
                recipe = _shard_recipe(self.local, s.lo, s.hi)
                # a list of one: scatter would send the parts of a bare tuple apart
                data[s.index] = client.scatter([recipe], workers=[where[s.index]],
                                               hash=False, direct=True)[0]
            futures = {s.index: client.submit(ShardActor, data[s.index], actor=True,
                                              workers=[where[s.index]],
                                              allow_other_workers=False, pure=False)
                       for s in shards}
            for s in shards:
                s.actor = futures[s.index].result(timeout=PLACE_TIMEOUT_S)
                s.future = futures[s.index]
                s.worker = where[s.index]
        finally:
            for f in data.values():
                f.release()        # the actor holds the shard now

    def _recover(self, failed, exc):
        """Rebuild the shards ``failed`` (whose worker was lost) on surviving workers."""
        deadline = time.monotonic() + PLACE_TIMEOUT_S
        suspects = {s.worker for s in failed}
        while True:
            workers = self._live_workers()
            alive = [a for a in sorted(workers) if a not in suspects] or sorted(workers)
            if alive:
                load = {a: 0 for a in alive}
                for s in self._shards:
                    if s not in failed and s.worker in load:
                        load[s.worker] += 1
                where = {}
                for s in failed:
                    a = min(alive, key=lambda a: (load[a], alive.index(a)))
                    where[s.index] = a
                    load[a] += 1
                try:
                    for s in failed:
                        if s.future is not None:
                            s.future.release()
                        s.future = s.actor = None
                    self._place(failed, where)
                    self.stats.setdefault("recoveries", 0)
                    self.stats["recoveries"] += len(failed)
                    return
                except Exception as place_exc:   # the chosen worker died too, or timed out
                    if self.client.status not in ("running", "newly-created"):
                        raise self._connection_lost(place_exc) from place_exc
                    if not self._is_worker_loss(place_exc):
                        raise
                    exc = place_exc
                    suspects |= set(where.values())
            if time.monotonic() > deadline:
                raise RuntimeError(f"lost the workers of {len(failed)} shard(s) and could "
                                   f"not rebuild them on another worker within "
                                   f"{PLACE_TIMEOUT_S:.0f} s: {exc}") from exc
            time.sleep(0.2)

    def _is_worker_loss(self, exc):
        d = self._distributed
        if isinstance(exc, (OSError, TimeoutError, d.TimeoutError, d.CancelledError)):
            return True
        return isinstance(exc, RuntimeError) and "lost" in str(exc)

    def _round(self, method, calls):
        """Call ``method`` on the shards of ``calls`` ({shard index: args}) at once; redo
        the calls of shards whose worker is lost once they are rebuilt elsewhere. Returns
        {shard index: result without its seconds}."""
        with self._lock:
            return self._round_locked(method, calls)

    def _round_locked(self, method, calls):
        if any(self._shards[k].actor is None for k in calls):
            raise ValueError("this DistributedObjective is closed (its shards were released)")
        st = self.stats.setdefault(method, {"rounds": 0, "wall_s": 0.0, "compute_s": 0.0,
                                            "bytes_sent": 0, "bytes_received": 0})
        t0 = time.perf_counter()
        results = {}
        pending = dict(calls)
        slowest = 0.0
        while pending:
            if self.client.status not in ("running", "newly-created"):
                raise self._connection_lost()
            futures = {}
            for k, args in pending.items():
                st["bytes_sent"] += _nbytes(args)
                try:
                    futures[k] = getattr(self._shards[k].actor, method)(*args)
                except Exception as exc:      # the actor's worker is known lost already
                    futures[k] = exc
            failed, error = [], None
            for k, f in futures.items():
                try:
                    if isinstance(f, Exception):
                        raise f
                    res = f.result()
                except Exception as exc:
                    if not self._is_worker_loss(exc):
                        raise
                    if self.client.status not in ("running", "newly-created"):
                        raise self._connection_lost(exc) from exc
                    failed.append(self._shards[k])
                    error = exc
                    continue
                st["bytes_received"] += _nbytes(res[:-1])
                slowest = max(slowest, res[-1])
                results[k] = res[:-1]
            if not failed:
                break
            for s in failed:
                s.failures += 1
                if s.failures > MAX_SHARD_FAILURES:
                    raise RuntimeError(f"shard {s.index} (units {s.lo}..{s.hi - 1}) failed "
                                       f"{s.failures} times, its worker lost each time; the "
                                       f"last error: {error}") from error
            self._recover(failed, error)
            pending = {s.index: pending[s.index] for s in failed}
        for k in results:
            self._shards[k].failures = 0
        st["rounds"] += 1
        st["wall_s"] += time.perf_counter() - t0
        st["compute_s"] += slowest
        return results

    def ping(self):
        """Seconds of one round trip to every shard at once that carries nothing: the
        latency and dispatch cost that every evaluation and step pays."""
        t0 = time.perf_counter()
        self._round("info", {s.index: () for s in self._shards})
        return time.perf_counter() - t0

    # ---------------------------------------------------------------- full batch
    def value_and_grad(self, w, n_threads=None):
        """Sum over all units of the loss, and its (n_params,) gradient: the shards' sums
        added in shard order. ``n_threads`` is unused (each worker uses its own threads)."""
        w = self.check_params(w)
        results = self._round("value_and_grad", {s.index: (w,) for s in self._shards})
        value = 0.0
        grad = np.zeros(self.n_params)
        for k in range(self.n_shards):
            v, g = results[k]
            value += v
            grad += g
        return value, grad

    def unit_value_and_grad(self, w, units, n_threads=None):
        w = self.check_params(w)
        batch = self.batch(units)
        g = self.batch_gradient(batch)
        value = self.batch_value_and_grad(w, batch, g.view(), n_threads)
        return value, g.to_dense()

    # ---------------------------------------------------------------- mini-batches
    def _split(self, units):
        """{shard index: the shard's unit ids of ``units`` (in batch order, local ids)}."""
        units = np.asarray(units, dtype=np.int64)
        if units.size and (units.min() < 0 or units.max() >= self.n_units):
            raise ValueError(f"unit ids must lie in 0..{self.n_units - 1}")
        shard = np.searchsorted(self.bounds, units, side="right") - 1
        return {int(k): units[shard == k] - self.bounds[k] for k in np.unique(shard)}

    def plan(self, batches):
        """Fetch, in one round trip, the rows every mini-batch of the coming epoch touches
        in each shard (called by the stochastic optimizers at the start of each epoch)."""
        parts = [self._split(units) for units in batches]
        if not self._blocks:
            rows = [{k: [] for k in p} for p in parts]
        else:
            calls = {s.index: ([p.get(s.index) for p in parts],) for s in self._shards}
            got = self._round("rows", calls)
            rows = [{k: got[k][0][i] for k in p} for i, p in enumerate(parts)]
        with self._lock:
            self._planned = list(zip(batches, parts, rows))[::-1]    # popped from the end

    def batch(self, units):
        """The mini-batch ``units``: the union of the rows its shards' parts touch (sorted),
        and where each shard's rows sit in it."""
        units = np.ascontiguousarray(units, dtype=np.int64)
        with self._lock:
            planned = self._planned.pop() if self._planned and np.array_equal(
                self._planned[-1][0], units) else None
            if planned is None:
                self._planned = []
        if planned is not None:
            _, parts, rows = planned
        else:
            parts = self._split(units)
            if self._blocks:
                got = self._round("rows", {k: ([p],) for k, p in parts.items()})
                rows = {k: got[k][0][0] for k in parts}
            else:
                rows = {k: [] for k in parts}
        union, where = [], {k: [] for k in parts}
        for b in range(len(self._blocks)):
            u = np.unique(np.concatenate([rows[k][b] for k in parts])) if parts else \
                np.zeros(0, dtype=np.int64)
            union.append(u)
            for k in parts:
                r = rows[k][b]
                where[k].append((np.searchsorted(u, r), (r.shape[0], int(r.sum()))))
        return Batch(units, union, parts=parts, where=where)

    def batch_value_and_grad(self, w, batch, grad, n_threads=None, row_values=None):
        """Each shard's part of the batch evaluated on its worker; the gradients merged
        into ``grad`` (a view of the whole BatchGradient of ``batch``)."""
        if grad.lo != 0 or grad.hi != self.n_params:
            raise ValueError("a distributed batch gradient is filled whole (a view of all "
                             "parameters)")
        G = grad.grad
        dense = np.concatenate([w[a:b] for a, b in self._segments]) if self._segments \
            else np.zeros(0)
        if row_values is None:
            row_values = [w[blk.offset:blk.offset + blk.n_rows * blk.n_cols].reshape(
                blk.n_rows, blk.n_cols)[r] for blk, r in zip(self._blocks, batch.rows)]
        calls = {}
        for k, units in batch.parts.items():
            where = batch.where[k]
            calls[k] = (units, dense, [v[pos] for v, (pos, _) in zip(row_values, where)],
                        [c for _, c in where])
        results = self._round("step", calls)
        value = 0.0
        for k in sorted(results):
            v, g_dense, g_rows = results[k]
            value += v
            G.dense += g_dense
            for b, (pos, _) in enumerate(batch.where[k]):
                G.values[b][pos] += g_rows[b]     # pos: distinct rows within a shard
        return value


# -------------------------------------------------------------------------------- clusters
@contextlib.contextmanager
def connect(scheduler):
    """A Dask client for ``scheduler``, closed (with the cluster it started) on exit.

    Parameters
    ----------
    scheduler : str
        A scheduler address (``tcp://host:8786``, ``host:8786``), or ``"local"`` /
        ``"local:N"``: a LocalCluster of N worker processes (default: one per core) on this
        machine, each with ``cores // N`` threads (at least 1) and ``OMP_NUM_THREADS`` set to
        match.

    Yields
    ------
    dask.distributed.Client
    """
    distributed = require_dask("--scheduler")
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise ValueError(f"scheduler must be an address or local[:N], got {scheduler!r}")
    spec = scheduler.strip()
    if spec == "local" or spec.startswith("local:"):
        from .checks import available_cores
        count = spec[len("local:"):] if ":" in spec else ""
        if count and not (count.isdigit() and int(count) >= 1):
            raise ValueError(f"--scheduler {scheduler}: N in local:N must be an integer >= 1")
        cores = available_cores()
        n = int(count) if count else cores
        threads = max(1, cores // n)
        import logging
        import dask
        # Dask's nannies write their OMP_NUM_THREADS (1) into THIS process's environment
        # before spawning a worker, and leave it there: every later factorebm kernel of the
        # client would run on one thread (checks.available_cores). The workers get it from
        # env= instead. MALLOC_TRIM_THRESHOLD_ (64 KiB) makes glibc hand every large freed
        # array back to the OS, so an evaluation's (N, S) arrays fault their pages in again
        # each time: shards computed up to 1.5x slower with it. Dashboard ":0": the
        # scheduler's HTTP server on a free port (its default, 8787, may be held by another
        # cluster on this machine).
        with dask.config.set({"distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": None,
                              "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
                                  None}):
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=threads, processes=True,
                dashboard_address=":0", silence_logs=logging.ERROR,
                env={"OMP_NUM_THREADS": str(threads)})
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = distributed.Client(spec, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"cannot reach the Dask scheduler at {spec}: {exc}") from None
    try:
        yield client
    finally:
        client.close()


# -------------------------------------------------------------------------------- tagging
def tagged_name(path):
    """The output file name of an input file: its name, without ``.gz``, ending ``.conllu``."""
    name = os.path.basename(os.fspath(path))
    if name.endswith(".gz"):
        name = name[:-3]
    return name if name.endswith(".conllu") else name + ".conllu"


def _tag_document(tagger, data, fmt, name):
    """Tag one document (bytes of CoNLL-U or text): ``(CoNLL-U bytes, comments only)``."""
    from .tagger import comments_only, tag_document
    if getattr(tagger, "n_threads", None) is None:
        tagger.n_threads = _worker_threads()     # not every core of a shared machine
    source = io.BytesIO(data)
    source.name = name
    document, codes, labels = tag_document(tagger, source, fmt)
    out = io.BytesIO()
    document.write_codes(out, codes, labels)
    return out.getvalue(), comments_only(document, fmt)


def tag_files(tagger, paths, outdir, format="auto", client=None):
    """Tag many files, across a Dask cluster when ``client`` is given, into ``outdir``.

    The client reads each file and writes each result (so the workers need no shared file
    system): ``outdir/tagged_name(path)``, written atomically (a temporary file in
    ``outdir``, then renamed), so a reader never sees a partial output. The tagger is sent
    once to every worker; at most two files per worker are in flight.

    Parameters
    ----------
    tagger : SequenceTagger (fitted)
    paths : list of str
    outdir : str, an existing folder
    format : {"auto", "conllu", "text"}
    client : dask.distributed.Client or None (tag here, one file after the other)

    Returns
    -------
    list of str, the output paths in the order of ``paths``
    """
    from .modelio import write_atomic
    outputs = [os.path.join(outdir, tagged_name(p)) for p in paths]
    seen = {}
    for p, o in zip(paths, outputs):
        if o in seen:
            raise ValueError(f"{seen[o]} and {p} would both be written to {o}")
        seen[o] = p

    def finish(i, result):
        data, comments_only = result
        if comments_only:
            print(f"factorebm tag: warning: {paths[i]} has only comment lines, written back "
                  "untagged; use --format text to tag it as plain text", file=sys.stderr)
        write_atomic(outputs[i], data, durable=False)

    def read(path):
        with open(path, "rb") as fh:
            return fh.read()

    if client is None:
        for i, p in enumerate(paths):
            finish(i, _tag_document(tagger, read(p), format, p))
        return outputs
    distributed = _check_client(client)
    if getattr(tagger, "client", None) is not None:
        tagger = copy.copy(tagger)
        tagger.client = None          # a connection does not travel
    model = client.scatter(tagger, broadcast=True, hash=False)
    window = 2 * max(1, len(client.nthreads()))
    queue = list(enumerate(paths))[::-1]
    running = distributed.as_completed()
    index = {}
    try:
        while queue or index:
            while queue and len(index) < window:
                i, p = queue.pop()
                f = client.submit(_tag_document, model, client.scatter(read(p), hash=False),
                                  format, p, pure=False)
                index[f.key] = i
                running.add(f)
            f = next(running)
            i = index.pop(f.key)
            try:
                result = f.result()
            except distributed.CancelledError as exc:
                raise ConnectionError(f"lost the connection to the Dask scheduler while "
                                      f"tagging {paths[i]}: {exc}") from exc
            finish(i, result)
            f.release()
    finally:
        model.release()
    return outputs
