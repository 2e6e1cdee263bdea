"""Loopy schedules (flooding, residual, TRW-S), TRW-S's lower bound, and Potts messages.

Against brute force on small loopy graphs, against a max-flow minimum cut on binary
submodular grids (where TRW-S is exact), and the O(K) Potts path against the dense O(K^2)
path of the same kernel.
"""
import warnings

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

import factorebm as fe
from factorebm.compiled import Plan
from factorebm.exhaustive import exhaustive_inference

from test_bp_support import full_assignment


def grid_edges(rows, cols):
    ids = np.arange(rows * cols).reshape(rows, cols)
    return np.concatenate([np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1),
                           np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1)])


def hard_pairwise(seed):
    """A small frustrated pairwise graph: a grid plus a long edge and a parallel factor, mixed
    cardinalities, some latent variables, some +inf (possibly infeasible)."""
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(2, 4)), int(rng.integers(2, 5))
    n = rows * cols
    cards = rng.integers(2, 4, size=n)
    g = fe.FactorGraph()
    g.add_variables([f"v{i}" for i in range(n)], cards, latent=rng.random(n) < 0.2)
    for i in range(n):
        u = rng.normal(scale=2.0, size=cards[i])
        u[rng.random(cards[i]) < 0.1] = np.inf
        g.add_factor([f"v{i}"], u)
    for a, b in grid_edges(rows, cols).tolist() + [[0, n - 1], [0, 1]]:
        t = rng.normal(scale=3.0, size=(cards[a], cards[b]))
        t[rng.random(t.shape) < 0.12] = np.inf
        g.add_factor([f"v{a}", f"v{b}"], t)
    return g


@pytest.mark.parametrize("seed", range(40))
def test_trws_bound_brackets_the_brute_force_minimum(seed):
    g = hard_pairwise(seed)
    evidence = {"v1": 0} if seed % 3 == 0 and not g.is_latent("v1") else None
    try:
        ref = exhaustive_inference(g, evidence=evidence).energy
    except ValueError:
        ref = np.inf
    for schedule in ("trws", "residual", "flooding"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # loopy BP may find nothing finite
            try:
                r = fe.min_sum(g, evidence=evidence, schedule=schedule, max_iter=60,
                               damping=0.0 if schedule == "trws" else 0.3)
            except ValueError:
                assert ref == np.inf                          # only an infeasible graph may raise
                continue
        assert r.schedule == schedule and not r.exact
        tol = 1e-9 * max(1.0, abs(ref)) if np.isfinite(ref) else 0.0
        assert r.lower_bound <= ref + tol
        assert ref <= r.energy + tol
        assert r.energy == pytest.approx(g.energy(full_assignment(r)), rel=1e-12, abs=1e-12)
        if schedule != "trws":
            assert r.lower_bound == -np.inf


@pytest.mark.parametrize("seed", range(6))
def test_trws_energy_never_increases_and_bound_never_decreases(seed):
    rng = np.random.default_rng(seed)
    K, n = 3, 5
    g = fe.FactorGraph()
    g.add_variables(n * n, K)
    g.add_factors(np.arange(n * n)[:, None], rng.normal(size=(n * n, K)))
    g.add_factors(grid_edges(n, n), rng.normal(scale=1.5, size=(2 * n * (n - 1), K, K)))
    energies, bounds = [], []
    for it in range(1, 12):
        r = fe.min_sum(g, schedule="trws", max_iter=it, tol=0.0)
        energies.append(r.energy)
        bounds.append(r.lower_bound)
    assert all(b <= a for a, b in zip(energies, energies[1:]))
    assert all(b >= a for a, b in zip(bounds, bounds[1:]))
    assert bounds[-1] <= energies[-1]
    # the kernel's per-pass trace agrees: the kept energy is the running minimum of the passes
    cg = g.compile()
    *_, trace_e, trace_b = cg.run_trws(cg.unary, 11, 0.0)
    assert trace_e.min() == pytest.approx(energies[-1], rel=1e-12, abs=1e-12)
    assert np.all(np.diff(trace_b) >= 0)
    assert trace_b[-1] == pytest.approx(bounds[-1], rel=1e-12, abs=1e-12)


def min_cut_energy(unary, edges, w):
    """min_x sum_i unary[i, x_i] + sum_e w_e [x_a != x_b] for binary x, w >= 0 (integers)."""
    n = len(unary)
    s, t = n, n + 1
    base = unary.min(1)
    rows = np.concatenate([np.full(n, s), np.arange(n), edges[:, 0], edges[:, 1]])
    cols = np.concatenate([np.arange(n), np.full(n, t), edges[:, 1], edges[:, 0]])
    cap = np.concatenate([unary[:, 1] - base, unary[:, 0] - base, w, w]).astype(np.int32)
    return maximum_flow(csr_matrix((cap, (rows, cols)), shape=(n + 2, n + 2)), s, t).flow_value \
        + base.sum()


@pytest.mark.parametrize("seed", range(4))
def test_trws_reaches_the_min_cut_optimum_on_submodular_binary_grids(seed):
    rng = np.random.default_rng(seed)
    n = 12
    unary = rng.integers(0, 1000, size=(n * n, 2)).astype(float)
    edges = grid_edges(n, n)
    w = rng.integers(0, 600, size=len(edges)).astype(float)
    g = fe.FactorGraph()
    g.add_variables(n * n, 2)
    g.add_factors(np.arange(n * n)[:, None], unary)
    g.add_factors(edges, w[:, None, None] * (1.0 - np.eye(2)))     # attractive: submodular
    opt = min_cut_energy(unary, edges, w)
    r = fe.min_sum(g, schedule="trws", max_iter=500)
    assert r.energy == opt
    assert opt - 1e-6 <= r.lower_bound <= opt and r.converged


def test_every_schedule_is_exact_on_a_forest():
    rng = np.random.default_rng(3)
    g = fe.FactorGraph()
    g.add_variables(7, 3)
    g.add_factors(np.arange(7)[:, None], rng.normal(size=(7, 3)))
    g.add_factors([[0, 1], [1, 2], [1, 3], [3, 4], [5, 6]], rng.normal(size=(5, 3, 3)))
    ref = exhaustive_inference(g, beta=1.0)
    for schedule in ("flooding", "residual", "trws"):
        r = fe.min_sum(g, schedule=schedule)
        assert r.exact and r.energy == pytest.approx(ref.energy, abs=1e-12)
        assert r.lower_bound == r.energy
    m = fe.sum_product(g, schedule="residual")
    assert m.exact and m.free_energy == pytest.approx(ref.free_energy, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_residual_kernel_is_exact_on_a_tree_and_matches_flooding_on_loops(seed):
    # on a tree, forced through the loopy path, residual BP converges to the exact answers
    rng = np.random.default_rng(seed)
    g = fe.FactorGraph()
    g.add_variables(8, 3)
    g.add_factors(np.arange(8)[:, None], rng.normal(size=(8, 3)))
    parents = [int(rng.integers(0, i)) for i in range(1, 8)]
    g.add_factors([[p, i + 1] for i, p in enumerate(parents)], rng.normal(size=(7, 3, 3)))
    cg = g.compile()
    flood = Plan(False, np.full(1, -1, dtype=np.int64), cg.plan([]).order)
    ref = exhaustive_inference(g, beta=1.0)
    v2f, f2v, it, delta, _ = cg.run_bp(cg.unary, flood, 1.0, False, max_iter=100, tol=1e-13,
                                       schedule="residual")
    assert delta <= 1e-13
    var_b, _ = cg.beliefs(cg.unary, v2f, f2v, factors=False)
    for v in range(8):
        b = var_b[cg.var_state_offset[v]:cg.var_state_offset[v + 1]]
        p = np.exp(-(b - b.min()))
        np.testing.assert_allclose(p / p.sum(), ref.marginals[v], atol=1e-9)
    # loopy: the same fixed point as flooding, both semirings
    h = hard_pairwise(seed + 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            m1 = fe.sum_product(h, damping=0.5, tol=1e-11, max_iter=3000)
            m2 = fe.sum_product(h, damping=0.5, tol=1e-11, max_iter=3000, schedule="residual")
        except ValueError:
            return
    if m1.converged and m2.converged:
        assert m2.free_energy == pytest.approx(m1.free_energy, abs=1e-7)
        for v in h.variables:
            np.testing.assert_allclose(m2.marginals[v], m1.marginals[v], atol=1e-7)


def potts_graph(seed, shared, K=4, inf_c=False, d=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    n = 4
    edges = grid_edges(n, n)
    g = fe.FactorGraph()
    g.add_variables(n * n, K)
    u = rng.normal(scale=scale, size=(n * n, K))
    u[rng.random(u.shape) < 0.1] = np.inf
    g.add_factors(np.arange(n * n)[:, None], u)
    c = scale * (np.full(len(edges), 0.8) if shared else rng.uniform(0.0, 2.0, size=len(edges)))
    if inf_c:
        c[::3] = np.inf                                   # hard equality on some factors
    T = np.where(np.eye(K, dtype=bool), d, d + c[:, None, None])
    g.add_factors(edges, T[0] if shared else T)
    return g


@pytest.mark.parametrize("shared, inf_c, d, scale", [
    (True, False, 0.0, 1.0), (False, False, 0.0, 1.0), (False, True, 0.0, 1.0), (True, False, -1.3, 1.0),
    (False, False, 0.0, 900.0),            # scaled sums underflow: the exact fallback
])
def test_potts_messages_equal_the_dense_path(shared, inf_c, d, scale):
    g = potts_graph(0, shared, inf_c=inf_c, d=d, scale=scale)
    cg = g.compile()
    assert np.all(cg.fac_potts >= 0)
    potts = cg.fac_potts.copy()
    flood = Plan(False, np.full(1, -1, dtype=np.int64), cg.plan([]).order)
    for min_sum, beta in ((True, np.inf), (False, 1.0), (False, 30.0)):
        for schedule in ("flooding", "residual"):
            out = []
            for fp in (potts, np.full_like(potts, -1.0)):
                cg.fac_potts = fp
                out.append(cg.run_bp(cg.unary, flood, beta, min_sum, max_iter=25, damping=0.4,
                                     tol=0.0, schedule=schedule))
            np.testing.assert_allclose(out[0][1], out[1][1], rtol=0, atol=1e-12 * scale)
            np.testing.assert_allclose(out[0][0], out[1][0], rtol=0, atol=1e-12 * scale)
    out = []
    for fp in (potts, np.full_like(potts, -1.0)):
        cg.fac_potts = fp
        out.append(cg.run_trws(cg.unary, 20, 0.0))
    np.testing.assert_array_equal(out[0][4], out[1][4])
    assert out[0][5] == pytest.approx(out[1][5], abs=1e-9)


def test_potts_detection():
    g = fe.FactorGraph()
    g.add_variables(4, 3)
    g.add_variable(4, 2)
    tabs = [2.0 + 0.5 * (1 - np.eye(3)),                 # Potts, d = 2, c = 0.5
            np.where(np.eye(3) > 0, 0.0, np.inf),        # hard equality: c = inf
            np.zeros((3, 3)),                            # c = 0
            -0.5 * (1 - np.eye(3)),                      # repulsive: not Potts here
            np.where(np.eye(3) > 0, np.inf, 0.0),        # diagonal forbidden: not Potts
            np.arange(9.0).reshape(3, 3)]
    for t in tabs:
        g.add_factor([0, 1], t)
    g.add_factor([0, 4], np.ones((3, 2)))                # not square
    g.add_factor([0, 1, 2], np.zeros((3, 3, 3)))         # not pairwise
    cg = g.compile()
    np.testing.assert_array_equal(cg.fac_potts, [0.5, np.inf, 0.0, -1, -1, -1, -1, -1])
    assert cg.table_min[0] == 2.0


@pytest.mark.parametrize("call, words", [
    (lambda g: fe.min_sum(g, schedule="bogus"), ["unknown schedule 'bogus'", "min_sum"]),
    (lambda g: fe.sum_product(g, schedule="trws"), ["unknown schedule 'trws'", "use min_sum"]),
    (lambda g: fe.free_energy(g, schedule=None), ["unknown schedule None"]),
    (lambda g: fe.min_sum(g, schedule="trws", damping=0.5), ["damping", "trws"]),
    (lambda g: fe.min_sum(g, schedule="trws"), ["pairwise", "factor 3", "('a', 'b', 'c')"]),
])
def test_schedule_bad_input(call, words):
    g = fe.FactorGraph()
    g.add_variables(["a", "b", "c"], 2)
    g.add_factors([["a", "b"], ["b", "c"], ["c", "a"]], np.ones((2, 2)))
    g.add_factor(["a", "b", "c"], np.zeros((2, 2, 2)))
    with pytest.raises(ValueError) as info:
        call(g)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_trws_with_latent_variables_and_evidence_matches_brute_force():
    rng = np.random.default_rng(11)
    g = fe.FactorGraph()
    g.add_variables(9, 3, latent=np.arange(9) % 4 == 1)
    g.add_factors(np.arange(9)[:, None], rng.normal(size=(9, 3)))
    g.add_factors(grid_edges(3, 3), 0.9 * (1.0 - np.eye(3)))
    ev = {0: 2, 8: 1}
    ref = exhaustive_inference(g, evidence=ev)
    r = fe.min_sum(g, evidence=ev, schedule="trws", max_iter=100)
    assert r.assignment[0] == 2 and r.assignment[8] == 1
    assert r.lower_bound <= ref.energy + 1e-9 and ref.energy <= r.energy + 1e-9
    assert set(r.latent) == {1, 5}


def test_flooding_blocks_of_mixed_factors_give_the_same_messages_at_any_block_size_and_threads():
    # Potts, dense pairwise and arity-3 factors interleaved: the sweep cuts them into blocks
    # of one kind; how many factors a block holds must not change a single message
    from factorebm import _bp
    rng = np.random.default_rng(5)
    g = fe.FactorGraph()
    g.add_variables(30, 3)
    g.add_factors(np.arange(30)[:, None], rng.normal(size=(30, 3)))
    for i in range(29):
        if i % 3 == 0:
            g.add_factor([i, i + 1], 0.5 * (1.0 - np.eye(3)))
        elif i % 3 == 1:
            g.add_factor([i, i + 1], rng.normal(size=(3, 3)))
        else:
            g.add_factor([i, i + 1, (i + 7) % 30], rng.normal(size=(3, 3, 3)))
        g.add_factor([i, (i + 5) % 30], 0.3 * (1.0 - np.eye(3)))
    cg = g.compile()
    flood = cg.plan([])
    assert not flood.is_forest
    outs = []
    try:
        for block, threads in ((8, 1), (24, 2), (512, 1), (512, 2)):
            _bp._set_block(block)
            for min_sum in (True, False):
                outs.append(cg.run_bp(cg.unary, flood, 1.0, min_sum, max_iter=15, damping=0.3,
                                      tol=0.0, n_threads=threads)[1])
    finally:
        _bp._set_block(512)
    for a, b in zip(outs, outs[2:]):
        np.testing.assert_array_equal(a, b)
