"""Exact inference on forests against brute-force enumeration (to 1e-9)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import logsumexp

import factorebm as fe
from factorebm.exhaustive import (enumerate_energies, exhaustive_inference,
                                  exhaustive_most_offending)

from test_bp_support import full_assignment, max_arity, random_evidence, random_forest

BETAS = [0.3, 1.0, 3.5]
SEEDS = range(60)


def _check_forest(g, evidence):
    ref = exhaustive_inference(g, evidence=evidence)
    r = fe.min_sum(g, evidence=evidence)
    assert r.exact and r.converged
    assert abs(r.energy - ref.energy) <= 1e-9 * max(1.0, abs(ref.energy))
    assert abs(g.energy(full_assignment(r)) - r.energy) <= 1e-9 * max(1.0, abs(r.energy))
    assert set(r.assignment) == set(g.visible_variables)
    assert set(r.latent) == set(g.latent_variables)
    resolved = g._resolve(evidence)
    for v, k in resolved.items():
        name = g.variables[v]
        assert full_assignment(r)[name] == k
    # min-marginals: lowest energy with the variable in each state
    states, E = enumerate_energies(g, evidence)
    for v, name in enumerate(g.variables):
        mm = np.array([E[states[:, v] == k].min() if (states[:, v] == k).any() else np.inf
                       for k in range(g.cardinality(name))])
        np.testing.assert_allclose(r.min_marginals[name], mm, rtol=1e-9, atol=1e-9)
    for beta in BETAS:
        ref = exhaustive_inference(g, beta=beta, evidence=evidence)
        m = fe.sum_product(g, beta=beta, evidence=evidence)
        assert m.exact and m.converged
        assert abs(m.free_energy - ref.free_energy) <= 1e-9 * max(1.0, abs(ref.free_energy))
        assert fe.free_energy(g, beta=beta, evidence=evidence) == m.free_energy
        for name in g.variables:
            np.testing.assert_allclose(m.marginals[name], ref.marginals[name], rtol=0, atol=1e-9)
        assert len(m.factor_beliefs) == g.n_factors
        for b, b_ref in zip(m.factor_beliefs, ref.factor_beliefs):
            assert b.shape == b_ref.shape
            np.testing.assert_allclose(b, b_ref, rtol=0, atol=1e-9)


def test_random_forests_cover_what_the_issue_asks():
    # >= 50 forests exercise message passing, with ternary factors, latent variables and evidence
    graphs = [random_forest(seed) for seed in SEEDS]
    evidence = [random_evidence(g, seed) for seed, g in zip(SEEDS, graphs)]
    assert all(g.n_variables >= 3 for g in graphs)
    assert sum(max_arity(g) >= 2 for g in graphs) >= 50
    assert sum(max_arity(g) == 3 for g in graphs) >= 10
    assert sum(bool(g.latent_variables) for g in graphs) >= 20
    assert sum(bool(ev) for ev in evidence) >= 50
    cards = {g.cardinality(n) for g in graphs for n in g.variables}
    assert cards == {2, 3, 4}
    for g, ev in zip(graphs, evidence):
        assert not any(g.is_latent(n) for n in ev)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_forest_matches_brute_force(seed):
    g = random_forest(seed)
    _check_forest(g, None)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_forest_with_evidence_matches_brute_force(seed):
    g = random_forest(seed)
    _check_forest(g, random_evidence(g, seed))


@pytest.mark.parametrize("seed", range(40))
def test_most_offending_matches_brute_force(seed):
    g = random_forest(seed, n_vars=int(np.random.default_rng(seed).integers(2, 7)))
    if not g.visible_variables:
        g.add_variable("extra", 2)
    target = fe.min_sum(g).assignment
    # also a target that is not the minimizer
    states, E = enumerate_energies(g)
    row = states[np.flatnonzero(np.isfinite(E))[-1]]
    other = {n: int(row[v]) for v, n in enumerate(g.variables) if not g.is_latent(n)}
    for tgt in (target, other):
        _, e_ref = exhaustive_most_offending(g, tgt)
        if not np.isfinite(e_ref):
            with pytest.raises(ValueError):
                fe.most_offending(g, tgt)
            continue
        a, e = fe.most_offending(g, tgt)
        assert abs(e - e_ref) <= 1e-9 * max(1.0, abs(e_ref))
        assert set(a) == set(g.visible_variables)
        assert any(a[n] != g._resolve(tgt)[g.variables.index(n)] for n in a)
        # the energy is that of the returned visible part with the latent part minimized
        assert abs(exhaustive_inference(g, evidence=a).energy - e) <= 1e-9 * max(1.0, abs(e))


def test_latent_free_energy_is_F_of_Y():
    # F(Y) = -(1/beta) log sum_z exp(-beta E(Y, z)) by clamping Y
    for seed in range(10):
        g = random_forest(seed + 100, n_vars=5, latent_prob=0.5, inf_prob=0.0)
        visible = g.visible_variables
        states, E = enumerate_energies(g)
        y = {n: int(states[seed % len(E), g.variables.index(n)]) for n in visible}
        sel = np.ones(len(E), dtype=bool)
        for n, k in y.items():
            sel &= states[:, g.variables.index(n)] == k
        for beta in BETAS:
            want = -logsumexp(-beta * E[sel]) / beta
            assert abs(fe.free_energy(g, beta=beta, evidence=y) - want) <= 1e-9 * max(1, abs(want))
        assert abs(fe.min_sum(g, evidence=y).energy - E[sel].min()) <= 1e-9 * max(1, abs(E[sel].min()))


def test_cycle_cut_by_evidence_is_exact():
    rng = np.random.default_rng(7)
    g = fe.FactorGraph()
    for n in "abcd":
        g.add_variable(n, 3)
    for s in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]:
        g.add_factor(list(s), rng.normal(size=(3, 3)))
    g.add_factor(["a", "b", "d"], rng.normal(size=(3, 3, 3)))
    assert not fe.min_sum(g).exact
    for ev in ({"b": 1, "d": 0}, {"a": 0, "c": 2}, {"b": 2, "c": 0}):
        _check_forest(g, ev)


def test_free_energy_at_large_beta_approaches_min_energy():
    for seed in range(8):
        g = random_forest(seed + 200, n_vars=6)
        n = len(enumerate_energies(g)[1])
        emin = exhaustive_inference(g).energy
        prev = None
        for beta in (1.0, 10.0, 100.0, 1e4, 1e6):
            F = fe.free_energy(g, beta=beta)
            # emin - log(n)/beta <= F <= emin, and F rises toward emin as beta grows
            assert emin - np.log(n) / beta - 1e-9 <= F <= emin + 1e-9
            if prev is not None:
                assert F >= prev - 1e-9
            prev = F
        assert abs(F - emin) <= 1e-5


def _chain(n, K, scale, seed, inf_prob):
    rng = np.random.default_rng(seed)
    U = rng.normal(scale=scale, size=(n, K))
    P = rng.normal(scale=scale, size=(n - 1, K, K))
    P[rng.random(P.shape) < inf_prob] = np.inf
    g = fe.FactorGraph()
    for t in range(n):
        g.add_variable(t, K)
        g.add_factor([t], U[t])
    for t in range(n - 1):
        g.add_factor([t, t + 1], P[t])
    return g, U, P


def _lse(x, axis):
    """log sum exp along ``axis`` in plain numpy (-inf where every entry is -inf)."""
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis) + np.log(np.exp(x - m).sum(axis=axis))


def _chain_forward_backward(U, P, backward=True):
    """Log-space forward-backward on a chain: (log Z, marginals (n, K) or None).

    a[t, j] is log sum over y_0..y_t with y_t = j of exp(-E), b[t, j] the same
    for the part after t given y_t = j, each shifted to a maximum of 0 at every
    position (the shifts of a summed into log Z), so that nothing of order
    log Z enters the marginals p_t ~ exp(a_t + b_t).
    """
    n, K = U.shape
    a = np.empty((n, K))
    a[0] = -U[0]
    logZ = 0.0
    for t in range(1, n):
        shift = a[t - 1].max()
        logZ += shift
        a[t] = _lse(a[t - 1][:, None] - shift - P[t - 1], 0) - U[t]
    logZ += _lse(a[-1], 0)
    if not backward:
        return logZ, None
    b = np.zeros((n, K))
    for t in range(n - 2, -1, -1):
        c = _lse(-P[t] + (b[t + 1] - U[t + 1])[None, :], 1)
        b[t] = c - c.max()
    logp = a + b
    p = np.exp(logp - logp.max(1, keepdims=True))
    return logZ, p / p.sum(1, keepdims=True)


def test_chain_forward_backward_reference_matches_brute_force():
    g, U, P = _chain(5, 3, 2.0, 3, 0.2)
    logZ, p = _chain_forward_backward(U, P)
    ref = exhaustive_inference(g, beta=1.0)
    assert abs(-logZ - ref.free_energy) <= 1e-12 * max(1, abs(logZ))
    for t in range(5):
        np.testing.assert_allclose(p[t], ref.marginals[t], atol=1e-12)


def test_long_chain_large_energies():
    g, U, P = _chain(10_000, 3, 1e4, 0, 0.05)
    r = fe.min_sum(g)
    d = U[0].copy()
    for t in range(1, len(U)):
        d = (d[:, None] + P[t - 1]).min(0) + U[t]
    assert np.isfinite(r.energy) and r.exact
    assert abs(r.energy - d.min()) <= 1e-9 * abs(d.min())
    assert abs(g.energy(r.assignment) - r.energy) <= 1e-9 * abs(r.energy)
    m = fe.sum_product(g, beta=1.0)
    logZ, p_ref = _chain_forward_backward(U, P)
    assert np.isfinite(m.free_energy)
    assert abs(m.free_energy + logZ) <= 1e-9 * abs(m.free_energy)
    p = np.array([m.marginals[t] for t in range(len(U))])
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    # with energies of order 1e4 most marginals are 0 or 1; some positions are uncertain
    assert ((p_ref > 1e-6) & (p_ref < 1 - 1e-6)).any()
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=1e-9)


def test_very_long_chain_no_underflow():
    g, U, P = _chain(100_000, 2, 3.0, 1, 0.0)
    m = fe.sum_product(g, beta=1.0)
    p = np.array([m.marginals[t] for t in range(len(U))])
    assert np.isfinite(m.free_energy) and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    # the free energy of a 1e5 chain is of order -1e5: compare with a log-space forward pass
    logZ, _ = _chain_forward_backward(U, P, backward=False)
    assert abs(m.free_energy + logZ) <= 1e-9 * abs(m.free_energy)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.floats(0.05, 20.0), st.sampled_from([0.0, 0.2]))
def test_property_forest(seed, beta, inf_prob):
    g = random_forest(seed, inf_prob=inf_prob)
    m = fe.sum_product(g, beta=beta)
    r = fe.min_sum(g)
    ref = exhaustive_inference(g, beta=beta)
    n = len(enumerate_energies(g)[1])
    for name in g.variables:
        assert abs(m.marginals[name].sum() - 1.0) <= 1e-12
        assert (m.marginals[name] >= 0).all()
    # Gibbs inequality: Emin - log(n)/beta <= F <= Emin
    assert r.energy - np.log(n) / beta - 1e-9 <= m.free_energy <= r.energy + 1e-9
    assert abs(m.free_energy - ref.free_energy) <= 1e-9 * max(1, abs(ref.free_energy))
    # forbidden combinations get zero belief
    for (scope, table), b in zip(g.factors, m.factor_beliefs):
        assert (b[np.isinf(table)] == 0).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.floats(-50, 50))
def test_property_energy_shift(seed, c):
    # adding a constant to one factor shifts E and F by it and leaves marginals unchanged
    g = random_forest(seed, inf_prob=0.0)
    if g.n_factors == 0:
        g.add_factor([g.variables[0]], np.zeros(g.cardinality(g.variables[0])))
    m0 = fe.sum_product(g, beta=1.3)
    e0 = fe.min_sum(g).energy
    g.set_factor_energies(0, g.factor_energies(0) + c)
    m1 = fe.sum_product(g, beta=1.3)
    assert abs(fe.min_sum(g).energy - (e0 + c)) <= 1e-9 * max(1, abs(e0) + abs(c))
    assert abs(m1.free_energy - (m0.free_energy + c)) <= 1e-9 * max(1, abs(m0.free_energy) + abs(c))
    for name in g.variables:
        np.testing.assert_allclose(m1.marginals[name], m0.marginals[name], atol=1e-9)
