"""Factor graphs whose energy tables are linear in shared weights, and their objective.

:class:`ParametricGraph` -- any :class:`factorebm.FactorGraph` whose concatenated, flattened
factor tables are ``tables = Phi @ w + offset`` with ``Phi`` a scipy.sparse matrix: weights
can be tied across factors and across graphs (templates, :func:`tied_phi`). The gradient is
``dL/dw = Phi^T dL/dtables`` with ``dL/dtables = dL/dE+ * b+ + dL/dE- * b-``, where ``b+`` and
``b-`` are the belief tables of E+ and E-: 0/1 indicators of the configuration for an energy
(min-sum, latent variables minimized), the factor beliefs for a free energy (sum-product;
clamped beliefs for the correct answer with latent variables summed out). See
:class:`GraphObjective`.
"""
import numpy as np

from ..checks import threads_for
from ..objective import BatchObjective, loss_setup, penalized_mean
from .graph_batch import GraphBatch, check_options

__all__ = ["ParametricGraph", "tied_phi", "GraphObjective", "graph_objective",
           "check_samples", "SampleGroups"]


def tied_phi(table_sizes, template_of_factor, n_templates=None):
    """The Phi of factors that share templates: factor f's table is template ``t_f``'s weights.

    Parameters
    ----------
    table_sizes : sequence of int
        Flattened table size of each factor, in the graph's factor order.
    template_of_factor : sequence of int
        Template id of each factor; factors with the same id must have the same table size.
    n_templates : int or None
        Number of templates (default: max id + 1).

    Returns
    -------
    Phi : (sum(table_sizes), n_weights) scipy.sparse.csr_matrix of 0/1
        The weights are the templates' tables concatenated in template-id order.
    template_offset : (n_templates + 1,) int64
        Template t owns weights ``template_offset[t]:template_offset[t+1]``.
    """
    sizes = np.asarray(table_sizes, dtype=np.int64)
    tmpl = np.asarray(template_of_factor, dtype=np.int64)
    if sizes.shape != tmpl.shape:
        raise ValueError("table_sizes and template_of_factor must have one entry per factor")
    if tmpl.size and tmpl.min() < 0:
        raise ValueError("template ids must be >= 0")
    n_templates = int(tmpl.max()) + 1 if n_templates is None and tmpl.size else (
        n_templates or 0)
    tsize = np.full(n_templates, -1, dtype=np.int64)
    for f, (s, t) in enumerate(zip(sizes, tmpl)):
        if t >= n_templates:
            raise ValueError(f"factor {f}: template id {t} >= n_templates {n_templates}")
        if tsize[t] not in (-1, s):
            raise ValueError(f"factor {f}: table size {s} differs from the size {tsize[t]} of "
                             f"other factors using template {t}")
        tsize[t] = s
    tsize[tsize < 0] = 0
    toff = np.concatenate([[0], np.cumsum(tsize)])
    cols = np.concatenate([toff[t] + np.arange(s) for s, t in zip(sizes, tmpl)]) \
        if sizes.size else np.zeros(0, dtype=np.int64)
    rows = np.arange(cols.size)
    import scipy.sparse as sp
    Phi = sp.csr_matrix((np.ones(cols.size), (rows, cols)), shape=(cols.size, int(toff[-1])))
    return Phi, toff


class ParametricGraph:
    """A factor graph whose factor tables are a linear function of shared weights.

    ``tables = Phi @ w + offset`` where ``tables`` is the concatenation of every factor's
    energy table flattened row-major over its scope, in the graph's factor insertion order.

    Parameters
    ----------
    graph : FactorGraph
        Its structure (variables, factor scopes) is used; its tables are overwritten by
        :meth:`set_weights` (through ``graph.set_factor_energies``).
    phi : scipy.sparse matrix or array, shape (total_table_size, n_weights)
    offset : (total_table_size,) float64 or None
        Constant energies added to the tables (e.g. +inf for forbidden configurations).
    """

    def __init__(self, graph, phi, offset=None):
        self.graph = graph
        # table sizes in insertion order from the compiled graph: numpy passes, no Python
        # call per factor (a 300 x 300 grid has 270,000 factors)
        cg = graph.compile()
        self.structure_version = cg.structure_version   # Phi's rows fit this structure only
        sizes = np.zeros(graph.n_factors, dtype=np.int64)
        sizes[np.asarray(cg.unary_factors, dtype=np.int64)] = cg.var_n_states[cg.unary_var]
        sizes[cg.fac_index] = np.diff(cg.fac_table_offset)
        self.table_offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.table_offset[-1])
        import scipy.sparse as sp
        phi = sp.csr_matrix(phi, dtype=np.float64)
        if phi.shape[0] != total:
            raise ValueError(f"phi has {phi.shape[0]} rows but the graph's factor tables have "
                             f"{total} entries in all")
        if phi.nnz and not np.all(np.isfinite(phi.data)):
            raise ValueError("phi contains NaN or infinite entries (use offset for +inf)")
        self.phi = phi
        self.n_weights = phi.shape[1]
        if offset is None:
            self.offset = None
        else:
            offset = np.asarray(offset, dtype=np.float64).ravel()
            if offset.shape != (total,):
                raise ValueError(f"offset must have shape ({total},), got {offset.shape}")
            if np.any(np.isnan(offset)) or np.any(offset == -np.inf):
                raise ValueError("offset contains NaN or -inf")
            self.offset = offset
        self._phi_T = self._scope_vars = self._shapes = None

    @property
    def phi_T(self):
        """``Phi`` transposed, as a CSR matrix (made on first use)."""
        if self._phi_T is None:
            self._phi_T = self.phi.T.tocsr()
        return self._phi_T

    @property
    def table_shapes(self):
        """list of tuple: each factor's table shape, in insertion order (made on first use)."""
        if self._shapes is None:
            g = self.graph
            self._scope_vars = [g.factor_scope(i) for i in range(g.n_factors)]
            self._shapes = [tuple(g.cardinality(v) for v in scope) for scope in self._scope_vars]
        return self._shapes

    def tables(self, w):
        """Flat energy tables ``Phi @ w + offset``, shape (total_table_size,)."""
        t = self.phi @ np.asarray(w, dtype=np.float64)
        if self.offset is not None:
            t = t + self.offset
        return t

    def set_weights(self, w):
        """Write ``Phi @ w + offset`` into the graph's factors; returns those flat tables."""
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.n_weights,):
            raise ValueError(f"weights must have shape ({self.n_weights},), got {w.shape}")
        t = self.tables(w)
        self.graph.set_all_factor_energies(t)
        return t

    def indicator(self, assignment):
        """0/1 flat table vector of a full assignment (every variable in every scope)."""
        out = np.zeros(self.table_offset[-1])
        shapes = self.table_shapes
        for i, scope in enumerate(self._scope_vars):
            idx = tuple(self._label_index(v, assignment[v]) for v in scope)
            out[self.table_offset[i] + np.ravel_multi_index(idx, shapes[i])] = 1.0
        return out

    def _label_index(self, var, label):
        return self.graph.state_of(var, label)

    def beliefs_vector(self, factor_beliefs):
        """Concatenate per-factor belief tables (insertion order) into a flat vector."""
        return np.concatenate([np.asarray(b, dtype=np.float64).ravel()
                               for b in factor_beliefs]) if factor_beliefs else np.zeros(0)


def check_samples(samples):
    """Training samples as a list of (ParametricGraph, target dict) pairs sharing one weight
    vector; returns ``(samples, n_weights)``."""
    samples = list(samples)
    if not samples:
        raise ValueError("a graph objective needs at least one (ParametricGraph, target) "
                         "sample")
    for i, sample in enumerate(samples):
        if not (isinstance(sample, tuple) and len(sample) == 2
                and isinstance(sample[0], ParametricGraph) and isinstance(sample[1], dict)):
            raise ValueError(f"sample {i} must be a (ParametricGraph, target dict) pair")
    n_weights = samples[0][0].n_weights
    for i, (pg, _) in enumerate(samples):
        if pg.graph.compile().structure_version != pg.structure_version:
            raise ValueError(f"sample {i}: its graph has changed (variables or factors added) "
                             f"since its ParametricGraph was made, so Phi no longer fits its "
                             f"tables; make the ParametricGraph again")
        if pg.n_weights != n_weights:
            raise ValueError(f"sample {i}: its ParametricGraph has {pg.n_weights} weights, "
                             f"sample 0's has {n_weights}")
    return samples, n_weights


class GraphObjective(BatchObjective):
    """The batch objective of parametric factor graphs (units: the (graph, target) samples).

    Every sample's graph gets its tables ``Phi @ w + offset``; E+ is the target's energy
    (latent variables minimized) or clamped free energy (NLL), E- the most offending answer
    (or the loss-augmented one), the minimum (perceptron) or the free energy, by belief
    propagation: exact on forests, min-sum / Bethe approximations on loopy graphs (see
    :mod:`factorebm.energies.graph_batch` for the precise definitions). The graphs of a batch
    are run together: one kernel call per kind of run over all of them
    (:class:`~factorebm.energies.graph_batch.GraphBatch`), with everything that depends only
    on the graphs (compiling, schedules, the split of Phi, targets) done once here. Samples
    may share one ParametricGraph (many observations of one model): its free run is then
    shared, and a target without latent variables needs no inference of its own. The
    graphs themselves are only read (their tables are not set).

    Parameters
    ----------
    samples : sequence of (ParametricGraph, dict)
        Each target gives every visible variable a label (index or name); every graph has
        the same ``n_weights``.
    loss, beta, **loss_params : as in :func:`graph_objective`
    inference_options : dict or None
        ``schedule`` ("flooding", "residual", or "trws" for the min-sum losses on pairwise
        graphs), ``damping``, ``max_iter``, ``tol`` (as for :func:`factorebm.min_sum`; loopy
        graphs only, forests always get the exact two-pass sweep), and for the margin losses
        ``e_minus`` ("most_offending" or "loss_augmented") and ``hamming``
        (:func:`factorebm.energies.graph_batch.check_options`).
    first_sample : int
        The number errors raised while evaluating give sample 0 (a shard of a larger set of
        samples names them by their numbers in the whole set).
    """

    def __init__(self, samples, loss="nll", beta=1.0, inference_options=None, *,
                 first_sample=0, **loss_params):
        self.spec, self.params = loss_setup(loss, beta, loss_params)
        self.beta = float(beta)
        self.samples, self.n_params = check_samples(samples)
        self.n_units = len(self.samples)
        self.inference_options = dict(inference_options or {})   # as given (for shards)
        self.options = check_options(self.spec, self.params, inference_options)
        self.groups = SampleGroups(self.samples)
        self.graphs = GraphBatch(self.samples, self.groups, self.options, first_sample)

    def check_params(self, w):
        """``w`` as a contiguous (n_params,) float64 array of finite weights: NaN or inf would
        reach belief propagation as energies and fail there, in words about the graphs."""
        w = super().check_params(w)
        if not np.isfinite(w).all():
            raise ValueError("the parameter vector w contains NaN or infinite weights")
        return w

    def unit_value_and_grad(self, w, units, n_threads=None):
        w = self.check_params(w)
        total, grad, lowest, _, _ = self.graphs.terms(w, self._units(units), self.spec,
                                                      self.params, self.beta, n_threads)
        self.spec.check_energies(lowest)
        return total, grad

    def minimizers(self, w, units=None, n_threads=None):
        """The minimum-energy answer of every sample's graph at the weights w (min-sum with the
        objective's schedule, all graphs in one run; exact on forests).

        Returns
        -------
        list of (V,) int64
            One array of state indices per sample, in its graph's variable order (latent
            variables included).
        """
        w = self.check_params(w)
        return self.graphs.minimizers(w, self._units(units), n_threads)

    def _units(self, units):
        if units is None:
            return np.arange(self.n_units)
        arr = np.asarray(units)
        if (arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu")
                or (arr.size and not 0 <= arr.min() <= arr.max() < self.n_units)):
            raise ValueError(f"units must be a 1-D array of sample numbers in "
                             f"0..{self.n_units - 1}")
        return arr.astype(np.int64, copy=False)

    def energies(self, w, units=None, n_threads=None):
        """Every sample's E+ and E- at the weights w, as the loss sees them.

        Parameters
        ----------
        w : (n_params,) float64
        units : int64 array or None
            The samples (default: all).

        Returns
        -------
        e_plus, e_minus : (n,) float64
            ``e_minus`` is None for the energy loss (it uses none).
        """
        w = self.check_params(w)
        _, _, _, e_plus, e_minus = self.graphs.terms(w, self._units(units), self.spec,
                                                     self.params, self.beta, n_threads)
        return e_plus, e_minus


class SampleGroups:
    """Samples grouped by their ParametricGraph object, and each target's table entries.

    Parameters
    ----------
    samples : list of (ParametricGraph, dict)
    """

    def __init__(self, samples):
        self.samples = samples
        ids = {}
        self.graphs = []
        self.graph_of = np.empty(len(samples), dtype=np.int64)
        for i, (pg, _) in enumerate(samples):
            j = ids.setdefault(id(pg), len(self.graphs))
            if j == len(self.graphs):
                self.graphs.append(pg)
            self.graph_of[i] = j
        self._entries = {}

    def split(self, units):
        """``[(pg, [sample ids]), ...]`` for the units, graph by graph (first use order)."""
        units = np.asarray(units, dtype=np.int64)
        g = self.graph_of[units]
        return [(self.graphs[j], units[g == j].tolist()) for j in np.unique(g).tolist()]

    def target_entries(self, i):
        """(n_factors,) int64: the flat table entry each factor takes at sample i's target,
        or None when its graph has latent variables (the target is not a full assignment).
        Raises ValueError naming a visible variable the target leaves out."""
        if i not in self._entries:
            pg, target = self.samples[i]
            g = pg.graph
            latent = {v for v in g.variables if g.is_latent(v)}
            missing = [v for v in g.variables if v not in latent and v not in target]
            if missing:
                raise ValueError(f"sample {i}: the target does not give a label to visible "
                                 f"variable {missing[0]!r}")
            self._entries[i] = (None if latent else
                                np.flatnonzero(pg.indicator({v: target[v]
                                                             for v in g.variables})))
        return self._entries[i]


def graph_objective(w, samples, loss="nll", *, l2=0.0, beta=1.0, inference_options=None,
                    **loss_params):
    """Average loss over (ParametricGraph, target) samples plus ``0.5 * l2 * ||w||^2``.

    For each sample the graph's tables are set to ``Phi @ w + offset``; E+ is the target's
    energy with latent variables minimized (``fe.min_sum`` with the visible target as evidence),
    or its clamped free energy (latent variables summed out) for NLL; E- is
    ``fe.most_offending``, the ``fe.min_sum`` minimum (perceptron) or ``fe.free_energy`` (NLL).
    ``dL/dtables = dL/dE+ * b+ + dL/dE- * b-`` (indicator tables of the minimizing
    configurations, or factor beliefs for free energies), ``dL/dw = Phi^T dL/dtables``.
    Exact on forests (trees, chains); on loopy graphs min-sum / the Bethe free energy make it
    an approximation.

    Parameters
    ----------
    w : (n_weights,) float64
    samples : sequence of (ParametricGraph, dict)
        Each target dict gives every visible variable a label (index or name); every graph has
        the same ``n_weights``.
    loss, l2, beta, **loss_params
        As in :func:`factorebm.learning.chain_objective` (including the RuntimeWarning for a
        loss that assumes non-negative energies).
    inference_options : dict or None
        As for :class:`GraphObjective` (schedule, damping, max_iter, tol; e_minus, hamming).

    Returns
    -------
    value : float
    grad : (n_weights,) float64
    """
    obj = GraphObjective(samples, loss, beta, inference_options, **loss_params)
    if np.shape(w) != (obj.n_params,):
        raise ValueError(f"sample 0: its ParametricGraph has {obj.n_params} weights, w has "
                         f"{np.size(w)}")
    w = obj.check_params(w)        # NaN or inf, named
    return penalized_mean(obj, w, l2, threads_for(None), obj.check_params)
