"""A served tagger: concurrent calls, calls that fail midway, hostile model files, bad settings.

Each test guards one way a tagger once crashed or answered wrongly (issue 9): several threads
predicting with words unseen in training (the word-type cache grew under a running kernel: a
segmentation fault), a predict interrupted midway (the next one read a half-grown cache), a
model whose energies leave no finite path (every token tagged with the last tag), and
hyper-parameters or saved settings that are out of range.
"""
import json
import threading

import numpy as np
import pytest

import factorebm as fe
from factorebm import features
from factorebm.modelio import load_arrays, save_arrays
from model_fuzz import fuzz_model_file


@pytest.fixture(scope="module")
def ewt():
    train = fe.datasets.load_ud_english_ewt("train")
    dev = fe.datasets.load_ud_english_ewt("dev")
    test = fe.datasets.load_ud_english_ewt("test")
    return train, dev, test


@pytest.fixture(scope="module")
def model_path(ewt, tmp_path_factory):
    """A tiny tagger (a few hundred EWT sentences): most dev and test words are unseen."""
    (sents, tags), _, _ = ewt
    tagger = fe.SequenceTagger(verbose=False, max_iter=1, n_substates=2)
    tagger.fit(sents[:300], tags[:300])
    path = tmp_path_factory.mktemp("robust") / "tiny.npz"
    tagger.save(path)
    return path


def _fresh(model_path, **params):
    return fe.SequenceTagger.load(model_path, **params)


# ----------------------------------------------------------------------------- threads

def test_concurrent_predict_marginals_and_score_equal_serial(ewt, model_path):
    # The thread hammer: several threads tag thousands of sentences, most holding words unseen
    # in training, in different orders and batch sizes, on one freshly loaded tagger (a cold
    # cache) whose cache is also trimmed now and then; every answer must be the serial one.
    _, (dev, dev_tags), (test, _) = ewt
    sents = dev + test
    serial = _fresh(model_path)
    expected_tags = serial.predict(sents)
    expected_marg = serial.predict_marginals(dev[:200])
    expected_score = serial.score(dev[:300], dev_tags[:300])

    shared = _fresh(model_path)
    shared.feature_extractor_.cache_size = 3000     # trims race with publications too
    n_threads, errors = 4, []
    start = threading.Barrier(n_threads)

    def work(k):
        try:
            rng = np.random.default_rng(k)
            start.wait()
            order = rng.permutation(len(sents))
            for lo in range(0, len(order), 23 + 17 * k):
                batch = order[lo:lo + 23 + 17 * k].tolist()
                got = shared.predict([sents[i] for i in batch])
                assert got == [expected_tags[i] for i in batch]
            for got, want in zip(shared.predict_marginals(dev[:200]), expected_marg):
                assert np.array_equal(got, want)
            assert shared.score(dev[:300], dev_tags[:300]) == expected_score
        except BaseException as exc:    # reported below; a thread's assert would be lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert shared.predict(sents) == expected_tags


def test_concurrent_cache_publications_renumber_a_late_batch(model_path):
    # Two batches map the same unseen words against one snapshot; the second to publish finds
    # them published by the first and must use those ids (and cache nothing twice).
    fx = _fresh(model_path).feature_extractor_
    batch = [["zqx1", "the", "zqx2"], ["zqx2", "zqx3"]]
    snap = fx._snapshot()
    tok_a, off, new_a = fx._map_tokens(batch, snap)
    tok_b, _, new_b = fx._map_tokens([["zqx3", "zqx1"]], snap)
    rows_a = fx._type_rows(new_a)
    rows_b = fx._type_rows(new_b)
    tok_a, cache_a = fx._publish(snap, new_a, *rows_a, tok_a)
    tok_b, cache_b = fx._publish(snap, new_b, *rows_b, tok_b)
    assert cache_b.n_types == cache_a.n_types              # zqx1 and zqx3 were already in
    index = cache_b.index
    assert tok_b.tolist() == [index["zqx3"], index["zqx1"]]
    X, _ = fx.transform(batch)
    ref = fe.features.FeatureExtractor.from_config_and_arrays(fx.get_config(), fx.to_arrays())
    Y, _ = ref.transform(batch)
    assert np.array_equal(X.indices, Y.indices) and np.array_equal(X.indptr, Y.indptr)


# ----------------------------------------------------------------------------- failed calls

class _InterruptedUpdate(dict):
    """A word index whose next update stops halfway with KeyboardInterrupt, as a signal
    arriving while the words of a published snapshot are being indexed would."""

    armed = True

    def update(self, items):
        items = list(items)
        dict.update(self, items[:len(items) // 2])
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        dict.update(self, items[len(items) // 2:])


@pytest.mark.parametrize("where", ["_type_rows", "extended", "index.update"])
def test_keyboard_interrupt_midway_leaves_the_tagger_as_it_was(ewt, model_path, monkeypatch,
                                                              where):
    # Interrupted while computing the new words' features, while publishing them (under the
    # lock) and while indexing them (after publishing): the next predicts give the answers of
    # an uninterrupted tagger.
    _, (dev, _), _ = ewt
    reference = _fresh(model_path).predict(dev[:150])
    tagger = _fresh(model_path)
    first = tagger.predict(dev[:50])
    cache = tagger.feature_extractor_._cache

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        if where == "index.update":
            cache.index = _InterruptedUpdate(cache.index)
        else:
            m.setattr(features.FeatureExtractor if where == "_type_rows"
                      else features._TypeCache, where, interrupt)
        with pytest.raises(KeyboardInterrupt):
            tagger.predict(dev[50:150])
    if where != "index.update":     # interrupted before publishing: the cache is untouched
        assert tagger.feature_extractor_._cache is cache
    assert tagger.predict(dev[:50]) == first
    assert tagger.predict(dev[:150]) == reference
    assert tagger.predict(dev[:150]) == reference


def test_a_bad_token_midway_leaves_the_tagger_as_it_was(ewt, model_path):
    _, (dev, _), _ = ewt
    tagger = _fresh(model_path)
    before = tagger.predict(dev[:100])
    cache = tagger.feature_extractor_._cache
    for bad in ([["brandnew1", "brandnew2", 5]], [["brandnew1", None]],
                [["brandnew1", ["x"]]], [["brandnew1", b"bytes"]]):
        with pytest.raises(ValueError, match="tokens must be strings"):
            tagger.predict(bad)
        with pytest.raises(ValueError, match="tokens must be strings"):
            tagger.predict_marginals(bad)
    assert tagger.feature_extractor_._cache is cache
    assert tagger.predict(dev[:100]) == before


def test_lone_surrogate_tokens_are_tagged_and_change_nothing(ewt, model_path):
    # '\udcff' has no UTF-8 form (surrogateescape decoding leaves such characters); it used to
    # raise midway and leave the next predict reading a half-grown cache.
    _, (dev, _), _ = ewt
    tagger = _fresh(model_path)
    before = tagger.predict(dev[:100])
    out = tagger.predict([["The", "x\udcff", "dog", "\udcff"], ["\ud800abc"]])
    assert [len(s) for s in out] == [4, 1] and all(t in tagger.labels_ for s in out for t in s)
    # a surrogate never matches a vocabulary string: tagged as the word without it would be
    # by its other features (here: none of its own)
    assert tagger.predict(dev[:100]) == before
    with pytest.raises(ValueError, match=r"lone surrogate.*'b\\udcffad'|'b\\udcffad'.*surrogate"):
        fe.SequenceTagger(verbose=False, max_iter=1).fit([["a", "b\udcffad"]], [["X", "Y"]])


def test_a_failed_fit_keeps_the_fitted_tagger(ewt, model_path, monkeypatch):
    (sents, tags), (dev, _), _ = ewt
    tagger = _fresh(model_path, verbose=False)
    before = tagger.predict(dev[:50])
    coef = tagger.coef_

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fe.optimize, "fit_chain", interrupt)
    with pytest.raises(KeyboardInterrupt):
        tagger.fit(sents[:100], tags[:100])
    assert tagger.coef_ is coef and tagger.predict(dev[:50]) == before


# ----------------------------------------------------------------------------- no finite path

def test_no_finite_energy_path_raises_instead_of_tagging_the_last_tag(model_path):
    tagger = _fresh(model_path)
    S = tagger.model_.n_states
    e = tagger.model_.n_emit
    tagger.coef_ = tagger.coef_.copy()
    # every transition forbidden: one-token sentences are fine, longer ones have no path
    tagger.coef_[e:e + S * S] = np.inf
    assert len(tagger.predict([["Hello"]])[0]) == 1
    for call in (lambda s: tagger.predict(s), lambda s: tagger.predict_marginals(s),
                 lambda s: tagger.score(s, [["X"] * len(x) for x in s])):
        with pytest.raises(ValueError, match=r"sentence 1 \('a dog'\) has no tagging of "
                                             r"finite energy"):
            call([["Hello"], ["a", "dog"]])


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("param, bad", [
    ("l1", float("inf")), ("l1", float("nan")), ("l1", -1.0), ("l1", "0.1"), ("l1", None),
    ("l2", float("inf")), ("l2", float("nan")), ("l2", -1e-5),
    ("max_iter", 0), ("max_iter", -3), ("max_iter", 2.5), ("max_iter", True),
    ("batch_size", 0), ("learning_rate", 0.0), ("learning_rate", float("nan")),
    ("learning_rate", -0.1), ("min_count", 0), ("n_substates", 0),
    ("n_threads", 0), ("n_threads", -2), ("n_threads", 1.5), ("n_threads", True),
    ("random_state", -1), ("random_state", 1.5), ("optimizer", "newton"),
    ("features", {"window": -1}), ("features", {"no_such_option": 1}), ("features", "word"),
])
def test_bad_hyper_parameters_are_refused_up_front(param, bad):
    with pytest.raises(ValueError, match=param if param != "features" else "window|features"):
        fe.SequenceTagger(**{param: bad})
    tagger = fe.SequenceTagger(verbose=False)
    setattr(tagger, param, bad)         # set after construction: fit refuses it before work
    with pytest.raises(ValueError, match=param if param != "features" else "window|features"):
        tagger.fit([["a"]], [["X"]])


def test_bad_loss_parameters_are_refused_up_front():
    with pytest.raises(ValueError, match="margin"):
        fe.SequenceTagger(loss="hinge", margin=float("nan"))
    with pytest.raises(ValueError, match="margin"):
        fe.SequenceTagger(loss="hinge", margin=-1.0)
    with pytest.raises(ValueError, match=r"'marign'.*takes only margin"):
        fe.SequenceTagger(loss="hinge", marign=1.0)
    with pytest.raises(ValueError, match="'margin'.*takes no parameters"):
        fe.SequenceTagger(loss="log", margin=1.0)
    assert fe.SequenceTagger(loss="hinge", margin=2.0).loss_params == {"margin": 2.0}


def test_many_threads_are_clamped_to_the_cores(ewt, model_path):
    _, (dev, _), _ = ewt
    expected = _fresh(model_path).predict(dev[:100])
    for n in (400, 10**6):
        assert _fresh(model_path, n_threads=n).predict(dev[:100]) == expected
        tagger = _fresh(model_path)
        U, _ = tagger.feature_extractor_.emissions(dev[:100], np.zeros(
            (tagger.feature_extractor_.n_features_, 3)), n_threads=n)
        assert U.shape[1] == 3


# ----------------------------------------------------------------------------- hostile files

def _rewrite(src, dst, edit_meta=None, edit_arrays=None):
    """A valid archive (checksums right) with edited content: what a hostile author writes."""
    arrays, meta = load_arrays(src, kind="SequenceTagger")
    for key in ("format_version", "kind", "arrays", "shapes"):
        meta.pop(key, None)
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    save_arrays(dst, arrays, meta, kind="SequenceTagger")
    return dst


@pytest.mark.parametrize("n_threads", [0, -4, 2.5, "all", True])
def test_a_saved_thread_setting_out_of_range_names_the_file(model_path, tmp_path, n_threads):
    bad = _rewrite(model_path, tmp_path / "threads.npz",
                   edit_meta=lambda m: m["params"].update(n_threads=n_threads))
    with pytest.raises(ValueError, match=r"threads\.npz.*n_threads"):
        fe.SequenceTagger.load(bad)
    # an override replaces the saved value, and a bad override is the caller's error
    assert fe.SequenceTagger.load(bad, n_threads=1).n_threads == 1
    with pytest.raises(ValueError, match="n_threads") as info:
        fe.SequenceTagger.load(model_path, n_threads=0)
    assert "tiny.npz" not in str(info.value)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["feature_config"]["templates"].append([2**70, ["word"]]), "offset"),
    (lambda m: m["feature_config"].update(cache_size=float("inf")), "cache_size"),
    (lambda m: m["params"].update(n_substates=10**12), "weight vector"),
    (lambda m: m["params"].update(max_iter=0), "max_iter"),
    (lambda m: m["params"].update(l1=float("nan")), "l1"),
    (lambda m: m.update(params=[1, 2]), "params"),
    (lambda m: m["feature_config"].update(min_count=True), "min_count"),
])
def test_hostile_metadata_is_a_value_error_naming_the_file(model_path, tmp_path, edit,
                                                          message):
    bad = _rewrite(model_path, tmp_path / "hostile.npz", edit_meta=edit)
    with pytest.raises(ValueError, match=rf"hostile\.npz.*{message}"):
        fe.SequenceTagger.load(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.update(coef=np.full_like(a["coef"], np.nan)), "NaN"),
    (lambda a: a.update(coef=a["coef"].astype(np.float32)), "float64"),
    (lambda a: a.update(coef=a["coef"][:-1]), "weight vector"),
    (lambda a: a.update(labels=np.array(["NOUN", "NOUN"] + list(a["labels"][2:]))), "twice"),
    (lambda a: a.update(labels=np.arange(len(a["labels"]))), "string"),
])
def test_hostile_arrays_are_a_value_error_naming_the_file(model_path, tmp_path, edit, message):
    bad = _rewrite(model_path, tmp_path / "hostile.npz", edit_arrays=edit)
    with pytest.raises(ValueError, match=rf"hostile\.npz.*{message}"):
        fe.SequenceTagger.load(bad)


def test_the_round_trip_of_the_rewriting_helper_is_exact(model_path, tmp_path):
    same = _rewrite(model_path, tmp_path / "same.npz")
    a, b = fe.SequenceTagger.load(model_path), fe.SequenceTagger.load(same)
    assert np.array_equal(a.coef_, b.coef_) and json.dumps(a.get_params()) == json.dumps(
        b.get_params())


def _same_model(a, b):
    fa, fb = a.feature_extractor_, b.feature_extractor_
    arrays_a, arrays_b = fa.to_arrays(), fb.to_arrays()
    return (np.array_equal(a.coef_, b.coef_) and a.labels_.tolist() == b.labels_.tolist()
            and a.get_params() == b.get_params() and fa.get_config() == fb.get_config()
            and arrays_a.keys() == arrays_b.keys()
            and all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a))


def test_fuzzed_model_files_load_identically_or_raise_a_value_error_naming_the_file(
        ewt, tmp_path):
    # every outcome must be a ValueError that names the file, or the very same model
    (sents, tags), _, _ = ewt
    src = tmp_path / "tiny.npz"
    fe.SequenceTagger(verbose=False, max_iter=1, n_substates=1, min_count=3).fit(
        sents[:40], tags[:40]).save(src)
    reference = fe.SequenceTagger.load(src)
    outcomes = fuzz_model_file(src, tmp_path / "fuzzed.npz", fe.SequenceTagger.load,
                               lambda loaded: _same_model(loaded, reference))
    assert outcomes["refused"] > 100 and outcomes["same"] > 10, outcomes
