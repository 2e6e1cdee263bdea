"""The shared checks: one rule for threads, beta, offsets and labels (factorebm.checks)."""
import numpy as np
import pytest

import factorebm as fe
from factorebm import checks


def test_threads_none_means_all_cores_and_size_rule():
    assert checks.check_threads(None) is None
    assert checks.threads_for(None) == checks.available_cores()
    assert checks.threads_for(None, n_items=10) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_threads_refuses_non_positive_or_non_integer(bad):
    with pytest.raises(ValueError, match="n_threads"):
        checks.check_threads(bad)


@pytest.mark.parametrize("huge", [400, 10**6, 2**62])
def test_huge_thread_requests_are_clamped_to_the_cores(huge):
    assert checks.check_threads(huge) == checks.available_cores()
    # every kernel entry point takes them without crashing (libgomp aborted at 400 threads)
    U = np.random.default_rng(0).standard_normal((50, 3))
    labels, _ = fe.chain.viterbi(U, np.zeros((3, 3)), [0, 20, 50], n_threads=huge)
    assert labels.shape == (50,)
    g = fe.FactorGraph()
    g.add_variable("a", 2)
    g.add_variable("b", 2)
    g.add_factor(["a", "b"], np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert fe.min_sum(g, n_threads=huge).energy == 0.0


def test_omp_num_threads_lowers_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert checks.available_cores() == 1


@pytest.mark.parametrize("bad", [0, -1.0, np.inf, np.nan, True, "1", [1.0]])
def test_beta(bad):
    with pytest.raises(ValueError, match="beta"):
        checks.check_beta(bad)


def test_offsets_and_labels():
    assert checks.check_offsets([0, 2, 5], 5).dtype == np.int64
    with pytest.raises(ValueError, match="non-decreasing"):
        checks.check_offsets([0, 3, 2, 5], 5)
    with pytest.raises(ValueError, match="start at 0"):
        checks.check_offsets([1, 5], 5)
    with pytest.raises(ValueError, match="integer"):
        checks.check_offsets([0.0, 5.0], 5)
    with pytest.raises(ValueError, match=r"y\[1\] = 3"):
        checks.check_labels([0, 3], 2, 3)
