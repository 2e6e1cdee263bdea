"""Loopy belief propagation: fixed-point properties and bounds against brute force."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import factorebm as fe
from factorebm.exhaustive import exhaustive_inference

from test_bp_support import full_assignment


def random_loopy(seed, scale=0.5, inf_prob=0.0):
    """A small random loopy graph: a grid with pairwise factors plus one arity-3 factor."""
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    g = fe.FactorGraph()
    names = [[f"v{i}_{j}" for j in range(cols)] for i in range(rows)]
    for i in range(rows):
        for j in range(cols):
            g.add_variable(names[i][j], int(rng.integers(2, 4)), latent=bool(rng.random() < 0.2))
            g.add_factor([names[i][j]], rng.normal(scale=1.0, size=g.cardinality(names[i][j])))
    for i in range(rows):
        for j in range(cols):
            for (a, b) in ((i + 1, j), (i, j + 1)):
                if a < rows and b < cols:
                    s = (names[i][j], names[a][b])
                    t = rng.normal(scale=scale, size=(g.cardinality(s[0]), g.cardinality(s[1])))
                    t[rng.random(t.shape) < inf_prob] = np.inf
                    g.add_factor(list(s), t)
    s = (names[0][0], names[-1][-1], names[0][-1])
    g.add_factor(list(s), rng.normal(scale=scale, size=tuple(g.cardinality(n) for n in s)))
    return g


def _marginalize(b, axis):
    return b.sum(axis=tuple(i for i in range(b.ndim) if i != axis))


@pytest.mark.parametrize("seed", range(20))
def test_loopy_fixed_point(seed):
    g = random_loopy(seed)
    m = fe.sum_product(g, beta=1.0, damping=0.5, tol=1e-11, max_iter=2000)
    assert not m.exact
    assert m.converged and m.iterations < 2000
    for name in g.variables:
        assert abs(m.marginals[name].sum() - 1) <= 1e-12
    # at a converged fixed point each factor belief marginalizes to its variables' beliefs
    for (scope, _), b in zip(g.factors, m.factor_beliefs):
        assert abs(b.sum() - 1) <= 1e-12
        for axis, name in enumerate(scope):
            np.testing.assert_allclose(_marginalize(b, axis), m.marginals[name], atol=1e-8)
    # weak couplings: loopy BP is a good approximation
    ref = exhaustive_inference(g, beta=1.0)
    assert abs(m.free_energy - ref.free_energy) < 0.5
    for name in g.variables:
        assert np.abs(m.marginals[name] - ref.marginals[name]).max() < 0.2


@pytest.mark.parametrize("seed", range(30))
def test_loopy_map_never_below_minimum(seed):
    g = random_loopy(seed, scale=2.0, inf_prob=0.15 if seed % 2 else 0.0)
    try:
        ref = exhaustive_inference(g)
    except ValueError:
        with pytest.raises(ValueError):
            fe.min_sum(g, damping=0.3)
        return
    r = fe.min_sum(g, damping=0.3, max_iter=300)
    assert not r.exact
    # the reported energy is the true energy of what is returned, never below the minimum
    assert r.energy == pytest.approx(g.energy(full_assignment(r)), rel=1e-12, abs=1e-12)
    assert r.energy >= ref.energy - 1e-9
    assert r.iterations >= 1


def test_loopy_with_evidence_and_iterations():
    g = random_loopy(3, scale=3.0)
    ev = {g.variables[0]: 1}
    r = fe.min_sum(g, evidence=ev, max_iter=1)
    assert r.iterations == 1 and not r.converged
    assert full_assignment(r)[g.variables[0]] == 1
    assert r.energy >= exhaustive_inference(g, evidence=ev).energy - 1e-9
    m = fe.sum_product(g, beta=2.0, evidence=ev, max_iter=500, damping=0.5, tol=1e-10)
    np.testing.assert_array_equal(m.marginals[g.variables[0]], np.eye(g.cardinality(g.variables[0]))[1])


def test_threads_give_same_messages():
    g = random_loopy(5)
    a = fe.sum_product(g, beta=0.7, damping=0.5, max_iter=50, tol=0.0, n_threads=1)
    b = fe.sum_product(g, beta=0.7, damping=0.5, max_iter=50, tol=0.0, n_threads=2)
    assert a.iterations == b.iterations == 50
    assert a.free_energy == b.free_energy
    for name in g.variables:
        np.testing.assert_array_equal(a.marginals[name], b.marginals[name])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.floats(0.1, 5.0), st.floats(0.0, 0.8))
def test_property_loopy_normalized(seed, beta, damping):
    g = random_loopy(seed, scale=1.0)
    m = fe.sum_product(g, beta=beta, damping=damping, max_iter=30)
    assert m.iterations <= 30 and np.isfinite(m.free_energy)
    for name in g.variables:
        p = m.marginals[name]
        assert (p >= 0).all() and abs(p.sum() - 1) <= 1e-12
    for b in m.factor_beliefs:
        assert (b >= 0).all() and abs(b.sum() - 1) <= 1e-12
    r = fe.min_sum(g, damping=damping, max_iter=30)
    assert r.energy >= exhaustive_inference(g).energy - 1e-9


def test_batched_exp_log_match_libm():
    from factorebm import _bp
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random(20000) * 800, rng.random(20000) * 1e-3,
                        [0.0, np.inf, 1e-300, 1e-289, 700.0, 708.5, 1e300]])
    for beta in (1.0, 0.37, 3.0):
        e, lg = np.empty_like(x), np.empty_like(x)
        _bp._test_exp_log(x, e, lg, beta)
        ref = np.exp(-beta * x)
        big = ref > 1e-300
        assert np.all(np.abs(e[big] - ref[big]) <= 2e-15 * ref[big])
        assert np.all(e[~big] <= 1e-300) and e[x == np.inf][0] == 0.0
        ok = (x >= 1e-290) & np.isfinite(x)
        with np.errstate(divide="ignore"):
            lref = -np.log(x[ok]) / beta
        assert np.all(np.abs(lg[ok] - lref) <= 4e-16 * np.maximum(1.0, np.abs(lref)))
        assert np.isnan(lg[x < 1e-290]).all()


@pytest.mark.parametrize("seed", range(6))
def test_flooding_on_a_tree_is_exact_with_large_energies(seed):
    # flooding (the loopy code path, batched exp/log and its underflow fallback)
    # converges to the exact answer on a tree, also when energies are huge
    from factorebm.compiled import Plan
    from test_bp_support import random_forest
    g = random_forest(seed + 300, n_vars=7, inf_prob=0.1)
    rng = np.random.default_rng(seed)
    scale = [1.0, 300.0, 3000.0][seed % 3]
    for f in range(g.n_factors):
        t = g.factor_energies(f)
        g.set_factor_energies(f, np.where(np.isinf(t), np.inf, rng.normal(scale=scale, size=t.shape)))
    try:
        ref = exhaustive_inference(g, beta=1.0)
    except ValueError:
        return
    cg = g.compile()
    flood = Plan(False, np.full(1, -1, dtype=np.int64), cg.plan([]).order)
    for damping in (0.0, 0.5):
        v2f, f2v, it, delta, exact = cg.run_bp(cg.unary, flood, 1.0, False, max_iter=400,
                                               damping=damping, tol=1e-12)
        assert not exact and delta <= 1e-12
        var_b, _ = cg.beliefs(cg.unary, v2f, f2v)
        p, _, _ = cg.variable_gibbs(var_b, 1.0)
        for v, name in enumerate(g.variables):
            np.testing.assert_allclose(p[cg.var_state_offset[v]:cg.var_state_offset[v + 1]],
                                       ref.marginals[name], atol=1e-9)
    # min-sum flooding: beliefs are the exact min-marginals up to a constant
    from factorebm.exhaustive import enumerate_energies
    states, E = enumerate_energies(g)
    v2f, f2v, it, delta, exact = cg.run_bp(cg.unary, flood, np.inf, True, max_iter=400, tol=0.0)
    var_b, _ = cg.beliefs(cg.unary, v2f, f2v)
    for v, name in enumerate(g.variables):
        mm = np.array([E[states[:, v] == k].min() for k in range(g.cardinality(name))])
        b = var_b[cg.var_state_offset[v]:cg.var_state_offset[v + 1]]
        np.testing.assert_allclose(b - b.min(), mm - mm.min(), rtol=1e-12, atol=1e-9 * scale)


def _not_equal_triangle():
    """Three binary variables pairwise "not equal": no assignment has finite energy."""
    g = fe.FactorGraph()
    for n in "abc":
        g.add_variable(n, 2)
    for s in ("ab", "bc", "ca"):
        g.add_factor(list(s), np.array([[np.inf, 0.0], [0.0, np.inf]]))
    return g


def test_infeasible_loopy_graph_warns_in_min_sum():
    g = _not_equal_triangle()
    with pytest.raises(ValueError, match="finite energy"):
        exhaustive_inference(g)
    with pytest.warns(RuntimeWarning, match="no finite-energy assignment.*may be infeasible"):
        r = fe.min_sum(g)
    assert not r.exact and r.energy == np.inf
    # a feasible loopy graph with forbidden states does not warn
    h = _not_equal_triangle()
    h.set_factor_energies(2, np.array([[0.0, 0.0], [0.0, np.inf]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = fe.min_sum(h)
    assert np.isfinite(r.energy) and r.energy == exhaustive_inference(h).energy



def test_infeasible_loopy_graph_warns_in_sum_product():
    # issue 9: BP converges to uniform beliefs and F = 0 here, as if nothing were wrong
    g = _not_equal_triangle()
    for schedule in ("flooding", "residual"):
        with pytest.warns(RuntimeWarning, match="sum_product: .*no finite-energy assignment.*infeasible"):
            fe.sum_product(g, beta=1.0, schedule=schedule)
    # a feasible loopy graph with forbidden states does not warn
    h = _not_equal_triangle()
    h.set_factor_energies(2, np.array([[0.0, 0.0], [0.0, np.inf]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = fe.sum_product(h, beta=1.0, damping=0.3, tol=1e-12, max_iter=1000)
    assert np.isfinite(m.free_energy)


def test_infeasible_forest_decode_is_an_error(monkeypatch):
    # on a forest the belief check already raises; should a decoded assignment still have
    # infinite energy there, min_sum raises rather than returning it
    import factorebm.inference as inf
    g = fe.FactorGraph()
    for n in "abc":
        g.add_variable(n, 2)
    g.add_factor(["a", "b"], np.array([[np.inf, 0.0], [0.0, np.inf]]))
    g.add_factor(["b", "c"], np.array([[np.inf, np.inf], [np.inf, np.inf]]))
    with pytest.raises(ValueError, match="no assignment has finite energy"):
        fe.min_sum(g)
    monkeypatch.setattr(inf, "_infeasible", lambda *a: None)
    with pytest.raises(ValueError, match="no finite-energy assignment was found"):
        fe.min_sum(g)
    with pytest.raises(ValueError, match="no finite-energy assignment was found given the evidence"):
        fe.min_sum(g, evidence={"a": 0})
