"""The tutorial's losses: derivatives by central differences, properties, registry."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import factorebm as fe
from factorebm import losses

energies = st.floats(min_value=-20.0, max_value=20.0, allow_nan=False)
positive = st.floats(min_value=0.05, max_value=20.0, allow_nan=False)

# (name, kwargs, strategy for E+, strategy for E-)
CASES = [
    ("energy", {}, energies, energies),
    ("perceptron", {}, energies, energies),
    ("hinge", {"margin": 1.0}, energies, energies),
    ("hinge", {"margin": 2.5}, energies, energies),
    ("log", {}, energies, energies),
    ("lvq2", {"delta": 1.0}, positive, positive),
    ("lvq2", {"delta": 0.5}, positive, positive),
    ("mce", {}, energies, energies),
    ("square_square", {"margin": 1.0}, positive, positive),
    ("square_exp", {"gamma": 1.0, "beta": 1.0}, positive, positive),
    ("square_exp", {"gamma": 0.5, "beta": 2.0}, positive, positive),
    ("nll", {"beta": 1.0}, energies, energies),
]


def _kinks(name, ep, em, kw):
    """Distance of (E+, E-) to the loss's points of non-differentiability (square-square's
    max(0, m - E-)^2 has none: it is C^1, and is checked across E- = m too)."""
    if name == "hinge":
        return abs(kw["margin"] + ep - em)
    if name == "lvq2":
        r = (ep - em) / (kw["delta"] * em)
        return min(abs(r), abs(r - 1.0)) * kw["delta"] * em
    return np.inf


@pytest.mark.parametrize("name,kw,sp,sm", CASES)
def test_derivatives_match_central_differences(name, kw, sp, sm):
    func = losses.get(name)

    @settings(max_examples=60, deadline=None)
    @given(sp, sm)
    def check(ep, em):
        h = 1e-6
        assume(_kinks(name, ep, em, kw) > 1e-3)
        loss, dp, dm = func(ep, em, **kw)
        fd_p = (func(ep + h, em, **kw)[0] - func(ep - h, em, **kw)[0]) / (2 * h)
        fd_m = (func(ep, em + h, **kw)[0] - func(ep, em - h, **kw)[0]) / (2 * h)
        scale = max(1.0, abs(loss))
        assert abs(dp - fd_p) <= 1e-5 * scale
        assert abs(dm - fd_m) <= 1e-5 * scale

    check()


@pytest.mark.parametrize("name,kw,sp,sm", CASES)
def test_nan_energies_give_nan_loss_and_derivatives(name, kw, sp, sm):
    func = losses.get(name)
    for ep, em in [(np.nan, 1.0), (1.0, np.nan), (np.nan, np.nan)]:
        if name == "energy" and np.isnan(em) and not np.isnan(ep):
            continue                                     # the energy loss ignores E-
        with np.errstate(invalid="ignore"):
            out = func(ep, em, **kw)
        assert all(np.isnan(x) for x in out), (ep, em, out)
    # elementwise: only the NaN entries
    with np.errstate(invalid="ignore"):
        loss, dp, dm = func(np.array([np.nan, 0.5, 2.0]), np.array([1.0, 1.5, np.nan]), **kw)
    assert np.isnan(dp[0]) and np.isnan(dm[0]) and np.isfinite(dp[1]) and np.isfinite(dm[1])
    assert np.isnan(dm[2]) or name == "energy"


def test_nan_regression_hinge_and_lvq2():
    # hinge's [z > 0] and lvq2's [0 < r < 1] are False for NaN: they used to return 0
    assert all(np.isnan(x) for x in losses.hinge(np.nan, 1.0))
    assert all(np.isnan(x) for x in losses.lvq2(np.nan, 1.0))


@pytest.mark.parametrize("call,match", [
    (lambda: losses.hinge(1.0, 2.0, margin=0.0), "hinge: margin"),
    (lambda: losses.hinge(1.0, 2.0, margin=-1.0), "hinge: margin"),
    (lambda: losses.hinge(1.0, 2.0, margin=np.nan), "hinge: margin"),
    (lambda: losses.hinge(1.0, 2.0, margin=np.inf), "hinge: margin"),
    (lambda: losses.lvq2(1.0, 2.0, delta=0.0), "lvq2: delta"),
    (lambda: losses.lvq2(1.0, 2.0, delta=-0.5), "lvq2: delta"),
    (lambda: losses.square_square(1.0, 2.0, margin=0.0), "square_square: margin"),
    (lambda: losses.square_square(1.0, 2.0, margin=-2.0), "square_square: margin"),
    (lambda: losses.square_exp(1.0, 2.0, gamma=0.0), "square_exp: gamma"),
    (lambda: losses.square_exp(1.0, 2.0, gamma=-1.0), "square_exp: gamma"),
    (lambda: losses.square_exp(1.0, 2.0, beta=0.0), "square_exp: beta"),
    (lambda: losses.square_exp(1.0, 2.0, beta=-3.0), "square_exp: beta"),
    (lambda: losses.square_exp(1.0, 2.0, beta="1"), "square_exp: beta"),
    (lambda: losses.nll(1.0, 0.0, beta=-1.0), "nll: beta"),
    (lambda: losses.margin_loss(lambda a, b: a - b, step=0.0), "margin_loss: step"),
])
def test_loss_parameters_must_be_finite_and_positive(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_loss_parameters_raise_through_the_objective():
    from factorebm.learning import LinearChainEnergy, chain_objective
    import scipy.sparse as sp
    model = LinearChainEnergy(4, 3)
    X = sp.random(5, 4, density=0.6, random_state=0, format="csr")
    args = (np.zeros(model.n_weights), model, X, np.array([0, 2, 5]), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="hinge: margin"):
        chain_objective(*args, loss="hinge", margin=0.0)
    with pytest.raises(ValueError, match="lvq2: delta"):
        chain_objective(*args, loss="lvq2", delta=0.0)


@pytest.mark.parametrize("name,kw,sp,sm", CASES)
def test_elementwise_over_arrays_matches_scalar_calls(name, kw, sp, sm):
    rng = np.random.default_rng(0)
    ep = rng.uniform(0.1, 5.0, size=(3, 4))
    em = rng.uniform(0.1, 5.0, size=(3, 4))
    func = losses.get(name)
    loss, dp, dm = func(ep, em, **kw)
    assert loss.shape == dp.shape == dm.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            s = func(float(ep[i, j]), float(em[i, j]), **kw)
            assert all(isinstance(x, float) for x in s)
            assert s == pytest.approx((loss[i, j], dp[i, j], dm[i, j]), abs=1e-15)


@given(energies, energies)
def test_margin_losses_decrease_with_e_minus_and_increase_with_e_plus(ep, em):
    # The tutorial's condition on a generalized margin loss: dL/dE+ >= 0 >= dL/dE-.
    for name, kw in [("hinge", {}), ("log", {}), ("mce", {}), ("perceptron", {})]:
        _, dp, dm = losses.get(name)(ep, em, **kw)
        assert dp >= 0 >= dm


def test_bounded_losses_stay_in_unit_interval_and_log_does_not_overflow():
    gap = np.array([-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4])
    loss, dp, dm = losses.log(gap, np.zeros_like(gap))
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(dp))
    # log(1 + exp(z)) -> z for large z and -> exp(z) for very negative z
    assert loss[-1] == pytest.approx(1e4)
    assert loss[0] == pytest.approx(0.0, abs=1e-300)
    m, _, _ = losses.mce(gap, np.zeros_like(gap))
    assert np.all((m >= 0) & (m <= 1))
    lv, _, _ = losses.lvq2(np.array([0.5, 1.5, 30.0]), np.array([1.0, 1.0, 1.0]))
    assert np.all((lv >= 0) & (lv <= 1)) and lv[0] == 0.0 and lv[2] == 1.0


def test_perceptron_is_zero_exactly_when_correct_answer_is_lowest():
    ep = np.array([1.0, 2.0, 3.0])
    e_min = np.array([1.0, 1.0, 3.0])
    loss, dp, dm = losses.perceptron(ep, e_min)
    np.testing.assert_array_equal(loss, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(dp, 1.0)
    np.testing.assert_array_equal(dm, -1.0)


def test_energy_and_nll_derivatives_are_constant():
    ep = np.linspace(-3, 3, 7)
    _, dp, dm = losses.energy(ep)
    np.testing.assert_array_equal(dp, 1.0)
    np.testing.assert_array_equal(dm, 0.0)
    f = ep - 1.0
    loss, dp, dm = losses.nll(ep, f)
    np.testing.assert_allclose(loss, 1.0)
    np.testing.assert_array_equal(dp, 1.0)
    np.testing.assert_array_equal(dm, -1.0)


def test_nll_of_a_softmax_is_minus_log_probability():
    # Independent: three answers with energies e; F = -log sum exp(-e); P(y) = exp(-e_y)/Z.
    e = np.array([0.3, -1.2, 2.0])
    for beta in (0.5, 1.0, 3.0):
        free = -np.log(np.sum(np.exp(-beta * e))) / beta
        p = np.exp(-beta * e) / np.sum(np.exp(-beta * e))
        loss, _, _ = losses.nll(e, free, beta=beta)
        np.testing.assert_allclose(loss, -np.log(p) / beta, rtol=1e-12)


def test_margin_loss_with_and_without_derivative():
    def q(ep, em):
        return np.log1p(np.exp(ep - em))

    def dq(ep, em):
        s = 1.0 / (1.0 + np.exp(em - ep))
        return s, -s

    ep = np.array([-2.0, 0.0, 1.5])
    em = np.array([0.5, 0.1, -1.0])
    ref = losses.log(ep, em)
    for spec in (losses.margin_loss(q), losses.margin_loss(q, dq)):
        got = spec(ep, em)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
        assert spec.e_minus == "most_offending"


def test_margin_loss_finite_differences_keep_precision_at_large_energies():
    # The step scales with max(1, |E+|, |E-|) for both partials: at E+ = 1e10, E- = 0 a step
    # of 1e-6 on E- alone is below the rounding of E+ - E- (it gave dL/dE- = -1.907).
    soft = losses.margin_loss(lambda a, b: np.logaddexp(0.0, a - b))
    for ep, em in [(1e10, 0.0), (0.0, -1e10), (-3e8, 1e9), (2e3, 2e3 + 1.0)]:
        _, dp, dm = soft(np.array([ep]), np.array([em]))
        _, dp_ref, dm_ref = losses.log(ep, em)
        np.testing.assert_allclose([dp[0], dm[0]], [dp_ref, dm_ref], rtol=1e-6, atol=1e-9)


def test_margin_loss_at_infinite_energies_takes_the_limit():
    soft = losses.margin_loss(lambda a, b: np.logaddexp(0.0, a - b))
    # E- = +inf: Q is flat (0) in the limit, so both derivatives are 0 (not NaN)
    loss, dp, dm = soft(np.array([1.0, -5.0, 1e10]), np.array([np.inf, np.inf, np.inf]))
    np.testing.assert_array_equal(loss, 0.0)
    np.testing.assert_array_equal(dp, 0.0)
    np.testing.assert_array_equal(dm, 0.0)
    # E+ = -inf likewise; finite entries next to infinite ones keep their own step
    loss, dp, dm = soft(np.array([-np.inf, 0.0]), np.array([2.0, 0.0]))
    assert loss[0] == 0.0 and dp[0] == 0.0 and dm[0] == 0.0
    assert dp[1] == pytest.approx(0.5, rel=1e-8) and dm[1] == pytest.approx(-0.5, rel=1e-8)


def test_margin_loss_trains_a_chain_like_a_builtin():
    from factorebm.learning import LinearChainEnergy, chain_objective
    import scipy.sparse as sp
    rng = np.random.default_rng(3)
    X = sp.random(9, 4, density=0.6, random_state=3, format="csr")
    offsets = np.array([0, 4, 9])
    y = rng.integers(0, 3, 9)
    model = LinearChainEnergy(4, 3)
    w = rng.standard_normal(model.n_weights)
    mine = losses.margin_loss(lambda ep, em: np.logaddexp(0.0, ep - em))
    v1, g1 = chain_objective(w, model, X, offsets, y, loss=mine)
    v2, g2 = chain_objective(w, model, X, offsets, y, loss="log")
    assert v1 == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-8)


def test_registry():
    assert set(losses.available()) == {"energy", "perceptron", "hinge", "log", "lvq2", "mce",
                                       "square_square", "square_exp", "nll"}
    assert losses.get("nll").e_minus == "free_energy"
    assert losses.get("perceptron").e_minus == "min_all"
    assert losses.get("energy").e_minus is None
    for name in ("hinge", "log", "lvq2", "mce", "square_square", "square_exp"):
        assert losses.get(name).e_minus == "most_offending"
    needs = {n for n in losses.available() if losses.get(n).needs_nonnegative}
    assert needs == {"square_square", "square_exp", "lvq2"}
    assert "free energy per answer" in losses.get("energy").collapses
    # zero margin: like the perceptron, LVQ2 gives flat surfaces zero loss
    assert "no margin" in losses.get("lvq2").collapses
    assert losses.get("lvq2").collapses == losses.get("perceptron").collapses
    assert losses.lvq2(2.0, 2.0)[0] == 0.0 and losses.perceptron(2.0, 2.0)[0] == 0.0
    # square-square is C^1 (max(0, m - E-)^2 has a continuous derivative); the others with
    # a kink are not smooth
    smooth = {n for n in losses.available() if losses.get(n).smooth}
    assert smooth == {"energy", "log", "mce", "square_square", "square_exp", "nll"}
    m = 1.0
    for side in (-1e-9, 1e-9):
        assert losses.square_square(0.0, m + side, margin=m)[2] == pytest.approx(0.0, abs=1e-8)
    assert losses.get("Square-Square") is losses.get("square_square")
    spec = losses.get("hinge")
    assert losses.get(spec) is spec
    assert fe.losses.get("nll").name == "nll"


def test_registry_and_parameters_reject_bad_input():
    with pytest.raises(ValueError, match="unknown loss 'hingee'.*hinge"):
        losses.get("hingee")
    with pytest.raises(ValueError, match="a loss is a name"):
        losses.get(3)
    with pytest.raises(ValueError, match="takes no parameter.*gamma"):
        losses.get("hinge").check_params({"gamma": 1.0})
    with pytest.raises(ValueError, match="positive E-"):
        losses.lvq2(1.0, 0.0)
    with pytest.raises(ValueError, match="beta"):
        losses.nll(1.0, 0.0, beta=0.0)
    with pytest.raises(ValueError, match="callable"):
        losses.margin_loss(3.0)
