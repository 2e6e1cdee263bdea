"""Sequence labeling with a linear-chain energy model: the scikit-learn-style ``SequenceTagger``.

The architecture is the tutorial's linear-chain energy over tags ``y_1..y_T`` of a sentence ``x``::

    E(W, Y, X) = sum_t (phi(x, t) @ W_emit)[y_t] + sum_t W_trans[y_{t-1}, y_t]
                 + W_start[y_1] + W_end[y_T]

with sparse string-template features ``phi`` (:mod:`factorebm.features`). Inference is
``argmin_Y E`` (Viterbi, :func:`factorebm.chain.viterbi`) or the Gibbs distribution
(:func:`factorebm.chain.forward_backward`); learning minimizes one of the tutorial's losses
(:mod:`factorebm.losses`) with :func:`factorebm.optimize.fit_chain`.

References
----------
LeCun et al., "A Tutorial on Energy-Based Learning", 2006, sections 2-3 and 6.
Lafferty et al., "Conditional Random Fields", 2001 (the NLL loss on this architecture).
Collins, "Discriminative Training Methods for Hidden Markov Models", 2002 (the perceptron).
"""
import time

import numpy as np

from . import chain, losses
from .features import FeatureExtractor
from .checks import threads_for
from .learning import LinearChainEnergy
from .modelio import load_arrays, save_arrays
from .optimize import fit_chain

MODEL_KIND = "SequenceTagger"

# Losses that make sense on a log-linear chain whose energies can be negative. The others
# (square-square, square-exponential, LVQ2) assume non-negative energies (tutorial, section 2.2).
TAGGER_LOSSES = ("nll", "hinge", "perceptron", "log", "mce")

_PARAM_NAMES = ("loss", "optimizer", "l1", "l2", "max_iter", "batch_size", "learning_rate",
                "features", "min_count", "n_substates", "n_threads", "random_state", "verbose",
                "client")
# Settings of how a fitted tagger runs, not of how it was trained: load() may replace them.
_RUNTIME_PARAMS = ("n_threads", "verbose", "client")
# A connection, not a setting: never written to a model file.
_UNSAVED_PARAMS = ("client",)


def _check_corpus(sents, tags=None, what="sentences"):
    """Validate ``sents`` (and ``tags``) as lists of lists of strings; return the token count."""
    if isinstance(sents, (str, bytes)) or not hasattr(sents, "__len__"):
        raise ValueError(f"{what} must be a list of sentences, each a list of token strings")
    if tags is not None and len(tags) != len(sents):
        raise ValueError(f"got {len(sents)} sentences but {len(tags)} tag sequences")
    n_tokens = 0
    for i, s in enumerate(sents):
        if isinstance(s, (str, bytes)):
            raise ValueError(f"sentence {i} is a string; expected a list of tokens")
        if tags is not None and len(tags[i]) != len(s):
            raise ValueError(f"sentence {i} has {len(s)} tokens but {len(tags[i])} tags")
        n_tokens += len(s)
    return n_tokens


def _split(flat, offsets):
    """Cut a flat per-token list into per-sentence lists along ``offsets`` (n+1,)."""
    bounds = offsets.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _check_substates(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_substates must be an integer >= 1, got {n!r}")
    return int(n)


class SequenceTagger:
    """Part-of-speech (or any sequence) tagger trained by shaping a linear-chain energy.

    Parameters
    ----------
    loss : str, default "nll"
        A loss of :mod:`factorebm.losses` suited to a log-linear model: "nll" (a CRF), "hinge",
        "perceptron", "log" or "mce". Losses that need non-negative energies are refused.
    optimizer : str or None
        "lbfgs", "sgd", "adagrad" or "perceptron" (averaged). None picks the averaged perceptron
        for the perceptron loss and mini-batch AdaGrad for the others: on EWT it reaches the
        accuracy of 100 L-BFGS iterations in a few epochs, in a fraction of the time.
        "lbfgs" takes only "nll": the other losses use the most offending answer as E-, whose
        ties make L-BFGS stop at its first step, so they raise ValueError.
    l1, l2 : float
        Regularization strengths (``l2=None`` means 1e-5 for AdaGrad, chosen on EWT dev, and
        the optimizer's default otherwise).
    max_iter : int or None
        Iterations (L-BFGS) or epochs (stochastic optimizers); None means 4 epochs of AdaGrad,
        6 of SGD or the perceptron, and 100 L-BFGS iterations.
    batch_size : int or None
        Sentences per mini-batch of the stochastic optimizers (None: 4 for the averaged
        perceptron, 32 for the others).
    learning_rate : float or None
        Step size of the stochastic optimizers (None: 0.2 for AdaGrad, the optimizer's default
        otherwise).
    features : dict or None
        Keyword arguments of :class:`factorebm.features.FeatureExtractor` (templates, window).
    min_count : int, default 2
        Keep features seen at least this many times in training.
    n_substates : int, default 2
        Latent substates per tag (the tutorial's latent variables Z): a tag with H substates
        is H chain states, which refine it (a determiner before a noun, another before an
        adjective, ...). Training sums them out (NLL: E+ is the free energy of the substate
        paths of the gold tags) or minimizes them (margin losses); decoding returns the tags
        of the jointly best (tags, substates) path. 1 is a plain linear-chain CRF. On EWT dev
        (NLL, 4 AdaGrad epochs, min_count 2): 94.72% with 1, 95.16% with 2, 95.28% with 3,
        training in 2.5, 4.1 and 6.0 s; 3 needs more memory than CRFsuite (170 MiB).
    n_threads : int or None
        Threads for the kernels; None uses every core.
    random_state : int
        Seed of the stochastic optimizers.
    verbose : bool
        Print one progress line per iteration (loss and, with ``dev=``, dev accuracy).
    client : dask.distributed.Client or None
        Train on this Dask cluster (:mod:`factorebm.distributed`): the training sentences
        are split into shards held by the workers; the model is the one local training gives,
        to rounding. Features are extracted here. Not saved with the model.
    **loss_params
        Passed to the loss (e.g. ``margin=`` for hinge).

    Attributes
    ----------
    labels_ : ndarray of str, shape (K,)
        The tag set, sorted; columns of :meth:`predict_marginals` follow this order.
    coef_ : ndarray of float64, shape (n_weights,)
        The flat weight vector of :class:`factorebm.learning.LinearChainEnergy`.
    feature_extractor_ : FeatureExtractor
    history_ : list
        Per-iteration progress records of the optimizer.
    """

    def __init__(self, loss="nll", *, optimizer=None, l1=0.0, l2=None, max_iter=None,
                 batch_size=None, learning_rate=None, features=None, min_count=2,
                 n_substates=2, n_threads=None, random_state=0, verbose=True, client=None,
                 **loss_params):
        self.loss = loss
        self.optimizer = optimizer
        self.l1 = l1
        self.l2 = l2
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.features = features
        self.min_count = min_count
        self.n_substates = n_substates
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose
        self.client = client
        self.loss_params = dict(loss_params)

    # ------------------------------------------------------------------ parameters
    def get_params(self, deep=True):
        params = {k: getattr(self, k) for k in _PARAM_NAMES}
        params.update(self.loss_params)
        return params

    def _check_loss(self):
        if self.loss not in TAGGER_LOSSES:
            try:
                spec = losses.get(self.loss)
            except (KeyError, ValueError):
                raise ValueError(f"unknown loss {self.loss!r}; the tagger takes one of "
                                 f"{', '.join(TAGGER_LOSSES)}") from None
            why = ("it needs non-negative energies, which a log-linear chain does not have"
                   if getattr(spec, "needs_nonnegative", False) else
                   "it does not train a log-linear chain (see the tutorial, section 2.2)")
            raise ValueError(f"loss {self.loss!r} cannot train a SequenceTagger: {why}; "
                             f"use one of {', '.join(TAGGER_LOSSES)}")

    def _training_schedule(self):
        """Optimizer settings for fit_chain: the user's, else the tagger's measured defaults."""
        optimizer = self.optimizer or ("perceptron" if self.loss == "perceptron" else "adagrad")
        if optimizer == "lbfgs" and losses.get(self.loss).e_minus not in ("free_energy", None):
            # E- = min over (incorrect) answers is only piecewise linear in the weights; at the
            # all-zero start every answer ties and L-BFGS's line search fails at iteration 0,
            # which would return an all-zero model (see optimize.default_optimizer).
            raise ValueError(f"optimizer='lbfgs' cannot train loss {self.loss!r}: its E- is the "
                             "most offending answer, whose ties at the all-zero start make the "
                             "line search fail; use optimizer='adagrad' or loss='nll'")
        stochastic = optimizer != "lbfgs"
        schedule = {
            "optimizer": optimizer,
            # 4 AdaGrad epochs: EWT dev accuracy (2 substates) is at its best after 3 or 4,
            # 94.95 / 95.13 / 95.19 / 95.16 / 95.13 / 95.07% after epochs 1-6 (one substate:
            # flat from 3 on)
            "max_iter": self.max_iter if self.max_iter is not None else (
                (4 if optimizer == "adagrad" else 6) if stochastic else 100),
            # 1e-5 for AdaGrad: chosen on EWT dev (94.85% against 94.80% at fit_chain's 1e-4;
            # 3e-6 to 3e-5 are as good, 1e-3 loses a point).
            "l2": self.l2 if self.l2 is not None else (1e-5 if optimizer == "adagrad" else None),
            # The averaged perceptron wants (nearly) per-sentence updates (Collins 2002): on 400
            # EWT sentences 89.5% dev against 79.0% with batches of 32 (the same epochs). On all
            # of EWT batches of 4 match batches of 1 (94.63% / 94.58% dev) in 7.7 s, not 25.5 s.
            "batch_size": self.batch_size if self.batch_size is not None else (
                (4 if optimizer == "perceptron" else 32) if stochastic else None),
            "learning_rate": self.learning_rate if self.learning_rate is not None else (
                0.2 if optimizer == "adagrad" else None),
        }
        return {k: v for k, v in schedule.items() if v is not None}

    # ------------------------------------------------------------------ fitting
    def fit(self, sents, tags, dev=None):
        """Learn the tagger from tokenized sentences and their tags.

        Parameters
        ----------
        sents : list of list of str
        tags : list of list of str, same shape as ``sents``
        dev : (sents, tags) or None
            Held-out data whose token accuracy is reported with the progress lines.
        """
        self._check_loss()
        n_substates = _check_substates(self.n_substates)
        n_tokens = _check_corpus(sents, tags)
        if n_tokens == 0:
            raise ValueError("cannot fit a tagger on zero tokens")
        t0 = time.perf_counter()
        self.labels_ = np.array(sorted({t for ts in tags for t in ts}))
        index = {t: i for i, t in enumerate(self.labels_.tolist())}
        y = np.fromiter((index[t] for ts in tags for t in ts), dtype=np.int64, count=n_tokens)

        schedule = self._training_schedule()
        fx = FeatureExtractor(**(self.features or {}))
        # The corpus is kept factored, X = S @ Phi (FeatureExtractor.factored_transform):
        # 2.5 times fewer nonzeros than X itself. L-BFGS multiplies through the factors (two
        # to three times faster than through X), and the mini-batch optimizers gather their
        # batches' rows of X through them.
        X, offsets = fx._fit_transform(sents, self.min_count, factored=True)
        self.feature_extractor_ = fx
        model = LinearChainEnergy(fx.n_features_, len(self.labels_), n_substates)
        self.model_ = model
        if self.verbose:
            print(f"factorebm: {len(sents)} sentences, {n_tokens} tokens, "
                  f"{fx.n_features_} features, {len(self.labels_)} tags "
                  f"(features in {time.perf_counter() - t0:.1f} s)", flush=True)

        callback = None
        if dev is not None:
            dev_sents, dev_tags = dev
            _check_corpus(dev_sents, dev_tags, what="dev sentences")
            Xd, od = fx.transform(dev_sents)
            yd = np.array([index.get(t, -1) for ts in dev_tags for t in ts], dtype=np.int64)

            def callback(w, epoch):
                pred = self._decode(w, Xd, od)
                return {"dev_accuracy": float(np.mean(pred == yd)) if len(yd) else float("nan")}

        kwargs = dict(self.loss_params)
        kwargs.update(schedule)
        try:
            w, history = fit_chain(model, X, offsets, y, loss=self.loss, l1=self.l1,
                                   callback=callback, verbose=self.verbose,
                                   n_threads=self.n_threads, random_state=self.random_state,
                                   client=self.client, **kwargs)
        finally:
            # The model caches the validated training corpus (X and its transpose) for
            # repeated objective calls; a fitted tagger must not keep the corpus alive.
            model._cache = None
        self.coef_ = np.ascontiguousarray(w, dtype=np.float64)
        self.history_ = history
        self.fit_time_ = time.perf_counter() - t0
        return self

    # ------------------------------------------------------------------ inference
    def _check_fitted(self):
        if not hasattr(self, "coef_"):
            raise ValueError("this SequenceTagger is not fitted yet: call fit() or load()")

    def energies(self, sents):
        """The chain energies of ``sents``.

        Returns
        -------
        unary : (N, S) float64, energy of each chain state at each token
        transition : (S, S) float64, energy of state i followed by state j
        start, end : (S,) float64
        offsets : (n+1,) int64, sentence i is rows offsets[i]:offsets[i+1]

        The states are the tags (S = K) or, with ``n_substates = H``, the substates of the
        tags: state s belongs to tag ``s // H`` (``model_.state_label``).
        """
        self._check_fitted()
        _check_corpus(sents)
        W_emit, transition, start, end = self.model_.unpack(self.coef_)
        # X @ W_emit without building X: summed once per word type present, then per token
        unary, offsets = self.feature_extractor_.emissions(
            sents, W_emit, n_threads=threads_for(self.n_threads, sum(map(len, sents))))
        return unary, transition, start, end, offsets

    def _decode(self, w, X, offsets):
        return self.model_.predict(w, X, offsets, n_threads=self.n_threads)

    def predict(self, sents):
        """Tag each sentence with its minimum-energy tag sequence: list of list of str."""
        unary, transition, start, end, offsets = self.energies(sents)
        labels, _ = chain.viterbi(unary, transition, offsets, start, end,
                                  state_label=self.model_.state_label, n_threads=self.n_threads)
        return _split(self.labels_[labels].tolist(), offsets)

    def predict_marginals(self, sents, beta=1.0):
        """Per-token tag probabilities under the Gibbs distribution at inverse temperature beta.

        Returns a list of (T_i, K) float64 arrays, columns in ``labels_`` order.
        """
        unary, transition, start, end, offsets = self.energies(sents)
        marginals, _ = chain.forward_backward(unary, transition, offsets, beta, start, end,
                                              state_label=self.model_.state_label,
                                              n_threads=self.n_threads)
        return _split(marginals, offsets)

    def score(self, sents, tags):
        """Token accuracy in [0, 1] of :meth:`predict` against ``tags``."""
        n_tokens = _check_corpus(sents, tags)
        if n_tokens == 0:
            raise ValueError("cannot score zero tokens")
        unary, transition, start, end, offsets = self.energies(sents)
        labels, _ = chain.viterbi(unary, transition, offsets, start, end,
                                  state_label=self.model_.state_label, n_threads=self.n_threads)
        index = {t: i for i, t in enumerate(self.labels_.tolist())}
        gold = np.fromiter((index.get(t, -1) for ts in tags for t in ts), dtype=np.int64,
                           count=n_tokens)
        return float(np.mean(labels == gold))

    # ------------------------------------------------------------------ model files
    def save(self, path):
        """Write the fitted tagger to ``path`` (numpy .npz + JSON metadata; no pickle, atomic)."""
        self._check_fitted()
        arrays = {"coef": self.coef_, "labels": self.labels_.astype(str)}
        for key, value in self.feature_extractor_.to_arrays().items():
            arrays["features." + key] = value
        params = self.get_params()
        params["verbose"] = bool(params["verbose"])
        for name in _UNSAVED_PARAMS:
            params.pop(name, None)
        metadata = {"params": params, "feature_config": self.feature_extractor_.get_config()}
        save_arrays(path, arrays, metadata, kind=MODEL_KIND)

    @classmethod
    def load(cls, path, **params):
        """Read a tagger written by :meth:`save`. Never unpickles: an untrusted file runs no code.

        Parameters
        ----------
        path : str or os.PathLike
        **params
            Settings that replace the saved ones, e.g. ``n_threads=4`` or ``verbose=False``:
            the saved values are only defaults (a model trained with ``n_threads=2`` can tag
            with every core of another machine).
        """
        unknown = sorted(set(params) - set(_RUNTIME_PARAMS))
        if unknown:
            raise ValueError(f"load() can override only {', '.join(_RUNTIME_PARAMS)}, not "
                             f"{', '.join(unknown)} (the other settings describe the training)")
        arrays, metadata = load_arrays(path, kind=MODEL_KIND)
        try:
            saved = dict(metadata["params"])
            saved.setdefault("n_substates", 1)      # files written before substates existed
            params = {**saved, **params}
            loss_params = {k: params.pop(k) for k in list(params) if k not in _PARAM_NAMES}
            tagger = cls(**params, **loss_params)
            feature_arrays = {k[len("features."):]: v for k, v in arrays.items()
                              if k.startswith("features.")}
            tagger.feature_extractor_ = FeatureExtractor.from_config_and_arrays(
                metadata["feature_config"], feature_arrays)
            tagger.labels_ = np.asarray(arrays["labels"]).astype(str)
            tagger.coef_ = np.ascontiguousarray(arrays["coef"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid SequenceTagger model ({exc})") from None
        try:
            tagger.model_ = LinearChainEnergy(tagger.feature_extractor_.n_features_,
                                              len(tagger.labels_),
                                              _check_substates(tagger.n_substates))
        except ValueError as exc:
            raise ValueError(f"{path}: not a valid SequenceTagger model ({exc})") from None
        if tagger.coef_.shape != (tagger.model_.n_weights,):
            raise ValueError(f"{path}: weight vector has shape {tagger.coef_.shape}, expected "
                             f"({tagger.model_.n_weights},) for {len(tagger.labels_)} tags "
                             f"with {tagger.n_substates} substate(s) each")
        return tagger

    def __repr__(self):
        return f"SequenceTagger(loss={self.loss!r})"
