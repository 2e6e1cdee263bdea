"""Inference on factor graphs: min-sum, sum-product, free energy, most offending answer.

All four functions run the one message-passing kernel of ``factorebm._bp``
(Kschischang, Frey and Loeliger 2001) on the compiled graph, with the semiring
chosen by the temperature: min-sum (beta = inf) finds ``argmin_y E(y)``;
sum-product at inverse temperature beta gives the marginals of the Gibbs
distribution ``P(y) = exp(-beta E(y)) / Z`` and the free energy
``F = -(1/beta) log Z`` (LeCun et al. 2006, sections 1.3 and 6).

On a forest (after clamping the evidence) one two-pass sweep is exact and the
results say ``exact=True``. On a loopy graph, flooding updates run with damping
until the largest message change is at most ``tol`` (``converged``) or
``max_iter`` sweeps; the free energy is then the Bethe estimate

    F_Bethe = sum_f <T_f>_{b_f} + sum_v <U_v>_{b_v}
              - (1/beta) [ sum_f H(b_f) + sum_v (1 - d_v) H(b_v) ]

(Yedidia, Freeman and Weiss 2005), with b_f, b_v the factor and variable
beliefs, U_v the variable's unary energies and d_v its number of non-unary
factors; it is exact on forests.

Latent variables (the tutorial's Z) are minimized out by min-sum and summed out
by sum-product: ``free_energy(g, beta, evidence=Y)`` is F(Y) =
-(1/beta) log sum_z exp(-beta E(Y, z)).
"""
import functools
from itertools import compress
import warnings
from numbers import Real

import numpy as np

from .checks import check_beta, is_int, threads_for
from .graph import FactorGraph

__all__ = ["min_sum", "sum_product", "free_energy", "most_offending",
           "MinSumResult", "SumProductResult", "check_bp_options", "MIN_SUM_SCHEDULES",
           "SUM_PRODUCT_SCHEDULES"]


class MinSumResult:
    """Result of :func:`min_sum`.

    Attributes
    ----------
    assignment : dict
        Every non-latent variable -> state index (evidence variables keep their
        clamped value).
    latent : dict
        Every latent variable -> state index of the joint minimizer.
    energy : float
        True energy E of the returned full assignment (visible, latent, evidence).
    min_marginals : dict
        Variable name -> float64 (K,): the lowest energy of an assignment that
        gives the variable each state (given the evidence). Exact on forests; on
        loopy graphs the belief-based estimate shifted to ``energy`` at its minimum.
    exact : bool
        The graph is a forest after clamping, so ``energy`` is the exact minimum.
    lower_bound : float
        A lower bound on the minimum energy (given the evidence): the exact minimum
        on forests, TRW-S's dual bound with ``schedule="trws"``, ``-inf`` where no
        bound is computed (flooding and residual BP on a loopy graph). Always
        ``lower_bound <= min E <= energy``.
    converged : bool
    iterations : int
        Message sweeps run (1 for the exact two-pass schedule; forward + backward
        passes for TRW-S; stored messages / edges, rounded up, for residual BP).
    schedule : str
        The loopy schedule asked for ("flooding", "residual" or "trws").
    """

    def __init__(self, assignment, latent, energy, min_marginals, exact, converged, iterations,
                 lower_bound=-np.inf, schedule="flooding"):
        self.assignment = assignment
        self.latent = latent
        self.energy = energy
        self.min_marginals = min_marginals
        self.exact = exact
        self.converged = converged
        self.iterations = iterations
        self.lower_bound = lower_bound
        self.schedule = schedule

    def __repr__(self):
        return (f"MinSumResult(energy={self.energy!r}, lower_bound={self.lower_bound!r}, "
                f"exact={self.exact}, converged={self.converged}, iterations={self.iterations}, "
                f"assignment={self.assignment!r}, latent={self.latent!r})")


class SumProductResult:
    """Result of :func:`sum_product`.

    Attributes
    ----------
    marginals : dict
        Variable name -> float64 (K,) probabilities (latent variables included;
        a clamped variable has probability 1 on its value).
    factor_beliefs : list of ndarray
        Aligned with the graph's factors in insertion order: float64 arrays of the
        factor's scope shape, the belief (joint marginal) of its scope. Built on first
        access: one array per factor (on a 300x300 grid 269,400 of them, about 0.04 s),
        which most callers never read.
    free_energy : float
        -(1/beta) log Z over the unclamped variables: exact on forests, the Bethe
        estimate on loopy graphs.
    beta : float
    exact, converged : bool
    iterations : int
    """

    def __init__(self, marginals, factor_beliefs, free_energy, beta, exact, converged, iterations):
        """``factor_beliefs``: the list, or a function of no arguments that makes it."""
        self.marginals = marginals
        self._factor_beliefs = factor_beliefs
        self.free_energy = free_energy
        self.beta = beta
        self.exact = exact
        self.converged = converged
        self.iterations = iterations

    @property
    def factor_beliefs(self):
        beliefs = self._factor_beliefs
        if callable(beliefs):
            # two threads reading it first may both build it: the same list, harmless
            beliefs = self._factor_beliefs = beliefs()
        return beliefs

    def __repr__(self):
        return (f"SumProductResult(free_energy={self.free_energy!r}, beta={self.beta!r}, exact={self.exact}, "
                f"converged={self.converged}, iterations={self.iterations})")


# ---------------------------------------------------------------------- validation
_LATENT_EVIDENCE = ("leave it out of the evidence (min-sum minimizes latent variables out, "
                    "sum-product sums them out)")
_LATENT_TARGET = "they are minimized, not part of an answer; leave it out of the target"


def _check_graph(g):
    if not isinstance(g, FactorGraph):
        raise ValueError(f"expected a FactorGraph, got {type(g).__name__}")


MIN_SUM_SCHEDULES = ("flooding", "residual", "trws")
SUM_PRODUCT_SCHEDULES = ("flooding", "residual")


def check_bp_options(max_iter, damping, tol, n_threads, schedule="flooding",
                     schedules=SUM_PRODUCT_SCHEDULES, who="sum_product"):
    """Validate the belief-propagation options (as :func:`min_sum` takes them; ``schedules``:
    those allowed, ``who`` names the caller in the message); return the thread count to run
    with (None = all cores)."""
    # the kernels count iterations in int64: a larger count overflowed converting to C
    if not is_int(max_iter) or not 1 <= max_iter < 2 ** 63:
        raise ValueError(f"max_iter must be an integer in 1..2**63-1, got {max_iter!r}")
    if not isinstance(damping, Real) or not 0.0 <= damping < 1.0:
        raise ValueError(f"damping must be in [0, 1), got {damping!r}")
    if not isinstance(tol, Real) or not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not isinstance(schedule, str) or schedule not in schedules:
        hint = " (TRW-S is a min-sum algorithm: use min_sum)" if schedule == "trws" else ""
        raise ValueError(f"{who}: unknown schedule {schedule!r}; expected one of "
                         f"{', '.join(map(repr, schedules))}{hint}")
    if schedule == "trws" and damping != 0.0:
        raise ValueError(f"damping={damping!r} with schedule 'trws': TRW-S converges without "
                         f"damping; leave damping at 0")
    return threads_for(n_threads)


def _check_pairwise(g, cg):
    """TRW-S needs every factor to be unary or pairwise: ValueError naming the first that is not."""
    if cg.max_arity > 2:
        f = int(cg.fac_index[np.flatnonzero(np.diff(cg.fac_edge_offset) > 2)[0]])
        raise ValueError(f"schedule 'trws' needs a pairwise graph, but factor {f} over "
                         f"{g.factor_scope(f)!r} has arity {len(g.factor_scope(f))}; use "
                         f"schedule 'flooding' or 'residual'")


def _prepare(g, evidence):
    cg = g.compile()
    clamped = g._resolve_visible(evidence, "evidence", _LATENT_EVIDENCE)
    unary = cg.unary + cg.mask(clamped) if clamped else cg.unary
    return cg, clamped, unary, cg.plan(clamped.keys())


def _segment_min(x, offsets):
    return np.minimum.reduceat(x, offsets[:-1]) if x.size else np.zeros(0)


def _infeasible(g, cg, clamped, vmin, fmin):
    """Raise when no assignment has finite energy (the beliefs' minima say so).

    vmin (V,), fmin (F,): each variable's / non-unary factor's minimum energy-space belief.
    """
    bad_v = np.flatnonzero(~np.isfinite(vmin))
    bad_f = np.flatnonzero(~np.isfinite(fmin))
    if bad_v.size or bad_f.size:
        where = (f"variable {g._names[bad_v[0]]!r}" if bad_v.size
                 else f"factor {int(cg.fac_index[bad_f[0]])} over {g.factor_scope(int(cg.fac_index[bad_f[0]]))!r}")
        ev = " given the evidence" if clamped else ""
        raise ValueError(f"no assignment has finite energy{ev}: every state of {where} is forbidden (+inf)")


def _no_finite_assignment(exact, clamped, who="min_sum", result="the result has energy inf"):
    """BP decoded an assignment of infinite energy: an error if exact, else a warning."""
    ev = " given the evidence" if clamped else ""
    if exact:
        raise ValueError(f"no finite-energy assignment was found{ev}: the graph (a forest after clamping) "
                         f"has no assignment of finite energy")
    warnings.warn(f"{who}: belief propagation found no finite-energy assignment{ev} (the graph may be "
                  f"infeasible; on a loopy graph BP cannot tell); {result}",
                  RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------- min-sum
def min_sum(g, evidence=None, max_iter=200, damping=0.0, tol=1e-9, n_threads=1, schedule="flooding"):
    """Minimum-energy assignment by min-sum belief propagation.

    Parameters
    ----------
    g : FactorGraph
    evidence : dict, optional
        Visible variable name -> label (name or index): those variables are
        clamped. Latent variables are never observed and may not appear.
    max_iter : int
        Largest number of sweeps on a loopy graph (flooding sweeps, TRW-S forward +
        backward passes, or residual BP's budget of ``max_iter`` x (number of
        factor-variable edges) single message updates).
    damping : float in [0, 1)
        Weight of the old message in each (loopy) factor-to-variable update
        (flooding and residual; TRW-S takes none).
    tol : float
        Stop when the largest message change is at most ``tol`` (TRW-S also stops
        when its energy is within ``tol`` (relative) of its lower bound).
    n_threads : int or None
        OpenMP threads for the flooding updates (None: all cores; larger requests are
        clamped to the cores, see :mod:`factorebm.checks`). Residual BP and TRW-S
        are sequential.
    schedule : {"flooding", "residual", "trws"}
        How a loopy graph is swept (a forest always gets the exact two-pass sweep):
        "flooding" updates every message from the previous sweep's; "residual"
        (Elidan et al. 2006) always updates the message that would change most;
        "trws" (Kolmogorov 2006, pairwise graphs only) is sequential tree-reweighted
        message passing: it keeps the best assignment decoded over its passes (so its
        energy never increases from one pass to the next) and computes a lower bound.

    Returns
    -------
    MinSumResult
        The joint argmin over visible and latent variables (``min_z`` for latent
        ones), decoded consistently; exact when ``exact`` is True, and ``energy``
        is always the true energy of the returned assignment; ``lower_bound`` <=
        min E <= ``energy``.

    Raises
    ------
    ValueError
        Bad input (an unknown schedule, "trws" on a graph with a factor of arity
        > 2), evidence on a latent variable (latent variables are never observed),
        or, on a forest, no assignment of finite energy.

    Warns
    -----
    RuntimeWarning
        On a loopy graph, when the decoded assignment has energy ``+inf``: BP found
        no finite-energy assignment. The graph may be infeasible (a triangle of
        "not equal" factors over binary variables converges to such a result), but
        loopy BP can neither prove that nor rule out a feasible assignment it missed.
    """
    _check_graph(g)
    n_threads = check_bp_options(max_iter, damping, tol, n_threads, schedule, MIN_SUM_SCHEDULES, "min_sum")
    cg, clamped, unary, plan = _prepare(g, evidence)
    if schedule == "trws":
        _check_pairwise(g, cg)
    states = np.zeros(cg.n_vars, dtype=np.int64)
    bound = -np.inf
    if schedule == "trws" and not plan.is_forest:
        v2f, f2v, it, delta, states, bound, _, _ = cg.run_trws(unary, max_iter, tol)
        exact, decoded = False, True
    else:
        # a forest gets the exact sweep whatever the schedule
        v2f, f2v, it, delta, exact = cg.run_bp(unary, plan, np.inf, True, max_iter, damping, tol,
                                               n_threads, "flooding" if schedule == "trws" else schedule)
        decoded = False
    var_b, fac_b = cg.beliefs(unary, v2f, f2v)
    vmin = _segment_min(var_b, cg.var_state_offset)
    _infeasible(g, cg, clamped, vmin, _segment_min(fac_b, cg.fac_table_offset))
    for v, k in clamped.items():
        states[v] = k
    if not decoded and cg.n_facs:
        cg.decode(unary, plan, v2f, f2v, states)
    elif not decoded:
        for v in plan.order:
            lo, hi = cg.var_state_offset[v], cg.var_state_offset[v + 1]
            states[v] = int(np.argmin(var_b[lo:hi]))
    energy = cg.energies_of(states)
    if not np.isfinite(energy):
        _no_finite_assignment(exact, clamped)
    # a bound above the energy can only be rounding: min E <= energy
    lower_bound = energy if exact else min(float(bound), energy)
    names = g._names
    st = states.tolist()
    if cg.latent.any():
        vis = (~cg.latent).tolist()
        assignment = dict(compress(zip(names, st), vis))
        latent = dict(compress(zip(names, st), cg.latent.tolist()))
    else:
        assignment, latent = dict(zip(names, st)), {}
    min_marginals = dict(zip(names, cg.variable_views(var_b - np.repeat(vmin, cg.var_n_states) + energy)))
    return MinSumResult(assignment, latent, energy, min_marginals, exact,
                        bool(exact or delta <= tol or energy - lower_bound <= tol * max(1.0, abs(energy))),
                        int(it), lower_bound, schedule)


# ---------------------------------------------------------------------- sum-product
def sum_product(g, beta=1.0, evidence=None, max_iter=200, damping=0.0, tol=1e-9, n_threads=1,
                schedule="flooding"):
    """Marginals, factor beliefs and free energy of the Gibbs distribution at 1/beta.

    Parameters
    ----------
    g : FactorGraph
    beta : float > 0
        Inverse temperature of ``P(y) = exp(-beta E(y)) / Z``.
    evidence : dict, optional
        Visible variable name -> label (name or index): those variables are clamped,
        and the free energy is that of the remaining ones (latent variables summed
        out; they may not appear in the evidence).
    max_iter, damping, tol, n_threads
        As in :func:`min_sum`.
    schedule : {"flooding", "residual"}
        As in :func:`min_sum` (TRW-S is a min-sum algorithm).

    Returns
    -------
    SumProductResult

    Raises
    ------
    ValueError
        Bad input, evidence on a latent variable, or beliefs showing that no
        assignment has finite energy (always detected on forests).

    Warns
    -----
    RuntimeWarning
        On a loopy graph with forbidden (+inf) energies, when neither the
        beliefs nor a min-sum run find an assignment of finite energy, as
        :func:`min_sum` warns: the graph may be infeasible (Z = 0), and loopy BP's
        marginals and Bethe free energy then mean nothing. A triangle of "not
        equal" factors over binary variables is such a graph: BP converges to
        uniform beliefs and a finite free energy, as if nothing were wrong.
    """
    _check_graph(g)
    beta = check_beta(beta)
    n_threads = check_bp_options(max_iter, damping, tol, n_threads, schedule)
    cg, clamped, unary, plan = _prepare(g, evidence)
    v2f, f2v, it, delta, exact = cg.run_bp(unary, plan, beta, False, max_iter, damping, tol,
                                           n_threads, schedule)
    var_b, _ = cg.beliefs(unary, v2f, f2v, factors=False)
    q, t_mean, h_fac, fmin = cg.factor_gibbs(v2f, beta, n_threads)
    _infeasible(g, cg, clamped, _segment_min(var_b, cg.var_state_offset), fmin)
    p, u_mean, h_var = cg.variable_gibbs(var_b, beta, n_threads)
    # Bethe free energy (exact on forests): average energies minus entropies / beta
    F = float(u_mean.sum() - ((1 - cg.var_degree) * h_var).sum() / beta
              + t_mean.sum() - h_fac.sum() / beta)
    marginals = dict(zip(g._names, cg.variable_views(p)))
    fac_beliefs = functools.partial(cg.factor_belief_list, p, q)
    if not exact and cg.has_inf and not _finds_finite(cg, unary, plan, v2f, f2v, clamped, max_iter,
                                                      damping, tol, n_threads):
        _no_finite_assignment(False, clamped, "sum_product",
                              "the marginals and the free energy are meaningless if it is")
    return SumProductResult(marginals, fac_beliefs, F, beta, exact, bool(exact or delta <= tol), int(it))


def _finds_finite(cg, unary, plan, v2f, f2v, clamped, max_iter, damping, tol, n_threads):
    """Whether a finite-energy assignment turns up: decoded from these (sum-product) messages,
    else by a min-sum run. Only asked on loopy graphs with +inf energies, where Z may be 0
    although BP's beliefs look fine. Overwrites v2f and f2v."""
    for attempt in range(2):
        if attempt:
            v2f, f2v, _, _, _ = cg.run_bp(unary, plan, np.inf, True, max_iter, damping, tol, n_threads)
        states = np.zeros(cg.n_vars, dtype=np.int64)
        for v, k in clamped.items():
            states[v] = k
        cg.decode(unary, plan, v2f, f2v, states)
        if np.isfinite(cg.energies_of(states)):
            return True
    return False


def free_energy(g, beta=1.0, evidence=None, max_iter=200, damping=0.0, tol=1e-9, n_threads=1,
                schedule="flooding"):
    """Free energy ``-(1/beta) log Z`` (given the evidence): ``sum_product(...).free_energy``.

    With the visible variables Y clamped as evidence this is the tutorial's F(Y),
    latent variables summed out. Exact on forests, Bethe estimate on loopy graphs
    (which may be finite on an infeasible loopy graph: :func:`sum_product` warns).
    """
    return sum_product(g, beta, evidence, max_iter, damping, tol, n_threads, schedule).free_energy


# ---------------------------------------------------------------------- most offending
def most_offending(g, target, max_iter=200, damping=0.0, tol=1e-9, n_threads=1):
    """The lowest-energy assignment whose visible part differs from ``target``.

    Uses min-marginals (DESIGN.md): the answer's energy is
    ``min over visible v and label l != target[v]`` of the min-marginal of v at l;
    the assignment is then decoded with v clamped to l. Latent variables are
    minimized. Exact on forests.

    Parameters
    ----------
    g : FactorGraph
    target : dict
        Every visible variable -> label (name or index); latent ones must be absent.

    Returns
    -------
    (assignment, energy) : (dict, float)
        assignment maps every visible variable to a state index; energy is the
        true energy of that assignment with the latent variables minimized.
    """
    _check_graph(g)
    n_threads = check_bp_options(max_iter, damping, tol, n_threads)
    tgt = g._resolve_visible(target, "target", _LATENT_TARGET)
    visible = [v for v in range(len(g._names)) if not g._latent[v]]
    missing = [g._names[v] for v in visible if v not in tgt]
    if missing:
        raise ValueError(f"target lacks visible variable {missing[0]!r}")
    r = min_sum(g, None, max_iter, damping, tol, n_threads)
    best, best_v, best_k = np.inf, None, None
    for v in visible:
        mm = r.min_marginals[g._names[v]].copy()
        mm[tgt[v]] = np.inf
        k = int(np.argmin(mm))
        if mm[k] < best:
            best, best_v, best_k = mm[k], v, k
    if best_v is None:
        raise ValueError("no assignment with finite energy differs from the target in a visible variable")
    r2 = min_sum(g, {g._names[best_v]: best_k}, max_iter, damping, tol, n_threads)
    return dict(r2.assignment), r2.energy
