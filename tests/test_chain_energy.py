"""ChainEnergy over any emission module, the batch objective and the one learner:
gradients against finite differences for every loss, LinearChainEnergy as a special case,
partial labels against brute force, fit_graphs against fit_chain on the same chain."""
import itertools

import numpy as np
import pytest
import scipy.sparse as sp

import factorebm as fe
from factorebm import losses
from factorebm import modules as nn
from factorebm.learning import (ChainEnergy, ChainObjective, LinearChainEnergy,
                                ParametricGraph, chain_objective, graph_objective)
from factorebm.optimize import fit_chain, fit_graphs, minimize

ALL_LOSSES = losses.available()


def _corpus(seed=0, lengths=(3, 0, 1, 4, 2), d=3, K=3):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    X = rng.standard_normal((N, d))
    y = rng.integers(0, K, N)
    return X, offsets, y


def _mlp_chain(d=3, K=3, H=1, hidden=5, positive=False):
    layers = [nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, K * H)]
    if positive:                       # energies in (0, 1): for losses that need E >= 0
        layers.append(nn.Sigmoid())
    return ChainEnergy(nn.Sequential(*layers), K, H)


def _numeric_gradient(f, w, eps=1e-6):
    g = np.zeros_like(w)
    for i in range(w.size):
        e = np.zeros_like(w)
        e[i] = eps
        g[i] = (f(w + e) - f(w - e)) / (2 * eps)
    return g


@pytest.mark.filterwarnings("ignore:loss .* assumes non-negative energies")
@pytest.mark.parametrize("H", [1, 2])
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_mlp_chain_gradient_matches_finite_differences_for_every_loss(loss, H):
    X, offsets, y = _corpus(1)
    positive = losses.get(loss).needs_nonnegative
    model = _mlp_chain(H=H, positive=positive)
    w = model.init_weights(random_state=2) + 0.3 * np.random.default_rng(3).standard_normal(
        model.n_weights)
    if positive:                       # positive transition, start and end energies too
        w[model.n_emit:] = np.abs(w[model.n_emit:]) + 0.1
    kw = {"l2": 0.01}
    v, g = chain_objective(w, model, X, offsets, y, loss, **kw)
    num = _numeric_gradient(lambda wv: chain_objective(wv, model, X, offsets, y, loss, **kw)[0],
                            w)
    assert np.isfinite(v)
    assert np.abs(g - num).max() < 1e-6 * max(1.0, np.abs(num).max()), loss


def test_linear_chain_energy_is_chain_energy_with_sparse_linear():
    rng = np.random.default_rng(4)
    X = sp.random(20, 12, density=0.3, random_state=5, format="csr")
    offsets = np.array([0, 5, 9, 9, 20])
    y = rng.integers(0, 3, 20)
    lin = LinearChainEnergy(12, 3, 2)
    gen = ChainEnergy(nn.SparseLinear(12, 6), 3, 2)
    w = lin.init_weights(random_state=1)
    np.testing.assert_array_equal(w, gen.init_weights(random_state=1))
    for loss in ("nll", "hinge", "perceptron"):
        v1, g1 = chain_objective(w, lin, X, offsets, y, loss)
        v2, g2 = chain_objective(w, gen, X, offsets, y, loss)
        assert v1 == v2
        np.testing.assert_array_equal(g1, g2)
    np.testing.assert_array_equal(lin.predict(w, X, offsets), gen.predict(w, X, offsets))


def _brute_partial_nll(model, w, X, offsets, y):
    """Mean over sequences of F(clamped to the known labels) - F(free), by enumeration of
    every state path (substates included)."""
    U = model.unary(w, X)
    _, T, S0, E = ChainEnergy.unpack(model, w)
    S = model.n_states
    lab = np.arange(S) if model.state_label is None else model.state_label
    total = 0.0
    n = offsets.size - 1
    for i in range(n):
        a, b = offsets[i], offsets[i + 1]
        if a == b:
            continue
        energies_all, energies_ok = [], []
        for path in itertools.product(range(S), repeat=b - a):
            e = S0[path[0]] + E[path[-1]] + sum(U[a + t, s] for t, s in enumerate(path))
            e += sum(T[p, q] for p, q in zip(path[:-1], path[1:]))
            energies_all.append(e)
            if all(y[a + t] < 0 or lab[s] == y[a + t] for t, s in enumerate(path)):
                energies_ok.append(e)
        f_ok = -np.logaddexp.reduce(-np.array(energies_ok))
        f_all = -np.logaddexp.reduce(-np.array(energies_all))
        total += f_ok - f_all
    return total / n


@pytest.mark.parametrize("H", [1, 2])
def test_partial_labels_sum_over_the_unknown_ones(H):
    X, offsets, y = _corpus(6, lengths=(3, 2, 4, 1))
    y = y.copy()
    y[[1, 4, 5, 7]] = -1
    model = _mlp_chain(H=H)
    w = model.init_weights(random_state=0) + 0.5 * np.random.default_rng(1).standard_normal(
        model.n_weights)
    v, g = chain_objective(w, model, X, offsets, y, "nll")
    assert v == pytest.approx(_brute_partial_nll(model, w, X, offsets, y), rel=1e-10)
    num = _numeric_gradient(lambda wv: chain_objective(wv, model, X, offsets, y, "nll")[0], w)
    assert np.abs(g - num).max() < 1e-6
    # an all-unknown sequence has zero loss
    y_none = np.full_like(y, -1)
    assert chain_objective(w, model, X, offsets, y_none, "nll")[0] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown gold labels"):
        chain_objective(w, model, X, offsets, y, "hinge")
    with pytest.raises(ValueError, match="or -1 for an unknown label"):
        chain_objective(w, model, X, offsets, np.full_like(y, -2), "nll")


def _chain_as_parametric_graphs(X, offsets, y, K):
    """Each sequence as a ParametricGraph over the LinearChainEnergy weight layout
    [W_emit (F, K), transition (K, K), start (K,), end (K,)]."""
    F = X.shape[1]
    n_w = F * K + K * K + 2 * K
    samples = []
    for i in range(offsets.size - 1):
        a, b = offsets[i], offsets[i + 1]
        if a == b:
            continue
        g = fe.FactorGraph()
        names = [f"y{t}" for t in range(b - a)]
        for v in names:
            g.add_variable(v, K)
        rows = []                                     # one Phi block per factor, in order
        for t in range(b - a):                        # emission factor of token t
            g.add_factor([names[t]], np.zeros(K))
            block = np.zeros((K, n_w))
            for k in range(K):
                block[k, np.arange(F) * K + k] = X[a + t]
            if t == 0:
                block[np.arange(K), F * K + K * K + np.arange(K)] += 1.0      # start
            if t == b - a - 1:
                block[np.arange(K), F * K + K * K + K + np.arange(K)] += 1.0  # end
            rows.append(block)
        for t in range(1, b - a):                     # transitions
            g.add_factor([names[t - 1], names[t]], np.zeros((K, K)))
            block = np.zeros((K * K, n_w))
            block[np.arange(K * K), F * K + np.arange(K * K)] = 1.0
            rows.append(block)
        pg = ParametricGraph(g, sp.csr_matrix(np.vstack(rows)))
        samples.append((pg, {names[t]: int(y[a + t]) for t in range(b - a)}))
    return samples


@pytest.mark.parametrize("loss", ["nll", "hinge", "perceptron", "log", "mce"])
def test_fit_graphs_on_a_chain_shaped_parametric_graph_matches_fit_chain(loss):
    X, offsets, y = _corpus(7, lengths=(3, 4, 1, 2, 5))
    X = X[:, :2]
    K = 3
    model = LinearChainEnergy(2, K)
    samples = _chain_as_parametric_graphs(X, offsets, y, K)
    rng = np.random.default_rng(8)
    for _ in range(3):
        w = rng.standard_normal(model.n_weights)
        vc, gc = chain_objective(w, model, sp.csr_matrix(X), offsets, y, loss, l2=0.1)
        vg, gg = graph_objective(w, samples, loss, l2=0.1)
        assert vg == pytest.approx(vc, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(gg, gc, rtol=1e-9, atol=1e-12)
    # and the one learner, fed either objective, takes the same path
    opt = "lbfgs" if loss == "nll" else "adagrad"
    kw = dict(loss=loss, optimizer=opt, max_iter=5, l2=0.1, verbose=False, random_state=0,
              batch_size=2)
    wc, _ = fit_chain(model, sp.csr_matrix(X), offsets, y, **kw)
    wg, _ = fit_graphs(samples, **kw)
    np.testing.assert_allclose(wg, wc, rtol=1e-7, atol=1e-9)


def _two_input_corpus(seed=9, n_features=15, n_items=6):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, 12)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    Xs = sp.random(N, n_features, density=0.25, random_state=seed, format="csr")
    ids = rng.integers(0, n_items, N)
    y = ids % 3                   # learnable through the embedding
    emission = nn.Sum(nn.Sequential(nn.Select(0), nn.SparseLinear(n_features, 6)),
                      nn.Sequential(nn.Select(1), nn.Embedding(n_items, 4), nn.Tanh(),
                                    nn.Linear(4, 6)))
    return ChainEnergy(emission, 3, 2), (Xs, ids), offsets, y


def test_mini_batch_row_sparse_gradient_equals_the_full_gradient_of_the_same_sequences():
    model, X, offsets, y = _two_input_corpus()
    obj = ChainObjective(model, X, offsets, y, "nll")
    w = model.init_weights(random_state=3) + 0.2 * np.random.default_rng(0).standard_normal(
        model.n_weights)
    units = np.array([7, 2, 11, 4])
    v_batch, g_batch = obj.unit_value_and_grad(w, units)
    # the same sequences as a corpus of their own, through the full (dense) path
    toks = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in units])
    sub_off = np.concatenate([[0], np.cumsum(np.diff(offsets)[units])])
    sub = ChainObjective(model, (X[0][toks], X[1][toks]), sub_off, y[toks], "nll")
    v_full, g_full = sub.value_and_grad(w)
    assert v_batch == pytest.approx(v_full, rel=1e-12)
    np.testing.assert_allclose(g_batch, g_full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sgd", "perceptron"])
def test_stochastic_optimizers_train_a_module_architecture_identically_on_1_and_2_threads(
        optimizer):
    model, X, offsets, y = _two_input_corpus()
    loss = "perceptron" if optimizer == "perceptron" else "nll"
    l2 = 0.0 if optimizer == "perceptron" else 1e-3
    obj0 = ChainObjective(model, X, offsets, y, loss)
    w0 = model.init_weights(random_state=0)
    v0 = obj0.value_and_grad(w0)[0]
    runs = [fit_chain(model, X, offsets, y, loss=loss, optimizer=optimizer, max_iter=8,
                      batch_size=3, l2=l2, l1=0.0, verbose=False, random_state=1,
                      n_threads=nt)[0] for nt in (1, 2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert obj0.value_and_grad(runs[0])[0] < v0


def test_minimize_takes_any_batch_objective_and_l1_makes_weights_sparse():
    model, X, offsets, y = _two_input_corpus()
    obj = ChainObjective(model, X, offsets, y, "nll")
    w_l1, hist = minimize(obj, optimizer="adagrad", l1=0.05, l2=0.0, max_iter=5,
                          batch_size=4, verbose=False, random_state=0)
    w_no, _ = minimize(obj, optimizer="adagrad", l1=0.0, l2=0.0, max_iter=5, batch_size=4,
                       verbose=False, random_state=0)
    assert len(hist) == 5 and all(np.isfinite(h["loss"]) for h in hist)
    assert np.sum(w_l1 == 0) > np.sum(w_no == 0) + 10
    with pytest.raises(ValueError, match="BatchObjective"):
        minimize(object())


def test_bad_input_for_chain_energies():
    X, offsets, y = _corpus(0)
    model = _mlp_chain()
    w = model.init_weights(random_state=0)
    with pytest.raises(ValueError, match=r"weight vector must have shape \(%d,\)"
                       % model.n_weights):
        chain_objective(w[:-1], model, X, offsets, y)
    bad = w.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"w\[3\] = nan is not finite"):
        chain_objective(bad, model, X, offsets, y)
    with pytest.raises(ValueError, match=r"Linear\(3, 5\): input must be a \(n, 3\) float"):
        chain_objective(w, model, X[:, :2], offsets, y)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="input contains NaN"):
        chain_objective(w, model, Xn, offsets, y)
    with pytest.raises(ValueError, match="outputs 4 columns, the chain has 6 states"):
        ChainEnergy(nn.Linear(3, 4), 3, 2)
    with pytest.raises(ValueError, match="must be a factorebm.modules.Module"):
        ChainEnergy(np.zeros(3), 3)


def test_initial_noise_drawn_in_slices_is_the_noise_of_one_draw():
    """init_weights draws its substate noise a slice at a time (no second array of the
    weights' size): the same weights as one draw of them all, slices straddled or not."""
    from factorebm.energies import chain as chain_energies
    for n_features, n_labels, H in ((90_000, 9, 3), (10, 4, 2)):
        model = LinearChainEnergy(n_features, n_labels, H)
        S = n_labels * H
        assert (model.n_weights > 2 * chain_energies._NOISE_SLICE) == (n_features > 10)
        rng = np.random.default_rng(11)
        want = np.zeros(model.n_weights)
        want[:model.n_emit] = model.emission.init_params(rng)
        want += 0.01 * rng.standard_normal(model.n_weights)
        np.testing.assert_array_equal(model.init_weights(11), want)
        assert want[n_features * S:].std() > 0.005       # the chain's weights get noise too
