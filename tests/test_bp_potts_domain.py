"""Flooding on graphs of Potts factors runs each semiring in its own domain.

Min-sum keeps energies and sum-product keeps probabilities exp(-beta energy) for the
whole run (no exp or log per message, damping 0.5 a geometric mean). Checked against
the general log-domain sweep on the same model with its Potts tables read as dense
K x K tables, on random grids and trees, with +inf unary energies, large beta * c
(past the bound where the probabilities could underflow the general sweep takes over)
and damping 0, 0.5 and 0.3 (not a square root: the general sweep); and on trees
against brute force.
"""
import copy

import numpy as np
import pytest

import factorebm as fe
from factorebm import _bp
from factorebm.compiled import Plan
from factorebm.exhaustive import enumerate_energies, exhaustive_inference


def potts_graph(edges, n_vars, K, seed, coupling, inf_prob=0.0):
    """Random unary energies (a fraction inf_prob of them +inf, never all of a variable's)
    and Potts pairwise tables coupling_f * [a != b] on the given edges."""
    rng = np.random.default_rng(seed)
    unary = rng.normal(size=(n_vars, K))
    forbid = rng.random((n_vars, K)) < inf_prob
    forbid[np.arange(n_vars), rng.integers(K, size=n_vars)] = False
    unary[forbid] = np.inf
    g = fe.FactorGraph()
    g.add_variables(n_vars, K)
    g.add_factors(np.arange(n_vars)[:, None], unary)
    c = coupling * rng.uniform(0.5, 1.5, size=len(edges))
    g.add_factors(np.asarray(edges), c[:, None, None] * (1.0 - np.eye(K)))
    return g


def grid_edges(rows, cols):
    ids = np.arange(rows * cols).reshape(rows, cols)
    return np.concatenate([np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1),
                           np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1)])


def tree_edges(n, seed):
    rng = np.random.default_rng(seed)
    parents = (rng.random(n - 1) * np.arange(1, n)).astype(np.int64)
    return np.stack([parents, np.arange(1, n)], axis=1)


def flooding(cg):
    return Plan(False, np.full(1, -1, dtype=np.int64), cg.plan([]).order)


def dense(cg):
    """The same compiled graph with its Potts tables read as dense tables."""
    d = copy.copy(cg)
    d.fac_potts = np.full(cg.n_facs, -1.0)
    return d


def run_both(g, beta, min_sum, damping, max_iter=60, tol=0.0):
    cg = g.compile()
    plan = flooding(cg)
    out = [c.run_bp(c.unary, plan, beta, min_sum, max_iter=max_iter, damping=damping, tol=tol)
           for c in (cg, dense(cg))]
    return cg, out


def assert_same_messages(a, b, same_iterations=False):
    for x, y in zip(a[:2], b[:2]):                 # v2f, f2v (energies, minimum 0)
        np.testing.assert_array_equal(np.isinf(x), np.isinf(y))
        np.testing.assert_allclose(x[np.isfinite(x)], y[np.isfinite(y)], rtol=0, atol=1e-9)
    # with tol 0 a run may stop early where one domain's rounding reaches a fixed point
    # exactly and the other's keeps flipping a last bit
    if same_iterations:
        assert a[2] == b[2]
    assert abs(a[3] - b[3]) <= 1e-9                 # largest change of the last sweep


@pytest.mark.parametrize("damping", [0.0, 0.5, 0.3])
@pytest.mark.parametrize("min_sum", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_grid_matches_dense_log_domain(seed, min_sum, damping):
    rows, cols = [(3, 4), (5, 5), (6, 7), (2, 9)][seed]
    coupling = [0.3, 1.0, 2.5, 8.0][seed]
    g = potts_graph(grid_edges(rows, cols), rows * cols, [2, 3, 5, 4][seed], seed, coupling,
                    inf_prob=0.2 if seed % 2 else 0.0)
    beta = [1.0, 0.7, 2.0, 3.0][seed]
    _, (a, b) = run_both(g, beta, min_sum, damping)
    assert_same_messages(a, b)


@pytest.mark.parametrize("coupling", [60.0, 90.0, 400.0, 1e6])
@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_large_beta_c_matches_dense_log_domain(coupling, damping):
    # near and past the bound beta (U spread + (degree + 2) c) <= 600 of the probability
    # domain: the messages there are as small as exp(-500), and past it the log domain runs
    g = potts_graph(grid_edges(4, 4), 16, 3, 7, coupling, inf_prob=0.2)
    for min_sum in (False, True):
        _, (a, b) = run_both(g, 1.0, min_sum, damping, max_iter=40)
        assert_same_messages(a, b)


def test_same_messages_with_the_hook_off_and_on_threads():
    g = potts_graph(grid_edges(20, 30), 600, 5, 3, 1.0, inf_prob=0.1)   # several blocks
    cg = g.compile()
    plan = flooding(cg)
    for min_sum in (False, True):
        on = [cg.run_bp(cg.unary, plan, 1.0, min_sum, max_iter=30, damping=0.5, tol=0.0,
                        n_threads=nt) for nt in (1, 2, 3)]
        _bp._set_potts_domain(False)
        try:
            off = cg.run_bp(cg.unary, plan, 1.0, min_sum, max_iter=30, damping=0.5, tol=0.0)
        finally:
            _bp._set_potts_domain(True)
        for other in on[1:]:                # the variables' totals taken by other threads
            for x, y in zip(on[0][:2], other[:2]):
                np.testing.assert_array_equal(x, y)
        assert_same_messages(on[0], off)


def test_convergence_stops_at_the_same_sweep():
    g = potts_graph(grid_edges(6, 6), 36, 4, 11, 0.8)
    for min_sum in (False, True):
        _, (a, b) = run_both(g, 1.0, min_sum, 0.5, max_iter=500, tol=1e-7)
        assert a[3] <= 1e-7 and a[2] < 500
        assert_same_messages(a, b, same_iterations=True)


@pytest.mark.parametrize("seed", range(4))
def test_tree_flooding_is_exact(seed):
    n, K = 7, 3
    g = potts_graph(tree_edges(n, seed), n, K, seed + 20, [0.5, 2.0, 5.0, 30.0][seed],
                    inf_prob=0.2 if seed % 2 else 0.0)
    ref = exhaustive_inference(g, beta=1.0)
    states, E = enumerate_energies(g)
    cg = g.compile()
    plan = flooding(cg)
    for damping in (0.0, 0.5):
        for c in (cg, dense(cg)):
            v2f, f2v, it, delta, exact = c.run_bp(c.unary, plan, 1.0, False, max_iter=400,
                                                  damping=damping, tol=1e-12)
            assert delta <= 1e-12
            var_b, _ = c.beliefs(c.unary, v2f, f2v)
            p, _, _ = c.variable_gibbs(var_b, 1.0)
            for v, name in enumerate(g.variables):
                np.testing.assert_allclose(p[c.var_state_offset[v]:c.var_state_offset[v + 1]],
                                           ref.marginals[name], atol=1e-9)
    v2f, f2v, it, delta, exact = cg.run_bp(cg.unary, plan, np.inf, True, max_iter=400, tol=0.0)
    var_b, _ = cg.beliefs(cg.unary, v2f, f2v)
    for v, name in enumerate(g.variables):
        mm = np.array([E[states[:, v] == k].min() for k in range(K)])
        b = var_b[cg.var_state_offset[v]:cg.var_state_offset[v + 1]]
        np.testing.assert_array_equal(np.isinf(b), np.isinf(mm))
        fin = np.isfinite(mm)
        np.testing.assert_allclose((b - b.min())[fin], (mm - mm.min())[fin], rtol=1e-12, atol=1e-9)


def test_long_chain_does_not_underflow():
    # 2000 variables in a chain with strong unaries: the totals would underflow if they
    # were not renormalized per variable; beliefs match the dense log-domain sweep
    n = 2000
    g = potts_graph(tree_edges(n, 0)[:0].tolist() + [[i, i + 1] for i in range(n - 1)], n, 4,
                    5, 3.0)
    _, (a, b) = run_both(g, 1.0, False, 0.5, max_iter=50)
    assert_same_messages(a, b)
