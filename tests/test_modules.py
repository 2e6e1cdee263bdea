"""Trainable modules (factorebm.modules): every gradient against central finite differences,
compositions, the row-sparse batch gradient, thread safety and bad input."""
import threading

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from factorebm import modules as nn
from factorebm.params import BatchGradient, RowBlock, dense_segments
from factorebm.sparse import CSRFeatures, FactoredFeatures, LocalRows

RNG = np.random.default_rng(0)


def _numeric_grads(m, w, x, dy, eps=1e-6):
    """Central differences of L = sum(fprop(w, x) * dy) with respect to w (and to x when x is
    a float array)."""
    def loss(wv, xv):
        return float(np.sum(m.fprop(wv, xv) * dy))
    gw = np.zeros_like(w)
    for i in range(w.size):
        e = np.zeros_like(w)
        e[i] = eps
        gw[i] = (loss(w + e, x) - loss(w - e, x)) / (2 * eps)
    gx = None
    if isinstance(x, np.ndarray) and x.dtype == np.float64:
        gx = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            e = np.zeros_like(x)
            e[idx] = eps
            gx[idx] = (loss(w, x + e) - loss(w, x - e)) / (2 * eps)
    return gw, gx


def _check_gradients(m, x, dy=None, tol=1e-6):
    w = m.init_params(random_state=1) + 0.1 * RNG.standard_normal(m.n_params)
    y = m.fprop(w, x)
    dy = RNG.standard_normal(y.shape) if dy is None else dy
    grad = np.zeros(m.n_params)
    y = m.fprop(w, x)
    dx = m.bprop(w, dy, grad)
    gw, gx = _numeric_grads(m, w, x, dy)
    scale = max(1.0, np.abs(gw).max()) if gw.size else 1.0
    if gw.size:
        assert np.abs(grad - gw).max() / scale < tol, (m, np.abs(grad - gw).max())
    if gx is not None and dx is not None:
        assert np.abs(dx - gx).max() / max(1.0, np.abs(gx).max()) < tol, m
    return w, y, dx


X3 = RNG.standard_normal((5, 3))


@pytest.mark.parametrize("module", [
    nn.Linear(3, 4), nn.Linear(3, 2, bias=False), nn.Tanh(), nn.ReLU(), nn.Sigmoid(),
    nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)),
    nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.Sigmoid(), nn.Linear(5, 3)),
    nn.Concat(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 4), nn.Tanh())),
    nn.Sum(nn.Linear(3, 4), nn.Sequential(nn.Linear(3, 4), nn.Sigmoid())),
], ids=repr)
def test_dense_module_gradients_match_finite_differences(module):
    x = X3 + (0.3 if isinstance(module, nn.ReLU) else 0.0)    # away from ReLU's kink
    _, y, dx = _check_gradients(module, x)
    assert dx is not None and dx.shape == x.shape


def test_parallel_routes_tuple_parts_and_returns_a_tuple_of_gradients():
    m = nn.Parallel(nn.Linear(3, 2), nn.Sequential(nn.Embedding(7, 3), nn.Tanh()))
    ids = np.array([0, 3, 6, 3, 1])
    w = m.init_params(random_state=2)
    y = m.fprop(w, (X3, ids))
    assert y.shape == (5, 5)
    dy = RNG.standard_normal(y.shape)
    grad = np.zeros(m.n_params)
    dx = m.bprop(w, dy, grad)
    assert isinstance(dx, tuple) and dx[1] is None and dx[0].shape == X3.shape
    eps = 1e-6
    for i in RNG.choice(m.n_params, 25, replace=False):
        e = np.zeros(m.n_params)
        e[i] = eps
        num = (np.sum(m.fprop(w + e, (X3, ids)) * dy)
               - np.sum(m.fprop(w - e, (X3, ids)) * dy)) / (2 * eps)
        assert abs(num - grad[i]) < 1e-6


def _sparse_input(n_tokens=9, n_features=11, binary=False):
    X = sp.random(n_tokens, n_features, density=0.3, random_state=3, format="csr")
    if binary:
        X.data[:] = 1.0
    return X


@pytest.mark.parametrize("form", ["csr", "csr_features", "factored"])
def test_sparse_linear_gradient_in_every_input_form(form):
    X = _sparse_input(binary=form == "factored")
    if form == "csr_features":
        X = CSRFeatures(X)
    elif form == "factored":
        # X = S @ Phi with one slot per token
        X = FactoredFeatures(sp.identity(X.shape[0], format="csr"), X)
    m = nn.SparseLinear(11, 4)
    _, y, dx = _check_gradients(m, X)
    assert dx is None and y.shape == (9, 4)
    # a LabelGradient gives what its dense form gives
    w = RNG.standard_normal(m.n_params)
    labels = RNG.integers(0, 4, (9, 2))
    weights = RNG.standard_normal((9, 2))
    lg = nn.LabelGradient(labels, weights, 4)
    g1, g2 = np.zeros(m.n_params), np.zeros(m.n_params)
    m.fprop(w, X)
    m.bprop(w, lg, g1)
    m.fprop(w, X)
    m.bprop(w, lg.toarray(), g2)
    np.testing.assert_allclose(g1, g2, rtol=1e-13, atol=1e-14)


def test_embedding_gradient_with_repeated_ids():
    m = nn.Sequential(nn.Embedding(6, 3), nn.Tanh(), nn.Linear(3, 2))
    _check_gradients(m, np.array([5, 0, 5, 2, 2, 2]))


def _batch_grad(m, x, w, dy):
    rows = m.touched_rows(x)
    g = BatchGradient(m.n_params, m.row_blocks(), rows)
    m.fprop(w, x)
    m.bprop(w, dy, g.view())
    return g


def test_row_sparse_batch_gradient_equals_the_dense_one():
    # Sum(Select(0) -> SparseLinear, Select(1) -> Embedding -> Linear): two row blocks with a
    # dense segment between and after them
    Xfull = _sparse_input(8, 10)
    local_cols = np.array([7, 2, 9, 4, 0, 1, 3, 5, 6, 8], dtype=np.int64)
    # the batch's local matrix: column j of Xb is feature local_cols[j]
    Xb = Xfull[:, local_cols].tocsr()
    ids = np.array([3, 1, 3, 4, 0, 4, 4, 2])
    m = nn.Sum(nn.Sequential(nn.Select(0), nn.SparseLinear(10, 3)),
               nn.Sequential(nn.Select(1), nn.Embedding(5, 4), nn.Tanh(), nn.Linear(4, 3)))
    w = m.init_params(random_state=0) + 0.1 * RNG.standard_normal(m.n_params)
    dy = RNG.standard_normal((8, 3))
    g_dense = np.zeros(m.n_params)
    np.testing.assert_allclose(m.fprop(w, (Xfull, ids)),
                               m.fprop(w, (LocalRows(Xb, local_cols, 10), ids)), atol=1e-14)
    m.fprop(w, (Xfull, ids))
    m.bprop(w, dy, g_dense)
    blocks = m.row_blocks()
    assert blocks == [RowBlock(0, 10, 3), RowBlock(30, 5, 4)]
    assert dense_segments(m.n_params, blocks) == [(50, m.n_params)]
    g = _batch_grad(m, (LocalRows(Xb, local_cols, 10), ids), w, dy)
    assert [r.tolist() for r in g.rows] == [local_cols.tolist(), [0, 1, 2, 3, 4]]
    np.testing.assert_allclose(g.to_dense(), g_dense, rtol=1e-12, atol=1e-13)


def test_fprop_state_is_per_thread():
    m = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    w = m.init_params(random_state=0)
    xs = [RNG.standard_normal((40, 3)) for _ in range(8)]
    dy = np.ones((40, 2))
    expected = []
    for x in xs:
        g = np.zeros(m.n_params)
        m.fprop(w, x)
        m.bprop(w, dy, g)
        expected.append(g)
    got = [None] * len(xs)
    barrier = threading.Barrier(len(xs))

    def work(i):
        barrier.wait()
        for _ in range(20):
            g = np.zeros(m.n_params)
            m.fprop(w, xs[i])
            m.bprop(w, dy, g)
        got[i] = g
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_random_mlp_gradients(n_in, n_hidden, n, seed):
    rng = np.random.default_rng(seed)
    m = nn.Sequential(nn.Linear(n_in, n_hidden), nn.Tanh(), nn.Linear(n_hidden, 2))
    x = rng.standard_normal((n, n_in))
    w = m.init_params(random_state=seed)
    dy = rng.standard_normal((n, 2))
    grad = np.zeros(m.n_params)
    m.fprop(w, x)
    m.bprop(w, dy, grad)
    gw, _ = _numeric_grads(m, w, x, dy)
    assert np.abs(grad - gw).max() < 1e-6 * max(1.0, np.abs(gw).max())


# ------------------------------------------------------------------------------ bad input
def test_bad_input_names_the_module_and_the_expectation():
    lin = nn.Linear(3, 4)
    w = lin.init_params()
    with pytest.raises(ValueError, match=r"Linear\(3, 4\): input must be a \(n, 3\) float array"):
        lin.fprop(w, np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"Linear\(3, 4\): input must be"):
        lin.fprop(w, np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match=r"Linear\(3, 4\): w must have 16 parameters, got an "
                                         r"array of shape \(15,\)"):
        lin.fprop(w[:-1], X3)
    bad = w.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match=r"w\[2\] = nan is not finite"):
        lin.fprop(bad, X3)
    xnan = X3.copy()
    xnan[1, 1] = np.nan
    with pytest.raises(ValueError, match="input contains NaN"):
        lin.fprop(w, xnan)
    with pytest.raises(ValueError, match="bprop without a matching fprop"):
        nn.Linear(3, 4).bprop(w, np.ones((5, 4)), np.zeros(16))
    lin.fprop(w, X3)
    with pytest.raises(ValueError, match=r"grad must be a writable float64 array of shape "
                                         r"\(16,\)"):
        lin.bprop(w, np.ones((5, 4)), np.zeros(15))
    emb = nn.Embedding(4, 2)
    with pytest.raises(ValueError, match=r"Embedding\(4, 2\): id 4 at position 1"):
        emb.fprop(emb.init_params(), np.array([0, 4]))
    with pytest.raises(ValueError, match="integer ids"):
        emb.fprop(emb.init_params(), np.array([0.5]))
    spl = nn.SparseLinear(5, 2)
    with pytest.raises(ValueError, match=r"SparseLinear\(5, 2\) input has 3 feature columns"):
        spl.fprop(np.zeros(10), sp.csr_matrix(np.ones((2, 3))))
    xs = sp.csr_matrix(np.ones((2, 5)))
    xs.data[0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        spl.fprop(np.zeros(10), xs)
    with pytest.raises(ValueError, match="outputs 4 columns but Linear"):
        nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="different widths"):
        nn.Sum(nn.Linear(3, 4), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="must read the architecture's input directly"):
        nn.Sequential(nn.Linear(3, 4), nn.Embedding(4, 2)).touched_rows(X3)
    with pytest.raises(ValueError, match="tuple of 2 parts"):
        nn.Parallel(nn.Linear(3, 2), nn.Linear(3, 2)).fprop(np.zeros(16), X3)
    with pytest.raises(ValueError, match="n_out must be an integer >= 1"):
        nn.Linear(3, 0)
