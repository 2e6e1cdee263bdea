"""Checks shared by every module: one rule per concept, written once.

* Threads: ``n_threads=None`` means every core this process may run on (``OMP_NUM_THREADS``
  lowers that); an integer >= 1 is obeyed up to that number of cores. More threads than cores
  never speeds up these CPU-bound kernels, and an OpenMP team of hundreds of threads aborts the
  process (libgomp) or overflows its stacks, so larger requests are clamped, never passed on.
  Anything else (0, negative, a float, a bool) is a ValueError.
* ``beta``: a finite real number > 0.
* ``offsets``: the ragged-batch boundaries (n+1,) int64 from 0 to the number of tokens,
  non-decreasing.
* Labels: one integer id per token in ``0..n_labels-1``.
* Counts (samples, sweeps, chains): an integer (not a bool) >= a stated minimum.

Every public function of the package validates through these, so the messages and the
meanings are the same everywhere.
"""
import numbers
import os
import sys

import numpy as np

__all__ = ["available_cores", "check_threads", "threads_for", "check_beta", "check_offsets",
           "check_labels", "check_count", "user_stacklevel"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


# What turns words into emission energies (factorebm.front_end), by SequenceTagger's
# front_end: here, so that checking the name does not import the character branch.
FRONT_ENDS = ("features", "features+chars")


def check_front_end(name):
    """``name`` if it is a known front end, else ValueError listing the choices."""
    if not isinstance(name, str) or name not in FRONT_ENDS:
        raise ValueError(f"unknown front_end {name!r}; use one of "
                         f"{', '.join(repr(f) for f in FRONT_ENDS)}")
    return name


def available_cores():
    """Cores this process may use: the CPU affinity set (or ``os.cpu_count()``), lowered by a
    positive ``OMP_NUM_THREADS``."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # not on Linux
        n = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    return max(1, n)


def check_threads(n_threads, what="n_threads"):
    """Validate a thread request.

    Returns
    -------
    None for None (all cores, left to the caller's size rule, see :func:`threads_for`), else
    an int in ``1..available_cores()``.

    Raises
    ------
    ValueError
        ``n_threads`` is not None and not an integer >= 1.
    """
    if n_threads is None:
        return None
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral) \
            or n_threads < 1:
        raise ValueError(f"{what} must be None (all cores) or an integer >= 1, got "
                         f"{n_threads!r}")
    return min(int(n_threads), available_cores())


def threads_for(n_threads, n_items=None, per_thread=8192):
    """Threads for one call over ``n_items`` rows (tokens, graphs, ...).

    An explicit ``n_threads`` is obeyed (clamped to the cores, see :func:`check_threads`).
    ``None`` uses every core but at most one thread per ``per_thread`` items when ``n_items``
    is given: starting and joining an OpenMP team costs more than it saves on small batches
    (and much more on a busy machine).
    """
    nt = check_threads(n_threads)
    if nt is not None:
        return nt
    nt = available_cores()
    if n_items is not None:
        nt = max(1, min(nt, int(n_items) // max(1, int(per_thread))))
    return nt


def is_int(value):
    """True for an integer (Python or numpy), False for a bool or anything else."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_beta(beta, what="beta"):
    """``beta`` as a float: a finite real number > 0 (Python, numpy scalar or 0-d array)."""
    b = None if isinstance(beta, bool) else np.asarray(beta)
    if b is None or b.ndim != 0 or b.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be a finite number > 0, got {beta!r}")
    value = float(b)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {beta!r}"
                         + (" (use min_sum for beta = inf)" if value == np.inf else ""))
    return value


def check_offsets(offsets, n_tokens, what="offsets"):
    """``offsets`` as a contiguous (n+1,) int64 array from 0 to ``n_tokens``, non-decreasing."""
    arr = np.asarray(offsets)
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be an integer array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError(f"{what} must be a 1-D array of n_sequences + 1 integers, got shape "
                         f"{arr.shape}")
    if arr[0] != 0 or arr[-1] != n_tokens:
        raise ValueError(f"{what} must start at 0 and end at the number of tokens {n_tokens}, "
                         f"got {arr[0]} .. {arr[-1]}")
    steps = np.diff(arr)
    if np.any(steps < 0):
        i = int(np.argmax(steps < 0))
        raise ValueError(f"{what} must be non-decreasing; {what}[{i}] = {arr[i]} > "
                         f"{what}[{i + 1}] = {arr[i + 1]}")
    return arr


def check_labels(y, n_tokens, n_labels, what="y"):
    """``y`` as a contiguous (n_tokens,) int64 array of label ids in ``0..n_labels-1``."""
    y = np.asarray(y)
    if y.shape != (n_tokens,):
        raise ValueError(f"{what} must have one label per token, shape ({n_tokens},), got "
                         f"{y.shape}")
    if y.size and (y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"{what} must hold integer label ids, got dtype {y.dtype}")
    y = np.ascontiguousarray(y, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_labels):
        bad = int(np.flatnonzero((y < 0) | (y >= n_labels))[0])
        raise ValueError(f"{what}[{bad}] = {y[bad]} is not a label id in [0, {n_labels})")
    return y


def check_count(value, what, minimum=1, optional=False):
    """``value`` as an int: an integer (Python or numpy, not a bool) >= ``minimum``; None
    stays None when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)) \
            or value < minimum:
        raise ValueError(f"{what} must be {'None or ' if optional else ''}an integer >= "
                         f"{minimum}, got {value!r}")
    return int(value)


def check_real(value, what, optional=False, positive=False):
    """``value`` as a float: a finite real number >= 0 (> 0 when ``positive``); None stays
    None when ``optional``."""
    if value is None and optional:
        return None
    bound = "> 0" if positive else ">= 0"
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not np.isfinite(value) or value < 0 or (positive and value == 0)):
        raise ValueError(f"{what} must be {'None or ' if optional else ''}a finite number "
                         f"{bound}, got {value!r}")
    return float(value)


def user_stacklevel():
    """The ``stacklevel`` for ``warnings.warn`` called by the caller of this function that
    points at the first frame outside factorebm: a warning names the user's line, however
    deep in the package it was raised."""
    frame = sys._getframe(1)     # the function about to warn: stacklevel 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
            _PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
