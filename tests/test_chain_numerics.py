"""fe.chain numerics: forward-backward at large beta and extreme energy ranges against
brute force, and 10^5-token sequences at K = 17 for every function."""
import numpy as np
import pytest
from scipy.special import logsumexp

from factorebm import chain
from test_chain import (all_paths, assert_fb_matches_brute_force, brute_gibbs,
                        random_batch)

# Accuracy promised at any beta: free energies to ~1e-12 relative; marginals to the
# rounding of the path energies themselves (beta * |E| * 1e-16, ~1e-12 here).
F_RTOL = 1e-12
M_ATOL = 1e-11


def assert_matches_brute_force(U, tr, off, beta, s0, s1, mask=None):
    assert_fb_matches_brute_force(U, tr, off, beta, s0, s1, mask, f_atol=F_RTOL,
                                  f_rtol=F_RTOL, m_atol=M_ATOL,
                                  pair_atol=M_ATOL * max(1, len(U)))


def gaussian_batch(rng, sigma, max_len=6):
    """random_batch with Gaussian energies of standard deviation sigma (K <= 3 at length 6)."""
    S = int(rng.integers(2, 4 if max_len >= 6 else 6))
    U, tr, off, s0, s1 = random_batch(rng, S=S, max_len=max_len, inf_prob=0.1)
    scale = sigma / 2.0    # random_batch draws N(0, 2^2)
    s0 = None if s0 is None else s0 * scale
    s1 = None if s1 is None else s1 * scale
    return U * scale, tr * scale, off, s0, s1


def brute_gibbs_many(U, tr, s0, s1, beta):
    """Brute force for n sequences of one length T at once: U (n, T, S).

    Returns marginals (n, T, S), free energies (n,) and pairwise marginals summed
    over the sequences (S, S).
    """
    n, T, S = U.shape
    P = all_paths(T, S)
    e = U[:, np.arange(T), P].sum(axis=2)                   # (n, S**T)
    e += tr[P[:, :-1], P[:, 1:]].sum(axis=1) + s0[P[:, 0]] + s1[P[:, -1]]
    with np.errstate(invalid="ignore"):
        logz = logsumexp(-beta * e, axis=1)
        p = np.exp(-beta * e - logz[:, None])
    p[~np.isfinite(logz)] = 0.0
    onehot = (P[:, :, None] == np.arange(S)).astype(float)  # (S**T, T, S)
    marg = np.einsum("np,pts->nts", p, onehot)
    pair = np.zeros((S, S))
    w = p.sum(axis=0)
    for t in range(1, T):
        np.add.at(pair, (P[:, t - 1], P[:, t]), w)
    return marg, -logz / beta, pair


@pytest.mark.parametrize("beta", [30.0, 100.0])
@pytest.mark.parametrize("S", [2, 3])
def test_forward_backward_large_beta_many_chains(S, beta):
    # Gaussian energies of sigma 3 at beta 30 and 100: energy differences of 5-20 units
    # are 150-2000 in the exponent, where scaled probabilities underflow or go
    # subnormal. 3,000 random chains of every length 1..6 (about 1 in 1,000 hit the
    # subnormal range in a way that shows before the fix), +inf entries included.
    rng = np.random.default_rng(int(3000 + 10 * S + beta))
    n = 3000
    tr = rng.normal(size=(S, S)) * 3.0
    tr[rng.random((S, S)) < 0.1] = np.inf
    s0, s1 = rng.normal(size=S) * 3.0, rng.normal(size=S) * 3.0
    for T in range(1, 7):
        U = rng.normal(size=(n, T, S)) * 3.0
        U[rng.random(U.shape) < 0.1] = np.inf
        off = np.arange(n + 1) * T
        marg, free, pair = chain.forward_backward(U.reshape(n * T, S), tr, off, beta, s0, s1,
                                                  return_pairwise=True)
        m_ref, f_ref, p_ref = brute_gibbs_many(U, tr, s0, s1, beta)
        fin = np.isfinite(f_ref)
        assert (np.isinf(free[~fin]) & (free[~fin] > 0)).all()
        err = np.abs(free[fin] - f_ref[fin]) / np.maximum(1.0, np.abs(f_ref[fin]))
        assert err.max() <= F_RTOL, (T, int(np.argmax(err)), err.max())
        np.testing.assert_allclose(marg.reshape(n, T, S), m_ref, atol=M_ATOL, rtol=0)
        np.testing.assert_allclose(pair, p_ref, atol=M_ATOL * n, rtol=0)


@pytest.mark.parametrize("beta", [30.0, 100.0])
@pytest.mark.parametrize("seed", range(8))
def test_forward_backward_large_beta_matches_brute_force(seed, beta):
    # ragged batches with empty sequences, optional start/end and masks
    rng = np.random.default_rng(3000 + seed)
    U, tr, off, s0, s1 = gaussian_batch(rng, 3.0)
    mask = rng.random(U.shape) < 0.85 if seed % 3 == 0 else None
    assert_matches_brute_force(U, tr, off, beta, s0, s1, mask)


@pytest.mark.parametrize("seed", range(10))
def test_forward_backward_every_beta_matches_brute_force(seed):
    rng = np.random.default_rng(3100 + seed)
    U, tr, off, s0, s1 = gaussian_batch(rng, 3.0, max_len=5)
    for beta in (1e-6, 0.05, 7.0, 300.0, 1e4, 1e9):
        assert_matches_brute_force(U, tr, off, beta, s0, s1)


def test_subnormal_forward_value_regression():
    # A forward value of 2.2e-318 (subnormal: ~5 significant digits) while the
    # normalizer stayed above TINY: the row summed to 1 - 5.7e-7 and F was 5.7e-9 low.
    U = np.array([[0, 6.0], [0, 1.3125], [0, 0]])
    tr = np.array([[5.7, np.inf], [np.inf, 0.0]])
    off = np.array([0, 3])
    marg, free = chain.forward_backward(U, tr, off, beta=100.0)
    m_ref, f_ref, _ = brute_gibbs(U, tr, np.zeros(2), np.zeros(2), 100.0)
    assert f_ref == 7.3125
    assert abs(free[0] - f_ref) <= F_RTOL * f_ref
    np.testing.assert_allclose(marg, m_ref, atol=1e-15, rtol=0)
    np.testing.assert_allclose(marg.sum(axis=1), 1.0, atol=1e-15)


@pytest.mark.parametrize("T, x", [(18, 800.0), (12, 300.0), (40, 700.0)])
def test_path_negligible_early_dominant_late(T, x):
    # Two disjoint chains: state 0 starts cheap and pays 50 per step, state 1 starts x
    # above and pays nothing. Early on state 1's weight exp(-x) underflows or is
    # subnormal; by the end it dominates.
    U = np.zeros((T, 2))
    U[0, 1] = x
    tr = np.array([[50.0, np.inf], [np.inf, 0.0]])
    marg, free = chain.forward_backward(U, tr, [0, T], beta=1.0)
    f_ref = -logsumexp([-50.0 * (T - 1), -x])
    assert abs(free[0] - f_ref) <= F_RTOL * abs(f_ref)
    p1 = np.exp(-x - -f_ref)
    np.testing.assert_allclose(marg[:, 1], p1, atol=1e-12, rtol=1e-12)


def test_huge_beta_and_huge_energies_stay_finite():
    # beta * energy overflows float64 (1e200 * 1e200): the exact recursion works in
    # energy units, so F tends to the minimum energy and marginals to the argmin.
    rng = np.random.default_rng(5)
    U = rng.normal(size=(6, 3)) * 1e200
    tr = rng.normal(size=(3, 3)) * 1e200
    off = np.array([0, 6])
    marg, free = chain.forward_backward(U, tr, off, beta=1e200)
    labels, e = chain.viterbi(U, tr, off)
    assert abs(free[0] - e[0]) <= 1e-12 * abs(e[0])
    np.testing.assert_array_equal(marg.argmax(axis=1), labels)
    np.testing.assert_allclose(marg.max(axis=1), 1.0)


# ---------------------------------------------------------------------------
# 10^5-token sequences, K = 17
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def long_chain():
    rng = np.random.default_rng(17)
    T, S = 100_000, 17
    U = rng.normal(size=(T, S)) * 3.0 + 20.0      # realistic scale: all positive, ~20 each
    tr = rng.normal(size=(S, S)) * 2.0
    s0, s1 = rng.normal(size=S), rng.normal(size=S)
    off = np.array([0, T])
    gold = rng.integers(0, S, size=T)
    return U, tr, off, s0, s1, gold


def test_long_sequence_decoders_are_consistent(long_chain):
    U, tr, off, s0, s1, gold = long_chain
    T, S = U.shape
    labels, e = chain.viterbi(U, tr, off, s0, s1)
    assert np.isfinite(e).all() and (labels >= 0).all()
    assert e[0] > 1e6    # the energy of the whole chain, far above any single term
    rel = 1e-12 * abs(e[0])
    assert abs(chain.sequence_energy(U, tr, off, labels, s0, s1)[0] - e[0]) < rel
    mm, e_mm = chain.min_marginals(U, tr, off, s0, s1)
    assert np.isfinite(mm).all()
    np.testing.assert_allclose(mm.min(axis=1), e[0], rtol=1e-12)
    np.testing.assert_allclose(mm[np.arange(T), labels], e[0], rtol=1e-12)
    assert abs(e_mm[0] - e[0]) < rel
    paths, e_k = chain.kbest(U, tr, off, 3, s0, s1)
    assert np.isfinite(e_k).all() and (paths >= 0).all()
    assert abs(e_k[0, 0] - e[0]) < rel
    assert e_k[0, 0] <= e_k[1, 0] <= e_k[2, 0]
    for r in range(3):
        own = chain.sequence_energy(U, tr, off, paths[r], s0, s1)[0]
        assert abs(own - e_k[r, 0]) < rel
    assert len({paths[r].tobytes() for r in range(3)}) == 3
    # the most offending answer against the Viterbi labels is the second best sequence
    mo_labels, e_mo = chain.most_offending(U, tr, off, labels, s0, s1)
    assert abs(e_mo[0] - e_k[1, 0]) < rel
    assert (mo_labels != labels).any()
    assert abs(chain.sequence_energy(U, tr, off, mo_labels, s0, s1)[0] - e_mo[0]) < rel
    # second best min-marginal over the non-Viterbi states is the same energy
    wrong = mm.copy()
    wrong[np.arange(T), labels] = np.inf
    np.testing.assert_allclose(wrong.min(), e_mo[0], rtol=1e-12)
    # loss-augmented: loss 0 is Viterbi; loss 1 trades energy for Hamming distance
    _, e_la0 = chain.loss_augmented_viterbi(U, tr, off, gold, 0.0, s0, s1)
    assert abs(e_la0[0] - e[0]) < rel
    la, e_la = chain.loss_augmented_viterbi(U, tr, off, gold, 1.0, s0, s1)
    assert np.isfinite(e_la).all() and (la >= 0).all()
    assert abs(chain.sequence_energy(U, tr, off, la, s0, s1)[0] - e_la[0]) < rel
    aug = e_la[0] - (la != gold).sum()
    assert aug <= e[0] - (labels != gold).sum() + rel    # it minimizes the augmented energy
    assert e_la[0] >= e[0] - rel


@pytest.mark.parametrize("beta", [1.0, 30.0])
def test_long_sequence_forward_backward(long_chain, beta):
    # beta = 30: energy gaps of 3 sigma are ~270 in the exponent; somewhere along the
    # chain a value leaves the scaled range, so the whole 10^5-token sequence runs
    # through the exact energy-space recursion, which must hold over that length too.
    U, tr, off, s0, s1, _ = long_chain
    T, S = U.shape
    marg, free, pair = chain.forward_backward(U, tr, off, beta, s0, s1, return_pairwise=True)
    _, e = chain.viterbi(U, tr, off, s0, s1)
    assert np.isfinite(free).all() and np.isfinite(marg).all() and np.isfinite(pair).all()
    np.testing.assert_allclose(marg.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(pair.sum(), T - 1, rtol=1e-9)
    assert free[0] <= e[0] + 1e-12 * e[0]
    assert free[0] >= e[0] - T * np.log(S) / beta
    # a prefix against a log-space numpy recursion
    n = 2_000
    la = -beta * (U[0] + s0)
    for t in range(1, n):
        la = logsumexp(la[:, None] - beta * tr, axis=0) - beta * U[t]
    f_ref = -logsumexp(la - beta * s1) / beta
    f_part = chain.forward_backward(U[:n], tr, [0, n], beta, s0, s1)[1][0]
    assert abs(f_part - f_ref) < 1e-11 * abs(f_ref)


def test_exact_recursion_is_thread_independent():
    # beta = 100 sends most sequences through the energy-space recursion (pairwise too)
    rng = np.random.default_rng(11)
    lengths = rng.integers(0, 25, size=600)
    off = np.concatenate([[0], np.cumsum(lengths)])
    U = rng.normal(size=(off[-1], 5)) * 3.0
    U[rng.random(U.shape) < 0.1] = np.inf
    tr = rng.normal(size=(5, 5)) * 3.0
    one = chain.forward_backward(U, tr, off, 100.0, return_pairwise=True, n_threads=1)
    two = chain.forward_backward(U, tr, off, 100.0, return_pairwise=True, n_threads=2)
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)
    assert np.isfinite(one[2]).all()
    np.testing.assert_allclose(one[0][np.isfinite(one[1]).repeat(lengths)].sum(axis=1), 1.0,
                               atol=1e-12)
