"""Batched learning on factor graphs against hostile input: inference options that ask for
huge runs, targets that name latent or unknown variables or give labels that are not state
indices, weight vectors with NaN, inf or imaginary parts, and unit numbers out of range."""
import numpy as np
import pytest
import scipy.sparse as sp

import factorebm as fe
from factorebm.learning import GraphObjective, ParametricGraph


def loopy(latent=False, labels=2, seed=0):
    """A 3-cycle of binary variables (optionally a latent one hanging off variable 0) whose
    tables are Phi @ w with a random sparse Phi of 5 weights."""
    g = fe.FactorGraph()
    for v in range(3):
        g.add_variable(v, labels)
    if latent:
        g.add_variable("h", 2, latent=True)
    for scope in ((0, 1), (1, 2), (2, 0)) + (((0, "h"),) if latent else ()):
        g.add_factor(scope, np.zeros((2, 2)))
    for v in range(3):
        g.add_factor((v,), np.zeros(2))
    n_rows = int(g.compile().fac_table_offset[-1]) + 6
    phi = sp.random(n_rows, 5, density=0.5, random_state=seed, format="csr")
    return ParametricGraph(g, phi)


TARGET = {0: 1, 1: 0, 2: 1}


def test_trws_with_a_huge_max_iter_allocates_nothing_per_allowed_pass():
    # TRW-S kept an energy and a bound per allowed pass: max_iter=2**31 made it allocate
    # 32 GiB (the process was killed), 2**40 raised MemoryError. It converges in a few passes.
    g = loopy().graph
    rng = np.random.default_rng(1)
    for f in range(3):
        g.set_factor_energies(f, rng.normal(size=(2, 2)))
    want = fe.min_sum(g, schedule="trws")
    got = fe.min_sum(g, schedule="trws", max_iter=2 ** 40)
    assert got.assignment == want.assignment and got.energy == want.energy
    cg = g.compile()
    *_, trace_e, trace_b = cg.run_trws(cg.unary, 2 ** 40, 0.0)
    assert trace_e.size == trace_b.size + 1 and np.isfinite(trace_e).all()
    obj = GraphObjective([(loopy(), TARGET)], "hinge",
                         inference_options={"schedule": "trws", "max_iter": 2 ** 40})
    assert np.isfinite(obj.value_and_grad(np.ones(5))[0])


def test_trws_traces_beyond_the_recorded_passes_are_the_first_passes_of_the_run(monkeypatch):
    rng = np.random.default_rng(2)
    g = fe.FactorGraph()
    g.add_variables(25, 3)
    g.add_factors(fe.models.grid_edges(5, 5), rng.normal(size=(40, 3, 3)))
    g.add_factors(np.arange(25)[:, None], rng.normal(size=(25, 3)))
    cg = g.compile()
    full = cg.run_trws(cg.unary, 12, 0.0)
    assert full[2] > 3                      # the run is longer than the cap below
    monkeypatch.setattr(fe.compiled, "TRWS_TRACE_PASSES", 3)
    capped = cg.run_trws(cg.unary, 12, 0.0)
    for a, b in zip(full[:6], capped[:6]):  # the run itself does not change
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(capped[6], full[6][:3])
    np.testing.assert_array_equal(capped[7], full[7][:3])
