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


def test_a_target_naming_a_latent_variable_is_refused_not_ignored():
    # before, the label given to the latent variable was silently dropped (minimized over)
    with pytest.raises(ValueError, match="sample 1: .*variable 'h', which is latent"):
        GraphObjective([(loopy(True), TARGET), (loopy(True), {**TARGET, "h": 1})], "hinge")


def test_a_target_naming_an_unknown_variable_is_a_key_error():
    with pytest.raises(KeyError, match="sample 0: .*unknown variable 'x'"):
        GraphObjective([(loopy(), {**TARGET, "x": 0})], "nll")


@pytest.mark.parametrize("label", [True, np.True_, 1.0, np.float64(1.0), None])
def test_labels_that_are_not_state_indices_are_refused_as_by_graph_energy(label):
    # FactorGraph.energy refuses them (an integer is a state index, anything else a label
    # name); the batched targets mapped True and 1.0 to state 1
    pg = loopy()
    with pytest.raises(ValueError):
        pg.graph.energy({**TARGET, 2: label})
    with pytest.raises(ValueError, match="sample 0: .*variable 2"):
        GraphObjective([(pg, {**TARGET, 2: label})], "perceptron")
    with pytest.raises(ValueError, match="sample 0: .*variable 0"):
        GraphObjective([(pg, {0: label, 1: label, 2: label})], "perceptron")
    named = loopy(labels=["a", "b"])
    with pytest.raises(ValueError, match="sample 0: .*variable 2"):
        GraphObjective([(named, {0: "a", 1: "b", 2: label})], "perceptron")
    # the sampling learner's targets go by the same rule (its indicator took True as 1)
    with pytest.raises(ValueError):
        pg.indicator({**TARGET, 2: label})
    # and a numpy string is the label it equals, in both
    target = {0: np.str_("a"), 1: "b", 2: "a"}
    GraphObjective([(named, target)], "perceptron")
    assert named.indicator(target).sum() == named.graph.n_factors


@pytest.mark.parametrize("bad, message", [
    (np.full(5, np.nan), "NaN or infinite"), (np.r_[0.0, np.inf, 0, 0, 0], "NaN or infinite"),
    (np.ones(5) + 1j, "real"), (np.ones(4), "5 entries"), ("abcde", "5 entries"),
])
def test_weights_that_are_not_five_finite_reals_raise_naming_the_weights(bad, message):
    obj = GraphObjective([(loopy(), TARGET)], "hinge")
    for call in (obj.value_and_grad, obj.minimizers, obj.energies):
        with pytest.raises(ValueError, match=message):
            call(bad)


@pytest.mark.parametrize("units", [[1], [-1], [0.5], [[0]]])
def test_unit_numbers_out_of_range_or_not_integers_raise_a_value_error(units):
    obj = GraphObjective([(loopy(), TARGET)], "nll")
    for call in (obj.unit_value_and_grad, obj.energies, obj.minimizers):
        with pytest.raises(ValueError, match="units must be"):
            call(np.ones(5), np.asarray(units))


def _grid(H=6, W=6, K=3, seed=0):
    g = fe.FactorGraph()
    g.add_variables(H * W, K)
    edges = fe.models.grid_edges(H, W)
    g.add_factors(edges, np.random.default_rng(seed).normal(size=(len(edges), K, K)))
    return g.compile()


def test_compiled_kernels_refuse_arrays_that_do_not_fit_the_graph():
    # the kernels run without bounds checks: a unary vector, messages, a schedule or a
    # decoding order that does not fit the graph read or wrote out of bounds (garbage
    # beliefs, segfaults) before
    cg = _grid()
    plan = cg.plan([])
    S, M = cg.n_states_total, cg.n_msg
    v2f, f2v, *_ = cg.run_bp(cg.unary, plan, 1.0, True, 5)
    short, bad_type = np.zeros(2), np.zeros(S, dtype=np.float32)
    for call, name in [
            (lambda: cg.run_bp(short, plan, 1.0, True, 5), "unary"),
            (lambda: cg.run_bp(short, plan, 1.0, True, 5, schedule="residual"), "unary"),
            (lambda: cg.run_trws(short, 5), "unary"),
            (lambda: cg.beliefs(short, v2f, f2v), "unary"),
            (lambda: cg.beliefs(cg.unary, v2f[:2], f2v), "v2f"),
            (lambda: cg.beliefs(cg.unary, v2f, f2v[:-1]), "f2v"),
            (lambda: cg.factor_gibbs(v2f[:2], 1.0), "v2f"),
            (lambda: cg.variable_gibbs(short, 1.0), "var_b"),
            (lambda: cg.variable_gibbs(cg.unary, 1.0, energy=short), "energy"),
            (lambda: cg.decode(short, plan, v2f.copy(), f2v.copy(),
                               np.zeros(cg.n_vars, dtype=np.int64)), "unary"),
            (lambda: cg.decode(cg.unary, plan, v2f.copy(), f2v.copy(),
                               np.zeros(3, dtype=np.int64)), "states"),
            (lambda: cg.decode(cg.unary, plan, v2f.copy(), f2v.copy(),
                               np.zeros(cg.n_vars, dtype=np.int32)), "states"),
            (lambda: cg.decode(cg.unary, fe.compiled.Plan(False, np.full(1, -1),
                                                          np.array([0, 10 ** 9])),
                               v2f.copy(), f2v.copy(), np.zeros(cg.n_vars, dtype=np.int64)),
             "order"),
            (lambda: cg.run_bp(cg.unary, fe.compiled.Plan(True, np.array([10 ** 12, 5]),
                                                          plan.order), 1.0, True, 5),
             "schedule"),
            (lambda: cg.run_bp(bad_type.astype(complex), plan, 1.0, True, 5), "unary")]:
        with pytest.raises(ValueError, match=name):
            call()
    assert M > 2
    # what fits still runs, a float32 unary converted as before
    a = cg.run_bp(bad_type, plan, 1.0, True, 5)[0]
    np.testing.assert_array_equal(a, cg.run_bp(np.zeros(S), plan, 1.0, True, 5)[0])


def test_compiled_runs_clamp_threads_and_refuse_a_bad_beta():
    cg = _grid()
    plan = cg.plan([])
    want = cg.run_bp(cg.unary, plan, 1.0, False, 5)[0]
    np.testing.assert_array_equal(cg.run_bp(cg.unary, plan, 1.0, False, 5,
                                            n_threads=10 ** 6)[0], want)
    for n_threads in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n_threads"):
            cg.run_bp(cg.unary, plan, 1.0, False, 5, n_threads=n_threads)
    for beta in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="beta"):
            cg.run_bp(cg.unary, plan, beta, False, 5)
        with pytest.raises(ValueError, match="beta"):
            cg.factor_gibbs(want, beta)


@pytest.mark.parametrize("margin", [np.nan, -1.0, 0.0, np.inf, "x"])
def test_a_bad_margin_is_named_as_the_margin_not_as_the_hamming_weight(margin):
    # the margin is also the default Hamming weight, whose check spoke of "hamming" only
    for options in (None, {"e_minus": "most_offending"}):
        with pytest.raises(ValueError, match="margin must be a finite number > 0"):
            GraphObjective([(loopy(), TARGET)], "hinge", inference_options=options,
                           margin=margin)
    with pytest.raises(ValueError, match="margin must be a finite number > 0"):
        fe.GridCRF(2, "hinge", margin=margin)


def test_a_graph_changed_after_its_parametric_graph_was_made_is_named():
    # a factor or variable added afterwards made Phi's rows and the tables disagree: the
    # objective raised IndexError from deep in its setup
    pg = loopy()
    pg.graph.add_variable("z", 2)
    pg.graph.add_factor(["z", 0], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="sample 1: its graph has changed"):
        GraphObjective([(loopy(), TARGET), (pg, {**TARGET, "z": 0})], "hinge")


@pytest.mark.parametrize("loss", ["nll", "hinge", "perceptron"])
def test_one_objective_evaluated_from_several_threads_matches_serial_calls(loss):
    import threading
    samples = [(loopy(seed=s), {0: s % 2, 1: (s // 2) % 2, 2: 1}) for s in range(6)]
    samples += [(samples[0][0], {0: 0, 1: 1, 2: 0})]        # a shared graph
    obj = GraphObjective(samples, loss)
    rng = np.random.default_rng(3)
    ws = [rng.normal(size=5) for _ in range(4)]
    batches = [np.array([0, 2, 6]), np.arange(7), np.array([5, 1]), np.array([3])]
    want = {(a, b): obj.unit_value_and_grad(ws[a], batches[b])
            for a in range(4) for b in range(4)}
    got, errors = [], []

    def work(k):
        try:
            for j in range(8):
                a, b = (k + j) % 4, (k * j) % 4
                got.append(((a, b), obj.unit_value_and_grad(ws[a], batches[b])))
        except BaseException as exc:      # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 32
    for key, (value, grad) in got:
        assert value == want[key][0]
        np.testing.assert_array_equal(grad, want[key][1])


def test_a_max_iter_beyond_int64_is_a_value_error_not_an_overflow_error():
    g = loopy().graph
    for schedule in ("trws", "flooding", "residual"):
        with pytest.raises(ValueError, match="max_iter must be an integer"):
            fe.min_sum(g, schedule=schedule, max_iter=2 ** 63)
    with pytest.raises(ValueError, match="max_iter must be an integer"):
        fe.sum_product(g, max_iter=10 ** 30)
    with pytest.raises(ValueError, match="max_iter must be an integer"):
        fe.GridCRF(2, "hinge", inference_options={"max_iter": 10 ** 30})
    assert fe.min_sum(g, schedule="trws", max_iter=2 ** 63 - 1).energy == fe.min_sum(
        g, schedule="trws").energy
