"""Ready-made structured models with an sklearn-style interface: :class:`GridCRF`.

A :class:`GridCRF` labels every pixel of an image with one of K labels. Its energy over a
4-connected H x W grid, with pixel features ``x_p`` (d,), is::

    E(y | x) = sum_p (x_p . W[:, y_p] + b[y_p])  +  sum_{(p, q) neighbours} T[y_p, y_q]

with unary weights W (d, K), biases b (K,) and one learned pairwise table T (K, K) shared by
every edge; (p, q) is (upper, lower) for a vertical edge and (left, right) for a horizontal
one. ``pairwise`` chooses T's form: ``"symmetric"`` (default: T[a, b] = T[b, a], K (K + 1) / 2
weights -- the neighbour relation of an image is undirected), ``"full"`` (K^2 weights: "a above
b" may differ from "b above a"), ``"potts"`` (one weight c, T = c [a != b]: its messages cost O(K)
instead of O(K^2)) or ``"none"`` (no pairwise factors: independent per-pixel multinomial logistic
regression with the NLL, a per-pixel SVM with the hinge -- the baseline a CRF should beat).

Training is :func:`factorebm.optimize.fit_graphs` on one :class:`~factorebm.learning.ParametricGraph`
per image (belief propagation over all the images of a batch in one kernel call); prediction is
min-sum (TRW-S by default), again one run over all the images. Images may have different sizes.
"""
import numbers

import numpy as np

from . import losses
from .checks import check_count, check_real, check_threads
from .energies.graph import GraphObjective, ParametricGraph
from .energies.graph_batch import check_options
from .estimator import Estimator
from .graph import FactorGraph
from .inference import MIN_SUM_SCHEDULES
from .modelio import load_arrays, save_arrays
from .optimize import OPTIMIZERS, fit_graphs

__all__ = ["GridCRF", "grid_edges", "PAIRWISE", "GRID_LOSSES"]

MODEL_KIND = "GridCRF"
PAIRWISE = ("symmetric", "full", "potts", "none")
# losses meaningful for a log-linear model whose energies can be negative
GRID_LOSSES = ("nll", "hinge", "perceptron", "log", "mce")
_PARAM_NAMES = ("n_states", "loss", "pairwise", "optimizer", "l1", "l2", "max_iter",
                "batch_size", "learning_rate", "inference_options", "schedule", "n_threads",
                "random_state", "verbose")
# settings of how a fitted model predicts, not of how it was trained: load() may replace them
_RUNTIME_PARAMS = ("schedule", "n_threads", "verbose")


def grid_edges(H, W):
    """(E, 2) int64: the 4-neighbour pairs of an H x W grid of pixels numbered row-major,
    vertical (upper, lower) pairs first, then horizontal (left, right) ones."""
    ids = np.arange(H * W, dtype=np.int64).reshape(H, W)
    return np.concatenate([np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1),
                           np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1)])


# The most table entries plus feature values one image's graph may hold (~4 GB of float64).
_MAX_ENTRIES = 2 ** 29


def _n_pairwise(K, pairwise):
    """The number of pairwise weights, by arithmetic: a model file's declared K is checked
    against its weights before anything of size K^2 is built."""
    return {"full": K * K, "symmetric": K * (K + 1) // 2, "potts": 1}.get(pairwise, 0)


def _pairwise_columns(K, pairwise):
    """(entries, columns): which entries a*K + b of the K x K table carry which pairwise
    weight (numbered from 0), and the number of pairwise weights."""
    n = _n_pairwise(K, pairwise)
    if pairwise == "none":
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), n
    a, b = np.divmod(np.arange(K * K), K)
    if pairwise == "full":
        return np.arange(K * K), np.arange(K * K), n
    if pairwise == "symmetric":
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        return np.arange(K * K), lo * K - lo * (lo - 1) // 2 + (hi - lo), n
    off = np.flatnonzero(a != b)            # potts
    return off, np.zeros(off.size, dtype=np.int64), n




class GridCRF(Estimator):
    """A conditional random field on 4-connected pixel grids (sklearn-style estimator).

    Parameters
    ----------
    n_states : int >= 2
        Number of labels K; labels are 0 .. K-1.
    loss : {"nll", "hinge", "perceptron", "log", "mce"}
        The training loss (:mod:`factorebm.losses`): the NLL trains a CRF (Bethe free energy on
        the loopy grid), the margin losses a structured SVM-like model (loss-augmented min-sum by
        default: see ``inference_options``).
    pairwise : {"symmetric", "full", "potts", "none"}
        Form of the learned K x K pairwise table (see the module docstring).
    optimizer, l1, max_iter, batch_size, learning_rate
        As for :func:`factorebm.optimize.fit_graphs` (``batch_size`` counts images).
    l2 : float or None
        L2 penalty on the mean loss per image (None: 0.1, and 0 for the perceptron). Stronger
        than fit_graphs' default: an image's loss sums over its pixels, and a grid's weights
        have nearly null directions (the biases against the pairwise table at interior
        pixels) along which the Bethe free energy of a loopy grid can run away.
    inference_options : dict or None
        Belief propagation while training, merged over the defaults: for the NLL
        ``{"damping": 0.5, "max_iter": 100, "tol": 1e-8}`` (flooding sum-product); for the
        margin losses ``{"schedule": "trws", "e_minus": "loss_augmented", "max_iter": 100}``
        (the structured hinge with Hamming loss; ``"hamming"`` sets the weight per wrong
        pixel); for the perceptron ``{"schedule": "trws", "max_iter": 100}``. See
        :func:`factorebm.optimize.fit_graphs`.
    schedule : {"trws", "flooding", "residual"}
        The min-sum schedule of :meth:`predict` (TRW-S: sequential, with a lower bound; flooding:
        parallel over ``n_threads``, damped by 0.5).
    n_threads : int or None
        Threads for training and prediction (None: every core where the batch is large enough).
    random_state : int or None
        Seed of the mini-batch order of the stochastic optimizers.
    verbose : bool
        Print one line about the data, then one per optimizer iteration / epoch.
    **loss_params
        Passed to the loss (``margin`` of the hinge, ...).

    Attributes
    ----------
    coef_ : (n_weights,) float64
        All weights: W and b as a (d + 1, K) row-major block (row d: the biases), then the
        pairwise weights.
    weights_ : (d, K) float64, bias_ : (K,) float64, pairwise_ : (K, K) float64
        Views of the fitted energy's parts (``pairwise_`` is zeros for ``pairwise="none"``).
    n_features_ : int
    history_ : list of dict
        The optimizer's progress (:func:`factorebm.optimize.minimize`).

    Examples
    --------
    >>> import numpy as np, factorebm as fe
    >>> rng = np.random.default_rng(0)
    >>> Y = [np.repeat(np.arange(4) % 2, 4).reshape(4, 4)]
    >>> X = [(2.0 * Y[0] - 1.0 + rng.normal(0, 1.0, (4, 4)))[:, :, None]]
    >>> crf = fe.GridCRF(2, max_iter=20, verbose=False).fit(X, Y)
    >>> crf.predict(X)[0].shape
    (4, 4)
    """

    _PARAM_NAMES = _PARAM_NAMES

    def __init__(self, n_states, loss="nll", *, pairwise="symmetric", optimizer=None, l1=0.0,
                 l2=None, max_iter=None, batch_size=None, learning_rate=None,
                 inference_options=None, schedule="trws", n_threads=None, random_state=0,
                 verbose=True, **loss_params):
        self.n_states = n_states
        self.loss = loss
        self.pairwise = pairwise
        self.optimizer = optimizer
        self.l1 = l1
        self.l2 = l2
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.inference_options = inference_options
        self.schedule = schedule
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose
        self.loss_params = dict(loss_params)
        self._check_params()

    # ------------------------------------------------------------------ parameters
    def _check_params(self):
        """Raise ValueError naming the first bad setting."""
        K = self.n_states
        if isinstance(K, bool) or not isinstance(K, numbers.Integral) or K < 2:
            raise ValueError(f"n_states must be an integer >= 2, got {K!r}")
        if not (isinstance(self.loss, str) and self.loss in GRID_LOSSES):
            raise ValueError(f"loss must be one of {', '.join(GRID_LOSSES)} for a GridCRF, got "
                             f"{self.loss!r}")
        if not (isinstance(self.pairwise, str) and self.pairwise in PAIRWISE):
            raise ValueError(f"pairwise must be one of {', '.join(map(repr, PAIRWISE))}, got "
                             f"{self.pairwise!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be None or one of {', '.join(OPTIMIZERS)}; got "
                             f"{self.optimizer!r}")
        check_real(self.l1, "l1")
        check_real(self.l2, "l2", optional=True)
        check_count(self.max_iter, "max_iter", optional=True)
        check_count(self.batch_size, "batch_size", optional=True)
        check_real(self.learning_rate, "learning_rate", optional=True, positive=True)
        if not (isinstance(self.schedule, str) and self.schedule in MIN_SUM_SCHEDULES):
            raise ValueError(f"schedule must be one of {', '.join(map(repr, MIN_SUM_SCHEDULES))}"
                             f", got {self.schedule!r}")
        check_threads(self.n_threads)
        rs = self.random_state
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, numbers.Integral)
                               or rs < 0):
            raise ValueError(f"random_state must be None or an integer >= 0, got {rs!r}")
        if not isinstance(self.verbose, (bool, np.bool_)):
            raise ValueError(f"verbose must be True or False, got {self.verbose!r}")
        if self.inference_options is not None and not isinstance(self.inference_options, dict):
            raise ValueError(f"inference_options must be None or a dict, got "
                             f"{type(self.inference_options).__name__}")
        spec = losses.get(self.loss)
        spec.check_params(self.loss_params)
        check_options(spec, self.loss_params, self._training_options())

    def _training_options(self):
        spec = losses.get(self.loss)
        if spec.e_minus == "free_energy":
            options = {"damping": 0.5, "max_iter": 100, "tol": 1e-8}
        elif spec.e_minus == "most_offending":
            options = {"schedule": "trws", "e_minus": "loss_augmented", "max_iter": 100}
        else:
            options = {"schedule": "trws", "max_iter": 100}
        options.update(self.inference_options or {})
        return options

    def _predict_options(self):
        return {"schedule": self.schedule, "max_iter": 200, "tol": 1e-9,
                "damping": 0.0 if self.schedule == "trws" else 0.5}

    @property
    def n_weights(self):
        """Number of weights of a model with ``n_features_`` pixel features."""
        self._check_fitted()
        return self._n_weights(self.n_features_)

    def _n_weights(self, d):
        return (d + 1) * self.n_states + _n_pairwise(self.n_states, self.pairwise)

    # ------------------------------------------------------------------ data
    def _check_images(self, X, Y=None, n_features=None):
        """Validate images (and labels); return the list of float64 (H, W, d) arrays and of
        int64 (H, W) label arrays (or None)."""
        if isinstance(X, np.ndarray) and X.ndim == 4:
            X = list(X)
        if isinstance(X, (str, bytes)) or not hasattr(X, "__len__") or isinstance(X, dict):
            raise ValueError("X must be a list of (H, W, d) feature arrays, one per image")
        if len(X) == 0:
            raise ValueError("X holds no image")
        if Y is not None:
            if isinstance(Y, np.ndarray) and Y.ndim == 3:
                Y = list(Y)
            if isinstance(Y, (str, bytes)) or not hasattr(Y, "__len__") or isinstance(Y, dict):
                raise ValueError("Y must be a list of (H, W) label arrays, one per image")
            if len(Y) != len(X):
                raise ValueError(f"got {len(X)} images but {len(Y)} label arrays")
        images, labels = [], None if Y is None else []
        d0 = n_features
        for i, x in enumerate(X):
            try:
                a = np.asarray(x)
                # complex: a cast to float would silently drop the imaginary parts
                x = None if a.dtype.kind == "c" else a.astype(np.float64, copy=False)
            except (TypeError, ValueError):
                raise ValueError(f"image {i}: features must be a numeric (H, W, d) array") from None
            if x is None:
                raise ValueError(f"image {i}: features must be real numbers, got dtype {a.dtype}")
            if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1:
                raise ValueError(f"image {i}: features must be an (H, W, d) array with H, W >= 1, "
                                 f"got shape {x.shape}")
            if d0 is None:
                d0 = x.shape[2]
            elif x.shape[2] != d0:
                what = "the model was fitted with" if n_features is not None else "image 0 has"
                raise ValueError(f"image {i} has {x.shape[2]} features per pixel, {what} {d0}")
            if not np.isfinite(x).all():
                raise ValueError(f"image {i}: features contain NaN or infinite values")
            images.append(np.ascontiguousarray(x))
            if Y is not None:
                y = np.asarray(Y[i])
                if y.shape != x.shape[:2]:
                    raise ValueError(f"image {i}: labels have shape {y.shape}, the features "
                                     f"{x.shape[:2]} pixels")
                if y.dtype.kind not in "iu":
                    raise ValueError(f"image {i}: labels must be integers, got dtype {y.dtype}")
                if y.size and (y.min() < 0 or y.max() >= self.n_states):
                    bad = y[(y < 0) | (y >= self.n_states)].ravel()[0]
                    raise ValueError(f"image {i}: label {bad} is out of range 0..{self.n_states - 1}")
                labels.append(y.astype(np.int64))
        return images, labels

    def _graph(self, x):
        """One image's ParametricGraph: a K-state variable per pixel (row-major), one unary
        factor per pixel, one pairwise factor per 4-neighbour edge."""
        import scipy.sparse as sp
        H, W, d = x.shape
        K = self.n_states
        n = H * W
        # Every edge gets its own K x K block of Phi's rows: refuse, before allocating, an
        # image whose graph could not be built (a model file may declare any n_states).
        n_edges = (H - 1) * W + H * (W - 1) if _n_pairwise(K, self.pairwise) else 0
        size = n * K * (d + 2) + n_edges * K * K
        if size > _MAX_ENTRIES:
            raise ValueError(f"GridCRF: an image of {H} x {W} pixels with {K} labels needs "
                             f"{size:.3g} table entries and features, more than the "
                             f"{_MAX_ENTRIES:.3g} one graph may hold")
        g = FactorGraph()
        g.add_variables(n, K)
        g.add_factors(np.arange(n, dtype=np.int64)[:, None], np.zeros((n, K)))
        entries, cols, n_pair = _pairwise_columns(K, self.pairwise)
        edges = grid_edges(H, W) if n_pair else np.zeros((0, 2), dtype=np.int64)
        if len(edges):
            g.add_factors(edges, np.zeros((K, K)))
        # unary rows (pixel i, label k): [x_i, 1] in the columns j * K + k
        feats = np.concatenate([x.reshape(n, d), np.ones((n, 1))], axis=1)
        rows_u = np.repeat(np.arange(n * K, dtype=np.int64), d + 1)
        cols_u = np.tile((np.arange(d + 1)[None, :] * K + np.arange(K)[:, None]).ravel(), n)
        vals_u = np.repeat(feats, K, axis=0).ravel()
        E = len(edges)
        base = (d + 1) * K
        rows_p = (n * K + (K * K) * np.arange(E, dtype=np.int64)[:, None] + entries).ravel()
        cols_p = np.tile(base + cols, E)
        phi = sp.csr_matrix((np.concatenate([vals_u, np.ones(rows_p.size)]),
                             (np.concatenate([rows_u, rows_p]), np.concatenate([cols_u, cols_p]))),
                            shape=(n * K + E * K * K, base + n_pair))
        return ParametricGraph(g, phi)

    # ------------------------------------------------------------------ learning
    def fit(self, X, Y):
        """Learn the weights from images X (list of (H, W, d) float arrays) and their labels Y
        (list of (H, W) int arrays in 0..K-1); sizes may differ between images. Returns self."""
        self._check_params()
        images, labels = self._check_images(X, Y)
        d = images[0].shape[2]
        samples = [(self._graph(x), dict(enumerate(y.ravel().tolist())))
                   for x, y in zip(images, labels)]
        if self.verbose:
            n_pix = sum(y.size for y in labels)
            print(f"GridCRF: loss {self.loss}, pairwise {self.pairwise}, {len(images)} images, "
                  f"{n_pix} pixels, {self.n_states} labels, {d} features, "
                  f"{self._n_weights(d)} weights", flush=True)
        l2 = self.l2
        if l2 is None:
            l2 = 0.0 if self.loss == "perceptron" else 0.1
        w, history = fit_graphs(samples, loss=self.loss, optimizer=self.optimizer, l1=self.l1,
                                l2=l2, max_iter=self.max_iter, batch_size=self.batch_size,
                                learning_rate=self.learning_rate, verbose=bool(self.verbose),
                                n_threads=self.n_threads, random_state=self.random_state,
                                inference_options=self._training_options(), **self.loss_params)
        self.n_features_ = d
        self.coef_ = w
        self.history_ = history
        return self

    def _check_fitted(self):
        if getattr(self, "coef_", None) is None:
            raise ValueError("this GridCRF is not fitted yet: call fit(X, Y) first")
        # set_params may have changed n_states or pairwise since: the weights would then be
        # read at the wrong places (and a saved file would not load)
        want = self._n_weights(self.n_features_)
        if self.coef_.shape != (want,):
            raise ValueError(f"this GridCRF's {self.coef_.size} weights were fitted with other "
                             f"settings than n_states={self.n_states!r}, "
                             f"pairwise={self.pairwise!r} (which need {want}): fit it again")

    @property
    def weights_(self):
        self._check_fitted()
        K, d = self.n_states, self.n_features_
        return self.coef_[:(d + 1) * K].reshape(d + 1, K)[:d]

    @property
    def bias_(self):
        self._check_fitted()
        K, d = self.n_states, self.n_features_
        return self.coef_[d * K:(d + 1) * K]

    @property
    def pairwise_(self):
        self._check_fitted()
        K, d = self.n_states, self.n_features_
        entries, cols, _ = _pairwise_columns(K, self.pairwise)
        table = np.zeros(K * K)
        table[entries] = self.coef_[(d + 1) * K + cols]
        return table.reshape(K, K)

    # ------------------------------------------------------------------ prediction
    def predict(self, X):
        """The minimum-energy labelling of every image (min-sum with ``schedule``, one run over
        all images): a list of (H, W) int64 arrays."""
        self._check_fitted()
        images, _ = self._check_images(X, n_features=self.n_features_)
        samples = [(self._graph(x), dict.fromkeys(range(x.shape[0] * x.shape[1]), 0))
                   for x in images]
        obj = GraphObjective(samples, "perceptron", inference_options=self._predict_options())
        states = obj.minimizers(self.coef_, n_threads=self.n_threads)
        return [s.reshape(x.shape[:2]) for s, x in zip(states, images)]

    def score(self, X, Y):
        """Pixel accuracy of :meth:`predict` on images X with labels Y (all pixels pooled)."""
        self._check_fitted()
        _, labels = self._check_images(X, Y, n_features=self.n_features_)
        pred = self.predict(X)
        correct = sum(int((p == y).sum()) for p, y in zip(pred, labels))
        return correct / sum(y.size for y in labels)

    # ------------------------------------------------------------------ model files
    def save(self, path):
        """Write the fitted model to ``path`` (numpy .npz + JSON metadata; no pickle, atomic)."""
        self._check_fitted()
        params = self.get_params()
        params["verbose"] = bool(params["verbose"])
        save_arrays(path, {"coef": self.coef_},
                    {"params": params, "n_features": int(self.n_features_)}, kind=MODEL_KIND)

    @classmethod
    def load(cls, path, **params):
        """Read a model written by :meth:`save`. Never unpickles: an untrusted file runs no code.

        Parameters
        ----------
        path : str or os.PathLike
        **params
            Settings that replace the saved ones: ``schedule``, ``n_threads``, ``verbose``.
        """
        unknown = sorted(set(params) - set(_RUNTIME_PARAMS))
        if unknown:
            raise ValueError(f"load() can override only {', '.join(_RUNTIME_PARAMS)}, not "
                             f"{', '.join(unknown)} (the other settings describe the training)")
        arrays, metadata = load_arrays(path, kind=MODEL_KIND, required=("coef",))
        try:
            saved = metadata["params"]
            if not isinstance(saved, dict):
                raise ValueError("params is not a JSON object")
            merged = {**saved, **params}
            loss_params = {k: merged.pop(k) for k in list(merged) if k not in _PARAM_NAMES}
            n_states = merged.pop("n_states")
            model = cls(n_states, **merged, **loss_params)
            d = metadata["n_features"]
            if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                raise ValueError(f"n_features must be an integer >= 0, got {d!r}")
            coef = np.asarray(arrays["coef"])
            if coef.dtype != np.float64 or coef.shape != (model._n_weights(d),):
                raise ValueError(f"coef has dtype {coef.dtype} and shape {coef.shape}, expected "
                                 f"float64 ({model._n_weights(d)},)")
            if not np.isfinite(coef).all():
                raise ValueError("coef contains NaN or infinite weights")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid GridCRF model ({exc})") from None
        model.n_features_ = d
        model.coef_ = coef
        model.history_ = []
        return model

    def __repr__(self):
        return (f"GridCRF(n_states={self.n_states!r}, loss={self.loss!r}, "
                f"pairwise={self.pairwise!r})")
