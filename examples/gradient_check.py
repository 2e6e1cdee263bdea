"""Check every loss's gradient by central finite differences, on a chain and on a factor graph.

For each loss of :mod:`factorebm.losses`, the full learning objective (average per-sample loss
over a small random dataset) is differentiated analytically by factorebm and numerically by
central differences, on

* a linear chain (:func:`factorebm.learning.chain_objective`), with and without two latent
  substates per label,
* a chain whose emission energies come from a two-layer network (a
  :class:`factorebm.learning.ChainEnergy` over ``Linear -> Tanh -> Linear``, two substates per
  label: the gradient flows through the chain and back through the modules' bprop), and
* a parametric tree-shaped factor graph with a latent variable
  (:func:`factorebm.learning.graph_objective`, tied weights).

It prints the largest relative error per case. Margin losses are piecewise smooth, so the check
is made at random weights, where no two answers tie. Run:  python examples/gradient_check.py
"""
import numpy as np
import scipy.sparse as sp

import factorebm as fe
from factorebm import modules as nn
from factorebm.learning import (ChainEnergy, LinearChainEnergy, ParametricGraph,
                                chain_objective, graph_objective)

EPS = 1e-6
# Loss parameters of the check. Square-square's margin lies inside the range of the cases' E-,
# so that its push-up term max(0, m - E-)^2 (inactive at the default margin 1) is checked too.
PARAMS = {"square_square": {"margin": 9.0}}


def rel_error(f, w):
    """max |analytic - numeric| / max(1, max |numeric|) over all weights."""
    _, grad = f(w)
    num = np.empty_like(w)
    for i in range(w.size):
        e = np.zeros_like(w)
        e[i] = EPS
        num[i] = (f(w + e)[0] - f(w - e)[0]) / (2 * EPS)
    return np.max(np.abs(grad - num)) / max(1.0, np.max(np.abs(num)))


def chain_case(loss, n_substates, rng):
    lengths = rng.integers(1, 6, size=6)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N, F, K = int(offsets[-1]), 7, 3
    X = sp.random(N, F, density=0.4, random_state=np.random.RandomState(1), format="csr")
    y = rng.integers(0, K, size=N)
    model = LinearChainEnergy(F, K, n_substates=n_substates)
    # Positive offsets keep every energy above zero for the losses that assume it.
    w = rng.normal(scale=0.5, size=model.n_weights) + (0.0 if loss in ("nll", "log", "hinge",
                                                        "mce", "perceptron") else 1.0)
    return rel_error(lambda v: chain_objective(v, model, X, offsets, y, loss, l2=0.01,
                                               **PARAMS.get(loss, {})), w)


def mlp_chain_case(loss, rng):
    lengths = rng.integers(1, 6, size=6)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N, d, K, H = int(offsets[-1]), 4, 3, 2
    X = rng.standard_normal((N, d))
    y = rng.integers(0, K, size=N)
    positive = fe.losses.get(loss).needs_nonnegative
    layers = [nn.Linear(d, 6), nn.Tanh(), nn.Linear(6, K * H)]
    if positive:                # energies in (0, 1), chain energies > 0: E >= 0 throughout
        layers.append(nn.Sigmoid())
    model = ChainEnergy(nn.Sequential(*layers), K, H)
    w = model.init_weights(random_state=1) + rng.normal(scale=0.3, size=model.n_weights)
    if positive:
        w[model.n_emit:] = np.abs(w[model.n_emit:]) + 0.1
    return rel_error(lambda v: chain_objective(v, model, X, offsets, y, loss, l2=0.01,
                                               **PARAMS.get(loss, {})), w)


def graph_case(loss, rng):
    g = fe.FactorGraph()
    g.add_variable("a", 3)
    g.add_variable("b", 2)
    g.add_variable("c", 3)
    g.add_variable("h", 2, latent=True)
    scopes = [["a", "b"], ["b", "c"], ["b", "h"], ["a"]]
    for scope in scopes:
        g.add_factor(scope, np.zeros([g.cardinality(v) for v in scope]))
    sizes = [6, 6, 4, 3]
    n_weights = 12
    # Each table entry is a random combination of the shared weights (tied across factors).
    phi = rng.normal(size=(sum(sizes), n_weights))
    samples = []
    for _ in range(4):
        pg = ParametricGraph(g.copy(), phi, offset=np.full(sum(sizes), 3.0))
        target = {"a": int(rng.integers(3)), "b": int(rng.integers(2)), "c": int(rng.integers(3))}
        samples.append((pg, target))
    w = rng.normal(scale=0.3, size=n_weights)
    return rel_error(lambda v: graph_objective(v, samples, loss, l2=0.01,
                                               **PARAMS.get(loss, {})), w)


def main():
    rng = np.random.default_rng(0)
    print(f"{'loss':>14}  {'chain':>9}  {'chain, 2 substates':>18}  {'MLP chain':>9}  "
          f"{'graph, latent':>13}")
    worst = 0.0
    for loss in fe.losses.available():
        errors = (chain_case(loss, 1, rng), chain_case(loss, 2, rng), mlp_chain_case(loss, rng),
                  graph_case(loss, rng))
        worst = max(worst, *errors)
        print(f"{loss:>14}  {errors[0]:9.1e}  {errors[1]:18.1e}  {errors[2]:9.1e}  "
              f"{errors[3]:13.1e}")
    print(f"worst {worst:.1e}: relative error of the analytic gradient against central "
          "differences (eps = 1e-6)")


if __name__ == "__main__":
    main()
