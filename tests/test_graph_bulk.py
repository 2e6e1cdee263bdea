"""Bulk building: add_variables / add_factors against the one-by-one build, errors, speed."""
import subprocess
import sys
import time

import numpy as np
import pytest

import factorebm as fe


def grid_edges(rows, cols):
    ids = np.arange(rows * cols).reshape(rows, cols)
    return np.concatenate([np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1),
                           np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1)])


def bulk_and_single(rows, cols, K, seed, shared=True, names=None):
    """The same Potts-like grid built with the bulk calls and one call per item."""
    rng = np.random.default_rng(seed)
    n = rows * cols
    names = list(range(n)) if names is None else names
    unary = rng.normal(size=(n, K))
    unary[rng.random((n, K)) < 0.1] = np.inf
    edges = grid_edges(rows, cols)
    tables = (0.7 * (1.0 - np.eye(K)) if shared else rng.normal(size=(len(edges), K, K)))
    latent = rng.random(n) < 0.2
    bulk = fe.FactorGraph()
    bulk.add_variables(names if names != list(range(n)) else n, K, latent=latent)
    name_arr = np.empty(n, dtype=object)
    name_arr[:] = names
    bulk.add_factors(name_arr[edges], tables)
    bulk.add_factors(name_arr[:, None], unary)
    single = fe.FactorGraph()
    for i in range(n):
        single.add_variable(names[i], K, latent=bool(latent[i]))
    for f, (a, b) in enumerate(edges.tolist()):
        single.add_factor([names[a], names[b]], tables if shared else tables[f])
    for i in range(n):
        single.add_factor([names[i]], unary[i])
    return bulk, single


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("names", [None, "str"])
def test_bulk_build_equals_one_by_one(shared, names):
    rows, cols, K = 3, 4, 3
    nm = None if names is None else [f"p{i}" for i in range(rows * cols)]
    bulk, single = bulk_and_single(rows, cols, K, seed=1, shared=shared, names=nm)
    assert bulk.variables == single.variables
    assert [bulk.is_latent(v) for v in bulk.variables] == [single.is_latent(v) for v in single.variables]
    assert bulk.n_factors == single.n_factors
    for (s1, t1), (s2, t2) in zip(bulk.factors, single.factors):
        assert s1 == s2
        np.testing.assert_array_equal(t1, t2)
    cb, cs = bulk.compile(), single.compile()
    for field in ("var_state_offset", "fac_index", "fac_edge_offset", "edge_var", "edge_stride",
                  "edge_msg_offset", "var_edges", "var_edge_offset", "fac_table_offset", "unary",
                  "tables", "fac_table", "unique_tables", "table_min", "fac_potts"):
        np.testing.assert_array_equal(getattr(cb, field), getattr(cs, field), err_msg=field)
    assert cb.unary_factors == cs.unary_factors and cb.factor_place == cs.factor_place
    rng = np.random.default_rng(0)
    a = {v: int(rng.integers(K)) for v in bulk.variables}
    assert bulk.energy(a) == single.energy(a)
    for kw in ({}, {"schedule": "trws"}, {"schedule": "residual", "damping": 0.3}):
        r1, r2 = fe.min_sum(bulk, **kw), fe.min_sum(single, **kw)
        assert (r1.assignment, r1.latent, r1.energy, r1.lower_bound) == \
            (r2.assignment, r2.latent, r2.energy, r2.lower_bound)
    m1, m2 = fe.sum_product(bulk, damping=0.5), fe.sum_product(single, damping=0.5)
    assert m1.free_energy == m2.free_energy
    for v in bulk.variables:
        np.testing.assert_array_equal(m1.marginals[v], m2.marginals[v])


def test_shared_table_is_stored_once_and_unshared_on_replacement():
    K = 4
    g = fe.FactorGraph()
    g.add_variables(30, K)
    edges = grid_edges(5, 6)
    potts = 1.0 - np.eye(K)
    ids = g.add_factors(edges, potts)
    assert ids == range(0, len(edges))
    assert len(g._blocks) == 1 and g._blocks[0].table.shape == (K, K)   # one table in the graph
    cg = g.compile()
    assert cg.unique_tables.size == K * K and np.all(cg.fac_potts == 1.0)
    new = np.arange(K * K, dtype=float).reshape(K, K)
    g.set_factor_energies(5, new)
    np.testing.assert_array_equal(g.factor_energies(5), new)
    for f in (4, 6):
        np.testing.assert_array_equal(g.factor_energies(f), potts)
    assert g.compile() is cg and cg.unique_tables.size == 2 * K * K
    assert cg.fac_potts[5] == -1.0 and np.all(np.delete(cg.fac_potts, 5) == 1.0)
    # the copy keeps the replacement; the original's later changes do not leak into it
    h = g.copy()
    g.set_factor_energies(5, potts)
    np.testing.assert_array_equal(h.factor_energies(5), new)
    assert g.compile().unique_tables.size == K * K


def test_add_variables_forms():
    g = fe.FactorGraph()
    g.add_variables(3, 2)
    g.add_variables(np.array(["a", "b"]), np.array([3, 4]), latent=np.array([True, False]))
    g.add_variables((("t", i) for i in range(2)), 5)   # any iterable; tuple names
    assert g.variables == [0, 1, 2, "a", "b", ("t", 0), ("t", 1)]
    assert type(g.variables[3]) is str                    # numpy names become Python objects
    assert [g.cardinality(v) for v in g.variables] == [2, 2, 2, 3, 4, 5, 5]
    assert g.latent_variables == ["a"]
    g.add_variables(0, 3)                                 # nothing to add
    assert len(g) == 7
    # tuple names in the scopes of add_factors (rows of a list)
    g.add_factors([[("t", 0), ("t", 1)]], np.zeros((5, 5)))
    assert g.factor_scope(0) == (("t", 0), ("t", 1))
    # integer scopes take the fast path only where names 0..n-1 are the ints 0..n-1
    g.add_factors(np.array([[0, 1], [1, 2]]), np.eye(2))
    assert g.factor_scope(2) == (1, 2)


@pytest.mark.parametrize("build, exc, words", [
    (lambda g: g.add_variables(["x", "x"], 2), ValueError, ["duplicate", "'x'"]),
    (lambda g: g.add_variables(["new", 1], 2), ValueError, ["duplicate", "1"]),
    (lambda g: g.add_variables([["u"]], 2), ValueError, ["not hashable"]),
    (lambda g: g.add_variables(["p", "q"], [2, 0]), ValueError, ["'q'", ">= 1"]),
    (lambda g: g.add_variables(["p", "q"], [2]), ValueError, ["n_states"]),
    (lambda g: g.add_variables(["p"], 2, latent=1), ValueError, ["latent"]),
    (lambda g: g.add_variables(-1, 2), ValueError, [">= 0"]),
    (lambda g: g.add_variables("abc", 2), ValueError, ["names"]),
    (lambda g: g.add_factors([[0, "nope"]], np.zeros((3, 3))), KeyError, ["'nope'", "factor 1"]),
    (lambda g: g.add_factors(np.array([[0, 1], [1, 7]]), np.zeros((3, 3))), KeyError, ["7", "factor 2"]),
    (lambda g: g.add_factors([[0, 1], [2, 2]], np.zeros((3, 3))), ValueError, ["factor 2", "twice"]),
    (lambda g: g.add_factors([[0, 1]], np.zeros((3, 2))), ValueError, ["shape (3, 2)", "(3, 3)"]),
    (lambda g: g.add_factors([[0, 1], [1, 2]], np.zeros((3, 3, 3))), ValueError, ["energies have shape"]),
    (lambda g: g.add_factors([[0, 1], [1, 3]], np.zeros((3, 3))), ValueError, ["factor 2", "cardinalities"]),
    (lambda g: g.add_factors([[0, 1], [1, 2]], np.where(np.arange(18).reshape(2, 3, 3) == 13, np.nan, 0.0)),
     ValueError, ["factor 2", "NaN"]),
    (lambda g: g.add_factors([[0, 1]], np.full((3, 3), -np.inf)), ValueError, ["-inf"]),
    (lambda g: g.add_factors([[0, 1]], np.full((3, 3), 1j)), ValueError, ["complex"]),
    (lambda g: g.add_factors([0, 1], np.zeros(3)), ValueError, ["2-D"]),
    (lambda g: g.add_factors([[0, 1], [2]], np.zeros((3, 3))), ValueError, ["(F, arity)"]),
    (lambda g: g.add_factors(np.zeros((2, 0), dtype=int), np.zeros(())), ValueError, ["empty"]),
])
def test_bulk_bad_input_raises_and_leaves_the_graph_unchanged(build, exc, words):
    g = fe.FactorGraph()
    g.add_variables(3, 3)
    g.add_variable(3, 2)
    g.add_factor([0, 1], np.ones((3, 3)))
    before = (g.variables, g.n_factors, g._structure_version, g._tables_version)
    with pytest.raises(exc) as info:
        build(g)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert (g.variables, g.n_factors, g._structure_version, g._tables_version) == before
    assert fe.min_sum(g).energy == 1.0


def test_bulk_grid_build_has_no_per_factor_python_loop():
    """A 300x300 Potts grid (target 0.1 s on a quiet machine; a loose bound against a return of
    Python loops per factor, which took seconds)."""
    n, K = 300, 5
    unary = np.random.default_rng(0).random((n * n, K))
    edges = grid_edges(n, n)
    t = time.perf_counter()
    g = fe.FactorGraph()
    g.add_variables(n * n, K)
    g.add_factors(np.arange(n * n)[:, None], unary)
    g.add_factors(edges, 1.0 - np.eye(K))
    build = time.perf_counter() - t
    cg = g.compile()
    total = time.perf_counter() - t
    assert g.n_factors == n * n + 2 * n * (n - 1)
    assert cg.unique_tables.size == K * K
    assert build < 1.0 and total < 3.0, (build, total)


def test_import_does_not_load_networkx():
    code = "import sys, factorebm; g = factorebm.FactorGraph(); print('networkx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_setting_all_tables_at_once_equals_setting_them_one_by_one():
    # blocks of shared and per-factor tables, single factors, mixed arities; overrides from
    # earlier one-by-one calls are replaced too
    rng = np.random.default_rng(3)
    g = fe.FactorGraph()
    g.add_variables(6, 3)
    g.add_variable("b", 2)
    g.add_factors(np.arange(6)[:, None], rng.normal(size=(6, 3)))
    g.add_factors([[0, 1], [1, 2], [2, 3]], 1.0 - np.eye(3))          # shared
    g.add_factor([3, "b"], rng.normal(size=(3, 2)))
    g.add_factors([[3, 4, 5]], rng.normal(size=(1, 3, 3, 3)))
    g.set_factor_energies(7, np.zeros((3, 3)))                        # an override
    one = g.copy()
    sizes = [np.prod([g.cardinality(v) for v in g.factor_scope(f)]) for f in range(g.n_factors)]
    flat = rng.normal(size=int(sum(sizes)))
    flat[3] = np.inf                                                 # forbidden: allowed
    g.set_all_factor_energies(flat)
    pos = 0
    for f, k in enumerate(sizes):
        one.set_factor_energies(f, flat[pos:pos + k].reshape(
            [one.cardinality(v) for v in one.factor_scope(f)]))
        pos += k
    for f in range(g.n_factors):
        np.testing.assert_array_equal(g.factor_energies(f), one.factor_energies(f))
    r0, r1 = fe.min_sum(g), fe.min_sum(one)
    assert r0.assignment == r1.assignment and r0.energy == r1.energy
    bad = flat.copy()
    bad[int(sum(sizes[:7])) + 4] = np.nan                              # in factor 7
    with pytest.raises(ValueError, match=r"factor 7 over \(1, 2\): energies contain NaN"):
        g.set_all_factor_energies(bad)
    bad[int(sum(sizes[:7])) + 4] = -np.inf
    with pytest.raises(ValueError, match=r"factor 7 over .*-inf"):
        g.set_all_factor_energies(bad)
    with pytest.raises(ValueError, match=r"hold \d+ entries, got 5"):
        g.set_all_factor_energies(np.zeros(5))
    np.testing.assert_array_equal(g.factor_energies(0), one.factor_energies(0))   # unchanged
