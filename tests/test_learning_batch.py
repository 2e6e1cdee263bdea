"""Batched learning on factor graphs: the graph objective runs BP over all the graphs of a batch at
once. Guards: it equals a per-graph reference built on the public inference functions (exactly on
forests, to rounding on loopy graphs with the same options), loss-augmented E- equals brute force,
selections of a batch equal concatenations, options and bad input."""
import itertools
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import factorebm as fe
from factorebm import losses
from factorebm.compiled import concatenate, select
from factorebm.learning import GraphObjective, ParametricGraph, graph_objective
from factorebm.optimize import fit_graphs


# ---------------------------------------------------------------------- graphs
def _phi(g, n_weights, rng, density=0.6):
    total = sum(int(np.prod([g.cardinality(v) for v in g.factor_scope(f)]))
                for f in range(g.n_factors))
    phi = sp.random(total, n_weights, density=density, random_state=rng)
    phi.data[:] = rng.uniform(-1, 1, phi.nnz)
    return phi


def tree(rng, latent=False):
    g = fe.FactorGraph()
    g.add_variables(["a", "b", "c", "d"], [3, 2, 3, 2])
    g.add_factors([["a"], ["c"]], np.zeros((2, 3)))
    g.add_factors([["a", "b"]], np.zeros((1, 3, 2)))
    g.add_factors([["b", "c"]], np.zeros((1, 2, 3)))
    if latent:
        g.add_variable("z", 2, latent=True)
        g.add_factor(["c", "d", "z"], np.zeros((3, 2, 2)))
    else:
        g.add_factor(["c", "d"], np.zeros((3, 2)))
    return g


def grid(rng, n=3, K=3, latent=False):
    """A loopy n x n grid: unary factors, one pairwise factor per edge (arity 3 with a
    latent variable on one edge)."""
    g = fe.FactorGraph()
    g.add_variables(n * n, K)
    ids = np.arange(n * n).reshape(n, n)
    edges = np.concatenate([np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1),
                            np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1)])
    g.add_factors(ids.reshape(-1, 1), np.zeros((n * n, K)))
    g.add_factors(edges, np.zeros((K, K)))
    if latent:
        g.add_variable("z", 2, latent=True)
        g.add_factor([0, 1, "z"], np.zeros((K, K, 2)))
    return g


def samples_of(kinds, seed, n_weights=6, shared=False):
    """(samples, w): one graph per kind (or one graph shared by all), random Phi and targets."""
    rng = np.random.default_rng(seed)
    out = []
    pg = None
    for kind in kinds:
        if pg is None or not shared:
            g = {"tree": lambda: tree(rng), "ltree": lambda: tree(rng, True),
                 "grid": lambda: grid(rng), "lgrid": lambda: grid(rng, latent=True),
                 "bgrid": lambda: grid(rng, K=2)}[kind]()
            pg = ParametricGraph(g, _phi(g, n_weights, rng))
        g = pg.graph
        target = {v: int(rng.integers(g.cardinality(v))) for v in g.visible_variables}
        out.append((pg, target))
    return out, 0.7 * rng.standard_normal(n_weights)


# ---------------------------------------------------------------------- the reference
def reference(samples, w, loss, options=None, beta=1.0, **kw):
    """Sum of the losses and gradient, one graph at a time, with fe.min_sum / fe.sum_product /
    fe.most_offending (the per-graph Python loop the batched objective replaces)."""
    spec = losses.get(loss)
    o = dict(options or {})
    e_minus_kind = o.pop("e_minus", "most_offending")
    h = o.pop("hamming", kw.get("margin", 1.0))
    sp_opts = {k: v for k, v in o.items() if k != "schedule" or v != "trws"}
    total, grad = 0.0, np.zeros(len(w))
    for pg, target in samples:
        pg.set_weights(w)
        g = pg.graph
        vis = {v: target[v] for v in g.visible_variables}
        if spec.e_minus == "free_energy":
            clamped = fe.sum_product(g, beta, evidence=vis, **sp_opts)
            free = fe.sum_product(g, beta, **sp_opts)
            e_plus, b_plus = clamped.free_energy, pg.beliefs_vector(clamped.factor_beliefs)
            e_minus, b_minus = free.free_energy, pg.beliefs_vector(free.factor_beliefs)
        else:
            if g.latent_variables:
                r = fe.min_sum(g, evidence=vis, **o)
                full = {**vis, **r.latent}
                e_plus = r.energy
            else:
                full, e_plus = vis, g.energy(vis)
            b_plus = pg.indicator(full)
            e_minus = b_minus = None
            if spec.e_minus == "min_all":
                r = fe.min_sum(g, **o)
                e_minus, b_minus = r.energy, pg.indicator({**r.assignment, **r.latent})
            elif spec.e_minus == "most_offending" and e_minus_kind == "loss_augmented":
                g2 = g.copy()
                for v, t in vis.items():
                    g2.add_factor([v], h * np.eye(g.cardinality(v))[t])
                r = fe.min_sum(g2, **o)
                ybar = {**r.assignment, **r.latent}
                wrong = sum(ybar[v] != t for v, t in vis.items())
                e_minus, b_minus = g.energy(ybar) - h * (wrong - 1), pg.indicator(ybar)
            elif spec.e_minus == "most_offending":
                assign, e_minus = fe.most_offending(g, vis)
                if g.latent_variables:
                    assign = {**assign, **fe.min_sum(g, evidence=assign).latent}
                b_minus = pg.indicator(assign)
        lo, dp, dm = spec(e_plus, e_minus, **kw)
        total += lo
        dtab = dp * b_plus + (dm * b_minus if b_minus is not None else 0.0)
        grad += pg.phi.T @ dtab
    return total, grad


def batched(samples, w, loss, options=None, beta=1.0, n_threads=1, **kw):
    return GraphObjective(samples, loss, beta, options, **kw).value_and_grad(w, n_threads)


# ---------------------------------------------------------------------- equal to the reference
@pytest.mark.parametrize("loss,kw", [("nll", {}), ("hinge", {"margin": 1.0}), ("log", {}),
                                     ("perceptron", {}), ("energy", {})])
def test_batched_objective_equals_the_per_graph_one_on_forests(loss, kw):
    samples, w = samples_of(["tree", "ltree", "tree", "ltree"], seed=1)
    shared, w2 = samples_of(["tree"] * 3, seed=2, shared=True)    # one graph, three targets
    for s, ww in ((samples, w), (shared, w2), (samples + shared[:0], -w)):
        v, g = batched(s, ww, loss, **kw)
        rv, rg = reference(s, ww, loss, **kw)
        assert v == pytest.approx(rv, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(g, rg, rtol=1e-9, atol=1e-10)


MIXED = ["grid", "tree", "lgrid", "grid", "ltree"]
PAIRWISE = ["grid", "tree", "bgrid", "grid"]         # TRW-S takes pairwise graphs only
LOOPY = [("nll", {}, {"damping": 0.3}, MIXED),
         ("nll", {}, {"schedule": "residual", "damping": 0.2}, MIXED),
         ("perceptron", {}, {"damping": 0.5}, MIXED),
         ("hinge", {"margin": 1.0}, {"e_minus": "loss_augmented", "damping": 0.5}, MIXED),
         ("log", {}, {"e_minus": "loss_augmented", "hamming": 0.5, "schedule": "trws"},
          PAIRWISE),
         ("perceptron", {}, {"schedule": "trws"}, PAIRWISE)]


@pytest.mark.parametrize("loss,kw,opts,kinds", LOOPY)
def test_batched_objective_equals_the_per_graph_one_on_loopy_graphs(loss, kw, opts, kinds):
    # tol = 0 and a fixed number of sweeps: every part gets the same messages as alone
    samples, w = samples_of(kinds, seed=3)
    options = {"max_iter": 25, "tol": 0.0, **opts}
    v, g = batched(samples, w, loss, options, **kw)
    rv, rg = reference(samples, w, loss, options, **kw)
    assert v == pytest.approx(rv, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(g, rg, rtol=1e-7, atol=1e-8)


def test_threads_do_not_change_the_batched_objective():
    samples, w = samples_of(["grid", "lgrid", "grid", "tree"], seed=4)
    for loss in ("nll", "hinge"):
        v1, g1 = batched(samples, w, loss, {"damping": 0.5, "tol": 0.0, "max_iter": 20})
        v2, g2 = batched(samples, w, loss, {"damping": 0.5, "tol": 0.0, "max_iter": 20},
                         n_threads=2)
        assert v1 == pytest.approx(v2, rel=1e-12)
        np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12)


def test_mini_batches_sum_to_the_full_batch():
    samples, w = samples_of(["grid", "tree", "lgrid", "grid", "ltree", "tree"], seed=5)
    obj = GraphObjective(samples, "nll", inference_options={"damping": 0.4, "tol": 0.0,
                                                            "max_iter": 30})
    v, g = obj.value_and_grad(w, 1)
    parts = [obj.unit_value_and_grad(w, u, 1) for u in ([4, 0], [5, 2, 1], [3])]
    assert sum(p[0] for p in parts) == pytest.approx(v, rel=1e-10)
    np.testing.assert_allclose(sum(p[1] for p in parts), g, rtol=1e-9, atol=1e-12)


def test_bethe_nll_gradient_matches_finite_differences_on_a_loopy_graph():
    samples, w = samples_of(["grid", "lgrid"], seed=6)
    opts = {"damping": 0.3, "tol": 1e-13, "max_iter": 2000}
    obj = GraphObjective(samples, "nll", inference_options=opts)
    _, g = obj.value_and_grad(w, 1)
    h = 1e-5
    fd = [(obj.value_and_grad(w + h * e, 1)[0] - obj.value_and_grad(w - h * e, 1)[0]) / (2 * h)
          for e in np.eye(w.size)]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- loss-augmented E-
def _brute_loss_augmented(pg, target, w, h):
    """min over joint assignments of E - h H(visible, target), + h: with numpy only."""
    g = pg.graph
    tables = pg.tables(w)
    names = g.variables
    best = np.inf
    for states in itertools.product(*[range(g.cardinality(v)) for v in names]):
        a = dict(zip(names, states))
        e = sum(tables[pg.table_offset[f] + np.ravel_multi_index(
            tuple(a[v] for v in g.factor_scope(f)), pg.table_shapes[f])]
            for f in range(g.n_factors))
        wrong = sum(a[v] != t for v, t in target.items())
        best = min(best, e - h * (wrong - 1))
    return best


@pytest.mark.parametrize("kinds,opts", [(["tree", "ltree", "tree"], {}),
                                        (["bgrid", "bgrid"], {"schedule": "trws"})])
def test_loss_augmented_e_minus_equals_brute_force(kinds, opts):
    samples, w = samples_of(kinds, seed=7)
    if kinds[0] == "bgrid":
        # binary attractive (submodular) pairwise tables: TRW-S finds the exact minimum, and
        # the Hamming term only adds unary energies
        attractive = []
        for pg, target in samples:
            phi = pg.phi.tolil()
            n_u = 9 * 2
            phi[n_u:, :] = 0
            rows = n_u + 4 * np.arange(12)[:, None] + np.array([1, 2])
            phi[rows.ravel(), 0] = 1.0
            attractive.append((ParametricGraph(pg.graph, phi), target))
        samples, w = attractive, np.abs(w)
    h = 0.8
    obj = GraphObjective(samples, "hinge", inference_options={"e_minus": "loss_augmented",
                                                              "hamming": h, **opts})
    _, e_minus = obj.energies(w)
    for (pg, target), e in zip(samples, e_minus):
        vis = {v: target[v] for v in pg.graph.visible_variables}
        assert e == pytest.approx(_brute_loss_augmented(pg, vis, w, h), rel=1e-10, abs=1e-10)


def test_structured_hinge_is_the_max_over_answers_of_the_margin_violation():
    # hinge with e_minus="loss_augmented": max(0, m + E+ - E-) = max_y [E+ - E(y) + m H(y)]
    samples, w = samples_of(["tree", "ltree"], seed=8)
    m = 1.5
    v, _ = graph_objective(w, samples, "hinge", margin=m,
                           inference_options={"e_minus": "loss_augmented"})
    obj = GraphObjective(samples, "hinge", margin=m,
                         inference_options={"e_minus": "loss_augmented"})
    e_plus, _ = obj.energies(w)
    want = np.mean([ep - (_brute_loss_augmented(pg, {u: t[u] for u in pg.graph.visible_variables},
                                                w, m) - m)
                    for (pg, t), ep in zip(samples, e_plus)])
    assert v == pytest.approx(want, rel=1e-10)
    assert v >= 0


# ---------------------------------------------------------------------- batches of batches
def test_selecting_parts_of_a_batch_equals_concatenating_them():
    rng = np.random.default_rng(9)
    graphs = [grid(rng), tree(rng, True), grid(rng, K=2), tree(rng)]
    for g in graphs:
        for f in range(g.n_factors):
            shape = tuple(g.cardinality(v) for v in g.factor_scope(f))
            g.set_factor_energies(f, rng.normal(size=shape))
    cgs = [g.compile() for g in graphs]
    batch, off = concatenate(cgs)
    parts = np.array([2, 0, 2, 3])
    sub, so = select(batch, off, parts)
    ref, ro = concatenate([cgs[p] for p in parts])
    for k in ro:
        np.testing.assert_array_equal(so[k], ro[k])
    for name in ("var_state_offset", "var_edge_offset", "var_edges", "fac_edge_offset",
                 "edge_var", "edge_fac", "edge_stride", "edge_msg_offset", "fac_table_offset",
                 "unary", "fac_index", "unary_var", "table_min", "fac_potts"):
        np.testing.assert_array_equal(getattr(sub, name), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(sub.tables, ref.tables)
    plan = ref.plan([])
    beliefs = []
    for cg in (sub, ref):
        v2f, f2v, *_ = cg.run_bp(cg.unary, plan, 1.0, False, 20, 0.3, 0.0)
        beliefs.append(cg.beliefs(cg.unary, v2f, f2v)[0])
    np.testing.assert_array_equal(beliefs[0], beliefs[1])


def test_set_tables_validates_and_leaves_the_graph_unchanged():
    rng = np.random.default_rng(10)
    cg = grid(rng).compile()
    unary, tables = cg.unary.copy(), cg.tables.copy()
    with pytest.raises(ValueError, match="unary must have shape"):
        cg.set_tables(np.zeros(3), tables)
    bad = tables.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="tables contains NaN"):
        cg.set_tables(unary, bad)
    with pytest.raises(ValueError, match="table_of"):
        cg.set_tables(unary, np.zeros(9), np.full(cg.n_facs, 3), np.array([0, 9]))
    np.testing.assert_array_equal(cg.tables, tables)
    # one shared Potts table: detected, and equal to the unshared form
    potts = 0.8 * (1 - np.eye(3))
    cg.set_tables(unary, potts.ravel(), np.zeros(cg.n_facs, dtype=np.int64), np.array([0, 9]))
    np.testing.assert_allclose(cg.fac_potts, 0.8, rtol=1e-15)
    e1 = cg.energies_of(np.arange(cg.n_vars) % 3)
    cg.set_tables(unary, np.tile(potts.ravel(), cg.n_facs))
    assert cg.energies_of(np.arange(cg.n_vars) % 3) == pytest.approx(e1, rel=1e-12)


# ---------------------------------------------------------------------- options, bad input
def test_fit_graphs_takes_bp_options_and_learns_on_loopy_graphs():
    samples, w_true = samples_of(["grid"] * 6, seed=11)
    # learnable targets: the MAP answers under some weights
    targets = []
    for pg, _ in samples:
        pg.set_weights(3 * w_true)
        targets.append(fe.min_sum(pg.graph, damping=0.5).assignment)
    samples = [(pg, t) for (pg, _), t in zip(samples, targets)]
    for loss, opts in (("nll", {"damping": 0.5, "max_iter": 50}),
                       ("hinge", {"schedule": "trws", "e_minus": "loss_augmented"})):
        w0 = np.full(w_true.size, 0.01)
        v0, _ = graph_objective(w0, samples, loss, l2=0.01, inference_options=opts)
        w, hist = fit_graphs(samples, loss=loss, max_iter=15, l2=0.01, w0=w0,
                             inference_options=opts, verbose=False, random_state=0,
                             n_threads=1)
        v1, _ = graph_objective(w, samples, loss, l2=0.01, inference_options=opts)
        assert v1 < v0, loss


def test_bad_bp_options_and_targets():
    samples, _ = samples_of(["grid", "ltree"], seed=12)
    with pytest.raises(ValueError, match=r"unknown inference_options \['temperature'\]"):
        fit_graphs(samples, inference_options={"temperature": 2}, verbose=False)
    with pytest.raises(ValueError, match="unknown schedule 'loopy'"):
        fit_graphs(samples, inference_options={"schedule": "loopy"}, verbose=False)
    with pytest.raises(ValueError, match="TRW-S is a min-sum algorithm"):
        fit_graphs(samples, loss="nll", inference_options={"schedule": "trws"}, verbose=False)
    with pytest.raises(ValueError, match="sample 1: schedule 'trws' needs a pairwise graph"):
        fit_graphs(samples, loss="hinge", inference_options={"schedule": "trws"},
                   verbose=False)
    with pytest.raises(ValueError, match="damping must be in"):
        fit_graphs(samples, inference_options={"damping": 1.0}, verbose=False)
    with pytest.raises(ValueError, match="max_iter must be an integer"):
        fit_graphs(samples, inference_options={"max_iter": 0}, verbose=False)
    with pytest.raises(ValueError, match="'e_minus' is for the margin losses"):
        fit_graphs(samples, loss="nll", inference_options={"e_minus": "loss_augmented"},
                   verbose=False)
    with pytest.raises(ValueError, match="unknown e_minus 'hamming'"):
        fit_graphs(samples, loss="hinge", inference_options={"e_minus": "hamming"},
                   verbose=False)
    with pytest.raises(ValueError, match="hamming must be a finite number > 0"):
        fit_graphs(samples, loss="hinge", verbose=False,
                   inference_options={"e_minus": "loss_augmented", "hamming": -1})
    with pytest.raises(ValueError, match="means nothing with 'most_offending'"):
        fit_graphs(samples, loss="hinge", inference_options={"hamming": 2.0}, verbose=False)
    pg, target = samples[0]
    with pytest.raises(ValueError, match="sample 0: label 7 of variable 0 is out of range"):
        GraphObjective([(pg, {**target, 0: 7})])
    with pytest.raises(ValueError, match="sample 0: variable 0 has no label 'x'"):
        GraphObjective([(pg, {**target, 0: "x"})])
    with pytest.raises(ValueError, match="does not give a label to visible variable 4"):
        GraphObjective([(pg, {k: v for k, v in target.items() if k != 4})])


def test_infeasible_forest_target_answers_raise_and_loopy_ones_warn():
    rng = np.random.default_rng(13)
    g = tree(rng)
    pg = ParametricGraph(g, _phi(g, 3, rng), offset=np.r_[np.full(3, np.inf), np.zeros(21)])
    with pytest.raises(ValueError, match="sample 0: no assignment has finite energy"):
        graph_objective(np.zeros(3), [(pg, {"a": 0, "b": 0, "c": 0, "d": 0})])
    # a loopy graph whose every assignment is forbidden (a triangle of "not equal" on binary
    # variables): BP cannot prove it, so the learner warns
    g = fe.FactorGraph()
    g.add_variables(3, 2)
    g.add_factors([[0, 1], [1, 2], [0, 2]], np.where(np.eye(2) > 0, np.inf, 0.0))
    pg = ParametricGraph(g, sp.csr_matrix((12, 1)), offset=np.tile([np.inf, 0, 0, np.inf], 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            graph_objective(np.zeros(1), [(pg, {0: 0, 1: 1, 2: 0})], "nll")
        except ValueError:
            pass
    assert any("finite-energy" in str(c.message) for c in caught)
