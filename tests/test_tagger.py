"""SequenceTagger: learning beats a baseline, model files round-trip and refuse pickles."""
import collections

import numpy as np
import pytest

import factorebm as fe


@pytest.fixture(scope="module")
def small_ewt():
    train_s, train_t = fe.datasets.load_ud_english_ewt("train")
    dev_s, dev_t = fe.datasets.load_ud_english_ewt("dev")
    return (train_s[:400], train_t[:400]), (dev_s[:300], dev_t[:300])


@pytest.fixture(scope="module")
def nll_tagger(small_ewt):
    (s, t), _ = small_ewt
    return fe.SequenceTagger(loss="nll", max_iter=8, verbose=False).fit(s, t)


def most_frequent_tag_accuracy(train_s, train_t, test_s, test_t):
    """Per-word most frequent tag, falling back to the most frequent tag overall."""
    by_word = collections.defaultdict(collections.Counter)
    overall = collections.Counter()
    for s, ts in zip(train_s, train_t):
        for w, t in zip(s, ts):
            by_word[w][t] += 1
            overall[t] += 1
    fallback = overall.most_common(1)[0][0]
    hits = total = 0
    for s, ts in zip(test_s, test_t):
        for w, t in zip(s, ts):
            guess = by_word[w].most_common(1)[0][0] if w in by_word else fallback
            hits += guess == t
            total += 1
    return hits / total


def test_nll_tagger_beats_most_frequent_tag_baseline(small_ewt, nll_tagger):
    (s, t), (ds, dt) = small_ewt
    baseline = most_frequent_tag_accuracy(s, t, ds, dt)
    acc = nll_tagger.score(ds, dt)
    assert acc > baseline + 0.03, (acc, baseline)


# Margins over the most-frequent-tag baseline (77.3% here). The perceptron's is set by its
# small batches: 88.3% with 4 sentences (89.1% with 1), 77.9% with the batches of 32 it once had.
@pytest.mark.parametrize("loss, margin", [("hinge", 0.0), ("perceptron", 0.08), ("log", 0.0),
                                          ("mce", 0.0)])
def test_other_losses_learn(small_ewt, loss, margin):
    (s, t), (ds, dt) = small_ewt
    baseline = most_frequent_tag_accuracy(s, t, ds, dt)
    tagger = fe.SequenceTagger(loss=loss, max_iter=5, verbose=False).fit(s, t)
    assert tagger.score(ds, dt) > baseline + margin, loss


def test_perceptron_defaults_to_small_batches():
    schedule = fe.SequenceTagger(loss="perceptron")._training_schedule()
    assert schedule["optimizer"] == "perceptron" and schedule["batch_size"] == 4
    assert fe.SequenceTagger(loss="hinge")._training_schedule()["batch_size"] == 32


@pytest.mark.parametrize("loss", ["hinge", "perceptron", "log", "mce"])
def test_lbfgs_refuses_losses_using_the_most_offending_answer(loss):
    # L-BFGS stops at iteration 0 on these (every answer ties at w = 0): it used to return an
    # all-zero model without a word.
    with pytest.raises(ValueError, match="optimizer='adagrad' or loss='nll'"):
        fe.SequenceTagger(loss=loss, optimizer="lbfgs", verbose=False).fit([["a"]], [["X"]])


def test_predict_shapes_and_labels(small_ewt, nll_tagger):
    _, (ds, _) = small_ewt
    pred = nll_tagger.predict(ds[:20] + [[]])
    assert [len(p) for p in pred] == [len(s) for s in ds[:20]] + [0]
    assert set(t for p in pred for t in p) <= set(nll_tagger.labels_)


def test_marginals_of_no_sentences_and_of_empty_ones(nll_tagger):
    assert nll_tagger.predict_marginals([]) == []
    assert nll_tagger.predict([]) == []
    (m,) = nll_tagger.predict_marginals([[]])
    assert m.shape == (0, len(nll_tagger.labels_))


def test_marginals_are_distributions_consistent_with_predict(small_ewt, nll_tagger):
    _, (ds, _) = small_ewt
    margs = nll_tagger.predict_marginals(ds[:30])
    pred = nll_tagger.predict(ds[:30])
    agree = total = 0
    for m, p, s in zip(margs, pred, ds[:30]):
        assert m.shape == (len(s), len(nll_tagger.labels_))
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-9)
        agree += np.sum(nll_tagger.labels_[m.argmax(axis=1)] == np.array(p))
        total += len(s)
    assert agree / total > 0.95


def test_save_load_round_trip(tmp_path, small_ewt, nll_tagger):
    _, (ds, _) = small_ewt
    path = tmp_path / "model.npz"
    nll_tagger.save(path)
    loaded = fe.SequenceTagger.load(path)
    assert loaded.predict(ds) == nll_tagger.predict(ds)
    for a, b in zip(loaded.predict_marginals(ds[:10]), nll_tagger.predict_marginals(ds[:10])):
        np.testing.assert_array_equal(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name != "model.npz"]


def test_saved_threads_are_only_a_default(tmp_path, small_ewt):
    (s, t), (ds, _) = small_ewt
    path = tmp_path / "model.npz"
    tagger = fe.SequenceTagger(max_iter=1, n_threads=1, verbose=False).fit(s[:50], t[:50])
    tagger.save(path)
    assert fe.SequenceTagger.load(path).n_threads == 1
    loaded = fe.SequenceTagger.load(path, n_threads=2, verbose=True)
    assert (loaded.n_threads, loaded.verbose) == (2, True)
    assert loaded.predict(ds[:20]) == tagger.predict(ds[:20])
    with pytest.raises(ValueError, match="loss"):
        fe.SequenceTagger.load(path, loss="hinge")


def test_pickled_model_file_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, coef=np.array([{"x": 1}], dtype=object), labels=np.array(["A"]))
    with pytest.raises(ValueError, match="evil.npz"):
        fe.SequenceTagger.load(path)


def test_not_a_model_is_refused(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="junk.npz"):
        fe.SequenceTagger.load(path)


def test_losses_needing_nonnegative_energies_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        fe.SequenceTagger(loss="square_square").fit([["a"]], [["X"]])
    with pytest.raises(ValueError, match="unknown loss"):
        fe.SequenceTagger(loss="nonsense").fit([["a"]], [["X"]])


def test_mismatched_corpus_is_refused():
    with pytest.raises(ValueError, match="sentence 1"):
        fe.SequenceTagger(verbose=False).fit([["a"], ["b", "c"]], [["X"], ["Y"]])
    with pytest.raises(ValueError, match="not fitted"):
        fe.SequenceTagger().predict([["a"]])


def test_verbose_false_is_silent(capsys, small_ewt):
    (s, t), _ = small_ewt
    fe.SequenceTagger(max_iter=3, verbose=False).fit(s[:50], t[:50])
    assert capsys.readouterr().out == ""


def test_lbfgs_training_also_works(small_ewt):
    (s, t), (ds, dt) = small_ewt
    baseline = most_frequent_tag_accuracy(s, t, ds, dt)
    tagger = fe.SequenceTagger(optimizer="lbfgs", max_iter=30, verbose=False).fit(s, t)
    assert tagger.score(ds, dt) > baseline + 0.03
    assert tagger.model_._cache is None


def test_fitted_tagger_keeps_no_training_corpus(small_ewt, nll_tagger):
    # binary (data-free) training features give the weights of explicit ones, and the model's
    # corpus cache (X, its transpose) is dropped after fit
    (s, t), (ds, _) = small_ewt
    assert nll_tagger.model_._cache is None
    fx = fe.features.FeatureExtractor()
    X, offsets = fx.fit_transform(s, min_count=nll_tagger.min_count)
    index = {tag: i for i, tag in enumerate(nll_tagger.labels_.tolist())}
    y = np.array([index[tag] for ts in t for tag in ts], dtype=np.int64)
    kwargs = dict(nll_tagger._training_schedule())
    model = fe.learning.LinearChainEnergy(fx.n_features_, len(index), nll_tagger.n_substates)
    w, _ = fe.optimize.fit_chain(model, X, offsets, y, loss="nll", verbose=False,
                                 random_state=0, **kwargs)
    assert X.data.strides == (8,)
    np.testing.assert_array_equal(w, nll_tagger.coef_)


@pytest.fixture(scope="module")
def substate_tagger(small_ewt):
    (s, t), _ = small_ewt
    return fe.SequenceTagger(n_substates=3, max_iter=3, verbose=False).fit(s, t)


def test_latent_substates_answer_in_tags(small_ewt, substate_tagger):
    (s, t), (ds, dt) = small_ewt
    tagger = substate_tagger
    K = len(tagger.labels_)
    unary, transition, start, end, offsets = tagger.energies(ds[:10])
    assert unary.shape == (offsets[-1], 3 * K) and transition.shape == (3 * K, 3 * K)
    pred = tagger.predict(ds[:10])
    assert [len(p) for p in pred] == [len(x) for x in ds[:10]]
    assert set(x for p in pred for x in p) <= set(tagger.labels_)
    marg = tagger.predict_marginals(ds[:10])
    assert all(m.shape == (len(x), K) for m, x in zip(marg, ds[:10]))
    np.testing.assert_allclose(np.concatenate(marg).sum(axis=1), 1.0, atol=1e-12)
    # the decoded tags are those of the best (tag, substate) path: Viterbi over the states
    states, _ = fe.chain.viterbi(unary, transition, offsets, start, end)
    assert [p for ps in pred for p in ps] == tagger.labels_[states // 3].tolist()
    baseline = most_frequent_tag_accuracy(s, t, ds, dt)
    assert tagger.score(ds, dt) > baseline + 0.03


@pytest.mark.parametrize("block_tokens", [1, 40, 10**6])
def test_predict_decodes_block_by_block_as_over_the_whole_batch(small_ewt, substate_tagger,
                                                                monkeypatch, block_tokens):
    # predict decodes a large batch a block of sentences at a time; the tags (and the
    # constraints and observed-transition rules) must be those of one pass over all of it
    from factorebm import tagger as tagger_module
    _, (ds, _) = small_ewt
    sents = ds[:60] + [[]] + ds[60:80]
    tagger = substate_tagger
    unary, transition, start, end, offsets = tagger.energies(sents)
    states, _ = fe.chain.viterbi(unary, transition, offsets, start, end)
    expected = tagger.labels_[states // 3].tolist()
    i = next(i for i in range(10, len(sents)) if len(sents[i]) >= 3)
    constraints = [None] * len(sents)
    constraints[i] = {0: "NOUN", 2: {"VERB", "AUX"}}
    monkeypatch.setattr(tagger_module, "VITERBI_BLOCK_TOKENS", 10**6)
    whole_constrained = tagger.predict(sents, constraints=constraints)
    monkeypatch.setattr(tagger_module, "VITERBI_BLOCK_TOKENS", block_tokens)
    assert [p for ps in tagger.predict(sents) for p in ps] == expected
    assert tagger.predict(sents, constraints=constraints) == whole_constrained
    assert whole_constrained[i][0] == "NOUN" and whole_constrained[i][2] in ("VERB", "AUX")


def test_substate_model_round_trip(tmp_path, small_ewt, substate_tagger):
    _, (ds, _) = small_ewt
    path = tmp_path / "h3.npz"
    substate_tagger.save(path)
    loaded = fe.SequenceTagger.load(path)
    assert loaded.n_substates == 3
    assert loaded.predict(ds) == substate_tagger.predict(ds)


def test_model_files_from_before_substates_load_as_one_substate(tmp_path, small_ewt,
                                                                monkeypatch):
    (s, t), (ds, _) = small_ewt
    tagger = fe.SequenceTagger(n_substates=1, max_iter=1, verbose=False).fit(s[:50], t[:50])
    params = tagger.get_params()
    del params["n_substates"]
    monkeypatch.setattr(tagger, "get_params", lambda deep=True: dict(params))
    tagger.save(tmp_path / "old.npz")
    loaded = fe.SequenceTagger.load(tmp_path / "old.npz")
    assert loaded.n_substates == 1 and loaded.predict(ds) == tagger.predict(ds)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_substate_counts_are_refused(bad):
    with pytest.raises(ValueError, match="n_substates must be an integer >= 1"):
        fe.SequenceTagger(n_substates=bad, verbose=False).fit([["a"]], [["X"]])


def test_set_params_sets_settings_and_loss_parameters_and_rolls_back_a_bad_one():
    # scikit-learn's clone / GridSearchCV call get_params and set_params
    tagger = fe.SequenceTagger(loss="hinge", margin=2.0, verbose=False)
    assert tagger.set_params(max_iter=3, margin=1.5) is tagger
    assert tagger.max_iter == 3 and tagger.get_params()["margin"] == 1.5
    before = tagger.get_params()
    with pytest.raises(ValueError, match="max_iter"):
        tagger.set_params(max_iter=0, l1=0.5)
    assert tagger.get_params() == before
    assert fe.SequenceTagger(**tagger.get_params()).get_params() == before
