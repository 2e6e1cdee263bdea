"""fe.chain against brute-force enumeration of every state path."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import logsumexp

from factorebm import chain

ATOL = 1e-9


# ---------------------------------------------------------------------------
# brute force
# ---------------------------------------------------------------------------

def all_paths(T, S):
    """(S**T, T) int array of every state path of length T."""
    if T == 0:
        return np.zeros((1, 0), dtype=np.int64)
    return np.array(list(itertools.product(range(S), repeat=T)), dtype=np.int64)


def path_energies(U, trans, start, end, paths, mask=None):
    """E(y) of each row of paths (P, T) for one sequence with unary U (T, S)."""
    P, T = paths.shape
    if T == 0:
        return np.zeros(P)
    Um = U if mask is None else np.where(mask, U, np.inf)
    e = Um[np.arange(T), paths].sum(axis=1)
    e = e + trans[paths[:, :-1], paths[:, 1:]].sum(axis=1)
    return e + start[paths[:, 0]] + end[paths[:, -1]]


def random_batch(rng, S=None, n=None, inf_prob=0.15, max_len=6, with_start_end=None):
    S = int(rng.integers(2, 6)) if S is None else S
    n = int(rng.integers(1, 6)) if n is None else n
    lengths = rng.integers(0, max_len + 1, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])

    def energies(shape):
        x = rng.normal(size=shape) * 2.0
        x[rng.random(shape) < inf_prob] = np.inf
        return x

    unary = energies((N, S))
    trans = energies((S, S))
    if with_start_end is None:
        with_start_end = bool(rng.integers(2))
    if with_start_end:
        start, end = energies(S), energies(S)
    else:
        start = end = None
    return unary, trans, offsets, start, end


def seqs(offsets):
    for i in range(len(offsets) - 1):
        yield i, int(offsets[i]), int(offsets[i + 1])


def z(v, S):
    return np.zeros(S) if v is None else v


# ---------------------------------------------------------------------------
# Viterbi, min-marginals, sequence energy
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(30))
def test_viterbi_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    U, tr, off, s0, s1 = random_batch(rng)
    S = tr.shape[0]
    mask = rng.random(U.shape) < 0.8 if seed % 3 == 0 else None
    labels, energies = chain.viterbi(U, tr, off, s0, s1, mask=mask)
    assert labels.dtype == np.int64 and labels.shape == (U.shape[0],)
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), P, None if mask is None else mask[a:b])
        best = e.min()
        if np.isinf(best):
            assert np.isinf(energies[i]) and (labels[a:b] == -1).all()
            continue
        assert abs(energies[i] - best) < ATOL
        own = path_energies(U[a:b], tr, z(s0, S), z(s1, S), labels[None, a:b],
                            None if mask is None else mask[a:b])[0]
        assert abs(own - best) < ATOL


@pytest.mark.parametrize("seed", range(20))
def test_min_marginals_match_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    U, tr, off, s0, s1 = random_batch(rng)
    S = tr.shape[0]
    mask = rng.random(U.shape) < 0.8 if seed % 2 else None
    mm, energies = chain.min_marginals(U, tr, off, s0, s1, mask=mask)
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), P, None if mask is None else mask[a:b])
        assert energies[i] == pytest.approx(e.min(), abs=ATOL) or energies[i] == e.min()
        for t in range(b - a):
            for s in range(S):
                ref = e[P[:, t] == s].min()
                if np.isinf(ref):
                    assert np.isinf(mm[a + t, s])
                else:
                    assert abs(mm[a + t, s] - ref) < ATOL


@pytest.mark.parametrize("seed", range(10))
def test_sequence_energy_matches_brute_force(seed):
    rng = np.random.default_rng(200 + seed)
    U, tr, off, s0, s1 = random_batch(rng)
    S = tr.shape[0]
    y = rng.integers(0, S, size=U.shape[0])
    got = chain.sequence_energy(U, tr, off, y, s0, s1)
    for i, a, b in seqs(off):
        ref = path_energies(U[a:b], tr, z(s0, S), z(s1, S), y[None, a:b])[0]
        assert (np.isinf(ref) and np.isinf(got[i])) or abs(got[i] - ref) < ATOL


@pytest.mark.parametrize("seed", range(15))
def test_viterbi_with_latent_substates(seed):
    rng = np.random.default_rng(300 + seed)
    n_labels = int(rng.integers(2, 4))
    state_label = np.sort(np.concatenate([np.arange(n_labels),
                                          rng.integers(0, n_labels, size=2)]))
    S = len(state_label)
    U, tr, off, s0, s1 = random_batch(rng, S=S, max_len=6)
    labels, energies, states = chain.viterbi(U, tr, off, s0, s1, state_label=state_label,
                                             return_states=True)
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), P)
        if np.isinf(e.min()):
            assert np.isinf(energies[i])
            continue
        assert abs(energies[i] - e.min()) < ATOL
        np.testing.assert_array_equal(labels[a:b], state_label[states[a:b]])
        # the label sequence returned is a joint minimizer: some substate path reaches e.min()
        same = (state_label[P] == labels[a:b]).all(axis=1)
        assert abs(e[same].min() - e.min()) < ATOL


# ---------------------------------------------------------------------------
# forward-backward
# ---------------------------------------------------------------------------

def brute_gibbs(U, tr, s0, s1, beta, mask=None):
    S = tr.shape[0]
    T = U.shape[0]
    P = all_paths(T, S)
    e = path_energies(U, tr, s0, s1, P, mask)
    logz = logsumexp(-beta * e) if np.isfinite(e).any() else -np.inf
    p = np.exp(-beta * e - logz) if np.isfinite(logz) else np.zeros(len(e))
    marg = np.zeros((T, S))
    for t in range(T):
        np.add.at(marg[t], P[:, t], p)
    pair = np.zeros((S, S))
    for t in range(1, T):
        np.add.at(pair, (P[:, t - 1], P[:, t]), p)
    return marg, -logz / beta, pair


def assert_fb_matches_brute_force(U, tr, off, beta, s0, s1, mask=None, f_atol=ATOL, f_rtol=0.0,
                                  m_atol=ATOL, pair_atol=ATOL):
    """forward_backward of a ragged batch against brute_gibbs, sequence by sequence:
    |F - F_ref| <= f_atol + f_rtol |F_ref|, marginals and summed pairwise marginals
    to m_atol and pair_atol."""
    S = tr.shape[0]
    marg, free, pair = chain.forward_backward(U, tr, off, beta, s0, s1, mask=mask,
                                              return_pairwise=True)
    pair_ref = np.zeros((S, S))
    for i, a, b in seqs(off):
        m_ref, f_ref, p_ref = brute_gibbs(U[a:b], tr, z(s0, S), z(s1, S), beta,
                                          None if mask is None else mask[a:b])
        if np.isinf(f_ref):
            assert np.isinf(free[i]) and free[i] > 0
        else:
            assert abs(free[i] - f_ref) <= f_atol + f_rtol * abs(f_ref), (i, free[i], f_ref)
        np.testing.assert_allclose(marg[a:b], m_ref, atol=m_atol, rtol=0)
        pair_ref += p_ref
    np.testing.assert_allclose(pair, pair_ref, atol=pair_atol, rtol=0)


@pytest.mark.parametrize("seed", range(30))
def test_forward_backward_matches_brute_force(seed):
    rng = np.random.default_rng(400 + seed)
    U, tr, off, s0, s1 = random_batch(rng)
    beta = [1.0, 0.37, 2.5][seed % 3]
    mask = rng.random(U.shape) < 0.8 if seed % 4 == 1 else None
    assert_fb_matches_brute_force(U, tr, off, beta, s0, s1, mask)


@pytest.mark.parametrize("seed", range(12))
def test_forward_backward_latent_label_marginals_and_clamping(seed):
    rng = np.random.default_rng(500 + seed)
    n_labels = 2 + seed % 2
    state_label = np.sort(np.concatenate([np.arange(n_labels), rng.integers(0, n_labels, 2)]))
    S = len(state_label)
    U, tr, off, s0, s1 = random_batch(rng, S=S, max_len=6, inf_prob=0.05)
    beta = 0.8
    lab_marg, free, st_marg = chain.forward_backward(U, tr, off, beta, s0, s1,
                                                     state_label=state_label,
                                                     return_states=True)
    assert lab_marg.shape == (U.shape[0], n_labels)
    gold = rng.integers(0, n_labels, size=U.shape[0])
    clamp = state_label[None, :] == gold[:, None]
    _, free_clamped = chain.forward_backward(U, tr, off, beta, s0, s1, mask=clamp,
                                             state_label=state_label)
    for i, a, b in seqs(off):
        T = b - a
        P = all_paths(T, S)
        e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), P)
        m_ref, f_ref, _ = brute_gibbs(U[a:b], tr, z(s0, S), z(s1, S), beta)
        np.testing.assert_allclose(st_marg[a:b], m_ref, atol=ATOL, rtol=0)
        lab_ref = np.zeros((T, n_labels))
        for l in range(n_labels):
            lab_ref[:, l] = m_ref[:, state_label == l].sum(axis=1)
        np.testing.assert_allclose(lab_marg[a:b], lab_ref, atol=ATOL, rtol=0)
        # clamped free energy F(Y) = -(1/beta) log sum_{z} exp(-beta E(Y, z))
        keep = (state_label[P] == gold[a:b]).all(axis=1) if T else np.ones(1, bool)
        ek = e[keep]
        f_clamped_ref = (-logsumexp(-beta * ek) / beta if np.isfinite(ek).any() else np.inf)
        if np.isinf(f_clamped_ref):
            assert np.isinf(free_clamped[i])
        else:
            assert abs(free_clamped[i] - f_clamped_ref) < ATOL
            assert free_clamped[i] >= free[i] - ATOL


@pytest.mark.parametrize("seed", range(4))
def test_free_energy_gradient_is_marginals_finite_differences(seed):
    # dF/dunary[t, s] = P(y_t = s), dF/dtransition[i, j] = sum_t P(y_{t-1} = i, y_t = j),
    # dF/dstart[s] = P(y_0 = s): the gradients NLL training uses, checked by central differences.
    rng = np.random.default_rng(1000 + seed)
    S = 3 + seed % 2
    U, tr, off, _, _ = random_batch(rng, S=S, n=3, inf_prob=0.0, max_len=5)
    s0, s1 = rng.normal(size=S), rng.normal(size=S)
    beta = [1.0, 0.6, 2.0, 1.7][seed]
    marg, free, pair = chain.forward_backward(U, tr, off, beta, s0, s1, return_pairwise=True)
    h = 1e-6

    def total_free(U_, tr_, s0_):
        return chain.forward_backward(U_, tr_, off, beta, s0_, s1)[1].sum()

    for _ in range(6):
        t, s = int(rng.integers(U.shape[0])), int(rng.integers(S))
        up, dn = U.copy(), U.copy()
        up[t, s] += h
        dn[t, s] -= h
        fd = (total_free(up, tr, s0) - total_free(dn, tr, s0)) / (2 * h)
        assert abs(fd - marg[t, s]) < 1e-6
    for i in range(S):
        for j in range(S):
            up, dn = tr.copy(), tr.copy()
            up[i, j] += h
            dn[i, j] -= h
            fd = (total_free(U, up, s0) - total_free(U, dn, s0)) / (2 * h)
            assert abs(fd - pair[i, j]) < 1e-6
    firsts = off[:-1][np.diff(off) > 0]
    for s in range(S):
        up, dn = s0.copy(), s0.copy()
        up[s] += h
        dn[s] -= h
        fd = (total_free(U, tr, up) - total_free(U, tr, dn)) / (2 * h)
        assert abs(fd - marg[firsts, s].sum()) < 1e-6


def test_forward_backward_extreme_energy_range_uses_exact_fallback():
    # Energy gaps of ~1e3 / beta underflow exp(); the answer must still be exact.
    rng = np.random.default_rng(7)
    S = 3
    U = rng.normal(size=(5, S)) * 600.0
    tr = rng.normal(size=(S, S)) * 900.0
    tr[0, 1] = np.inf
    off = np.array([0, 5])
    for beta in (1.0, 50.0):
        marg, free = chain.forward_backward(U, tr, off, beta)
        m_ref, f_ref, _ = brute_gibbs(U, tr, np.zeros(S), np.zeros(S), beta)
        assert abs(free[0] - f_ref) < 1e-9 * max(1.0, abs(f_ref))
        np.testing.assert_allclose(marg, m_ref, atol=1e-9, rtol=0)
        assert np.isfinite(marg).all()


# ---------------------------------------------------------------------------
# k-best
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(25))
def test_kbest_matches_brute_force(seed):
    rng = np.random.default_rng(600 + seed)
    U, tr, off, s0, s1 = random_batch(rng, max_len=6)
    S = tr.shape[0]
    k = int(rng.integers(1, 12))
    paths, energies = chain.kbest(U, tr, off, k, s0, s1)
    assert paths.shape == (k, U.shape[0]) and energies.shape == (k, len(off) - 1)
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = np.sort(path_energies(U[a:b], tr, z(s0, S), z(s1, S), P))
        e = e[np.isfinite(e)][:k]
        np.testing.assert_allclose(energies[:len(e), i], e, atol=ATOL, rtol=0)
        assert np.isinf(energies[len(e):, i]).all()
        got = paths[:len(e), a:b]
        if b > a:
            own = path_energies(U[a:b], tr, z(s0, S), z(s1, S), got)
            np.testing.assert_allclose(own, energies[:len(e), i], atol=ATOL, rtol=0)
            assert len({tuple(p) for p in got}) == len(e)  # distinct answers


# ---------------------------------------------------------------------------
# most offending and loss-augmented decoding
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(25))
def test_most_offending_matches_brute_force(seed):
    rng = np.random.default_rng(700 + seed)
    latent = seed % 2 == 1
    if latent:
        n_labels = 2 + seed % 3
        state_label = np.sort(np.concatenate([np.arange(n_labels),
                                              rng.integers(0, n_labels, 2)]))
    else:
        state_label = None
    S = len(state_label) if latent else int(rng.integers(2, 5))
    n_labels = int(state_label.max()) + 1 if latent else S
    U, tr, off, s0, s1 = random_batch(rng, S=S, max_len=6)
    mask = rng.random(U.shape) < 0.85 if seed % 5 == 0 else None
    gold = rng.integers(0, n_labels, size=U.shape[0])
    if seed % 3 == 0:   # gold = the MAP labels, the training case
        gold = np.maximum(chain.viterbi(U, tr, off, s0, s1, state_label=state_label)[0], 0)
    labels, energies = chain.most_offending(U, tr, off, gold, s0, s1, mask=mask,
                                            state_label=state_label)
    sl = np.arange(S) if state_label is None else state_label
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), P, None if mask is None else mask[a:b])
        wrong = (sl[P] != gold[a:b]).any(axis=1)
        ref = e[wrong].min() if wrong.any() else np.inf
        if np.isinf(ref):
            assert np.isinf(energies[i]) and energies[i] > 0
            continue
        assert abs(energies[i] - ref) < ATOL
        assert (labels[a:b] != gold[a:b]).any()
        same = (sl[P] == labels[a:b]).all(axis=1)
        assert abs(e[same].min() - ref) < ATOL


@pytest.mark.parametrize("seed", range(20))
def test_loss_augmented_viterbi_matches_brute_force(seed):
    rng = np.random.default_rng(800 + seed)
    latent = seed % 2 == 0
    state_label = np.array([0, 0, 1, 2, 2]) if latent else None
    S = 5 if latent else int(rng.integers(2, 5))
    n_labels = 3 if latent else S
    U, tr, off, s0, s1 = random_batch(rng, S=S, max_len=6)
    gold = rng.integers(0, n_labels, size=U.shape[0])
    loss = rng.random(U.shape[0]) * 3 if seed % 3 else 1.5
    labels, energies, states = chain.loss_augmented_viterbi(
        U, tr, off, gold, loss, s0, s1, state_label=state_label, return_states=True)
    sl = np.arange(S) if state_label is None else state_label
    loss_t = np.broadcast_to(loss, U.shape[:1])
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), P)
        aug = e - ((sl[P] != gold[a:b]) * loss_t[a:b]).sum(axis=1)
        if np.isinf(aug.min()):
            assert np.isinf(energies[i])
            continue
        own_e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), states[None, a:b])[0]
        own_aug = own_e - ((labels[a:b] != gold[a:b]) * loss_t[a:b]).sum()
        assert abs(own_aug - aug.min()) < ATOL
        assert abs(energies[i] - own_e) < ATOL
        np.testing.assert_array_equal(labels[a:b], sl[states[a:b]])


# ---------------------------------------------------------------------------
# latent substates and masks in every function
# ---------------------------------------------------------------------------

def random_state_label(rng, n_labels):
    return np.sort(np.concatenate([np.arange(n_labels), rng.integers(0, n_labels, 2)]))


@pytest.mark.parametrize("seed", range(15))
def test_min_marginals_with_latent_substates(seed):
    rng = np.random.default_rng(1100 + seed)
    n_labels = 2 + seed % 2
    state_label = random_state_label(rng, n_labels)
    S = len(state_label)
    U, tr, off, s0, s1 = random_batch(rng, S=S, max_len=5)
    mask = rng.random(U.shape) < 0.8 if seed % 3 == 0 else None
    lab_mm, energies, st_mm = chain.min_marginals(U, tr, off, s0, s1, mask=mask,
                                                  state_label=state_label, return_states=True)
    assert lab_mm.shape == (U.shape[0], n_labels) and st_mm.shape == U.shape
    np.testing.assert_array_equal(chain.min_marginals(U, tr, off, s0, s1, mask=mask)[0], st_mm)
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), P, None if mask is None else mask[a:b])
        assert energies[i] == e.min() or abs(energies[i] - e.min()) < ATOL
        for t in range(b - a):
            for l in range(n_labels):
                # min over the label's substates = min over paths with label(y_t) = l
                ref = e[state_label[P[:, t]] == l].min()
                got = lab_mm[a + t, l]
                assert (np.isinf(ref) and np.isinf(got)) or abs(got - ref) < ATOL


@pytest.mark.parametrize("seed", range(15))
def test_loss_augmented_viterbi_with_mask(seed):
    rng = np.random.default_rng(1200 + seed)
    latent = seed % 2 == 0
    state_label = random_state_label(rng, 2) if latent else None
    S = len(state_label) if latent else int(rng.integers(2, 4))
    n_labels = 2 if latent else S
    U, tr, off, s0, s1 = random_batch(rng, S=S, max_len=6, inf_prob=0.05)
    gold = rng.integers(0, n_labels, size=U.shape[0])
    mask = rng.random(U.shape) < 0.7
    loss = rng.random(U.shape[0]) * 3
    labels, energies, states = chain.loss_augmented_viterbi(
        U, tr, off, gold, loss, s0, s1, mask=mask, state_label=state_label, return_states=True)
    sl = np.arange(S) if state_label is None else state_label
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), P, mask[a:b])
        aug = e - ((sl[P] != gold[a:b]) * loss[a:b]).sum(axis=1)
        if np.isinf(aug.min()):
            assert np.isinf(energies[i]) and (labels[a:b] == -1).all()
            continue
        assert mask[np.arange(a, b), states[a:b]].all()       # masked states stay forbidden
        own_e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), states[None, a:b])[0]
        own_aug = own_e - ((labels[a:b] != gold[a:b]) * loss[a:b]).sum()
        assert abs(own_aug - aug.min()) < ATOL
        assert abs(energies[i] - own_e) < ATOL


@pytest.mark.parametrize("seed", range(15))
def test_kbest_with_mask(seed):
    rng = np.random.default_rng(1300 + seed)
    U, tr, off, s0, s1 = random_batch(rng, max_len=6, inf_prob=0.05)
    S = tr.shape[0]
    mask = rng.random(U.shape) < 0.7
    k = int(rng.integers(1, 9))
    paths, energies = chain.kbest(U, tr, off, k, s0, s1, mask=mask)
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = np.sort(path_energies(U[a:b], tr, z(s0, S), z(s1, S), P, mask[a:b]))
        e = e[np.isfinite(e)][:k]
        np.testing.assert_allclose(energies[:len(e), i], e, atol=ATOL, rtol=0)
        assert np.isinf(energies[len(e):, i]).all()
        if b > a and len(e):
            got = paths[:len(e), a:b]
            assert mask[a:b][np.arange(b - a), got].all()
            own = path_energies(U[a:b], tr, z(s0, S), z(s1, S), got, mask[a:b])
            np.testing.assert_allclose(own, e, atol=ATOL, rtol=0)


def test_kbest_k_beyond_the_number_of_paths():
    # k far above S**T: the kernel runs with S**T ranks, the rest are +inf / -1
    rng = np.random.default_rng(4)
    U, tr = rng.normal(size=(3, 2)), rng.normal(size=(2, 2))
    off = np.array([0, 1, 3])
    paths, energies = chain.kbest(U, tr, off, 1000)
    assert paths.shape == (1000, 3) and energies.shape == (1000, 2)
    assert np.isfinite(energies[:2, 0]).all() and np.isinf(energies[2:, 0]).all()
    assert np.isfinite(energies[:4, 1]).all() and np.isinf(energies[4:, 1]).all()
    assert (paths[4:] == -1).all() and (paths[2:, 0] == -1).all()
    np.testing.assert_array_equal(energies[:4], chain.kbest(U, tr, off, 4)[1])


@pytest.mark.parametrize("seed", range(8))
def test_gold_mask_clamps_to_gold_labels(seed):
    rng = np.random.default_rng(1400 + seed)
    state_label = random_state_label(rng, 2 + seed % 2)
    S, n_labels = len(state_label), int(state_label.max()) + 1
    U, tr, off, s0, s1 = random_batch(rng, S=S, max_len=5, inf_prob=0.05)
    gold = rng.integers(0, n_labels, size=U.shape[0])
    mask = chain.gold_mask(gold, state_label)
    np.testing.assert_array_equal(mask, state_label[None, :] == gold[:, None])
    assert mask.dtype == np.bool_ and mask.shape == U.shape
    beta = 0.9
    _, f_clamped = chain.forward_backward(U, tr, off, beta, s0, s1, mask=mask,
                                          state_label=state_label)
    labels, e_clamped = chain.viterbi(U, tr, off, s0, s1, mask=mask, state_label=state_label)
    for i, a, b in seqs(off):
        P = all_paths(b - a, S)
        e = path_energies(U[a:b], tr, z(s0, S), z(s1, S), P)
        keep = (state_label[P] == gold[a:b]).all(axis=1)
        ek = e[keep]
        if not np.isfinite(ek).any():
            assert np.isinf(f_clamped[i]) and np.isinf(e_clamped[i])
            continue
        assert abs(f_clamped[i] + logsumexp(-beta * ek) / beta) < ATOL
        assert abs(e_clamped[i] - ek.min()) < ATOL
        np.testing.assert_array_equal(labels[a:b], gold[a:b])
    # without substates: one-hot rows
    np.testing.assert_array_equal(chain.gold_mask([2, 0], n_states=3),
                                  [[False, False, True], [True, False, False]])


def test_gold_mask_bad_input():
    with pytest.raises(ValueError, match="needs n_states"):
        chain.gold_mask([0, 1])
    with pytest.raises(ValueError, match=r"gold\[1\] = 2 is out of range 0..1"):
        chain.gold_mask([0, 2], np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="does not match"):
        chain.gold_mask([0, 1], np.array([0, 1]), n_states=3)
    with pytest.raises(ValueError, match="label 1 has no state"):
        chain.gold_mask([0], np.array([0, 2, 2]))


# ---------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------

def test_empty_and_length_one_sequences():
    rng = np.random.default_rng(1)
    S = 3
    off = np.array([0, 0, 1, 1, 2])   # empty, length 1, empty, length 1
    U = rng.normal(size=(2, S))
    tr = rng.normal(size=(S, S)) + 100.0  # a length-1 sequence never sees the transitions
    s0, s1 = rng.normal(size=S), rng.normal(size=S)
    labels, energies = chain.viterbi(U, tr, off, s0, s1)
    single = U + s0 + s1
    np.testing.assert_array_equal(labels, single.argmin(axis=1))
    np.testing.assert_allclose(energies, [0.0, single[0].min(), 0.0, single[1].min()])
    marg, free = chain.forward_backward(U, tr, off, 2.0, s0, s1)
    p = np.exp(-2.0 * single - logsumexp(-2.0 * single, axis=1, keepdims=True))
    np.testing.assert_allclose(marg, p, atol=1e-12)
    np.testing.assert_allclose(free[[0, 2]], 0.0)
    np.testing.assert_allclose(free[[1, 3]], -logsumexp(-2.0 * single, axis=1) / 2.0)
    _, e_mo = chain.most_offending(U, tr, off, labels, s0, s1)
    assert np.isinf(e_mo[0]) and np.isinf(e_mo[2])
    np.testing.assert_allclose(e_mo[[1, 3]], np.sort(single, axis=1)[:, 1])
    paths, e_k = chain.kbest(U, tr, off, 4, s0, s1)
    np.testing.assert_allclose(e_k[:, 0], [0, np.inf, np.inf, np.inf])
    np.testing.assert_allclose(e_k[:3, 1], np.sort(single[0]))
    assert np.isinf(e_k[3, 1])
    # a batch of only empty sequences, and a batch of no sequences
    for off0 in (np.array([0, 0, 0]), np.array([0])):
        U0 = np.zeros((0, S))
        assert chain.viterbi(U0, tr, off0)[1].tolist() == [0.0] * (len(off0) - 1)
        assert chain.forward_backward(U0, tr, off0)[1].tolist() == [0.0] * (len(off0) - 1)
        assert chain.loss_augmented_viterbi(U0, tr, off0, np.zeros(0, int))[1].tolist() == \
            [0.0] * (len(off0) - 1)


def test_no_finite_path_gives_inf_energy():
    S = 2
    U = np.zeros((3, S))
    U[1, :] = np.inf                      # sequence 0: a token with every state forbidden
    tr = np.array([[np.inf, 0.0], [np.inf, np.inf]])
    off = np.array([0, 2, 3, 3])         # sequence 1: length 1 is fine; 2: empty
    labels, energies = chain.viterbi(U, tr, off)
    assert np.isinf(energies[0]) and (labels[:2] == -1).all()
    assert energies[1] == 0.0 and energies[2] == 0.0
    marg, free = chain.forward_backward(U, tr, off)
    assert np.isinf(free[0]) and (marg[:2] == 0).all()
    assert abs(free[1] + np.log(2)) < 1e-12
    # only forbidden transitions between the two tokens of a sequence
    U2 = np.zeros((2, S))
    tr2 = np.full((S, S), np.inf)
    assert np.isinf(chain.viterbi(U2, tr2, [0, 2])[1][0])
    assert np.isinf(chain.forward_backward(U2, tr2, [0, 2])[1][0])
    assert np.isinf(chain.min_marginals(U2, tr2, [0, 2])[0]).all()
    assert np.isinf(chain.kbest(U2, tr2, [0, 2], 2)[1]).all()


def _numpy_reference(U, tr, beta):
    """Per-position log-space recursions in numpy for one long sequence."""
    la = -beta * U[0]
    v = U[0].copy()
    for t in range(1, U.shape[0]):
        la = logsumexp(la[:, None] - beta * tr, axis=0) - beta * U[t]
        v = (v[:, None] + tr).min(axis=0) + U[t]
    return -logsumexp(la) / beta, v.min()


def test_long_sequence_no_underflow_or_overflow():
    rng = np.random.default_rng(3)
    S, T = 4, 100_000
    U = rng.normal(size=(T, S)) * 3.0 + 5.0
    tr = rng.normal(size=(S, S))
    off = np.array([0, T])
    beta = 1.3
    marg, free = chain.forward_backward(U, tr, off, beta)
    labels, energy = chain.viterbi(U, tr, off)
    assert np.isfinite(free).all() and np.isfinite(marg).all()
    np.testing.assert_allclose(marg.sum(axis=1), 1.0, atol=1e-9)
    f_ref, v_ref = _numpy_reference(U[:20_000], tr, beta)
    f_part = chain.forward_backward(U[:20_000], tr, [0, 20_000], beta)[1][0]
    v_part = chain.viterbi(U[:20_000], tr, [0, 20_000])[1][0]
    assert abs(f_part - f_ref) < 1e-9 * abs(f_ref)
    assert abs(v_part - v_ref) < 1e-9 * abs(v_ref)
    # energy of the whole chain: the decoded path's recomputed energy, and F <= E_min
    assert abs(chain.sequence_energy(U, tr, off, labels)[0] - energy[0]) < 1e-9 * abs(energy[0])
    assert free[0] <= energy[0]
    assert free[0] >= energy[0] - T * np.log(S) / beta
    mm, e_mm = chain.min_marginals(U, tr, off)
    np.testing.assert_allclose(mm.min(axis=1), energy[0], rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_thread_count_does_not_change_results(seed):
    rng = np.random.default_rng(900 + seed)
    S, n = 6, 700
    lengths = rng.integers(0, 30, size=n)
    off = np.concatenate([[0], np.cumsum(lengths)])
    U = rng.normal(size=(off[-1], S))
    U[rng.random(U.shape) < 0.1] = np.inf
    tr = rng.normal(size=(S, S))
    gold = rng.integers(0, S, size=off[-1])
    calls = [
        lambda nt: chain.viterbi(U, tr, off, n_threads=nt),
        lambda nt: chain.forward_backward(U, tr, off, 0.7, return_pairwise=True, n_threads=nt),
        lambda nt: chain.min_marginals(U, tr, off, n_threads=nt),
        lambda nt: chain.kbest(U, tr, off, 3, n_threads=nt),
        lambda nt: chain.most_offending(U, tr, off, gold, n_threads=nt),
        lambda nt: chain.loss_augmented_viterbi(U, tr, off, gold, n_threads=nt),
    ]
    for call in calls:
        one, two = call(1), call(2)
        for x, y in zip(one, two):
            np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------
# properties (hypothesis)
# ---------------------------------------------------------------------------

@st.composite
def batches(draw):
    S = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
    N = sum(lengths)
    finite = st.floats(-5, 5, allow_nan=False)
    energy = st.one_of(finite, finite, finite, st.just(np.inf))
    U = np.array(draw(st.lists(energy, min_size=N * S, max_size=N * S)),
                 dtype=np.float64).reshape(N, S)
    tr = np.array(draw(st.lists(energy, min_size=S * S, max_size=S * S))).reshape(S, S)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    beta = draw(st.floats(0.05, 20.0))
    return U, tr, off, beta


@settings(max_examples=60, deadline=None)
@given(batches())
def test_property_consistency_between_functions(batch):
    U, tr, off, beta = batch
    S = tr.shape[0]
    labels, e = chain.viterbi(U, tr, off)
    marg, free = chain.forward_backward(U, tr, off, beta)
    mm, e_mm = chain.min_marginals(U, tr, off)
    paths, e_k = chain.kbest(U, tr, off, 3)
    np.testing.assert_allclose(e_mm, e, atol=ATOL)
    np.testing.assert_allclose(e_k[0], e, atol=ATOL)
    fin = np.isfinite(e_k[1:])
    assert (e_k[1:][fin] >= e_k[:-1][fin] - ATOL).all()   # best first
    for i, a, b in seqs(off):
        T = b - a
        if np.isinf(e[i]):
            assert np.isinf(free[i])
            continue
        # min E - (T log S) / beta <= F <= min E
        assert free[i] <= e[i] + 1e-9
        assert free[i] >= e[i] - T * np.log(S) / beta - 1e-9
        if T:
            np.testing.assert_allclose(marg[a:b].sum(axis=1), 1.0, atol=1e-9)
            np.testing.assert_allclose(mm[a:b].min(axis=1), e[i], atol=ATOL)
            e_path = chain.sequence_energy(U[a:b], tr, [0, T], labels[a:b])[0]
            assert abs(e_path - e[i]) < ATOL
    # the most offending answer against the MAP labels is the second best sequence
    gold = np.maximum(labels, 0)
    _, e_mo = chain.most_offending(U, tr, off, gold)
    for i, a, b in seqs(off):
        if b > a and np.isfinite(e[i]):
            np.testing.assert_allclose(e_mo[i], e_k[1, i], atol=ATOL)
    # loss 0 is plain Viterbi
    _, e_la = chain.loss_augmented_viterbi(U, tr, off, gold, 0.0)
    np.testing.assert_allclose(e_la, e, atol=ATOL)


@settings(max_examples=40, deadline=None)
@given(batches(), st.floats(-20, 20))
def test_property_shift_invariance(batch, c):
    # Adding c to every unary of a sequence adds c*T to energies and free energies
    # and leaves the marginals unchanged.
    U, tr, off, beta = batch
    lengths = np.diff(off)
    _, e = chain.viterbi(U, tr, off)
    marg, free = chain.forward_backward(U, tr, off, beta)
    _, e2 = chain.viterbi(U + c, tr, off)
    marg2, free2 = chain.forward_backward(U + c, tr, off, beta)
    fin = np.isfinite(e)
    np.testing.assert_allclose(e2[fin], e[fin] + c * lengths[fin], atol=1e-8)
    np.testing.assert_allclose(free2[fin], free[fin] + c * lengths[fin], atol=1e-8)
    np.testing.assert_allclose(marg2, marg, atol=1e-9)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def _ok():
    U = np.zeros((3, 2))
    return U, np.zeros((2, 2)), np.array([0, 1, 3])


@pytest.mark.parametrize("mutate, match", [
    (lambda U, tr, off: (np.where(np.eye(3, 2) > 0, np.nan, U), tr, off), "unary contains NaN"),
    (lambda U, tr, off: (U - np.inf, tr, off), "unary contains -inf"),
    (lambda U, tr, off: (U, np.zeros((3, 3)), off), "transition must have shape"),
    (lambda U, tr, off: (U, tr * np.nan, off), "transition contains NaN"),
    (lambda U, tr, off: (U, tr, np.array([1, 3])), r"offsets\[0\] must be 0"),
    (lambda U, tr, off: (U, tr, np.array([0, 2])), r"offsets\[-1\] must equal"),
    (lambda U, tr, off: (U, tr, np.array([0, 2, 1, 3])), "non-decreasing"),
    (lambda U, tr, off: (U, tr, np.array([0.0, 3.0])), "offsets must be an integer"),
    (lambda U, tr, off: (U[0], tr, off), "unary must be 2-D"),
])
def test_bad_input_raises_value_error(mutate, match):
    U, tr, off = mutate(*_ok())
    with pytest.raises(ValueError, match=match):
        chain.viterbi(U, tr, off)


def test_bad_options_raise_value_error():
    U, tr, off = _ok()
    with pytest.raises(ValueError, match="beta"):
        chain.forward_backward(U, tr, off, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        chain.forward_backward(U, tr, off, beta=-1.0)
    with pytest.raises(ValueError, match="start must have shape"):
        chain.viterbi(U, tr, off, start=np.zeros(3))
    with pytest.raises(ValueError, match="end contains NaN"):
        chain.viterbi(U, tr, off, end=np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="mask must have shape"):
        chain.viterbi(U, tr, off, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="mask must be a boolean"):
        chain.viterbi(U, tr, off, mask=np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match=r"gold\[2\] = 2 is out of range"):
        chain.most_offending(U, tr, off, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="gold must have shape"):
        chain.most_offending(U, tr, off, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"gold\[0\] = 1 is out of range"):
        chain.loss_augmented_viterbi(U, tr, off, np.array([1, 0, 0]),
                                     state_label=np.array([0, 0]))
    with pytest.raises(ValueError, match="loss must be finite"):
        chain.loss_augmented_viterbi(U, tr, off, np.zeros(3, int), loss=np.inf)
    with pytest.raises(ValueError, match="loss must be a scalar or have shape"):
        chain.loss_augmented_viterbi(U, tr, off, np.zeros(3, int), loss=np.ones(2))
    with pytest.raises(ValueError, match="state_label must have shape"):
        chain.viterbi(U, tr, off, state_label=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="state_label must be >= 0"):
        chain.viterbi(U, tr, off, state_label=np.array([0, -1]))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        chain.kbest(U, tr, off, 0)
    with pytest.raises(ValueError, match=r"states\[1\] = 5 is out of range"):
        chain.sequence_energy(U, tr, off, np.array([0, 5, 0]))
    with pytest.raises(ValueError, match="n_threads"):
        chain.viterbi(U, tr, off, n_threads=0)


def test_huge_k_raises_value_error_not_memory_error():
    U, tr, off = _ok()
    with pytest.raises(ValueError, match=r"k = 1000000000000 needs about .* GiB"):
        chain.kbest(U, tr, off, 10**12)
    # a long sequence: the workspace (longest * S * k) is what is too large
    rng = np.random.default_rng(0)
    U2 = rng.normal(size=(100_000, 17))
    with pytest.raises(ValueError, match="KBEST_MAX_BYTES"):
        chain.kbest(U2, rng.normal(size=(17, 17)), [0, 100_000], 2_000)


@pytest.mark.parametrize("state_label, match", [
    ([0, 10**12], r"state_label\[1\] = 1000000000000 is out of range: labels are 0..L-1"),
    ([0, 2], r"out of range"),
    ([1, 1], r"must use every label 0..1: label 0 has no state"),
])
def test_bad_state_label_raises_value_error(state_label, match):
    U, tr, off = _ok()
    for call in (lambda: chain.viterbi(U, tr, off, state_label=state_label),
                 lambda: chain.forward_backward(U, tr, off, state_label=state_label),
                 lambda: chain.min_marginals(U, tr, off, state_label=state_label),
                 lambda: chain.most_offending(U, tr, off, [0, 0, 0], state_label=state_label)):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("make", [
    # unary -1e308 plus start -1e308: the sum is -inf (NaN energies before)
    lambda U, tr: dict(unary=U - 1e308, transition=tr, start=np.full(2, -1e308)),
    # +1e308 unary plus transition: F was +inf with marginals 0.5
    lambda U, tr: dict(unary=U + 1e308, transition=tr + 1e308),
    # far below float64's limit per entry, but 2 tokens of 6e299 add up past 1e300
    lambda U, tr: dict(unary=U + 6e299, transition=tr),
])
def test_energies_that_could_overflow_a_sum_raise(make):
    U, tr, off = _ok()
    kw = make(U, tr)
    calls = [chain.viterbi, chain.min_marginals, chain.most_offending, chain.kbest,
             chain.forward_backward, chain.loss_augmented_viterbi, chain.sequence_energy]
    extra = {chain.most_offending: ([0, 0, 0],), chain.kbest: (2,),
             chain.loss_augmented_viterbi: ([0, 0, 0],), chain.sequence_energy: ([0, 0, 0],)}
    for fn in calls:
        args = (kw["unary"], kw["transition"], off) + extra.get(fn, ())
        with pytest.raises(ValueError, match="energies too large"):
            fn(*args, start=kw.get("start"))


def test_large_but_safe_energies_and_loss_bound():
    U, tr, off = _ok()
    # 2 * 1e299 per sequence of length 2 (+ transition 0): accepted and exact
    _, e = chain.viterbi(U + 1e299, tr, off)
    np.testing.assert_allclose(e, [1e299, 2e299])
    # +inf entries do not count towards the bound
    U2 = U.copy()
    U2[0, 1] = np.inf
    assert np.isfinite(chain.viterbi(U2, tr, off)[1]).all()
    # the loss is part of the augmented energy
    with pytest.raises(ValueError, match="energies too large.*loss up to"):
        chain.loss_augmented_viterbi(U, tr, off, [0, 0, 0], loss=1e300)


def test_complex_input_raises_without_warning():
    import warnings
    U, tr, off = _ok()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="unary must be real"):
            chain.viterbi(U + 1j, tr, off)
        with pytest.raises(ValueError, match="transition must be real"):
            chain.forward_backward(U, tr.astype(complex), off)
        with pytest.raises(ValueError, match="start must be real"):
            chain.viterbi(U, tr, off, start=np.zeros(2, complex))
        with pytest.raises(ValueError, match="loss must be real"):
            chain.loss_augmented_viterbi(U, tr, off, [0, 0, 0], loss=1 + 2j)


def test_beta_as_numpy_scalar_or_0d_array():
    rng = np.random.default_rng(2)
    U, tr, off = rng.normal(size=(3, 2)), rng.normal(size=(2, 2)), np.array([0, 1, 3])
    ref = chain.forward_backward(U, tr, off, 2.0)
    for beta in (np.array(2.0), np.float64(2.0), np.float32(2.0), 2, np.int64(2)):
        got = chain.forward_backward(U, tr, off, beta)
        for x, y in zip(got, ref):
            np.testing.assert_array_equal(x, y)
    for beta in (np.array([2.0]), True, "2", np.array(np.nan), np.array(-1.0), 1j, None):
        with pytest.raises(ValueError, match="beta must be a finite number > 0"):
            chain.forward_backward(U, tr, off, beta)
