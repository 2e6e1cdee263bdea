"""fe.chain against the general factor-graph engine on the same chains.

The same model built two ways: the chain kernels, and a FactorGraph with one
variable per token, unary factors and pairwise transition factors (a tree, so
min_sum / sum_product / most_offending are exact there too).
"""
import numpy as np
import pytest

import factorebm as fe
from factorebm import chain

ATOL = 1e-8


def chain_graph(U, tr, start, end, state_label=None, label_energy=None):
    """FactorGraph of one sequence; with state_label, visible labels y_t and latent states z_t.

    ``label_energy`` (T, L), optional: extra unary energies on the labels (the
    loss term of loss-augmented decoding). An empty sequence is an empty graph.
    """
    T, S = U.shape
    start = np.zeros(S) if start is None else start
    end = np.zeros(S) if end is None else end
    g = fe.FactorGraph()
    z = [f"z{t}" if state_label is not None else f"y{t}" for t in range(T)]
    for t in range(T):
        g.add_variable(z[t], S, latent=state_label is not None)
    if state_label is not None:
        n_labels = int(state_label.max()) + 1
        # compatibility of label y_t with state z_t: 0 when state_label[z] == y, else forbidden
        compat = np.where(np.arange(n_labels)[:, None] == state_label[None, :], 0.0, np.inf)
        for t in range(T):
            g.add_variable(f"y{t}", n_labels)
            g.add_factor([f"y{t}", z[t]], compat)
    for t in range(T):
        u = U[t].copy()
        if t == 0:
            u += start
        if t == T - 1:
            u += end
        g.add_factor([z[t]], u)
    for t in range(1, T):
        g.add_factor([z[t - 1], z[t]], tr)
    if label_energy is not None:
        for t in range(T):
            g.add_factor([f"y{t}"], label_energy[t])
    return g


def random_problem(rng, S, n, max_len=5, start_end=True):
    """Ragged batch with empty sequences (lengths 0..max_len, the first one empty)."""
    lengths = rng.integers(0, max_len + 1, size=n)
    lengths[0] = 0
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    U = rng.normal(size=(off[-1], S)) * 1.5
    U[rng.random(U.shape) < 0.1] = np.inf
    U[np.arange(off[-1]), rng.integers(0, S, off[-1])] = rng.normal(size=off[-1])  # one finite state
    tr = rng.normal(size=(S, S))
    tr[rng.random((S, S)) < 0.1] = np.inf
    np.fill_diagonal(tr, rng.normal(size=S))   # keeps a finite path through every token
    if not start_end:
        return U, tr, off, None, None
    return U, tr, off, rng.normal(size=S), rng.normal(size=S)


@pytest.mark.parametrize("seed", range(6))
def test_viterbi_and_forward_backward_equal_min_sum_and_sum_product(seed):
    rng = np.random.default_rng(seed)
    S = 2 + seed % 3
    U, tr, off, s0, s1 = random_problem(rng, S, n=5, start_end=seed % 2 == 0)
    beta = [1.0, 0.5, 3.0][seed % 3]
    labels, energies = chain.viterbi(U, tr, off, s0, s1)
    marg, free, pair = chain.forward_backward(U, tr, off, beta, s0, s1, return_pairwise=True)
    mm, _ = chain.min_marginals(U, tr, off, s0, s1)
    pair_engine = np.zeros((S, S))
    for i in range(len(off) - 1):
        a, b = off[i], off[i + 1]
        g = chain_graph(U[a:b], tr, s0, s1)
        r = fe.min_sum(g)
        assert r.exact
        assert abs(r.energy - energies[i]) < ATOL
        # both decoders return a minimizer: each one's energy is the minimum
        assert abs(g.energy({f"y{t}": int(labels[a + t]) for t in range(b - a)})
                   - r.energy) < ATOL
        m = fe.sum_product(g, beta=beta)
        assert m.exact
        assert abs(m.free_energy - free[i]) < ATOL
        for t in range(b - a):
            np.testing.assert_allclose(m.marginals[f"y{t}"], marg[a + t], atol=ATOL)
        # factor beliefs of the transition factors (inserted after the T unary factors)
        for t in range(1, b - a):
            pair_engine += m.factor_beliefs[(b - a) + t - 1]
        assert abs(fe.free_energy(g, beta=beta) - free[i]) < ATOL
        for t in range(b - a):
            # min-marginal of y_t = s: clamp y_t and minimize the rest
            for s in range(S):
                ref = fe.min_sum(g, evidence={f"y{t}": s}).energy if np.isfinite(mm[a + t, s]) \
                    else None
                if ref is not None:
                    assert abs(ref - mm[a + t, s]) < ATOL
    np.testing.assert_allclose(pair, pair_engine, atol=ATOL)


@pytest.mark.parametrize("seed", range(6))
def test_most_offending_equals_engine(seed):
    rng = np.random.default_rng(50 + seed)
    S = 2 + seed % 3
    U, tr, off, s0, s1 = random_problem(rng, S, n=5, start_end=seed % 3 != 0)
    gold = rng.integers(0, S, size=off[-1])
    if seed % 2:
        gold = chain.viterbi(U, tr, off, s0, s1)[0]
    labels, energies = chain.most_offending(U, tr, off, gold, s0, s1)
    for i in range(len(off) - 1):
        a, b = off[i], off[i + 1]
        g = chain_graph(U[a:b], tr, s0, s1)
        target = {f"y{t}": int(gold[a + t]) for t in range(b - a)}
        if b == a:
            # no incorrect answer: the engine refuses, the chain reports +inf
            assert np.isinf(energies[i]) and energies[i] > 0
            with pytest.raises(ValueError, match="no assignment with finite energy"):
                fe.most_offending(g, target)
            continue
        assignment, e = fe.most_offending(g, target)
        assert abs(e - energies[i]) < ATOL
        assert any(assignment[f"y{t}"] != gold[a + t] for t in range(b - a))
        assert abs(g.energy({f"y{t}": int(labels[a + t]) for t in range(b - a)}) - e) < ATOL


@pytest.mark.parametrize("seed", range(6))
def test_latent_substates_equal_engine_with_latent_variables(seed):
    rng = np.random.default_rng(100 + seed)
    state_label = np.array([0, 0, 1, 2, 2, 2])[: 4 + seed % 3]
    S = len(state_label)
    n_labels = int(state_label.max()) + 1
    U, tr, off, s0, s1 = random_problem(rng, S, n=4, max_len=4, start_end=seed % 2 == 1)
    beta = 0.7
    labels, energies = chain.viterbi(U, tr, off, s0, s1, state_label=state_label)
    lab_marg, free = chain.forward_backward(U, tr, off, beta, s0, s1, state_label=state_label)
    gold = rng.integers(0, n_labels, size=off[-1])
    mo_labels, mo_energies = chain.most_offending(U, tr, off, gold, s0, s1,
                                                  state_label=state_label)
    clamp = state_label[None, :] == gold[:, None]
    _, free_clamped = chain.forward_backward(U, tr, off, beta, s0, s1, mask=clamp,
                                             state_label=state_label)
    for i in range(len(off) - 1):
        a, b = off[i], off[i + 1]
        T = b - a
        g = chain_graph(U[a:b], tr, s0, s1, state_label)
        r = fe.min_sum(g)
        assert abs(r.energy - energies[i]) < ATOL
        assert [r.assignment[f"y{t}"] for t in range(T)] == list(labels[a:b]) or \
            abs(fe.min_sum(g, evidence={f"y{t}": int(labels[a + t]) for t in range(T)}).energy
                - r.energy) < ATOL
        m = fe.sum_product(g, beta=beta)
        assert abs(m.free_energy - free[i]) < ATOL
        for t in range(T):
            np.testing.assert_allclose(m.marginals[f"y{t}"], lab_marg[a + t], atol=ATOL)
        target = {f"y{t}": int(gold[a + t]) for t in range(T)}
        if T == 0:
            assert np.isinf(mo_energies[i])
        else:
            _, e_mo = fe.most_offending(g, target)
            assert abs(e_mo - mo_energies[i]) < ATOL
            assert (mo_labels[a:b] != gold[a:b]).any()
        # clamped free energy F(Y): evidence on the visible labels, substates summed out
        if np.isinf(free_clamped[i]):
            # the engine refuses evidence with no finite-energy completion
            with pytest.raises(ValueError, match="no assignment has finite energy"):
                fe.free_energy(g, beta=beta, evidence=target)
        else:
            assert abs(fe.free_energy(g, beta=beta, evidence=target) - free_clamped[i]) < ATOL


@pytest.mark.parametrize("seed", range(8))
def test_loss_augmented_viterbi_equals_engine_with_loss_factors(seed):
    # the loss term as unary factors on the visible labels: -loss_t where label != gold_t
    rng = np.random.default_rng(150 + seed)
    latent = seed % 2 == 1
    state_label = np.array([0, 0, 1, 2, 2]) if latent else None
    S = 5 if latent else 2 + seed % 3
    n_labels = 3 if latent else S
    U, tr, off, s0, s1 = random_problem(rng, S, n=5, start_end=seed % 4 < 2)
    gold = rng.integers(0, n_labels, size=off[-1])
    loss = rng.random(off[-1]) * 2.0
    labels, energies = chain.loss_augmented_viterbi(U, tr, off, gold, loss, s0, s1,
                                                    state_label=state_label)
    for i in range(len(off) - 1):
        a, b = off[i], off[i + 1]
        T = b - a
        wrong = np.arange(n_labels)[None, :] != gold[a:b, None]
        label_loss = -loss[a:b, None] * wrong                           # (T, L)
        g = chain_graph(U[a:b], tr, s0, s1, state_label,
                        label_energy=label_loss if state_label is not None else None)
        if state_label is None:
            g = chain_graph(U[a:b] + label_loss, tr, s0, s1)
        r = fe.min_sum(g)
        assert r.exact
        if T == 0:
            assert energies[i] == 0.0 and r.energy == 0.0
            continue
        hamming_loss = (loss[a:b] * (labels[a:b] != gold[a:b])).sum()
        # the chain's answer reaches the engine's augmented minimum...
        assert abs(energies[i] - hamming_loss - r.energy) < ATOL
        # ...and its reported energy is the true E(y) of its labels (substates minimized)
        plain = chain_graph(U[a:b], tr, s0, s1, state_label)
        ev = {f"y{t}": int(labels[a + t]) for t in range(T)}
        e_true = plain.energy(ev) if state_label is None else fe.min_sum(plain, evidence=ev).energy
        assert abs(energies[i] - e_true) < ATOL
