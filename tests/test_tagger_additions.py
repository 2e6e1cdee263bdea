"""SequenceTagger's decoding and training additions (issue 15): constraints, transitions
observed in training, partial labels, k-best tag sequences, explanations, warm starts."""
import itertools
import threading

import numpy as np
import pytest

import factorebm as fe
from factorebm import constraints
from factorebm.modelio import load_arrays, save_arrays


@pytest.fixture(scope="module")
def ewt():
    s, t = fe.datasets.load_ud_english_ewt("train")
    ds, dt = fe.datasets.load_ud_english_ewt("dev")
    return (s[:300], t[:300]), (ds[:200], dt[:200])


@pytest.fixture(scope="module")
def tagger(ewt):
    """Two substates per tag: constraints and k-best must work on states, answer in tags."""
    (s, t), _ = ewt
    return fe.SequenceTagger(max_iter=2, n_substates=2, verbose=False).fit(s, t)


SHORT = [["I", "can", "fly"], ["Blorfs", "zing", "."], ["the", "dog"]]


def state_paths_by_tags(tagger, words, constraint=None):
    """Brute force over every state path of a short sentence: {tag sequence: min energy}
    for the tag sequences obeying ``constraint``, and each state path's (tags, energy)."""
    unary, tr, start, end, _ = tagger.energies([words])
    H = tagger.n_substates
    S, T = tr.shape[0], len(words)
    paths = np.array(list(itertools.product(range(S), repeat=T)))
    e = unary[np.arange(T), paths].sum(axis=1) + start[paths[:, 0]] + end[paths[:, -1]]
    e += tr[paths[:, :-1], paths[:, 1:]].sum(axis=1)
    tags = tagger.labels_[paths // H]
    ok = np.ones(len(paths), dtype=bool)
    for pos, allowed in (constraint or {}).items():
        ok &= np.isin(tags[:, pos], [allowed] if isinstance(allowed, str) else list(allowed))
    best = {}
    for row, energy in zip(map(tuple, tags[ok].tolist()), e[ok]):
        if energy < best.get(row, np.inf):
            best[row] = energy
    return best, tags, e, ok


# ----------------------------------------------------------------------------- constraints

@pytest.mark.parametrize("constraint", [{1: "NOUN"}, {0: {"VERB", "NOUN"}, 2: ["ADJ"]},
                                        {0: "PUNCT", 1: "PUNCT", 2: "PUNCT"}, {}])
def test_constrained_predict_is_the_best_obeying_tag_sequence(tagger, constraint):
    for words in SHORT[:2]:
        best, *_ = state_paths_by_tags(tagger, words, constraint)
        (pred,) = tagger.predict([words], constraints=[constraint])
        assert min(best, key=best.get) == tuple(pred)
        for pos, allowed in constraint.items():
            assert pred[pos] in ([allowed] if isinstance(allowed, str) else allowed)


def test_constrained_marginals_are_the_conditional_distribution(tagger):
    words, constraint = SHORT[0], {1: {"NOUN", "VERB"}}
    _, tags, e, ok = state_paths_by_tags(tagger, words, constraint)
    p = np.exp(-(e[ok] - e[ok].min()))
    p /= p.sum()
    (marg,) = tagger.predict_marginals([words], constraints=[constraint])
    for t in range(len(words)):
        for k, tag in enumerate(tagger.labels_):
            np.testing.assert_allclose(marg[t, k], p[tags[ok][:, t] == tag].sum(), atol=1e-9)
    assert set(tagger.labels_[marg[1] > 0]) <= {"NOUN", "VERB"}


def test_unconstrained_sentences_in_a_constrained_batch_are_untouched(ewt, tagger):
    _, (ds, _) = ewt
    free = tagger.predict(ds[:20])
    cons = [None] * 20
    cons[3] = {0: "X"}
    got = tagger.predict(ds[:20], constraints=cons)
    assert got[3][0] == "X"
    assert [g for i, g in enumerate(got) if i != 3] == [f for i, f in enumerate(free) if i != 3]
    assert tagger.predict(ds[:20], constraints=[None] * 20) == free
    assert tagger.predict(ds[:20], constraints=[{}] * 20) == free


@pytest.mark.parametrize("cons, message", [
    ([{0: "NOPE"}], r"sentence 0, position 0: unknown tag 'NOPE'"),
    ([{3: "NOUN"}], r"sentence 0: constraint position 3 is out of range"),
    ([{-1: "NOUN"}], r"sentence 0: constraint position -1 is out of range"),
    ([{1.0: "NOUN"}], r"sentence 0: constraint position 1.0 is not an integer"),
    ([{True: "NOUN"}], r"position True is not an integer"),
    ([{1: set()}], r"sentence 0, position 1: the set of allowed tags is empty"),
    ([{1: ["NOUN", ["VERB"]]}], r"sentence 0, position 1: unknown tag \['VERB'\]"),
    ([{1: 7}], r"sentence 0, position 1: a constraint is a tag or a set of tags"),
    (["NOUN"], r"constraints\[0\] must be a dict"),
    ([None, None], r"got 1 sentences but 2 constraint entries"),
    ({0: "NOUN"}, r"one dict \(or None\) per sentence"),
])
def test_bad_constraints_are_refused_naming_where(tagger, cons, message):
    for call in (tagger.predict, tagger.predict_marginals,
                 lambda s, constraints: tagger.predict_kbest(s, 2, constraints=constraints)):
        with pytest.raises(ValueError, match=message):
            call([SHORT[0]], constraints=cons)


# ----------------------------------------------------------------------------- BIO

def bio_corpus(rng, n):
    """Sentences with PER and LOC names; "jr" only ever ends a PER name (I-PER)."""
    first = ["ann", "bob", "cy", "dee"]
    last = ["smith", "jones", "lee"]
    places = ["paris", "rome", "oslo"]
    filler = ["the", "went", "to", "saw", "and", "today", "in", "big", "met"]
    sents, tags = [], []
    for _ in range(n):
        s, t = [], []
        for _ in range(int(rng.integers(1, 4))):
            for _ in range(int(rng.integers(0, 3))):
                s.append(str(rng.choice(filler)))
                t.append("O")
            kind = rng.integers(3)
            if kind == 0:
                name = [str(rng.choice(first)), str(rng.choice(last))]
                if rng.random() < 0.3:
                    name.append("jr")
                s += name
                t += ["B-PER"] + ["I-PER"] * (len(name) - 1)
            elif kind == 1:
                s.append(str(rng.choice(places)))
                t.append("B-LOC")
        sents.append(s)
        tags.append(t)
    return sents, tags


def valid_bio(tags):
    prev = "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            return False
        prev = t
    return True


@pytest.fixture(scope="module")
def bio():
    rng = np.random.default_rng(0)
    train = bio_corpus(rng, 400)
    words = ["jr", "smith", "the", "paris", "went", "lee", "ann", "oslo"]
    # adversarial sentences: "jr" and surnames where no name starts
    test = [list(rng.choice(words, size=int(rng.integers(1, 7)))) for _ in range(300)]
    test = [[str(w) for w in s] for s in test]
    return train, test


def test_observed_transitions_make_bio_output_valid(bio, tmp_path):
    (s, t), test = bio
    free = fe.SequenceTagger(max_iter=3, verbose=False).fit(s, t)
    observed = fe.SequenceTagger(max_iter=3, verbose=False, transitions="observed").fit(s, t)
    # the model alone tags "jr" I-PER after O: the test below can fail
    assert not all(valid_bio(p) for p in free.predict(test))
    pred = observed.predict(test)
    assert all(valid_bio(p) for p in pred)
    assert all(valid_bio(p) for ranked in observed.predict_kbest(test[:50], 5)
               for p, _ in ranked)
    # never I-X after O, nor I-X first
    K = len(observed.labels_)
    index = {tag: k for k, tag in enumerate(observed.labels_)}
    allowed = observed.allowed_transitions_
    assert allowed.shape == (K + 1, K + 1)
    assert not allowed[index["O"], index["I-PER"]] and not allowed[K, index["I-PER"]]
    assert allowed[index["B-PER"], index["I-PER"]] and allowed[index["O"], K]
    # +inf in the energies the tagger decodes with
    _, tr, start, _, _ = observed.energies([["x"]])
    H = observed.n_substates
    assert np.isinf(tr[index["O"] * H, index["I-PER"] * H]) and np.isinf(start[index["I-PER"] * H])
    # saved and loaded with the model
    observed.save(tmp_path / "bio.npz")
    loaded = fe.SequenceTagger.load(tmp_path / "bio.npz")
    assert loaded.transitions == "observed"
    np.testing.assert_array_equal(loaded.allowed_transitions_, allowed)
    assert loaded.predict(test) == pred
    free.save(tmp_path / "free.npz")
    assert fe.SequenceTagger.load(tmp_path / "free.npz").allowed_transitions_ is None


def test_constraints_that_the_observed_transitions_forbid_raise(bio):
    (s, t), _ = bio
    observed = fe.SequenceTagger(max_iter=1, verbose=False, transitions="observed").fit(s, t)
    with pytest.raises(ValueError, match="sentence 0 .* obeys its constraints"):
        observed.predict([["the", "jr"]], constraints=[{0: "O", 1: "I-PER"}])


def test_observed_transitions_of_partial_tags():
    y = np.array([0, -1, 1, 1, 2, -1, 0])
    offsets = np.array([0, 3, 3, 7])
    allowed = constraints.observed_transitions(y, offsets, 3)
    expected = np.zeros((4, 4), dtype=bool)
    expected[3, 3] = True                       # the empty sentence
    expected[3, [0, 1]] = True                  # first tags 0 and 1
    expected[[1, 0], 3] = True                  # last tags 1 and 0
    expected[1, 2] = True                       # the only bigram without an unknown tag
    np.testing.assert_array_equal(allowed, expected)


def test_model_files_from_before_the_new_settings_load(tmp_path, ewt):
    (s, t), (ds, _) = ewt
    tagger = fe.SequenceTagger(max_iter=1, verbose=False).fit(s[:50], t[:50])
    tagger.save(tmp_path / "new.npz")
    arrays, meta = load_arrays(tmp_path / "new.npz", kind="SequenceTagger")
    for key in ("format_version", "kind", "arrays", "shapes"):
        meta.pop(key)
    del meta["params"]["transitions"], meta["params"]["warm_start"]
    save_arrays(tmp_path / "old.npz", arrays, meta, kind="SequenceTagger")
    loaded = fe.SequenceTagger.load(tmp_path / "old.npz")
    assert (loaded.transitions, loaded.warm_start) == ("all", False)
    assert loaded.predict(ds[:20]) == tagger.predict(ds[:20])


def test_observed_transitions_missing_from_a_file_name_the_file(tmp_path, bio):
    (s, t), _ = bio
    fe.SequenceTagger(max_iter=1, verbose=False, transitions="observed").fit(s, t).save(
        tmp_path / "m.npz")
    arrays, meta = load_arrays(tmp_path / "m.npz", kind="SequenceTagger")
    for key in ("format_version", "kind", "arrays", "shapes"):
        meta.pop(key)
    for bad, message in [(None, "holds no allowed_transitions"),
                         (np.ones((3, 3), dtype=bool), "must be a"),
                         (arrays["allowed_transitions"].astype(np.int8), "must be a")]:
        edited = {k: v for k, v in arrays.items() if k != "allowed_transitions"}
        if bad is not None:
            edited["allowed_transitions"] = bad
        save_arrays(tmp_path / "bad.npz", edited, meta, kind="SequenceTagger")
        with pytest.raises(ValueError, match=rf"bad\.npz.*{message}"):
            fe.SequenceTagger.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("param, bad", [("transitions", "seen"), ("transitions", None),
                                        ("warm_start", 1), ("warm_start", "yes")])
def test_bad_new_settings_are_refused(param, bad):
    with pytest.raises(ValueError, match=param):
        fe.SequenceTagger(**{param: bad})


# ----------------------------------------------------------------------------- k-best

def test_kbest_tag_sequences_match_brute_force(tagger):
    for words, constraint in [(SHORT[0], None), (SHORT[1], None), (SHORT[0], {2: "VERB"})]:
        best, *_ = state_paths_by_tags(tagger, words, constraint)
        ref = sorted(best.items(), key=lambda kv: kv[1])[:7]
        (got,) = tagger.predict_kbest([words], 7, constraints=[constraint])
        assert len(got) == 7
        np.testing.assert_allclose([e for _, e in got], [e for _, e in ref], atol=1e-9)
        for tags, e in got:
            np.testing.assert_allclose(best[tuple(tags)], e, atol=1e-9)
        assert len({tuple(tags) for tags, _ in got}) == 7


def test_kbest_best_is_predict_and_handles_empty_and_short(ewt, tagger):
    _, (ds, _) = ewt
    ranked = tagger.predict_kbest(ds[:30] + [[]], 3)
    assert [r[0][0] for r in ranked[:30]] == tagger.predict(ds[:30])
    assert ranked[30] == [([], 0.0)]
    for r in ranked[:30]:
        energies = [e for _, e in r]
        assert energies == sorted(energies) and len(r) == 3
    # a one-token sentence has only K tag sequences
    (one,) = tagger.predict_kbest([["dog"]], 1000)
    assert len(one) == len(tagger.labels_)
    assert tagger.predict_kbest([], 2) == []


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2", None])
def test_bad_k_is_refused(tagger, k):
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        tagger.predict_kbest([["a"]], k)


# ----------------------------------------------------------------------------- explain

def test_explanations_sum_to_the_sequence_energy(ewt, tagger):
    _, (ds, _) = ewt
    for words in ds[:20] + [["Blorfs", "zing", "qwxv", "!"]]:
        parts = tagger.explain(words)
        assert [p["tag"] for p in parts] == tagger.predict([words])[0]
        total = sum(e for p in parts for _, e in p["emission"])
        total += sum(p["transition"] for p in parts) + parts[-1]["end"]
        (best,) = tagger.predict_kbest([words], 1)
        assert abs(total - best[0][1]) < 1e-9
        for p in parts:
            energies = [e for _, e in p["emission"]]
            assert energies == sorted(energies)
            assert p["emission"] and 0 <= p["substate"] < tagger.n_substates
        assert all("end" not in p for p in parts[:-1])
    assert tagger.explain([]) == []


def test_explain_names_the_features_of_the_token(tagger):
    parts = tagger.explain(["the", "dog"])
    names = [n for n, _ in parts[1]["emission"]]
    assert "lower[-1]=the" in names and "bias" in names
    X, _ = tagger.feature_extractor_.transform([["the", "dog"]])
    fx_names = tagger.feature_extractor_.feature_names_
    assert sorted(names) == sorted(fx_names[c] for c in X[1].indices)
    with pytest.raises(ValueError, match="one sentence"):
        tagger.explain("the dog")


# ----------------------------------------------------------------------------- partial labels

def test_partial_labels_train_with_the_nll(ewt):
    (s, t), (ds, dt) = ewt
    rng = np.random.default_rng(1)
    hidden = [[None if rng.random() < 0.5 else x for x in ts] for ts in t]
    tagger = fe.SequenceTagger(max_iter=3, verbose=False).fit(s, hidden)
    assert None not in tagger.labels_.tolist()
    assert set(tagger.labels_) == {x for ts in hidden for x in ts if x is not None}
    assert tagger.score(ds, dt) > 0.8
    # the -1 ids reach the objective: an all-unknown sentence adds nothing to learn from
    labels, y = fe.tagger._encode_tags([["A", None], [None]], 3, "nll")
    assert labels.tolist() == ["A"] and y.tolist() == [0, -1, -1]


def test_partial_labels_need_the_nll():
    with pytest.raises(ValueError, match=r"sentence 1, position 0: an unknown tag \(None\) "
                                         r"needs loss='nll'"):
        fe.SequenceTagger(loss="hinge", verbose=False).fit([["a"], ["b"]], [["X"], [None]])
    with pytest.raises(ValueError, match="every tag is None"):
        fe.SequenceTagger(verbose=False).fit([["a"], ["b"]], [[None], [None]])


# ----------------------------------------------------------------------------- warm start

def test_warm_start_continues_from_the_fitted_weights(ewt):
    (s, t), _ = ewt
    kw = dict(optimizer="lbfgs", n_substates=1, verbose=False)
    cold = fe.SequenceTagger(max_iter=8, **kw).fit(s, t)
    warm = fe.SequenceTagger(max_iter=4, warm_start=True, **kw).fit(s, t)
    first = warm.history_[-1]["loss"]
    warm.fit(s, t)
    # the second fit starts where the first stopped: same vocabulary, lower loss at once
    assert warm.coef_.shape == cold.coef_.shape
    assert warm.history_[0]["loss"] <= first
    assert warm.history_[-1]["loss"] < first
    # a cold start is where the first fit began (L-BFGS's memory of curvature starts afresh,
    # so 4 + 4 iterations get less far than 8)
    assert cold.history_[3]["loss"] == first
    assert warm.history_[0]["loss"] < cold.history_[0]["loss"] / 2


def test_warm_start_adds_features_and_tags_keeping_the_old_weights(ewt, monkeypatch):
    (s, t), _ = ewt
    # first without any sentence holding SYM or X; then sentences with them
    plain = [i for i, ts in enumerate(t) if not {"SYM", "X"} & set(ts)]
    other = [i for i in range(len(t)) if i not in set(plain)][:40] + plain[:40]
    assert other[:1]
    tagger = fe.SequenceTagger(max_iter=1, n_substates=2, verbose=False, warm_start=True,
                               transitions="observed")
    tagger.fit([s[i] for i in plain], [t[i] for i in plain])
    old_fx, old_labels, old_coef = tagger.feature_extractor_, tagger.labels_, tagger.coef_
    old_allowed = tagger.allowed_transitions_
    W_old, T_old, _, end_old = tagger.model_.unpack(old_coef)
    assert "SYM" not in old_labels
    captured = {}
    real = fe.optimize.fit_chain

    def spy(model, *args, w0=None, **kwargs):
        captured["w0"], captured["model"] = w0.copy(), model
        return real(model, *args, w0=w0, **kwargs)

    monkeypatch.setattr(fe.optimize, "fit_chain", spy)
    tagger.fit([s[i] for i in other], [t[i] for i in other])
    labels = tagger.labels_.tolist()
    assert {"SYM", "X"} <= set(labels) and set(old_labels) < set(labels)
    fx = tagger.feature_extractor_
    assert fx.n_features_ > old_fx.n_features_
    assert set(old_fx.feature_names_) <= set(fx.feature_names_)
    # the starting weights hold the old ones, at their features' and tags' new places
    W0, T0, _, end0 = captured["model"].unpack(captured["w0"])
    H = 2
    for name in old_fx.feature_names_[::97]:
        f_old, f_new = old_fx.vocabulary_[name], fx.vocabulary_[name]
        for k, tag in enumerate(old_labels):
            j = labels.index(tag)
            np.testing.assert_array_equal(W0[f_new, j * H:(j + 1) * H],
                                          W_old[f_old, k * H:(k + 1) * H])
    a, b = list(old_labels).index("NOUN"), labels.index("NOUN")
    c, d = list(old_labels).index("DET"), labels.index("DET")
    assert T0[d * H + 1, b * H] == T_old[c * H + 1, a * H]
    assert end0[b * H + 1] == end_old[a * H + 1]
    # the transitions seen before stay allowed
    assert tagger.allowed_transitions_[d, b] and old_allowed[c, a]
    assert tagger.predict([["#", "hello"]])


def test_extended_vocabulary_is_the_union_and_each_row_the_union_of_rows(ewt):
    # a token's features in the grown vocabulary are its strings in the old one or the new:
    # its rows under an extractor fitted on the old data and one fitted on the new, joined
    from factorebm.features import FeatureExtractor
    (s, _), (ds, _) = ewt
    old = FeatureExtractor().fit(s[:150], min_count=2)
    grown, column_map = old.extended(s[150:], min_count=2)
    new = FeatureExtractor().fit(s[150:], min_count=2)
    names, old_names, new_names = grown.feature_names_, old.feature_names_, new.feature_names_
    assert [names[c] for c in column_map] == old_names
    assert set(names) == set(old_names) | set(new_names)
    sents = ds[:50] + s[140:160]
    rows = [fx.transform(sents)[0] for fx in (grown, old, new)]
    for r in range(rows[0].shape[0]):
        got, was, seen = ({nm[c] for c in X.indices[X.indptr[r]:X.indptr[r + 1]]}
                          for nm, X in zip((names, old_names, new_names), rows))
        assert got == was | seen
        assert np.all(np.diff(rows[0].indices[rows[0].indptr[r]:rows[0].indptr[r + 1]]) > 0)
    # the old extractor is as it was, and the grown one saves and loads
    assert old.n_features_ == len(old_names)
    again = FeatureExtractor.from_config_and_arrays(grown.get_config(), grown.to_arrays())
    assert (again.transform(sents)[0] != rows[0]).nnz == 0


def test_warm_start_refuses_a_changed_model_shape(ewt):
    (s, t), _ = ewt
    tagger = fe.SequenceTagger(max_iter=1, n_substates=1, verbose=False, warm_start=True)
    tagger.fit(s[:30], t[:30])
    coef = tagger.coef_
    tagger.n_substates = 2
    with pytest.raises(ValueError, match="warm_start: the fitted tagger has 1 substate"):
        tagger.fit(s[:30], t[:30])
    tagger.n_substates = 1
    tagger.features = {"window": 1}
    with pytest.raises(ValueError, match="warm_start: features"):
        tagger.fit(s[:30], t[:30])
    assert tagger.coef_ is coef
    # without a fitted state warm_start is a plain fit
    fresh = fe.SequenceTagger(max_iter=1, verbose=False, warm_start=True).fit(s[:30], t[:30])
    cold = fe.SequenceTagger(max_iter=1, verbose=False).fit(s[:30], t[:30])
    np.testing.assert_array_equal(fresh.coef_, cold.coef_)


# ----------------------------------------------------------------------------- threads

def test_new_predict_time_methods_are_thread_safe(ewt, tagger):
    _, (ds, _) = ewt
    sents = ds[:60] + [["Zorblax", "qwv"], ["unseen", "wordz", "here"]]
    cons = [{0: {"NOUN", "PROPN"}} if len(x) else None for x in sents]
    expected = (tagger.predict(sents, constraints=cons), tagger.predict_kbest(sents, 3),
                [tagger.explain(x) for x in sents[::7]])
    errors, results = [], []
    barrier = threading.Barrier(4)

    def work():
        try:
            barrier.wait()
            for _ in range(3):
                results.append((tagger.predict(sents, constraints=cons),
                                tagger.predict_kbest(sents, 3),
                                [tagger.explain(x) for x in sents[::7]]))
        except Exception as exc:        # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(results) == 12 and all(r == expected for r in results)
