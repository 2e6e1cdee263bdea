"""fe.GridCRF against hostile input: settings that must save, images that must be refused,
edited, huge or damaged model files, several threads at once, and a fit that stops midway."""
import threading

import numpy as np
import pytest

import factorebm as fe
import factorebm.models
from factorebm.modelio import load_arrays, save_arrays
from model_fuzz import fuzz_model_file


def images(seed, n, H=4, W=5, d=2, K=2):
    rng = np.random.default_rng(seed)
    Y = [rng.integers(0, K, (H, W)) for _ in range(n)]
    X = [np.concatenate([(2.0 * y - 1.0)[:, :, None], rng.normal(size=(H, W, d - 1))], axis=2)
         + rng.normal(0, 0.5, (H, W, d)) for y in Y]
    return X, Y


@pytest.fixture(scope="module")
def fitted():
    X, Y = images(0, 4)
    return fe.GridCRF(2, max_iter=5, verbose=False, n_threads=1).fit(X, Y), X, Y


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    crf, _, _ = fitted
    path = tmp_path_factory.mktemp("grid") / "grid.npz"
    crf.save(path)
    return path


def _same_model(a, b):
    return (type(a) is type(b) and a.get_params() == b.get_params()
            and a.n_features_ == b.n_features_ and a.coef_.dtype == b.coef_.dtype
            and np.array_equal(a.coef_, b.coef_))


def test_a_model_with_numpy_integer_settings_saves_and_loads(tmp_path):
    # settings that validate (np.int64 is an integer) must also save: JSON has no numpy types
    X, Y = images(1, 2)
    crf = fe.GridCRF(np.int64(2), max_iter=np.int64(2), random_state=np.int64(3),
                     inference_options={"max_iter": np.int64(20)}, verbose=np.False_).fit(X, Y)
    crf.save(tmp_path / "np.npz")
    back = fe.GridCRF.load(tmp_path / "np.npz")
    assert back.get_params() == crf.get_params()
    assert type(back.n_states) is int and type(back.inference_options["max_iter"]) is int
    np.testing.assert_array_equal(back.coef_, crf.coef_)


def test_complex_images_are_refused_not_silently_made_real(fitted):
    crf, X, Y = fitted
    with pytest.raises(ValueError, match="image 1: features must be real numbers"):
        crf.predict([X[0], X[1] + 1j])
    with pytest.raises(ValueError, match="image 0: features must be real numbers"):
        fe.GridCRF(2, verbose=False).fit([X[0].astype(complex)], Y[:1])


_KEEP = object()


def _edited(saved, path, params=None, n_features=_KEEP, coef=None):
    """A copy of the saved model with some metadata or the weights replaced."""
    arrays, meta = load_arrays(saved, kind="GridCRF")
    meta = {k: v for k, v in meta.items() if k not in ("format_version", "kind", "arrays",
                                                       "shapes")}
    if params is not None:
        meta["params"] = {**meta["params"], **params}
    if n_features is not _KEEP:
        meta["n_features"] = n_features
    save_arrays(path, {"coef": arrays["coef"] if coef is None else coef}, meta, kind="GridCRF")
    return path


@pytest.mark.parametrize("pairwise", ["symmetric", "full", "potts", "none"])
@pytest.mark.parametrize("n_states", [10 ** 5, 10 ** 9, 10 ** 30])
def test_a_model_file_declaring_a_huge_number_of_labels_is_refused_before_any_allocation(
        saved, tmp_path, n_states, pairwise):
    # the weight count follows from n_states by arithmetic: nothing of size K^2 is built
    # (before, np.arange(K * K) raised MemoryError, or for K ~ 3e4 took gigabytes)
    path = _edited(saved, tmp_path / "huge.npz", params={"n_states": n_states,
                                                         "pairwise": pairwise})
    with pytest.raises(ValueError, match=r"huge\.npz: not a valid GridCRF model \(coef has"):
        fe.GridCRF.load(path)


def test_edited_metadata_loads_or_raises_a_value_error_naming_the_file(fitted, saved,
                                                                       tmp_path):
    crf, X, _ = fitted
    hostile = [None, [], {}, "x", 1e308, -1, 0, True, 1.5, 2 ** 70, [1], {"a": 1},
               float("nan"), float("inf")]
    path = tmp_path / "edited.npz"
    keys = list(crf.get_params()) + ["margin", "unknown_setting"]
    for key in keys:
        for value in hostile:
            _edited(saved, path, params={key: value})
            try:
                model = fe.GridCRF.load(path)
            except ValueError as exc:
                assert "edited.npz" in str(exc), (key, value, str(exc))
                continue
            # what loads is a working model
            assert [p.shape for p in model.predict(X[:1])] == [X[0].shape[:2]], (key, value)
    for value in hostile + [-1, 10 ** 12]:
        _edited(saved, path, n_features=value)
        with pytest.raises(ValueError, match="edited.npz"):
            fe.GridCRF.load(path)
    for coef in (crf.coef_.astype(np.float32), crf.coef_[:, None], crf.coef_[:-1],
                 np.where(np.arange(crf.coef_.size) == 1, np.nan, crf.coef_),
                 crf.coef_.astype(np.int64), np.full(crf.coef_.size, "a")):
        _edited(saved, path, coef=coef)
        with pytest.raises(ValueError, match="edited.npz: not a valid GridCRF model"):
            fe.GridCRF.load(path)


def test_fuzzed_model_files_load_identically_or_raise_a_value_error_naming_the_file(
        saved, tmp_path):
    # as for the tagger: every outcome is the very same model or a ValueError naming the file
    reference = fe.GridCRF.load(saved)
    outcomes = fuzz_model_file(saved, tmp_path / "fuzzed.npz", fe.GridCRF.load,
                               lambda loaded: _same_model(loaded, reference))
    assert outcomes["refused"] > 100 and outcomes["same"] > 10, outcomes


@pytest.mark.parametrize("schedule", ["trws", "flooding"])
def test_predict_and_score_from_several_threads_match_serial_calls(fitted, schedule):
    crf = fitted[0]
    model = fe.GridCRF.__new__(fe.GridCRF)
    model.__dict__.update(crf.__dict__, schedule=schedule, n_threads=2)
    Xs, Ys = images(7, 6)
    want_pred = model.predict(Xs)
    want_score = model.score(Xs, Ys)
    errors, results = [], []

    def work(k):
        try:
            for _ in range(3):
                sub = slice(k % 3, None)
                results.append((k, [p.copy() for p in model.predict(Xs[sub])],
                                model.score(Xs, Ys)))
        except BaseException as exc:      # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 18
    for k, pred, score in results:
        assert score == want_score
        for p, q in zip(pred, want_pred[k % 3:]):
            np.testing.assert_array_equal(p, q)


def test_a_fit_stopped_midway_leaves_a_fitted_model_exactly_as_it_was(fitted, monkeypatch):
    crf, X, Y = fitted
    model = fe.GridCRF(2, max_iter=5, verbose=False, n_threads=1).fit(X, Y)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v)
              for k, v in vars(model).items()}
    history = list(model.history_)
    pred = model.predict(X)
    real = factorebm.models.fit_graphs

    def interrupted(samples, **kwargs):
        def stop(w, epoch):
            if epoch >= 1:
                raise KeyboardInterrupt
        return real(samples, callback=stop, **kwargs)

    monkeypatch.setattr(factorebm.models, "fit_graphs", interrupted)
    X2, Y2 = images(3, 3, d=3)          # other data, another feature count
    with pytest.raises(KeyboardInterrupt):
        model.fit(X2, Y2)
    monkeypatch.undo()
    assert vars(model).keys() == before.keys()
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(vars(model)[k], v)
        else:
            assert vars(model)[k] == v, k
    assert model.history_ == history
    for p, q in zip(model.predict(X), pred):
        np.testing.assert_array_equal(p, q)


def test_a_fit_that_cannot_take_a_single_step_warns_instead_of_returning_silently_untrained():
    # features of magnitude 1e10 made L-BFGS's first line search fail: fit returned the
    # starting weights (all zero) without a word unless verbose
    X, Y = images(4, 2)
    with pytest.warns(RuntimeWarning, match="line search failed at iteration 1"):
        crf = fe.GridCRF(2, max_iter=5, verbose=False).fit([x * 1e10 for x in X], Y)
    assert not crf.coef_.any()


@pytest.mark.parametrize("change", [{"n_states": 3}, {"pairwise": "full"},
                                    {"pairwise": "potts"}, {"pairwise": "none"}])
def test_a_fitted_model_whose_shape_settings_changed_refuses_to_predict_or_save(
        fitted, tmp_path, change):
    # set_params(n_states=3) after fit: weights_ was silently reshaped wrong, pairwise_ read
    # the wrong weights or raised IndexError, and save wrote a file that load refused
    crf, X, Y = fitted
    model = fe.GridCRF.__new__(fe.GridCRF)
    model.__dict__.update(crf.__dict__)
    model.set_params(**change)
    path = tmp_path / "changed.npz"
    for call in (lambda: model.predict(X), lambda: model.score(X, Y), lambda: model.weights_,
                 lambda: model.bias_, lambda: model.pairwise_, lambda: model.save(path)):
        with pytest.raises(ValueError, match="fit it again"):
            call()
    assert not path.exists()
    model.set_params(**{k: crf.get_params()[k] for k in change})
    np.testing.assert_array_equal(model.pairwise_, crf.pairwise_)


def test_a_small_potts_model_file_with_a_huge_label_count_is_refused_at_predict(tmp_path):
    # A Potts (or no-pairwise) model's weights grow linearly in K, so a file of a few MB may
    # declare 10^5 labels and load; each edge of an image would then need K^2 rows of Phi
    # (terabytes): predict must refuse before allocating, not exhaust memory.
    X, Y = images(1, 2)
    crf = fe.GridCRF(2, pairwise="potts", max_iter=2, verbose=False).fit(X, Y)
    crf.save(tmp_path / "potts.npz")
    K, d = 100_000, X[0].shape[2]
    path = _edited(tmp_path / "potts.npz", tmp_path / "huge.npz", params={"n_states": K},
                   coef=np.zeros((d + 1) * K + 1))
    big = fe.GridCRF.load(path)
    with pytest.raises(ValueError, match=r"100000 labels needs .* table entries"):
        big.predict(X[:1])
