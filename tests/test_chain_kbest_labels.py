"""chain.kbest over label sequences (latent substates minimized) against brute force."""
import collections
import itertools

import numpy as np
import pytest

from factorebm import chain

from test_chain import all_paths, path_energies, random_batch, seqs, z

ATOL = 1e-9


def random_state_label(rng, S):
    """A state -> label map using every label, in shuffled (non-contiguous) order."""
    L = int(rng.integers(1, S + 1))
    lab = np.concatenate([np.arange(L), rng.integers(0, L, size=S - L)])
    return rng.permutation(lab).astype(np.int64)


def label_sequence_energies(U, tr, start, end, state_label, T, mask=None):
    """{label sequence: min over its state paths of E} of one sequence, finite ones only."""
    S = tr.shape[0]
    P = all_paths(T, S)
    e = path_energies(U, tr, start, end, P, mask)
    best = collections.defaultdict(lambda: np.inf)
    for path, energy in zip(map(tuple, state_label[P]), e):
        best[path] = min(best[path], energy)
    return {p: v for p, v in best.items() if np.isfinite(v)}


def check_against_brute_force(U, tr, off, k, s0, s1, lab, mask=None):
    S = tr.shape[0]
    paths, energies, states = chain.kbest(U, tr, off, k, s0, s1, mask=mask, state_label=lab,
                                          return_states=True)
    assert paths.shape == states.shape == (k, U.shape[0])
    assert energies.shape == (k, len(off) - 1)
    for i, a, b in seqs(off):
        Um = U[a:b]
        mk = None if mask is None else mask[a:b]
        truth = label_sequence_energies(Um, tr, z(s0, S), z(s1, S), lab, b - a, mk)
        ref = np.sort(list(truth.values()))[:k]
        m = len(ref)
        np.testing.assert_allclose(energies[:m, i], ref, atol=ATOL, rtol=0)
        assert np.isinf(energies[m:, i]).all()
        assert (paths[m:, a:b] == -1).all() and (states[m:, a:b] == -1).all()
        got = [tuple(p) for p in paths[:m, a:b]]
        assert len(set(got)) == m                     # distinct label sequences
        for r, p in enumerate(got):
            # each answer's energy is its own minimum over substate paths ...
            np.testing.assert_allclose(energies[r, i], truth[p], atol=ATOL, rtol=0)
            # ... reached by the state path returned with it
            if b > a:
                assert tuple(lab[states[r, a:b]]) == p
                own = path_energies(Um, tr, z(s0, S), z(s1, S), states[r:r + 1, a:b], mk)
                np.testing.assert_allclose(own[0], energies[r, i], atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", range(40))
def test_label_kbest_matches_brute_force(seed):
    rng = np.random.default_rng(9100 + seed)
    S = int(rng.integers(2, 6))
    U, tr, off, s0, s1 = random_batch(rng, S=S, max_len=5)
    lab = random_state_label(rng, S)
    mask = rng.random(U.shape) < 0.8 if seed % 4 == 0 else None
    k = int(rng.integers(1, 15))
    check_against_brute_force(U, tr, off, k, s0, s1, lab, mask)


@pytest.mark.parametrize("seed", range(15))
def test_label_kbest_with_tied_energies(seed):
    # small integer energies: many state paths and label sequences tie
    rng = np.random.default_rng(9300 + seed)
    S = int(rng.integers(3, 6))
    lengths = rng.integers(0, 5, size=4)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    U = rng.integers(0, 3, size=(int(off[-1]), S)).astype(float)
    tr = rng.integers(0, 3, size=(S, S)).astype(float)
    s0, s1 = rng.integers(0, 2, size=S).astype(float), rng.integers(0, 2, size=S).astype(float)
    lab = random_state_label(rng, S)
    check_against_brute_force(U, tr, off, int(rng.integers(1, 20)), s0, s1, lab)


def test_label_kbest_with_one_state_per_label_is_state_kbest():
    rng = np.random.default_rng(5)
    U, tr, off, s0, s1 = random_batch(rng, S=4, max_len=6, inf_prob=0.0)
    lab = np.array([2, 0, 3, 1])
    p_lab, e_lab = chain.kbest(U, tr, off, 7, s0, s1, state_label=lab)
    p_st, e_st = chain.kbest(U, tr, off, 7, s0, s1)
    np.testing.assert_array_equal(e_lab, e_st)
    np.testing.assert_array_equal(p_lab, np.where(p_st >= 0, lab[np.maximum(p_st, 0)], -1))


def test_labels_of_state_kbest_repeat_but_label_kbest_does_not():
    # two substates per label with equal energies: every label sequence has 2**T state paths
    # of one energy, so the k best state paths are all one label sequence
    rng = np.random.default_rng(3)
    T, L = 4, 3
    U1 = rng.normal(size=(T, L))
    U = np.repeat(U1, 2, axis=1)
    tr = np.repeat(np.repeat(rng.normal(size=(L, L)), 2, axis=0), 2, axis=1)
    lab = np.repeat(np.arange(L), 2)
    off = np.array([0, T])
    states, _ = chain.kbest(U, tr, off, 4)
    assert len({tuple(lab[p]) for p in states}) == 1
    paths, energies = chain.kbest(U, tr, off, 4, state_label=lab)
    assert len({tuple(p) for p in paths}) == 4
    # and they are the 4 best sequences of the plain chain over labels
    ref_paths, ref_e = chain.kbest(U1, tr[::2, ::2], off, 4)
    np.testing.assert_allclose(energies, ref_e, atol=1e-12)
    np.testing.assert_array_equal(paths, ref_paths)


def test_label_kbest_results_do_not_depend_on_threads():
    rng = np.random.default_rng(11)
    lengths = rng.integers(0, 30, size=300)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    S = 6
    U = rng.normal(size=(int(off[-1]), S))
    tr = rng.normal(size=(S, S))
    lab = np.array([0, 0, 1, 1, 2, 2])
    one = chain.kbest(U, tr, off, 5, state_label=lab, n_threads=1)
    two = chain.kbest(U, tr, off, 5, state_label=lab, n_threads=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_label_kbest_k_beyond_the_number_of_label_sequences():
    U = np.zeros((2, 4))
    lab = np.array([0, 1, 0, 1])
    paths, energies = chain.kbest(U, np.zeros((4, 4)), [0, 2], 10, state_label=lab)
    assert np.isfinite(energies[:, 0]).sum() == 4          # 2 labels ** 2 tokens
    assert set(map(tuple, paths[:4])) == set(itertools.product(range(2), repeat=2))
    assert (paths[4:] == -1).all()


def test_label_kbest_bad_state_label_is_refused():
    U = np.zeros((2, 3))
    with pytest.raises(ValueError, match="state_label"):
        chain.kbest(U, np.zeros((3, 3)), [0, 2], 2, state_label=[0, 2, 2])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        chain.kbest(U, np.zeros((3, 3)), [0, 2], 0, state_label=[0, 1, 1])
