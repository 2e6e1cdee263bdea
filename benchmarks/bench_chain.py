"""Throughput of the batched chain kernels (fe.chain) against a numpy baseline.

K = 17 labels (the UPOS tag set), 20,000 sequences of random length with mean 20
(1 + Poisson(19)), Gaussian energies. Every function of fe.chain is timed with 1
and 2 threads and, in the same run, as a numpy implementation vectorized across
the batch: sequences sorted by decreasing length and laid out time-major, so the
sequences still running at position t are a prefix of the batch; a Python loop
over positions does array operations on all the running sequences at once
(min-plus for the decoders, a matrix product in scaled probability space for
forward-backward, argpartition over the K * k candidates for k-best). Every
numpy result is checked against the kernel before it is timed. Medians over
repeats; tokens per second; ratios to numpy.

Run:  python benchmarks/bench_chain.py          (full: about a minute)
      python benchmarks/bench_chain.py --quick  (2,000 sequences, fewer repeats)
"""
import argparse
import time

import numpy as np

from factorebm import chain

from _machine import describe  # noqa: E402  (benchmarks/_machine.py)

_chain = chain._chain     # the build factorebm picked for this CPU (see factorebm._isa)


def machine_description():
    return (f"{describe()} | numpy {np.__version__} | kernels {_chain.__name__} | "
            f"OpenMP {'yes' if _chain.has_openmp() else 'no'}, "
            f"default threads {_chain.max_threads()}")


def make_batch(n_seq, K, seed=0):
    rng = np.random.default_rng(seed)
    lengths = 1 + rng.poisson(19, size=n_seq)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    unary = rng.normal(size=(offsets[-1], K))
    transition = rng.normal(size=(K, K))
    start, end = rng.normal(size=K), rng.normal(size=K)
    return unary, transition, offsets, start, end


# ---------------------------------------------------------------------------
# numpy baseline, vectorized across the batch
# ---------------------------------------------------------------------------

class Layout:
    """Time-major layout of a ragged batch: sequences sorted by decreasing length.

    ``pad`` (T_max, n, K): energies with start/end folded in, column r the r-th
    longest sequence; ``active[t]``: the sequences with a token at t are columns
    ``:active[t]``, so no work is spent on padding. ``t``, ``r`` (N,): the slot of
    every token; ``to_tokens(x)`` gathers a (T_max, n, ...) array back to (N, ...).
    """

    def __init__(self, unary, offsets, start, end):
        lengths = np.diff(offsets)
        self.n, self.K = len(lengths), unary.shape[1]
        self.order = np.argsort(-lengths, kind="stable")
        self.lengths = lengths[self.order]
        self.T_max = int(self.lengths[0]) if self.n else 0
        self.active = (self.lengths[None, :] > np.arange(self.T_max)[:, None]).sum(axis=1)
        rank = np.empty(self.n, dtype=np.int64)
        rank[self.order] = np.arange(self.n)
        self.t = np.arange(len(unary)) - np.repeat(offsets[:-1], lengths)
        self.r = rank[np.repeat(np.arange(self.n), lengths)]
        self.pad = self.scatter(unary)
        live = self.lengths > 0
        self.pad[0, live] += start
        self.pad[self.lengths[live] - 1, np.flatnonzero(live)] += end

    def scatter(self, x, fill=0.0):
        out = np.full((self.T_max, self.n) + x.shape[1:], fill, dtype=x.dtype)
        out[self.t, self.r] = x
        return out

    def to_tokens(self, x):
        return x[self.t, self.r]

    def to_sequences(self, x):
        """(n,) values in sorted order -> original sequence order."""
        out = np.empty_like(x)
        out[self.order] = x
        return out


def minplus_rows(src, rows):
    """out[:, j] = min_i src[:, i] + rows[i, j] for src (m, K): one (m, K) operation per
    source state, twice as fast in numpy as reducing an (m, K, K) array."""
    out = src[:, 0, None] + rows[0]
    tmp = np.empty_like(out)
    for i in range(1, rows.shape[0]):
        np.add(src[:, i, None], rows[i], out=tmp)
        np.minimum(out, tmp, out=out)
    return out


def minplus_forward(P, transition, keep_back=False):
    """alpha (T_max, n, K) of every sequence (min energy of prefixes ending in j at t)."""
    alpha = np.full(P.pad.shape, np.inf)
    alpha[0] = P.pad[0]
    back = [None]
    trans_t = np.ascontiguousarray(transition.T)     # (j, i): reduce over the last axis
    for t in range(1, P.T_max):
        m = P.active[t]
        if keep_back:
            cand = alpha[t - 1, :m, None, :] + trans_t     # (m, j, i)
            arg = cand.argmin(axis=2)
            back.append(arg)
            alpha[t, :m] = np.take_along_axis(cand, arg[:, :, None], axis=2)[:, :, 0] \
                + P.pad[t, :m]
        else:
            alpha[t, :m] = minplus_rows(alpha[t - 1, :m], transition) + P.pad[t, :m]
    return alpha, back


def minplus_backward(P, transition):
    """beta (T_max, n, K): min energy of the suffixes after state i at t (0 at the end)."""
    beta = np.zeros(P.pad.shape)
    trans_t = np.ascontiguousarray(transition.T)
    for t in range(P.T_max - 1, 0, -1):
        m = P.active[t]
        beta[t - 1, :m] = minplus_rows(P.pad[t, :m] + beta[t, :m], trans_t)
    return beta


def last_rows(P, x):
    """x (T_max, n, ...) at every sequence's last position: (n, ...)."""
    return x[P.lengths - 1, np.arange(P.n)]


def numpy_viterbi(unary, transition, offsets, start, end):
    P = Layout(unary, offsets, start, end)
    alpha, back = minplus_forward(P, transition, keep_back=True)
    last = last_rows(P, alpha)
    y = last.argmin(axis=1)
    energies = last[np.arange(P.n), y]
    labels = np.zeros((P.T_max, P.n), dtype=np.int64)
    for t in range(P.T_max - 1, 0, -1):
        m = P.active[t]
        labels[t, :m] = y[:m]
        y[:m] = back[t][np.arange(m), y[:m]]
    labels[0] = y
    return P.to_tokens(labels), P.to_sequences(energies)


def numpy_min_marginals(unary, transition, offsets, start, end, layout=None):
    P = layout or Layout(unary, offsets, start, end)
    alpha, _ = minplus_forward(P, transition)
    beta = minplus_backward(P, transition)
    mm = alpha + beta
    return P.to_tokens(mm), P.to_sequences(mm[0].min(axis=1)), (P, alpha, beta, mm)


def numpy_most_offending(unary, transition, offsets, gold, start, end):
    _, _, (P, alpha, beta, mm) = numpy_min_marginals(unary, transition, offsets, start, end)
    n, K, T_max = P.n, P.K, P.T_max
    valid = np.arange(T_max)[:, None] < P.lengths[None, :]
    wrong = np.arange(K) != P.scatter(gold, fill=-1)[:, :, None]
    cand = np.where(wrong & valid[:, :, None], mm, np.inf)
    flat = cand.transpose(1, 0, 2).reshape(n, T_max * K)    # (t, s) order, as the kernel
    best = flat.argmin(axis=1)
    energies = flat[np.arange(n), best]
    bt, bs = best // K, best % K
    labels = np.zeros((T_max, n), dtype=np.int64)
    y = bs.copy()                                   # backward from (bt, bs) through alpha
    for t in range(T_max - 1, -1, -1):
        on = t <= bt
        labels[t, on] = y[on]
        if t > 0:
            prev = (alpha[t - 1] + transition[:, y].T).argmin(axis=1)
            y = np.where(on, prev, y)
    y = bs.copy()                                   # forward from (bt, bs) through beta
    for t in range(1, T_max):
        m = P.active[t]
        after = t > bt[:m]
        nxt = (transition[y[:m]] + P.pad[t, :m] + beta[t, :m]).argmin(axis=1)
        y[:m] = np.where(after, nxt, y[:m])
        labels[t, :m][after] = y[:m][after]
    return P.to_tokens(labels), P.to_sequences(energies)


def numpy_path_energy(unary, transition, offsets, start, end, labels):
    """E(y) of the label sequences ``labels`` (N,) of every sequence."""
    tok = unary[np.arange(len(labels)), labels]
    inner = np.ones(len(labels), bool)
    inner[offsets[:-1]] = False                     # no transition into a first token
    tok[inner] += transition[labels[:-1], labels[1:]][inner[1:]]
    e = np.add.reduceat(tok, offsets[:-1]) + start[labels[offsets[:-1]]]
    return e + end[labels[offsets[1:] - 1]]


def numpy_loss_augmented_viterbi(unary, transition, offsets, gold, loss, start, end):
    wrong = np.arange(unary.shape[1])[None, :] != gold[:, None]
    labels, _ = numpy_viterbi(unary - loss * wrong, transition, offsets, start, end)
    return labels, numpy_path_energy(unary, transition, offsets, start, end, labels)


def numpy_forward_backward(unary, transition, offsets, beta, start, end, pairwise=False):
    P = Layout(unary, offsets, start, end)
    T_max, n, K = P.pad.shape
    m0 = P.pad.min(axis=2, keepdims=True)
    w = np.exp(-beta * (P.pad - m0))
    tmin = transition.min()
    M = np.exp(-beta * (transition - tmin))
    alpha = np.zeros((T_max, n, K))
    c = np.ones((T_max, n))
    c[0] = w[0].sum(axis=1)
    alpha[0] = w[0] / c[0, :, None]
    for t in range(1, T_max):
        m = P.active[t]
        a = (alpha[t - 1, :m] @ M) * w[t, :m]
        c[t, :m] = a.sum(axis=1)
        alpha[t, :m] = a / c[t, :m, None]
    bwd = np.ones((T_max, n, K))
    pair = np.zeros((K, K))
    for t in range(T_max - 1, 0, -1):
        m = P.active[t]
        b = w[t, :m] * bwd[t, :m] / c[t, :m, None]
        bwd[t - 1, :m] = b @ M.T
        if pairwise:
            pair += (alpha[t - 1, :m].T @ b) * M
    marginals = P.to_tokens(alpha * bwd)
    valid = np.arange(T_max)[:, None] < P.lengths[None, :]
    log_z = np.log(c).sum(axis=0) - beta * (np.where(valid, m0[:, :, 0], 0.0).sum(axis=0)
                                            + (P.lengths - 1) * tmin)
    out = (marginals, P.to_sequences(-log_z / beta))
    return out + (pair,) if pairwise else out


def _k_smallest(cand, k):
    """Indices (..., k) of the k smallest entries along the last axis, ascending."""
    idx = np.argpartition(cand, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(cand, idx, axis=-1)
    o = np.argsort(vals, axis=-1, kind="stable")
    return np.take_along_axis(idx, o, axis=-1), np.take_along_axis(vals, o, axis=-1)


def numpy_kbest(unary, transition, offsets, k, start, end, chunk=2048):
    """k-best Viterbi: (n, K, k) best prefix energies per state, argpartition over the
    K * k candidates per destination, back-pointers (state * k + rank) per position."""
    P = Layout(unary, offsets, start, end)
    T_max, n, K = P.pad.shape
    E = np.full((n, K, k), np.inf)
    E[:, :, 0] = P.pad[0]
    back = [None]
    fin_e = np.empty((n, k))
    fin_code = np.empty((n, k), dtype=np.int64)

    def finish(lo, hi):                             # sequences whose last token is at t
        code, vals = _k_smallest(E[lo:hi].reshape(hi - lo, K * k), k)
        fin_e[lo:hi], fin_code[lo:hi] = vals, code

    for t in range(1, T_max):
        m = P.active[t]
        finish(m, P.active[t - 1])
        bp = np.empty((m, K, k), dtype=np.int32)
        E_new = np.empty((m, K, k))
        for lo in range(0, m, chunk):               # chunks keep the (c, K, K*k) block in cache
            hi = min(m, lo + chunk)
            cand = (E[lo:hi, :, None, :] + transition[None, :, :, None])   # (c, i, j, r)
            cand = cand.transpose(0, 2, 1, 3).reshape(hi - lo, K, K * k)   # (c, j, i*k + r)
            bp[lo:hi], E_new[lo:hi] = _k_smallest(cand, k)
        E = E_new + P.pad[t, :m, :, None]
        back.append(bp)
    finish(0, P.active[T_max - 1])
    paths = np.zeros((k, T_max, n), dtype=np.int64)
    y, rank = fin_code // k, fin_code % k                                  # (n, k)
    for t in range(T_max - 1, 0, -1):
        m = P.active[t]
        paths[:, t, :m] = y[:m].T
        code = back[t][np.arange(m)[:, None], y[:m], rank[:m]]
        y[:m], rank[:m] = code // k, code % k
    paths[:, 0] = y.T
    return paths[:, P.t, P.r], P.to_sequences(fin_e).T


# ---------------------------------------------------------------------------

def median_time(fn, repeats, warm_up=True):
    if warm_up:
        fn()  # first-touch of outputs and workspaces
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def check_baselines(unary, transition, offsets, start, end, gold, beta, k):
    """Every numpy baseline computes what its kernel computes; returns the timed calls."""
    args = (unary, transition, offsets)
    close = dict(atol=1e-8, rtol=0)

    def agree(a, b, what):                  # label sequences: ties may break differently
        assert (a == b).mean() > 0.999, f"{what}: numpy and the kernel disagree"

    lab, e = chain.viterbi(*args, start, end)
    lab_np, e_np = numpy_viterbi(*args, start, end)
    assert np.allclose(e_np, e, **close)
    agree(lab_np, lab, "viterbi")
    marg, f = chain.forward_backward(*args, beta, start, end)
    marg_np, f_np = numpy_forward_backward(*args, beta, start, end)
    assert np.allclose(f_np, f, **close) and np.allclose(marg_np, marg, **close)
    marg, f, pair = chain.forward_backward(*args, beta, start, end, return_pairwise=True)
    _, _, pair_np = numpy_forward_backward(*args, beta, start, end, pairwise=True)
    assert np.allclose(pair_np, pair, atol=1e-8 * len(unary), rtol=1e-10)
    mm, e_mm = chain.min_marginals(*args, start, end)
    mm_np, e_mm_np, _ = numpy_min_marginals(*args, start, end)
    assert np.allclose(mm_np, mm, **close) and np.allclose(e_mm_np, e_mm, **close)
    lab, e = chain.most_offending(*args, gold, start, end)
    lab_np, e_np = numpy_most_offending(*args, gold, start, end)
    assert np.allclose(e_np, e, **close)
    agree(lab_np, lab, "most_offending")
    lab, e = chain.loss_augmented_viterbi(*args, gold, 1.0, start, end)
    lab_np, e_np = numpy_loss_augmented_viterbi(*args, gold, 1.0, start, end)
    assert np.allclose(e_np, e, **close)
    agree(lab_np, lab, "loss_augmented_viterbi")
    paths, e = chain.kbest(*args, k, start, end)
    paths_np, e_np = numpy_kbest(*args, k, start, end)
    assert np.allclose(e_np, e, **close)
    agree(paths_np, paths, "kbest")
    return {
        "viterbi": lambda: numpy_viterbi(*args, start, end),
        "forward_backward": lambda: numpy_forward_backward(*args, beta, start, end),
        "forward_backward+pairwise": lambda: numpy_forward_backward(
            *args, beta, start, end, pairwise=True),
        "min_marginals": lambda: numpy_min_marginals(*args, start, end),
        "most_offending": lambda: numpy_most_offending(*args, gold, start, end),
        "loss_augmented_viterbi": lambda: numpy_loss_augmented_viterbi(
            *args, gold, 1.0, start, end),
        f"kbest k={k}": lambda: numpy_kbest(*args, k, start, end),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 sequences, fewer repeats")
    p.add_argument("--n-seq", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("-K", type=int, default=17)
    args = p.parse_args(argv)
    n_seq = args.n_seq or (2_000 if args.quick else 20_000)
    repeats = args.repeats or (3 if args.quick else 7)
    np_repeats = max(1, min(3, repeats))
    K = args.K
    k = 5
    unary, transition, offsets, start, end = make_batch(n_seq, K)
    N = unary.shape[0]
    gold = np.random.default_rng(1).integers(0, K, size=N)
    beta = 1.0

    print(machine_description())
    print(f"K = {K}, {n_seq} sequences, {N} tokens (mean length {N / n_seq:.1f}, "
          f"max {np.diff(offsets).max()}), medians over {repeats} repeats "
          f"({np_repeats} for numpy, kbest {max(1, np_repeats - 2)})")

    # the baselines must compute the same thing before they are timed (this is
    # also their warm-up)
    baselines = check_baselines(unary, transition, offsets, start, end, gold, beta, k)
    cases = [
        ("viterbi", lambda nt: chain.viterbi(unary, transition, offsets, start, end,
                                             n_threads=nt)),
        ("forward_backward", lambda nt: chain.forward_backward(
            unary, transition, offsets, beta, start, end, n_threads=nt)),
        ("forward_backward+pairwise", lambda nt: chain.forward_backward(
            unary, transition, offsets, beta, start, end, return_pairwise=True, n_threads=nt)),
        ("min_marginals", lambda nt: chain.min_marginals(unary, transition, offsets, start, end,
                                                         n_threads=nt)),
        ("most_offending", lambda nt: chain.most_offending(unary, transition, offsets, gold,
                                                           start, end, n_threads=nt)),
        ("loss_augmented_viterbi", lambda nt: chain.loss_augmented_viterbi(
            unary, transition, offsets, gold, 1.0, start, end, n_threads=nt)),
        (f"kbest k={k}", lambda nt: chain.kbest(unary, transition, offsets, k, start, end,
                                                n_threads=nt)),
    ]
    header = (f"{'function':<27}{'numpy tok/s':>13}{'1 thread tok/s':>16}{'x numpy':>9}"
              f"{'2 threads tok/s':>17}{'x numpy':>9}{'2T/1T':>7}")
    print(header)
    print("-" * len(header))
    for name, fn in cases:
        # k-best in numpy takes seconds per call: fewer repeats
        reps = max(1, np_repeats - 2) if name.startswith("kbest") else np_repeats
        base = median_time(baselines[name], reps, warm_up=False)
        t1 = median_time(lambda: fn(1), repeats)
        t2 = median_time(lambda: fn(2), repeats)
        print(f"{name:<27}{N / base / 1e6:>11.2f} M{N / t1 / 1e6:>14.2f} M{base / t1:>8.1f}x"
              f"{N / t2 / 1e6:>15.2f} M{base / t2:>8.1f}x{t1 / t2:>7.2f}")
    print("tok/s = tokens per second (M = million); 'x numpy' = numpy time / kernel time "
          "(the Python-side validation is included in every kernel timing)")


if __name__ == "__main__":
    main()
