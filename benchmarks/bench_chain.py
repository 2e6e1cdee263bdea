"""Throughput of the batched chain kernels (fe.chain) against a numpy baseline.

K = 17 labels (the UPOS tag set), 20,000 sequences of random length with mean 20
(1 + Poisson(19)), Gaussian energies. Every function of fe.chain is timed with 1
and 2 threads; Viterbi and forward-backward are also timed, in the same run, as
a numpy implementation vectorized across the batch (sequences padded to the
longest one, a Python loop over positions, (n, K, K) array operations per
position; forward-backward in scaled probability space with a matrix product
per position). The numpy results are checked against the kernels before timing.
Medians over repeats; tokens per second; ratios to numpy.

Run:  python benchmarks/bench_chain.py          (full: ~1-2 minutes)
      python benchmarks/bench_chain.py --quick  (2,000 sequences, fewer repeats)
"""
import argparse
import time

import numpy as np

from factorebm import chain, _chain


from _machine import describe  # noqa: E402  (benchmarks/_machine.py)

def machine_description():
    return (f"{describe()} | numpy {np.__version__} | "
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

def _pad(unary, offsets, start, end):
    """Time-major padded energies (T_max, n, K), start/end folded in, and valid (T_max, n).

    Time-major keeps every per-position slice contiguous, the best layout for
    a loop over positions.
    """
    lengths = np.diff(offsets)
    n, K = len(lengths), unary.shape[1]
    T_max = int(lengths.max())
    valid = np.arange(T_max)[:, None] < lengths[None, :]
    pad = np.zeros((T_max, n, K))
    pos = np.repeat(np.arange(n), lengths), np.arange(len(unary)) - np.repeat(offsets[:-1], lengths)
    pad[pos[1], pos[0]] = unary
    pad[0] += start
    pad[lengths - 1, np.arange(n)] += end
    return pad, valid, lengths, pos


def numpy_viterbi(unary, transition, offsets, start, end):
    pad, valid, lengths, pos = _pad(unary, offsets, start, end)
    T_max, n, K = pad.shape
    rows = np.arange(n)
    alpha = pad[0].copy()
    back = np.zeros((T_max, n, K), dtype=np.int64)
    for t in range(1, T_max):
        cand = alpha[:, :, None] + transition[None, :, :]
        arg = cand.argmin(axis=1)
        back[t] = arg
        new = np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0] + pad[t]
        alpha = np.where(valid[t, :, None], new, alpha)
    y = alpha.argmin(axis=1)
    energies = alpha[rows, y]
    labels = np.zeros((T_max, n), dtype=np.int64)
    for t in range(T_max - 1, -1, -1):
        v = valid[t]
        labels[t, v] = y[v]
        if t > 0:
            y = np.where(v, back[t][rows, y], y)
    return labels[pos[1], pos[0]], energies


def numpy_forward_backward(unary, transition, offsets, beta, start, end):
    pad, valid, lengths, pos = _pad(unary, offsets, start, end)
    T_max, n, K = pad.shape
    m = pad.min(axis=2, keepdims=True)
    w = np.exp(-beta * (pad - m))
    tmin = transition.min()
    M = np.exp(-beta * (transition - tmin))
    alpha = np.zeros((T_max, n, K))
    c = np.ones((T_max, n))
    c[0] = w[0].sum(axis=1)
    alpha[0] = w[0] / c[0, :, None]
    for t in range(1, T_max):
        a = (alpha[t - 1] @ M) * w[t]
        v = valid[t]
        c[t] = np.where(v, a.sum(axis=1), 1.0)
        alpha[t] = np.where(v[:, None], a / c[t, :, None], 0.0)
    bwd = np.ones((T_max, n, K))
    for t in range(T_max - 1, 0, -1):
        b = (w[t] * bwd[t] / c[t, :, None]) @ M.T
        bwd[t - 1] = np.where(valid[t, :, None], b, 1.0)
    marginals = (alpha * bwd)[pos[1], pos[0]]
    log_z = np.log(c).sum(axis=0) - beta * (np.where(valid, m[:, :, 0], 0.0).sum(axis=0)
                                            + (lengths - 1) * tmin)
    return marginals, -log_z / beta


# ---------------------------------------------------------------------------

def median_time(fn, repeats):
    fn()  # warm-up (first-touch of outputs and workspaces)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


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
    unary, transition, offsets, start, end = make_batch(n_seq, K)
    N = unary.shape[0]
    gold = np.random.default_rng(1).integers(0, K, size=N)
    beta = 1.0

    print(machine_description())
    print(f"K = {K}, {n_seq} sequences, {N} tokens (mean length {N / n_seq:.1f}, "
          f"max {np.diff(offsets).max()}), medians over {repeats} repeats "
          f"({np_repeats} for numpy)")

    # the baseline must compute the same thing before it is timed
    lab_np, e_np = numpy_viterbi(unary, transition, offsets, start, end)
    lab, e = chain.viterbi(unary, transition, offsets, start, end)
    assert np.allclose(e_np, e, atol=1e-9) and (lab_np == lab).mean() > 0.999
    marg_np, f_np = numpy_forward_backward(unary, transition, offsets, beta, start, end)
    marg, f = chain.forward_backward(unary, transition, offsets, beta, start, end)
    assert np.allclose(f_np, f, atol=1e-8) and np.allclose(marg_np, marg, atol=1e-8)

    t_np = {
        "viterbi": median_time(lambda: numpy_viterbi(unary, transition, offsets, start, end),
                               np_repeats),
        "forward_backward": median_time(
            lambda: numpy_forward_backward(unary, transition, offsets, beta, start, end),
            np_repeats),
    }
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
        ("kbest k=5", lambda nt: chain.kbest(unary, transition, offsets, 5, start, end,
                                             n_threads=nt)),
    ]
    header = (f"{'function':<27}{'numpy tok/s':>13}{'1 thread tok/s':>16}{'x numpy':>9}"
              f"{'2 threads tok/s':>17}{'x numpy':>9}{'2T/1T':>7}")
    print(header)
    print("-" * len(header))
    for name, fn in cases:
        t1 = median_time(lambda: fn(1), repeats)
        t2 = median_time(lambda: fn(2), repeats)
        base = t_np.get(name.split("+")[0]) if "+" not in name else None
        np_col = f"{N / base / 1e6:>10.2f} M" if base else f"{'-':>12}"
        r1 = f"{base / t1:>8.1f}x" if base else f"{'-':>9}"
        r2 = f"{base / t2:>8.1f}x" if base else f"{'-':>9}"
        print(f"{name:<27}{np_col:>13}{N / t1 / 1e6:>14.2f} M{r1}{N / t2 / 1e6:>15.2f} M{r2}"
              f"{t1 / t2:>7.2f}")
    print("tok/s = tokens per second (M = million); 'x numpy' = numpy time / kernel time "
          "(the Python-side validation is included in every kernel timing)")


if __name__ == "__main__":
    main()
