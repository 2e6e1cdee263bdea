"""The x86-64-v3 (AVX2 + FMA) build of the chain kernels against the portable build.

Both come from the same Cython source (see setup.py, factorebm._isa); this checks that the
dispatch picks the wide build where it can, and that the two agree on random batches (FMA
contraction changes roundings, so energies agree to ~1e-12, not bit for bit).
"""
import importlib

import numpy as np
import pytest

import factorebm as fe
from factorebm import _isa

try:
    _V3 = importlib.import_module("factorebm._chain_v3")
except ImportError:     # not built (another architecture or compiler)
    _V3 = None
_BASE = importlib.import_module("factorebm._chain")


def test_dispatch_follows_the_cpu(monkeypatch):
    monkeypatch.delenv("FACTOREBM_ISA", raising=False)
    expected = _V3 if (_V3 is not None and _isa.has_x86_64_v3()) else _BASE
    assert _isa.kernel_module("_chain") is expected
    monkeypatch.setenv("FACTOREBM_ISA", "baseline")
    assert _isa.kernel_module("_chain") is _BASE


def _batch(seed, K=17, n=60):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 30, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    U = rng.normal(scale=2.0, size=(N, K))
    U[rng.random(U.shape) < 0.05] = np.inf
    T = rng.normal(size=(K, K))
    return U, T, offsets, rng.normal(size=K), rng.normal(size=K), rng.integers(0, K, size=N)


@pytest.mark.skipif(_V3 is None or not _isa.has_x86_64_v3(),
                    reason="the x86-64-v3 build is not available on this machine")
@pytest.mark.parametrize("seed", range(4))
def test_wide_build_agrees_with_the_portable_one(monkeypatch, seed):
    U, T, offsets, start, end, gold = _batch(seed)
    results = {}
    for name, module in (("v3", _V3), ("base", _BASE)):
        monkeypatch.setattr(fe.chain, "_chain", module)
        results[name] = (
            fe.chain.viterbi(U, T, offsets, start, end),
            fe.chain.forward_backward(U, T, offsets, 0.7, start, end, return_pairwise=True),
            fe.chain.min_marginals(U, T, offsets, start, end),
            fe.chain.most_offending(U, T, offsets, gold, start, end),
            fe.chain.kbest(U, T, offsets, 3, start, end),
        )
    for a, b in zip(results["v3"], results["base"]):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-11)


@pytest.mark.skipif(not _isa.has_x86_64_v3(), reason="no x86-64-v3 CPU")
def test_wide_optimizer_kernels_train_the_same_weights(monkeypatch):
    # factorebm._optim_v3 (AdaGrad rows, lazy proximal catch-up) against the portable build,
    # through a whole mini-batch training run with L2 and L1
    from factorebm.learning import LinearChainEnergy
    from factorebm.optimize import fit_chain
    try:
        importlib.import_module("factorebm._optim_v3")
    except ImportError:
        pytest.skip("the x86-64-v3 build of _optim is not available")
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    N, F, K = 400, 60, 5
    X = sp.random(N, F, density=0.1, format="csr", random_state=1)
    X.data[:] = 1.0
    offsets = np.arange(0, N + 1, 8, dtype=np.int64)
    y = rng.integers(0, K, size=N)
    model = LinearChainEnergy(F, K, n_substates=2)
    kw = dict(loss="nll", optimizer="adagrad", max_iter=3, batch_size=4, l1=1e-3, l2=1e-2,
              verbose=False, random_state=0)
    monkeypatch.delenv("FACTOREBM_ISA", raising=False)
    w_wide, _ = fit_chain(model, X, offsets, y, **kw)
    monkeypatch.setenv("FACTOREBM_ISA", "baseline")
    w_base, _ = fit_chain(model, X, offsets, y, **kw)
    np.testing.assert_allclose(w_wide, w_base, rtol=1e-9, atol=1e-12)
