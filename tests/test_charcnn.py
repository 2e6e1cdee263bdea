"""The character CNN (factorebm.charcnn): forward against a plain numpy convolution, forward
and backward against central finite differences, mini-batches cut by take_tokens, bad input,
and training inside a chain."""
import threading

import numpy as np
import pytest

from factorebm import modules as nn
from factorebm.charcnn import CharCNN, WordChars
from factorebm.energies.chain import ChainEnergy, ChainObjective

RNG = np.random.default_rng(7)


def _word_chars(n_types=9, n_tokens=13, n_chars=11, max_len=7, positions=1, rng=RNG,
                allow_empty=True):
    lens = rng.integers(0 if allow_empty else 1, max_len, size=n_types)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    chars = rng.integers(0, n_chars, size=offsets[-1])
    types = rng.integers(0, n_types, size=(n_tokens, positions))
    return WordChars(chars, offsets, types)


def _reference(m, w, x):
    """The module's output computed the slow, obvious way: per token, per position, per
    window of characters."""
    p = m.parts(w)
    E, K = p["E"], p["K"]

    def vector(t):
        c = x.chars[x.char_offsets[t]:x.char_offsets[t + 1]]
        L = c.shape[0]
        out = []
        for k, F, c0 in zip(m.widths, m.n_filters, m._tap_start.tolist()):
            lo = (k - 1) // 2
            z = np.zeros((L, F))
            for pos in range(L):
                for j in range(k):
                    q = pos + j - lo
                    if 0 <= q < L:
                        z[pos] += E[c[q]] @ K[:, c0 + j * F:c0 + (j + 1) * F]
            out.append(z.max(axis=0) if L else np.zeros(F))
        h = np.concatenate(out) + p["b"]
        h = np.maximum(h, 0) if m.activation == "relu" else np.tanh(h)
        if m.highway:
            t_gate = 1 / (1 + np.exp(-(h @ p["W_T"] + p["b_T"])))
            h = t_gate * np.maximum(h @ p["W_H"] + p["b_H"], 0) + (1 - t_gate) * h
        return h

    return np.array([np.concatenate([vector(t) for t in row]) for row in x.token_types])


MODULES = [
    CharCNN(11, char_dim=4, widths=(3,), n_filters=5),
    CharCNN(11, char_dim=3, widths=(1, 2, 4), n_filters=(2, 3, 1), activation="tanh"),
    CharCNN(11, char_dim=4, widths=(2, 3), n_filters=3, highway=True),
    CharCNN(11, char_dim=2, widths=(5,), n_filters=4, highway=True, activation="tanh",
            window=1),
]


@pytest.mark.parametrize("m", MODULES, ids=repr)
def test_forward_matches_a_plain_convolution(m):
    x = _word_chars(positions=m.n_positions)
    w = m.init_params(0) + 0.1 * RNG.standard_normal(m.n_params)
    y = m.fprop(w, x)
    assert y.shape == (13, m.n_out)
    np.testing.assert_allclose(y, _reference(m, w, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("m", MODULES, ids=repr)
def test_gradient_matches_finite_differences(m):
    x = _word_chars(positions=m.n_positions)
    w = m.init_params(1) + 0.1 * RNG.standard_normal(m.n_params)
    y = m.fprop(w, x)
    dy = RNG.standard_normal(y.shape)
    grad = np.zeros(m.n_params)
    assert m.bprop(w, dy, grad) is None          # ids are not differentiable
    eps = 1e-6
    num = np.empty(m.n_params)
    for i in range(m.n_params):
        e = np.zeros(m.n_params)
        e[i] = eps
        num[i] = (np.sum(m.fprop(w + e, x) * dy) - np.sum(m.fprop(w - e, x) * dy)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-6)
    # every part of the parameters is reached by the gradient
    assert all(np.any(v != 0) for v in m.parts(grad).values())


def test_gradient_accumulates_and_sees_a_type_once_per_token():
    m = CharCNN(5, char_dim=2, widths=(2,), n_filters=3)
    x = WordChars([1, 2, 3, 4], [0, 2, 4], [[0], [0], [1], [0]])
    w = m.init_params(3)
    y = m.fprop(w, x)
    np.testing.assert_array_equal(y[0], y[1])
    np.testing.assert_array_equal(y[0], y[3])
    dy = RNG.standard_normal(y.shape)
    g1 = np.zeros(m.n_params)
    m.fprop(w, x)
    m.bprop(w, dy, g1)
    # the same as the tokens one by one, summed
    g2 = np.zeros(m.n_params)
    for t in range(4):
        xt = x.take_tokens(np.array([t]))
        m.fprop(w, xt)
        m.bprop(w, dy[t:t + 1], g2)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-14)
    g3 = g1.copy()
    m.fprop(w, x)
    m.bprop(w, dy, g3)
    np.testing.assert_allclose(g3, 2 * g1)


def test_take_tokens_cuts_rows_and_keeps_the_type_table():
    x = _word_chars(positions=3)
    ids = np.array([4, 0, 4, 12])
    b = x.take_tokens(ids)
    assert b.shape == (4, 3)
    assert b.chars is x.chars and b.char_offsets is x.char_offsets
    np.testing.assert_array_equal(b.token_types, x.token_types[ids])
    m = CharCNN(11, char_dim=3, widths=(2,), n_filters=2, window=1)
    w = m.init_params(0)
    np.testing.assert_array_equal(m.fprop(w, b), m.fprop(w, x)[ids])
    with pytest.raises(ValueError, match="token ids"):
        x.take_tokens(np.array([13]))


@pytest.mark.parametrize("args, match", [
    (([0, 1], [0, 1], [0]), "char_offsets must run"),
    (([0, 1], [0, 3, 2], [0]), "non-decreasing"),
    (([0, -1], [0, 2], [0]), ">= 0"),
    (([0, 1], [0, 2], [1]), "type ids in 0..0"),
    (([0.5, 1], [0, 2], [0]), "integer"),
    (([0, 1], [0, 2], np.zeros((2, 0), dtype=int)), "at least one column"),
])
def test_bad_word_chars_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        WordChars(*args)


def test_bad_input_and_settings_are_refused():
    m = CharCNN(4, char_dim=2, widths=(2,), n_filters=2, window=1)
    w = m.init_params(0)
    with pytest.raises(ValueError, match="WordChars"):
        m.fprop(w, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="window positions"):
        m.fprop(w, WordChars([0, 1], [0, 2], [0, 0]))
    with pytest.raises(ValueError, match="character id 7"):
        m.fprop(w, WordChars([0, 7], [0, 2], [[0, 0, 0]]))
    with pytest.raises(ValueError, match="parameters"):
        m.fprop(w[:-1], WordChars([0, 1], [0, 2], [[0, 0, 0]]))
    with pytest.raises(ValueError, match="activation"):
        CharCNN(4, activation="sigmoid")
    with pytest.raises(ValueError, match="filter counts"):
        CharCNN(4, widths=(2, 3), n_filters=(1, 2, 3))
    with pytest.raises(ValueError, match="widths"):
        CharCNN(4, widths=(0,))
    with pytest.raises(ValueError, match="n_chars"):
        CharCNN(0)
    with pytest.raises(ValueError, match="sequence of integers"):
        CharCNN(4, widths="23")
    with pytest.raises(ValueError, match="sequence of integers"):
        CharCNN(4, n_filters=None)


def test_threads_give_the_same_answer_and_threads_may_share_a_module():
    m = CharCNN(11, char_dim=4, widths=(2, 3), n_filters=4, highway=True)
    x = _word_chars(n_types=300, n_tokens=700, allow_empty=False)
    w = m.init_params(0)
    ref = m.forward(w, x, nn.Context(1, keep=False))
    np.testing.assert_array_equal(m.forward(w, x, nn.Context(2, keep=False)), ref)
    dy = RNG.standard_normal(ref.shape)
    g_ref = np.zeros(m.n_params)
    m.fprop(w, x)
    m.bprop(w, dy, g_ref)
    results = []

    def work():
        g = np.zeros(m.n_params)
        for _ in range(5):
            m.fprop(w, x)
            g[:] = 0
            m.bprop(w, dy, g)
        results.append(g)
    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in results:
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-14)


def test_chain_objective_mini_batches_through_take_tokens():
    """A chain over Sum(features, Sequential(CharCNN, Linear)): the mini-batch gradient equals
    the full one restricted to the batch's sequences."""
    import scipy.sparse as sp
    x = _word_chars(n_types=6, n_tokens=20, n_chars=8, positions=1, allow_empty=False)
    offsets = np.array([0, 5, 9, 16, 20])
    feats = sp.random(20, 7, density=0.4, random_state=0, format="csr")
    cnn = CharCNN(8, char_dim=3, widths=(2,), n_filters=3)
    emission = nn.Sum(nn.Sequential(nn.Select(0), nn.SparseLinear(7, 6)),
                      nn.Sequential(nn.Select(1), cnn, nn.Linear(cnn.n_out, 6)))
    model = ChainEnergy(emission, 3, 2)
    y = RNG.integers(0, 3, size=20)
    obj = ChainObjective(model, (feats, x), offsets, y)
    w = model.init_weights(0)
    units = np.array([2, 0])
    value, grad = obj.unit_value_and_grad(w, units)
    # the same through a corpus of the two sequences alone
    toks = np.r_[9:16, 0:5]
    sub = ChainObjective(model, (feats[toks], x.take_tokens(toks)), np.array([0, 7, 12]),
                         y[toks])
    v2, g2 = sub.value_and_grad(w)
    assert value == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(grad, g2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(520, 96, 34), (7, 5, 3), (0, 3, 2), (3, 0, 2), (3, 2, 0),
                                   (1, 1, 1), (300, 17, 9)])
def test_openmp_products_equal_numpy(shape):
    from factorebm.charcnn import matmul
    M, K, N = shape
    A, B, Bm = RNG.normal(size=(M, K)), RNG.normal(size=(K, N)), RNG.normal(size=(M, N))
    for nt in (1, 2):
        np.testing.assert_allclose(matmul(A, B, n_threads=nt), A @ B, atol=1e-12)
        out = np.ones((K, N))
        matmul(A, Bm, out, accumulate=True, n_threads=nt, transpose_a=True)
        np.testing.assert_allclose(out, 1 + A.T @ Bm, atol=1e-12)
    with pytest.raises(ValueError, match="do not chain"):
        matmul(A, Bm.T if M != K else np.zeros((K + 1, 2)))
    with pytest.raises(ValueError, match="out must be"):
        matmul(A, B, out=np.zeros((M + 1, N)))


def test_openmp_linear_is_a_linear_layer():
    from factorebm.charcnn import OpenMPLinear
    m, ref = OpenMPLinear(6, 4), nn.Linear(6, 4)
    x = RNG.normal(size=(9, 6))
    w = m.init_params(0)
    np.testing.assert_array_equal(w, ref.init_params(0))
    assert not OpenMPLinear(6, 4, zero_init=True).init_params(0).any()
    w = w + RNG.normal(0, 0.1, w.shape)
    np.testing.assert_allclose(m.fprop(w, x), ref.fprop(w, x), atol=1e-12)
    dy = RNG.normal(size=(9, 4))
    g, g_ref = np.zeros(m.n_params), np.zeros(m.n_params)
    m.fprop(w, x)
    dx = m.bprop(w, dy, g)
    ref.fprop(w, x)
    np.testing.assert_allclose(dx, ref.bprop(w, dy, g_ref), atol=1e-12)
    np.testing.assert_allclose(g, g_ref, atol=1e-12)


def test_step_scale_keeps_the_outputs_and_scales_the_gradient():
    from factorebm.charcnn import StepScale
    inner = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    m = StepScale(inner, 0.25)
    assert m.n_params == inner.n_params and m.n_out == 2
    np.testing.assert_allclose(m.init_params(5) * 0.25, inner.init_params(5))
    x = RNG.normal(size=(6, 3))
    w = RNG.normal(size=m.n_params)
    np.testing.assert_allclose(m.fprop(w, x), inner.fprop(0.25 * w, x))
    dy = RNG.normal(size=(6, 2))
    g = np.zeros(m.n_params)
    m.fprop(w, x)
    dx = m.bprop(w, dy, g)
    eps = 1e-6
    num = np.array([(np.sum(m.fprop(w + eps * e, x) * dy) - np.sum(m.fprop(w - eps * e, x)
                                                                    * dy)) / (2 * eps)
                    for e in np.eye(m.n_params)])
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)
    g_in = np.zeros(m.n_params)
    inner.fprop(0.25 * w, x)
    np.testing.assert_allclose(dx, inner.bprop(0.25 * w, dy, g_in))
    with pytest.raises(ValueError, match="dense parameters only"):
        StepScale(nn.SparseLinear(4, 2), 0.5)
    with pytest.raises(ValueError, match="scale must be"):
        StepScale(inner, -1)
