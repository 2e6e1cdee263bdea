"""The tutorial's loss functionals, as functions of energies only.

LeCun, Chopra, Hadsell, Ranzato and Huang, "A Tutorial on Energy-Based Learning" (2006),
sections 2 and 6. Learning shapes the energy surface E(W, Y, X); a loss only ever sees two
numbers per training sample:

* ``E+ = E(W, Y_i, X_i)``, the energy of the correct answer (latent variables minimized, or,
  for the negative log-likelihood, summed out: the clamped free energy), and
* ``E-``, the energy the loss pushes up: the **most offending incorrect answer**
  ``E(W, Ybar_i, X_i)`` with ``Ybar_i = argmin_{Y != Y_i} E(W, Y, X_i)`` for the generalized
  margin losses, the minimum over *all* answers (the correct one included) for the perceptron,
  the free energy ``F = -(1/beta) log sum_Y exp(-beta E(W, Y, X_i))`` for the NLL, and nothing
  for the energy loss.

Every loss is elementwise over numpy arrays (or scalars) and returns the triple
``(loss, dloss_dEplus, dloss_dEminus)``, so that the gradient with respect to the parameters is
``dL/dW = dL/dE+ * dE+/dW + dL/dE- * dE-/dW`` (section 6.1). Where a loss has a kink (the hinge
at its margin, the LVQ2 saturation points) the returned derivative is the one-sided derivative
taken on the side the code's comparison picks; it is a valid subgradient. (Square-square's
``max(0, m - E-)^2`` has no kink: it is continuously differentiable, with derivative 0 at
``E- = m`` from both sides.) Where E+ or E- is NaN, the loss and both derivatives are NaN.
Parameters (margins, ``delta``, ``gamma``, ``beta``) must be finite and > 0; anything else raises
ValueError.

Which loss works on which architecture (the tutorial's conditions, section 5):

* **energy** -- pulls E+ down and nothing up. It only works when the architecture makes pulling
  down the correct answer push up the others (e.g. regression with ``E = ||G(X) - Y||^2``, or
  a normalized / implicitly contrastive architecture). It **collapses** every architecture with
  a free energy per answer (a separate, independently trainable energy for each Y value, such
  as the unary tables of a factor graph or the emission weights of a tagger): all energies go
  to the same value (or -infinity) and the model stops discriminating.
* **perceptron** -- ``E+ - min_Y E(Y)``: no margin, so a flat (all-equal) energy surface has
  zero loss; it may produce almost flat surfaces, but does not collapse a linear-in-W model that
  separates the data. Non-negative energies are not needed.
* **hinge**, **log**, **mce** -- functions of ``E+ - E-`` only, with a positive margin (hinge),
  or a soft one (log, mce). They never collapse: the loss is minimal only when E- exceeds E+.
  MCE and LVQ2 are non-convex and saturate (bounded losses).
* **lvq2** -- defined with ``(E+ - E-) / (delta * E-)``: it needs **positive** E- (energies
  bounded below by zero). Like the perceptron it has **zero margin** (the loss is 0 as soon as
  ``E+ <= E-``), so it may produce almost flat energy surfaces.
* **square_square**, **square_exp** -- push E+ towards 0 and E- above the margin: they need
  **non-negative energies** (an architecture whose energy is bounded below by 0, e.g. a squared
  distance); on a log-linear model whose energies can be negative they are meaningless.
* **nll** -- ``E+ - F`` with the free energy F at inverse temperature beta: the CRF / softmax
  loss; pulls E+ down and all answers up in proportion to their Gibbs probability. Never
  collapses; needs the partition function (forward-backward, sum-product).

Use :func:`get` to look a loss up by name: the returned :class:`LossSpec` says which E- it needs
(``"most_offending"``, ``"min_all"``, ``"free_energy"`` or ``None``), whether it needs
non-negative energies (:meth:`LossSpec.check_energies` warns when they are not), whether it is
smooth (for choosing an optimizer), and which architectures it collapses.
:func:`margin_loss` turns any user function ``Q(E+, E-)`` into a loss of the same form.
"""
import warnings

import numpy as np

from .checks import user_stacklevel

__all__ = [
    "energy", "perceptron", "hinge", "log", "lvq2", "mce", "square_square", "square_exp",
    "nll", "margin_loss", "get", "available", "LossSpec",
]


def _as_float(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _sigmoid(x):
    """Logistic sigmoid 1 / (1 + exp(-x)) without overflow for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def _check_positive(loss, **params):
    """Raise ValueError unless every parameter is a finite number > 0 (names the loss)."""
    for name, value in params.items():
        try:
            ok = bool(np.isfinite(value) and value > 0)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{loss}: {name} must be a finite number > 0, got {value!r}")


def _result(loss, d_plus, d_minus, scalar, inputs=()):
    """Package a loss's triple; NaN wherever one of ``inputs`` (the energies) is NaN.

    Comparisons (``z > 0``) and constant derivatives (the perceptron's 1 and -1) would
    otherwise turn a NaN energy into a finite derivative and hide it from the optimizer.
    """
    bad = None
    for x in inputs:
        bad = np.isnan(x) if bad is None else bad | np.isnan(x)
    if bad is not None and bad.any():
        loss, d_plus, d_minus = (np.where(bad, np.nan, a) for a in (loss, d_plus, d_minus))
    if scalar:
        return float(loss), float(d_plus), float(d_minus)
    return loss, d_plus, d_minus


def _is_scalar(*xs):
    return all(np.ndim(x) == 0 for x in xs)


def energy(e_plus, e_minus=None):
    """Energy loss ``L = E+``.

    Pulls the correct answer's energy down and nothing up. Collapses every architecture with a
    free energy per answer (see the module docstring); use it only where pulling E+ down pushes
    the other answers up by construction.

    Parameters
    ----------
    e_plus : array_like of float64, any shape
        Energy of the correct answer.
    e_minus : ignored
        Accepted so every loss has the same call form.

    Returns
    -------
    loss, dloss_dEplus, dloss_dEminus : float64 arrays of ``e_plus``'s shape
        ``E+``, ones, zeros.
    """
    scalar = _is_scalar(e_plus)
    (ep,) = _as_float(e_plus)
    return _result(ep.copy(), np.ones_like(ep), np.zeros_like(ep), scalar, (ep,))


def perceptron(e_plus, e_min):
    """Perceptron loss ``L = E+ - min_Y E(Y)``.

    ``e_min`` is the minimum over **all** answers, the correct one included, so ``L >= 0`` and
    ``L = 0`` exactly when the correct answer is (one of) the lowest. No margin: a flat energy
    surface also has zero loss.

    Parameters
    ----------
    e_plus, e_min : array_like of float64, broadcastable
        Energy of the correct answer; minimum energy over all answers.

    Returns
    -------
    loss, dloss_dEplus, dloss_dEminus : float64 arrays
        ``E+ - E_min``, ones, minus ones.
    """
    scalar = _is_scalar(e_plus, e_min)
    ep, em = np.broadcast_arrays(*_as_float(e_plus, e_min))
    return _result(ep - em, np.ones_like(ep), -np.ones_like(ep), scalar, (ep, em))


def hinge(e_plus, e_minus, margin=1.0):
    """Hinge loss ``L = max(0, margin + E+ - E-)``.

    ``E-`` is the most offending incorrect answer's energy. Zero once the correct answer beats
    every incorrect one by at least ``margin`` (> 0). With a linear architecture this is the
    multiclass SVM / max-margin Markov network loss.

    Parameters
    ----------
    e_plus, e_minus : array_like of float64, broadcastable
    margin : float, > 0

    Returns
    -------
    loss, dloss_dEplus, dloss_dEminus : float64 arrays
        ``max(0, m + E+ - E-)``, ``[m + E+ - E- > 0]``, ``-[m + E+ - E- > 0]``.
    """
    _check_positive("hinge", margin=margin)
    scalar = _is_scalar(e_plus, e_minus)
    ep, em = np.broadcast_arrays(*_as_float(e_plus, e_minus))
    z = margin + ep - em
    active = (z > 0).astype(np.float64)
    return _result(np.maximum(z, 0.0), active, -active, scalar, (ep, em))


def log(e_plus, e_minus):
    """Log loss ``L = log(1 + exp(E+ - E-))``: a soft hinge with an infinite, soft margin.

    Parameters
    ----------
    e_plus, e_minus : array_like of float64, broadcastable

    Returns
    -------
    loss, dloss_dEplus, dloss_dEminus : float64 arrays
        The loss (computed as ``logaddexp(0, E+ - E-)``, no overflow), ``sigmoid(E+ - E-)`` and
        its negative.
    """
    scalar = _is_scalar(e_plus, e_minus)
    ep, em = np.broadcast_arrays(*_as_float(e_plus, e_minus))
    z = ep - em
    s = _sigmoid(z)
    return _result(np.logaddexp(0.0, z), s, -s, scalar, (ep, em))


def lvq2(e_plus, e_minus, delta=1.0):
    """LVQ2 loss ``L = min(1, max(0, (E+ - E-) / (delta * E-)))``.

    Kohonen's LVQ2 as written in the tutorial (eq. 12). Needs **positive** ``E-`` (energies
    bounded below by zero, e.g. squared distances to prototypes); non-convex, and saturates at 1
    so that grossly wrong samples stop contributing. No margin: the loss is zero as soon as
    ``E+ <= E-``.

    Parameters
    ----------
    e_plus, e_minus : array_like of float64, broadcastable; ``e_minus > 0``
    delta : float, > 0

    Returns
    -------
    loss, dloss_dEplus, dloss_dEminus : float64 arrays
        In the linear region ``0 < r < 1`` with ``r = (E+ - E-) / (delta E-)``:
        ``dL/dE+ = 1 / (delta E-)`` and ``dL/dE- = -E+ / (delta E-^2)``; zero elsewhere.
    """
    _check_positive("lvq2", delta=delta)
    scalar = _is_scalar(e_plus, e_minus)
    ep, em = np.broadcast_arrays(*_as_float(e_plus, e_minus))
    if np.any(em <= 0):
        raise ValueError("lvq2 needs positive E- (energies bounded below by zero)")
    r = (ep - em) / (delta * em)
    linear = ((r > 0) & (r < 1)).astype(np.float64)
    loss = np.minimum(1.0, np.maximum(0.0, r))
    d_plus = linear / (delta * em)
    d_minus = -linear * ep / (delta * em * em)
    return _result(loss, d_plus, d_minus, scalar, (ep, em))


def mce(e_plus, e_minus):
    """Minimum classification error loss ``L = sigmoid(E+ - E-) = 1 / (1 + exp(E- - E+))``.

    A smooth count of errors (Juang et al. 1997): non-convex and bounded, so badly misclassified
    samples stop pulling.

    Parameters
    ----------
    e_plus, e_minus : array_like of float64, broadcastable

    Returns
    -------
    loss, dloss_dEplus, dloss_dEminus : float64 arrays
        ``s = sigmoid(E+ - E-)``, ``s (1 - s)``, ``-s (1 - s)``.
    """
    scalar = _is_scalar(e_plus, e_minus)
    ep, em = np.broadcast_arrays(*_as_float(e_plus, e_minus))
    s = _sigmoid(ep - em)
    d = s * (1.0 - s)
    return _result(s, d, -d, scalar, (ep, em))


def square_square(e_plus, e_minus, margin=1.0):
    """Square-square loss ``L = E+^2 + max(0, margin - E-)^2``.

    Pushes E+ to zero and E- above ``margin``. Needs **non-negative energies**: it is only
    meaningful when the energy is bounded below by 0 (Hadsell et al.'s contrastive loss).
    Smooth: ``max(0, m - E-)^2`` is continuously differentiable (its derivative
    ``-2 max(0, m - E-)`` is 0 at ``E- = m`` from both sides), so there is no kink.

    Parameters
    ----------
    e_plus, e_minus : array_like of float64, broadcastable
    margin : float, > 0

    Returns
    -------
    loss, dloss_dEplus, dloss_dEminus : float64 arrays
        The loss, ``2 E+``, ``-2 max(0, margin - E-)``.
    """
    _check_positive("square_square", margin=margin)
    scalar = _is_scalar(e_plus, e_minus)
    ep, em = np.broadcast_arrays(*_as_float(e_plus, e_minus))
    gap = np.maximum(0.0, margin - em)
    return _result(ep * ep + gap * gap, 2.0 * ep, -2.0 * gap, scalar, (ep, em))


def square_exp(e_plus, e_minus, gamma=1.0, beta=1.0):
    """Square-exponential loss ``L = E+^2 + gamma * exp(-beta * E-)``.

    Like square-square with a soft, infinite margin (LeCun and Huang 2005). Needs
    **non-negative energies**.

    Parameters
    ----------
    e_plus, e_minus : array_like of float64, broadcastable
    gamma, beta : float, > 0

    Returns
    -------
    loss, dloss_dEplus, dloss_dEminus : float64 arrays
        The loss, ``2 E+``, ``-gamma beta exp(-beta E-)``.
    """
    _check_positive("square_exp", gamma=gamma, beta=beta)
    scalar = _is_scalar(e_plus, e_minus)
    ep, em = np.broadcast_arrays(*_as_float(e_plus, e_minus))
    ex = gamma * np.exp(-beta * em)
    return _result(ep * ep + ex, 2.0 * ep, -beta * ex, scalar, (ep, em))


def nll(e_plus, free_energy, beta=1.0):
    """Negative log-likelihood loss ``L = E+ - F`` with ``F = -(1/beta) log sum_Y exp(-beta E(Y))``.

    The tutorial's eq. 6 (times 1/beta): ``-(1/beta) log P(Y_i | X_i)`` under the Gibbs
    distribution. ``free_energy`` must have been computed at the same ``beta``; the gradient of
    F with respect to the energies is the Gibbs distribution, so with ``dL/dE- = -1`` the
    parameter gradient is ``dE+/dW - E_P[dE/dW]`` (clamped minus free beliefs).

    Parameters
    ----------
    e_plus : array_like of float64
        Energy (or clamped free energy, with latent variables) of the correct answer.
    free_energy : array_like of float64, broadcastable
        Free energy over all answers.
    beta : float, > 0
        Only checked here; it enters through how ``free_energy`` was computed.

    Returns
    -------
    loss, dloss_dEplus, dloss_dEminus : float64 arrays
        ``E+ - F``, ones, minus ones.
    """
    _check_positive("nll", beta=beta)
    scalar = _is_scalar(e_plus, free_energy)
    ep, f = np.broadcast_arrays(*_as_float(e_plus, free_energy))
    return _result(ep - f, np.ones_like(ep), -np.ones_like(ep), scalar, (ep, f))


def margin_loss(q, dq=None, *, step=1e-6, name=None, needs_nonnegative=False, smooth=True):
    """Turn any function ``Q(E+, E-)`` into a generalized margin loss.

    The tutorial's condition for a good margin loss (section 5) is that Q is lower when E+ is
    lower and E- higher, with its minimum where E- exceeds E+ by a margin; this is not checked.

    Parameters
    ----------
    q : callable ``q(e_plus, e_minus) -> loss``
        Elementwise over float64 arrays.
    dq : callable ``dq(e_plus, e_minus) -> (dQ/dE+, dQ/dE-)`` or None
        The partial derivatives. When None they are computed by central differences, which
        costs four more evaluations of ``q``. Both partials use the one step
        ``h = step * max(1, |E+|, |E-|)`` (per element): Q's differences are resolved only
        relative to the larger energy (with E+ = 1e10 and E- = 0, ``E- +- 1e-6`` would change
        ``E+ - E-`` by less than its rounding), and a margin loss varies on the scale of
        ``E+ - E-``. The relative error is then about ``step^2`` for smooth Q (float64
        cannot resolve a bend of Q narrower than ``h`` at huge energies anyway). Infinite
        energies are the limit: they are left out of the scale, and ``inf +- h = inf``, so
        where Q is flat in that limit (e.g. ``log(1 + exp(E+ - E-))`` at ``E- = +inf``) both
        derivatives are 0; where Q itself is infinite or NaN there they are NaN.
    step : float, > 0
        Relative finite-difference step.
    name : str or None
        Name of the resulting :class:`LossSpec`.
    needs_nonnegative, smooth : bool
        Recorded on the returned spec (see :func:`get`).

    Returns
    -------
    LossSpec
        Callable as ``spec(e_plus, e_minus) -> (loss, dloss_dEplus, dloss_dEminus)``; E- is the
        most offending incorrect answer's energy.

    Examples
    --------
    >>> import numpy as np
    >>> soft = margin_loss(lambda ep, em: np.log1p(np.exp(2.0 * (ep - em))) / 2.0)
    >>> loss, dp, dm = soft(np.array([0.0]), np.array([1.0]))
    """
    if not callable(q):
        raise ValueError("margin_loss: q must be callable as q(e_plus, e_minus)")
    if dq is not None and not callable(dq):
        raise ValueError("margin_loss: dq must be None or callable as dq(e_plus, e_minus)")
    _check_positive("margin_loss", step=step)

    def func(e_plus, e_minus):
        scalar = _is_scalar(e_plus, e_minus)
        ep, em = np.broadcast_arrays(*_as_float(e_plus, e_minus))
        loss = np.asarray(q(ep, em), dtype=np.float64)
        if dq is not None:
            d_plus, d_minus = dq(ep, em)
            d_plus = np.asarray(d_plus, dtype=np.float64)
            d_minus = np.asarray(d_minus, dtype=np.float64)
        else:
            mag = np.maximum(np.where(np.isfinite(ep), np.abs(ep), 0.0),
                             np.where(np.isfinite(em), np.abs(em), 0.0))
            h = step * np.maximum(1.0, mag)
            with np.errstate(invalid="ignore"):          # inf - inf where Q is infinite
                d_plus = (np.asarray(q(ep + h, em)) - np.asarray(q(ep - h, em))) / (2.0 * h)
                d_minus = (np.asarray(q(ep, em + h)) - np.asarray(q(ep, em - h))) / (2.0 * h)
        loss, d_plus, d_minus = np.broadcast_arrays(loss, d_plus, d_minus)
        return _result(loss.astype(np.float64), d_plus.astype(np.float64),
                       d_minus.astype(np.float64), scalar, (ep, em))

    return LossSpec(name or getattr(q, "__name__", "margin_loss"), func, "most_offending",
                    needs_nonnegative=needs_nonnegative, smooth=smooth, params=())


class LossSpec:
    """A loss together with what it needs from inference.

    Attributes
    ----------
    name : str
    func : callable
        ``func(e_plus, e_minus, **params) -> (loss, dloss_dEplus, dloss_dEminus)``.
    e_minus : {"most_offending", "min_all", "free_energy", None}
        Which second energy the loss takes: the most offending incorrect answer (min-marginal
        trick), the minimum over all answers (Viterbi), the free energy (forward-backward /
        sum-product), or none (energy loss).
    needs_nonnegative : bool
        True when the loss is only meaningful for energies bounded below by zero.
    smooth : bool
        True when the loss is continuously differentiable in (E+, E-) (hinge, perceptron and
        LVQ2 are not). :func:`factorebm.optimize.default_optimizer` picks L-BFGS only for a
        smooth loss whose E- is the free energy or absent: with the most offending answer,
        E- is piecewise linear in the weights whatever the loss.
    collapses : str
        Which architectures the loss collapses, from the tutorial (empty when none).
    params : tuple of str
        Keyword parameters ``func`` accepts (e.g. ``("margin",)``).
    """

    def __init__(self, name, func, e_minus, *, needs_nonnegative=False, smooth=False,
                 collapses="", params=()):
        self.name = name
        self.func = func
        self.e_minus = e_minus
        self.needs_nonnegative = needs_nonnegative
        self.smooth = smooth
        self.collapses = collapses
        self.params = tuple(params)

    def check_params(self, params):
        """Raise ValueError for a keyword this loss does not take (names the loss)."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(f"loss {self.name!r} takes no parameter(s) {', '.join(unknown)}; "
                             f"it takes: {', '.join(self.params) or 'none'}")

    def check_energies(self, e_plus, e_minus=None, stacklevel=None):
        """Warn (one RuntimeWarning) when this loss assumes non-negative energies and some
        ``e_plus`` or ``e_minus`` (arrays of any shape, or None) is negative.

        The tutorial's conditions (module docstring): square-square, square-exponential and
        LVQ2 are meaningless on an architecture whose energies can go below zero, such as a
        log-linear model; the objectives call this once per evaluation. The message does not
        depend on the values, so Python's default filter shows it once per call site.
        The warning points at ``stacklevel`` (default: the first caller outside factorebm).
        """
        if not self.needs_nonnegative:
            return
        for e in (e_plus, e_minus):
            if e is not None and np.any(np.asarray(e) < 0):
                warnings.warn(
                    f"loss {self.name!r} assumes non-negative energies, but some E+ or E- is "
                    "negative: on this architecture it is meaningless (see factorebm.losses)",
                    RuntimeWarning,
                    stacklevel=user_stacklevel() if stacklevel is None else stacklevel)
                return

    def __call__(self, e_plus, e_minus=None, **params):
        if self.e_minus is None:
            return self.func(e_plus, **params)
        return self.func(e_plus, e_minus, **params)

    def __repr__(self):
        return (f"LossSpec({self.name!r}, e_minus={self.e_minus!r}, "
                f"needs_nonnegative={self.needs_nonnegative}, smooth={self.smooth})")


_FREE_ARCH = "architectures with a free energy per answer (tables, emission weights)"
_ZERO_MARGIN = "none outright, but no margin: flat energy surfaces have zero loss"

_REGISTRY = {
    "energy": LossSpec("energy", energy, None, smooth=True, collapses=_FREE_ARCH),
    "perceptron": LossSpec(
        "perceptron", perceptron, "min_all",
        collapses=_ZERO_MARGIN),
    "hinge": LossSpec("hinge", hinge, "most_offending", params=("margin",)),
    "log": LossSpec("log", log, "most_offending", smooth=True),
    "lvq2": LossSpec("lvq2", lvq2, "most_offending", needs_nonnegative=True,
                     collapses=_ZERO_MARGIN, params=("delta",)),
    "mce": LossSpec("mce", mce, "most_offending", smooth=True),
    "square_square": LossSpec("square_square", square_square, "most_offending",
                              needs_nonnegative=True, smooth=True, params=("margin",)),
    "square_exp": LossSpec("square_exp", square_exp, "most_offending", needs_nonnegative=True,
                           smooth=True, params=("gamma", "beta")),
    "nll": LossSpec("nll", nll, "free_energy", smooth=True, params=("beta",)),
}
_ALIASES = {"square-square": "square_square", "square-exp": "square_exp",
            "square_exponential": "square_exp", "negative_log_likelihood": "nll",
            "crf": "nll", "svm": "hinge"}


def available():
    """Names of the registered losses, sorted."""
    return sorted(_REGISTRY)


def get(name):
    """Look a loss up by name (or pass a :class:`LossSpec` through).

    Parameters
    ----------
    name : str or LossSpec
        One of :func:`available` (a few aliases such as ``"square-square"`` also work).

    Returns
    -------
    LossSpec

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    if isinstance(name, LossSpec):
        return name
    if not isinstance(name, str):
        raise ValueError(f"a loss is a name or a LossSpec, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(available())}")
    return _REGISTRY[key]

