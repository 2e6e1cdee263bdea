"""The vectorized result assembly of sum_product / min_sum: per-segment arrays, factor
beliefs in insertion order, and the fused Gibbs / Bethe terms, against plain loops."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import factorebm as fe
from factorebm.compiled import SegmentViews
from factorebm.exhaustive import exhaustive_inference


def _mixed_graph(seed, n_vars=7, n_factors=12, latent=False):
    """Unary, pairwise and ternary factors interleaved, cardinalities 2-4, a few +inf entries."""
    rng = np.random.default_rng(seed)
    g = fe.FactorGraph()
    cards = rng.integers(2, 5, size=n_vars)
    for v in range(n_vars):
        g.add_variable(f"x{v}", int(cards[v]), latent=bool(latent and v % 3 == 0))
    for _ in range(n_factors):
        arity = int(rng.integers(1, 4))
        scope = [f"x{v}" for v in rng.choice(n_vars, size=arity, replace=False)]
        table = rng.normal(size=tuple(int(cards[int(s[1:])]) for s in scope))
        if table.size > 2 and rng.random() < 0.3:
            table.flat[int(rng.integers(table.size))] = np.inf
        g.add_factor(scope, table)
    return g


def test_segment_views_match_slices_for_mixed_sizes_and_shapes():
    rng = np.random.default_rng(0)
    shapes = [tuple(int(c) for c in rng.integers(1, 4, size=rng.integers(1, 4))) for _ in range(40)]
    sizes = np.array([int(np.prod(s)) for s in shapes])
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    padded = np.zeros((40, 3), dtype=np.int64)
    for j, s in enumerate(shapes):
        padded[j, :len(s)] = s
    x = rng.normal(size=int(offsets[-1]))
    views = SegmentViews(offsets, padded)(x)
    assert len(views) == 40
    for j, s in enumerate(shapes):
        np.testing.assert_array_equal(views[j], x[offsets[j]:offsets[j + 1]].reshape(s))
    flat = SegmentViews(offsets)(x)
    for j in range(40):
        np.testing.assert_array_equal(flat[j], x[offsets[j]:offsets[j + 1]])


def test_segment_views_uniform_is_a_reshape_of_the_input():
    x = np.arange(12.0)
    views = SegmentViews(np.arange(0, 13, 3))(x)
    assert [v.tolist() for v in views] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert SegmentViews(np.zeros(1, dtype=np.int64))(x) == []


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([0.4, 1.0, 2.5]))
def test_factor_beliefs_and_free_energy_match_brute_force_on_mixed_forests(seed, beta):
    g = _mixed_graph(seed, n_vars=6, n_factors=5, latent=True)
    try:
        ref = exhaustive_inference(g, beta=beta)
    except ValueError:
        with pytest.raises(ValueError, match="finite energy"):
            fe.sum_product(g, beta=beta)
        return
    m = fe.sum_product(g, beta=beta, max_iter=500, tol=1e-13)
    assert len(m.factor_beliefs) == len(g.factors)
    for f, b in enumerate(m.factor_beliefs):
        assert b.shape == tuple(g.cardinality(v) for v in g.factor_scope(f))
    if m.exact:
        assert abs(m.free_energy - ref.free_energy) <= 1e-9 * max(1.0, abs(ref.free_energy))
        for f, b in enumerate(m.factor_beliefs):
            np.testing.assert_allclose(b, ref.factor_beliefs[f], atol=1e-9)
        for name in g.variables:
            np.testing.assert_allclose(m.marginals[name], ref.marginals[name], atol=1e-9)


def test_loopy_results_are_consistent_and_results_do_not_alias():
    g = _mixed_graph(3, n_vars=5, n_factors=14)
    m = fe.sum_product(g, beta=1.0, max_iter=300, damping=0.3, tol=1e-12)
    for f, b in enumerate(m.factor_beliefs):
        scope = g.factor_scope(f)
        assert b.shape == tuple(g.cardinality(s) for s in scope)
        assert abs(b.sum() - 1.0) <= 1e-12
        if m.converged:
            for axis, name in enumerate(scope):
                other = tuple(a for a in range(b.ndim) if a != axis)
                np.testing.assert_allclose(b.sum(axis=other), m.marginals[name], atol=1e-7)
    # unary factor beliefs are copies: editing one leaves the marginal unchanged
    unary = [f for f in range(len(g.factors)) if len(g.factor_scope(f)) == 1]
    if unary:
        f = unary[0]
        name = g.factor_scope(f)[0]
        before = m.marginals[name].copy()
        m.factor_beliefs[f][...] = -1.0
        np.testing.assert_array_equal(m.marginals[name], before)
    r = fe.min_sum(g, max_iter=300, damping=0.3)
    assert set(r.assignment) == set(g.variables) and r.latent == {}
    for name in g.variables:
        assert r.min_marginals[name].shape == (g.cardinality(name),)
        assert r.min_marginals[name].min() == pytest.approx(r.energy)


def test_min_sum_splits_visible_and_latent_in_variable_order():
    g = _mixed_graph(5, n_vars=8, n_factors=8, latent=True)
    try:
        ref = exhaustive_inference(g)
    except ValueError:
        pytest.fail("seed 5 should be feasible")
    r = fe.min_sum(g, max_iter=400)
    assert list(r.assignment) == [n for n in g.variables if n in g.visible_variables]
    assert list(r.latent) == [n for n in g.variables if n in g.latent_variables]
    assert r.energy >= ref.energy - 1e-9


def test_threads_give_the_same_results():
    g = _mixed_graph(11, n_vars=9, n_factors=16)
    a = fe.sum_product(g, beta=0.7, max_iter=50, damping=0.5, tol=0.0, n_threads=1)
    b = fe.sum_product(g, beta=0.7, max_iter=50, damping=0.5, tol=0.0, n_threads=2)
    assert abs(a.free_energy - b.free_energy) <= 1e-12 * max(1.0, abs(a.free_energy))
    for x, y in zip(a.factor_beliefs, b.factor_beliefs):
        np.testing.assert_allclose(x, y, atol=1e-12)


def test_mixed_forests_against_brute_force_over_fixed_seeds():
    n_exact = 0
    for seed in range(40):
        g = _mixed_graph(seed, n_vars=6, n_factors=5, latent=True)
        try:
            ref = exhaustive_inference(g, beta=1.3)
        except ValueError:
            continue
        m = fe.sum_product(g, beta=1.3)
        if not m.exact:
            continue
        n_exact += 1
        assert abs(m.free_energy - ref.free_energy) <= 1e-9 * max(1.0, abs(ref.free_energy))
        for f, b in enumerate(m.factor_beliefs):
            np.testing.assert_allclose(b, ref.factor_beliefs[f], atol=1e-9)
    assert n_exact >= 10
