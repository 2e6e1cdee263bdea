"""A factor graph compiled to flat contiguous arrays for the Cython kernel.

:class:`CompiledGraph` is built once per graph structure (and cached on the
:class:`~factorebm.graph.FactorGraph` until a variable or factor is added; a
table replaced with ``set_factor_energies`` refreshes only the tables). Layout
(CSR style, every ``*_offset`` array has length n + 1):

=====================  ===========  ==================================================
field                  shape        meaning
=====================  ===========  ==================================================
``var_n_states``       (V,)         cardinality of variable v
``var_state_offset``   (V+1,)       states of v are ``[off[v], off[v+1])`` in every
                                    per-state vector (unary energies, mask, beliefs)
``unary``              (S,)         sum of the unary factors' energies of each state
``fac_index``          (F,)         original index of compiled (non-unary) factor f
``fac_edge_offset``    (F+1,)       the (factor, variable) edges of f, in scope order
``edge_var``           (E,)         the variable of edge e
``edge_stride``        (E,)         row-major stride of that variable in f's table
``edge_msg_offset``    (E+1,)       message slots of edge e in ``v2f`` / ``f2v``
``var_edge_offset``    (V+1,)       the edges incident to v are
``var_edges``          (E,)         ``var_edges[var_edge_offset[v]:var_edge_offset[v+1]]``
``fac_table_offset``   (F+1,)       f's flat energy table in ``tables``
``tables``             (T,)         every non-unary table, row-major over its scope
``fac_table``          (F,)         offset of f's table in ``unique_tables``
``unique_tables``      (T_u,)       each distinct table once: factors whose tables
                                    are equal share one copy (what the kernel reads)
``table_min``          (F,)         the finite minimum of f's table (0 if none)
``fac_potts``          (F,)         c where f's table is Potts, ``table_min + c [a != b]``
                                    (square, 0 <= c <= +inf), else -1: its messages
                                    then cost O(K) instead of O(K^2)
``edge_fac``           (E,)         the factor of edge e
=====================  ===========  ==================================================

Sharing identical tables matters for speed: a Potts grid has one K x K table
for every pairwise factor, and reading it once instead of once per factor
removes most of the memory traffic of a flooding sweep. Tables are compared
by value whenever they are re-read, so replacing one factor's table
with ``set_factor_energies`` gives that factor its own copy and leaves the
others unchanged.

The graph hands its factors over in blocks (one per ``add_factor`` / ``add_factors``
call; a block's table may be shared by all its factors), so compiling is a few numpy
passes over the blocks, never a Python loop over factors. :func:`concatenate` joins
several compiled graphs into one batch that the kernels run in one call.

Unary factors are folded into ``unary``; evidence is a mask added to it (+inf on
the states a clamped variable does not take). Clamping cuts the graph: a
clamped variable sends the same indicator message on each of its edges whatever
it receives, so it is split into one leaf per edge. The graph is a forest after
clamping when the bipartite graph of unclamped variables and non-unary factors
has no cycle; then :meth:`CompiledGraph.plan` returns the exact two-pass
schedule (leaves to roots, then roots to leaves).
"""
import numpy as np

from . import _bp
from .checks import check_beta, threads_for
from .indexing import offsets_of, padded, part_ranges, ranges

__all__ = ["CompiledGraph", "Plan", "SegmentViews", "concatenate", "select", "ranges", "part_ranges"]

_I = np.int64
# passes of TRW-S whose energy and bound run_trws records (its traces' size does not grow
# with max_iter)
TRWS_TRACE_PASSES = 1 << 16


def _reorder(items, perm):
    """``[items[i] for i in perm]`` as a few list slices when perm is made of runs (the usual case)."""
    perm = np.asarray(perm, dtype=_I)
    if perm.size == 0:
        return []
    starts = np.flatnonzero(np.diff(perm) != 1) + 1
    if starts.size > perm.size // 16:
        return list(map(items.__getitem__, perm.tolist()))
    out = []
    for lo, hi in zip(np.concatenate([[0], starts]).tolist(), np.concatenate([starts, [perm.size]]).tolist()):
        first = int(perm[lo])
        out.extend(items[first:first + hi - lo])
    return out


class SegmentViews:
    """Cut a flat vector into one array per segment ``[offsets[j], offsets[j+1])``, in C-level passes.

    Built once per structure (cached by :class:`CompiledGraph`): segments of one
    size (and shape, when ``shapes`` (n, a) int64 gives each segment's shape,
    0-padded) form a (count, *shape) block whose rows become the arrays, so
    cutting 10^5 segments costs no Python loop per segment.

    Parameters
    ----------
    offsets : int64 (n + 1,)
    shapes : int64 (n, a), optional
        Shape of each segment (trailing zeros ignored); default 1-D.
    """

    def __init__(self, offsets, shapes=None):
        offsets = np.asarray(offsets, dtype=_I)
        n = len(offsets) - 1
        self.n = n
        self.blocks = []
        self.perm = None
        if n <= 0:
            return
        sizes = np.diff(offsets)
        keys = sizes[:, None] if shapes is None else np.column_stack([sizes, shapes])

        def shape_of(key):
            return (int(key[0]),) if shapes is None else tuple(int(c) for c in key[1:] if c)

        if (keys == keys[0]).all() and offsets[0] == 0:
            # one shape, segments back to back: a reshape, no gather
            self.blocks = [(None, int(offsets[-1]), shape_of(keys[0]))]
            return
        groups, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = np.asarray(inverse).ravel()
        order = []
        for gi, key in enumerate(groups):
            idx = np.flatnonzero(inverse == gi)
            self.blocks.append((offsets[idx][:, None] + np.arange(int(key[0])), len(idx), shape_of(key)))
            order.append(idx)
        order = np.concatenate(order)
        perm = np.empty(n, dtype=_I)
        perm[order] = np.arange(n)
        self.perm = perm

    def __call__(self, x):
        """List of n arrays (views of one fresh block per shape, or of x itself when one reshape suffices)."""
        views = []
        for gather, count, shape in self.blocks:
            block = x[:count] if gather is None else x[gather]
            views.extend(block.reshape((-1,) + shape))
        return views if self.perm is None else _reorder(views, self.perm)


def _fitting(x, n, name, dtype=np.float64):
    """``x`` as a contiguous (n,) array of ``dtype`` (an input a kernel reads n entries of,
    without bounds checks); ValueError naming it when its shape differs or it is complex."""
    a = np.asarray(x)
    if a.shape != (n,) or a.dtype.kind == "c":
        raise ValueError(f"{name} must be a real (n,) array with n = {n} here, got dtype "
                         f"{a.dtype} and shape {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)


def _buffer(x, n, name, dtype=np.float64):
    """``x`` itself, checked to be a writable contiguous (n,) array of ``dtype``: a kernel
    reads and writes it in place, so it cannot be a converted copy."""
    if (not isinstance(x, np.ndarray) or x.shape != (n,) or x.dtype != dtype
            or not x.flags.c_contiguous or not x.flags.writeable):
        raise ValueError(f"{name} must be a writable contiguous ({n},) {np.dtype(dtype).name} "
                         f"array here, got "
                         + (f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray)
                            else type(x).__name__))
    return x


def _indices(x, hi, name, skip_negative=False):
    """``x`` as a contiguous 1-D int64 array of indices in ``0..hi-1`` (negative entries
    allowed where the kernel skips them)."""
    a = np.asarray(x)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-D integer array, got dtype {a.dtype} and shape "
                         f"{a.shape}")
    if a.size and (a.max() >= hi or (not skip_negative and a.min() < 0)):
        raise ValueError(f"{name} holds indices outside 0..{hi - 1}")
    return np.ascontiguousarray(a, dtype=_I)


class Plan:
    """The message schedule for one set of clamped variables.

    Attributes
    ----------
    is_forest : bool
        True when the graph is a forest once the clamped variables are cut out.
    schedule : int64 (n_steps,)
        For a forest, the two-pass sweep: step ``s`` updates edge ``s // 2``,
        its v2f message when ``s % 2 == 0``, else its f2v message. ``[-1]`` for
        flooding.
    order : int64 (n_unclamped,)
        Breadth-first order of the unclamped variables (the decoding order).
    """

    def __init__(self, is_forest, schedule, order):
        self.is_forest = is_forest
        self.schedule = schedule
        self.order = order


class CompiledGraph:
    """Flat arrays of a :class:`~factorebm.graph.FactorGraph` (see the module docstring)."""

    def __init__(self, graph):
        self.structure_version = graph._structure_version
        n_states = np.array(graph._n_states_arr(), dtype=_I)
        V = len(n_states)
        self.n_vars = V
        self.var_n_states = n_states
        self.var_state_offset = np.zeros(V + 1, dtype=_I)
        np.cumsum(n_states, out=self.var_state_offset[1:])
        self.n_states_total = int(self.var_state_offset[-1])
        self.max_card = int(n_states.max()) if V else 1
        self.latent = np.asarray(graph._latent, dtype=bool)

        # factors come in blocks (one per add_factor / add_factors call): every step below is
        # one numpy pass over the blocks' arrays, not a Python loop over factors
        blocks, starts = graph._blocks, graph._block_start
        arity_b = np.asarray([b.scope.shape[1] for b in blocks], dtype=_I)
        count_b = np.diff(np.asarray(starts, dtype=_I))
        first_b = np.asarray(starts[:-1], dtype=_I)
        self._unary_blocks = np.flatnonzero(arity_b == 1)
        self._table_blocks = np.flatnonzero(arity_b > 1)
        ub, tb = self._unary_blocks, self._table_blocks
        self._unary_fac = ranges(first_b[ub], count_b[ub])
        self.unary_factors = self._unary_fac.tolist()
        self.unary_var = (np.concatenate([blocks[b].scope[:, 0] for b in ub]).astype(_I) if ub.size
                          else np.zeros(0, dtype=_I))
        self.fac_index = ranges(first_b[tb], count_b[tb])
        F = len(self.fac_index)
        self.n_facs = F
        arity = np.repeat(arity_b[tb], count_b[tb])
        self.fac_edge_offset = np.zeros(F + 1, dtype=_I)
        np.cumsum(arity, out=self.fac_edge_offset[1:])
        E = int(self.fac_edge_offset[-1])
        self.n_edges = E
        self.edge_var = (np.concatenate([blocks[b].scope.ravel() for b in tb]).astype(_I) if tb.size
                         else np.zeros(0, dtype=_I))
        self.edge_fac = np.repeat(np.arange(F, dtype=_I), arity)
        edge_card = n_states[self.edge_var] if E else np.zeros(0, dtype=_I)
        # row-major stride: product of the cardinalities after this axis in the scope
        # (vectorized over factors: walk the scope positions from the last one back)
        stride = np.ones(E, dtype=_I)
        pos_from_end = np.repeat(self.fac_edge_offset[1:], arity) - 1 - np.arange(E)
        for j in range(1, int(arity.max()) if F else 0):
            e = np.flatnonzero(pos_from_end == j)
            stride[e] = stride[e + 1] * edge_card[e + 1]
        self.edge_stride = stride
        self.edge_msg_offset = np.zeros(E + 1, dtype=_I)
        np.cumsum(edge_card, out=self.edge_msg_offset[1:])
        self.n_msg = int(self.edge_msg_offset[-1])
        self.var_edges = np.argsort(self.edge_var, kind="stable").astype(_I)
        self.var_degree = np.bincount(self.edge_var, minlength=V).astype(_I)
        self.var_edge_offset = np.zeros(V + 1, dtype=_I)
        np.cumsum(self.var_degree, out=self.var_edge_offset[1:])
        size_b = np.asarray([blocks[b].table.size if blocks[b].shared
                             else blocks[b].table.size // len(blocks[b].scope) for b in tb], dtype=_I)
        self.fac_table_offset = np.zeros(F + 1, dtype=_I)
        np.cumsum(np.repeat(size_b, count_b[tb]), out=self.fac_table_offset[1:])
        self.q_size = int(np.add.reduceat(edge_card, self.fac_edge_offset[:-1]).max()) if F else 1
        self.max_arity = int(arity.max()) if F else 0
        self._plans = {}
        self._belief_layout = None
        self._var_views = None
        self._factor_place = None
        self._tables_flat = None
        self.refresh_tables(graph)

    @property
    def factor_place(self):
        """list: per original factor, ``("unary", variable)`` or ``("table", compiled index)``."""
        if self._factor_place is None:
            place = [None] * (len(self.unary_factors) + self.n_facs)
            for f, v in zip(self.unary_factors, self.unary_var.tolist()):
                place[f] = ("unary", v)
            for i, f in enumerate(self.fac_index.tolist()):
                place[f] = ("table", i)
            self._factor_place = place
        return self._factor_place

    @property
    def tables(self):
        """float64 (T,): every non-unary factor's table, row-major over its scope, back to back.

        Built from ``unique_tables`` on first use (the kernels read the shared copies).
        """
        if self._tables_flat is None:
            sizes = np.diff(self.fac_table_offset)
            self._tables_flat = self.unique_tables[
                np.repeat(self.fac_table - self.fac_table_offset[:-1], sizes)
                + np.arange(int(self.fac_table_offset[-1]))] if self.n_facs else np.zeros(0)
        return self._tables_flat

    def refresh_tables(self, graph):
        """Re-read the energy tables (the structure is unchanged)."""
        self.tables_version = graph._tables_version
        self._tables_flat = None
        blocks, starts, override = graph._blocks, graph._block_start, graph._override
        ov = np.asarray(sorted(override), dtype=_I)

        def rows(b):
            """Block b's tables as (n, size) rows with the overrides written in, and whether
            they are one shared row (n == 1 then stands for the whole block). Called once per
            block: one-by-one builds make a block per factor, so the common case is cheap."""
            blk = blocks[b]
            t = blk.table
            n = len(blk.scope)
            r = t.reshape(-1, t.size if blk.shared else t.size // n)
            if ov.size:
                lo, hi = np.searchsorted(ov, [starts[b], starts[b + 1]])
                if lo < hi:
                    r = np.array(np.broadcast_to(r, (n, r.shape[1])))
                    for f in ov[lo:hi].tolist():
                        r[f - starts[b]] = override[f].ravel()
                    return r, False
            return r, blk.shared

        unary = np.zeros(self.n_states_total)
        if self._unary_blocks.size:
            vals = []
            for b in self._unary_blocks.tolist():
                t, _ = rows(b)
                n = len(blocks[b].scope)
                vals.append(t.ravel() if len(t) == n else np.broadcast_to(t, (n, t.shape[1])).ravel())
            cards = self.var_n_states[self.unary_var]
            idx = ranges(self.var_state_offset[self.unary_var], cards)
            unary = np.bincount(idx, weights=np.concatenate(vals), minlength=self.n_states_total)
        self.unary = unary
        if self.n_facs:
            self._share_tables([rows(b) for b in self._table_blocks.tolist()],
                               np.diff(np.asarray(starts, dtype=_I))[self._table_blocks])
            finite = np.where(np.isfinite(self.unique_tables), self.unique_tables, np.inf)
            tmin = np.minimum.reduceat(finite, self._unique_offset[:-1])
            self._unique_min = np.where(np.isfinite(tmin), tmin, 0.0)
            self.table_min = self._unique_min[self._fac_unique]
            self.fac_potts = self._potts()
        else:
            self.unique_tables = np.zeros(0)
            self.fac_table = np.zeros(0, dtype=_I)
            self._fac_unique = np.zeros(0, dtype=_I)
            self._unique_offset = np.zeros(1, dtype=_I)
            self._unique_min = np.zeros(0)
            self.table_min = np.zeros(0)
            self.fac_potts = np.zeros(0)
        self.has_inf = bool(np.isinf(self.unary).any() or np.isinf(self.unique_tables).any())
        self._exp_cache = (None, None)

    def _share_tables(self, block_rows, block_count):
        """Store every distinct table once: sets unique_tables, fac_table and _fac_unique.

        block_rows: per table block, its (n, size) rows and whether its one row is shared by
        all block_count factors of the block. Tables of one size are compared by value (as raw
        bytes once -0.0 is made 0.0; +inf equals +inf); unique tables are numbered in order of
        first use, and a table no factor uses any more (replaced) is dropped.
        """
        n_rows = np.asarray([len(r) for r, _ in block_rows], dtype=_I)
        row_first = np.zeros(len(block_rows) + 1, dtype=_I)
        np.cumsum(n_rows, out=row_first[1:])
        shared = np.repeat(np.asarray([s for _, s in block_rows], dtype=bool), block_count)
        local = ranges(np.zeros(len(block_count), dtype=_I), block_count)
        cand_of = np.repeat(row_first[:-1], block_count) + np.where(shared, 0, local)
        size_of_block = np.asarray([r.shape[1] for r, _ in block_rows], dtype=_I)
        cand_unique = np.empty(int(row_first[-1]), dtype=_I)
        flat, u_start, u_size = [], [], []      # distinct rows of each size, flat, and where
        n_flat = n_unique = 0
        for size in np.unique(size_of_block).tolist():
            bs = np.flatnonzero(size_of_block == size).tolist()
            cand = ranges(row_first[bs], n_rows[bs])
            rows = np.concatenate([block_rows[b][0] for b in bs])
            if (rows == rows[0]).all():  # the common case (e.g. one Potts table), no sort
                inverse, firsts = np.zeros(len(rows), dtype=_I), np.zeros(1, dtype=_I)
            else:
                rows = rows + 0.0        # -0.0 -> 0.0, so that equal values have equal bytes
                keys = np.ascontiguousarray(rows).view(np.dtype((np.void, 8 * size))).ravel()
                _, firsts, inverse = np.unique(keys, return_index=True, return_inverse=True)
            cand_unique[cand] = np.asarray(inverse, dtype=_I).ravel() + n_unique
            flat.append(rows[firsts].ravel())
            u_start.append(n_flat + size * np.arange(len(firsts), dtype=_I))
            u_size.append(np.full(len(firsts), size, dtype=_I))
            n_flat += size * len(firsts)
            n_unique += len(firsts)
        flat = np.concatenate(flat)
        u_start, u_size = np.concatenate(u_start), np.concatenate(u_size)
        fac_u = cand_unique[cand_of]
        used, first_f = np.unique(fac_u, return_index=True)
        keep = used[np.argsort(first_f, kind="stable")]
        rank = np.full(n_unique, -1, dtype=_I)
        rank[keep] = np.arange(len(keep))
        self._fac_unique = rank[fac_u]
        usize = u_size[keep]
        self._unique_offset = np.zeros(len(keep) + 1, dtype=_I)
        np.cumsum(usize, out=self._unique_offset[1:])
        self.unique_tables = flat[np.repeat(u_start[keep] - self._unique_offset[:-1], usize)
                                  + np.arange(int(self._unique_offset[-1]))]
        self.fac_table = self._unique_offset[self._fac_unique]

    def _potts(self):
        """float64 (F,): c where factor f's table is d + c [a != b] (pairwise, K x K, K >= 2,
        0 <= c <= +inf, d finite), else -1. Such a message costs O(K) instead of O(K^2)."""
        n_u = len(self._unique_offset) - 1
        c_u = np.full(n_u, -1.0)
        pair = np.flatnonzero(np.diff(self.fac_edge_offset) == 2)
        if pair.size:
            e0 = self.fac_edge_offset[pair]
            k0, k1 = self.var_n_states[self.edge_var[e0]], self.var_n_states[self.edge_var[e0 + 1]]
            sq = (k0 == k1) & (k0 >= 2)
            for K in np.unique(k0[sq]).tolist():
                us = np.unique(self._fac_unique[pair[sq & (k0 == K)]])
                T = self.unique_tables[self._unique_offset[us][:, None] + np.arange(K * K)].reshape(-1, K, K)
                eye = np.eye(K, dtype=bool)
                d = T[:, eye]
                off = T[:, ~eye]
                with np.errstate(invalid="ignore"):
                    ok = ((d == d[:, :1]).all(1) & (off == off[:, :1]).all(1) & np.isfinite(d[:, 0])
                          & (off[:, 0] >= d[:, 0]))
                    c_u[us[ok]] = off[ok, 0] - d[ok, 0]
        return c_u[self._fac_unique] if self.n_facs else np.zeros(0)

    def exp_tables(self, beta):
        """exp(-beta (T - min T)) per table, cached for the last beta (sum-product)."""
        b, cached = self._exp_cache
        if b != beta:
            if self.n_facs:
                shift = np.repeat(self._unique_min, np.diff(self._unique_offset))
                with np.errstate(over="ignore", under="ignore"):
                    cached = np.exp(-beta * (self.unique_tables - shift))
            else:
                cached = np.zeros(0)
            self._exp_cache = (beta, cached)
        return cached

    def variable_views(self, x):
        """Cut a per-state vector (S,) into one (K_v,) array per variable (views of x)."""
        if self._var_views is None:
            self._var_views = SegmentViews(self.var_state_offset)
        return self._var_views(x)

    def factor_belief_list(self, p, q):
        """Factor beliefs aligned with the graph's factors in insertion order.

        Parameters
        ----------
        p : float64 (S,)
            Variable marginals (a unary factor's belief is a copy of its variable's).
        q : float64 (T,)
            Beliefs of the non-unary factors, flat as ``tables``.

        Returns
        -------
        list of ndarray
            One array of the factor's scope shape per factor (views of fresh arrays).
        """
        if self._belief_layout is None:
            F, E = self.n_facs, self.n_edges
            A = int(np.diff(self.fac_edge_offset).max()) if F else 0
            shapes = np.zeros((F, A), dtype=_I)
            if E:
                shapes[self.edge_fac, np.arange(E) - self.fac_edge_offset[self.edge_fac]] = \
                    self.var_n_states[self.edge_var]
            uv = self.unary_var
            cards = self.var_n_states[uv]
            u_off = np.zeros(len(uv) + 1, dtype=_I)
            np.cumsum(cards, out=u_off[1:])
            u_idx = ranges(self.var_state_offset[uv], cards)
            position = np.concatenate([self.fac_index, self._unary_fac])
            perm = np.empty(len(position), dtype=_I)
            perm[position] = np.arange(len(position))
            self._belief_layout = (SegmentViews(self.fac_table_offset, shapes), u_idx,
                                   SegmentViews(u_off), perm)
        tab_views, u_idx, unary_views, perm = self._belief_layout
        return _reorder(tab_views(q) + unary_views(p[u_idx]), perm)

    # ------------------------------------------------------------------ evidence
    def mask(self, clamped):
        """Evidence mask (S,): 0 where allowed, +inf on the states clamped variables do not take.

        clamped : dict variable index -> state index.
        """
        mask = np.zeros(self.n_states_total)
        for v, k in clamped.items():
            lo, hi = self.var_state_offset[v], self.var_state_offset[v + 1]
            mask[lo:hi] = np.inf
            mask[lo + k] = 0.0
        return mask

    def plan(self, clamped_vars):
        """The :class:`Plan` for this set of clamped variable indices (cached)."""
        key = tuple(sorted(clamped_vars))
        p = self._plans.get(key)
        if p is None:
            if len(self._plans) > 64:
                self._plans.clear()
            p = self._make_plan(np.asarray(key, dtype=_I))
            self._plans[key] = p
        return p

    def _make_plan(self, clamped):
        import scipy.sparse as sp
        from scipy.sparse.csgraph import breadth_first_order, connected_components
        V, F = self.n_vars, self.n_facs
        is_clamped = np.zeros(V, dtype=bool)
        is_clamped[clamped] = True
        live = ~is_clamped[self.edge_var]         # edges of unclamped variables
        live_e = np.flatnonzero(live)
        # bipartite graph: nodes 0..V-1 variables, V..V+F-1 factors, V+F a super-root
        # joined to one node of every component, so that one BFS orders the forest
        n_nodes = V + F
        rows = self.edge_var[live_e]
        cols = V + self.edge_fac[live_e]
        A = sp.coo_matrix((np.ones(len(live_e)), (rows, cols)), shape=(n_nodes, n_nodes)).tocsr()
        A = A + A.T
        n_comp, labels = connected_components(A, directed=False)
        is_forest = len(live_e) == n_nodes - n_comp
        # component roots: prefer an unclamped variable (nodes are sorted, variables first)
        node_ok = np.ones(n_nodes, dtype=bool)
        node_ok[:V] = ~is_clamped
        cand = np.flatnonzero(node_ok)
        _, first = np.unique(labels[cand], return_index=True)
        roots = cand[first]
        R = n_nodes
        B = sp.coo_matrix((np.ones(len(live_e) + len(roots)),
                           (np.concatenate([rows, np.full(len(roots), R)]),
                            np.concatenate([cols, roots]))), shape=(R + 1, R + 1)).tocsr()
        B = B + B.T
        bfs, pred = breadth_first_order(B, R, directed=False, return_predecessors=True)
        bfs = bfs[1:].astype(_I)                   # drop the super-root (scipy gives int32)
        pred = pred.astype(_I)
        order = bfs[bfs < V]
        order = order[~is_clamped[order]].astype(_I)
        if not is_forest:
            return Plan(False, np.full(1, -1, dtype=_I), order)
        parent = pred[bfs]
        child = bfs[parent != R]
        parent = parent[parent != R]
        # edge id of each (child, parent) tree link: look up (variable, factor) pairs
        is_var = child < V
        var_n = np.where(is_var, child, parent)
        fac_n = np.where(is_var, parent, child) - V
        keys = self.edge_var[live_e] * (F + 1) + self.edge_fac[live_e]
        srt = np.argsort(keys)
        pos = np.searchsorted(keys[srt], var_n * (F + 1) + fac_n)
        tree_e = live_e[srt[pos]]
        # upward (reverse BFS): a variable sends v2f to its parent factor, a factor f2v
        up = (2 * tree_e + np.where(is_var, 0, 1))[::-1]
        # downward (BFS): a factor sends f2v to a child variable, a variable v2f to a child factor
        down = 2 * tree_e + np.where(is_var, 1, 0)
        dead_e = np.flatnonzero(~live)
        schedule = np.concatenate([2 * dead_e, up, down, 2 * dead_e + 1]).astype(_I)
        if schedule.size == 0:
            schedule = np.full(1, -1, dtype=_I)
        return Plan(True, schedule, order)

    # ------------------------------------------------------------------ kernel calls
    def run_bp(self, unary, plan, beta, min_sum, max_iter=200, damping=0.0, tol=1e-9,
               n_threads=1, schedule="flooding"):
        """Run the message-passing kernel; returns (v2f, f2v, iterations, delta, exact).

        Parameters
        ----------
        unary : float64 (S,)
            Unary energies plus the evidence mask (a loss-augmented run adds its loss
            here).
        plan : Plan
        beta : float
            Inverse temperature (ignored by min-sum).
        min_sum : bool
            The min-sum semiring (beta = inf) instead of sum-product.
        schedule : {"flooding", "residual"}
            The loopy schedule (on a forest the exact two-pass sweep runs). "residual"
            runs on one thread.
        """
        unary = padded(_fitting(unary, self.n_states_total, "unary"), np.float64)
        n_threads = threads_for(n_threads)
        if not min_sum:
            beta = check_beta(beta)
        v2f = np.zeros(max(self.n_msg, 1))
        f2v = np.zeros(max(self.n_msg, 1))
        if self.n_facs == 0:
            return v2f, f2v, 0, 0.0, True
        exact = plan.is_forest
        exp_tables = self.unique_tables if min_sum else self.exp_tables(beta)
        if schedule == "residual" and not exact:
            E = self.n_edges
            it, delta = _bp.run_residual(
                self.var_state_offset, self.var_edge_offset, self.var_edges,
                self.fac_edge_offset, self.edge_var, self.edge_fac, self.edge_stride,
                self.edge_msg_offset, self.fac_table, self.unique_tables, exp_tables,
                self.table_min, self.fac_potts, unary, v2f, f2v, np.empty(self.n_msg),
                np.zeros(E), np.empty(E, dtype=_I), np.empty(E, dtype=_I), float(beta),
                bool(min_sum), int(max_iter), float(damping), float(tol), self.q_size,
                np.empty(self.q_size + 3 * self.max_card + 1),
                np.empty(2 * self.max_arity + 1, dtype=_I))
            return v2f, f2v, it, delta, exact
        if schedule not in ("flooding", "residual"):
            raise ValueError(f"unknown schedule {schedule!r} for run_bp: 'flooding' or 'residual'")
        sched = np.full(1, -1, dtype=_I)
        if exact:
            sched = _indices(plan.schedule, 2 * self.n_edges, "plan.schedule",
                             skip_negative=True)
            if sched.size == 0 or (sched[0] >= 0 and sched.min() < 0):
                raise ValueError("plan.schedule must be steps 0..2E-1 (or [-1]: flooding)")
        track_inf = self.has_inf or (unary is not self.unary and bool(np.isinf(unary).any()))
        it, delta = _bp.run(
            self.var_state_offset, self.var_edge_offset, padded(self.var_edges, _I),
            self.fac_edge_offset, self.edge_var, self.edge_stride, self.edge_msg_offset,
            self.fac_table, self.unique_tables, exp_tables, self.table_min, self.fac_potts,
            unary, sched, v2f, f2v,
            float(beta), bool(min_sum), int(max_iter), float(damping), float(tol),
            int(n_threads), self.q_size, self.max_card, track_inf, np.zeros(self.n_facs),
            np.empty(2 * self.n_states_total + 1))
        return v2f, f2v, it, delta, exact

    def run_trws(self, unary, max_iter=200, tol=1e-9):
        """TRW-S (min-sum) on a loopy pairwise graph; the caller checks every factor is pairwise.

        Returns
        -------
        v2f, f2v : float64 (M,)
            Messages (v2f set from the final f2v, as after flooding).
        iterations : int
            Forward + backward passes run.
        delta : float
            The largest message change of the last pass.
        states : int64 (V,)
            The lowest-energy assignment decoded over the passes.
        bound : float
            Lower bound on min E (over assignments allowed by ``unary``).
        trace_energy : float64 (iterations + 1,)
            Energy decoded in each forward pass and after the last backward pass (the
            first ``TRWS_TRACE_PASSES`` passes only, and then no final entry, when the run
            is longer).
        trace_bound : float64 (iterations,)
            The best bound after each pass (the first ``TRWS_TRACE_PASSES`` only).
        """
        V = self.n_vars
        unary = _fitting(unary, self.n_states_total, "unary")
        v2f = np.zeros(max(self.n_msg, 1))
        f2v = np.zeros(max(self.n_msg, 1))
        states = np.zeros(max(V, 1), dtype=_I)
        # the traces are sized by a cap, not by max_iter: max_iter=2**31 ("until it
        # converges") must not allocate 32 GiB
        n_trace = max(0, min(int(max_iter), TRWS_TRACE_PASSES))
        trace_e = np.full(n_trace + 1, np.inf)
        trace_b = np.full(n_trace, -np.inf)
        it, delta, energy, bound = _bp.run_trws(
            self.var_state_offset, self.var_edge_offset, padded(self.var_edges, _I),
            self.fac_edge_offset, self.edge_var, self.edge_fac, self.edge_stride,
            self.edge_msg_offset, self.fac_table, self.unique_tables, self.table_min,
            self.fac_potts, padded(unary, np.float64), v2f, f2v, int(max_iter), float(tol),
            self.max_card, states, trace_e, trace_b, np.empty(3 * V + 4 * self.max_card + 4),
            np.zeros(max(V, 1), dtype=_I))
        if it > n_trace:
            return v2f, f2v, it, delta, states[:V], bound, trace_e[:n_trace], trace_b
        return v2f, f2v, it, delta, states[:V], bound, trace_e[:it + 1], trace_b[:it]

    def beliefs(self, unary, v2f, f2v, factors=True):
        """Energy-space beliefs: (var (S,), fac (T,)); lower is more probable.

        With ``factors=False`` only the variable beliefs are computed (fac is
        then uninitialized).
        """
        size = int(self.fac_table_offset[-1])
        unary = _fitting(unary, self.n_states_total, "unary")
        M = max(self.n_msg, 1)
        v2f, f2v = _fitting(v2f, M, "v2f"), _fitting(f2v, M, "f2v")
        var_out = np.empty(max(self.n_states_total, 1))
        fac_out = np.empty(max(size, 1))
        if self.n_vars:
            _bp.beliefs(self.var_state_offset, self.var_edge_offset, padded(self.var_edges, _I),
                        padded(self.fac_edge_offset, _I), padded(self.edge_var, _I),
                        padded(self.edge_stride, _I), padded(self.edge_msg_offset, _I),
                        padded(self.fac_table_offset, _I), padded(self.fac_table, _I),
                        padded(self.unique_tables, np.float64), padded(unary, np.float64),
                        v2f, f2v, var_out, fac_out, bool(factors))
        return var_out[:self.n_states_total], fac_out[:size]

    def factor_gibbs(self, v2f, beta, n_threads=1):
        """Factor beliefs at inverse temperature beta, fused with their Bethe terms.

        Returns
        -------
        q : float64 (T,)
            Each non-unary factor's belief (probabilities), flat as ``tables``.
        mean : float64 (F,)
            <T_f> under the belief.
        entropy : float64 (F,)
            -sum q log q.
        bmin : float64 (F,)
            Minimum energy-space belief; +inf when every entry of f is forbidden.
        """
        F = self.n_facs
        size = int(self.fac_table_offset[-1])
        v2f = _fitting(v2f, max(self.n_msg, 1), "v2f")
        beta, n_threads = check_beta(beta), threads_for(n_threads)
        q = np.empty(max(size, 1))
        mean, ent, bmin = np.empty(max(F, 1)), np.empty(max(F, 1)), np.empty(max(F, 1))
        if F:
            _bp.factor_gibbs(self.var_state_offset, self.fac_edge_offset, self.edge_var,
                             self.edge_stride, self.edge_msg_offset, self.fac_table_offset,
                             self.fac_table, self.unique_tables, v2f, float(beta), q, mean, ent,
                             bmin, int(n_threads))
        return q[:size], mean[:F], ent[:F], bmin[:F]

    def decode(self, unary, plan, v2f, f2v, states):
        """Consistent MAP decoding of the unclamped variables into ``states`` (V,) in place
        (``v2f`` and ``f2v`` are overwritten)."""
        unary = _fitting(unary, self.n_states_total, "unary")
        order = _indices(plan.order, self.n_vars, "plan.order", skip_negative=True)
        M = max(self.n_msg, 1)
        v2f, f2v = _buffer(v2f, M, "v2f"), _buffer(f2v, M, "f2v")
        states = _buffer(states, self.n_vars, "states", _I)
        _bp.decode(self.var_state_offset, self.var_edge_offset, padded(self.var_edges, _I),
                   padded(self.fac_edge_offset, _I), padded(self.edge_var, _I),
                   padded(self.edge_stride, _I), padded(self.edge_msg_offset, _I),
                   padded(self.fac_table, _I), padded(self.unique_tables, np.float64),
                   padded(self.table_min, np.float64), padded(self.fac_potts, np.float64),
                   padded(unary, np.float64),
                   order if order.size else np.full(1, -1, dtype=_I),
                   v2f, f2v, self.max_card, states)

    def energies_of(self, states):
        """Energy of full assignments: states int64 (V,) -> float (sum of all factors)."""
        e = float(self.unary[self.var_state_offset[:-1] + states].sum()) if self.n_vars else 0.0
        if self.n_facs:
            e += float(self.unique_tables[self.factor_entries(states)].sum())
        return e

    def factor_entries(self, states):
        """int64 (F,): where each non-unary factor's entry at the assignment ``states`` (V,)
        lies in ``unique_tables`` (its energy is ``unique_tables[entries]``)."""
        if not self.n_facs:
            return np.zeros(0, dtype=_I)
        return self.fac_table + np.add.reduceat(self.edge_stride * states[self.edge_var],
                                                self.fac_edge_offset[:-1])

    def variable_gibbs(self, var_b, beta, n_threads=1, energy=None):
        """Variable beliefs at inverse temperature beta, fused with their Bethe terms.

        Parameters
        ----------
        var_b : float64 (S,)
            Energy-space variable beliefs (:meth:`beliefs`).
        energy : float64 (S,), optional
            The unary energies to average (default ``unary``; a run with an evidence mask
            passes the energies without it).

        Returns
        -------
        p : float64 (S,)
            Each variable's marginal (probabilities).
        mean : float64 (V,)
            <U_v> under it (states of probability 0 are skipped, so +inf there is fine).
        entropy : float64 (V,)
            -sum p log p.
        """
        V, S = self.n_vars, self.n_states_total
        var_b = _fitting(var_b, S, "var_b")
        energy = _fitting(self.unary if energy is None else energy, S, "energy")
        beta, n_threads = check_beta(beta), threads_for(n_threads)
        p = np.empty(max(S, 1))
        mean, ent = np.empty(max(V, 1)), np.empty(max(V, 1))
        if V:
            _bp.gibbs(self.var_state_offset, var_b, energy, float(beta), p, mean, ent,
                      int(n_threads))
        return p[:self.n_states_total], mean[:V], ent[:V]

    def take_tables(self, batch, states, facs):
        """Read the energies from ``batch``, of which this graph is a selection
        (:func:`select`): state s has ``batch``'s unary energy of state ``states[s]``, and
        factor f reads the distinct table of ``batch``'s factor ``facs[f]`` (shared, not
        copied).

        Parameters
        ----------
        batch : CompiledGraph
        states : int64 (S,)
        facs : int64 (F,)
        """
        self.unary = batch.unary[states]
        self.unique_tables = batch.unique_tables
        self._unique_offset = batch._unique_offset
        self._unique_min = batch._unique_min
        self._fac_unique = batch._fac_unique[facs]
        self.fac_table = batch.fac_table[facs]
        self.table_min = batch.table_min[facs]
        self.fac_potts = batch.fac_potts[facs]
        self.has_inf = bool(np.isinf(self.unary).any()) or batch.has_inf
        self._tables_flat, self._exp_cache = None, (None, None)
        self.tables_version = None

    def set_tables(self, unary, tables, table_of=None, table_offset=None):
        """Replace every energy, keeping the structure (learners push ``Phi @ w`` in here).

        Parameters
        ----------
        unary : float64 (S,)
            The unary energy of every state.
        tables : float64
            Without ``table_of``: (T,) every non-unary factor's table, flat as
            :attr:`tables`. With it: the distinct tables back to back, (table_offset[-1],).
        table_of : int64 (F,), optional
            Factor f reads distinct table ``table_of[f]`` (factors whose tables are equal by
            construction, e.g. tied weights, share one, which the kernels read once).
        table_offset : int64 (U + 1,), optional
            Distinct table u is ``tables[table_offset[u]:table_offset[u + 1]]``.

        Raises
        ------
        ValueError
            Shapes that do not fit the structure, NaN or -inf energies (+inf, forbidden, is
            fine). The graph is left unchanged then.
        """
        S, F = self.n_states_total, self.n_facs
        unary = np.ascontiguousarray(unary, dtype=np.float64)
        tables = np.ascontiguousarray(tables, dtype=np.float64)
        if unary.shape != (S,):
            raise ValueError(f"set_tables: unary must have shape ({S},), got {unary.shape}")
        sizes = np.diff(self.fac_table_offset)
        if table_of is None:
            if tables.shape != (int(self.fac_table_offset[-1]),):
                raise ValueError(f"set_tables: tables must have shape "
                                 f"({int(self.fac_table_offset[-1])},), got {tables.shape}")
            table_of = np.arange(F, dtype=_I)
            table_offset = self.fac_table_offset
        else:
            table_of = np.ascontiguousarray(table_of, dtype=_I)
            table_offset = np.ascontiguousarray(table_offset, dtype=_I)
            n_u = len(table_offset) - 1
            if table_of.shape != (F,) or n_u < 0 or (F and not 0 <= table_of.min() <= table_of.max() < n_u):
                raise ValueError(f"set_tables: table_of must be ({F},) ids of the "
                                 f"{max(n_u, 0)} distinct tables")
            if (table_offset[0] != 0 or (np.diff(table_offset) < 1).any()
                    or tables.shape != (int(table_offset[-1]),)):
                raise ValueError("set_tables: table_offset must start at 0, increase, and end "
                                 "at len(tables)")
            if F and (np.diff(table_offset)[table_of] != sizes).any():
                f = int(np.flatnonzero(np.diff(table_offset)[table_of] != sizes)[0])
                raise ValueError(f"set_tables: compiled factor {f} has a table of "
                                 f"{int(sizes[f])} entries, its distinct table "
                                 f"{int(table_of[f])} has {int(np.diff(table_offset)[table_of[f]])}")
        for name, x in (("unary", unary), ("tables", tables)):
            if x.size and not x.min() > -np.inf:
                raise ValueError(f"set_tables: {name} contains NaN or -inf (only +inf, "
                                 f"forbidden, is allowed)")
        self.unary = unary
        self.unique_tables = tables
        self._unique_offset = table_offset
        self._fac_unique = table_of
        self.fac_table = table_offset[:-1][table_of] if F else np.zeros(0, dtype=_I)
        if F:
            finite = np.where(np.isfinite(tables), tables, np.inf)
            tmin = np.minimum.reduceat(finite, table_offset[:-1])
            self._unique_min = np.where(np.isfinite(tmin), tmin, 0.0)
            self.table_min = self._unique_min[table_of]
            self.fac_potts = self._potts()
        else:
            self._unique_min = np.zeros(0)
            self.table_min = np.zeros(0)
            self.fac_potts = np.zeros(0)
        self.has_inf = bool(np.isinf(unary).any() or np.isinf(tables).any())
        self._exp_cache = (None, None)
        self._tables_flat = None
        self.tables_version = None       # a graph's cached compile re-reads its own tables


def concatenate(parts):
    """Several compiled graphs as one, each a disconnected part: one kernel call runs them all.

    The batch is the concatenation of the parts' flat arrays, every index shifted by the sizes
    of the parts before it (DESIGN.md, "Batching many small graphs is concatenation"), so
    :meth:`CompiledGraph.run_bp` (any schedule), :meth:`CompiledGraph.run_trws`,
    :meth:`CompiledGraph.beliefs`, :meth:`CompiledGraph.factor_gibbs` and
    :meth:`CompiledGraph.decode` run on the whole batch in one call, with the unary
    energies (S,) of the batch as their argument (add a loss to them for loss-augmented
    min-sum). A flooding run stops when every part has converged; TRW-S visits the parts one
    after the other (its chains never cross parts), so each part gets exactly the messages a
    run on it alone would give, and its bound is the sum of the parts' bounds.

    Parameters
    ----------
    parts : sequence of CompiledGraph

    Returns
    -------
    batch : CompiledGraph
        Not tied to a FactorGraph (no ``refresh_tables``); tables are the parts' as compiled.
    offsets : dict of int64 (B + 1,) arrays
        Where part b lies in the batch: ``"var"`` variables, ``"state"`` per-state vectors
        (unary, beliefs), ``"fac"`` compiled factors, ``"edge"`` edges, ``"msg"`` message
        slots, ``"table"`` factor belief entries (``fac_table_offset``), ``"factor"`` the
        parts' original factor numbers (unary ones included). Per-part sums of a per-variable
        or per-factor quantity are ``np.add.reduceat(x, offsets[...][:-1])`` (mind empty
        parts).
    """
    parts = list(parts)
    if not parts or not all(isinstance(p, CompiledGraph) for p in parts):
        raise ValueError("concatenate needs a non-empty sequence of CompiledGraph")

    o = {"var": offsets_of([p.n_vars for p in parts]),
         "state": offsets_of([p.n_states_total for p in parts]),
         "fac": offsets_of([p.n_facs for p in parts]),
         "edge": offsets_of([p.n_edges for p in parts]),
         "msg": offsets_of([p.n_msg for p in parts]),
         "table": offsets_of([int(p.fac_table_offset[-1]) for p in parts]),
         "factor": offsets_of([len(p.unary_factors) + p.n_facs for p in parts])}
    u_off = offsets_of([p.unique_tables.size for p in parts])
    u_cnt = offsets_of([len(p._unique_offset) - 1 for p in parts])

    def cat(name, shift=None, tail=False):
        """Concatenate field `name` (for an (n+1,) offsets array: its tails), shifted per part."""
        pieces = []
        for b, p in enumerate(parts):
            x = getattr(p, name)
            x = x[1:] if tail else x
            pieces.append(x + shift[b] if shift is not None else x)
        x = np.concatenate(pieces) if pieces else np.zeros(0)
        return np.concatenate([[0], x]).astype(x.dtype) if tail else x

    g = object.__new__(CompiledGraph)
    g.structure_version = g.tables_version = None
    g.n_vars, g.n_facs = int(o["var"][-1]), int(o["fac"][-1])
    g.n_edges, g.n_msg = int(o["edge"][-1]), int(o["msg"][-1])
    g.n_states_total = int(o["state"][-1])
    g.var_n_states = cat("var_n_states")
    g.var_state_offset = cat("var_state_offset", o["state"], tail=True)
    g.max_card = max(p.max_card for p in parts)
    g.latent = cat("latent")
    g._unary_fac = cat("_unary_fac", o["factor"])
    g.unary_factors = g._unary_fac.tolist()
    g.unary_var = cat("unary_var", o["var"])
    g.fac_index = cat("fac_index", o["factor"])
    g.fac_edge_offset = cat("fac_edge_offset", o["edge"], tail=True)
    g.edge_var = cat("edge_var", o["var"])
    g.edge_fac = cat("edge_fac", o["fac"])
    g.edge_stride = cat("edge_stride")
    g.edge_msg_offset = cat("edge_msg_offset", o["msg"], tail=True)
    g.var_edges = cat("var_edges", o["edge"])
    g.var_degree = cat("var_degree")
    g.var_edge_offset = cat("var_edge_offset", o["edge"], tail=True)
    g.fac_table_offset = cat("fac_table_offset", o["table"], tail=True)
    g.q_size = max(p.q_size for p in parts)
    g.max_arity = max(p.max_arity for p in parts)
    g.unary = cat("unary")
    g.unique_tables = cat("unique_tables")
    g.fac_table = cat("fac_table", u_off)
    g._unique_offset = cat("_unique_offset", u_off, tail=True)
    g._unique_min = cat("_unique_min")
    g._fac_unique = cat("_fac_unique", u_cnt)
    g.table_min = cat("table_min")
    g.fac_potts = cat("fac_potts")
    g.has_inf = any(p.has_inf for p in parts)
    g._unary_blocks = g._table_blocks = None
    g._plans, g._belief_layout, g._var_views = {}, None, None
    g._factor_place, g._tables_flat, g._exp_cache = None, None, (None, None)
    return g, o


def select(batch, offsets, parts):
    """Some parts of a batch, as one batch: ``concatenate([cg[p] for p in parts])`` without the
    parts' own graphs, in numpy passes (no Python loop over parts).

    Parameters
    ----------
    batch : CompiledGraph
        A batch made by :func:`concatenate` (or by ``select``).
    offsets : dict
        Its offsets (as :func:`concatenate` returns them).
    parts : int64 (B,)
        The parts to take, in the order wanted; a part may appear several times.

    Returns
    -------
    sub : CompiledGraph
        The parts' structure and energies. Its factors keep reading the batch's distinct
        tables (``unique_tables`` is shared, not copied), so ``sub.set_tables`` with
        ``table_of`` set gives it tables of its own.
    sub_offsets : dict
        Where part j of ``sub`` lies in it, as :func:`concatenate` gives them.
    """
    parts = np.asarray(parts, dtype=_I)
    if parts.ndim != 1 or (parts.size and not 0 <= parts.min() <= parts.max() < len(offsets["var"]) - 1):
        raise ValueError(f"select: parts must be a 1-D array of part ids in "
                         f"0..{len(offsets['var']) - 2}")
    n_unary = offsets["factor"] - offsets["fac"]        # cumulative count of unary factors
    keys = ("var", "state", "fac", "edge", "msg", "table", "factor")
    counts = {k: np.diff(offsets[k])[parts] for k in keys}
    counts["unary"] = np.diff(n_unary)[parts]
    o = {}
    for k in keys:
        o[k] = np.zeros(len(parts) + 1, dtype=_I)
        np.cumsum(counts[k], out=o[k][1:])

    def take(k):
        start = (n_unary if k == "unary" else offsets[k])[parts]
        return ranges(start, counts[k])

    def shift(k, per):
        """Per item counted by `per`: how far part j's `k` ids move."""
        return np.repeat(o[k][:-1] - offsets[k][parts], counts[per])

    v, f, e, u = take("var"), take("fac"), take("edge"), take("unary")
    g = object.__new__(CompiledGraph)
    g.structure_version = g.tables_version = None
    g.n_vars, g.n_facs = int(o["var"][-1]), int(o["fac"][-1])
    g.n_edges, g.n_msg = int(o["edge"][-1]), int(o["msg"][-1])
    g.n_states_total = int(o["state"][-1])
    g.var_n_states = batch.var_n_states[v]
    g.var_state_offset = offsets_of(g.var_n_states)
    g.max_card = batch.max_card
    g.latent = batch.latent[v]
    g._unary_fac = batch._unary_fac[u] + shift("factor", "unary")
    g.unary_factors = g._unary_fac.tolist()
    g.unary_var = batch.unary_var[u] + shift("var", "unary")
    g.fac_index = batch.fac_index[f] + shift("factor", "fac")
    g.fac_edge_offset = offsets_of(np.diff(batch.fac_edge_offset)[f])
    g.edge_var = batch.edge_var[e] + shift("var", "edge")
    g.edge_fac = batch.edge_fac[e] + shift("fac", "edge")
    g.edge_stride = batch.edge_stride[e]
    g.edge_msg_offset = offsets_of(np.diff(batch.edge_msg_offset)[e])
    # a part's variables list its own edges: var_edges of part j lie in its edge range
    g.var_edges = batch.var_edges[e] + shift("edge", "edge")
    g.var_degree = batch.var_degree[v]
    g.var_edge_offset = offsets_of(g.var_degree)
    g.fac_table_offset = offsets_of(np.diff(batch.fac_table_offset)[f])
    g.q_size = batch.q_size
    g.max_arity = batch.max_arity
    g._unary_blocks = g._table_blocks = None
    g._plans, g._belief_layout, g._var_views = {}, None, None
    g._factor_place = None
    g.take_tables(batch, take("state"), f)
    return g, o
