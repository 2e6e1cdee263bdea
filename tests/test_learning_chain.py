"""The chain objective against brute-force enumeration and central differences."""
import itertools
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import logsumexp

from factorebm import chain, losses
from factorebm.learning import ChainCorpus, LinearChainEnergy, chain_objective

# square_square's margin 6.0 lies inside the range of E- of the positive instances, so its
# push-up term max(0, m - E-)^2 is active for some sequences (see the guard test below).
SQ_MARGIN = 6.0
LOSSES = [("nll", {}), ("hinge", {"margin": 1.0}), ("log", {}), ("mce", {}),
          ("perceptron", {}), ("energy", {}), ("square_square", {"margin": SQ_MARGIN}),
          ("square_exp", {"gamma": 0.5}), ("lvq2", {"delta": 1.0})]


def _instance(seed, n_features=5, K=3, lengths=(3, 0, 1, 4, 2), positive=False, H=1):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    X = sp.random(N, n_features, density=0.5, random_state=seed, format="csr")
    if positive:
        X.data[:] = rng.uniform(0.5, 1.5, X.nnz)
    y = rng.integers(0, K, N)
    model = LinearChainEnergy(n_features, K, n_substates=H)
    w = rng.uniform(0.2, 1.5, model.n_weights) if positive else rng.standard_normal(
        model.n_weights)
    return model, X, offsets, y, w


def _brute_force(model, X, offsets, y, w, name, kw, l2, beta=1.0):
    """Independent value: enumerate every label sequence of every sentence with numpy."""
    K = model.n_states
    H = model.n_substates
    F = model.n_features
    W = w[:F * K].reshape(F, K)
    T = w[F * K:F * K + K * K].reshape(K, K)
    S = w[F * K + K * K:F * K + K * K + K]
    E = w[F * K + K * K + K:]
    U = X.toarray() @ W

    def energy(u, seq):
        e = S[seq[0]] + E[seq[-1]] + sum(u[t, seq[t]] for t in range(len(seq)))
        return e + sum(T[seq[t - 1], seq[t]] for t in range(1, len(seq)))

    spec = losses.get(name)
    total = 0.0
    n = len(offsets) - 1
    for i in range(n):
        a, b = offsets[i], offsets[i + 1]
        if a == b:
            continue
        u = U[a:b]
        gold = tuple(y[a:b])
        # state sequences; a state s has label s // H
        all_e = {seq: energy(u, seq) for seq in itertools.product(range(K), repeat=b - a)}

        def label(seq):
            return tuple(s // H for s in seq)
        gold_e = np.array([e for s, e in all_e.items() if label(s) == gold])
        if spec.e_minus == "free_energy":
            e_plus = -logsumexp(-beta * gold_e) / beta
        else:
            e_plus = gold_e.min()
        if spec.e_minus == "free_energy":
            e_minus = -logsumexp(-beta * np.array(list(all_e.values()))) / beta
        elif spec.e_minus == "min_all":
            e_minus = min(all_e.values())
        elif spec.e_minus == "most_offending":
            e_minus = min(e for s, e in all_e.items() if label(s) != gold)
        else:
            e_minus = None
        params = dict(kw)
        if "beta" in spec.params:
            params.setdefault("beta", beta)
        total += spec(e_plus, e_minus, **params)[0]
    return total / n + 0.5 * l2 * w @ w


@pytest.mark.parametrize("name,kw", LOSSES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_objective_matches_brute_force(name, kw, seed):
    positive = losses.get(name).needs_nonnegative
    model, X, offsets, y, w = _instance(seed, positive=positive)
    for beta in ([1.0, 0.7] if name == "nll" else [1.0]):
        v, _ = chain_objective(w, model, X, offsets, y, loss=name, l2=0.3, beta=beta, **kw)
        ref = _brute_force(model, X, offsets, y, w, name, kw, 0.3, beta=beta)
        assert v == pytest.approx(ref, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("name,kw", LOSSES)
def test_latent_substates_objective_and_gradient(name, kw):
    # 2 labels x 2 latent substates: E+ minimizes (or, for NLL, sums out) the substates of
    # the gold labels; E- ranges over state paths whose LABEL sequence differs.
    positive = losses.get(name).needs_nonnegative
    model, X, offsets, y, w = _instance(9, K=2, H=2, lengths=(3, 0, 1, 4, 2),
                                        positive=positive)
    assert model.n_states == 4 and list(model.state_label) == [0, 0, 1, 1]
    beta = 0.9 if name == "nll" else 1.0
    v, g = chain_objective(w, model, X, offsets, y, loss=name, l2=0.1, beta=beta, **kw)
    ref = _brute_force(model, X, offsets, y, w, name, kw, 0.1, beta=beta)
    assert v == pytest.approx(ref, rel=1e-10, abs=1e-10)

    def f(wv):
        return chain_objective(wv, model, X, offsets, y, loss=name, l2=0.1, beta=beta, **kw)[0]
    np.testing.assert_allclose(g, _fd_grad(f, w), rtol=1e-5, atol=1e-6 * max(1.0, abs(v)))


def _fd_grad(f, w, h=1e-6):
    g = np.empty_like(w)
    for j in range(w.size):
        e = np.zeros_like(w)
        e[j] = h
        g[j] = (f(w + e) - f(w - e)) / (2 * h)
    return g


@pytest.mark.parametrize("name,kw", LOSSES)
@pytest.mark.parametrize("seed", [0, 5])
def test_gradient_matches_central_differences(name, kw, seed):
    positive = losses.get(name).needs_nonnegative
    model, X, offsets, y, w = _instance(seed, positive=positive)
    beta = 0.8 if name == "nll" else 1.0

    def f(wv):
        return chain_objective(wv, model, X, offsets, y, loss=name, l2=0.2, beta=beta, **kw)[0]

    v, g = chain_objective(w, model, X, offsets, y, loss=name, l2=0.2, beta=beta, **kw)
    fd = _fd_grad(f, w)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6 * max(1.0, abs(v)))


def test_lvq2_instance_exercises_its_linear_region():
    # Guard for the test above: with positive weights some sequences lie strictly inside
    # 0 < (E+ - E-)/E- < 1, where the LVQ2 gradient is non-zero.
    model, X, offsets, y, w = _instance(0, positive=True)
    _, g = chain_objective(w, model, X, offsets, y, loss="lvq2")
    assert np.abs(g).max() > 1e-3


@pytest.mark.parametrize("seed,kw", [(0, {}), (5, {}), (9, {"K": 2, "H": 2})])
def test_square_square_push_up_term_is_active_in_the_gradient_checks(seed, kw):
    # Guard for the gradient tests above (seeds 0 and 5, and the latent instance 9): some
    # sequences have E- < margin, so max(0, m - E-)^2 contributes; others have E- > margin.
    model, X, offsets, y, w = _instance(seed, positive=True, **kw)
    _, T, S, E = model.unpack(w)
    _, e_minus = chain.most_offending(model.unary(w, X), T, offsets, y, S, E,
                                      state_label=model.state_label)
    e_minus = np.asarray(e_minus)[np.diff(offsets) > 0]
    assert 0 < np.sum(e_minus < SQ_MARGIN) < e_minus.size, e_minus
    _, g = chain_objective(w, model, X, offsets, y, loss="square_square", margin=SQ_MARGIN)
    _, g_off = chain_objective(w, model, X, offsets, y, loss="square_square", margin=1e-3)
    assert np.abs(g - g_off).max() > 1e-2


def test_losses_assuming_nonnegative_energies_warn_once_on_negative_ones():
    model, X, offsets, y, w = _instance(1)               # energies of both signs
    for name in ("square_square", "square_exp"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            chain_objective(w, model, X, offsets, y, loss=name)
        got = [c for c in caught if issubclass(c.category, RuntimeWarning)]
        assert len(got) == 1, name
        assert "non-negative energies" in str(got[0].message) and name in str(got[0].message)
        assert got[0].filename == __file__               # points at the caller
    _, Xp, _, _, wp = _instance(1, positive=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("square_square", "square_exp", "lvq2"):
            chain_objective(wp, model, Xp, offsets, y, loss=name)
        chain_objective(w, model, X, offsets, y, loss="hinge")   # no condition on the sign


def test_threads_give_identical_results():
    model, X, offsets, y, w = _instance(7, n_features=40, K=4, lengths=list(range(1, 60)))
    for name in ("nll", "hinge", "perceptron"):
        v1, g1 = chain_objective(w, model, X, offsets, y, loss=name, n_threads=1)
        v2, g2 = chain_objective(w, model, X, offsets, y, loss=name, n_threads=2)
        assert v1 == pytest.approx(v2, rel=1e-13)
        np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-14)


def test_unary_pack_unpack_and_index_dtypes():
    model, X, offsets, y, w = _instance(3)
    W, T, S, E = model.unpack(w)
    np.testing.assert_allclose(model.unary(w, X), X.toarray() @ W, rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(model.pack(W, T, S, E), w)
    W[0, 0] = 42.0  # views into the flat vector
    assert w[0] == 42.0
    X64 = sp.csr_matrix((X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)),
                        shape=X.shape)
    np.testing.assert_array_equal(model.unary(w, X64), model.unary(w, X))
    v1, g1 = chain_objective(w, model, X, offsets, y, loss="nll")
    v2, g2 = chain_objective(w, model, X64, offsets, y, loss="nll")
    v3, g3 = chain_objective(w, model, X.tocoo(), offsets, y, loss="nll")
    assert v1 == pytest.approx(v2, rel=1e-14) and v1 == pytest.approx(v3, rel=1e-14)
    np.testing.assert_allclose(g1, g2, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(g1, g3, rtol=1e-13, atol=1e-15)


def test_corpus_cache_follows_the_matrix():
    model, X, offsets, y, w = _instance(4)
    v1, _ = chain_objective(w, model, X, offsets, y, loss="nll")
    X2 = X.copy()
    X2.data *= 2.0
    v2, _ = chain_objective(w, model, X2, offsets, y, loss="nll")
    ref2 = _brute_force(model, X2, offsets, y, w, "nll", {}, 0.0)
    assert v2 == pytest.approx(ref2, rel=1e-10)
    y2 = (y + 1) % model.n_labels
    v3, _ = chain_objective(w, model, X2, offsets, y2, loss="nll")
    assert v3 == pytest.approx(_brute_force(model, X2, offsets, y2, w, "nll", {}, 0.0),
                               rel=1e-10)
    corpus = ChainCorpus(model, X, offsets, y)
    v4, _ = chain_objective(w, model, corpus, None, None, loss="nll")
    assert v4 == pytest.approx(v1, rel=1e-14)


def test_energy_loss_objective_is_linear_and_unbounded_below():
    # The collapse: with a free energy per answer, pulling every E+ down never stops.
    model, X, offsets, y, w = _instance(2)
    v, g = chain_objective(w, model, X, offsets, y, loss="energy")
    v2, _ = chain_objective(w - 10 * g, model, X, offsets, y, loss="energy")
    assert v2 < v - 9 * (g @ g)


def test_bad_input_raises_clear_errors():
    model, X, offsets, y, w = _instance(1)
    with pytest.raises(ValueError, match="weight vector must have shape"):
        chain_objective(w[:-1], model, X, offsets, y)
    with pytest.raises(ValueError, match=r"y\[.*\] = 7 is not a label id"):
        bad = y.copy()
        bad[2] = 7
        chain_objective(w, model, X, offsets, bad)
    with pytest.raises(ValueError, match="one label per token"):
        chain_objective(w, model, X, offsets, y[:-1])
    with pytest.raises(ValueError, match="non-decreasing"):
        chain_objective(w, model, X, np.array([0, 5, 3, 10]), y)
    with pytest.raises(ValueError, match="start at 0 and end"):
        chain_objective(w, model, X, offsets[:-1], y)
    with pytest.raises(ValueError, match="feature columns"):
        m6 = LinearChainEnergy(6, 3)
        chain_objective(np.zeros(m6.n_weights), m6, X, offsets, y)
    with pytest.raises(ValueError, match="unknown loss"):
        chain_objective(w, model, X, offsets, y, loss="nope")
    with pytest.raises(ValueError, match="takes no parameter"):
        chain_objective(w, model, X, offsets, y, loss="nll", margin=2.0)
    with pytest.raises(ValueError, match="beta"):
        chain_objective(w, model, X, offsets, y, beta=0.0)
    Xnan = X.copy()
    Xnan.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        chain_objective(w, model, Xnan, offsets, y)
    with pytest.raises(ValueError, match="n_labels"):
        LinearChainEnergy(3, 0)
    with pytest.raises(ValueError, match="2 labels"):
        m1 = LinearChainEnergy(5, 1)
        chain_objective(np.zeros(m1.n_weights), m1, X, offsets, np.zeros_like(y), loss="hinge")
