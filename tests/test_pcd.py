"""Learning with samples: persistent contrastive divergence (fit_graphs(inference="gibbs"))."""
import numpy as np
import pytest
import scipy.sparse as sp

import factorebm as fe
from factorebm.energies.pcd import PCDGraphObjective
from factorebm.learning import ParametricGraph, graph_objective
from factorebm.optimize import fit_graphs


def _tree_samples(latent=False, n=6, seed=0):
    """A 4-variable tree (plus a latent leaf) with random tied weights; random targets."""
    rng = np.random.default_rng(seed)
    g = fe.FactorGraph()
    for v in "abcd":
        g.add_variable(v, 2 if v != "c" else 3)
    scopes = [["a", "b"], ["b", "c"], ["b", "d"], ["a"]]
    if latent:
        g.add_variable("h", 2, latent=True)
        scopes.append(["c", "h"])
    for s in scopes:
        g.add_factor(s, np.zeros([g.cardinality(v) for v in s]))
    total = sum(int(np.prod([g.cardinality(v) for v in s])) for s in scopes)
    phi = sp.csr_matrix(rng.normal(size=(total, 5)))
    pg = ParametricGraph(g, phi)
    samples = [(pg, {"a": int(rng.integers(2)), "b": int(rng.integers(2)),
                     "c": int(rng.integers(3)), "d": int(rng.integers(2))}) for _ in range(n)]
    return samples, rng.normal(scale=0.5, size=5)


@pytest.mark.parametrize("latent", [False, True])
def test_the_chains_gradient_estimates_the_exact_nll_gradient(latent):
    samples, w = _tree_samples(latent)
    _, exact = graph_objective(w, samples, "nll")          # exact on a tree
    obj = PCDGraphObjective(samples, n_chains=4000, n_sweeps=30, random_state=3)
    grads = [obj.value_and_grad(w)[1] / len(samples) for _ in range(3)]
    estimate = np.mean(grads, axis=0)
    # 4000 chains x 3 evaluations: the Monte-Carlo error of each entry is about 0.01
    np.testing.assert_allclose(estimate, exact, atol=0.03)


def test_pcd_recovers_the_couplings_of_a_small_ising_grid():
    L = 4
    g = fe.FactorGraph()
    names = [f"x{i}" for i in range(L * L)]
    g.add_variables(names, 2) if hasattr(g, "add_variables") else [g.add_variable(v, 2)
                                                                      for v in names]
    rows, cols, pos = [], [], 0
    for r in range(L):
        for c in range(L):
            for dr, dc, k in ((0, 1, 0), (1, 0, 1)):
                if r + dr < L and c + dc < L:
                    g.add_factor([names[r * L + c], names[(r + dr) * L + c + dc]],
                                 np.zeros((2, 2)))
                    rows += [pos + 1, pos + 2]
                    cols += [k, k]
                    pos += 4
    pg = ParametricGraph(g, sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(pos, 2)))
    w_true = np.array([1.0, 0.2])
    pg.set_weights(w_true)
    s = fe.sample(g, n_samples=60, burn_in=500, thin=10, n_chains=10, random_state=2)
    samples = [(pg, dict(zip(names, row.tolist()))) for row in s.samples]
    w, hist = fit_graphs(samples, loss="nll", inference="gibbs", optimizer="adam",
                         learning_rate=0.05, max_iter=25, batch_size=30, l2=0.0,
                         inference_options={"n_chains": 100}, verbose=False, random_state=0)
    assert len(hist) == 25
    assert np.abs(w - w_true).max() < 0.15, w
    # reproducible, whatever the thread count
    w2, _ = fit_graphs(samples[:60], loss="nll", inference="gibbs", max_iter=2, l2=0.0,
                       inference_options={"n_chains": 8}, verbose=False, random_state=5,
                       n_threads=1)
    w3, _ = fit_graphs(samples[:60], loss="nll", inference="gibbs", max_iter=2, l2=0.0,
                       inference_options={"n_chains": 8}, verbose=False, random_state=5,
                       n_threads=2)
    np.testing.assert_array_equal(w2, w3)


def test_bad_input_for_learning_with_samples():
    samples, _ = _tree_samples()
    with pytest.raises(ValueError, match="trains loss='nll' only"):
        fit_graphs(samples, loss="hinge", inference="gibbs", verbose=False)
    with pytest.raises(ValueError, match="not lbfgs"):
        fit_graphs(samples, inference="gibbs", optimizer="lbfgs", verbose=False)
    with pytest.raises(ValueError, match="unknown inference 'mcmc'"):
        fit_graphs(samples, inference="mcmc", verbose=False)
    with pytest.raises(ValueError, match=r"unknown inference_options \['temperature'\]"):
        fit_graphs(samples, inference="gibbs", inference_options={"temperature": 2},
                   verbose=False)
    with pytest.raises(ValueError, match="n_chains must be an integer >= 1"):
        fit_graphs(samples, inference="gibbs", inference_options={"n_chains": 0},
                   verbose=False)
    with pytest.raises(ValueError, match="unknown sampling method"):
        fit_graphs(samples, inference="gibbs", inference_options={"method": "hmc"},
                   verbose=False)
    pg = samples[0][0]
    with pytest.raises(ValueError, match="does not give a label to visible variable 'd'"):
        fit_graphs([(pg, {"a": 0, "b": 1, "c": 2})], inference="gibbs", max_iter=1,
                   verbose=False)
