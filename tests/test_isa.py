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
