"""X = S @ Phi: the factored token-feature matrix against X itself.

FeatureExtractor.factored_transform and learning.FactoredFeatures must give exactly the matrix
that transform builds, and every product and the chain objective must equal what the CSR
matrix gives (up to the order of floating-point additions).
"""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

import factorebm as fe
from factorebm.features import FeatureExtractor
from factorebm.learning import FactoredFeatures, LinearChainEnergy, chain_objective
from factorebm.optimize import fit_chain

TRAIN = [["The", "running", "dog", "barks", "."], ["Dogs", "ran", "in", "1999", "!"], [],
         ["I", "saw", "the", "USA", "'s", "dogs", "."], ["OK"]]
WORDS = ["The", "dog", "barks", ".", "unseen", "Ünï-42", "", "1999", "we\x1fird", "OK", "zz"]
TEMPLATES = {-2: ["lower"], -1: ["lower", "suffix2"], 0: ["bias", "word", "suffix3", "shape"],
             1: ["short_shape", "title"]}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS), max_size=7), max_size=8))
def test_factored_transform_is_the_feature_matrix(sents):
    fx = FeatureExtractor(templates=TEMPLATES).fit(TRAIN)
    F, offsets = fx.factored_transform(sents)
    X, offsets_ref = fx.transform(sents)
    assert np.array_equal(offsets, offsets_ref) and F.shape == X.shape
    Y = F.tocsr()
    assert Y.has_sorted_indices and (Y != X).nnz == 0
    assert np.all(F.S.getnnz(axis=1) == len(TEMPLATES))       # one slot per group


@pytest.mark.parametrize("seed", range(3))
def test_products_equal_the_sparse_ones(seed):
    rng = np.random.default_rng(seed)
    fx = FeatureExtractor(templates=TEMPLATES).fit(TRAIN)
    sents = [list(rng.choice(WORDS, size=rng.integers(0, 9))) for _ in range(30)]
    F, _ = fx.factored_transform(sents)
    X = F.tocsr()
    N, n_features = X.shape
    K = 4
    W = rng.normal(size=(n_features, K))
    np.testing.assert_allclose(F.matmul(W, np.empty((N, K)), 2), X @ W, atol=1e-12)
    G = rng.normal(size=(N, K))
    np.testing.assert_allclose(F.rmatmul(G, np.empty((n_features, K)), 2), X.T @ G, atol=1e-12)
    labels = rng.integers(0, K, size=(N, 2))
    weights = rng.normal(size=(N, 2))
    G2 = np.zeros((N, K))
    for c in range(2):
        np.add.at(G2, (np.arange(N), labels[:, c]), weights[:, c])
    np.testing.assert_allclose(F.rmatmul_labels(labels, weights, np.empty((n_features, K)), 1),
                               X.T @ G2, atol=1e-12)


@pytest.mark.parametrize("loss", ["nll", "hinge", "perceptron"])
def test_chain_objective_is_the_same_through_the_factors(loss):
    tr = fe.datasets.load_ud_english_ewt("dev")
    sents, tags = tr[0][:150], tr[1][:150]
    labels = sorted({t for ts in tags for t in ts})
    y = np.array([labels.index(t) for ts in tags for t in ts])
    fx = FeatureExtractor()
    F, offsets = fx._fit_transform(sents, factored=True)
    X = F.tocsr()
    model = LinearChainEnergy(fx.n_features_, len(labels))
    w = np.random.default_rng(0).normal(scale=0.1, size=model.n_weights)
    v1, g1 = chain_objective(w, model, F, offsets, y, loss, l2=0.1)
    v2, g2 = chain_objective(w, LinearChainEnergy(fx.n_features_, len(labels)), X, offsets, y,
                             loss, l2=0.1)
    assert v1 == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.unary(w, F), model.unary(w, X), atol=1e-12)


def test_fit_chain_takes_factored_features_with_every_optimizer():
    tr = fe.datasets.load_ud_english_ewt("dev")
    sents, tags = tr[0][:80], tr[1][:80]
    labels = sorted({t for ts in tags for t in ts})
    y = np.array([labels.index(t) for ts in tags for t in ts])
    fx = FeatureExtractor()
    F, offsets = fx._fit_transform(sents, factored=True)
    model = LinearChainEnergy(fx.n_features_, len(labels))
    for optimizer in ("lbfgs", "adagrad", "perceptron"):
        kw = dict(loss="perceptron" if optimizer == "perceptron" else "nll",
                  optimizer=optimizer, max_iter=3, verbose=False, random_state=0)
        w_f, _ = fit_chain(model, F, offsets, y, **kw)
        w_x, _ = fit_chain(model, F.tocsr(), offsets, y, **kw)
        if optimizer == "lbfgs":    # products through the factors: other roundings
            np.testing.assert_allclose(w_f, w_x, rtol=1e-7, atol=1e-9)
        else:                       # the same mini-batches, gathered through the factors
            np.testing.assert_array_equal(w_f, w_x)


def test_factored_batch_gather_is_the_csr_gather():
    from factorebm import _optim
    rng = np.random.default_rng(0)
    fx = FeatureExtractor(templates=TEMPLATES).fit(TRAIN)
    sents = [list(rng.choice(WORDS, size=rng.integers(0, 9))) for _ in range(40)]
    F, offsets = fx.factored_transform(sents)
    X = F.tocsr()
    y = rng.integers(0, 3, size=X.shape[0])
    seqs = rng.permutation(len(sents))[:15].astype(np.int64)
    nnz = int(X.nnz)
    out = []
    for call in ("csr", "factored"):
        bufs = [np.zeros(X.shape[0] + 1, np.int32), np.zeros(nnz, np.int32), np.zeros(nnz),
                np.zeros(X.shape[0], np.int64), np.zeros(16, np.int64),
                np.zeros(X.shape[1], np.int64)]
        local_of = np.full(X.shape[1], -1, dtype=np.int64)
        if call == "csr":
            r = _optim.batch_csr(X.indptr, X.indices, np.empty(0), offsets, y, seqs, local_of,
                                 *bufs)
        else:
            r = _optim.batch_csr_factored(*F.gather_arrays(), offsets, y, seqs, local_of, *bufs)
        assert (local_of == -1).all()
        n_tok, nnz_b, n_cols = r
        out.append((r, bufs[0][:n_tok + 1].copy(), bufs[1][:nnz_b].copy(),
                    bufs[3][:n_tok].copy(), bufs[4][:16].copy(), bufs[5][:n_cols].copy()))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(F.row_nnz(), np.diff(X.indptr))


def test_bad_factors_are_refused():
    S = sp.csr_matrix(np.eye(3))
    with pytest.raises(ValueError, match="S has 3 columns but Phi has 2 rows"):
        FactoredFeatures(S, sp.csr_matrix(np.ones((2, 4))))
    with pytest.raises(ValueError, match="Phi must be binary"):
        FactoredFeatures(S, sp.csr_matrix(2 * np.ones((3, 4))))
    with pytest.raises(ValueError, match="scipy.sparse"):
        FactoredFeatures(np.eye(3), sp.csr_matrix(np.ones((3, 4))))
    model = LinearChainEnergy(5, 2)
    with pytest.raises(ValueError, match="4 feature columns, the model has 5"):
        model.unary(model.init_weights(), FactoredFeatures(S, sp.csr_matrix(np.ones((3, 4)))))


def test_factored_products_check_their_operands():
    fx = FeatureExtractor(templates=TEMPLATES).fit(TRAIN)
    F, _ = fx.factored_transform(TRAIN)
    N, n_features = F.shape
    with pytest.raises(ValueError, match=r"W must be .* shape \(%d, 4\)" % n_features):
        F.matmul(np.ones((2, 4)), np.empty((N, 4)))
    with pytest.raises(ValueError, match="out must be a C-contiguous writable"):
        F.matmul(np.ones((n_features, 4)), np.empty((1, 4)))
    with pytest.raises(ValueError, match="G must be"):
        F.rmatmul(np.ones((N + 1, 4)), np.empty((n_features, 4)))
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        F.rmatmul_labels(np.full((N, 2), 4), np.ones((N, 2)), np.empty((n_features, 4)))
    with pytest.raises(ValueError, match="work must be"):
        F.matmul(np.ones((n_features, 4)), np.empty((N, 4)), work=np.empty((1, 4)))


def test_a_corpus_over_factored_features_trains_and_follows_its_matrix():
    from factorebm.learning import ChainCorpus
    fx = FeatureExtractor(templates=TEMPLATES).fit(TRAIN)
    F, offsets = fx.factored_transform(TRAIN * 3)
    y = np.arange(F.shape[0]) % 3
    model = LinearChainEnergy(F.shape[1], 3)
    corpus = ChainCorpus(model, F, offsets, y)
    w, _ = fit_chain(model, corpus, offsets, y, loss="nll", optimizer="adagrad", max_iter=2,
                     verbose=False)
    assert np.isfinite(w).all() and np.abs(w).max() > 0
    # the model's cached corpus follows X: new arrays in the same matrix object rebuild it
    X = F.tocsr()
    v1, _ = chain_objective(w, model, X, offsets, y, "nll")
    X.data = 2.0 * X.data
    v2, _ = chain_objective(w, model, X, offsets, y, "nll")
    assert v1 != v2
