"""FactorGraph: building, validation errors, energies, networkx interop, table updates."""
import itertools
import warnings

import networkx as nx
import numpy as np
import pytest

import factorebm as fe
from factorebm.exhaustive import exhaustive_inference, exhaustive_most_offending

from test_bp_support import random_forest


def small_graph():
    g = fe.FactorGraph()
    g.add_variable("a", 3)
    g.add_variable("b", ["NOUN", "VERB"])
    g.add_variable("z", 2, latent=True)
    g.add_factor(["a"], np.array([0.0, 1.0, 2.0]))
    g.add_factor(["a", "b", "z"], np.arange(12.0).reshape(3, 2, 2))
    return g


def test_building_and_reading():
    g = small_graph()
    assert g.variables == ["a", "b", "z"]
    assert g.visible_variables == ["a", "b"] and g.latent_variables == ["z"]
    assert g.cardinality("b") == 2 and g.labels("b") == ("NOUN", "VERB") and g.labels("a") == (0, 1, 2)
    assert g.is_latent("z") and not g.is_latent("a")
    assert g.n_factors == 2 and g.factor_scope(1) == ("a", "b", "z")
    assert len(g) == 3 and "a" in g and "q" not in g
    assert "3 variables" in repr(g) and "2 factors" in repr(g)
    # E = unary[a] + table[a, b, z], labels by name or index
    assert g.energy({"a": 2, "b": "VERB", "z": 0}) == 2.0 + 10.0
    assert g.energy({"a": 1, "b": 0, "z": 1}) == 1.0 + 5.0
    with pytest.raises(ValueError):
        g.factor_energies(0)[0] = 5.0          # tables are read-only


def test_energy_matches_tables_on_random_graphs():
    for seed in range(10):
        g = random_forest(seed, inf_prob=0.2)
        for states in itertools.islice(itertools.product(*[range(g.cardinality(n)) for n in g.variables]), 50):
            a = dict(zip(g.variables, states))
            want = sum(t[tuple(a[n] for n in s)] for s, t in g.factors)
            assert g.energy(a) == want
            assert g.compile().energies_of(np.array(states, dtype=np.int64)) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("build, exc, words", [
    (lambda g: g.add_variable("a", 2), ValueError, ["duplicate", "'a'"]),
    (lambda g: g.add_variable("q", 0), ValueError, ["'q'"]),
    (lambda g: g.add_variable("q", ["x", "x"]), ValueError, ["'q'", "duplicate label"]),
    (lambda g: g.add_variable("q", "abc"), ValueError, ["'q'"]),
    (lambda g: g.add_factor(["a", "nope"], np.zeros((3, 2))), KeyError, ["'nope'"]),
    (lambda g: g.add_factor(["a"], np.zeros(4)), ValueError, ["factor 2", "shape"]),
    (lambda g: g.add_factor(["a", "b"], np.zeros((2, 3))), ValueError, ["factor 2", "('a', 'b')"]),
    (lambda g: g.add_factor(["a"], np.array([0.0, np.nan, 1.0])), ValueError, ["NaN", "factor 2"]),
    (lambda g: g.add_factor(["a"], np.array([0.0, -np.inf, 1.0])), ValueError, ["-inf"]),
    (lambda g: g.add_factor(["a", "a"], np.zeros((3, 3))), ValueError, ["twice"]),
    (lambda g: g.add_factor([], np.zeros(())), ValueError, ["empty"]),
    (lambda g: g.add_factor(["a"], ["x", "y", "z"]), ValueError, ["factor 2"]),
    (lambda g: g.set_factor_energies(1, np.zeros((3, 2))), ValueError, ["factor 1", "shape"]),
    (lambda g: g.set_factor_energies(7, np.zeros(3)), ValueError, ["factor 7"]),
    (lambda g: g.energy({"a": 0, "b": 0}), ValueError, ["'z'"]),
    (lambda g: g.energy({"a": 0, "b": 0, "z": 0, "w": 1}), KeyError, ["'w'"]),
    (lambda g: g.energy({"a": 3, "b": 0, "z": 0}), ValueError, ["'a'", "out of range"]),
    (lambda g: g.energy({"a": 0, "b": "ADJ", "z": 0}), ValueError, ["'b'", "ADJ"]),
    (lambda g: g.cardinality("w"), KeyError, ["'w'"]),
    (lambda g: fe.min_sum(g, evidence={"a": 5}), ValueError, ["'a'", "out of range"]),
    (lambda g: fe.min_sum(g, evidence={"w": 0}), KeyError, ["'w'"]),
    (lambda g: fe.sum_product(g, evidence={"b": "ADJ"}), ValueError, ["'b'"]),
    (lambda g: fe.sum_product(g, beta=0.0), ValueError, ["beta"]),
    (lambda g: fe.sum_product(g, beta=-1.0), ValueError, ["beta"]),
    (lambda g: fe.sum_product(g, beta=np.inf), ValueError, ["beta"]),
    (lambda g: fe.sum_product(g, beta=float("nan")), ValueError, ["beta"]),
    (lambda g: fe.free_energy(g, beta=0), ValueError, ["beta"]),
    (lambda g: fe.min_sum(g, damping=1.0), ValueError, ["damping"]),
    (lambda g: fe.min_sum(g, max_iter=0), ValueError, ["max_iter"]),
    (lambda g: fe.min_sum(g, tol=-1.0), ValueError, ["tol"]),
    (lambda g: fe.most_offending(g, {"a": 0}), ValueError, ["'b'"]),
    (lambda g: fe.most_offending(g, {"a": 0, "b": 0, "z": 1}), ValueError, ["'z'", "latent"]),
    (lambda g: fe.most_offending(g, {"a": 0, "b": 0, "w": 1}), KeyError, ["'w'"]),
    (lambda g: fe.min_sum("not a graph"), ValueError, ["FactorGraph"]),
    # evidence never names a latent variable (API.md: latent variables are never observed)
    (lambda g: fe.min_sum(g, evidence={"a": 0, "z": 1}), ValueError, ["'z'", "is latent", "never observed"]),
    (lambda g: fe.sum_product(g, evidence={"z": 0}), ValueError, ["'z'", "is latent", "never observed"]),
    (lambda g: fe.free_energy(g, beta=2.0, evidence={"z": 0}), ValueError, ["'z'", "is latent"]),
    (lambda g: exhaustive_inference(g, evidence={"z": 0}), ValueError, ["'z'", "is latent"]),
    (lambda g: exhaustive_most_offending(g, {"a": 0, "b": 0, "z": 0}), ValueError, ["'z'", "is latent"]),
    # energies must be real numbers; latent a bool; n_threads an int
    (lambda g: g.add_factor(["a"], np.array([0.0, 1j, 1.0])), ValueError, ["factor 2", "complex"]),
    (lambda g: g.add_factor(["a"], [0.0, 1 + 0j, 1.0]), ValueError, ["factor 2", "complex"]),
    (lambda g: g.add_factor(["a"], np.array([0.0, 2j, 1.0], dtype=object)), ValueError, ["complex"]),
    (lambda g: g.set_factor_energies(0, np.zeros(3, dtype=complex)), ValueError, ["factor 0", "complex"]),
    (lambda g: g.add_factor(["a"], [0.0, None, 1.0]), ValueError, ["factor 2", "numeric", "None"]),
    (lambda g: g.add_factor(["a"], np.array([0.0, "x", None], dtype=object)), ValueError, ["numeric"]),
    (lambda g: g.add_variable("q", 2, latent="no"), ValueError, ["'q'", "latent", "bool"]),
    (lambda g: g.add_variable("q", 2, latent=1), ValueError, ["'q'", "latent", "bool"]),
    (lambda g: g.add_variable("q", 2, latent=None), ValueError, ["'q'", "latent"]),
    (lambda g: fe.min_sum(g, n_threads=True), ValueError, ["n_threads"]),
    (lambda g: fe.sum_product(g, n_threads=np.bool_(True)), ValueError, ["n_threads"]),
    (lambda g: fe.sum_product(g, n_threads=0), ValueError, ["n_threads"]),
    (lambda g: fe.min_sum(g, max_iter=True), ValueError, ["max_iter"]),
])
def test_bad_input_raises_documented_error(build, exc, words):
    g = small_graph()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # an error, not a warning (e.g. ComplexWarning)
        with pytest.raises(exc) as info:
            build(g)
    for w in words:
        assert w in str(info.value)


def test_valid_inputs_near_the_rejected_ones_are_accepted():
    g = small_graph()
    g.add_variable("q", 2, latent=np.bool_(True))
    g.add_variable("r", 2, latent=np.bool_(False))
    assert g.latent_variables == ["z", "q"]
    g.add_factor(["q"], np.array([1, 2], dtype=np.int32))
    g.add_factor(["r"], np.array([0.5, np.float32(1.5)], dtype=object))
    g.add_factor(["q", "r"], [[True, False], [0, np.inf]])
    assert g.factor_energies(2).dtype == np.float64 and g.factor_energies(3).tolist() == [0.5, 1.5]
    assert fe.min_sum(g, n_threads=np.int64(2)).energy == exhaustive_inference(g).energy
    assert fe.min_sum(g, evidence={"b": "VERB"}).energy == exhaustive_inference(g, evidence={"b": 1}).energy


def test_no_finite_assignment_is_a_clear_error():
    g = fe.FactorGraph()
    g.add_variable("a", 2)
    g.add_variable("b", 2)
    g.add_factor(["a", "b"], np.array([[np.inf, 0.0], [np.inf, np.inf]]))
    assert fe.min_sum(g).energy == 0.0              # a=0, b=1 is the one allowed state
    for call in (lambda: fe.min_sum(g, evidence={"a": 1}), lambda: fe.sum_product(g, evidence={"b": 0}),
                 lambda: fe.free_energy(g, evidence={"a": 1})):
        with pytest.raises(ValueError, match="finite energy"):
            call()
    g.add_factor(["b"], np.array([0.0, np.inf]))
    with pytest.raises(ValueError, match="finite energy"):
        fe.min_sum(g)
    # all variables clamped to a forbidden combination: the factor belief says so
    h = fe.FactorGraph()
    h.add_variable("a", 2)
    h.add_variable("b", 2)
    h.add_factor(["a", "b"], np.array([[np.inf, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="finite energy"):
        fe.sum_product(h, evidence={"a": 0, "b": 0})
    assert fe.free_energy(h, evidence={"a": 0, "b": 1}) == 0.0


def test_set_factor_energies_keeps_structure_and_updates_results():
    g = random_forest(3, n_vars=5, inf_prob=0.0)
    while g.n_factors < 2:
        g.add_factor([g.variables[0]], np.zeros(g.cardinality(g.variables[0])))
    cg = g.compile()
    rng = np.random.default_rng(0)
    for f in range(g.n_factors):
        g.set_factor_energies(f, rng.normal(size=g.factor_energies(f).shape))
    assert g.compile() is cg                         # structure kept, tables refreshed
    ref = exhaustive_inference(g, beta=1.0)
    assert abs(fe.min_sum(g).energy - ref.energy) <= 1e-9 * max(1, abs(ref.energy))
    assert abs(fe.free_energy(g) - ref.free_energy) <= 1e-9 * max(1, abs(ref.free_energy))
    g.add_variable("new", 2)
    assert g.compile() is not cg                     # structure changed: recompiled


def test_copy_is_independent():
    g = small_graph()
    h = g.copy()
    h.add_variable("c", 2)
    h.set_factor_energies(0, np.array([5.0, 5.0, 5.0]))
    assert g.variables == ["a", "b", "z"]
    assert g.factor_energies(0)[2] == 2.0 and h.factor_energies(0)[2] == 5.0
    assert fe.min_sum(h).energy == fe.min_sum(g).energy + 5.0


def test_label_names_in_results_and_evidence():
    g = small_graph()
    r = fe.min_sum(g, evidence={"b": "VERB"})
    assert r.assignment["b"] == 1
    assert g.label_of("b", r.assignment["b"]) == "VERB"
    assert r.energy == exhaustive_inference(g, evidence={"b": 1}).energy


def _mrf(seed):
    rng = np.random.default_rng(seed)
    G = nx.cycle_graph(5)
    G.add_edge(0, 5)
    for n in G.nodes:
        G.nodes[n]["energy"] = rng.normal(size=2 + n % 3)
    G.nodes[5]["latent"] = True
    for u, v in G.edges:
        G.edges[u, v]["energy"] = rng.normal(size=(2 + u % 3, 2 + v % 3))
        G.edges[u, v]["scope"] = (u, v)
    return G


def test_from_networkx_pairwise_mrf():
    G = _mrf(0)
    g = fe.FactorGraph.from_networkx(G)
    assert g.variables == list(G.nodes) and g.latent_variables == [5]
    assert g.n_factors == G.number_of_nodes() + G.number_of_edges()
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = {n: int(rng.integers(g.cardinality(n))) for n in g.variables}
        want = (sum(G.nodes[n]["energy"][a[n]] for n in G.nodes)
                + sum(d["energy"][a[u], a[v]] for u, v, d in G.edges(data=True)))
        assert g.energy(a) == pytest.approx(want, rel=1e-12)
    bad = _mrf(0)
    del bad.edges[0, 1]["energy"]
    with pytest.raises(ValueError, match=r"edge \(0, 1\)"):
        fe.FactorGraph.from_networkx(bad)
    bad = _mrf(0)
    bad.edges[1, 2]["energy"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="shape"):
        fe.FactorGraph.from_networkx(bad)
    bad = _mrf(0)
    del bad.nodes[3]["energy"]
    with pytest.raises(ValueError, match="node 3"):
        fe.FactorGraph.from_networkx(bad)
    bad.nodes[3]["n_states"] = 2
    assert fe.FactorGraph.from_networkx(bad).cardinality(3) == 2


def _written_b_first():
    """The audit's case: node b is inserted first, the edge is written ("a", "b")."""
    G = nx.Graph()
    G.add_node("b", energy=np.zeros(2))
    G.add_node("a", energy=np.zeros(2))
    G.add_edge("a", "b", energy=np.array([[0.0, 1.0], [5.0, 0.0]]))
    return G


def test_from_networkx_edge_axis_order():
    G = _written_b_first()
    assert list(G.edges) == [("b", "a")]          # networkx yields it in node insertion order
    # undirected, no stated axis order, a table that is not symmetric: refused, naming the edge
    with pytest.raises(ValueError, match=r"edge \('b', 'a'\).*not symmetric.*'scope'"):
        fe.FactorGraph.from_networkx(G)
    # the stated axis order is honoured, whichever way round it is given
    G.edges["a", "b"]["scope"] = ("a", "b")
    assert fe.FactorGraph.from_networkx(G).energy({"a": 1, "b": 0}) == 5.0
    G.edges["a", "b"]["scope"] = ("b", "a")
    G.edges["a", "b"]["energy"] = np.array([[0.0, 5.0], [1.0, 0.0]])
    assert fe.FactorGraph.from_networkx(G).energy({"a": 1, "b": 0}) == 5.0
    G.edges["a", "b"]["axes"] = ["a", "b"]
    G.edges["a", "b"]["energy"] = np.array([[0.0, 1.0], [5.0, 0.0]])
    assert fe.FactorGraph.from_networkx(G, edge_scope="axes").energy({"a": 1, "b": 0}) == 5.0
    for bad in (("a", "c"), ("a",), ("a", "b", "a"), "ab"):
        G.edges["a", "b"]["scope"] = bad
        with pytest.raises(ValueError, match=r"edge \('b', 'a'\).*'scope' must be the pair"):
            fe.FactorGraph.from_networkx(G)
    # a DiGraph's direction gives the axes: u -> v means (u, v)
    D = nx.DiGraph()
    D.add_node("b", energy=np.zeros(2))
    D.add_node("a", energy=np.zeros(2))
    D.add_edge("a", "b", energy=np.array([[0.0, 1.0], [5.0, 0.0]]))
    assert fe.FactorGraph.from_networkx(D).energy({"a": 1, "b": 0}) == 5.0
    D.add_edge("b", "a", energy=np.array([[0.0, 1.0], [5.0, 0.0]]))       # b = 1, a = 0 costs 5
    assert fe.FactorGraph.from_networkx(D).energy({"a": 1, "b": 0}) == 6.0
    # symmetric tables need no axis order; non-square ones always do
    G = _written_b_first()
    G.edges["a", "b"]["energy"] = np.array([[0.0, 3.0], [3.0, np.inf]])
    g = fe.FactorGraph.from_networkx(G)
    assert g.energy({"a": 1, "b": 0}) == g.energy({"a": 0, "b": 1}) == 3.0
    G.add_node("c", n_states=3)
    G.add_edge("a", "c", energy=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"edge \('a', 'c'\).*not symmetric"):
        fe.FactorGraph.from_networkx(G)
    G.edges["a", "c"]["energy"] = np.zeros((3, 3))                    # wrong shape: reported as such
    with pytest.raises(ValueError, match="shape"):
        fe.FactorGraph.from_networkx(G)
    G.edges["a", "c"]["energy"] = np.full((2, 3), np.nan)
    G.edges["a", "c"]["scope"] = ("a", "c")
    with pytest.raises(ValueError, match="NaN"):
        fe.FactorGraph.from_networkx(G)


def test_from_networkx_latent_must_be_a_bool():
    G = _written_b_first()
    G.edges["a", "b"]["scope"] = ("a", "b")
    G.nodes["a"]["latent"] = "no"
    with pytest.raises(ValueError, match="'a'.*latent"):
        fe.FactorGraph.from_networkx(G)
    G.nodes["a"]["latent"] = np.bool_(True)
    assert fe.FactorGraph.from_networkx(G).latent_variables == ["a"]


def test_from_networkx_tells_an_mrf_from_the_bipartite_layout():
    # a plain MRF whose nodes all carry kind="variable" is read as an MRF
    G = _written_b_first()
    G.edges["a", "b"]["scope"] = ("a", "b")
    for n in G.nodes:
        G.nodes[n]["kind"] = "variable"
    g = fe.FactorGraph.from_networkx(G)
    assert g.variables == ["b", "a"] and g.n_factors == 3 and g.energy({"a": 1, "b": 0}) == 5.0
    # a graph without factors round-trips through either reading
    h = fe.FactorGraph()
    h.add_variable("x", ["u", "v"])
    h.add_variable("y", 3, latent=True)
    back = fe.FactorGraph.from_networkx(h.to_networkx())
    assert back.variables == ["x", "y"] and back.labels("x") == ("u", "v")
    assert back.latent_variables == ["y"] and back.n_factors == 0
    # the bipartite layout with a broken node: a clear error naming it
    B = small_graph().to_networkx()
    del B.nodes[("factor", 1)]["scope"]
    with pytest.raises(ValueError, match=r"factor node \('factor', 1\).*'scope'"):
        fe.FactorGraph.from_networkx(B)
    B = small_graph().to_networkx()
    del B.nodes["a"]["n_states"]
    with pytest.raises(ValueError, match="node 'a'.*'n_states' or 'labels'"):
        fe.FactorGraph.from_networkx(B)
    B = small_graph().to_networkx()
    B.add_node("w", n_states=2)
    with pytest.raises(ValueError, match="node 'w' has kind None"):
        fe.FactorGraph.from_networkx(B)


def test_to_networkx_bipartite_and_round_trip():
    g = small_graph()
    B = g.to_networkx()
    assert nx.is_bipartite(B)
    var_nodes = [n for n, d in B.nodes(data=True) if d["kind"] == "variable"]
    fac_nodes = [n for n, d in B.nodes(data=True) if d["kind"] == "factor"]
    assert var_nodes == ["a", "b", "z"] and fac_nodes == [("factor", 0), ("factor", 1)]
    assert set(B[("factor", 1)]) == {"a", "b", "z"} and set(B["a"]) == {("factor", 0), ("factor", 1)}
    for seed in range(5):
        g = fe.FactorGraph.from_networkx(_mrf(seed)) if seed % 2 else random_forest(seed, inf_prob=0.2)
        h = fe.FactorGraph.from_networkx(g.to_networkx())
        assert h.variables == g.variables and h.latent_variables == g.latent_variables
        assert [h.labels(n) for n in h.variables] == [g.labels(n) for n in g.variables]
        for (s1, t1), (s2, t2) in zip(g.factors, h.factors):
            assert s1 == s2
            np.testing.assert_array_equal(t1, t2)
        assert fe.min_sum(h).energy == fe.min_sum(g).energy
