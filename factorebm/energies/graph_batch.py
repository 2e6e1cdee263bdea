"""Belief propagation over a batch of parametric factor graphs: the inference of the graph objective.

:class:`GraphBatch` holds the training graphs of a
:class:`~factorebm.energies.graph.GraphObjective` and answers, for a weight vector and a batch of
samples, every sample's E+ and E- and the gradient's belief tables, running the message-passing
kernel once per kind of run over all the graphs of the batch, never once per graph.

Once (setup, per distinct graph): each graph is compiled and the compiled graphs are concatenated
into one corpus (:func:`factorebm.compiled.concatenate`); each ``Phi`` is split into the linear map
of the unary energy of every state (the unary factors summed per state) and that of the non-unary
tables; factors whose rows of ``Phi`` and ``offset`` are equal (tied weights: one pairwise template
for a whole grid, across graphs too) are found, so that they share one table -- which the kernels
then read once, and whose messages cost O(K) when its values form a Potts table; each graph's
message schedule is computed (the exact two-pass sweep on forests); targets become state indices.

Per evaluation: the batch's graphs are taken from the corpus (:func:`factorebm.compiled.select`),
their energies are two sparse products (``U @ w`` per state, ``P @ w`` per distinct table) pushed
in with :meth:`~factorebm.compiled.CompiledGraph.set_tables`, and each run -- the free run of every
graph of the batch, the runs with the targets clamped (latent variables), the per-sample runs of
the most offending or loss-augmented answers -- is one kernel call over all the graphs concerned
(two where a batch mixes forests and loopy graphs: forests get the exact schedule, so results on
forests are exact). Per-graph sums are ``bincount`` passes; the gradient is ``U^T gs + P^T gt``
with ``gs``, ``gt`` the belief weights per state and per distinct table entry.

What E+ and E- are (LeCun et al. 2006, sections 2 and 6):

* E+ -- the target's energy; with latent variables the minimum over them (min-sum, visible
  variables clamped), or for the NLL the clamped free energy (sum-product).
* E- -- the NLL: the free energy ``F`` (exact on forests, the Bethe free energy on loopy graphs;
  the gradient's model term is the Bethe beliefs). The perceptron: ``min_y E(y)`` (min-sum). The
  margin losses (hinge, log, mce, lvq2, square_square, square_exp), ``e_minus`` option:

  - ``"most_offending"`` (default; the tutorial's): the lowest energy of an answer that differs
    from the target in at least one visible variable -- from the min-marginals of one free
    min-sum run, the best (variable, wrong label) pair, and a second run with that variable
    clamped for the answer itself. Exact on forests.
  - ``"loss_augmented"`` (loss-augmented inference, Taskar, Guestrin and Koller 2003): the answer
    ``ybar = argmin_y [E(y) - h H(y, target)]`` (``H``: the Hamming distance over visible
    variables; ``h``: the ``hamming`` option, by default the loss's margin, else 1), found by one
    min-sum run with ``h`` added to the unary energy of every target state; then
    ``E- = E(ybar) - h (H(ybar, target) - 1)``. An answer one label away from the target counts
    at its energy, as in the tutorial; every further wrong label lowers it by ``h``; the target
    itself counts as ``E+ + h``. With the hinge and ``h`` = its margin ``m`` the loss
    ``max(0, m + E+ - E-) = max_y [E+ - E(y) + m H(y, target)]`` is the structured hinge (the
    margin-rescaled structured SVM). Gradients: ``ybar``'s indicator tables (the Hamming term does
    not depend on the weights).
"""
import copy
import threading
import warnings

import numpy as np

from ..checks import is_int, threads_for
from ..compiled import Plan, concatenate, select
from ..indexing import offsets_of, part_ranges, ranges
from ..inference import MIN_SUM_SCHEDULES, SUM_PRODUCT_SCHEDULES, check_bp_options

__all__ = ["GraphBatch", "BP_OPTIONS", "E_MINUS", "check_options"]

_I = np.int64
BP_OPTIONS = ("schedule", "damping", "max_iter", "tol", "e_minus", "hamming")
E_MINUS = ("most_offending", "loss_augmented")
# message slots per thread below which an OpenMP team costs more than it saves
_SLOTS_PER_THREAD = 32768


def check_options(spec, params, options):
    """The validated belief-propagation options of a graph objective, defaults filled in.

    Parameters
    ----------
    spec : factorebm.losses.LossSpec
    params : dict
        The loss's parameters (the hinge's margin is the default Hamming weight).
    options : dict or None
        ``schedule``, ``damping``, ``max_iter``, ``tol`` (as for :func:`factorebm.min_sum`),
        ``e_minus`` and ``hamming`` (margin losses only; see the module docstring).

    Returns
    -------
    dict
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(BP_OPTIONS))
    if unknown:
        raise ValueError(f"unknown inference_options {unknown} for inference='bp'; it takes "
                         f"{', '.join(BP_OPTIONS)}")
    free = spec.e_minus == "free_energy"
    out = {"schedule": options.get("schedule", "flooding"), "damping": options.get("damping", 0.0),
           "max_iter": options.get("max_iter", 200), "tol": options.get("tol", 1e-9)}
    who = f"fit_graphs (loss {spec.name!r})"
    check_bp_options(out["max_iter"], out["damping"], out["tol"], 1, out["schedule"],
                     SUM_PRODUCT_SCHEDULES if free else MIN_SUM_SCHEDULES, who)
    margin = spec.e_minus == "most_offending"
    for key in ("e_minus", "hamming"):
        if key in options and not margin:
            raise ValueError(f"inference option {key!r} is for the margin losses (E- = the most "
                             f"offending answer), not loss {spec.name!r}")
    out["e_minus"] = options.get("e_minus", "most_offending")
    if out["e_minus"] not in E_MINUS:
        raise ValueError(f"unknown e_minus {out['e_minus']!r}; use one of "
                         f"{', '.join(map(repr, E_MINUS))}")
    given = "hamming" in options
    h = options.get("hamming", params.get("margin", 1.0))
    try:
        ok = bool(np.isfinite(h) and h > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        name = "hamming" if given else "margin"   # the margin is the default Hamming weight
        raise ValueError(f"{name} must be a finite number > 0, got {h!r}")
    if "hamming" in options and out["e_minus"] != "loss_augmented":
        raise ValueError("inference option 'hamming' weighs the Hamming loss of "
                         "e_minus='loss_augmented'; it means nothing with 'most_offending'")
    out["hamming"] = float(h)
    return out


class _Plans:
    """One kind of message schedule (free, or the visible variables clamped) of every corpus
    graph, as arrays: whether the graph is a forest then, its two-pass schedule, its decoding
    order (both in the graph's own edge / variable numbers)."""

    def __init__(self, plans):
        self.forest = np.array([p.is_forest for p in plans], dtype=bool)
        sched = [p.schedule if p.is_forest and p.schedule[0] >= 0 else np.zeros(0, dtype=_I)
                 for p in plans]
        self.sched_off = offsets_of([len(s) for s in sched])
        self.sched = np.concatenate(sched).astype(_I)
        self.order_off = offsets_of([len(p.order) for p in plans])
        self.order = np.concatenate([p.order for p in plans]).astype(_I)

    def plan(self, off, gids, forest):
        """The Plan of a batch whose part j is corpus graph ``gids[j]``, laid out by ``off``."""
        order = (self.order[part_ranges(self.order_off, gids)]
                 + np.repeat(off["var"][:-1], np.diff(self.order_off)[gids]))
        sched = np.full(1, -1, dtype=_I)
        if forest:
            s = (self.sched[part_ranges(self.sched_off, gids)]
                 + 2 * np.repeat(off["edge"][:-1], np.diff(self.sched_off)[gids]))
            if s.size:
                sched = s
        return Plan(forest, sched, order)


def _part_of(off, key):
    """int64: the part of every item counted by ``off[key]``."""
    return np.repeat(np.arange(len(off[key]) - 1, dtype=_I), np.diff(off[key]))


def _part_sum(x, part, n):
    return np.bincount(part, weights=x, minlength=n) if part.size else np.zeros(n)


class _Run:
    """A batch to run BP on: its compiled graph, offsets, the corpus graph of each part, the
    part of each variable / factor, and the map of its states to the evaluation's states."""

    def __init__(self, cg, off, gids, state_map=None):
        self.cg, self.off, self.gids = cg, off, gids
        self.n = len(gids)
        self.var_part = _part_of(off, "var")
        self.fac_part = _part_of(off, "fac")
        self.state_map = state_map

    def energies(self, states, unary=None):
        """(B,) float: each part's energy at the full assignment ``states`` (V,)."""
        cg = self.cg
        u = cg.unary if unary is None else unary
        e = _part_sum(u[cg.var_state_offset[:-1] + states], self.var_part, self.n)
        if cg.n_facs:
            e += _part_sum(cg.unique_tables[cg.factor_entries(states)], self.fac_part, self.n)
        return e

    def add_indicators(self, states, weight, gs, gt):
        """Add each part's weight at the states and table entries of the assignment."""
        cg = self.cg
        sid = cg.var_state_offset[:-1] + states
        if self.state_map is not None:
            sid = self.state_map[sid]
        gs += np.bincount(sid, weights=weight[self.var_part], minlength=gs.size)
        if cg.n_facs:
            gt += np.bincount(cg.factor_entries(states), weights=weight[self.fac_part],
                              minlength=gt.size)

    def add_beliefs(self, p, q, weight, gs, gt):
        """Add each part's weight times its variable marginals p (S,) and factor beliefs q."""
        cg = self.cg
        ws = p * np.repeat(weight[self.var_part], cg.var_n_states)
        if self.state_map is None:
            gs += ws
        else:
            gs += np.bincount(self.state_map, weights=ws, minlength=gs.size)
        if cg.n_facs:
            sizes = np.diff(cg.fac_table_offset)
            entry = np.repeat(cg.fac_table - cg.fac_table_offset[:-1], sizes) + np.arange(q.size)
            gt += np.bincount(entry, weights=q * np.repeat(weight[self.fac_part], sizes),
                              minlength=gt.size)


class GraphBatch:
    """The graphs of a graph objective, set up once for batched belief propagation.

    Parameters
    ----------
    samples : list of (ParametricGraph, dict)
        Validated (:func:`factorebm.energies.graph.check_samples`).
    groups : factorebm.energies.graph.SampleGroups
        The samples grouped by graph.
    options : dict
        From :func:`check_options`.
    first_sample : int
        The number of sample 0 in the messages of errors raised while evaluating (the first
        unit of a shard of a larger set).

    Raises
    ------
    ValueError
        A target that leaves a visible variable out or gives it an unknown label; schedule
        "trws" with a factor of arity > 2.
    """

    def __init__(self, samples, groups, options, first_sample=0):
        import scipy.sparse as sp
        self.options = options
        self.first_sample = int(first_sample)
        self.graph_of = groups.graph_of
        graphs = groups.graphs
        cgs = [pg.graph.compile() for pg in graphs]
        if options["schedule"] == "trws":
            for j, cg in enumerate(cgs):
                if cg.max_arity > 2:
                    i = int(np.flatnonzero(self.graph_of == j)[0])
                    f = int(cg.fac_index[np.flatnonzero(np.diff(cg.fac_edge_offset) > 2)[0]])
                    g = graphs[j].graph
                    raise ValueError(f"sample {i}: schedule 'trws' needs a pairwise graph, but "
                                     f"factor {f} over {g.factor_scope(f)!r} has arity "
                                     f"{len(g.factor_scope(f))}; use schedule 'flooding' or "
                                     f"'residual'")
        self.corpus, self.off = concatenate(cgs)
        self._cgs = cgs
        # the linear maps: unary energy per state, U @ w + u_off; non-unary tables, Pt @ w + ot
        U, u_off, Pt, ot = [], [], [], []
        for pg, cg in zip(graphs, cgs):
            to = pg.table_offset
            cards = cg.var_n_states[cg.unary_var]
            rows = ranges(to[np.asarray(cg.unary_factors, dtype=_I)], cards)
            states = ranges(cg.var_state_offset[cg.unary_var], cards)
            S = cg.n_states_total
            M = sp.csr_matrix((np.ones(rows.size), (states, np.arange(rows.size))),
                              shape=(S, rows.size))
            U.append(M @ pg.phi[rows])
            t_rows = ranges(to[cg.fac_index], np.diff(cg.fac_table_offset))
            Pt.append(pg.phi[t_rows])
            if pg.offset is None:
                u_off.append(np.zeros(S))
                ot.append(np.zeros(t_rows.size))
            else:
                u_off.append(np.bincount(states, weights=pg.offset[rows], minlength=S))
                ot.append(pg.offset[t_rows])
        self.U = sp.vstack(U, format="csr")
        self.u_off = np.concatenate(u_off)
        self._templates(sp.vstack(Pt, format="csr"), np.concatenate(ot))
        self._plans = {"free": _Plans([cg.plan([]) for cg in cgs]), "clamped": None}
        self.graph_latent = np.array([bool(cg.latent.any()) for cg in cgs], dtype=bool)
        self._targets(samples, cgs)
        self._lock = threading.Lock()
        self._cache = self._sample_cache = None

    # ------------------------------------------------------------------ setup
    def _templates(self, Pt, ot):
        """Group the corpus's non-unary factors by equal rows of Phi and offset: each group
        shares one table (a template) for every w. Candidates by two random projections of the
        rows, then checked exactly (a collision only costs sharing)."""
        c = self.corpus
        F = c.n_facs
        sizes = np.diff(c.fac_table_offset)
        Pt.sum_duplicates()
        Pt.sort_indices()
        rng = np.random.default_rng(0x5eed)
        h = (Pt @ rng.standard_normal((Pt.shape[1], 2)) if Pt.shape[1]
             else np.zeros((Pt.shape[0], 2)))
        keys = np.column_stack([h, ot]) + 0.0           # -0.0 -> 0.0
        rep = np.arange(F, dtype=_I)
        for size in np.unique(sizes).tolist():
            fs = np.flatnonzero(sizes == size)
            k = np.ascontiguousarray(keys[ranges(c.fac_table_offset[fs], np.full(fs.size, size))]
                                     .reshape(fs.size, 3 * size))
            _, first, inverse = np.unique(k.view(np.dtype((np.void, k.shape[1] * 8))).ravel(),
                                          return_index=True, return_inverse=True)
            rep[fs] = fs[first[np.asarray(inverse).ravel()]]
        if F:
            e_rep = ranges(c.fac_table_offset[rep], sizes)
            D = Pt - Pt[e_rep]
            D.eliminate_zeros()
            bad_entry = (np.diff(D.indptr) > 0) | ~((ot == ot[e_rep]))
            bad = np.bincount(np.repeat(np.arange(F), sizes), weights=bad_entry, minlength=F) > 0
            rep[bad] = np.flatnonzero(bad)
        reps, template = np.unique(rep, return_inverse=True)
        self.template = np.asarray(template, dtype=_I).ravel()
        self.t_size = sizes[reps]
        self.t_off = offsets_of(self.t_size)
        rows = ranges(c.fac_table_offset[reps], self.t_size)
        self.P = Pt[rows]
        self.p_off = ot[rows]

    def _targets(self, samples, cgs):
        """Every sample's target as state indices (-1 for latent variables), back to back."""
        tgt = []
        for i, (pg, target) in enumerate(samples):
            g, cg = pg.graph, cgs[int(self.graph_of[i])]
            names = g.variables
            visible = np.flatnonzero(~cg.latent)
            vis_names = [names[k] for k in visible.tolist()] if cg.latent.any() else names
            try:
                labels = [target[v] for v in vis_names]
            except KeyError:
                v = next(v for v in vis_names if v not in target)
                raise ValueError(f"sample {i}: the target does not give a label to visible "
                                 f"variable {v!r}") from None
            if len(target) != len(vis_names):       # it names more than the visible ones
                _extra_variable(g, i, target)
            states = np.full(len(names), -1, dtype=_I)
            arr = np.asarray(labels) if labels else np.zeros(0, dtype=_I)
            # label indices: one numpy pass (numpy makes [1, True] an int array, but a bool
            # is no state index)
            if (arr.dtype.kind in "iu" and arr.ndim == 1
                    and not {bool, np.bool_} & set(map(type, labels))):
                K = cg.var_n_states[visible]
                bad = np.flatnonzero((arr < 0) | (arr >= K))
                if bad.size:
                    k = int(bad[0])
                    raise ValueError(f"sample {i}: label {labels[k]!r} of variable "
                                     f"{vis_names[k]!r} is out of range (it has {K[k]} states)")
                states[visible] = arr
            else:
                for k, v, lab in zip(visible.tolist(), vis_names, labels):
                    states[k] = _label_state(g, i, v, lab, int(cg.var_n_states[k]))
            tgt.append(states)
        self.tgt_off = offsets_of([len(t) for t in tgt])
        self.tgt = np.concatenate(tgt) if tgt else np.zeros(0, dtype=_I)

    def _plan_kind(self, kind):
        if self._plans[kind] is None:
            with self._lock:
                if self._plans[kind] is None:
                    self._plans[kind] = _Plans([
                        cg.plan(np.flatnonzero(~cg.latent)) if self.graph_latent[j]
                        else cg.plan([]) for j, cg in enumerate(self._cgs)])
        return self._plans[kind]

    # ------------------------------------------------------------------ per evaluation
    def _structure(self, G):
        """The batch of graphs ``G`` (sorted ids) taken from the corpus, with the rows of U of
        its states and its distinct tables (cached for the last G: a full-batch optimizer asks
        for the same batch every time)."""
        key = G.tobytes()
        cache = self._cache
        if cache is not None and cache[0] == key:
            return cache[1]
        cg, off = select(self.corpus, self.off, G)
        all_graphs = G.size == len(self.off["var"]) - 1
        srows = part_ranges(self.off["state"], G)
        tmpl = self.template[part_ranges(self.off["fac"], G)]
        n_t = len(self.t_size)
        used = np.flatnonzero(np.bincount(tmpl, minlength=n_t))
        rank = np.full(n_t, -1, dtype=_I)
        rank[used] = np.arange(used.size)
        every = used.size == n_t
        erows = part_ranges(self.t_off, used)
        s = {"cg": cg, "off": off,
             "U": self.U if all_graphs else self.U[srows], "u_off": self.u_off[srows],
             "P": self.P if every else self.P[erows],
             "p_off": self.p_off if every else self.p_off[erows],
             "table_of": rank[tmpl], "table_offset": offsets_of(self.t_size[used])}
        self._cache = (key, s)
        return s

    def _sample_structure(self, units, inv, s):
        """The samples' batch (part i: the graph of sample units[i]) taken from the graphs'
        batch of :meth:`_structure`, and the graphs' states and factors it reads (cached for
        the last units)."""
        key = units.tobytes()
        cache = self._sample_cache
        if cache is not None and cache[0] == key and cache[1] is s:
            return cache[2]
        cg, off = select(s["cg"], s["off"], inv)
        ss = {"cg": cg, "off": off, "states": part_ranges(s["off"]["state"], inv),
              "facs": part_ranges(s["off"]["fac"], inv)}
        self._sample_cache = (key, s, ss)
        return ss

    def terms(self, w, units, spec, params, beta, n_threads=None):
        """Loss sum, gradient and lowest energy over the samples ``units``.

        Returns
        -------
        total : float
        grad : (n_weights,) float64
        lowest : float
            The lowest E+ or E- seen (for the losses that assume non-negative energies).
        e_plus, e_minus : (n,) float64
            Every sample's E+ and E- (``e_minus`` None for the energy loss).
        """
        units, G, inv, s, gcg, nt = self._distinct_graphs(w, units, n_threads)
        off = s["off"]
        graphs = _Run(gcg, off, G)
        gs = np.zeros(gcg.n_states_total)      # dL/d(unary energy) of every state
        gt = np.zeros(gcg.unique_tables.size)  # dL/d(entry) of every distinct table
        # the samples' batch: part i is the graph of sample units[i], tables shared with G's
        ss = self._sample_structure(units, inv, s)
        scg = copy.copy(ss["cg"])
        scg.take_tables(gcg, ss["states"], ss["facs"])
        samples = _Run(scg, ss["off"], G[inv], ss["states"])
        tgt = self.tgt[part_ranges(self.tgt_off, units)]
        latent = self.graph_latent[samples.gids]
        n = units.size
        if spec.e_minus == "free_energy":
            e_plus, e_minus, beliefs = self._nll(graphs, samples, tgt, latent, units, inv,
                                                 beta, nt)
            lo, dp, dm = (np.broadcast_to(x, (n,)) for x in spec(e_plus, e_minus, **params))
            self._nll_gradient(beliefs, graphs, samples, tgt, latent, inv, dp, dm, gs, gt)
        else:
            e_plus, plus_states = self._energy_plus(samples, tgt, latent, units, nt)
            e_minus = minus_run = minus_states = minus_weight = None
            if spec.e_minus == "min_all":
                minus_states, e_g, _ = self._min_sum(graphs, gcg.unary, "free", nt, units, inv)
                e_minus, minus_run = e_g[inv], graphs
            elif spec.e_minus == "most_offending":
                if self.options["e_minus"] == "loss_augmented":
                    minus_states, e_minus = self._loss_augmented(samples, tgt, units, nt)
                else:
                    minus_states, e_minus = self._most_offending(graphs, samples, tgt, units,
                                                                 inv, nt)
                minus_run = samples
            lo, dp, dm = (np.broadcast_to(x, (n,)) for x in spec(e_plus, e_minus, **params))
            samples.add_indicators(plus_states, dp, gs, gt)
            if minus_run is graphs:             # one answer per graph: its samples' weights
                minus_weight = np.bincount(inv, weights=dm, minlength=G.size)
            elif minus_run is samples:
                minus_weight = dm
            if minus_run is not None:
                minus_run.add_indicators(minus_states, minus_weight, gs, gt)
        lowest = np.inf
        for e in (e_plus, e_minus):
            if e is not None and n:
                lowest = min(lowest, float(np.min(e)))
        grad = s["U"].T @ gs + s["P"].T @ gt
        return float(np.sum(lo)), np.asarray(grad, dtype=np.float64), lowest, e_plus, e_minus

    def minimizers(self, w, units, n_threads=None):
        """The min-sum answers of the samples' graphs at w (the options' schedule), one kernel
        call over the distinct graphs: a list with one (V,) int64 array of state indices per
        sample, in the graph's variable order (latent variables included)."""
        units, G, inv, s, gcg, nt = self._distinct_graphs(w, units, n_threads)
        states, _, _ = self._min_sum(_Run(gcg, s["off"], G), gcg.unary, "free", nt, units, inv)
        per_graph = np.split(states, s["off"]["var"][1:-1])
        return [per_graph[j] for j in inv.tolist()]

    def _distinct_graphs(self, w, units, n_threads):
        """The distinct graphs G of the samples ``units`` (``inv``: each sample's place in G),
        their cached structure ``s``, and a copy of their batch ``gcg`` holding the tables at w
        (per evaluation: the cached structure is never written); ``nt`` threads for it."""
        units = np.asarray(units, dtype=_I)
        G, inv = np.unique(self.graph_of[units], return_inverse=True)
        inv = np.asarray(inv, dtype=_I).ravel()
        s = self._structure(G)
        gcg = copy.copy(s["cg"])
        gcg.set_tables(s["U"] @ w + s["u_off"], s["P"] @ w + s["p_off"], s["table_of"],
                       s["table_offset"])
        nt = threads_for(n_threads, max(gcg.n_msg, 1), _SLOTS_PER_THREAD)
        return units, G, inv, s, gcg, nt

    # ------------------------------------------------------------------ runs
    def _messages(self, run, unary, kind, min_sum, beta, nt):
        """BP on every part of ``run`` with ``unary`` (S,): forests by their exact schedule,
        loopy parts by the options' schedule (one kernel call each). Returns v2f, f2v, and for
        TRW-S its states (V,) with a bool (B,) of the parts they hold (else None, None)."""
        o = self.options
        plans = self._plan_kind(kind)
        exact = plans.forest[run.gids]
        cg, off = run.cg, run.off
        trws = o["schedule"] == "trws" and min_sum
        if exact.all() or not exact.any():
            groups = [(np.arange(run.n), bool(exact.all()), cg, off, None)]
        else:
            groups = []
            for forest in (True, False):
                p = np.flatnonzero(exact == forest)
                sub, so = select(cg, off, p)
                groups.append((p, forest, sub, so, part_ranges(off["msg"], p)))
            v2f, f2v = np.zeros(max(cg.n_msg, 1)), np.zeros(max(cg.n_msg, 1))
        states = decoded = None
        for p, forest, sub, so, msgs in groups:
            u = unary if msgs is None else unary[part_ranges(off["state"], p)]
            if trws and not forest:
                a, b, _, _, st, _, _, _ = sub.run_trws(u, o["max_iter"], o["tol"])
                states = np.zeros(cg.n_vars, dtype=_I)
                states[part_ranges(off["var"], p)] = st
                decoded = np.zeros(run.n, dtype=bool)
                decoded[p] = True
            else:
                schedule = "flooding" if o["schedule"] == "trws" else o["schedule"]
                a, b, _, _, _ = sub.run_bp(u, plans.plan(so, run.gids[p], forest), beta,
                                           min_sum, o["max_iter"], o["damping"], o["tol"],
                                           1 if schedule == "residual" else nt, schedule)
            if msgs is None:
                v2f, f2v = a, b
            else:
                v2f[msgs] = a[:sub.n_msg]
                f2v[msgs] = b[:sub.n_msg]
        return v2f, f2v, states, decoded

    def _min_sum(self, run, unary, kind, nt, units, inv, init=None, beliefs=False):
        """Min-sum on every part of ``run``: the decoded states (V,) (``init`` holds the
        clamped variables' states), each part's energy (with the run's own unary energies,
        not ``unary``), and with ``beliefs`` the variable beliefs (S,)."""
        cg = run.cg
        v2f, f2v, trws_states, decoded = self._messages(run, unary, kind, True, np.inf, nt)
        var_b, _ = cg.beliefs(unary, v2f, f2v, factors=False)
        self._check_feasible(run, var_b, units, inv)
        states = np.zeros(cg.n_vars, dtype=_I) if init is None else init.copy()
        plans = self._plan_kind(kind)
        order = plans.plan(run.off, run.gids, False).order
        if decoded is not None:
            held = np.repeat(decoded, np.diff(run.off["var"]))
            states[held] = trws_states[held]
            order = order[~decoded[np.repeat(np.arange(run.n), np.diff(plans.order_off)[run.gids])]]
        if order.size and cg.n_facs:
            cg.decode(unary, Plan(False, np.full(1, -1, dtype=_I), order), v2f, f2v, states)
        elif order.size:             # no factors: every variable's own lowest state
            states[order] = _first_argmin(var_b, cg)[order]
        energies = run.energies(states)
        if not np.isfinite(energies).all():
            self._infinite(run, energies, kind, units, inv)
        return states, energies, (var_b if beliefs else None)

    def _check_feasible(self, run, var_b, units, inv):
        """ValueError when some variable's beliefs forbid every state (no finite energy)."""
        cg = run.cg
        if not cg.n_vars:
            return
        vmin = np.minimum.reduceat(var_b, cg.var_state_offset[:-1])
        bad = np.flatnonzero(~np.isfinite(vmin))
        if bad.size:
            i = self._sample_of(int(run.var_part[bad[0]]), units, inv)
            raise ValueError(f"sample {i}: no assignment has finite energy (every state of a "
                             f"variable is forbidden, +inf)")

    def _sample_of(self, part, units, inv):
        """The number (for messages) of the sample a part stands for (for a graph: its first
        sample in the batch)."""
        if inv is not None:
            part = int(np.flatnonzero(inv == part)[0])
        return self.first_sample + int(units[part])

    def _infinite(self, run, energies, kind, units, inv):
        """An infinite decoded energy: an error where the part is a forest, else a warning."""
        bad = np.flatnonzero(~np.isfinite(energies))
        i = self._sample_of(int(bad[0]), units, inv)
        if self._plan_kind(kind).forest[run.gids[bad]].any():
            raise ValueError(f"sample {i}: no finite-energy assignment was found (the graph, a "
                             f"forest, has no assignment of finite energy)")
        warnings.warn(f"sample {i}: belief propagation found no finite-energy assignment (the "
                      f"graph may be infeasible; on a loopy graph BP cannot tell)",
                      RuntimeWarning, stacklevel=5)

    # ------------------------------------------------------------------ E+ and E-
    def _energy_plus(self, run, tgt, latent, units, nt):
        """(E+ (n,), the full assignment (V,)): the target's energy, its latent variables
        minimized by one clamped min-sum run over the samples that have them."""
        states = np.where(tgt < 0, 0, tgt)
        if latent.any():
            parts = np.flatnonzero(latent)
            sub, so = select(run.cg, run.off, parts)
            sr = _Run(sub, so, run.gids[parts])
            vs = part_ranges(run.off["var"], parts)
            mask = _clamp_mask(sub, tgt[vs])
            states[vs], _, _ = self._min_sum(sr, sub.unary + mask, "clamped", nt, units[parts],
                                             None, init=states[vs])
        return run.energies(states), states

    def _most_offending(self, graphs, run, tgt, units, inv, nt):
        """The lowest-energy answer differing from each target in a visible variable: the
        best (variable, wrong label) of the min-marginals of one free run over the graphs
        (the first in variable and label order on ties), then one run over the samples with
        that variable clamped."""
        gcg = graphs.cg
        _, e_g, var_b = self._min_sum(graphs, gcg.unary, "free", nt, units, inv, beliefs=True)
        vmin = np.minimum.reduceat(var_b, gcg.var_state_offset[:-1])
        mm = (var_b - np.repeat(vmin, gcg.var_n_states)
              + np.repeat(e_g[graphs.var_part], gcg.var_n_states))[run.state_map]
        cg = run.cg
        vis = tgt >= 0
        mm[cg.var_state_offset[:-1][vis] + tgt[vis]] = np.inf       # the target's own labels
        mm[np.repeat(~vis, cg.var_n_states)] = np.inf                 # latent variables
        state_part = np.repeat(run.var_part, cg.var_n_states)
        best = np.full(run.n, np.inf)
        nonempty = np.diff(run.off["state"]) > 0
        if mm.size:
            best[nonempty] = np.minimum.reduceat(mm, run.off["state"][:-1][nonempty])
        if not np.isfinite(best).all():
            i = self._sample_of(int(np.flatnonzero(~np.isfinite(best))[0]), units, None)
            raise ValueError(f"sample {i}: no assignment with finite energy differs from the "
                             f"target in a visible variable")
        hit = np.flatnonzero(mm == best[state_part])
        _, first = np.unique(state_part[hit], return_index=True)
        chosen = hit[first]                                  # one state per sample
        var = np.repeat(np.arange(cg.n_vars, dtype=_I), cg.var_n_states)[chosen]
        unary = cg.unary.copy()
        unary[ranges(cg.var_state_offset[var], cg.var_n_states[var])] = np.inf
        unary[chosen] = cg.unary[chosen]
        states, e_minus, _ = self._min_sum(run, unary, "free", nt, units, None)
        return states, e_minus

    def _loss_augmented(self, run, tgt, units, nt):
        """Each sample's argmin of E(y) - h H(y, target) (h added to the unary energy of every
        target state), and E- = E(ybar) - h (H(ybar, target) - 1)."""
        cg = run.cg
        h = self.options["hamming"]
        vis = np.flatnonzero(tgt >= 0)
        unary = cg.unary.copy()
        unary[cg.var_state_offset[vis] + tgt[vis]] += h
        states, energies, _ = self._min_sum(run, unary, "free", nt, units, None)
        wrong = _part_sum((states[vis] != tgt[vis]).astype(np.float64), run.var_part[vis], run.n)
        return states, energies - h * (wrong - 1.0)

    def _nll(self, graphs, run, tgt, latent, units, inv, beta, nt):
        """E+ (the target's energy, or its clamped free energy with latent variables) and E-
        (the free energy, Bethe on loopy graphs) of every sample, and the beliefs
        :meth:`_nll_gradient` needs."""
        F, p, q = self._free_energy(graphs, graphs.cg.unary, "free", beta, nt, units, inv)
        e_plus = run.energies(np.where(tgt < 0, 0, tgt))
        clamped = None
        if latent.any():
            parts = np.flatnonzero(latent)
            sub, so = select(run.cg, run.off, parts)
            sr = _Run(sub, so, run.gids[parts], run.state_map[part_ranges(run.off["state"], parts)])
            mask = _clamp_mask(sub, tgt[part_ranges(run.off["var"], parts)])
            Fc, pc, qc = self._free_energy(sr, sub.unary + mask, "clamped", beta, nt,
                                           units[parts], None, energy=sub.unary)
            e_plus[parts] = Fc
            clamped = (sr, parts, pc, qc)
        return e_plus, F[inv], (p, q, clamped)

    @staticmethod
    def _nll_gradient(beliefs, graphs, run, tgt, latent, inv, dp, dm, gs, gt):
        """Add the NLL's belief terms: dL/dE- times the model's beliefs of each graph, dL/dE+
        times the target's indicators or its clamped beliefs."""
        p, q, clamped = beliefs
        graphs.add_beliefs(p, q, np.bincount(inv, weights=dm, minlength=graphs.n), gs, gt)
        if not latent.all():
            run.add_indicators(np.where(tgt < 0, 0, tgt), np.where(latent, 0.0, dp), gs, gt)
        if clamped is not None:
            sr, parts, pc, qc = clamped
            sr.add_beliefs(pc, qc, dp[parts], gs, gt)

    def _free_energy(self, run, unary, kind, beta, nt, units, inv, energy=None):
        """Sum-product on every part: its free energy (exact on forests, Bethe on loopy
        graphs), the variable marginals p (S,) and the factor beliefs q (T,)."""
        cg = run.cg
        v2f, f2v, _, _ = self._messages(run, unary, kind, False, beta, nt)
        var_b, _ = cg.beliefs(unary, v2f, f2v, factors=False)
        q, t_mean, h_fac, fmin = cg.factor_gibbs(v2f, beta, nt)
        self._check_feasible(run, var_b, units, inv)
        if fmin.size and not np.isfinite(fmin).all():
            part = int(run.fac_part[np.flatnonzero(~np.isfinite(fmin))[0]])
            raise ValueError(f"sample {self._sample_of(part, units, inv)}: no assignment has "
                             f"finite energy (every entry of a factor is forbidden, +inf)")
        p, u_mean, h_var = cg.variable_gibbs(var_b, beta, nt, energy)
        F = (_part_sum(u_mean - (1 - cg.var_degree) * h_var / beta, run.var_part, run.n)
             + _part_sum(t_mean - h_fac / beta, run.fac_part, run.n))
        exact = self._plan_kind(kind).forest[run.gids]
        if cg.has_inf and not exact.all():
            self._warn_if_infeasible(run, unary, kind, v2f, f2v, nt, units, inv, exact)
        return F, p, q

    def _warn_if_infeasible(self, run, unary, kind, v2f, f2v, nt, units, inv, exact):
        """Loopy parts with +inf energies: warn when no finite-energy assignment turns up,
        decoded from the sum-product messages or else from a min-sum run (Z may be 0 although
        BP's beliefs look fine)."""
        cg = run.cg
        plan = self._plan_kind(kind).plan(run.off, run.gids, False)
        for attempt in range(2):
            if attempt:
                v2f, f2v, _, _ = self._messages(run, unary, kind, True, np.inf, nt)
            states = np.zeros(cg.n_vars, dtype=_I)
            cg.decode(unary, plan, v2f.copy(), f2v.copy(), states)
            bad = ~np.isfinite(run.energies(states, unary)) & ~exact
            if not bad.any():
                return
        i = self._sample_of(int(np.flatnonzero(bad)[0]), units, inv)
        warnings.warn(f"sample {i}: belief propagation found no finite-energy assignment (the "
                      f"graph may be infeasible; on a loopy graph BP cannot tell); its free "
                      f"energy and beliefs are meaningless if it is", RuntimeWarning,
                      stacklevel=5)


def _label_state(g, i, v, lab, K):
    """The state index of label ``lab`` of variable ``v``: an integer is a state index,
    anything else one of its label names (as for :meth:`FactorGraph.energy`), so True or 1.0
    is no state index."""
    if is_int(lab) and not 0 <= int(lab) < K:
        raise ValueError(f"sample {i}: label {lab!r} of variable {v!r} is out of range (it "
                         f"has {K} states)")
    try:
        return g.state_of(v, lab)          # FactorGraph's rule, as for energy()
    except ValueError:
        raise ValueError(f"sample {i}: variable {v!r} has no label {lab!r} (labels "
                         f"{g.labels(v)!r}; an integer is a state index)") from None


def _extra_variable(g, i, target):
    """Raise for the first variable of a target that is not a visible one: a latent variable
    (ValueError: never observed; the target's label would be silently dropped) or an unknown
    name (KeyError)."""
    known = set(g.variables)
    for v in target:
        if v not in known:
            raise KeyError(f"sample {i}: the target names unknown variable {v!r}")
        if g.is_latent(v):
            raise ValueError(f"sample {i}: the target gives a label to variable {v!r}, which "
                             f"is latent: latent variables are never observed; their labels "
                             f"are minimized (or summed) over")


def _clamp_mask(cg, tgt):
    """(S,) +inf on every state that a visible variable's target (tgt (V,), -1 for latent
    variables) excludes, 0 elsewhere."""
    mask = np.where(np.repeat(tgt < 0, cg.var_n_states), 0.0, np.inf)
    vis = np.flatnonzero(tgt >= 0)
    mask[cg.var_state_offset[vis] + tgt[vis]] = 0.0
    return mask


def _first_argmin(var_b, cg):
    """(V,) each variable's lowest state (the first on ties)."""
    lo = np.repeat(np.minimum.reduceat(var_b, cg.var_state_offset[:-1]), cg.var_n_states)
    pos = np.where(var_b == lo, np.arange(var_b.size), var_b.size)
    return np.minimum.reduceat(pos, cg.var_state_offset[:-1]) - cg.var_state_offset[:-1]
