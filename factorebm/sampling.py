"""Markov chain Monte Carlo: samples of the Gibbs distribution of a factor graph.

``fe.sample(g, ...)`` draws assignments from ``P(x) = exp(-beta E(x)) / Z`` (LeCun et al.
2006, section 1.3), restricted to the evidence, where exact sum-product is out of reach:
the samples answer expectations under P (marginals, mean energies, the contrastive term of
the negative log-likelihood loss) by averages.

* ``method="gibbs"``: blocked Gibbs sampling (Geman and Geman 1984). The variables are
  coloured so that no two of one colour share a factor (a greedy colouring, computed once per
  compiled graph); the variables of one colour are independent given the others, so each
  colour is drawn in parallel (OpenMP), colour after colour (systematic scan). Every site is
  drawn exactly from its conditional distribution.
* ``method="mh"``: single-site Metropolis-Hastings over the same scan, proposing one of the
  other labels uniformly and accepting with probability min(1, exp(-beta dE)).

Both run in the Cython kernel ``factorebm._sample`` over the compiled graph's flat arrays;
latent variables are sampled like the others, evidence variables are clamped, +inf energies
are never visited. Random numbers are counter-based (a hash of the chain's key, the sweep
and the variable), so the samples depend on ``random_state`` only: not on ``n_threads``.

:func:`sweep_chains` is the building block underneath: it advances persistent chains (a
states array kept by the caller) by a number of sweeps in place, reading the graph's current
tables, for persistent contrastive divergence; :func:`accumulate_beliefs` turns chain states
into the empirical beliefs (flat, in the compiled layout) that the gradient needs.

:func:`metropolis_hastings` is random-walk Metropolis-Hastings for continuous parameters
with a Python log-density (e.g. a posterior over a model's parameters).

Examples
--------
>>> s = fe.sample(g, n_samples=2000, beta=1.0, n_chains=4)     # doctest: +SKIP
>>> s.marginals["a"], s.energies.mean()                        # doctest: +SKIP
"""
import weakref
from numbers import Integral, Real

import numpy as np

from . import _sample
from .checks import check_beta, check_count, threads_for
from .indexing import padded, ranges
from .graph import FactorGraph

__all__ = ["sample", "SampleResult", "metropolis_hastings", "sweep_chains", "initial_states",
           "state_energies", "accumulate_beliefs", "colouring", "METHODS"]

METHODS = ("gibbs", "mh")

_I = np.int64
_INT32_MAX = 2**31 - 1
# below this many variables per thread in the largest colour, a parallel loop over one
# colour's variables costs more in barriers than it gains: parallelize over chains instead
_MIN_COLOUR_PER_THREAD = 2048


# ---------------------------------------------------------------------- per-graph layout
class _Layout:
    """What the kernel reads besides the compiled arrays, built once per compiled structure.

    * the colouring (V,) and, per set of clamped variables, the update order;
    * the pairwise slots of every variable: (other variable, offset of the oriented table),
      int32, and the oriented tables;
    * the slots in factors of arity >= 3 (the edge of the variable).

    The table offsets and the exponentiated energies follow the compiled graph's current
    tables (re-read when they are replaced); every cached entry is an immutable tuple set in
    one assignment, so concurrent calls at most compute one twice.
    """

    def __init__(self, cg):
        V = cg.n_vars
        self.n_vars = V
        colour = np.full(V, -1, dtype=_I)
        n_colours = 0
        if V:
            n_colours = _sample.greedy_colouring(
                cg.var_edge_offset, padded(cg.var_edges, _I), padded(cg.edge_fac, _I),
                cg.fac_edge_offset, padded(cg.edge_var, _I), colour, np.full(V + 1, -1, dtype=_I))
        colour.setflags(write=False)
        self.colour = colour
        self.n_colours = int(n_colours)
        arity = np.diff(cg.fac_edge_offset)
        ve = np.asarray(cg.var_edges, dtype=_I)
        # int32 slots: the oriented tables (the shared ones, at most one transposed copy per
        # pairwise factor) hold fewer than twice as many entries as all tables
        pair_ok = V <= _INT32_MAX and 2 * int(cg.fac_table_offset[-1]) <= _INT32_MAX
        is_pair = (arity[cg.edge_fac[ve]] == 2) & pair_ok
        pe = ve[is_pair]
        first = pe == cg.fac_edge_offset[cg.edge_fac[pe]]
        self.pair_edge = pe
        self.pair_first = first
        self.pair_other = cg.edge_var[np.where(first, pe + 1, pe - 1)]
        self.pair_offset = np.zeros(V + 1, dtype=_I)
        np.cumsum(np.bincount(cg.edge_var[pe], minlength=V), out=self.pair_offset[1:])
        self.high_edge = padded(ve[~is_pair], _I)
        self.high_offset = np.zeros(V + 1, dtype=_I)
        np.cumsum(np.bincount(cg.edge_var[ve[~is_pair]], minlength=V), out=self.high_offset[1:])
        self.var_card = np.asarray(cg.var_n_states, dtype=_I)
        # the kernel's specialized sweeps index the states of v as K v .. K v + K - 1 and
        # have no arity >= 3 walk
        K = int(self.var_card[0]) if V else 0
        self.uniform_k = K if (V and 2 <= K <= 8 and (self.var_card == K).all()
                               and is_pair.all()) else 0
        self._orders = {}
        self._tables = (None, None)
        self._exp_tables = (None, None, None)
        self._exp_unary = (None, None, None)

    def order(self, clamped):
        """(order, colour_offset): the unclamped variables colour by colour, and the largest colour."""
        key = clamped.tobytes()
        hit = self._orders.get(key)
        if hit is None:
            free = np.ones(self.n_vars, dtype=bool)
            free[clamped] = False
            idx = np.flatnonzero(free)
            cols = self.colour[idx]
            order = idx[np.argsort(cols, kind="stable")]
            sizes = np.bincount(cols, minlength=self.n_colours)
            sizes = sizes[sizes > 0]
            offset = np.zeros(len(sizes) + 1, dtype=_I)
            np.cumsum(sizes, out=offset[1:])
            moving = int((self.var_card[idx] > 1).sum())
            hit = (padded(order, _I), offset, int(sizes.max()) if sizes.size else 0, moving,
                   {})     # the last: the specialized sweeps' arrays in this order (positions)
            if len(self._orders) > 64:
                self._orders.clear()
            self._orders[key] = hit
        return hit

    def tables(self, cg):
        """(slots, gather, tables): the pairwise slots and the oriented energy tables.

        slots : int32 (P, 2)
            Other variable, and offset of the factor's table read as a (K_other, K_v)
            matrix in ``tables``.
        gather : int64 (N,)
            ``tables = cg.unique_tables[gather]``: the shared tables as they are (so the
            compiled offsets stay valid), then one transposed copy of each shared table that
            some variable reads as the first axis of its factor (a table shared by factors of
            shapes (a, b) and (b, a) gets one copy per such slot).
        """
        src, out = self._tables
        if src is not cg.fac_table:
            src = cg.fac_table
            n_shared = cg.unique_tables.size
            off = src[cg.edge_fac[self.pair_edge]]
            rows = off.copy()
            gather = np.arange(n_shared, dtype=_I)
            f = np.flatnonzero(self.pair_first)
            if f.size:
                o = off[f]
                kv = self.var_card[cg.edge_var[self.pair_edge[f]]]
                ko = self.var_card[self.pair_other[f]]
                kv_of = np.full(n_shared, -1, dtype=_I)
                kv_of[o] = kv
                own = kv_of[o] != kv                 # shared with another shape: own copy
                mark = np.zeros(n_shared, dtype=bool)
                mark[o[~own]] = True
                shared = np.flatnonzero(mark)
                ko_of = np.zeros(n_shared, dtype=_I)
                ko_of[o[~own]] = ko[~own]
                c_src = np.concatenate([shared, o[own]])
                c_kv = np.concatenate([kv_of[shared], kv[own]])
                c_ko = np.concatenate([ko_of[shared], ko[own]])
                sizes = c_kv * c_ko
                starts = np.zeros(len(sizes) + 1, dtype=_I)
                np.cumsum(sizes, out=starts[1:])
                copy_of = np.zeros(n_shared, dtype=_I)
                copy_of[shared] = np.arange(len(shared))
                copy = np.where(own, len(shared) + np.cumsum(own) - 1, copy_of[o])
                rows[f] = n_shared + starts[copy]
                rep = np.repeat(np.arange(len(sizes)), sizes)
                local = np.arange(int(starts[-1])) - starts[rep]
                # entry (j, i) of copy c: other variable's state j, v's state i
                j, i = np.divmod(local, c_kv[rep])
                gather = np.concatenate([gather, c_src[rep] + i * c_ko[rep] + j])
            slots = np.zeros((max(self.pair_edge.size, 1), 2), dtype=np.int32)
            slots[:self.pair_edge.size, 0] = self.pair_other
            slots[:self.pair_edge.size, 1] = rows
            out = (slots, gather, padded(cg.unique_tables[gather], np.float64))
            self._tables = (src, out)
        return out

    def positions(self, cg, order, cache, beta):
        """With uniform_k, (pos_offset, pos_degree, pos_slot, pos_exp_unary): the slots and
        the unary weights of the variables in update order (see _sample_site.h); else
        dummies.

        When padding every variable to the largest degree D costs at most a quarter more
        slots (lattices: only the border has fewer neighbours), pos_degree = D and each
        variable has D slots, the missing ones reading a K x K block of ones at the end of
        :meth:`exp_tables` (a product times 1.0 is itself: the same draws), so that the
        kernel finds a slot row at D i with no offsets to load; else pos_degree = 0 and
        pos_offset is the CSR of the slots.
        """
        if not self.uniform_k:
            return np.zeros(1, dtype=_I), 0, np.zeros((1, 2), dtype=np.int32), np.zeros(1)
        K = self.uniform_k
        slots, gather, _ = self.tables(cg)
        eu = self.exp_unary(cg, beta)
        hit = cache.get("slots")
        if hit is None or hit[0] is not slots:
            deg = np.diff(self.pair_offset)[order]
            pos_offset = np.zeros(len(order) + 1, dtype=_I)
            np.cumsum(deg, out=pos_offset[1:])
            rows = ranges(self.pair_offset[order], deg)
            D = int(deg.max()) if deg.size else 0
            ones = gather.size                    # offset of the block of ones
            if 0 < D and D * deg.size <= 1.25 * pos_offset[-1] and ones + K * K <= _INT32_MAX:
                pad = np.empty((deg.size, D, 2), dtype=np.int32)
                pad[:, :, 0] = order[:, None]     # x_v itself: a state in 0..K-1
                pad[:, :, 1] = ones
                pad[np.arange(D) < deg[:, None]] = slots[rows]
                hit = (slots, pos_offset, D, pad.reshape(-1, 2))
            else:
                hit = (slots, pos_offset, 0, padded(slots[rows], np.int32))
            cache["slots"] = hit
        hit_u = cache.get("unary")
        if hit_u is None or hit_u[0] is not eu:
            hit_u = (eu, padded(eu.reshape(-1, K)[order].ravel(), np.float64))
            cache["unary"] = hit_u
        return hit[1], hit[2], hit[3], hit_u[1]

    def exp_tables(self, cg, beta):
        """exp(-beta (T - min T)) of the oriented tables (see :meth:`tables`), then, with
        uniform_k = K, a K x K block of ones (the padding slots of :meth:`positions`)."""
        _, gather, _ = self.tables(cg)
        exp_shared = cg.exp_tables(beta)
        g_src, e_src, out = self._exp_tables
        if g_src is not gather or e_src is not exp_shared:
            out = padded(np.concatenate([exp_shared[gather], np.ones(self.uniform_k ** 2)]),
                         np.float64)
            self._exp_tables = (gather, exp_shared, out)
        return out

    def exp_unary(self, cg, beta):
        """exp(-beta (U_v - min U_v)) per state (S,): a variable's weights before its factors'."""
        src, b, out = self._exp_unary
        if src is not cg.unary or b != beta:
            src = cg.unary
            off = cg.var_state_offset
            if src.size:
                umin = np.minimum.reduceat(src, off[:-1])
                umin = np.where(np.isfinite(umin), umin, 0.0)
                with np.errstate(over="ignore", under="ignore"):
                    out = np.exp(-beta * (src - np.repeat(umin, np.diff(off))))
            else:
                out = np.zeros(1)
            self._exp_unary = (src, beta, out)
        return out


_layouts = weakref.WeakKeyDictionary()


def _layout(cg):
    lay = _layouts.get(cg)
    if lay is None:
        lay = _Layout(cg)
        _layouts[cg] = lay
    return lay


# ---------------------------------------------------------------------- validation
def _check_graph(g):
    if not isinstance(g, FactorGraph):
        raise ValueError(f"expected a FactorGraph, got {type(g).__name__}")
    return g.compile()


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _entropy(random_state):
    """A non-negative int seeding every random stream of one call (None: fresh entropy)."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63))
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, Integral) \
            or random_state < 0:
        raise ValueError(f"random_state must be None, an integer >= 0 or a numpy Generator, got "
                         f"{random_state!r}")
    return int(random_state)


def _chain_keys(seed, n_chains):
    """One 64-bit key per chain; chain c's key does not depend on n_chains."""
    return np.random.SeedSequence(seed, spawn_key=(0,)).generate_state(n_chains, np.uint64)


def _clamped_indices(cg, clamped):
    if clamped is None:
        return np.zeros(0, dtype=_I)
    arr = np.asarray(clamped)
    if arr.size == 0:
        return np.zeros(0, dtype=_I)
    if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("clamped must be a 1-D sequence of variable indices (positions in "
                         "g.variables)")
    arr = arr.astype(_I)
    if arr.min() < 0 or arr.max() >= cg.n_vars:
        raise ValueError(f"clamped: variable index {int(arr[(arr < 0) | (arr >= cg.n_vars)][0])} "
                         f"is out of range 0..{cg.n_vars - 1}")
    return np.unique(arr)


def _energies(cg, states, n_threads):
    out = np.empty(max(states.shape[0], 1))
    if states.shape[0]:
        _sample.energies(cg.var_state_offset, padded(cg.unary, np.float64),
                         padded(cg.fac_edge_offset, _I), padded(cg.edge_var, _I),
                         padded(cg.edge_stride, _I), padded(cg.fac_table, _I),
                         padded(cg.unique_tables, np.float64), states, out, n_threads)
    return out[:states.shape[0]]


def _check_states(g, cg, states, in_place=True, what="states"):
    """Chain states: an int64 (n_chains, V) array of valid states; C-contiguous and writeable
    when they are updated in place, else converted. Returns the array."""
    if not in_place:
        states = np.asarray(states)
        if states.dtype.kind not in "iu":
            raise ValueError(f"{what} must be an integer array of shape (n, {cg.n_vars}), got "
                             f"dtype {states.dtype}")
        states = np.ascontiguousarray(states, dtype=_I)
    if not isinstance(states, np.ndarray) or states.dtype != _I or states.ndim != 2 \
            or not states.flags.c_contiguous or (in_place and not states.flags.writeable):
        raise ValueError(f"{what} must be a writeable C-contiguous int64 array of shape "
                         f"(n_chains, {cg.n_vars}) (it is updated in place)" if in_place else
                         f"{what} must be a 2-D array of shape (n, {cg.n_vars})")
    if states.shape[1] != cg.n_vars:
        raise ValueError(f"{what} has {states.shape[1]} columns, the graph has {cg.n_vars} variables")
    if states.shape[0] < 1:
        raise ValueError(f"{what} must hold at least one chain")
    bad = (states < 0) | (states >= cg.var_n_states)
    if bad.any():
        c, v = np.argwhere(bad)[0]
        raise ValueError(f"{what}[{c}, {v}] = {states[c, v]} is not a state of variable "
                         f"{g.variables[v]!r} (0..{cg.var_n_states[v] - 1})")
    return states


# ---------------------------------------------------------------------- public API
def colouring(g):
    """The greedy colouring the Gibbs sampler blocks by.

    Returns
    -------
    colour : int64 (V,)
        Colour of each variable (g.variables order); two variables that share a factor
        never have the same colour. Read-only (cached with the compiled graph).
    """
    return _layout(_check_graph(g)).colour


def state_energies(g, states, n_threads=None):
    """Energy E(x) of each row of ``states`` (n, V) int64: float64 (n,) (+inf if forbidden)."""
    cg = _check_graph(g)
    states = _check_states(g, cg, states, in_place=False)
    return _energies(cg, states, threads_for(n_threads, states.shape[0], 64))


def initial_states(g, n_chains=1, evidence=None, random_state=0, n_threads=None):
    """Finite-energy starting states for ``n_chains`` chains.

    Each chain starts from a uniformly random assignment (evidence variables at their
    value); when the graph has +inf energies, a chain whose start is forbidden starts from
    the :func:`factorebm.min_sum` assignment instead.

    Parameters
    ----------
    g : FactorGraph
    n_chains : int >= 1
    evidence : dict, optional
        Visible variable name -> label: those columns are fixed (latent variables may not
        appear).
    random_state : int >= 0, numpy Generator or None

    Returns
    -------
    states : int64 (n_chains, V)
        Columns in ``g.variables`` order.

    Raises
    ------
    ValueError
        Bad input, or no finite-energy assignment was found (min-sum finds one whenever one
        exists on a forest; on a loopy graph it may miss one: the error says so).
    """
    cg = _check_graph(g)
    n_chains = check_count(n_chains, "n_chains")
    clamped = _resolve_evidence(g, evidence)
    return _initial_states(g, cg, n_chains, clamped, evidence, _entropy(random_state), n_threads)


def _resolve_evidence(g, evidence):
    return g._resolve_visible(evidence, "evidence", "latent variables are sampled, not "
                              "observed; leave it out of the evidence")


def _initial_states(g, cg, n_chains, clamped, evidence, seed, n_threads):
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    card = cg.var_n_states
    states = np.ascontiguousarray(
        (rng.random((n_chains, cg.n_vars)) * card).astype(_I).clip(0, card - 1))
    for v, k in clamped.items():
        states[:, v] = k
    if cg.has_inf:
        bad = ~np.isfinite(_energies(cg, states, threads_for(n_threads, n_chains, 64)))
        if bad.any():
            from .inference import min_sum
            r = min_sum(g, evidence=evidence, n_threads=threads_for(n_threads, cg.n_vars))
            if not np.isfinite(r.energy):
                ev = " given the evidence" if clamped else ""
                raise ValueError(f"no finite-energy assignment was found{ev}: min-sum belief "
                                 f"propagation found none and neither did random starts; the "
                                 f"graph has +inf energies that may forbid every assignment")
            full = dict(r.assignment)
            full.update(r.latent)
            states[bad] = [full[name] for name in g.variables]
    return states


def sweep_chains(g, states, n_sweeps=1, *, beta=1.0, method="gibbs", clamped=None, seed=0,
                 sweep=0, n_threads=None):
    """Advance persistent chains by ``n_sweeps`` sweeps, in place (the PCD building block).

    Each sweep updates every unclamped variable once, colour by colour (see the module
    docstring). The graph's current tables are read at every call, so they may change
    between calls (``g.set_factor_energies``): the chains then continue under the new
    energies.

    Parameters
    ----------
    g : FactorGraph
    states : int64 (n_chains, V), C-contiguous, writeable
        One chain per row (columns in ``g.variables`` order), updated in place. Every row
        must have finite energy (checked when the graph has +inf energies; see
        :func:`initial_states`).
    n_sweeps : int >= 0
    beta : float > 0
    method : {"gibbs", "mh"}
    clamped : sequence of int, optional
        Indices of variables that are not updated: their columns keep, per chain, whatever
        value the caller put there (so each chain may hold its own evidence).
    seed : int >= 0
        Key of the chains' random streams (chain c's stream depends on seed and c only).
    sweep : int >= 0
        Global number of the first sweep: pass the total of the earlier calls' n_sweeps to
        continue the streams (the same seed and sweep give the same draws, however the
        sweeps are split into calls and whatever n_threads).
    n_threads : int or None
        OpenMP threads (None: all cores, fewer on small graphs).

    Returns
    -------
    n_accepted, n_proposed : int
        Accepted and proposed moves over all chains (equal for Gibbs, where every site
        update is a draw from the conditional). Variables with one state are not counted.

    Raises
    ------
    ValueError
        Bad input, or a chain whose state has infinite energy.

    Examples
    --------
    Persistent contrastive divergence keeps the chains across steps and reads their
    empirical beliefs after k sweeps under the current tables:

    >>> states = initial_states(g, n_chains=20, random_state=0)      # doctest: +SKIP
    >>> done = 0
    >>> for step in range(n_steps):                                   # doctest: +SKIP
    ...     # ... write the current weights' tables into g (g.set_factor_energies) ...
    ...     sweep_chains(g, states, k, seed=0, sweep=done)
    ...     done += k
    ...     cg = g.compile()
    ...     var_b, fac_b = np.zeros(cg.n_states_total), np.zeros(cg.fac_table_offset[-1])
    ...     accumulate_beliefs(g, states, var_b, fac_b)
    ...     model_beliefs = cg.factor_belief_list(var_b, fac_b)      # per factor, in order
    """
    cg = _check_graph(g)
    n_sweeps = check_count(n_sweeps, "n_sweeps", 0)
    beta = check_beta(beta)
    _check_method(method)
    seed = check_count(seed, "seed", 0)
    sweep = check_count(sweep, "sweep", 0)
    _check_states(g, cg, states)
    clamped = _clamped_indices(cg, clamped)
    nt = threads_for(n_threads, states.size, 8192)
    if cg.has_inf:
        e = _energies(cg, states, nt)
        if not np.isfinite(e).all():
            c = int(np.flatnonzero(~np.isfinite(e))[0])
            raise ValueError(f"states[{c}] has infinite energy: a chain must start from a "
                             f"finite-energy assignment (see initial_states)")
    return _run(cg, states, _chain_keys(seed, states.shape[0]), sweep, n_sweeps, 0, 1, None,
                beta, method, clamped, nt)


def _run(cg, states, keys, sweep0, n_burn, n_record, thin, out, beta, method, clamped, nt):
    """Call the kernel; returns (n_accepted, n_proposed)."""
    lay = _layout(cg)
    order, colour_offset, largest, moving, pos_cache = lay.order(clamped)
    n_chains = states.shape[0]
    by_chain = nt == 1 or n_chains % nt == 0 or largest < _MIN_COLOUR_PER_THREAD * nt
    if by_chain:
        nt = max(1, min(nt, n_chains))
    width = (cg.max_card + 7) // 8 * 8 + 8          # each thread's scratch on its own lines
    scratch = np.zeros((nt, width))
    accepted = np.zeros((nt, 8), dtype=_I)
    if out is None:
        out = np.zeros((1, 1, 1), dtype=_I)
    slots, _, tables = lay.tables(cg)
    _sample.run(cg.var_state_offset, padded(cg.unary, np.float64), lay.exp_unary(cg, beta),
                lay.pair_offset, slots, lay.high_offset, lay.high_edge,
                padded(cg.fac_edge_offset, _I), padded(cg.edge_var, _I),
                padded(cg.edge_stride, _I), padded(cg.edge_fac, _I), padded(cg.fac_table, _I),
                tables, lay.exp_tables(cg, beta),
                order, colour_offset, states, keys, int(sweep0), int(n_burn), int(n_record),
                int(thin), out, float(beta), method == "mh", lay.uniform_k,
                *lay.positions(cg, order[:colour_offset[-1]], pos_cache, beta), int(nt),
                bool(by_chain), scratch, accepted)
    n_proposed = n_chains * (n_burn + n_record * thin) * moving
    n_accepted = int(accepted[:, 0].sum()) if method == "mh" else n_proposed
    return n_accepted, n_proposed


def accumulate_beliefs(g, states, var_out, fac_out=None, weight=None, n_threads=None):
    """Add the chains' empirical beliefs to ``var_out`` and ``fac_out``, in place.

    For every row x of ``states``, ``weight`` is added at each variable's state
    (``var_out[var_state_offset[v] + x_v]``) and at each non-unary factor's entry
    (``fac_out[fac_table_offset[f] + sum_e stride_e x_e]``): the layouts of the compiled
    graph's ``unary`` (S,) and ``tables`` (T,). With zeroed outputs and the default weight
    1 / n_chains one call gives the empirical marginals and factor beliefs of the current
    states; ``g.compile().factor_belief_list(var_out, fac_out)`` cuts them per factor in
    insertion order (unary factors included).

    Parameters
    ----------
    g : FactorGraph
    states : int64 (n_chains, V)
    var_out : float64 (S,), C-contiguous
    fac_out : float64 (T,), C-contiguous, optional
    weight : float, optional
        Added per chain (default 1 / n_chains).
    """
    cg = _check_graph(g)
    states = _check_states(g, cg, states, in_place=False)
    for name, arr, size in (("var_out", var_out, cg.n_states_total),
                            ("fac_out", fac_out, int(cg.fac_table_offset[-1]))):
        if arr is None and name == "fac_out":
            continue
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float64 or arr.shape != (size,) \
                or not arr.flags.c_contiguous or not arr.flags.writeable:
            raise ValueError(f"{name} must be a writeable C-contiguous float64 array of shape "
                             f"({size},)")
    n = states.shape[0]
    if weight is None:
        weight = 1.0 / n
    if not isinstance(weight, Real) or not np.isfinite(weight):
        raise ValueError(f"weight must be a finite number, got {weight!r}")
    if cg.n_vars == 0:
        return
    _sample.count_states(cg.var_state_offset, padded(cg.fac_edge_offset, _I),
                         padded(cg.edge_var, _I), padded(cg.edge_stride, _I),
                         padded(cg.fac_table_offset, _I), states, float(weight), var_out,
                         padded(fac_out if fac_out is not None else np.zeros(0), np.float64),
                         fac_out is not None and cg.n_facs > 0,
                         threads_for(n_threads, cg.n_vars * n, 65536))


class SampleResult:
    """Result of :func:`sample`.

    Attributes
    ----------
    samples : int64 (n_chains * n_samples, V)
        State indices, columns in ``g.variables`` order (latent variables included; evidence
        columns at their clamped value); chain c's samples are rows
        ``c * n_samples .. (c + 1) * n_samples - 1``, in the order drawn.
    energies : float64 (n_chains * n_samples,)
        E of each sample.
    marginals : dict
        Variable name -> float64 (K,): the empirical marginal over all samples.
    acceptance_rate : float
        Accepted / proposed moves over every sweep (burn-in included); 1.0 for Gibbs.
    method : str
    beta : float
    n_chains : int
    """

    def __init__(self, samples, energies, marginals, acceptance_rate, method, beta, n_chains):
        self.samples = samples
        self.energies = energies
        self.marginals = marginals
        self.acceptance_rate = acceptance_rate
        self.method = method
        self.beta = beta
        self.n_chains = n_chains

    def __repr__(self):
        return (f"SampleResult(method={self.method!r}, beta={self.beta!r}, "
                f"samples={self.samples.shape}, acceptance_rate={self.acceptance_rate:.3f})")


def sample(g, n_samples=1000, beta=1.0, evidence=None, method="gibbs", burn_in=100, thin=1,
           n_chains=2, random_state=0, n_threads=None):
    """Draw samples of ``P(x) = exp(-beta E(x)) / Z`` by Markov chain Monte Carlo.

    Parameters
    ----------
    g : FactorGraph
    n_samples : int >= 1
        Samples kept per chain.
    beta : float > 0
        Inverse temperature.
    evidence : dict, optional
        Visible variable name -> label (name or index): clamped variables. Latent variables
        are sampled (they may not appear).
    method : {"gibbs", "mh"}
        Blocked Gibbs, or single-site Metropolis-Hastings with a uniform proposal over the
        other labels (see the module docstring).
    burn_in : int >= 0
        Sweeps run and discarded before the first sample.
    thin : int >= 1
        Sweeps between two kept samples.
    n_chains : int >= 1
        Independent chains, each from its own random start.
    random_state : int >= 0, numpy Generator or None
        The same integer gives the same samples whatever ``n_threads``.
    n_threads : int or None
        OpenMP threads (None: all cores, fewer on small graphs).

    Returns
    -------
    SampleResult

    Raises
    ------
    ValueError
        Bad input (a count that is not a positive integer, beta <= 0, an unknown method,
        evidence on a latent variable), or no finite-energy assignment (given the evidence).
    """
    cg = _check_graph(g)
    n_samples = check_count(n_samples, "n_samples")
    burn_in = check_count(burn_in, "burn_in", 0)
    thin = check_count(thin, "thin")
    n_chains = check_count(n_chains, "n_chains")
    beta = check_beta(beta)
    _check_method(method)
    seed = _entropy(random_state)
    threads_for(n_threads)                       # validates n_threads
    clamped = _resolve_evidence(g, evidence)
    V = cg.n_vars
    states = _initial_states(g, cg, n_chains, clamped, evidence, seed, n_threads)
    out = np.empty((n_chains, n_samples, V), dtype=_I)
    nt = threads_for(n_threads, n_chains * V, 8192)
    n_acc, n_prop = _run(cg, states, _chain_keys(seed, n_chains), 0, burn_in, n_samples, thin,
                         padded(out, _I) if out.size else np.zeros((1, 1, 1), dtype=_I),
                         beta, method, np.fromiter(clamped, dtype=_I, count=len(clamped)), nt)
    samples = out.reshape(n_chains * n_samples, V)
    energies = _energies(cg, samples, threads_for(n_threads, samples.shape[0], 64))
    counts = np.zeros(max(cg.n_states_total, 1))
    if V:
        _sample.count_states(cg.var_state_offset, padded(cg.fac_edge_offset, _I),
                             padded(cg.edge_var, _I), padded(cg.edge_stride, _I),
                             padded(cg.fac_table_offset, _I), samples, 1.0 / samples.shape[0],
                             counts, np.zeros(1), False, threads_for(n_threads, samples.size, 65536))
    marginals = dict(zip(g.variables, cg.variable_views(counts[:cg.n_states_total])))
    rate = n_acc / n_prop if n_prop else 1.0
    return SampleResult(samples, energies, marginals, float(rate), method, beta, n_chains)


# ---------------------------------------------------------------------- continuous MH
def metropolis_hastings(log_density, x0, n_samples, proposal_scale=1.0, random_state=None):
    """Random-walk Metropolis-Hastings for a continuous parameter vector.

    Proposes ``y = x + proposal_scale * N(0, I)`` (symmetric) and accepts with probability
    ``min(1, exp(log_density(y) - log_density(x)))`` (Metropolis et al. 1953; Hastings 1970).

    Parameters
    ----------
    log_density : callable
        ``log_density(x)`` for x float64 (d,): the log of an unnormalized density, a float;
        ``-inf`` outside the support (e.g. a scale parameter <= 0).
    x0 : float or array_like (d,)
        Starting point, of positive density.
    n_samples : int >= 1
        Iterations; every iteration's state is kept (a rejected proposal repeats the state).
    proposal_scale : float > 0 or array_like (d,)
        Standard deviation of the normal step, per coordinate.
    random_state : int, numpy Generator or None

    Returns
    -------
    xs : float64 (n_samples, d)
        The chain; drop a burn-in prefix before averaging.
    acceptance_rate : float
        Accepted proposals / n_samples.

    Raises
    ------
    ValueError
        Bad input, ``log_density(x0)`` not finite, or ``log_density`` returning NaN, +inf
        or a non-number (the message names the iteration and the point).
    """
    if not callable(log_density):
        raise ValueError(f"log_density must be callable, got {type(log_density).__name__}")
    try:
        x = np.array(x0, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"x0 must be a float or a 1-D array of floats, got {x0!r}") from None
    if np.ndim(x0) > 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"x0 must be a finite float or a non-empty finite 1-D array, got {x0!r}")
    n_samples = check_count(n_samples, "n_samples")
    scale = np.asarray(proposal_scale, dtype=np.float64) \
        if isinstance(proposal_scale, (Real, np.ndarray, list, tuple)) \
        and not isinstance(proposal_scale, (bool, np.bool_)) else None
    if scale is None or scale.ndim > 1 or scale.size not in (1, x.size) \
            or not (np.isfinite(scale) & (scale > 0)).all():
        raise ValueError(f"proposal_scale must be a finite number > 0 or {x.size} of them, got "
                         f"{proposal_scale!r}")
    rng = np.random.default_rng(random_state)
    lp = _log_density_at(log_density, x, "x0")
    if lp == -np.inf:
        raise ValueError(f"log_density(x0) is -inf: x0 = {x} is outside the support")
    steps = rng.normal(size=(n_samples, x.size)) * scale
    with np.errstate(divide="ignore"):
        log_u = np.log(rng.random(n_samples))
    xs = np.empty((n_samples, x.size))
    n_acc = 0
    for i in range(n_samples):
        y = x + steps[i]
        ly = _log_density_at(log_density, y, f"iteration {i}")
        if log_u[i] < ly - lp:
            x, lp = y, ly
            n_acc += 1
        xs[i] = x
    return xs, n_acc / n_samples


def _log_density_at(log_density, x, where):
    value = log_density(x.copy())
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"log_density returned {value!r} at {where} (x = {x}): expected a "
                         f"float") from None
    if np.isnan(out) or out == np.inf:
        raise ValueError(f"log_density returned {out} at {where} (x = {x}): a log-density must "
                         f"be a number or -inf")
    return out
