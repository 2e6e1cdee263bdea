"""Learning with samples: recover the couplings of a 2-D Ising model from data it generated.

An L x L grid of binary spins with energy

    E(x) = J_h * #(horizontal neighbours that differ) + J_v * #(vertical ones that differ)
           + h * #(spins that are 1)

The data are drawn from the model with known (J_h, J_v, h) by long Gibbs runs
(``fe.sample``). The same grid with unknown weights is then trained by the negative
log-likelihood, whose contrastive term (the model's expectation) is estimated two ways:

* ``inference="gibbs"``: persistent contrastive divergence -- persistent Gibbs chains, a few
  sweeps per step under the current weights (asymptotically exact);
* ``inference="bp"``: loopy belief propagation's Bethe approximation (biased on a grid).

Run: python examples/learn_ising.py
"""
import time

import numpy as np
import scipy.sparse as sp

import factorebm as fe
from factorebm.learning import ParametricGraph

L = 8
TRUE = {"J_h": 0.8, "J_v": 0.3, "h": -0.2}


def ising_grid(L):
    """The grid as a ParametricGraph over w = (J_h, J_v, h)."""
    g = fe.FactorGraph()
    names = [f"x{r}_{c}" for r in range(L) for c in range(L)]
    for v in names:
        g.add_variable(v, 2)
    rows, cols = [], []
    pos = 0
    for v in names:                                   # unary: [0, h]
        g.add_factor([v], np.zeros(2))
        rows.append(pos + 1)
        cols.append(2)
        pos += 2
    for r in range(L):
        for c in range(L):
            for dr, dc, weight in ((0, 1, 0), (1, 0, 1)):        # right: J_h, down: J_v
                if r + dr < L and c + dc < L:
                    g.add_factor([f"x{r}_{c}", f"x{r + dr}_{c + dc}"], np.zeros((2, 2)))
                    rows += [pos + 1, pos + 2]                   # entries (0, 1) and (1, 0)
                    cols += [weight, weight]
                    pos += 4
    phi = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(pos, 3))
    return ParametricGraph(g, phi), names


def main():
    pg, names = ising_grid(L)
    w_true = np.array([TRUE["J_h"], TRUE["J_v"], TRUE["h"]])
    pg.set_weights(w_true)
    t0 = time.perf_counter()
    n_chains, per_chain, thin = 20, 40, 25
    s = fe.sample(pg.graph, n_samples=per_chain, burn_in=2000, thin=thin, n_chains=n_chains,
                  random_state=1)
    print(f"data: {n_chains * per_chain} samples of a {L}x{L} grid drawn with J_h, J_v, h = "
          f"{w_true.tolist()} (20 Gibbs chains, 2000 burn-in sweeps, every {thin}th sweep "
          f"kept; {time.perf_counter() - t0:.1f} s)")
    samples = [(pg, dict(zip(names, row.tolist()))) for row in s.samples]

    results = {}
    for inference, kw in (("gibbs", {"inference_options": {"n_chains": 100, "n_sweeps": 1}}),
                          ("bp", {"inference_options": None})):
        t0 = time.perf_counter()
        w, history = fe.optimize.fit_graphs(
            samples, loss="nll", optimizer="adam", learning_rate=0.02, max_iter=40,
            batch_size=20, l2=0.0, inference=inference, verbose=False, random_state=0, **kw)
        results[inference] = (w, time.perf_counter() - t0)

    print(f"{'':22s} {'J_h':>7s} {'J_v':>7s} {'h':>7s}")
    print(f"{'true':22s} " + " ".join(f"{v:7.3f}" for v in w_true))
    for inference, label in (("gibbs", "learned, PCD (Gibbs)"), ("bp", "learned, Bethe (BP)")):
        w, dt = results[inference]
        err = np.abs(w - w_true).max()
        print(f"{label:22s} " + " ".join(f"{v:7.3f}" for v in w)
              + f"   max error {err:.3f}  ({dt:.1f} s)")


if __name__ == "__main__":
    main()
