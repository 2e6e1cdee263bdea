"""MCMC sampling (fe.sample, fe.sampling) against brute-force enumeration and exact BP.

Statistical tests run at fixed seeds, so they are deterministic; each states its tolerance.
Chi-square tests need independent samples: they take the last state of each of thousands of
independent chains, after a burn-in long enough for these small graphs (a few hundred
sweeps at beta <= 1). At beta = 2 some of these graphs have two modes that single-site
moves cross only every thousand sweeps or so: a correct sampler then needs far longer runs,
so the statistical tests stay at beta <= 1. They require p > 1e-3: a correct sampler fails
one with probability 1e-3 per case, and the seeds were not chosen to pass.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.stats import chisquare

import factorebm as fe
from factorebm import sampling
from factorebm.exhaustive import enumerate_energies

from test_bp_shared_tables import potts_grid

P_MIN = 1e-3
N_CHAINS = 4000        # independent samples per chi-square test
BURN_IN = 250


def random_graph(seed, n_vars=None, latent_prob=0.3, with_inf=True):
    """A random loopy factor graph: 3-5 variables of 2-3 states, factors of arity 1-3 (at least
    one ternary), some latent variables, and +inf entries that keep single-site moves ergodic:
    forbidden unary states (one state always left) and at most one forbidden entry of one
    non-unary table (a state space minus one point stays connected by single-site moves)."""
    rng = np.random.default_rng(seed)
    while True:
        g = fe.FactorGraph()
        n = n_vars or int(rng.integers(3, 6))
        for v in range(n):
            g.add_variable(f"x{v}", int(rng.integers(2, 4)), latent=bool(rng.random() < latent_prob))
        names = g.variables
        scopes = [[v] for v in rng.permutation(n)[: max(1, n // 2)]]
        scopes.append(list(rng.choice(n, size=3, replace=False)))
        for _ in range(int(rng.integers(n - 1, 2 * n))):
            scopes.append(list(rng.choice(n, size=int(rng.integers(2, 4)), replace=False)))
        forbidden_joint = with_inf
        for scope in scopes:
            shape = tuple(g.cardinality(names[v]) for v in scope)
            table = rng.normal(scale=1.0, size=shape)
            if with_inf and len(scope) == 1 and rng.random() < 0.5:
                table[int(rng.integers(shape[0]))] = np.inf
            elif forbidden_joint and len(scope) > 1 and rng.random() < 0.5:
                table[tuple(int(rng.integers(k)) for k in shape)] = np.inf
                forbidden_joint = False
            g.add_factor([names[v] for v in scope], table)
        _, E = enumerate_energies(g)
        if np.isfinite(E).any():
            return g


def exact_distribution(g, beta, evidence=None):
    """(codes, p): the mixed-radix code of every assignment and its probability."""
    states, E = enumerate_energies(g, evidence)
    with np.errstate(invalid="ignore"):
        w = np.exp(-beta * (E - E[np.isfinite(E)].min()))
    cards = [g.cardinality(n) for n in g.variables]
    return np.ravel_multi_index(states.T, cards), w / w.sum()


def chi2_p(observed, expected_p):
    """p-value of the chi-square test, bins with expected count < 5 pooled into one."""
    n = observed.sum()
    exp = expected_p * n
    small = exp < 5
    obs_b = np.append(observed[~small], observed[small].sum())
    exp_b = np.append(exp[~small], exp[small].sum())
    keep = exp_b > 0
    assert obs_b[~keep].sum() == 0, "a sample in a bin of probability 0"
    if keep.sum() < 2:
        return 1.0
    return chisquare(obs_b[keep], exp_b[keep]).pvalue


def check_against_enumeration(g, s, beta, evidence=None):
    """Joint histogram and every marginal of the samples against enumeration (chi-square)."""
    codes, p = exact_distribution(g, beta, evidence)
    cards = [g.cardinality(n) for n in g.variables]
    sample_codes = np.ravel_multi_index(s.samples.T, cards)
    index = {c: i for i, c in enumerate(codes.tolist())}
    assert all(c in index for c in np.unique(sample_codes).tolist())
    observed = np.bincount([index[c] for c in sample_codes.tolist()], minlength=len(codes))
    assert not observed[p == 0].any(), "a sample of infinite energy"
    assert chi2_p(observed, p) > P_MIN
    states, _ = enumerate_energies(g, evidence)
    for v, name in enumerate(g.variables):
        p_v = np.bincount(states[:, v], weights=p, minlength=cards[v])
        counts = np.bincount(s.samples[:, v], minlength=cards[v])
        np.testing.assert_allclose(s.marginals[name], counts / counts.sum())
        assert chi2_p(counts, p_v) > P_MIN, name


# ---------------------------------------------------------------------- against enumeration
@pytest.mark.parametrize("method", ["gibbs", "mh"])
@pytest.mark.parametrize("seed", range(8))
def test_samples_follow_the_gibbs_distribution_of_random_graphs(seed, method):
    g = random_graph(seed)
    beta = [0.5, 1.0][seed % 2]
    s = fe.sample(g, n_samples=1, beta=beta, method=method, burn_in=BURN_IN, n_chains=N_CHAINS,
                  random_state=seed)
    assert s.samples.shape == (N_CHAINS, g.n_variables) and s.samples.dtype == np.int64
    assert np.isfinite(s.energies).all()
    check_against_enumeration(g, s, beta)
    if method == "gibbs":
        assert s.acceptance_rate == 1.0
    else:
        assert 0.0 < s.acceptance_rate < 1.0


@pytest.mark.parametrize("method", ["gibbs", "mh"])
@pytest.mark.parametrize("seed", range(4))
def test_samples_follow_the_distribution_given_evidence(seed, method):
    g = random_graph(100 + seed, latent_prob=0.2)
    visible = g.visible_variables
    states, E = enumerate_energies(g)
    row = states[np.flatnonzero(np.isfinite(E))[0]]
    evidence = {visible[0]: int(row[g.variables.index(visible[0])])}
    s = fe.sample(g, n_samples=1, evidence=evidence, method=method, burn_in=BURN_IN,
                  n_chains=N_CHAINS, random_state=seed)
    assert (s.samples[:, g.variables.index(visible[0])] == evidence[visible[0]]).all()
    check_against_enumeration(g, s, 1.0, evidence)


def test_energies_are_those_of_the_samples():
    g = random_graph(3)
    s = fe.sample(g, n_samples=50, n_chains=3, random_state=1)
    expected = [g.energy(dict(zip(g.variables, row.tolist()))) for row in s.samples]
    np.testing.assert_allclose(s.energies, expected, rtol=1e-12)
    np.testing.assert_allclose(sampling.state_energies(g, s.samples), expected, rtol=1e-12)


def test_a_chain_never_visits_a_forbidden_state_even_when_it_is_likely_otherwise():
    # state 1 of b has the lowest energy but is forbidden next to a = 0, a's only state
    g = fe.FactorGraph()
    g.add_variable("a", 2)
    g.add_variable("b", 3)
    g.add_factor(["a"], [0.0, np.inf])
    g.add_factor(["a", "b"], [[0.0, np.inf, 0.0], [0.0, -30.0, 0.0]])
    g.add_factor(["b"], [2.0, -20.0, 0.0])
    for method in ("gibbs", "mh"):
        s = fe.sample(g, n_samples=500, method=method, random_state=0)
        assert (s.samples[:, 0] == 0).all() and not (s.samples[:, 1] == 1).any()
        np.testing.assert_allclose(s.marginals["b"].sum(), 1.0)


def test_underflowing_weights_are_redone_in_energy_space():
    # given u_i = 0 (the likely state), each of v's three factors contributes energies near
    # 300 to both states of v: the products of exponentials underflow to 0, and the kernel
    # must redo the site in energy space to get P(v = 0) = 1 / (1 + e^-1.5)
    g = fe.FactorGraph()
    g.add_variable("v", 2)
    for i in range(3):
        g.add_variable(f"u{i}", 2)
        g.add_factor([f"u{i}"], [0.0, 400.0])
        g.add_factor([f"u{i}", "v"], [[300.0, 300.5], [0.0, 0.0]])
    for method in ("gibbs", "mh"):
        s = fe.sample(g, n_samples=1, burn_in=20, n_chains=N_CHAINS, method=method,
                      random_state=3)
        check_against_enumeration(g, s, 1.0)


@pytest.mark.parametrize("K", range(2, 9))
def test_every_specialized_cardinality(K):
    # all variables with K states and pairwise factors only: the unrolled sweeps of
    # _sample_site.h (a triangle, so that each site has two factors, one in each orientation)
    rng = np.random.default_rng(K)
    g = fe.FactorGraph()
    for v in "abc":
        g.add_variable(v, K)
        g.add_factor([v], rng.normal(size=K))
    for pair in (["a", "b"], ["b", "c"], ["a", "c"]):
        table = rng.normal(size=(K, K))
        table[0, 1] = np.inf
        g.add_factor(pair, table)
    s = fe.sample(g, n_samples=1, burn_in=60, n_chains=N_CHAINS, random_state=K)
    check_against_enumeration(g, s, 1.0)


def lattice(edges, n, K, seed):
    """n variables of K states, random unaries, a random table per edge (some +inf)."""
    rng = np.random.default_rng(seed)
    g = fe.FactorGraph()
    g.add_variables(n, K)
    g.add_factors(np.arange(n).reshape(-1, 1), rng.normal(size=(n, K)))
    tables = rng.normal(scale=0.5, size=(len(edges), K, K))
    tables[::17, 0, 1] = np.inf
    g.add_factors(np.asarray(edges), tables)
    return g


def grid_edges(shape, offsets):
    """The edges (i, j) of a grid of ``shape`` between each site and its neighbours at the
    given (positive) offsets."""
    ids = np.arange(int(np.prod(shape))).reshape(shape)
    out = []
    for off in offsets:
        src = ids[tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))]
        dst = ids[tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))]
        out.append(np.stack([src.ravel(), dst.ravel()], 1))
    return np.concatenate(out).tolist()


@pytest.mark.parametrize("name, degree", [("ring", 2), ("ladder", 3), ("grid", 4),
                                          ("cube", 6), ("king", 8), ("star", 0)])
@pytest.mark.parametrize("K", [2, 3])
def test_specialized_sweeps_draw_what_the_general_path_draws(name, degree, K):
    # the K-specialized sweeps pad every site to the largest degree with slots that multiply
    # by 1 (unrolled for degrees 2, 4, 6, 8), or read the slots by offsets when padding would
    # cost too much ("star"): the same products in the same order as the general path's,
    # hence the same draws
    n = {"ring": 60, "ladder": 60, "grid": 144, "cube": 125, "king": 144, "star": 60}[name]
    edges = {
        "ring": [[i, (i + 1) % n] for i in range(n)],
        "ladder": [[i, (i + 1) % n] for i in range(n)] + [[i, i + n // 2] for i in range(n // 2)],
        "grid": grid_edges((12, 12), [(0, 1), (1, 0)]),
        "cube": grid_edges((5, 5, 5), [(0, 0, 1), (0, 1, 0), (1, 0, 0)]),
        "king": grid_edges((12, 12), [(0, 1), (1, 0), (1, 1), (1, -1)]),
        "star": [[0, i] for i in range(1, n)] + [[i, i + 1] for i in range(1, n - 1)],
    }[name]
    g = lattice(edges, n, K, seed=degree)
    lay = sampling._layout(g.compile())
    assert lay.uniform_k == K
    order, colour_offset, _, _, cache = lay.order(np.zeros(0, dtype=np.int64))
    _, pos_degree, _, _ = lay.positions(g.compile(), order[:colour_offset[-1]], cache, 1.0)
    assert pos_degree == degree
    x0 = sampling.initial_states(g, 3, random_state=1)
    runs = []
    for uniform_k in (K, 0):
        lay.uniform_k = uniform_k           # 0: every site through the general path
        try:
            for nt in (1, 2):
                x = x0.copy()
                sampling.sweep_chains(g, x, 7, seed=2, n_threads=nt)
                runs.append(x)
        finally:
            lay.uniform_k = K
    for x in runs[1:]:
        np.testing.assert_array_equal(runs[0], x)
    assert (runs[0] != x0).mean() > 0.1      # the chains moved


def test_a_table_shared_by_factors_of_two_shapes_is_read_right():
    # the compiled graph stores equal tables once: a 2 x 3 and a 3 x 2 factor with the same
    # six entries share one, which the sampler must orient per factor
    g = fe.FactorGraph()
    for name, k in (("a", 2), ("b", 3), ("c", 3), ("d", 2)):
        g.add_variable(name, k)
    values = np.array([0.3, -1.2, 0.8, 1.5, -0.4, 0.0])
    g.add_factor(["a", "b"], values.reshape(2, 3))
    g.add_factor(["c", "d"], values.reshape(3, 2))
    g.add_factor(["b", "c"], [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    g.add_factor(["d", "a"], [[0.5, 0.0], [0.0, 0.5]])
    assert g.compile().unique_tables.size < g.compile().fac_table_offset[-1]
    for method in ("gibbs", "mh"):
        s = fe.sample(g, n_samples=1, burn_in=60, n_chains=N_CHAINS, method=method,
                      random_state=6)
        check_against_enumeration(g, s, 1.0)


def test_many_states_take_the_generic_paths():
    # 10 states: past the specialized K <= 8 code; 20: past the local weight array
    rng = np.random.default_rng(4)
    g = fe.FactorGraph()
    for name, k in (("a", 10), ("b", 20), ("c", 3)):
        g.add_variable(name, k)
    g.add_factor(["a", "b"], rng.normal(size=(10, 20)))
    g.add_factor(["b", "c"], rng.normal(size=(20, 3)))
    g.add_factor(["a", "b", "c"], rng.normal(scale=0.5, size=(10, 20, 3)))
    for method in ("gibbs", "mh"):
        s = fe.sample(g, n_samples=1, burn_in=BURN_IN, n_chains=N_CHAINS, method=method,
                      random_state=5)
        check_against_enumeration(g, s, 1.0)


# ---------------------------------------------------------------------- exact on trees
def random_tree(seed, n=25, K=3):
    rng = np.random.default_rng(seed)
    g = fe.FactorGraph()
    for i in range(n):
        g.add_variable(i, K, latent=bool(i % 5 == 4))
        g.add_factor([i], rng.normal(size=K))
    for i in range(1, n):
        g.add_factor([int(rng.integers(i)), i], rng.normal(scale=1.5, size=(K, K)))
    return g


@pytest.mark.parametrize("method", ["gibbs", "mh"])
def test_gibbs_on_a_tree_agrees_with_exact_sum_product(method):
    g = random_tree(7)
    beta = 0.8
    exact = fe.sum_product(g, beta=beta)
    assert exact.exact
    s = fe.sample(g, n_samples=400, beta=beta, method=method, burn_in=50, thin=3, n_chains=40,
                  random_state=11)
    # 16000 samples, nearly independent: a marginal's standard error is at most 0.004
    for name in g.variables:
        np.testing.assert_allclose(s.marginals[name], exact.marginals[name], atol=0.025)
    # the empirical factor beliefs, cut per factor, against the exact ones
    cg = g.compile()
    var_b = np.zeros(cg.n_states_total)
    fac_b = np.zeros(cg.fac_table_offset[-1])
    sampling.accumulate_beliefs(g, s.samples, var_b, fac_b)
    for b, ref in zip(cg.factor_belief_list(var_b, fac_b), exact.factor_beliefs):
        assert b.shape == ref.shape
        np.testing.assert_allclose(b, ref, atol=0.025)


# ---------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("K", [2, 3])
def test_same_seed_same_samples_whatever_the_threads(K):
    # 100 x 100: 5000 variables per colour, so 2 threads with one chain split each colour
    g = potts_grid(100, 100, K, seed=0)
    for n_chains in (1, 2, 3):
        runs = [fe.sample(g, n_samples=3, burn_in=2, thin=2, n_chains=n_chains, random_state=4,
                          n_threads=nt).samples for nt in (1, 2, 2)]
        np.testing.assert_array_equal(runs[0], runs[1])
        np.testing.assert_array_equal(runs[0], runs[2])
    other = fe.sample(g, n_samples=3, burn_in=2, thin=2, n_chains=1, random_state=5).samples
    assert (other != runs[0][:3]).mean() > 0.1
    s = fe.sample(g, n_samples=3, burn_in=2, thin=2, n_chains=1, method="mh", random_state=4,
                  n_threads=1)
    t = fe.sample(g, n_samples=3, burn_in=2, thin=2, n_chains=1, method="mh", random_state=4,
                  n_threads=2)
    np.testing.assert_array_equal(s.samples, t.samples)
    assert s.acceptance_rate == t.acceptance_rate


def test_a_chain_does_not_depend_on_the_number_of_chains():
    g = random_graph(5)
    a = fe.sample(g, n_samples=30, n_chains=2, random_state=9).samples
    b = fe.sample(g, n_samples=30, n_chains=5, random_state=9).samples
    np.testing.assert_array_equal(a, b[:60])


def test_sweeps_split_into_calls_give_the_same_chain():
    g = random_graph(6)
    x0 = sampling.initial_states(g, 3, random_state=1)
    one = x0.copy()
    sampling.sweep_chains(g, one, 10, seed=3)
    split = x0.copy()
    done = 0
    for k in (1, 4, 5):
        sampling.sweep_chains(g, split, k, seed=3, sweep=done)
        done += k
    np.testing.assert_array_equal(one, split)


# ---------------------------------------------------------------------- persistent chains
def test_clamped_columns_keep_each_chains_own_value():
    g = random_graph(8, with_inf=False)
    x = sampling.initial_states(g, 4, random_state=0)
    x[:, 0] = [0, 1, 0, 1]
    acc, prop = sampling.sweep_chains(g, x, 20, clamped=[0], seed=1)
    assert acc == prop == 20 * 4 * (g.n_variables - 1)
    np.testing.assert_array_equal(x[:, 0], [0, 1, 0, 1])


def test_new_tables_between_calls_are_used():
    g = fe.FactorGraph()
    for v in "ab":
        g.add_variable(v, 3)
    f = g.add_factor(["a", "b"], np.zeros((3, 3)))
    x = sampling.initial_states(g, 50, random_state=0)
    sampling.sweep_chains(g, x, 5, seed=0)
    assert len({tuple(r) for r in x.tolist()}) > 1
    table = np.full((3, 3), 50.0)
    table[2, 1] = 0.0
    g.set_factor_energies(f, table)         # every chain must move to (2, 1)
    sampling.sweep_chains(g, x, 5, seed=0, sweep=5)
    assert (x == [2, 1]).all()
    var_b = np.zeros(6)
    fac_b = np.zeros(9)
    sampling.accumulate_beliefs(g, x, var_b, fac_b)
    np.testing.assert_allclose(var_b, [0, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(fac_b.reshape(3, 3)[2, 1], 1.0)


def test_the_colouring_separates_variables_that_share_a_factor():
    for seed in range(10):
        g = random_graph(seed)
        colour = sampling.colouring(g)
        for scope, _ in g.factors:
            c = [colour[g.variables.index(n)] for n in scope]
            assert len(set(c)) == len(c)
    assert sampling.colouring(potts_grid(40, 40, 2, seed=0)).max() == 1      # a checkerboard


# ---------------------------------------------------------------------- bad input
def test_bad_counts_beta_and_method_raise_value_errors():
    g = random_graph(0)
    for kw in [dict(n_samples=0), dict(n_samples=-3), dict(n_samples=2.0), dict(n_samples=True),
               dict(burn_in=-1), dict(burn_in=1.5), dict(thin=0), dict(thin=None),
               dict(n_chains=0), dict(n_chains="2"), dict(beta=0.0), dict(beta=-1.0),
               dict(beta=np.inf), dict(beta=np.nan), dict(method="hmc"), dict(method=None),
               dict(random_state=-1), dict(random_state=1.5), dict(n_threads=0),
               dict(evidence={"nope": 0})]:
        with pytest.raises((ValueError, KeyError)) as err:
            fe.sample(g, **kw)
        key = next(iter(kw))
        assert key in str(err.value) or key in ("evidence",), (kw, err.value)
    assert fe.sample(g, n_samples=2, burn_in=0).samples.shape == (4, g.n_variables)
    with pytest.raises(ValueError, match="not a FactorGraph|FactorGraph"):
        fe.sample("graph")


def test_evidence_on_a_latent_variable_raises():
    g = fe.FactorGraph()
    g.add_variable("y", 2)
    g.add_variable("z", 2, latent=True)
    g.add_factor(["y", "z"], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="latent"):
        fe.sample(g, evidence={"z": 1})


def test_no_finite_energy_assignment_raises():
    g = fe.FactorGraph()
    g.add_variable("a", 2)
    g.add_variable("b", 2)
    g.add_factor(["a", "b"], np.full((2, 2), np.inf))          # a forest: min_sum proves it
    for method in ("gibbs", "mh"):
        with pytest.raises(ValueError, match="finite"):
            fe.sample(g, method=method)
    # a loopy one: a triangle of "not equal" over binary variables
    t = fe.FactorGraph()
    for v in "abc":
        t.add_variable(v, 2)
    ne = np.array([[np.inf, 0.0], [0.0, np.inf]])
    for pair in (["a", "b"], ["b", "c"], ["a", "c"]):
        t.add_factor(pair, ne)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="no finite-energy assignment"):
            fe.sample(t)
    # feasible only through the evidence-free states: the evidence makes it infeasible
    h = fe.FactorGraph()
    h.add_variable("a", 2)
    h.add_variable("b", 2)
    h.add_factor(["a", "b"], [[0.0, np.inf], [np.inf, np.inf]])
    assert fe.sample(h, n_samples=5).samples.sum() == 0
    with pytest.raises(ValueError, match="finite"):
        fe.sample(h, evidence={"a": 1})


def test_bad_persistent_states_raise_and_are_left_alone():
    g = fe.FactorGraph()
    g.add_variable("a", 2)
    g.add_variable("b", 3)
    g.add_factor(["a", "b"], [[0.0, np.inf, 0.0], [0.0, 0.0, 0.0]])
    good = np.zeros((2, 2), dtype=np.int64)
    for bad in [np.zeros((2, 2), dtype=np.int32), np.zeros((2, 3), dtype=np.int64),
                np.zeros((0, 2), dtype=np.int64), np.array([[0, 3], [0, 0]]),
                np.array([[0, -1], [0, 0]]), np.zeros((2, 2), dtype=np.int64)[:, ::-1],
                [[0, 0]]]:
        with pytest.raises(ValueError, match="states"):
            sampling.sweep_chains(g, bad, 1)
    forbidden = np.array([[0, 0], [0, 1]], dtype=np.int64)
    with pytest.raises(ValueError, match="infinite energy"):
        sampling.sweep_chains(g, forbidden, 1)
    np.testing.assert_array_equal(forbidden, [[0, 0], [0, 1]])
    for kw in [dict(n_sweeps=-1), dict(beta=0), dict(method="x"), dict(seed=-2), dict(sweep=-1),
               dict(clamped=[5]), dict(clamped=[[0]]), dict(clamped=[True])]:
        with pytest.raises(ValueError):
            sampling.sweep_chains(g, good, **kw)
    with pytest.raises(ValueError, match="var_out"):
        sampling.accumulate_beliefs(g, good, np.zeros(4))
    with pytest.raises(ValueError, match="fac_out"):
        sampling.accumulate_beliefs(g, good, np.zeros(5), np.zeros(5))


# ---------------------------------------------------------------------- properties
@st.composite
def small_graphs(draw):
    seed = draw(st.integers(0, 10_000))
    return random_graph(seed, n_vars=draw(st.integers(3, 5)), with_inf=draw(st.booleans()))


@settings(max_examples=25, deadline=None)
@given(g=small_graphs(), method=st.sampled_from(["gibbs", "mh"]),
       beta=st.floats(0.05, 20.0), seed=st.integers(0, 2**32), thin=st.integers(1, 3))
def test_every_sample_is_a_finite_energy_assignment(g, method, beta, seed, thin):
    s = fe.sample(g, n_samples=20, beta=beta, method=method, burn_in=3, thin=thin, n_chains=3,
                  random_state=seed)
    cards = np.array([g.cardinality(n) for n in g.variables])
    assert s.samples.shape == (60, g.n_variables)
    assert ((s.samples >= 0) & (s.samples < cards)).all()
    assert np.isfinite(s.energies).all()
    for name in g.variables:
        m = s.marginals[name]
        assert m.shape == (g.cardinality(name),) and abs(m.sum() - 1.0) < 1e-12
    again = fe.sample(g, n_samples=20, beta=beta, method=method, burn_in=3, thin=thin,
                      n_chains=3, random_state=seed)
    np.testing.assert_array_equal(s.samples, again.samples)
    assert 0.0 <= s.acceptance_rate <= 1.0


# ---------------------------------------------------------------------- continuous MH
def test_metropolis_hastings_samples_a_normal():
    xs, rate = sampling.metropolis_hastings(lambda x: -0.5 * float(x @ x), [3.0, -3.0], 20_000,
                                            proposal_scale=1.5, random_state=0)
    assert xs.shape == (20_000, 2)
    kept = xs[2000:]
    np.testing.assert_allclose(kept.mean(0), 0.0, atol=0.1)
    np.testing.assert_allclose(kept.var(0), 1.0, atol=0.12)
    assert 0.2 < rate < 0.7
    again, rate2 = sampling.metropolis_hastings(lambda x: -0.5 * float(x @ x), [3.0, -3.0],
                                                20_000, proposal_scale=1.5, random_state=0)
    np.testing.assert_array_equal(xs, again)
    # a support boundary: proposals outside have density 0 and are never accepted
    xs, _ = sampling.metropolis_hastings(lambda x: -x[0] if x[0] > 0 else -np.inf, 1.0, 2000,
                                         random_state=1)
    assert xs.shape == (2000, 1) and (xs > 0).all()


def test_metropolis_hastings_bad_input_raises():
    ok = lambda x: -0.5 * float(x @ x)  # noqa: E731
    with pytest.raises(ValueError, match="NaN|nan"):
        sampling.metropolis_hastings(lambda x: np.nan if x[0] > 0.5 else 0.0, [0.0], 500,
                                     random_state=0)
    with pytest.raises(ValueError, match="x0"):
        sampling.metropolis_hastings(lambda x: np.nan, [0.0], 10)
    with pytest.raises(ValueError, match="outside the support"):
        sampling.metropolis_hastings(lambda x: -np.inf, [0.0], 10)
    with pytest.raises(ValueError, match="float"):
        sampling.metropolis_hastings(lambda x: "high", [0.0], 10)
    for args, kw in [((ok, [0.0], 0), {}), ((ok, [0.0], 2.5), {}), ((ok, [], 10), {}),
                     ((ok, [np.inf], 10), {}), ((ok, [[0.0]], 10), {}), ((None, [0.0], 10), {}),
                     ((ok, [0.0], 10), dict(proposal_scale=0.0)),
                     ((ok, [0.0, 1.0], 10), dict(proposal_scale=[1.0, 2.0, 3.0])),
                     ((ok, [0.0], 10), dict(proposal_scale="big"))]:
        with pytest.raises(ValueError):
            sampling.metropolis_hastings(*args, **kw)


def test_metropolis_hastings_example_recovers_sigma():
    example = os.path.join(os.path.dirname(__file__), os.pardir, "examples",
                           "metropolis_hastings.py")
    r = subprocess.run([sys.executable, example], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("sigma"))
    estimate = float(line.split("estimate")[1].split()[0])
    assert abs(estimate - 3.0) < 0.25
    assert "accepted" in r.stdout and "burn-in" in r.stdout
