"""The mini-batch kernels of the stochastic chain optimizers (factorebm._optim) against
straightforward numpy versions: batch gathering, lazy proximal catch-up, and the AdaGrad, SGD
and averaged-perceptron steps, on random rows, with and without l1 / l2."""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from factorebm import _optim
from optim_reference import EPS_ADAGRAD as _EPS_ADAGRAD
from optim_reference import adagrad_rate as _adagrad_rate, prox_catch_up as _prox_catch_up

EPS = _EPS_ADAGRAD
REGS = [(0.0, 0.0), (0.03, 0.0), (0.0, 0.2), (0.03, 0.2)]
# AdaGrad trains with float32 accumulators; the kernels also take float64 ones (Adam's)
ACC_DTYPES = [np.float64, np.float32]


def _prox_steps(w, lr, k, l1, l2):
    """k proximal steps of rate lr applied one by one (the definition)."""
    w = np.array(w, dtype=np.float64)
    lr = np.broadcast_to(lr, w.shape)
    k = np.broadcast_to(np.asarray(k).reshape(-1, *([1] * (w.ndim - 1))), w.shape)
    for _ in range(int(k.max(initial=0))):
        step = k > 0
        new = np.sign(w) * np.maximum(0.0, np.abs(w) - lr * l1) / (1.0 + lr * l2)
        w = np.where(step, new, w)
        k = k - 1
    return w


def _state(rng, F=40, K=5, sparse_acc=True):
    W = rng.standard_normal((F, K))
    W[rng.random((F, K)) < 0.1] = 0.0
    acc = rng.uniform(0.0, 3.0, (F, K)) ** 2
    if sparse_acc:                       # coordinates that have seen no gradient yet
        acc[rng.random((F, K)) < 0.2] = 0.0
    last = rng.integers(-1, 20, F)
    return W, acc, last


# ---------------------------------------------------------------------------------------------
# batch_csr
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("out_dtype", [np.int32, np.int64])
def test_batch_csr_matches_fancy_indexing(index_dtype, out_dtype):
    rng = np.random.default_rng(0)
    n, F = 30, 50
    lengths = rng.integers(0, 6, n)      # includes empty sequences
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    X = sp.random(N, F, density=0.15, random_state=1, format="csr")
    X.data = rng.uniform(-2, 2, X.nnz)
    X.data[::7] = 0.0                    # stored zeros still count as occurrences
    X = sp.csr_matrix((X.data, X.indices.astype(index_dtype), X.indptr.astype(index_dtype)),
                      shape=X.shape)
    y = rng.integers(0, 4, N).astype(np.int64)
    local_of = np.full(F, -1, dtype=np.int64)
    bufs = dict(indptr=np.empty(N + 1, out_dtype), indices=np.empty(X.nnz, out_dtype),
                data=np.empty(X.nnz), y=np.empty(N, np.int64),
                offsets=np.empty(n + 1, np.int64), cols=np.empty(F, np.int64))
    for seqs in (rng.permutation(n)[:9], np.arange(n), np.array([], dtype=np.int64),
                 np.flatnonzero(lengths == 0)[:2]):
        seqs = np.ascontiguousarray(seqs, dtype=np.int64)
        n_tok, nnz, R = _optim.batch_csr(X.indptr, X.indices, X.data, offsets, y, seqs,
                                         local_of, bufs["indptr"], bufs["indices"],
                                         bufs["data"], bufs["y"], bufs["offsets"],
                                         bufs["cols"])
        tok = (np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in seqs])
               if seqs.size else np.zeros(0, np.int64)).astype(np.int64)
        Xt = X[tok]
        cols = bufs["cols"][:R]
        # the distinct features of the batch, in order of first occurrence
        _, first = np.unique(Xt.indices, return_index=True)
        np.testing.assert_array_equal(cols, Xt.indices[np.sort(first)])
        assert (n_tok, nnz) == (tok.size, Xt.nnz)
        Xb = sp.csr_matrix((bufs["data"][:nnz], bufs["indices"][:nnz],
                            bufs["indptr"][:n_tok + 1]), shape=(n_tok, R))
        np.testing.assert_array_equal(Xb.toarray(), Xt[:, cols].toarray())
        np.testing.assert_array_equal(Xb.indptr, Xt.indptr)   # same nonzeros, same order
        np.testing.assert_array_equal(bufs["y"][:n_tok], y[tok])
        np.testing.assert_array_equal(bufs["offsets"][:seqs.size + 1],
                                      np.concatenate([[0], np.cumsum(lengths[seqs])]))
        assert np.all(local_of == -1)    # the scratch map is left clean for the next batch


def test_batch_csr_empty_data_means_binary_features():
    # an empty data array stands for "every stored value is 1.0": the batch must come out as
    # the one gathered from an explicit array of ones
    rng = np.random.default_rng(3)
    n, F = 20, 40
    lengths = rng.integers(0, 6, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    X = sp.random(N, F, density=0.2, random_state=2, format="csr")
    y = rng.integers(0, 3, N).astype(np.int64)
    seqs = rng.permutation(n)[:12].astype(np.int64)
    results = []
    for data in (np.ones(X.nnz), np.empty(0)):
        local_of = np.full(F, -1, dtype=np.int64)
        bufs = [np.empty(N + 1, np.int32), np.empty(X.nnz, np.int32),
                np.full(X.nnz, np.nan), np.empty(N, np.int64), np.empty(n + 1, np.int64),
                np.empty(F, np.int64)]
        n_tok, nnz, R = _optim.batch_csr(X.indptr, X.indices, data, offsets, y, seqs,
                                         local_of, *bufs)
        results.append((n_tok, nnz, R, [b.copy() for b in bufs]))
    (n0, z0, r0, b0), (n1, z1, r1, b1) = results
    assert (n0, z0, r0) == (n1, z1, r1) and z0 > 0
    np.testing.assert_array_equal(b1[2][:z1], 1.0)
    sizes = (n0 + 1, z0, z0, n0, seqs.size + 1, r0)    # the filled part of each output
    for a, b, m in zip(b0, b1, sizes):
        np.testing.assert_array_equal(a[:m], b[:m])


# ---------------------------------------------------------------------------------------------
# Lazy catch-up
# ---------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.floats(-5, 5), st.floats(0, 4.0), st.floats(1e-3, 2.0), st.integers(0, 300),
       st.floats(0, 1.0), st.sampled_from([0.0, 1e-14, 1e-6, 0.3, 3.0]))
def test_catch_up_equals_k_single_steps(w, acc, eta, k, l1, l2):
    # one row, AdaGrad rate and SGD rate, against k steps applied one by one
    W = np.array([[w, -w, w]])
    A = np.array([[acc, acc, 0.0]])
    last = np.array([5 - k], dtype=np.int64)
    out = np.empty((1, 3))
    _optim.catch_up_rows(W, np.zeros(1, np.int64), last, 5, A, True, eta, EPS, l1, l2, out)
    lr = _adagrad_rate(eta, A)
    ref = _prox_steps([[w, -w, w]], lr, [k], l1, l2)
    np.testing.assert_allclose(W, ref, rtol=1e-11, atol=1e-13)
    np.testing.assert_array_equal(out, W)
    assert last[0] == 5
    W = np.array([[w, -w]])
    _optim.catch_up_rows(W, np.zeros(1, np.int64), np.array([5 - k]), 5, np.zeros((0, 2)),
                         False, eta, EPS, l1, l2, np.empty((1, 2)))
    np.testing.assert_allclose(W, _prox_steps([[w, -w]], eta, [k], l1, l2), rtol=1e-11,
                               atol=1e-13)


@pytest.mark.parametrize("l1,l2", REGS)
@pytest.mark.parametrize("adagrad", [True, False])
@pytest.mark.parametrize("acc_dtype", ACC_DTYPES)
def test_catch_up_rows_matches_numpy_closed_form(adagrad, l1, l2, acc_dtype):
    rng = np.random.default_rng(3)
    W, acc, last = _state(rng)
    acc = acc.astype(acc_dtype)
    cols = rng.permutation(W.shape[0])[:17]
    upto, eta = 25, 0.4
    W_ref = W.copy()
    pending = upto - last[cols]
    lr = _adagrad_rate(eta, acc[cols]) if adagrad else eta
    Wc = W_ref[cols]
    _prox_catch_up(Wc, lr, np.maximum(pending, 0), l1, l2)
    W_ref[cols] = Wc
    out = np.full((20, W.shape[1]), np.nan)
    _optim.catch_up_rows(W, cols, last, upto, acc if adagrad else np.zeros((0, 5)), adagrad,
                         eta, EPS, l1, l2, out)
    np.testing.assert_allclose(W, W_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(out[:cols.size], W[cols])
    assert np.all(np.isnan(out[cols.size:]))             # only R rows written
    assert np.all(last[cols] == upto)
    if l1 == l2 == 0:
        np.testing.assert_array_equal(W, W_ref)          # a pure gather


@pytest.mark.parametrize("l1,l2", REGS)
@pytest.mark.parametrize("adagrad", [True, False])
@pytest.mark.parametrize("acc_dtype", ACC_DTYPES)
def test_catch_up_all_matches_numpy_closed_form(adagrad, l1, l2, acc_dtype):
    rng = np.random.default_rng(4)
    W, acc, last = _state(rng)
    acc = acc.astype(acc_dtype)
    W_ref = W.copy()
    lr = _adagrad_rate(0.2, acc) if adagrad else 0.2
    _prox_catch_up(W_ref, lr, 30 - last, l1, l2)
    _optim.catch_up_all(W, last, 30, acc if adagrad else np.zeros((0, 5)), adagrad, 0.2, EPS,
                        l1, l2)
    np.testing.assert_allclose(W, W_ref, rtol=1e-12, atol=1e-14)
    assert np.all(last == 30)


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("l1,l2", REGS)
@pytest.mark.parametrize("acc_dtype", ACC_DTYPES)
def test_adagrad_step_matches_numpy(l1, l2, acc_dtype):
    rng = np.random.default_rng(5)
    W, acc, last = _state(rng)
    acc = acc.astype(acc_dtype)
    cols = rng.permutation(W.shape[0])[:13]
    G = rng.standard_normal((cols.size, W.shape[1]))
    G[rng.random(G.shape) < 0.2] = 0.0   # zero gradients on empty accumulators: rate 0
    eta, nb = 0.3, 4
    W_ref, acc_ref = W.copy(), acc.copy()
    g = G / nb
    # the sum is taken in float64 and rounded to the accumulator's dtype, and the step's
    # rate comes from the rounded sum (what catch_up_rows reads later)
    acc_ref[cols] = (acc_ref[cols].astype(np.float64) + g * g).astype(acc_dtype)
    lr = _adagrad_rate(eta, acc_ref[cols])
    Wc = W_ref[cols] - lr * g
    _prox_catch_up(Wc, lr, np.ones(cols.size, np.int64), l1, l2)
    W_ref[cols] = Wc
    _optim.adagrad_step(W, acc, G, cols, last, 41, eta, EPS, nb, l1, l2)
    np.testing.assert_allclose(W, W_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(acc, acc_ref)
    assert np.all(last[cols] == 41)
    untouched = np.setdiff1d(np.arange(W.shape[0]), cols)
    assert not np.any(last[untouched] == 41)


@pytest.mark.parametrize("l1,l2", REGS)
def test_sgd_step_matches_numpy(l1, l2):
    rng = np.random.default_rng(6)
    W, _, last = _state(rng)
    cols = rng.permutation(W.shape[0])[:13]
    G = rng.standard_normal((cols.size, W.shape[1]))
    lr, nb = 0.15, 3
    W_ref = W.copy()
    W_ref[cols] = _prox_steps(W_ref[cols] - lr * (G / nb), lr, np.ones(cols.size), l1, l2)
    _optim.sgd_step(W, G, cols, last, 7, lr, nb, l1, l2)
    np.testing.assert_allclose(W, W_ref, rtol=1e-12, atol=1e-14)
    assert np.all(last[cols] == 7)


def test_perceptron_step_matches_numpy():
    rng = np.random.default_rng(7)
    W, _, _ = _state(rng)
    U = rng.standard_normal(W.shape)
    cols = rng.permutation(W.shape[0])[:13]
    G = rng.standard_normal((cols.size, W.shape[1]))
    W_ref, U_ref = W.copy(), U.copy()
    upd = -0.7 * G
    W_ref[cols] += upd
    U_ref[cols] += 12 * upd
    _optim.perceptron_step(W, U, G, cols, 0.7, 12)
    np.testing.assert_array_equal(W, W_ref)
    np.testing.assert_array_equal(U, U_ref)


def test_perceptron_steps_average_the_weights_after_each_step():
    # The documented use: step t (1-based) passes weight t - 1; then W - U / T is the mean of
    # the weights after steps 1..T (Collins 2002), w_0 excluded.
    rng = np.random.default_rng(9)
    W = rng.standard_normal((20, 3))
    U = np.zeros_like(W)
    after = []
    for t in range(1, 16):
        cols = np.sort(rng.choice(20, rng.integers(1, 6), replace=False))
        _optim.perceptron_step(W, U, rng.standard_normal((cols.size, 3)), cols, 0.4, t - 1)
        after.append(W.copy())
    np.testing.assert_allclose(W - U / 15, np.mean(after, axis=0), rtol=1e-12, atol=1e-12)


def test_lazy_rows_equal_dense_rows_over_many_steps():
    # A sequence of sparse AdaGrad steps with lazy catch-up (the optimizer's use of the
    # kernels) equals the same steps applied to every row at every step.
    rng = np.random.default_rng(8)
    F, K, eta, l1, l2 = 30, 4, 0.5, 0.01, 0.1
    W = rng.standard_normal((F, K))
    W_dense = W.copy()
    acc = np.zeros((F, K))
    acc_dense = np.zeros((F, K))
    last = np.full(F, -1, dtype=np.int64)
    rows = np.empty((F, K))
    for step in range(40):
        cols = np.sort(rng.choice(F, rng.integers(1, 8), replace=False))
        _optim.catch_up_rows(W, cols, last, step - 1, acc, True, eta, EPS, l1, l2, rows)
        np.testing.assert_allclose(rows[:cols.size], W_dense[cols], rtol=1e-10, atol=1e-12)
        G = rng.standard_normal((cols.size, K))
        _optim.adagrad_step(W, acc, G, cols, last, step, eta, EPS, 2.0, l1, l2)
        g = np.zeros((F, K))
        g[cols] = G / 2.0
        acc_dense += g * g
        lr = _adagrad_rate(eta, acc_dense)
        W_dense = _prox_steps(W_dense - lr * g, lr, np.ones(F), l1, l2)
    _optim.catch_up_all(W, last, 39, acc, True, eta, EPS, l1, l2)
    np.testing.assert_allclose(W, W_dense, rtol=1e-10, atol=1e-12)
    assert np.sum(W == 0) > 0            # l1 produced exact zeros, lazily as densely
    np.testing.assert_array_equal(W == 0, W_dense == 0)
