"""One full chain objective-and-gradient evaluation at UD English EWT scale.

Synthetic corpus with EWT's shape: 204,577 tokens in ~12,500 sentences, 150,000 features with
a Zipf-like frequency, ~30 nonzero features per token (one always-on bias feature), K = 17
labels. Times ``factorebm.learning.chain_objective`` (NLL and hinge; 1 and 2 threads) and, in
the same run, a straightforward scipy.sparse + numpy implementation of the same objective
(products with scipy.sparse, forward-backward / min-marginals vectorized over the batch by
padding and looping over positions). Prints medians, seconds and microseconds per token, the
ratios, and a breakdown of factorebm's time (emission product, chain kernel, gradient product).
With ``--ewt`` it also times the tagger's factored form of the same matrix, ``X = S @ Phi``
(:meth:`factorebm.features.FeatureExtractor.factored_transform`).

    python benchmarks/bench_objective.py            # full (a minute or two)
    python benchmarks/bench_objective.py --quick    # smaller corpus, fewer repeats
    python benchmarks/bench_objective.py --ewt      # the real bundled EWT train corpus, with
                                                    # the tagger's default features
"""
import argparse
import statistics
import time

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp

import factorebm as fe
from factorebm import _sparse
from factorebm.learning import LinearChainEnergy, chain_objective


from _machine import describe  # noqa: E402  (benchmarks/_machine.py)

def machine():
    return describe()

def make_corpus(n_tokens, n_features, nnz_per_token, K, seed=0):
    rng = np.random.default_rng(seed)
    lengths = []
    total = 0
    while total < n_tokens:      # sentence lengths around EWT's mean of 16.4
        L = int(min(n_tokens - total, max(1, rng.geometric(1 / 16.4))))
        lengths.append(L)
        total += L
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Zipf-like column frequencies: P(rank r) ~ 1 / r^1.1, column 0 = bias on every token
    ranks = np.arange(1, n_features)
    cdf = np.cumsum(1.0 / ranks ** 1.1)
    cdf /= cdf[-1]
    draws = np.searchsorted(cdf, rng.random((n_tokens, nnz_per_token - 1))) + 1
    cols = np.concatenate([np.zeros((n_tokens, 1), dtype=np.int64), draws], axis=1)
    cols.sort(axis=1)
    keep = np.ones_like(cols, dtype=bool)
    keep[:, 1:] = cols[:, 1:] != cols[:, :-1]          # one entry per (token, feature)
    counts = keep.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    X = sp.csr_matrix((np.ones(int(indptr[-1])), cols[keep].astype(np.int32), indptr),
                      shape=(n_tokens, n_features))
    y = rng.integers(0, K, n_tokens)
    return X, offsets, y


# ------------------------------------------------------------------ the numpy baseline
def _pad(offsets, K, values, fill):
    """(N, ...) token rows -> (Tmax, n, ...) padded by position."""
    lengths = np.diff(offsets)
    n = lengths.size
    Tmax = int(lengths.max())
    pos = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    seq = np.repeat(np.arange(n), lengths)
    out = np.full((Tmax, n) + values.shape[1:], fill)
    out[pos, seq] = values
    return out, pos, seq


def numpy_objective(w, model, X, offsets, y, loss):
    """The same objective with scipy.sparse products and numpy recursions over positions."""
    K = model.n_labels
    W, T, S, E = model.unpack(w)
    U = X @ W
    lengths = np.diff(offsets)
    n = lengths.size
    Tmax = int(lengths.max())
    Up, pos, seq = _pad(offsets, K, U, 0.0)
    valid = np.arange(Tmax)[:, None] < lengths[None, :]          # (Tmax, n)
    last_pos = lengths - 1
    # gold energy
    e_plus = np.bincount(seq, U[np.arange(len(y)), y], minlength=n)
    inner = pos > 0
    idx = np.flatnonzero(inner)
    e_plus += np.bincount(seq[idx], T[y[idx - 1], y[idx]], minlength=n)
    first = offsets[:-1]
    e_plus += S[y[first]] + E[y[offsets[1:] - 1]]
    grad_U = np.zeros_like(U)
    grad_T = np.zeros((K, K))
    if loss == "nll":
        # log-space forward-backward, one position at a time across all sentences
        a = np.zeros((Tmax, n, K))
        a[0] = -(S + Up[0])
        for t in range(1, Tmax):
            step = logsumexp(a[t - 1][:, :, None] - T[None], axis=1) - Up[t]
            a[t] = np.where(valid[t][:, None], step, a[t - 1])
        b = np.zeros((Tmax, n, K))
        b[last_pos, np.arange(n)] = -E
        for t in range(Tmax - 2, -1, -1):
            step = logsumexp(b[t + 1][:, None, :] - Up[t + 1][:, None, :] - T[None], axis=2)
            b[t] = np.where((t < last_pos)[:, None], step, b[t])
        logZ = logsumexp(a[last_pos, np.arange(n)] - E, axis=1)
        free = -logZ
        marg_p = np.exp(a + b - logZ[None, :, None])
        marg = marg_p[pos, seq]
        pair = np.zeros((K, K))
        for t in range(1, Tmax):
            m = valid[t]
            lp = (a[t - 1][m][:, :, None] - T[None] - Up[t][m][:, None, :]
                  + b[t][m][:, None, :] - logZ[m][:, None, None])
            pair += np.exp(lp).sum(axis=0)
        losses = e_plus - free
        grad_U -= marg
        grad_U[np.arange(len(y)), y] += 1.0
        grad_T = -pair
        gS = -marg[first].sum(axis=0)
        gE = -marg[offsets[1:] - 1].sum(axis=0)
        np.add.at(grad_T, (y[idx - 1], y[idx]), 1.0)
        np.add.at(gS, y[first], 1.0)
        np.add.at(gE, y[offsets[1:] - 1], 1.0)
    else:  # hinge with the most offending incorrect sequence, from min-marginals
        a = np.zeros((Tmax, n, K))
        bpa = np.zeros((Tmax, n, K), dtype=np.int64)
        a[0] = S + Up[0]
        for t in range(1, Tmax):
            c = a[t - 1][:, :, None] + T[None]
            bpa[t] = c.argmin(axis=1)
            a[t] = np.where(valid[t][:, None], c.min(axis=1) + Up[t], a[t - 1])
        b = np.zeros((Tmax, n, K))
        bpb = np.zeros((Tmax, n, K), dtype=np.int64)
        b[last_pos, np.arange(n)] = E
        for t in range(Tmax - 2, -1, -1):
            c = T[None] + (Up[t + 1] + b[t + 1])[:, None, :]
            upd = (t < last_pos)
            bpb[t] = np.where(upd[:, None], c.argmin(axis=2), 0)
            b[t] = np.where(upd[:, None], c.min(axis=2), b[t])
        mm = a + b                                            # min-marginals (Tmax, n, K)
        gold_p, _, _ = _pad(offsets, K, y, 0)
        mm = np.where(valid[:, :, None], mm, np.inf)
        mm[np.arange(Tmax)[:, None], np.arange(n)[None, :], gold_p] = np.inf
        flat = mm.transpose(1, 0, 2).reshape(n, -1).argmin(axis=1)
        t_star, l_star = flat // K, flat % K
        e_minus = mm[t_star, np.arange(n), l_star]
        # decode the path through (t*, l*): backwards with bpa, forwards with bpb
        path = np.zeros((Tmax, n), dtype=np.int64)
        path[t_star, np.arange(n)] = l_star
        for t in range(Tmax - 1, 0, -1):
            m = t <= t_star
            prev = bpa[t, np.arange(n), path[t]]
            path[t - 1] = np.where(m & (t - 1 < t_star), prev, path[t - 1])
        for t in range(0, Tmax - 1):
            m = (t >= t_star) & (t < last_pos)
            nxt = bpb[t, np.arange(n), path[t]]
            path[t + 1] = np.where(m, nxt, path[t + 1])
        other = path[pos, seq]
        z = 1.0 + e_plus - e_minus
        losses = np.maximum(z, 0.0)
        act = (z > 0).astype(np.float64)
        at = act[seq]
        grad_U[np.arange(len(y)), y] += at
        grad_U[np.arange(len(y)), other] -= at
        gS = np.zeros(K)
        gE = np.zeros(K)
        np.add.at(grad_T, (y[idx - 1], y[idx]), at[idx])
        np.add.at(grad_T, (other[idx - 1], other[idx]), -at[idx])
        np.add.at(gS, y[first], act)
        np.add.at(gS, other[first], -act)
        np.add.at(gE, y[offsets[1:] - 1], act)
        np.add.at(gE, other[offsets[1:] - 1], -act)
    gW = X.T @ grad_U
    grad = np.concatenate([gW.ravel(), grad_T.ravel(), gS, gE]) / n
    return float(losses.sum()) / n, grad


def median_time(f, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20,000 tokens, 3 repeats")
    ap.add_argument("--ewt", action="store_true",
                    help="real UD English EWT train features (factorebm.features) instead of "
                         "the synthetic corpus")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    n_tokens = 20_000 if args.quick else 204_577
    n_features = 20_000 if args.quick else 150_000
    repeats = args.repeats or (3 if args.quick else 7)
    K = 17
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    if args.ewt:
        from factorebm.features import FeatureExtractor
        sents, tags = fe.datasets.load_ud_english_ewt("train")
        fx = FeatureExtractor()
        fx.fit(sents)
        X, offsets = fx.transform(sents)
        # the same matrix as X = S @ Phi through (word type, template group) slots
        F, _ = fx.factored_transform(sents)
        names = sorted({t for ts in tags for t in ts})
        index = {t: i for i, t in enumerate(names)}
        y = np.array([index[t] for ts in tags for t in ts], dtype=np.int64)
        K = len(names)
        n_features = X.shape[1]
        what = "UD English EWT train, default tagger features"
    else:
        X, offsets, y = make_corpus(n_tokens, n_features, 30, K)
        F = None            # random columns: no word types to factor through
        what = "synthetic, EWT-shaped"
    print(f"corpus ({what}): {X.shape[0]} tokens, {len(offsets) - 1} sentences, "
          f"{n_features} features, {X.nnz / X.shape[0]:.1f} nonzeros per token, K = {K} "
          f"(built in {time.perf_counter() - t0:.1f} s)")
    model = LinearChainEnergy(n_features, K)
    w = 0.1 * np.random.default_rng(1).standard_normal(model.n_weights)
    t0 = time.perf_counter()
    chain_objective(w, model, X, offsets, y, loss="nll")     # builds and caches X^T once
    print(f"one-time preparation (validation, CSR transpose) + first call: "
          f"{time.perf_counter() - t0:.3f} s; medians over {repeats} repeats below")
    model_f = LinearChainEnergy(n_features, K)    # its own corpus cache
    if F is not None:
        t0 = time.perf_counter()
        chain_objective(w, model_f, F, offsets, y, loss="nll")
        print(f"factored X = S @ Phi: {F.n_slots} (type, group) slots, {F.S.nnz} + {F.Phi.nnz} "
              f"nonzeros against {X.nnz} in X; preparation + first call "
              f"{time.perf_counter() - t0:.3f} s")
    print()
    N = X.shape[0]
    print(f"{'loss':<6} {'implementation':<34} {'seconds':>9} {'us/token':>9} {'speed-up':>9}")
    for loss in ("nll", "hinge"):
        t_np, (v_np, g_np) = median_time(
            lambda: numpy_objective(w, model, X, offsets, y, loss), max(1, repeats // 3))
        print(f"{loss:<6} {'scipy.sparse + numpy':<34} {t_np:9.4f} {1e6 * t_np / N:9.3f} "
              f"{1.0:9.2f}")
        for label, m, Xm in (("CSR X", model, X), ("factored X", model_f, F)):
            if Xm is None:
                continue
            for nt in (1, 2):
                t_fe, (v_fe, g_fe) = median_time(
                    lambda: chain_objective(w, m, Xm, offsets, y, loss=loss, n_threads=nt),
                    repeats)
                err = np.abs(g_fe - g_np).max() / max(1e-300, np.abs(g_np).max())
                name = f"factorebm, {label}, {nt} thread" + "s" * (nt > 1)
                print(f"{loss:<6} {name:<34} {t_fe:9.4f} {1e6 * t_fe / N:9.3f} "
                      f"{t_np / t_fe:9.2f}   (|value diff| {abs(v_fe - v_np):.1e}, grad rel. "
                      f"diff {err:.1e})")
    # where factorebm's time goes (2 threads)
    print("\nbreakdown, 2 threads (medians):")
    W, T, S, E = model.unpack(w)
    U = np.empty((N, K))
    XT = X.T.tocsr()
    t_u, _ = median_time(lambda: _sparse.csr_dense_matmul(X.indptr, X.indices, X.data, W, U, 2),
                         repeats)
    t_fb, (marg, _, _) = median_time(
        lambda: fe.chain.forward_backward(U, T, offsets, 1.0, S, E, return_pairwise=True,
                                          n_threads=2), repeats)
    t_mo, _ = median_time(lambda: fe.chain.most_offending(U, T, offsets, y, S, E, n_threads=2),
                          repeats)
    G = np.empty((n_features, K))
    t_g, _ = median_time(
        lambda: _sparse.csr_dense_matmul(XT.indptr, XT.indices, XT.data, marg, G, 2), repeats)
    labels = np.stack([y, y], axis=1).astype(np.int64)
    wts = np.ones((N, 2))
    t_gl, _ = median_time(
        lambda: _sparse.csr_t_label_scatter(XT.indptr, XT.indices, XT.data, labels, wts, G, 2),
        repeats)
    t_sc_u, _ = median_time(lambda: X @ W, max(1, repeats // 3))
    t_sc_g, _ = median_time(lambda: X.T @ marg, max(1, repeats // 3))
    print(f"  U = X @ W_emit (dense, {X.nnz} nnz x {K})     {t_u:.4f} s   "
          f"(scipy.sparse: {t_sc_u:.4f} s)")
    print(f"  forward_backward + pairwise            {t_fb:.4f} s")
    print(f"  most_offending                         {t_mo:.4f} s")
    print(f"  X^T @ G, G dense (NLL)                 {t_g:.4f} s   "
          f"(scipy.sparse: {t_sc_g:.4f} s)")
    print(f"  X^T @ G, G = 2 labels per token (margin losses) {t_gl:.4f} s")
    if F is not None:
        t_fu, _ = median_time(lambda: F.matmul(W, U, 2), repeats)
        t_fg, _ = median_time(lambda: F.rmatmul(marg, G, 2), repeats)
        t_fgl, _ = median_time(lambda: F.rmatmul_labels(labels, wts, G, 2), repeats)
        print(f"  factored: U = S @ (Phi @ W_emit)       {t_fu:.4f} s")
        print(f"  factored: X^T @ G = Phi^T @ (S^T @ G)  {t_fg:.4f} s dense, {t_fgl:.4f} s "
              f"2 labels per token")
    print("\nreference: CRFsuite spends about 0.2 s per L-BFGS iteration on EWT on this kind of "
          "machine (about 0.9 us/token); see benchmarks/compare_crfsuite.py for a measured "
          "comparison.")


if __name__ == "__main__":
    main()
