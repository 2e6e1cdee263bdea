"""Random small factor graphs shared by the belief-propagation tests (no tests here)."""
import numpy as np

import factorebm as fe
from factorebm.exhaustive import enumerate_energies


def random_forest(seed, n_vars=None, inf_prob=0.1, latent_prob=0.25):
    """A random factor forest: arity 1-3, cardinality 2-4, some latent variables, some +inf.

    ``n_vars`` defaults to a random 3..7. Non-unary factors only join variables
    from distinct components, so the bipartite graph stays a forest. Returns a
    graph with at least one factor of arity >= 2 (so messages are passed) and at
    least one finite-energy assignment.
    """
    if n_vars is not None and n_vars < 2:
        raise ValueError("a forest with a factor of arity >= 2 needs n_vars >= 2")
    rng = np.random.default_rng(seed)
    while True:
        g = fe.FactorGraph()
        n = n_vars if n_vars is not None else int(rng.integers(3, 8))
        for v in range(n):
            k = int(rng.integers(2, 5))
            states = k if rng.random() < 0.6 else [f"s{v}_{i}" for i in range(k)]
            g.add_variable(f"x{v}", states, latent=bool(rng.random() < latent_prob))
        comp = list(range(n))

        def find(a):
            while comp[a] != a:
                a = comp[a]
            return a

        for _ in range(int(rng.integers(1, 2 * n + 2))):
            arity = int(rng.integers(1, 4))
            if arity > n:
                continue
            scope = [int(v) for v in rng.choice(n, size=arity, replace=False)]
            roots = {find(v) for v in scope}
            if len(roots) < arity:
                continue
            for r in roots:
                comp[r] = find(scope[0])
            shape = tuple(g.cardinality(f"x{v}") for v in scope)
            table = rng.normal(scale=rng.choice([0.5, 2.0, 5.0]), size=shape)
            table[rng.random(shape) < inf_prob] = np.inf
            g.add_factor([f"x{v}" for v in scope], table)
        if max_arity(g) < 2:
            continue
        _, E = enumerate_energies(g)
        if np.isfinite(E).any():
            return g


def max_arity(g):
    return max((len(scope) for scope, _ in g.factors), default=0)


def random_evidence(g, seed, prob=0.3):
    """Evidence on a random non-empty subset of the visible variables (never latent ones),
    taken from a finite-energy assignment; {} when every variable is latent."""
    rng = np.random.default_rng(seed + 10_000)
    states, E = enumerate_energies(g)
    ok = np.flatnonzero(np.isfinite(E))
    row = states[rng.choice(ok)]
    visible = [v for v, name in enumerate(g.variables) if not g.is_latent(name)]
    chosen = [v for v in visible if rng.random() < prob]
    if visible and not chosen:
        chosen = [visible[int(rng.integers(len(visible)))]]
    ev = {}
    for v in chosen:
        name = g.variables[v]
        ev[name] = g.labels(name)[row[v]] if rng.random() < 0.5 else int(row[v])
    return ev


def full_assignment(r):
    out = dict(r.assignment)
    out.update(r.latent)
    return out
