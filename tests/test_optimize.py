"""Optimizers: lazy sparse updates equal dense ones, the averaged perceptron equals Collins',
training lowers the objective, L1, warm start, progress reporting, the line-search fallback,
errors."""
import itertools
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import factorebm as fe
from factorebm.learning import LinearChainEnergy, chain_objective
from factorebm.optimize import default_optimizer, fit_chain
from optim_reference import prox_catch_up as _prox_catch_up


def _corpus(seed=0, F=60, K=4, n=40, max_len=8, density=0.08):
    """A learnable corpus: labels are the Viterbi answers of a random 'true' model."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    X = sp.random(N, F, density=density, random_state=seed, format="csr",
                  data_rvs=lambda k: np.ones(k))
    model = LinearChainEnergy(F, K)
    w_true = 2.0 * rng.standard_normal(model.n_weights)
    W, T, S, E = model.unpack(w_true)
    y, _ = fe.chain.viterbi(model.unary(w_true, X), T, offsets, S, E)
    return model, X, offsets, y


@settings(max_examples=50, deadline=None)
@given(st.floats(-5, 5), st.floats(1e-3, 2.0), st.integers(0, 12), st.floats(0, 1.0),
       st.floats(0, 1.0))
def test_prox_catch_up_equals_k_single_steps(w, lr, k, l1, l2):
    W = np.array([[w, -w]])
    _prox_catch_up(W, lr, np.array([k]), l1, l2)
    ref = np.array([w, -w])
    for _ in range(k):
        ref = np.sign(ref) * np.maximum(0.0, np.abs(ref) - lr * l1) / (1.0 + lr * l2)
    np.testing.assert_allclose(W[0], ref, rtol=1e-10, atol=1e-12)


def _dense_reference(model, X, offsets, y, optimizer, loss, l1, l2, epochs, batch_size, eta,
                     seed, w0):
    """The same algorithm (SGD or AdaGrad) with dense updates of every coordinate at every
    step. The averaged perceptron has its own, independent reference: collins_perceptron."""
    rng = np.random.default_rng(seed)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    w = w0.copy()
    # AdaGrad's sums are float32 (each sum taken in float64, then rounded), its rates float64
    acc = np.zeros(w.shape, dtype=np.float32)
    for epoch in range(1, epochs + 1):
        lr_epoch = eta / epoch if optimizer == "sgd" else eta
        perm = rng.permutation(n)
        for s0 in range(0, n, batch_size):
            seqs = perm[s0:s0 + batch_size]
            tok = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in seqs])
            off_b = np.concatenate([[0], np.cumsum(lengths[seqs])])
            _, g = chain_objective(w, model, X[tok.astype(np.int64)], off_b, y[tok], loss=loss)
            if optimizer == "adagrad":
                acc[:] = acc.astype(np.float64) + g * g
                lr = np.where(acc > 0, eta / (1e-8 + np.sqrt(acc.astype(np.float64))), 0.0)
            else:
                lr = lr_epoch
            w = w - lr * g
            w = np.sign(w) * np.maximum(0.0, np.abs(w) - lr * l1) / (1.0 + lr * l2)
    return w


def collins_perceptron(candidates, gold, w0, epochs, batch_size, eta, seed):
    """The averaged perceptron (Collins 2002) in plain numpy, in energy form.

    Knows nothing of chains, graphs or losses: ``candidates[i]`` (n_answers_i, n_weights) holds
    the feature vector of every answer of sample i (energy ``candidates[i] @ w``) and
    ``gold[i]`` the row of the correct one. Each epoch visits the samples in the order
    ``default_rng(seed).permutation(n)`` (the optimizers' order), ``batch_size`` at a time; a
    step predicts ``argmin_a E`` for every sample of the batch at the same w and does
    ``w -= eta * sum(phi(gold) - phi(prediction))``. Returns ``(w_1 + ... + w_T) / T``, the
    average of the weights after each of the T steps (w_0 not included).
    """
    rng = np.random.default_rng(seed)
    w = np.array(w0, dtype=np.float64)
    total = np.zeros_like(w)
    n_steps = 0
    for _ in range(epochs):
        perm = rng.permutation(len(candidates))
        for s0 in range(0, len(candidates), batch_size):
            delta = np.zeros_like(w)
            for i in perm[s0:s0 + batch_size]:
                pred = int(np.argmin(candidates[i] @ w))
                delta += candidates[i][gold[i]] - candidates[i][pred]
            w = w - eta * delta
            total += w
            n_steps += 1
    return total / n_steps


def _chain_candidates(X, offsets, y, K):
    """Every labeling of every sequence as a feature vector over (W_emit (F, K) row-major,
    transition (K, K), start (K,), end (K,)), enumerated; and the gold labeling's row."""
    Xd = X.toarray()
    F = Xd.shape[1]
    n_weights = F * K + K * K + 2 * K
    candidates, gold = [], []
    for a, b in zip(offsets[:-1], offsets[1:]):
        seqs = list(itertools.product(range(K), repeat=int(b - a)))
        rows = np.zeros((len(seqs), n_weights))
        for r, seq in enumerate(seqs):
            for t, k in enumerate(seq):
                rows[r, k:F * K:K] += Xd[a + t]
                if t:
                    rows[r, F * K + seq[t - 1] * K + k] += 1.0
            if seq:
                rows[r, F * K + K * K + seq[0]] += 1.0
                rows[r, F * K + K * K + K + seq[-1]] += 1.0
        candidates.append(rows)
        gold.append(seqs.index(tuple(y[a:b])))
    return candidates, gold


@pytest.mark.parametrize("batch_size,learning_rate", [(1, 1.0), (3, 0.5)])
def test_averaged_perceptron_equals_collins_on_a_chain(batch_size, learning_rate):
    model, X, offsets, y = _corpus(8, F=7, K=3, n=12, max_len=4, density=0.3)
    w0 = np.random.default_rng(3).standard_normal(model.n_weights)   # no ties
    w, hist = fit_chain(model, X, offsets, y, loss="perceptron", max_iter=3,
                        batch_size=batch_size, learning_rate=learning_rate, w0=w0,
                        random_state=4, verbose=False)
    candidates, gold = _chain_candidates(X, offsets, y, model.n_states)
    ref = collins_perceptron(candidates, gold, w0, 3, batch_size, learning_rate, 4)
    np.testing.assert_allclose(w, ref, rtol=1e-12, atol=1e-12)
    assert not np.allclose(w, w0) and len(hist) == 3


@pytest.mark.parametrize("optimizer,loss,l1,l2", [
    ("adagrad", "hinge", 0.01, 0.05), ("adagrad", "nll", 0.0, 0.1), ("sgd", "log", 0.02, 0.0),
    ("sgd", "hinge", 0.01, 0.1)])
def test_lazy_sparse_updates_equal_dense_updates(optimizer, loss, l1, l2):
    model, X, offsets, y = _corpus(1)
    rng = np.random.default_rng(5)
    w0 = 0.1 * rng.standard_normal(model.n_weights)   # warm start: lazy shrinkage matters
    kw = dict(loss=loss, optimizer=optimizer, l1=l1, l2=l2, max_iter=3, batch_size=3,
              learning_rate=0.3, random_state=7, verbose=False)
    w, hist = fit_chain(model, X, offsets, y, w0=w0, **kw)
    ref = _dense_reference(model, X, offsets, y, optimizer, loss, l1, l2, 3, 3, 0.3, 7, w0)
    np.testing.assert_allclose(w, ref, rtol=1e-9, atol=1e-11)
    assert len(hist) == 3


@pytest.mark.parametrize("optimizer,loss", [
    ("lbfgs", "nll"), ("adagrad", "nll"), ("sgd", "nll"), ("adagrad", "hinge"),
    ("sgd", "hinge"), ("adagrad", "log"), ("adagrad", "mce"), ("perceptron", "perceptron")])
def test_training_lowers_the_objective(optimizer, loss):
    model, X, offsets, y = _corpus(2)
    l2 = 0.0 if optimizer == "perceptron" else 1e-3
    # the perceptron loss is homogeneous in w: measure it with the hinge instead
    measure = "hinge" if loss == "perceptron" else loss
    w0 = np.zeros(model.n_weights)
    v0, _ = chain_objective(w0, model, X, offsets, y, loss=measure, l2=l2)
    w, hist = fit_chain(model, X, offsets, y, loss=loss, optimizer=optimizer, l2=l2,
                        max_iter=15, verbose=False, random_state=0,
                        learning_rate=1.0 if optimizer == "sgd" else None)
    v1, _ = chain_objective(w, model, X, offsets, y, loss=measure, l2=l2)
    assert v1 < 0.7 * v0
    U = model.unary(w, X)
    _, T, S, E = model.unpack(w)
    pred, _ = fe.chain.viterbi(U, T, offsets, S, E)
    assert np.mean(pred == y) > 0.8


def test_lbfgs_l1_gives_exact_zeros_and_a_lower_penalized_objective():
    model, X, offsets, y = _corpus(3)
    w_l2, _ = fit_chain(model, X, offsets, y, loss="nll", l2=1e-3, max_iter=60,
                        verbose=False)
    w_l1, _ = fit_chain(model, X, offsets, y, loss="nll", l1=0.02, l2=1e-3, max_iter=60,
                        verbose=False)

    def penalized(wv):
        return chain_objective(wv, model, X, offsets, y, loss="nll", l2=1e-3)[0] \
            + 0.02 * np.abs(wv).sum()
    assert np.sum(w_l1 == 0) > np.sum(w_l2 == 0) + 10
    assert penalized(w_l1) < penalized(w_l2)
    assert penalized(w_l1) < penalized(np.zeros(model.n_weights))


def test_adagrad_l1_makes_weights_sparse():
    model, X, offsets, y = _corpus(4)
    w0, _ = fit_chain(model, X, offsets, y, loss="hinge", l1=0.0, l2=0.0, max_iter=5,
                      verbose=False, random_state=0)
    w1, _ = fit_chain(model, X, offsets, y, loss="hinge", l1=0.05, l2=0.0, max_iter=5,
                      verbose=False, random_state=0)
    assert np.sum(w1 == 0) > np.sum(w0 == 0) + 10


def test_warm_start_and_progress_reporting(capsys):
    model, X, offsets, y = _corpus(5)
    w0 = np.random.default_rng(0).standard_normal(model.n_weights)
    w_same, hist = fit_chain(model, X, offsets, y, loss="hinge", max_iter=0, w0=w0,
                             verbose=False)
    np.testing.assert_array_equal(w_same, w0)
    assert hist == []
    w1, _ = fit_chain(model, X, offsets, y, loss="nll", max_iter=5, verbose=False)
    calls = []

    def callback(w, epoch):
        calls.append(epoch)
        return {"dev_accuracy": 0.5}

    w2, hist = fit_chain(model, X, offsets, y, loss="nll", max_iter=5, w0=w1,
                         callback=callback, verbose=True)
    out = capsys.readouterr().out
    v1, _ = chain_objective(w1, model, X, offsets, y, loss="nll", l2=1e-4)
    v2, _ = chain_objective(w2, model, X, offsets, y, loss="nll", l2=1e-4)
    assert v2 < v1
    assert calls == list(range(1, len(hist) + 1))
    assert all(row["dev_accuracy"] == 0.5 for row in hist)
    assert out.count("dev_accuracy 0.5000") == len(hist)
    assert "fit_chain: loss nll, optimizer lbfgs" in out
    fit_chain(model, X, offsets, y, loss="hinge", max_iter=2, verbose=False)
    assert capsys.readouterr().out == ""


def test_default_optimizers():
    assert default_optimizer("nll") == "lbfgs"
    assert default_optimizer("perceptron") == "perceptron"
    for name in ("hinge", "log", "mce", "lvq2", "square_square", "square_exp"):
        assert default_optimizer(name) == "adagrad"


def test_bad_arguments_raise_clear_errors():
    model, X, offsets, y = _corpus(6)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        fit_chain(model, X, offsets, y, optimizer="rmsprop", verbose=False)
    with pytest.raises(ValueError, match="no regularization"):
        fit_chain(model, X, offsets, y, loss="perceptron", l2=0.1, verbose=False)
    with pytest.raises(ValueError, match="l1 must be a finite number >= 0"):
        fit_chain(model, X, offsets, y, l1=-1.0, verbose=False)
    for bad in (np.inf, np.nan):
        with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
            fit_chain(model, X, offsets, y, l2=bad, verbose=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit_chain(model, X, offsets, y, loss="hinge", batch_size=0, verbose=False)
    with pytest.raises(ValueError, match="learning_rate"):
        fit_chain(model, X, offsets, y, loss="hinge", learning_rate=-1.0, verbose=False)
    with pytest.raises(ValueError, match="unknown loss"):
        fit_chain(model, X, offsets, y, loss="squared", verbose=False)
    with pytest.raises(ValueError, match="weight vector must have shape"):
        fit_chain(model, X, offsets, y, w0=np.zeros(3), verbose=False)
    with pytest.raises(ValueError, match="LinearChainEnergy"):
        fit_chain(None, X, offsets, y, verbose=False)


def test_latent_substates_train_with_every_optimizer_family():
    model, X, offsets, y = _corpus(7)
    sub = LinearChainEnergy(model.n_features, model.n_labels, n_substates=2)
    for loss, optimizer in (("nll", "lbfgs"), ("hinge", "adagrad"), ("perceptron", None)):
        w0 = sub.init_weights(0)
        measure = "hinge" if loss == "perceptron" else loss
        v0, _ = chain_objective(w0, sub, X, offsets, y, loss=measure)
        w, _ = fit_chain(sub, X, offsets, y, loss=loss, optimizer=optimizer, max_iter=10,
                         verbose=False, random_state=0)
        v1, _ = chain_objective(w, sub, X, offsets, y, loss=measure)
        assert v1 < 0.8 * v0, loss
        assert np.mean(sub.predict(w, X, offsets) == y) > 0.7, loss


def test_fused_vector_kernels_match_numpy():
    from factorebm import _sparse
    rng = np.random.default_rng(0)
    x, y, z = rng.standard_normal((3, 10_001))
    for nt in (1, 2):
        assert _sparse.vec_dot(x, y, nt) == pytest.approx(x @ y, rel=1e-12)
        y2 = y.copy()
        got = _sparse.vec_axpy_dot(y2, 0.7, x, z, nt)
        np.testing.assert_allclose(y2, y + 0.7 * x, rtol=1e-15)
        assert got == pytest.approx(z @ (y + 0.7 * x), rel=1e-12)
        y3 = y.copy()
        got = _sparse.vec_scale_dot(y3, -2.5, z, nt)
        np.testing.assert_allclose(y3, -2.5 * y, rtol=1e-15)
        assert got == pytest.approx(z @ (-2.5 * y), rel=1e-12)
        out = np.empty_like(x)
        _sparse.vec_lincomb(out, x, 0.3, y, nt)
        np.testing.assert_allclose(out, x + 0.3 * y, rtol=1e-15)
        sy, yy = _sparse.vec_sub_dots(out, x, y, z, nt)
        np.testing.assert_allclose(out, x - y, rtol=1e-15)
        assert (sy, yy) == pytest.approx((z @ (x - y), (x - y) @ (x - y)), rel=1e-12)
        g = y.copy()
        _sparse.scale_add(g, 0.5, x, 0.1, nt)
        np.testing.assert_allclose(g, 0.5 * y + 0.1 * x, rtol=1e-15)


def _check_lbfgs_on_a_quadratic():
    """Independent: the minimizer of 0.5 (w - b)^T D (w - b) is b. Returns the number of
    objective evaluations and of iterations."""
    from factorebm.optimize import _lbfgs_smooth, _Reporter
    rng = np.random.default_rng(1)
    dvec = rng.uniform(0.1, 10.0, 300)
    b = rng.standard_normal(300)
    calls = []

    def fun(w):
        calls.append(1)
        r = w - b
        return 0.5 * float(r @ (dvec * r)), dvec * r
    rep = _Reporter("lbfgs", None, False)
    w = _lbfgs_smooth(fun, np.zeros(300), 500, 0.0, rep)
    np.testing.assert_allclose(w, b, atol=1e-7)
    assert all(a["loss"] >= c["loss"] for a, c in zip(rep.history, rep.history[1:]))
    return len(calls), len(rep.history)


def test_lbfgs_matches_scipy_on_a_quadratic():
    _check_lbfgs_on_a_quadratic()


def test_lbfgs_without_scipys_private_wolfe_search_falls_back_and_converges(monkeypatch):
    # A scipy without optimize._linesearch (a private module): the import fails, and L-BFGS
    # uses the public scipy.optimize.line_search instead.
    from factorebm import optimize
    monkeypatch.setitem(sys.modules, "scipy.optimize._linesearch", None)
    assert optimize._wolfe_search() is None
    n_calls, n_iter = _check_lbfgs_on_a_quadratic()
    assert n_calls < 4 * n_iter + 2                  # f and g share one evaluation
    # and a real objective: the NLL of a chain trains to the same optimum either way
    model, X, offsets, y = _corpus(3)
    w_fb, _ = fit_chain(model, X, offsets, y, loss="nll", l2=1e-2, max_iter=200, tol=0.0,
                        verbose=False)
    monkeypatch.undo()
    assert optimize._wolfe_search() is not None
    w_wolfe, _ = fit_chain(model, X, offsets, y, loss="nll", l2=1e-2, max_iter=200, tol=0.0,
                           verbose=False)
    v_fb, g_fb = chain_objective(w_fb, model, X, offsets, y, loss="nll", l2=1e-2)
    v_wolfe, _ = chain_objective(w_wolfe, model, X, offsets, y, loss="nll", l2=1e-2)
    assert v_fb == pytest.approx(v_wolfe, rel=1e-8)
    assert np.linalg.norm(g_fb) < 1e-5


def _binary(X):
    """X (all data 1.0) with its data as a stride-0 view, as the tagger trains on it."""
    return sp.csr_matrix((np.broadcast_to(np.float64(1.0), (X.nnz,)), X.indices, X.indptr),
                         shape=X.shape, copy=False)


@pytest.mark.parametrize("optimizer,loss", [("adagrad", "nll"), ("sgd", "hinge"),
                                            ("perceptron", "perceptron"), ("lbfgs", "nll")])
def test_binary_features_without_data_train_identically(optimizer, loss):
    model, X, offsets, y = _corpus(seed=5)
    Xb = _binary(X)
    assert Xb.data.strides == (0,)
    kw = dict(loss=loss, optimizer=optimizer, max_iter=3, batch_size=7, verbose=False,
              random_state=0)
    w_dense, _ = fit_chain(LinearChainEnergy(model.n_features, model.n_labels), X, offsets,
                           y, **kw)
    w_binary, _ = fit_chain(LinearChainEnergy(model.n_features, model.n_labels), Xb,
                            offsets, y, **kw)
    np.testing.assert_array_equal(w_binary, w_dense)
    # the full objective and the emission product read the data-free matrix too
    f0, g0 = chain_objective(w_dense, model, X, offsets, y, "nll", l2=0.1)
    f1, g1 = chain_objective(w_dense, LinearChainEnergy(model.n_features, model.n_labels),
                             Xb, offsets, y, "nll", l2=0.1)
    assert f1 == f0
    np.testing.assert_array_equal(g1, g0)
    np.testing.assert_array_equal(model.unary(w_dense, Xb), model.unary(w_dense, X))
