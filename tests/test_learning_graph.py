"""Parametric factor graphs: objective vs brute force, gradients, and the tutorial's linear
machines (logistic regression, multiclass SVM, perceptron) as single-node graphs."""
import itertools
import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
from scipy.special import logsumexp

import factorebm as fe
from factorebm import losses
from factorebm.learning import ParametricGraph, graph_objective, tied_phi
from factorebm.optimize import fit_graphs
from test_optimize import collins_perceptron

# square_square's margin 6.0 lies inside the range of E- of the positive instances, so its
# push-up term max(0, m - E-)^2 is active for some samples (see the guard test below).
SQ_MARGIN = 6.0
LOSSES = [("nll", {}), ("hinge", {"margin": 1.0}), ("log", {}), ("mce", {}),
          ("perceptron", {}), ("energy", {}), ("square_square", {"margin": SQ_MARGIN}),
          ("square_exp", {"gamma": 0.5}), ("lvq2", {"delta": 1.0})]


def _tree(latent, seed):
    """a - b - c tree (plus a latent z hanging off c), arity 1-3 factors, zero tables."""
    g = fe.FactorGraph()
    g.add_variable("a", 3)
    g.add_variable("b", ["x", "y"])
    g.add_variable("c", 3)
    g.add_factor(["a"], np.zeros(3))
    g.add_factor(["a", "b"], np.zeros((3, 2)))
    if latent:
        g.add_variable("z", 2, latent=True)
        g.add_factor(["b", "c", "z"], np.zeros((2, 3, 2)))
    else:
        g.add_factor(["b", "c"], np.zeros((2, 3)))
    return g


def _samples(latent, seed, n_weights=7, n=4, positive=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        g = _tree(latent, seed)
        total = sum(int(np.prod([g.cardinality(v) for v in g.factor_scope(f)]))
                    for f in range(g.n_factors))
        phi = sp.random(total, n_weights, density=0.5, random_state=seed * 10 + i)
        if positive:
            phi.data[:] = rng.uniform(0.5, 1.5, phi.nnz)
            offset = np.full(total, 0.1)
        else:
            offset = None
        target = {"a": int(rng.integers(3)), "b": ["x", "y"][rng.integers(2)],
                  "c": int(rng.integers(3))}
        out.append((ParametricGraph(g, phi, offset), target))
    w = rng.uniform(0.2, 1.5, n_weights) if positive else rng.standard_normal(n_weights)
    return out, w


def _brute(samples, w, name, kw, l2, beta=1.0):
    """Independent value: enumerate every joint assignment with numpy only."""
    spec = losses.get(name)
    total = 0.0
    for pg, target in samples:
        g = pg.graph
        tables = pg.phi @ w + (0 if pg.offset is None else pg.offset)
        names = g.variables
        cards = [g.cardinality(v) for v in names]
        latent = [g.is_latent(v) for v in names]
        tgt = {v: list(g.labels(v)).index(target[v]) if not isinstance(target[v], int)
               else target[v] for v in target}
        energy = {}
        for states in itertools.product(*[range(c) for c in cards]):
            e = 0.0
            for f in range(g.n_factors):
                idx = tuple(states[names.index(v)] for v in g.factor_scope(f))
                off = pg.table_offset[f]
                e += tables[off + np.ravel_multi_index(idx, pg.table_shapes[f])]
            energy[states] = e
        vis = [i for i, lat in enumerate(latent) if not lat]
        gold = tuple(tgt[names[i]] for i in vis)

        def visible(s):
            return tuple(s[i] for i in vis)
        if spec.e_minus == "free_energy":
            e_plus = -logsumexp([-beta * e for s, e in energy.items() if visible(s) == gold]) / beta
            e_minus = -logsumexp([-beta * e for e in energy.values()]) / beta
        else:
            e_plus = min(e for s, e in energy.items() if visible(s) == gold)
            if spec.e_minus == "min_all":
                e_minus = min(energy.values())
            elif spec.e_minus == "most_offending":
                e_minus = min(e for s, e in energy.items() if visible(s) != gold)
            else:
                e_minus = None
        params = dict(kw)
        if "beta" in spec.params:
            params.setdefault("beta", beta)
        total += spec(e_plus, e_minus, **params)[0]
    return total / len(samples) + 0.5 * l2 * w @ w


@pytest.mark.parametrize("latent", [False, True])
@pytest.mark.parametrize("name,kw", LOSSES)
def test_graph_objective_matches_brute_force_and_finite_differences(latent, name, kw):
    positive = losses.get(name).needs_nonnegative
    samples, w = _samples(latent, seed=3 if latent else 4, positive=positive)
    beta = 0.6 if name == "nll" else 1.0
    v, g = graph_objective(w, samples, loss=name, l2=0.1, beta=beta, **kw)
    assert v == pytest.approx(_brute(samples, w, name, kw, 0.1, beta), rel=1e-9, abs=1e-9)
    h = 1e-6
    fd = np.array([(graph_objective(w + h * e, samples, loss=name, l2=0.1, beta=beta, **kw)[0]
                    - graph_objective(w - h * e, samples, loss=name, l2=0.1, beta=beta,
                                      **kw)[0]) / (2 * h) for e in np.eye(w.size)])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6 * max(1.0, abs(v)))


@pytest.mark.parametrize("latent", [False, True])
def test_square_square_push_up_term_is_active_in_the_gradient_check(latent):
    # Guard for the test above: some samples have E- < margin (the term max(0, m - E-)^2
    # contributes to the gradient), others E- > margin.
    samples, w = _samples(latent, seed=3 if latent else 4, positive=True)
    e_minus = []
    for pg, target in samples:
        pg.set_weights(w)
        e_minus.append(fe.most_offending(pg.graph, target)[1])
    e_minus = np.array(e_minus)
    assert 0 < np.sum(e_minus < SQ_MARGIN) < len(samples), e_minus
    # and it matters: dropping it (a margin below every E-) changes the gradient
    _, g = graph_objective(w, samples, loss="square_square", margin=SQ_MARGIN)
    _, g_off = graph_objective(w, samples, loss="square_square", margin=1e-3)
    assert np.abs(g - g_off).max() > 1e-2


def test_losses_assuming_nonnegative_energies_warn_once_on_negative_ones():
    samples, w = _samples(False, seed=4)                 # log-linear: energies of both signs
    for name, kw in [("square_square", {"margin": 1.0}), ("square_exp", {})]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graph_objective(w, samples, loss=name, **kw)
        got = [c for c in caught if issubclass(c.category, RuntimeWarning)]
        assert len(got) == 1, name
        assert "non-negative energies" in str(got[0].message) and name in str(got[0].message)
        assert got[0].filename == __file__               # points at the caller
    positive, wp = _samples(False, seed=4, positive=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("square_square", "square_exp", "lvq2", "hinge"):
            graph_objective(wp, positive, loss=name)
        graph_objective(w, samples, loss="hinge")         # no condition on the sign


def test_tied_phi_shares_weights_across_factors_and_graphs():
    # Two pairwise factors tied to one template, one unary template: the gradient of the tied
    # weights is the sum of the gradients of the untied ones.
    def chain3():
        g = fe.FactorGraph()
        for v in "abc":
            g.add_variable(v, 2)
        g.add_factor(["a"], np.zeros(2))
        g.add_factor(["a", "b"], np.zeros((2, 2)))
        g.add_factor(["b", "c"], np.zeros((2, 2)))
        return g
    phi_t, toff = tied_phi([2, 4, 4], [0, 1, 1])
    assert phi_t.shape == (10, 6) and list(toff) == [0, 2, 6]
    phi_u, _ = tied_phi([2, 4, 4], [0, 1, 2])
    rng = np.random.default_rng(0)
    w_t = rng.standard_normal(6)
    w_u = np.concatenate([w_t, w_t[2:6]])
    targets = [{"a": 0, "b": 1, "c": 1}, {"a": 1, "b": 1, "c": 0}]
    s_t = [(ParametricGraph(chain3(), phi_t), t) for t in targets]
    s_u = [(ParametricGraph(chain3(), phi_u), t) for t in targets]
    for name in ("nll", "hinge"):
        v_t, g_t = graph_objective(w_t, s_t, loss=name)
        v_u, g_u = graph_objective(w_u, s_u, loss=name)
        assert v_t == pytest.approx(v_u, rel=1e-12)
        np.testing.assert_allclose(g_t, np.concatenate([g_u[:2], g_u[2:6] + g_u[6:10]]),
                                   rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="template 1"):
        tied_phi([2, 4, 2], [0, 1, 1])


def _single_node_samples(Xf, y, K):
    """One K-state variable per sample, E(k) = w_k . x: a linear machine as a factor graph."""
    n, d = Xf.shape
    samples = []
    for x, t in zip(Xf, y):
        g = fe.FactorGraph()
        g.add_variable("y", K)
        g.add_factor(["y"], np.zeros(K))
        phi = sp.kron(sp.eye(K), sp.csr_matrix(x.reshape(1, -1)))  # row k: x in block k
        samples.append((ParametricGraph(g, phi), {"y": int(t)}))
    return samples


def _blobs(seed, n=40, d=3, K=3, sep=3.0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((K, d)) * sep
    y = rng.integers(0, K, n)
    Xf = centers[y] + rng.standard_normal((n, d))
    return Xf, y


def test_single_node_nll_is_multinomial_logistic_regression():
    Xf, y = _blobs(0, sep=1.0)
    K, d, l2 = 3, Xf.shape[1], 0.05
    samples = _single_node_samples(Xf, y, K)
    w, hist = fit_graphs(samples, loss="nll", optimizer="lbfgs", l2=l2, max_iter=500,
                         verbose=False)

    def softmax_objective(wv):
        # Independent numpy implementation: scores = -energies, P = softmax(scores).
        Wm = wv.reshape(K, d)
        energies = Xf @ Wm.T
        logp = -energies - logsumexp(-energies, axis=1, keepdims=True)
        P = np.exp(logp)
        onehot = np.eye(K)[y]
        value = -logp[np.arange(len(y)), y].mean() + 0.5 * l2 * wv @ wv
        grad = ((onehot - P).T @ Xf / len(y)).ravel() + l2 * wv
        return value, grad

    ref = scipy.optimize.minimize(softmax_objective, np.zeros(K * d), jac=True,
                                  method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(w, ref.x, rtol=1e-4, atol=1e-5)
    v_ours, _ = graph_objective(w, samples, loss="nll", l2=l2)
    assert v_ours == pytest.approx(ref.fun, rel=1e-7)
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_single_node_hinge_is_the_multiclass_svm():
    Xf, y = _blobs(1, n=30)
    K, d, l2 = 3, Xf.shape[1], 0.1
    n = len(y)
    samples = _single_node_samples(Xf, y, K)
    # Independent Crammer-Singer SVM in energy form, as a QP with slacks (SLSQP):
    # min 0.5 l2 |w|^2 + mean xi  s.t.  xi_i >= 1 + w_{y_i}.x_i - w_k.x_i (k != y_i), xi >= 0.
    cons = []
    for i in range(n):
        for k in range(K):
            if k != y[i]:
                a = np.zeros(K * d + n)
                a[y[i] * d:(y[i] + 1) * d] -= Xf[i]
                a[k * d:(k + 1) * d] += Xf[i]
                a[K * d + i] = 1.0
                cons.append(a)
    A = np.array(cons)
    qp = scipy.optimize.minimize(
        lambda z: 0.5 * l2 * z[:K * d] @ z[:K * d] + z[K * d:].mean(),
        np.concatenate([np.zeros(K * d), np.ones(n)]),
        jac=lambda z: np.concatenate([l2 * z[:K * d], np.full(n, 1.0 / n)]),
        constraints=[{"type": "ineq", "fun": lambda z: A @ z - 1.0, "jac": lambda z: A}],
        bounds=[(None, None)] * (K * d) + [(0, None)] * n, method="SLSQP",
        options={"maxiter": 500, "ftol": 1e-12})
    assert qp.success
    # Our hinge objective IS the SVM objective (evaluated at the QP optimum) ...
    v_at_qp, _ = graph_objective(qp.x[:K * d], samples, loss="hinge", l2=l2)
    assert v_at_qp == pytest.approx(qp.fun, rel=1e-6, abs=1e-8)
    # ... and training with it gets to that optimum (subgradient method: loose tolerance).
    w, _ = fit_graphs(samples, loss="hinge", optimizer="adagrad", l2=l2, max_iter=300,
                      batch_size=n, learning_rate=0.5, verbose=False, random_state=0)
    v, _ = graph_objective(w, samples, loss="hinge", l2=l2)
    assert qp.fun - 1e-6 <= v <= qp.fun * 1.03 + 1e-3


def test_single_node_perceptron_is_the_averaged_multiclass_perceptron():
    Xf, y = _blobs(2, n=40, sep=4.0)
    Xf = np.hstack([Xf, np.ones((len(y), 1))])  # bias feature
    K = 3
    # separable: an exact linear separator exists (checked with an LP, independently)
    samples = _single_node_samples(Xf, y, K)
    w0 = 0.01 * np.random.default_rng(1).standard_normal(K * Xf.shape[1])   # no ties
    w, _ = fit_graphs(samples, loss="perceptron", max_iter=100, batch_size=1, w0=w0,
                      verbose=False, random_state=0)
    # the same weights as an independent averaged multiclass perceptron: answer k's feature
    # vector is x in block k, so E(k) = w_k . x
    candidates = [np.kron(np.eye(K), x.reshape(1, -1)) for x in Xf]
    ref = collins_perceptron(candidates, y, w0, 100, 1, 1.0, 0)
    np.testing.assert_allclose(w, ref, rtol=1e-10, atol=1e-10)
    E = Xf @ w.reshape(K, -1).T
    pred = np.argmin(E, axis=1)
    lp_ok = _separable(Xf, y, K)
    assert lp_ok
    np.testing.assert_array_equal(pred, y)


def test_averaged_perceptron_averages_the_weights_after_each_step():
    # One variable, tables = w: from w0 = [0, -1] with target 0 the prediction is 1, so the
    # one step gives w1 = w0 - (e0 - e1) = [-1, 0], and the average of {w1} is w1 (Collins
    # 2002 averages w_1 .. w_T; averaging w_0 .. w_{T-1} would return w0).
    g = fe.FactorGraph()
    g.add_variable("y", 2)
    g.add_factor(["y"], np.zeros(2))
    samples = [(ParametricGraph(g, sp.eye(2)), {"y": 0})]
    w, _ = fit_graphs(samples, loss="perceptron", max_iter=1, batch_size=1, w0=[0.0, -1.0],
                      verbose=False)
    np.testing.assert_array_equal(w, [-1.0, 0.0])
    # two steps: w2 = w1 (0 is now the lowest), the average is w1
    w, _ = fit_graphs(samples, loss="perceptron", max_iter=2, batch_size=1, w0=[0.0, -1.0],
                      verbose=False)
    np.testing.assert_array_equal(w, [-1.0, 0.0])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_averaged_perceptron_equals_collins_on_a_small_graph(batch_size):
    samples, w_true = _samples(False, seed=12, n=5)
    n_weights = samples[0][0].n_weights
    # Every joint assignment of the tree as a feature vector: the indicator of its table
    # entries times Phi, enumerated with numpy.
    candidates, gold = [], []
    for pg, target in samples:
        g = pg.graph
        names = g.variables
        cards = [g.cardinality(v) for v in names]
        tgt = tuple(list(g.labels(v)).index(target[v]) if isinstance(target[v], str)
                    else target[v] for v in names)
        phi = pg.phi.toarray()
        rows = []
        states_list = list(itertools.product(*[range(c) for c in cards]))
        for states in states_list:
            ind = np.zeros(phi.shape[0])
            for f in range(g.n_factors):
                idx = tuple(states[names.index(v)] for v in g.factor_scope(f))
                ind[pg.table_offset[f] + np.ravel_multi_index(idx, pg.table_shapes[f])] = 1.0
            rows.append(ind @ phi)
        candidates.append(np.array(rows))
        gold.append(states_list.index(tgt))
    w0 = np.random.default_rng(2).standard_normal(n_weights)
    w, _ = fit_graphs(samples, loss="perceptron", max_iter=4, batch_size=batch_size, w0=w0,
                      verbose=False, random_state=5)
    ref = collins_perceptron(candidates, gold, w0, 4, batch_size, 1.0, 5)
    np.testing.assert_allclose(w, ref, rtol=1e-12, atol=1e-12)
    assert not np.allclose(w, w0)


def _separable(Xf, y, K):
    n, d = Xf.shape
    rows = []
    for i in range(n):
        for k in range(K):
            if k != y[i]:
                a = np.zeros(K * d)
                a[y[i] * d:(y[i] + 1) * d] += Xf[i]
                a[k * d:(k + 1) * d] -= Xf[i]
                rows.append(a)
    res = scipy.optimize.linprog(np.zeros(K * d), A_ub=np.array(rows), b_ub=-np.ones(len(rows)),
                                 bounds=[(None, None)] * (K * d))
    return res.status == 0


@pytest.mark.parametrize("optimizer,loss", [("lbfgs", "nll"), ("adagrad", "hinge"),
                                            ("sgd", "log"), ("perceptron", "perceptron"),
                                            ("adagrad", "mce")])
def test_fit_graphs_lowers_the_objective(optimizer, loss):
    samples, w_true = _samples(True, seed=11, n=6)
    # learnable targets: the minimum-energy answers under some true weights
    samples = [(pg, _map_target(pg, 3.0 * w_true)) for pg, _ in samples]
    w0 = np.zeros(samples[0][0].n_weights)
    l2 = 0.0 if optimizer == "perceptron" else 0.01
    v0, _ = graph_objective(w0 + 0.01, samples, loss=loss, l2=l2)
    w, hist = fit_graphs(samples, loss=loss, optimizer=optimizer, l2=l2, max_iter=20,
                         w0=w0 + 0.01, verbose=False, random_state=0)
    v1, _ = graph_objective(w, samples, loss=loss, l2=l2)
    assert 1 <= len(hist) <= 20
    if loss == "perceptron":
        # the perceptron loss is positively homogeneous in w (its scale means nothing): count
        # training errors instead
        def errors(wv):
            return sum(_map_target(pg, wv) != t for pg, t in samples)
        assert errors(w) < errors(w0 + 0.01)
    else:
        assert v1 < v0


def _map_target(pg, w):
    pg.set_weights(w)
    return fe.min_sum(pg.graph).assignment


def test_parametric_graph_validation():
    g = _tree(False, 0)
    with pytest.raises(ValueError, match="phi has 5 rows"):
        ParametricGraph(g, sp.random(5, 3))
    pg = ParametricGraph(g, sp.random(15, 3, density=0.5, random_state=0))
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
        pg.set_weights(np.zeros(4))
    with pytest.raises(ValueError, match="offset must have shape"):
        ParametricGraph(g, sp.random(15, 3), offset=np.zeros(3))
    with pytest.raises(ValueError, match="visible variable 'c'"):
        graph_objective(np.zeros(3), [(pg, {"a": 0, "b": "x"})])
    with pytest.raises(ValueError, match="sample 0"):
        graph_objective(np.zeros(4), [(pg, {"a": 0, "b": "x", "c": 1})])
    with pytest.raises(ValueError, match="at least one"):
        graph_objective(np.zeros(3), [])


def test_infinite_offset_forbids_configurations():
    g = _tree(False, 0)
    offset = np.zeros(15)
    offset[3 + 0] = np.inf  # factor (a, b): a = 0, b = x forbidden
    pg = ParametricGraph(g, sp.random(15, 3, density=0.5, random_state=0), offset)
    w = np.array([0.3, -0.2, 0.5])
    target = {"a": 1, "b": "y", "c": 2}
    v, grad = graph_objective(w, [(pg, target)], loss="nll")
    assert np.isfinite(v) and np.all(np.isfinite(grad))
    assert v == pytest.approx(_brute([(pg, target)], w, "nll", {}, 0.0), rel=1e-9)
