"""Linear-chain energy models: batched, ragged inference in one kernel call.

A batch of n sequences is ``unary`` (N, S) float64 energies, N the total number
of tokens, and ``offsets`` (n+1,) int64 with ``offsets[0] = 0`` and
``offsets[-1] = N``; sequence i is rows ``offsets[i]:offsets[i+1]``.
``transition`` (S, S) is the energy of state i followed by state j, ``start`` and
``end`` (S,) optional energies of the first and last state. The energy of a
state sequence y of length T is (LeCun et al. 2006, section 6)::

    E(y) = sum_t unary[t, y_t] + sum_{t>=1} transition[y_{t-1}, y_t] + start[y_0] + end[y_{T-1}]

Lower is better; the Gibbs distribution is ``P(y) = exp(-beta E(y)) / Z`` and the
free energy ``F = -(1/beta) log Z``.

Chain states and labels. Without ``state_label`` every state is a label (S = K).
With ``state_label`` (S,) int64, a label with H hidden substates is H states:
decoders return the JOINT minimum over substate paths decoded as labels, and
``forward_backward`` sums the substates into label marginals.

Conventions. ``+inf`` energies mean forbidden and work everywhere (NaN and
``-inf`` are rejected). ``mask`` (N, S) bool marks the allowed states of each
token (a disallowed state has energy +inf); clamping a sequence to its gold
labels with ``mask`` turns the free energy into the clamped free energy F(Y). An
empty sequence has energy 0 and free energy 0 (``most_offending``: +inf). A
sequence with no finite-energy path gets energy +inf (free energy +inf,
marginals 0) and decoded labels -1: no exception is raised in the middle of a
batch, so check ``np.isinf(energies)`` where that can happen.

Threads. ``n_threads=None`` uses the OpenMP default (all cores; batches under
2048 tokens run serially, where a thread team costs more than it saves), 1 runs
serially. Results do not depend on the number of threads, bit for bit.

Algorithms: Viterbi and min-marginals in energy space (min-plus); forward-
backward in scaled probability space (Rabiner 1989) with an exact log-space
fallback for sequences whose energy range underflows; exact k-best Viterbi;
most offending incorrect answer from min-marginals (LeCun et al. 2006,
section 2.2); Hamming-loss-augmented Viterbi (Taskar et al. 2003).
"""
import numbers

import numpy as np

from . import _chain

__all__ = [
    "viterbi", "forward_backward", "min_marginals", "kbest", "most_offending",
    "loss_augmented_viterbi", "sequence_energy",
]


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def _energy_array(x, name, ndim):
    """Contiguous float64 copy-if-needed of an energy array, no NaN / -inf."""
    try:
        arr = np.ascontiguousarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array: {exc}") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    # one reduction finds both: NaN propagates through min, and -inf is the min
    if arr.size and not (arr.min() > -np.inf):
        bad = np.isnan(arr)
        if bad.any():
            where = np.argwhere(bad)[0]
            raise ValueError(f"{name} contains NaN at index {tuple(int(i) for i in where)}")
        bad = np.isneginf(arr)
        if bad.any():
            where = np.argwhere(bad)[0]
            raise ValueError(f"{name} contains -inf at index {tuple(int(i) for i in where)}; "
                             "energies may be +inf (forbidden) but not -inf")
    return arr


def _int_array(x, name, ndim=1):
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_threads(n_threads):
    if n_threads is None:
        return 0
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral) \
            or n_threads < 1:
        raise ValueError(f"n_threads must be None or a positive integer, got {n_threads!r}")
    return int(n_threads)


class _Batch:
    """Validated, contiguous inputs shared by every chain function."""

    def __init__(self, unary, transition, offsets, start, end, mask=None, state_label=None):
        self.unary = _energy_array(unary, "unary", 2)
        N, S = self.unary.shape
        if S < 1:
            raise ValueError("unary must have at least one state column, got shape "
                             f"{self.unary.shape}")
        self.transition = _energy_array(transition, "transition", 2)
        if self.transition.shape != (S, S):
            raise ValueError(f"transition must have shape ({S}, {S}) to match unary's {S} "
                             f"states, got {self.transition.shape}")
        self.offsets = _int_array(offsets, "offsets")
        off = self.offsets
        if off.shape[0] < 1:
            raise ValueError("offsets must have at least one entry (offsets[0] = 0)")
        if off[0] != 0:
            raise ValueError(f"offsets[0] must be 0, got {off[0]}")
        if off[-1] != N:
            raise ValueError(f"offsets[-1] must equal the number of unary rows {N}, "
                             f"got {off[-1]}")
        steps = np.diff(off)
        if (steps < 0).any():
            i = int(np.argmax(steps < 0))
            raise ValueError(f"offsets must be non-decreasing: offsets[{i}] = {off[i]} > "
                             f"offsets[{i + 1}] = {off[i + 1]}")
        self.lengths = steps
        self.N, self.S, self.n = N, S, off.shape[0] - 1
        self.start = self._vector(start, "start")
        self.end = self._vector(end, "end")
        if mask is None:
            self.mask = np.zeros((0, 0), dtype=np.uint8)
            self.has_mask = False
        else:
            m = np.asarray(mask)
            if m.shape != (N, S):
                raise ValueError(f"mask must have shape ({N}, {S}) like unary, got {m.shape}")
            if m.dtype != np.bool_:
                if not np.issubdtype(m.dtype, np.integer) or not np.isin(m, (0, 1)).all():
                    raise ValueError(f"mask must be a boolean array, got dtype {m.dtype}")
            self.mask = np.ascontiguousarray(m, dtype=np.bool_).view(np.uint8)
            self.has_mask = True
        if state_label is None:
            self.state_label = np.arange(S, dtype=np.int64)
            self.n_labels = S
            self.has_labels = False
        else:
            lab = _int_array(state_label, "state_label")
            if lab.shape != (S,):
                raise ValueError(f"state_label must have shape ({S},), one label per chain "
                                 f"state, got {lab.shape}")
            if (lab < 0).any():
                raise ValueError(f"state_label must be >= 0, got {int(lab.min())}")
            self.state_label = lab
            self.n_labels = int(lab.max()) + 1
            self.has_labels = True

    def _vector(self, x, name):
        if x is None:
            return np.zeros(self.S, dtype=np.float64)
        arr = _energy_array(x, name, 1)
        if arr.shape != (self.S,):
            raise ValueError(f"{name} must have shape ({self.S},), got {arr.shape}")
        return arr

    def labels_array(self, gold, name="gold"):
        """(N,) int64 label ids in 0..n_labels-1."""
        g = _int_array(gold, name)
        if g.shape != (self.N,):
            raise ValueError(f"{name} must have shape ({self.N},), one label per token, "
                             f"got {g.shape}")
        if g.size and (g.min() < 0 or g.max() >= self.n_labels):
            bad = int(np.argmax((g < 0) | (g >= self.n_labels)))
            raise ValueError(f"{name}[{bad}] = {g[bad]} is out of range "
                             f"0..{self.n_labels - 1}")
        return g

    def decode(self, states):
        """Label ids of a state path; -1 (no finite path) stays -1."""
        if not self.has_labels:
            return states
        return np.where(states >= 0, self.state_label[np.maximum(states, 0)], -1)


# ---------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------

def viterbi(unary, transition, offsets, start=None, end=None, *, mask=None,
            state_label=None, return_states=False, n_threads=None):
    """Lowest-energy label sequence of every sequence in a ragged batch.

    Parameters
    ----------
    unary : ndarray of float64, shape (N, S)
        Per-token state energies.
    transition : ndarray of float64, shape (S, S)
        ``transition[i, j]``: energy of state i followed by state j.
    offsets : ndarray of int64, shape (n + 1,)
        Sequence i is rows ``offsets[i]:offsets[i+1]``.
    start, end : ndarray of float64, shape (S,), optional
        Energies of the first and last state.
    mask : ndarray of bool, shape (N, S), optional
        Allowed states per token; disallowed states have energy +inf.
    state_label : ndarray of int64, shape (S,), optional
        Label of each chain state (latent substates), labels 0..L-1 with
        L = state_label.max() + 1; the answer is the joint minimum over state
        paths, reported as labels.
    return_states : bool
        Also return the state path.
    n_threads : int or None
        None: OpenMP default (all cores; serial under 2048 tokens); 1: serial.

    Returns
    -------
    labels : ndarray of int64, shape (N,)
        ``argmin_y E(y)`` per sequence (label ids; -1 where no finite path exists).
    energies : ndarray of float64, shape (n,)
        Its energy; 0 for an empty sequence, +inf where no finite path exists.
    states : ndarray of int64, shape (N,)
        The state path (only with ``return_states``).
    """
    b = _Batch(unary, transition, offsets, start, end, mask, state_label)
    nt = _check_threads(n_threads)
    states = np.empty(b.N, dtype=np.int64)
    energies = np.empty(b.n, dtype=np.float64)
    _chain.viterbi(b.unary, b.transition, b.offsets, b.start, b.end, b.mask,
                   b.state_label, np.zeros(0, np.int64), np.zeros(0), states, energies, nt)
    labels = b.decode(states)
    return (labels, energies, states) if return_states else (labels, energies)


def loss_augmented_viterbi(unary, transition, offsets, gold, loss=1.0, start=None, end=None,
                           *, state_label=None, return_states=False, n_threads=None):
    """Hamming-loss-augmented decoding: ``argmin_y E(y) - loss . [label(y_t) != gold_t]``.

    The margin-training oracle (Taskar et al. 2003): the per-token loss is
    subtracted from the energies of every state whose label differs from gold.

    Parameters
    ----------
    unary, transition, offsets, start, end, state_label, n_threads
        As in :func:`viterbi`.
    gold : ndarray of int64, shape (N,)
        Correct label ids, 0..L-1.
    loss : float or ndarray of float64, shape (N,)
        Per-token loss of a wrong label (finite).
    return_states : bool
        Also return the state path.

    Returns
    -------
    labels : ndarray of int64, shape (N,)
        The loss-augmented minimizer (label ids).
    energies : ndarray of float64, shape (n,)
        Its TRUE energy E(y), without the loss term.
    states : ndarray of int64, shape (N,)
        Its state path (only with ``return_states``).
    """
    b = _Batch(unary, transition, offsets, start, end, None, state_label)
    nt = _check_threads(n_threads)
    g = b.labels_array(gold)
    loss_arr = np.asarray(loss, dtype=np.float64)
    if loss_arr.ndim == 0:
        loss_arr = np.full(b.N, float(loss_arr))
    loss_arr = _energy_array(loss_arr, "loss", 1)
    if loss_arr.shape != (b.N,):
        raise ValueError(f"loss must be a scalar or have shape ({b.N},), got {loss_arr.shape}")
    if not np.isfinite(loss_arr).all():
        raise ValueError("loss must be finite")
    states = np.empty(b.N, dtype=np.int64)
    energies = np.empty(b.n, dtype=np.float64)
    if b.N == 0:
        # only empty sequences: E = 0; the kernel needs a non-empty gold to switch modes
        energies[:] = 0.0
    else:
        _chain.viterbi(b.unary, b.transition, b.offsets, b.start, b.end, b.mask,
                       b.state_label, g, loss_arr, states, energies, nt)
    labels = b.decode(states)
    return (labels, energies, states) if return_states else (labels, energies)


def forward_backward(unary, transition, offsets, beta=1.0, start=None, end=None, *, mask=None,
                     state_label=None, return_pairwise=False, return_states=False,
                     n_threads=None):
    """Marginals and free energies of the Gibbs distribution of every sequence.

    ``P(y) = exp(-beta E(y)) / Z`` per sequence, ``F = -(1/beta) log Z``.

    Parameters
    ----------
    unary, transition, offsets, start, end, mask, state_label, n_threads
        As in :func:`viterbi`. With ``mask`` clamping every token to its gold
        label's states, the free energy is the clamped free energy F(Y).
    beta : float
        Inverse temperature, > 0.
    return_pairwise : bool
        Also return the transition marginals summed over the batch.
    return_states : bool
        Also return the state marginals (useful with ``state_label``).

    Returns
    -------
    marginals : ndarray of float64, shape (N, L)
        ``P(label_t = l)``; L = S without ``state_label``. Rows of sequences with
        no finite-energy path are 0.
    free_energies : ndarray of float64, shape (n,)
        ``-(1/beta) log Z``; 0 for an empty sequence, +inf without a finite path.
    pairwise : ndarray of float64, shape (S, S)
        ``sum over sequences and t >= 1 of P(y_{t-1} = i, y_t = j)`` (with
        ``return_pairwise``).
    state_marginals : ndarray of float64, shape (N, S)
        ``P(y_t = s)`` (with ``return_states``).
    """
    b = _Batch(unary, transition, offsets, start, end, mask, state_label)
    nt = _check_threads(n_threads)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not np.isfinite(beta) \
            or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    marg = np.empty((b.N, b.S), dtype=np.float64)   # the kernel writes every row
    free = np.empty(b.n, dtype=np.float64)
    pair = np.zeros((b.S, b.S) if return_pairwise else (0, 0), dtype=np.float64)
    _chain.forward_backward(b.unary, b.transition, b.offsets, float(beta), b.start, b.end,
                            b.mask, marg, free, pair, nt)
    if b.has_labels:
        onehot = np.zeros((b.S, b.n_labels))
        onehot[np.arange(b.S), b.state_label] = 1.0
        labels_marg = marg @ onehot
    else:
        labels_marg = marg
    out = [labels_marg, free]
    if return_pairwise:
        out.append(pair)
    if return_states:
        out.append(marg)
    return tuple(out)


def min_marginals(unary, transition, offsets, start=None, end=None, *, mask=None,
                  n_threads=None):
    """Min-marginal energies: the lowest energy of any sequence with ``y_t = s``.

    Parameters
    ----------
    unary, transition, offsets, start, end, mask, n_threads
        As in :func:`viterbi`.

    Returns
    -------
    min_marginals : ndarray of float64, shape (N, S)
        ``min over y with y_t = s of E(y)``; +inf where no finite path has ``y_t = s``.
    energies : ndarray of float64, shape (n,)
        ``min_y E(y)`` per sequence (0 for an empty sequence).
    """
    b = _Batch(unary, transition, offsets, start, end, mask, None)
    nt = _check_threads(n_threads)
    mm = np.empty((b.N, b.S), dtype=np.float64)
    energies = np.empty(b.n, dtype=np.float64)
    _chain.min_marginals(b.unary, b.transition, b.offsets, b.start, b.end, b.mask,
                         mm, energies, nt)
    return mm, energies


def kbest(unary, transition, offsets, k, start=None, end=None, *, n_threads=None):
    """The k lowest-energy state sequences of every sequence, best first (exact).

    Parameters
    ----------
    unary, transition, offsets, start, end, n_threads
        As in :func:`viterbi`.
    k : int
        Number of sequences to return, >= 1.

    Returns
    -------
    paths : ndarray of int64, shape (k, N)
        ``paths[r]`` holds the (r+1)-th best state sequence of every sequence.
    energies : ndarray of float64, shape (k, n)
        Their energies, ascending along axis 0. Where a sequence has fewer than
        k finite-energy state sequences, the missing rows have energy +inf and
        path -1. An empty sequence has exactly one (empty) answer, energy 0.
    """
    b = _Batch(unary, transition, offsets, start, end, None, None)
    nt = _check_threads(n_threads)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    paths = np.empty((k, b.N), dtype=np.int64)
    energies = np.empty((k, b.n), dtype=np.float64)
    _chain.kbest(b.unary, b.transition, b.offsets, k, b.start, b.end, paths, energies, nt)
    return paths, energies


def most_offending(unary, transition, offsets, gold, start=None, end=None, *, mask=None,
                   state_label=None, return_states=False, n_threads=None):
    """Most offending incorrect answer: the lowest-energy sequence whose LABEL
    sequence differs from ``gold`` in at least one position.

    Computed exactly from min-marginals (LeCun et al. 2006, section 2.2): no
    k-best search. With ``state_label``, substates are minimized jointly.

    Parameters
    ----------
    unary, transition, offsets, start, end, mask, state_label, n_threads
        As in :func:`viterbi`.
    gold : ndarray of int64, shape (N,)
        The correct label ids, 0..L-1.
    return_states : bool
        Also return the state path.

    Returns
    -------
    labels : ndarray of int64, shape (N,)
        The most offending incorrect label sequence (-1 where none exists).
    energies : ndarray of float64, shape (n,)
        Its energy; +inf for an empty sequence or where no incorrect sequence
        has finite energy.
    states : ndarray of int64, shape (N,)
        Its state path (only with ``return_states``).
    """
    b = _Batch(unary, transition, offsets, start, end, mask, state_label)
    nt = _check_threads(n_threads)
    g = b.labels_array(gold)
    states = np.empty(b.N, dtype=np.int64)
    energies = np.empty(b.n, dtype=np.float64)
    _chain.most_offending(b.unary, b.transition, b.offsets, b.start, b.end, b.mask,
                          b.state_label, g, states, energies, nt)
    labels = b.decode(states)
    return (labels, energies, states) if return_states else (labels, energies)


def sequence_energy(unary, transition, offsets, states, start=None, end=None):
    """Energy E(y) of given state sequences.

    Parameters
    ----------
    unary, transition, offsets, start, end
        As in :func:`viterbi`.
    states : ndarray of int64, shape (N,)
        A state in 0..S-1 for every token.

    Returns
    -------
    energies : ndarray of float64, shape (n,)
        ``E(y)`` of each sequence (0 when empty, +inf when a forbidden entry is used).
    """
    b = _Batch(unary, transition, offsets, start, end, None, None)
    y = _int_array(states, "states")
    if y.shape != (b.N,):
        raise ValueError(f"states must have shape ({b.N},), got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= b.S):
        bad = int(np.argmax((y < 0) | (y >= b.S)))
        raise ValueError(f"states[{bad}] = {y[bad]} is out of range 0..{b.S - 1}")
    energies = np.empty(b.n, dtype=np.float64)
    _chain.sequence_energy(b.unary, b.transition, b.offsets, y, b.start, b.end, energies)
    return energies
