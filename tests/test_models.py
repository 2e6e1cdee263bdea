"""fe.GridCRF: its energy (weights, biases, pairwise table and edge orientation) against brute
force, learning beats the per-pixel classifier, save/load, bad input."""
import itertools
import json
import zipfile

import numpy as np
import pytest

import factorebm as fe


def noisy_images(seed, n, H=10, W=10, noise=1.2):
    """Binary images (a rectangle on a background) seen through Gaussian noise."""
    rng = np.random.default_rng(seed)
    X, Y = [], []
    for _ in range(n):
        y = np.zeros((H, W), dtype=np.int64)
        r, c = rng.integers(0, H // 2), rng.integers(0, W // 2)
        y[r:r + H // 2, c:c + W // 2] = 1
        X.append((2.0 * y - 1.0)[:, :, None] + rng.normal(0, noise, (H, W, 1)))
        Y.append(y)
    return X, Y


def energy(crf, x, y):
    """E(y | x) from the fitted parts: sum_p x_p . W[:, y_p] + b[y_p] + sum_edges T[y_p, y_q],
    vertical edges (upper, lower), horizontal ones (left, right)."""
    e = float((np.einsum("hwd,dk->hwk", x, crf.weights_) + crf.bias_)[
        np.arange(y.shape[0])[:, None], np.arange(y.shape[1]), y].sum())
    T = crf.pairwise_
    e += T[y[:-1, :], y[1:, :]].sum() + T[y[:, :-1], y[:, 1:]].sum()
    return e


@pytest.fixture(scope="module")
def fitted():
    X, Y = noisy_images(0, 8)
    crf = fe.GridCRF(2, optimizer="adagrad", learning_rate=0.3, batch_size=4, max_iter=10,
                     verbose=False, n_threads=1)
    return crf.fit(X, Y), X, Y


def test_grid_crf_beats_the_per_pixel_classifier(fitted):
    crf, X, Y = fitted
    Xt, Yt = noisy_images(1, 6)
    pixel = fe.GridCRF(2, pairwise="none", optimizer="adagrad", learning_rate=0.3,
                       batch_size=4, max_iter=10, verbose=False).fit(X, Y)
    acc_crf, acc_pixel = crf.score(Xt, Yt), pixel.score(Xt, Yt)
    assert acc_crf > acc_pixel + 0.05 and acc_crf > 0.9, (acc_crf, acc_pixel)
    # attractive: neighbours prefer equal labels
    T = crf.pairwise_
    assert T[0, 1] > T[0, 0] and T[1, 0] > T[1, 1]
    np.testing.assert_array_equal(T, T.T)                  # pairwise="symmetric"
    assert np.all(pixel.pairwise_ == 0)


@pytest.mark.parametrize("pairwise", ["full", "symmetric", "potts"])
def test_predict_is_the_brute_force_minimum_of_the_model_energy_on_strips(pairwise):
    # 1 x 4 and 4 x 1 strips are chains (forests: min-sum is exact), so predict must give the
    # minimum of E over all labellings: this checks the weight layout and edge orientation
    rng = np.random.default_rng(2)
    X = [rng.normal(size=(1, 4, 2)), rng.normal(size=(4, 1, 2)), rng.normal(size=(2, 2, 2))]
    Y = [rng.integers(0, 3, x.shape[:2]) for x in X]
    crf = fe.GridCRF(3, "hinge", pairwise=pairwise, max_iter=2, verbose=False).fit(X, Y)
    crf.coef_ = rng.normal(size=crf.coef_.size)          # any weights
    if pairwise == "potts":
        c = crf.pairwise_[0, 1]
        np.testing.assert_array_equal(crf.pairwise_, c * (1 - np.eye(3)))
    for x, p in zip(X[:2], crf.predict(X[:2])):
        best = min(itertools.product(range(3), repeat=4),
                   key=lambda lab: energy(crf, x, np.array(lab).reshape(x.shape[:2])))
        np.testing.assert_array_equal(p.ravel(), best)


def test_predict_schedules_agree_on_a_clear_image(fitted):
    crf, X, _ = fitted
    a = crf.predict(X[:2])
    for schedule in ("flooding", "residual"):
        b = fe.GridCRF.__new__(fe.GridCRF)
        b.__dict__.update(crf.__dict__, schedule=schedule)
        assert sum((p != q).sum() for p, q in zip(a, b.predict(X[:2]))) <= 3


def test_save_load_round_trip(fitted, tmp_path):
    crf, X, Y = fitted
    path = tmp_path / "grid.npz"
    crf.save(path)
    back = fe.GridCRF.load(path)
    np.testing.assert_array_equal(back.coef_, crf.coef_)
    assert back.get_params() == crf.get_params()
    for p, q in zip(back.predict(X), crf.predict(X)):
        np.testing.assert_array_equal(p, q)
    fast = fe.GridCRF.load(path, schedule="flooding", n_threads=1, verbose=False)
    assert fast.schedule == "flooding" and fast.loss == crf.loss
    with pytest.raises(ValueError, match="can override only"):
        fe.GridCRF.load(path, loss="hinge")
    with zipfile.ZipFile(path) as z:
        meta = json.loads(np.load(z.open("__metadata__.npy")).tobytes())
    assert meta["kind"] == "GridCRF" and meta["format_version"] >= 1
    # a model of another kind, and a weight vector of the wrong size
    tagger_like = tmp_path / "other.npz"
    fe.modelio.save_arrays(tagger_like, {"coef": crf.coef_}, {}, kind="SequenceTagger")
    with pytest.raises(ValueError, match="SequenceTagger"):
        fe.GridCRF.load(tagger_like)
    bad = tmp_path / "bad.npz"
    fe.modelio.save_arrays(bad, {"coef": crf.coef_[:-1]},
                           {"params": crf.get_params() | {"verbose": False},
                            "n_features": 1}, kind="GridCRF")
    with pytest.raises(ValueError, match="not a valid GridCRF model"):
        fe.GridCRF.load(bad)


def test_bad_input_raises_a_clear_value_error(fitted):
    crf, X, Y = fitted
    x3 = np.zeros((4, 4, 3))
    with pytest.raises(ValueError, match="image 1 has 3 features per pixel, image 0 has 1"):
        fe.GridCRF(2, verbose=False).fit([X[0], x3], Y[:2])
    with pytest.raises(ValueError, match="image 0 has 3 features per pixel, the model was "
                                         "fitted with 1"):
        crf.predict([x3])
    with pytest.raises(ValueError, match=r"image 1: labels have shape \(3, 10\)"):
        fe.GridCRF(2, verbose=False).fit(X[:2], [Y[0], Y[1][:3]])
    nan = X[0].copy()
    nan[2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="image 0: features contain NaN"):
        fe.GridCRF(2, verbose=False).fit([nan], Y[:1])
    with pytest.raises(ValueError, match=r"image 0: label 2 is out of range 0..1"):
        fe.GridCRF(2, verbose=False).fit(X[:1], [Y[0] * 2])
    with pytest.raises(ValueError, match="image 0: labels must be integers"):
        fe.GridCRF(2, verbose=False).fit(X[:1], [Y[0].astype(float)])
    with pytest.raises(ValueError, match=r"image 0: features must be an \(H, W, d\) array"):
        fe.GridCRF(2, verbose=False).fit([np.zeros((4, 4))], [Y[0][:4, :4]])
    with pytest.raises(ValueError, match="got 2 images but 1 label arrays"):
        fe.GridCRF(2, verbose=False).fit(X[:2], Y[:1])
    with pytest.raises(ValueError, match="not fitted yet"):
        fe.GridCRF(2).predict(X)
    with pytest.raises(ValueError, match="n_states must be an integer >= 2"):
        fe.GridCRF(1)
    with pytest.raises(ValueError, match="pairwise must be one of"):
        fe.GridCRF(2, pairwise="diagonal")
    with pytest.raises(ValueError, match="loss must be one of"):
        fe.GridCRF(2, loss="energy")
    with pytest.raises(ValueError, match="schedule must be one of"):
        fe.GridCRF(2, schedule="loopy")
    with pytest.raises(ValueError, match="unknown inference_options"):
        fe.GridCRF(2, inference_options={"temperature": 1.0})
    with pytest.raises(ValueError, match="TRW-S is a min-sum algorithm"):
        fe.GridCRF(2, inference_options={"schedule": "trws", "damping": 0.0})
    before = crf.get_params()
    with pytest.raises(ValueError, match="l2 must be"):
        crf.set_params(l2=-1.0)
    assert crf.get_params() == before
