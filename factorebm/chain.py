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
With ``state_label`` (S,) int64, a label with H hidden substates is H states;
the labels must be 0..L-1, each with at least one state. Decoders (``viterbi``,
``loss_augmented_viterbi``, ``most_offending``) return the JOINT minimum over
substate paths decoded as labels, ``min_marginals`` the minimum over a label's
substates and ``forward_backward`` sums the substates into label marginals.
``kbest`` with ``state_label`` gives the k best distinct label sequences (not
the labels of the k best state sequences, which repeat). To clamp to gold
labels, ``gold_mask(gold, state_label)`` gives the mask allowing exactly the
gold label's substates at every token::

    mask = chain.gold_mask(gold, state_label)
    _, F_clamped = chain.forward_backward(U, tr, off, beta, mask=mask, state_label=state_label)

Conventions. ``+inf`` energies mean forbidden and work everywhere (NaN and
``-inf`` are rejected, and so are finite energies so large that the energy of
a sequence could exceed 1e300, where float64 sums overflow). ``mask`` (N, S)
bool marks the allowed states of each token (a disallowed state has energy
+inf); clamping a sequence to its gold labels with ``mask`` turns the free
energy into the clamped free energy F(Y). An empty sequence has energy 0 and
free energy 0 (``most_offending``: +inf). A sequence with no finite-energy path
gets energy +inf (free energy +inf, marginals 0) and decoded labels -1: no
exception is raised in the middle of a batch, so check ``np.isinf(energies)``
where that can happen.

Threads. ``n_threads=None`` uses the OpenMP default (all cores; batches under
2048 tokens run serially, where a thread team costs more than it saves), 1 runs
serially. Results do not depend on the number of threads, bit for bit.

Algorithms: Viterbi and min-marginals in energy space (min-plus); forward-
backward in scaled probability space (Rabiner 1989), with an exact energy-space
(soft-min) recursion for the sequences where scaled probabilities would lose
precision (energy differences beyond ~670 / beta), so results are accurate to
rounding at any beta; exact k-best Viterbi (over state paths or distinct label
sequences);
most offending incorrect answer from min-marginals (LeCun et al. 2006,
section 2.2); Hamming-loss-augmented Viterbi (Taskar et al. 2003).
"""
import numbers

import numpy as np

from ._isa import kernel_module
from .checks import check_beta, check_threads

_chain = kernel_module("_chain")   # the AVX2+FMA build where the CPU has it

__all__ = [
    "viterbi", "forward_backward", "ensemble_marginals", "min_marginals", "kbest",
    "most_offending", "loss_augmented_viterbi", "sequence_energy", "gold_mask",
]


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def _energy_array(x, name, ndim):
    """Contiguous float64 copy-if-needed of an energy array, no NaN / -inf.

    Returns the array and the largest magnitude of its finite entries (0 if none).
    """
    if np.iscomplexobj(x):
        raise ValueError(f"{name} must be real, got a complex array")
    try:
        arr = np.ascontiguousarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array: {exc}") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not arr.size:
        return arr, 0.0
    # one reduction finds both: NaN propagates through min, and -inf is the min
    lo = arr.min()
    if not (lo > -np.inf):
        bad = np.isnan(arr)
        if bad.any():
            where = np.argwhere(bad)[0]
            raise ValueError(f"{name} contains NaN at index {tuple(int(i) for i in where)}")
        bad = np.isneginf(arr)
        if bad.any():
            where = np.argwhere(bad)[0]
            raise ValueError(f"{name} contains -inf at index {tuple(int(i) for i in where)}; "
                             "energies may be +inf (forbidden) but not -inf")
    hi = arr.max()
    if hi == np.inf:
        hi = np.max(arr, where=arr < np.inf, initial=0.0)
    return arr, float(max(hi, -lo if lo < np.inf else 0.0, 0.0))


# The energy of a sequence is a sum of 2T + 1 terms; bounding it keeps every partial
# sum in the kernels (and differences of them) finite.
MAX_SEQUENCE_ENERGY = 1e300


def _int_array(x, name, ndim=1):
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_threads(n_threads):
    """The kernels' thread argument: 0 lets them choose (all cores, serial for small
    batches), else the validated, clamped request (:func:`factorebm.checks.check_threads`)."""
    nt = check_threads(n_threads)
    return 0 if nt is None else nt


def _label_ids(gold, n_labels, name="gold"):
    """1-D int64 label ids, each in 0..n_labels-1."""
    g = _int_array(gold, name)
    if g.size and (g.min() < 0 or g.max() >= n_labels):
        bad = int(np.argmax((g < 0) | (g >= n_labels)))
        raise ValueError(f"{name}[{bad}] = {g[bad]} is out of range 0..{n_labels - 1}")
    return g


def _state_labels(state_label, S):
    """(S,) int64 state -> label map using every label 0..L-1 (L <= S)."""
    lab = _int_array(state_label, "state_label")
    if lab.shape != (S,):
        raise ValueError(f"state_label must have shape ({S},), one label per chain "
                         f"state, got {lab.shape}")
    if (lab < 0).any():
        raise ValueError(f"state_label must be >= 0, got {int(lab.min())}")
    if S and lab.max() >= S:
        bad = int(np.argmax(lab >= S))
        raise ValueError(f"state_label[{bad}] = {lab[bad]} is out of range: labels are "
                         f"0..L-1, each with at least one of the {S} states, so L <= {S}")
    used = np.bincount(lab, minlength=int(lab.max()) + 1 if S else 0)
    if (used == 0).any():
        raise ValueError(f"state_label must use every label 0..{used.size - 1}: label "
                         f"{int(np.argmin(used))} has no state")
    return lab


class _Batch:
    """Validated, contiguous inputs shared by every chain function."""

    def __init__(self, unary, transition, offsets, start, end, mask=None, state_label=None):
        self.unary, u_max = _energy_array(unary, "unary", 2)
        N, S = self.unary.shape
        if S < 1:
            raise ValueError("unary must have at least one state column, got shape "
                             f"{self.unary.shape}")
        self.transition, t_max = _energy_array(transition, "transition", 2)
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
        self.max_len = int(steps.max()) if steps.size else 0
        self.start, s_max = self._vector(start, "start")
        self.end, e_max = self._vector(end, "end")
        self._bounds = (u_max, t_max, s_max, e_max)
        self.check_range()
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
            self.state_label = _state_labels(state_label, S)
            self.n_labels = int(self.state_label.max()) + 1
            self.has_labels = True

    def _vector(self, x, name):
        if x is None:
            return np.zeros(self.S, dtype=np.float64), 0.0
        arr, bound = _energy_array(x, name, 1)
        if arr.shape != (self.S,):
            raise ValueError(f"{name} must have shape ({self.S},), got {arr.shape}")
        return arr, bound

    def check_range(self, loss_max=0.0, bounds=None):
        """ValueError when a sequence's energy could overflow float64 sums.

        ``loss_max``: the largest per-token loss subtracted by loss-augmented decoding;
        ``bounds``: the largest magnitudes of (unary, transition, start, end) when they are
        not this batch's own (an ensemble's members, checked by the caller).
        """
        u_max, t_max, s_max, e_max = self._bounds if bounds is None else bounds
        T = self.max_len
        if T == 0:
            return
        bound = T * (u_max + loss_max) + (T - 1) * t_max + s_max + e_max
        if not bound < MAX_SEQUENCE_ENERGY:
            raise ValueError(
                f"energies too large: with |unary| up to {u_max:.3g}, |transition| up to "
                f"{t_max:.3g}, |start|, |end| up to {max(s_max, e_max):.3g}"
                + (f", loss up to {loss_max:.3g}" if loss_max else "")
                + f", a sequence of length {T} could reach |E| = {bound:.3g}, and sums "
                f"of energies must stay below {MAX_SEQUENCE_ENERGY:.0e} to be exact in "
                "float64; rescale the energies (+inf still marks forbidden states)")

    def label_min(self, per_state):
        """(N, L) minimum over each label's states of a (N, S) array."""
        if not self.has_labels:
            return per_state
        order = np.argsort(self.state_label, kind="stable")
        first = np.searchsorted(self.state_label[order], np.arange(self.n_labels))
        return np.minimum.reduceat(per_state[:, order], first, axis=1)

    def labels_array(self, gold, name="gold"):
        """(N,) int64 label ids in 0..n_labels-1."""
        g = _label_ids(gold, self.n_labels, name)
        if g.shape != (self.N,):
            raise ValueError(f"{name} must have shape ({self.N},), one label per token, "
                             f"got {g.shape}")
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
                           *, mask=None, state_label=None, return_states=False,
                           n_threads=None):
    """Hamming-loss-augmented decoding: ``argmin_y E(y) - loss . [label(y_t) != gold_t]``.

    The margin-training oracle (Taskar et al. 2003): the per-token loss is
    subtracted from the energies of every state whose label differs from gold.

    Parameters
    ----------
    unary, transition, offsets, start, end, mask, state_label, n_threads
        As in :func:`viterbi` (masked states stay forbidden).
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
    b = _Batch(unary, transition, offsets, start, end, mask, state_label)
    nt = _check_threads(n_threads)
    g = b.labels_array(gold)
    loss_arr, loss_max = _energy_array(np.full(b.N, loss) if np.ndim(loss) == 0 else loss,
                                       "loss", np.ndim(loss) or 1)
    if loss_arr.shape != (b.N,):
        raise ValueError(f"loss must be a scalar or have shape ({b.N},), got {loss_arr.shape}")
    if not np.isfinite(loss_arr).all():
        raise ValueError("loss must be finite")
    b.check_range(loss_max)
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
        Inverse temperature, > 0 (a Python or numpy scalar, or a 0-d array).
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
    beta = check_beta(beta)
    marg = np.empty((b.N, b.S), dtype=np.float64)   # the kernel writes every row
    free = np.empty(b.n, dtype=np.float64)
    pair = np.zeros((b.S, b.S) if return_pairwise else (0, 0), dtype=np.float64)
    _chain.forward_backward(b.unary, b.transition, b.offsets, beta, b.start, b.end,
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


def ensemble_marginals(unary, transition, offsets, beta=1.0, start=None, end=None, *,
                       mask=None, state_label=None, n_threads=None):
    """The label marginals of an ensemble of M chains over the same sequences, averaged.

    Member m has energies ``unary[m]``, ``transition[m]``, ``start[m]``, ``end[m]``; the
    result is the mean over m of :func:`forward_backward`'s label marginals (to rounding),
    computed in one kernel call: each thread runs every member on its block of sequences.

    Parameters
    ----------
    unary : (M, N, S) float64
    transition : (M, S, S)
    offsets, beta, mask, state_label, n_threads
        As in :func:`forward_backward` (``mask`` (N, S) applies to every member).
    start, end : (M, S) or None (zeros)

    Returns
    -------
    marginals : ndarray of float64, shape (N, L)
        ``(1/M) sum_m P_m(label_t = l)``; L = S without ``state_label``.
    free_energies : ndarray of float64, shape (M, n)
        Each member's ``-(1/beta) log Z`` per sequence (+inf without a finite path, whose
        rows then get nothing from that member).
    """
    unary, u_max = _energy_array(unary, "unary", 3)
    transition, t_max = _energy_array(transition, "transition", 3)
    M, N, S = unary.shape
    if M < 1:
        raise ValueError("an ensemble needs at least one member: unary has shape "
                         f"{unary.shape}")
    if transition.shape != (M, S, S):
        raise ValueError(f"transition must have shape ({M}, {S}, {S}) to match unary's "
                         f"{M} members of {S} states, got {transition.shape}")
    bounds = []
    ends = []
    for x, name in ((start, "start"), (end, "end")):
        arr, bound = ((np.zeros((M, S)), 0.0) if x is None else _energy_array(x, name, 2))
        if arr.shape != (M, S):
            raise ValueError(f"{name} must have shape ({M}, {S}), got {arr.shape}")
        ends.append(arr)
        bounds.append(bound)
    start, end = ends
    # offsets, mask and state labels checked as for one chain; the range for every member
    b = _Batch(unary[0], transition[0], offsets, start[0], end[0], mask, state_label)
    b.check_range(bounds=(u_max, t_max, *bounds))
    nt = _check_threads(n_threads)
    beta = check_beta(beta)
    marg = np.empty((N, b.n_labels), dtype=np.float64)   # the kernel writes every row
    free = np.empty((M, b.n), dtype=np.float64)
    _chain.ensemble_marginals(unary, transition, b.offsets, beta, start, end, b.mask,
                              b.state_label, marg, free, nt)
    return marg, free


def min_marginals(unary, transition, offsets, start=None, end=None, *, mask=None,
                  state_label=None, return_states=False, n_threads=None):
    """Min-marginal energies: the lowest energy of any sequence with ``y_t = s``.

    Parameters
    ----------
    unary, transition, offsets, start, end, mask, state_label, n_threads
        As in :func:`viterbi`.
    return_states : bool
        Also return the state min-marginals (useful with ``state_label``).

    Returns
    -------
    min_marginals : ndarray of float64, shape (N, L)
        ``min over y with label(y_t) = l of E(y)``: the minimum over the label's
        substates (L = S and labels are states without ``state_label``); +inf
        where no finite path has that label at t.
    energies : ndarray of float64, shape (n,)
        ``min_y E(y)`` per sequence (0 for an empty sequence).
    state_min_marginals : ndarray of float64, shape (N, S)
        ``min over y with y_t = s of E(y)`` (only with ``return_states``).
    """
    b = _Batch(unary, transition, offsets, start, end, mask, state_label)
    nt = _check_threads(n_threads)
    mm = np.empty((b.N, b.S), dtype=np.float64)
    energies = np.empty(b.n, dtype=np.float64)
    _chain.min_marginals(b.unary, b.transition, b.offsets, b.start, b.end, b.mask,
                         mm, energies, nt)
    labels_mm = b.label_min(mm)
    return (labels_mm, energies, mm) if return_states else (labels_mm, energies)


# most memory kbest may ask for: outputs plus the per-thread workspace
KBEST_MAX_BYTES = 4 << 30


def kbest(unary, transition, offsets, k, start=None, end=None, *, mask=None,
          state_label=None, return_states=False, n_threads=None):
    """The k lowest-energy sequences of every sequence, best first (exact).

    Without ``state_label``: the k best state sequences. With it (latent
    substates): the k best DISTINCT label sequences, the energy of a label
    sequence being the minimum over its state paths -- not the labels of the k
    best state paths, which repeat a label sequence once per substate path.

    Parameters
    ----------
    unary, transition, offsets, start, end, mask, state_label, n_threads
        As in :func:`viterbi`.
    k : int
        Number of sequences to return, >= 1. The outputs (``8 k (N + n)`` bytes,
        twice that with ``return_states``) and the workspace (about ``16 k threads
        * longest * S`` bytes, 24 with ``state_label``, with k capped at the number
        of paths of the longest sequence) must fit in ``KBEST_MAX_BYTES`` (4 GiB);
        a larger request raises ValueError.
    return_states : bool
        Also return each answer's state path (its best one, with ``state_label``).

    Returns
    -------
    paths : ndarray of int64, shape (k, N)
        ``paths[r]`` holds the (r+1)-th best sequence of every sequence: state
        ids, or label ids with ``state_label``.
    energies : ndarray of float64, shape (k, n)
        Their energies, ascending along axis 0. Where a sequence has fewer than
        k finite-energy sequences, the missing rows have energy +inf and path -1.
        An empty sequence has exactly one (empty) answer, energy 0.
    states : ndarray of int64, shape (k, N)
        The state paths (only with ``return_states``).
    """
    b = _Batch(unary, transition, offsets, start, end, mask, state_label)
    nt = _check_threads(n_threads)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    # no sequence has more than L**longest label (S**longest state) sequences: rows
    # beyond that are +inf / -1
    T, S, L = b.max_len, b.S, b.n_labels
    k_run = k if T * np.log2(max(L, 1)) >= 62 else min(k, L ** T)
    threads = max(_chain.max_threads() if nt == 0 else nt, 1)
    # outputs (k, N) + (k, n); per thread (see _chain.kbest) float and int workspaces
    per_thread = T * S * (2 * k_run + 1) + 2 * (S + k_run)
    if b.has_labels:
        hk = int(np.bincount(b.state_label).max()) * k_run
        per_thread += T * S * k_run + L * hk + hk + k_run + L * hk // 8
        label_states = np.argsort(b.state_label, kind="stable").astype(np.int64)
        label_ptr = np.zeros(L + 1, dtype=np.int64)
        np.cumsum(np.bincount(b.state_label, minlength=L), out=label_ptr[1:])
        state_label = b.state_label
    else:
        label_states = label_ptr = state_label = np.zeros(0, dtype=np.int64)
    need = 8 * (k * (b.N + b.n) * (2 if return_states and b.has_labels else 1)
                + threads * per_thread)
    if need > KBEST_MAX_BYTES:
        raise ValueError(f"k = {k} needs about {need / 2**30:.3g} GiB for kbest's outputs "
                         f"and workspace ({b.N} tokens, longest sequence {T}, {S} states), "
                         f"more than KBEST_MAX_BYTES = {KBEST_MAX_BYTES / 2**30:g} GiB; "
                         "ask for fewer sequences")
    states = np.full((k, b.N), -1, dtype=np.int64)
    energies = np.full((k, b.n), np.inf)
    _chain.kbest(b.unary, b.transition, b.offsets, k_run, b.start, b.end, b.mask,
                 state_label, label_ptr, label_states, states[:k_run], energies[:k_run], nt)
    paths = b.decode(states)
    return (paths, energies, states) if return_states else (paths, energies)


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


def gold_mask(gold, state_label=None, n_states=None):
    """Mask clamping every token to the states of its gold label.

    ``mask[t, s] = label(s) == gold[t]``: passed as ``mask`` to
    :func:`forward_backward` it gives the clamped free energy F(Y) (substates
    summed out), to :func:`viterbi` the best substate path of the gold labels.

    Parameters
    ----------
    gold : ndarray of int64, shape (N,)
        Label ids, 0..L-1.
    state_label : ndarray of int64, shape (S,), optional
        Label of each chain state (as in :func:`viterbi`); None: states are labels.
    n_states : int, optional
        S; required without ``state_label``, checked against it otherwise.

    Returns
    -------
    mask : ndarray of bool, shape (N, S)
    """
    if state_label is None:
        if isinstance(n_states, bool) or not isinstance(n_states, numbers.Integral) \
                or n_states < 1:
            raise ValueError("gold_mask needs n_states (a positive integer) without "
                             f"state_label, got {n_states!r}")
        lab = np.arange(int(n_states), dtype=np.int64)
    else:
        lab = _state_labels(state_label, np.size(state_label))
        if n_states is not None and n_states != lab.size:
            raise ValueError(f"n_states = {n_states!r} does not match state_label's "
                             f"{lab.size} states")
    g = _label_ids(gold, int(lab.max()) + 1)
    return lab[None, :] == g[:, None]


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
