"""A batch of graphs is their concatenation: one kernel call gives each part its own answer."""
import numpy as np
import pytest

import factorebm as fe
from factorebm.compiled import Plan, concatenate


def part(seed, kind):
    rng = np.random.default_rng(seed)
    g = fe.FactorGraph()
    if kind == "grid":                                   # loopy, shared Potts table
        n, K = 4, 3
        g.add_variables(n * n, K)
        ids = np.arange(n * n).reshape(n, n)
        edges = np.concatenate([np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1),
                                np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1)])
        g.add_factors(ids.reshape(-1, 1), rng.normal(size=(n * n, K)))
        g.add_factors(edges, 0.7 * (1.0 - np.eye(K)))
    elif kind == "tree":                                 # a tree of dense tables, cardinality 2
        g.add_variables(6, 2)
        g.add_factors(np.arange(6)[:, None], rng.normal(size=(6, 2)))
        g.add_factors([[0, 1], [1, 2], [1, 3], [3, 4], [4, 5]], rng.normal(size=(5, 2, 2)))
    else:                                                # loopy with +inf and mixed cardinalities
        g.add_variables(5, [2, 3, 2, 3, 2])
        for v in range(5):
            u = rng.normal(size=g.cardinality(v))
            g.add_factor([v], u)
        for a, b in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (1, 3)]:
            t = rng.normal(size=(g.cardinality(a), g.cardinality(b)))
            t[0, -1] = np.inf
            g.add_factor([a, b], t)
    return g


def flood_plan(cg):
    return Plan(False, np.full(1, -1, dtype=np.int64), cg.plan([]).order)


@pytest.mark.parametrize("min_sum, beta", [(True, np.inf), (False, 1.0)])
def test_flooding_a_batch_equals_flooding_each_part(min_sum, beta):
    graphs = [part(0, "grid"), part(1, "tree"), part(2, "inf"), part(3, "grid")]
    cgs = [g.compile() for g in graphs]
    batch, off = concatenate(cgs)
    assert batch.n_vars == sum(c.n_vars for c in cgs) and off["msg"][-1] == batch.n_msg
    run = dict(max_iter=30, damping=0.4, tol=0.0)
    v2f, f2v, *_ = batch.run_bp(batch.unary, flood_plan(batch), beta, min_sum, **run)
    var_b, _ = batch.beliefs(batch.unary, v2f, f2v)
    for b, cg in enumerate(cgs):
        pv2f, pf2v, *_ = cg.run_bp(cg.unary, flood_plan(cg), beta, min_sum, **run)
        # equal to rounding: a batch holding +inf anywhere takes the kernel's path that counts
        # +inf terms for every part, and its flat passes may round an FMA differently
        lo, hi = off["msg"][b], off["msg"][b + 1]
        np.testing.assert_allclose(f2v[lo:hi], pf2v[:cg.n_msg], rtol=0, atol=1e-12)
        np.testing.assert_allclose(v2f[lo:hi], pv2f[:cg.n_msg], rtol=0, atol=1e-12)
        pb, _ = cg.beliefs(cg.unary, pv2f, pf2v)
        np.testing.assert_allclose(var_b[off["state"][b]:off["state"][b + 1]], pb, rtol=0, atol=1e-12)


def test_trws_on_a_batch_gives_each_part_its_own_run_and_loss_augmentation_is_a_unary():
    graphs = [part(0, "grid"), part(2, "inf"), part(5, "grid")]
    cgs = [g.compile() for g in graphs]
    batch, off = concatenate(cgs)
    *_, states, bound, _, _ = batch.run_trws(batch.unary, 40, 0.0)
    total = 0.0
    for b, cg in enumerate(cgs):
        *_, s_b, bound_b, _, _ = cg.run_trws(cg.unary, 40, 0.0)
        np.testing.assert_array_equal(states[off["var"][b]:off["var"][b + 1]], s_b)
        total += bound_b
    assert bound == pytest.approx(total, rel=1e-12)
    # loss-augmented MAP: add a Hamming loss against a target to the unary energies
    target = np.zeros(batch.n_vars, dtype=np.int64)
    loss = np.ones(batch.n_states_total)
    loss[batch.var_state_offset[:-1] + target] = 0.0
    *_, aug_states, _, _, _ = batch.run_trws(batch.unary - loss, 40, 0.0)
    e_aug = batch.energies_of(aug_states) - (aug_states != target).sum()
    assert e_aug <= batch.energies_of(states) - (states != target).sum() + 1e-9
