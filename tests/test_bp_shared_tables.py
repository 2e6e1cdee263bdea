"""Factors with identical energy tables share one stored table in the compiled graph.

Checks the sharing itself (every factor still reads exactly its own table, also
after ``set_factor_energies`` replaces one of several identical tables), exact
inference on forests against brute force, and the flooding kernel on loopy
graphs against a direct reference implementation of the same updates.
"""
import numpy as np
import pytest
from scipy.special import logsumexp

import factorebm as fe
from factorebm.compiled import Plan
from factorebm.exhaustive import exhaustive_inference

from test_bp_support import full_assignment


def _factor_table_from_kernel_layout(cg, i):
    """The flat table the kernel reads for compiled factor i."""
    size = int(cg.fac_table_offset[i + 1] - cg.fac_table_offset[i])
    return cg.unique_tables[cg.fac_table[i]:cg.fac_table[i] + size]


def _assert_layout(g):
    cg = g.compile()
    for i, f in enumerate(cg.fac_index):
        np.testing.assert_array_equal(_factor_table_from_kernel_layout(cg, i),
                                      g.factor_energies(int(f)).ravel())
        t = g.factor_energies(int(f))
        finite = t[np.isfinite(t)]
        assert cg.table_min[i] == (finite.min() if finite.size else 0.0)
    return cg


def potts_grid(rows, cols, K, seed, coupling=1.0, inf_diag=False):
    """rows x cols grid, random unaries; every pairwise factor gets an equal Potts table."""
    rng = np.random.default_rng(seed)
    g = fe.FactorGraph()
    for i in range(rows * cols):
        g.add_variable(f"x{i}", K)
        g.add_factor([f"x{i}"], rng.normal(size=K))
    potts = coupling * (1.0 - np.eye(K))
    if inf_diag:
        potts[0, K - 1] = potts[K - 1, 0] = np.inf
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if r + 1 < rows:
                g.add_factor([f"x{i}", f"x{i + cols}"], potts)
            if c + 1 < cols:
                g.add_factor([f"x{i}", f"x{i + 1}"], potts.copy())
    return g


def test_identical_tables_are_stored_once():
    g = potts_grid(4, 5, 3, seed=0)
    cg = _assert_layout(g)
    assert cg.n_facs == 31
    assert cg.unique_tables.size == 9                     # one 3 x 3 table for 31 factors
    assert np.all(cg.fac_table == 0)


def test_sharing_by_value_sizes_and_signed_zero():
    rng = np.random.default_rng(1)
    g = fe.FactorGraph()
    for i in range(6):
        g.add_variable(i, 2 + i % 2)                      # cardinalities 2, 3, 2, 3, 2, 3
    a = rng.normal(size=(2, 3))
    g.add_factor([0, 1], a)
    g.add_factor([2, 3], a.copy())                        # equal values, another array
    g.add_factor([4, 5], a + 1.0)                         # different
    z = np.zeros((2, 3))
    g.add_factor([0, 3], z)
    g.add_factor([2, 5], -z)                              # -0.0 everywhere: equal energies
    g.add_factor([1, 0], a.T.copy())                      # 3 x 2: same size, other values
    g.add_factor([0, 1, 2], rng.normal(size=(2, 3, 2)))   # arity 3
    g.add_factor([4, 3, 2], np.where(rng.random((2, 3, 2)) < 0.3, np.inf, 1.0))
    cg = _assert_layout(g)
    shared = cg.fac_table
    assert shared[0] == shared[1] and shared[3] == shared[4]
    assert len({shared[0], shared[2], shared[3], shared[5], shared[6], shared[7]}) == 6


def test_replacing_one_shared_table_leaves_the_others():
    g = potts_grid(3, 3, 3, seed=2)
    cg = _assert_layout(g)
    assert cg.unique_tables.size == 9
    rng = np.random.default_rng(3)
    new = rng.normal(size=(3, 3))
    f = 4 + 9                                             # some pairwise factor (after 9 unaries)
    g.set_factor_energies(f, new)
    cg2 = _assert_layout(g)
    assert cg2 is cg                                      # structure kept, tables refreshed
    assert cg.unique_tables.size == 18
    np.testing.assert_array_equal(g.factor_energies(f), new)
    others = [i for i in range(9, g.n_factors) if i != f]
    for i in others:
        np.testing.assert_array_equal(g.factor_energies(i), 1.0 - np.eye(3))
    # and back: equal again, stored once again
    g.set_factor_energies(f, 1.0 - np.eye(3))
    assert _assert_layout(g).unique_tables.size == 9


def _shared_tree(seed, K, scale):
    """A random tree whose pairwise factors use only two distinct tables."""
    rng = np.random.default_rng(seed)
    n = 8
    g = fe.FactorGraph()
    for i in range(n):
        g.add_variable(i, K, latent=bool(i == 3))
        g.add_factor([i], rng.normal(scale=scale, size=K))
    tabs = [rng.normal(scale=scale, size=(K, K)) for _ in range(2)]
    tabs[1][0, 1] = np.inf
    for i in range(1, n):
        g.add_factor([int(rng.integers(0, i)), i], tabs[i % 2])
    return g


def _check_exact(g, evidence=None):
    ref = exhaustive_inference(g, evidence=evidence)
    r = fe.min_sum(g, evidence=evidence)
    assert r.exact
    assert r.energy == pytest.approx(ref.energy, rel=1e-9, abs=1e-9)
    assert g.energy(full_assignment(r)) == pytest.approx(r.energy, rel=1e-12, abs=1e-12)
    for beta in (0.3, 1.0, 4.0):
        ref = exhaustive_inference(g, beta=beta, evidence=evidence)
        m = fe.sum_product(g, beta=beta, evidence=evidence)
        assert m.exact
        assert abs(m.free_energy - ref.free_energy) <= 1e-9 * max(1.0, abs(ref.free_energy))
        for name in g.variables:
            np.testing.assert_allclose(m.marginals[name], ref.marginals[name], rtol=0, atol=1e-9)
        for b, b_ref in zip(m.factor_beliefs, ref.factor_beliefs):
            np.testing.assert_allclose(b, b_ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_shared_tables_on_a_tree_match_brute_force_before_and_after_replacement(seed):
    g = _shared_tree(seed, K=3, scale=1.0)
    assert _assert_layout(g).unique_tables.size == 18
    _check_exact(g)
    _check_exact(g, evidence={5: 2})
    # replace one of the factors sharing table 0, then one sharing table 1
    rng = np.random.default_rng(seed + 100)
    pair = [f for f in range(g.n_factors) if len(g.factors[f][0]) == 2]
    for f in (pair[1], pair[0]):
        g.set_factor_energies(f, rng.normal(size=(3, 3)))
        _assert_layout(g)
        _check_exact(g)
        _check_exact(g, evidence={2: 0})


def reference_flooding(g, unary_mask, beta, n_iter, damping, min_sum):
    """Direct flooding BP over the factors' own tables (no sharing, exclusive sums).

    Returns the f2v messages as a list per compiled edge (factor order, scope order).
    """
    cg = g.compile()
    U = [cg.unary[cg.var_state_offset[v]:cg.var_state_offset[v + 1]] +
         unary_mask[cg.var_state_offset[v]:cg.var_state_offset[v + 1]] for v in range(cg.n_vars)]
    edges = [(f, t, int(v)) for f in range(cg.n_facs)
             for t, v in enumerate(cg.edge_var[cg.fac_edge_offset[f]:cg.fac_edge_offset[f + 1]])]
    f2v = [np.zeros(g.cardinality(g.variables[v])) for _, _, v in edges]

    def norm(x):
        lo = x.min()
        return x - lo if np.isfinite(lo) else x

    for _ in range(n_iter):
        v2f = []
        for e, (f, t, v) in enumerate(edges):
            x = U[v].copy()
            for e2, (_, _, v2) in enumerate(edges):
                if v2 == v and e2 != e:
                    x = x + f2v[e2]
            v2f.append(norm(x))
        new = []
        for e, (f, t, v) in enumerate(edges):
            T = g.factor_energies(int(cg.fac_index[f])).copy()
            first = int(cg.fac_edge_offset[f])
            for i in range(T.ndim):
                if i != t:
                    shape = [1] * T.ndim
                    shape[i] = -1
                    T = T + v2f[first + i].reshape(shape)
            axes = tuple(i for i in range(T.ndim) if i != t)
            out = T.min(axis=axes) if min_sum else -logsumexp(-beta * T, axis=axes) / beta
            out = norm(out)
            if damping > 0:
                out = norm((1 - damping) * out + damping * f2v[e])
            new.append(out)
        f2v = new
    return f2v


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_sum", [False, True])
def test_flooding_with_shared_tables_matches_reference(seed, min_sum):
    g = potts_grid(3, 4, 3, seed=seed, coupling=1.5, inf_diag=seed % 2 == 1)
    rng = np.random.default_rng(seed)
    # a few factors get their own table, one arity-3 factor sharing a table with another
    t3 = rng.normal(size=(3, 3, 3))
    g.add_factor(["x0", "x5", "x11"], t3)
    g.add_factor(["x1", "x6", "x10"], t3)
    g.set_factor_energies(12 + 3, rng.normal(size=(3, 3)))
    cg = _assert_layout(g)
    evidence = {} if seed < 2 else {4: 1}
    mask = cg.mask(evidence)
    unary = cg.unary + mask
    flood = Plan(False, np.full(1, -1, dtype=np.int64), cg.plan([]).order)
    beta = [1.0, 0.5, 2.0, 1.0][seed]
    for n_iter, damping in ((1, 0.0), (7, 0.5), (5, 0.0)):
        v2f, f2v, it, delta, exact = cg.run_bp(unary, flood, np.inf if min_sum else beta, min_sum,
                                               max_iter=n_iter, damping=damping, tol=0.0)
        assert it == n_iter and not exact
        ref = reference_flooding(g, mask, beta, n_iter, damping, min_sum)
        for e, r in enumerate(ref):
            got = f2v[cg.edge_msg_offset[e]:cg.edge_msg_offset[e + 1]]
            np.testing.assert_array_equal(np.isinf(got), np.isinf(r))
            fin = np.isfinite(r)
            np.testing.assert_allclose(got[fin], r[fin], rtol=0, atol=1e-11)


def test_flooding_with_shared_tables_huge_energies_uses_the_exact_fallback():
    # a shared table with huge energies makes the scaled sums underflow: the
    # kernel must fall back to the exact energy-space soft-min (a tree, so the
    # flooding fixed point is exact)
    rng = np.random.default_rng(7)
    g = fe.FactorGraph()
    for i in range(6):
        g.add_variable(i, 3)
        g.add_factor([i], rng.normal(scale=500.0, size=3))
    T = rng.normal(scale=2000.0, size=(3, 3))
    for i in range(1, 6):
        g.add_factor([i - 1, i], T)
    cg = _assert_layout(g)
    assert cg.unique_tables.size == 9
    ref = exhaustive_inference(g, beta=1.0)
    flood = Plan(False, np.full(1, -1, dtype=np.int64), cg.plan([]).order)
    for damping in (0.0, 0.5):
        v2f, f2v, it, delta, exact = cg.run_bp(cg.unary, flood, 1.0, False, max_iter=300,
                                               damping=damping, tol=1e-12)
        assert delta <= 1e-12 and np.isfinite(f2v).all()
        var_b, _ = cg.beliefs(cg.unary, v2f, f2v)
        p, _, _ = cg.variable_gibbs(var_b, 1.0)
        for v, name in enumerate(g.variables):
            np.testing.assert_allclose(p[cg.var_state_offset[v]:cg.var_state_offset[v + 1]],
                                       ref.marginals[name], atol=1e-9)


def test_loopy_shared_grid_properties_and_threads():
    g = potts_grid(3, 4, 3, seed=5, coupling=0.7)
    m1 = fe.sum_product(g, beta=1.0, damping=0.5, tol=1e-12, max_iter=3000, n_threads=1)
    m2 = fe.sum_product(g, beta=1.0, damping=0.5, tol=1e-12, max_iter=3000, n_threads=2)
    assert m1.converged and m1.iterations == m2.iterations
    for name in g.variables:
        np.testing.assert_array_equal(m1.marginals[name], m2.marginals[name])
    for (scope, _), b in zip(g.factors, m1.factor_beliefs):
        for axis, name in enumerate(scope):
            marg = b.sum(axis=tuple(i for i in range(b.ndim) if i != axis))
            np.testing.assert_allclose(marg, m1.marginals[name], atol=1e-8)
    r = fe.min_sum(g, damping=0.5, max_iter=500)
    assert r.energy >= exhaustive_inference(g).energy - 1e-9
