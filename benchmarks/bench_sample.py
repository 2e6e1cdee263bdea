"""Benchmark: Gibbs sampling site updates per second on a 2-D grid Potts model.

On an n x n grid (K = 2 and K = 5 states, random unary energies in [0, 1), Potts pairwise
energies [x_i != x_j], beta = 1), times sweeps of the blocked Gibbs kernel
(``fe.sampling.sweep_chains``, the engine of ``fe.sample``) with 1 and 2 threads, for one
chain (the two colours of the checkerboard each updated in parallel) and for two chains (one
per thread), against peers timed in the same run:

* a vectorized numpy checkerboard sampler (this file): the same chain (colour 0, then colour
  1, each colour drawn at once from its exact conditionals), for any K -- the baseline of
  the ratios; for K = 2 also a numpy sampler specialized to two states (a logistic of the
  energy difference), printed for comparison;
* pgmpy's ``GibbsSampling`` (its sampler for Markov networks). It tabulates each variable's
  conditional for every joint state of all the *other* variables (K^(V-1) rows per
  variable), so it cannot take a grid of more than a few variables: it is timed on a small
  grid, and the kernel on that same grid, as site updates per second.

A site update is one variable drawn from its conditional distribution. Each line also gives
the rate per CPU second (process CPU time, summed over threads): on a shared machine, wall
time counts the time other processes hold the cores, CPU time mostly does not. The kernel and the
numpy sampler run the same Markov chain (same scan order), so their mean energies after the
same number of sweeps from the same start must agree: the script prints both.

Run:  python benchmarks/bench_sample.py            (300x300, 20 sweeps, 5 repeats)
      python benchmarks/bench_sample.py --quick    (100x100, 5 sweeps, 1 repeat)
"""
import argparse
import os
import time

# single-threaded BLAS, so that the numpy baseline is one core like the 1-thread kernel. Not
# OMP_NUM_THREADS = 1: factorebm caps every n_threads at it (checks.available_cores), so every
# "2 threads" row ran one thread. It is set to the cores here, before bench_bp (imported for
# its helpers) sets it to 1.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(
    os, "sched_getaffinity") else os.cpu_count()))
os.environ.setdefault("TQDM_DISABLE", "1")        # pgmpy's progress bars

import numpy as np  # noqa: E402

import factorebm as fe  # noqa: E402
from _machine import describe  # noqa: E402  (benchmarks/_machine.py)
from bench_bp import median_time, potts_grid  # noqa: E402


class NumpyCheckerboard:
    """Vectorized numpy Gibbs sampler for the Potts grid of ``potts_grid``, any K.

    Colour p is the sites with (row + col) % 2 == p; each colour is drawn at once: the number
    of each site's four neighbours in each state (one bincount; a missing neighbour at the
    border reads the extra state K), the K energies, then one inverse-CDF draw per site.
    """

    def __init__(self, n, K, unary, coupling=1.0, beta=1.0, seed=0):
        self.K = K
        r, c = np.divmod(np.arange(n * n), n)
        pad = n * n                                   # a dummy neighbour in state K
        self.sites, self.nbrs, self.bu, self.base = [], [], [], []
        for p in (0, 1):
            idx = np.flatnonzero((r + c) % 2 == p)
            rr, cc = r[idx], c[idx]
            self.sites.append(idx)
            self.nbrs.append(np.stack([np.where(rr > 0, idx - n, pad), np.where(rr < n - 1, idx + n, pad),
                                       np.where(cc > 0, idx - 1, pad), np.where(cc < n - 1, idx + 1, pad)], 1))
            self.bu.append(beta * unary[idx])
            self.base.append(np.arange(len(idx))[:, None] * (K + 1))
        self.bj = beta * coupling
        self.rng = np.random.default_rng(seed)

    def sweep(self, x, n_sweeps):
        K = self.K
        xp = np.append(x, K)
        for _ in range(n_sweeps):
            for p in (0, 1):
                nb = xp[self.nbrs[p]]                                       # (m, 4)
                m = len(nb)
                count = np.bincount((self.base[p] + nb).ravel(),
                                    minlength=m * (K + 1)).reshape(m, K + 1)
                # Potts: each of the 4 - count[:, K] real neighbours not in state k costs J
                e = self.bu[p] + self.bj * ((4 - count[:, K:]) - count[:, :K])   # beta E
                w = np.exp(-(e - e.min(1, keepdims=True)))
                cw = np.cumsum(w, 1)
                r = self.rng.random(m) * cw[:, -1]
                xp[self.sites[p]] = (cw[:, :-1] <= r[:, None]).sum(1)
        x[:] = xp[:-1]


class NumpyCheckerboardBinary(NumpyCheckerboard):
    """The same sampler specialized to K = 2: P(x = 1) = 1 / (1 + exp(beta (E(1) - E(0))))."""

    def sweep(self, x, n_sweeps):
        xp = np.append(x, 2)
        du = [b[:, 1] - b[:, 0] for b in self.bu]
        for _ in range(n_sweeps):
            for p in (0, 1):
                nb = xp[self.nbrs[p]]
                # E(1) - E(0) = dU + J (n_0 - n_1): n_k neighbours in state k
                d = du[p] + self.bj * ((nb == 0).sum(1) - (nb == 1).sum(1))
                xp[self.sites[p]] = self.rng.random(len(d)) * (1.0 + np.exp(d)) < 1.0
        x[:] = xp[:-1]


def bench_grid(n, K, n_sweeps, repeats, threads):
    t = time.perf_counter()
    g = potts_grid(n, K)
    cg = g.compile()
    build = time.perf_counter() - t
    V = cg.n_vars
    t = time.perf_counter()
    n_colours = int(fe.sampling.colouring(g).max()) + 1
    colour_s = time.perf_counter() - t
    print(f"\n{n}x{n} grid, K={K}: {V} variables, {cg.n_facs} pairwise factors (built and compiled in "
          f"{build:.2f} s; greedy colouring: {n_colours} colours in {colour_s * 1e3:.1f} ms); "
          f"{n_sweeps} sweeps per timed run")
    unary = cg.unary.reshape(V, K)
    start = fe.sampling.initial_states(g, 2, random_state=1)
    rates = {}

    cpu_rates = {}

    def run_numpy(cls, key):
        sampler = cls(n, K, unary)
        x = start[0].copy()
        cpu = []
        t_np, _ = median_time(lambda: sampler.sweep(x, n_sweeps), repeats, cpu,
                              warmup=lambda: sampler.sweep(x, 1))
        rates[key] = n_sweeps * V / t_np
        cpu_rates[key] = n_sweeps * V / cpu[0]

    run_numpy(NumpyCheckerboard, "numpy")
    print(f"  numpy checkerboard (1 thread)         : {rates['numpy'] / 1e6:8.2f} M site updates/s   "
          f"(per CPU second {cpu_rates['numpy'] / 1e6:7.2f} M; the baseline of the ratios)")
    if K == 2:
        run_numpy(NumpyCheckerboardBinary, "numpy2")
        print(f"  numpy checkerboard, K=2 specialized   : {rates['numpy2'] / 1e6:8.2f} M site updates/s   "
              f"(per CPU second {cpu_rates['numpy2'] / 1e6:7.2f} M)")
    for n_chains in (1, 2):
        for nt in threads:
            states = start[:n_chains].copy()
            sweep = [0]

            def run(k=n_sweeps):
                fe.sampling.sweep_chains(g, states, k, sweep=sweep[0], n_threads=nt)
                sweep[0] += k

            cpu = []
            tk, _ = median_time(run, repeats, cpu, warmup=lambda: run(1))
            rate = n_sweeps * n_chains * V / tk
            per_cpu = n_sweeps * n_chains * V / cpu[0]
            rates[(n_chains, nt)] = rate
            extra = f" = {rate / rates['numpy2']:5.1f}x the K=2 numpy" if K == 2 else ""
            how = "colours in parallel" if n_chains == 1 else "one chain per thread"
            print(f"  kernel {n_chains} chain{'s' if n_chains > 1 else ' '}, {nt} thread{'s' if nt > 1 else ' '} "
                  f"    : {rate / 1e6:8.2f} M site updates/s = {rate / rates['numpy']:6.1f}x numpy{extra}"
                  f"   ({how}; per CPU second {per_cpu / 1e6:7.2f} M = "
                  f"{per_cpu / cpu_rates['numpy']:5.1f}x numpy's)")
    # the same chain law: the energy per site after the same sweeps from the same start
    burn, n_runs = 30, 8
    x_np = np.repeat(start[:1], n_runs, 0)
    for i in range(n_runs):
        NumpyCheckerboard(n, K, unary, seed=100 + i).sweep(x_np[i], burn)
    x_k = np.repeat(start[:1], n_runs, 0)
    fe.sampling.sweep_chains(g, x_k, burn, seed=5)
    e_k = fe.sampling.state_energies(g, x_k) / V
    e_np = fe.sampling.state_energies(g, x_np) / V
    se_k, se_np = e_k.std(ddof=1) / np.sqrt(n_runs), e_np.std(ddof=1) / np.sqrt(n_runs)
    print(f"  check: energy per site after {burn} sweeps from one start, mean +- standard error "
          f"of {n_runs} chains: kernel {e_k.mean():.4f} +- {se_k:.4f}, numpy {e_np.mean():.4f} "
          f"+- {se_np:.4f}")
    return rates


def bench_pgmpy(n, K, size, threads):
    """pgmpy GibbsSampling against the kernel on an n x n grid (site updates per second)."""
    try:
        from pgmpy.factors.discrete import DiscreteFactor
        from pgmpy.models import DiscreteMarkovNetwork
        from pgmpy.sampling import GibbsSampling
        import pgmpy
    except ImportError:
        print(f"\npgmpy not installed (pip install pgmpy): skipped")
        return None
    g = potts_grid(n, K)
    V = n * n
    tables = [(s, t) for s, t in g.factors]
    m = DiscreteMarkovNetwork()
    m.add_nodes_from([str(v) for v in range(V)])
    m.add_edges_from([(str(s[0]), str(s[1])) for s, t in tables if len(s) == 2])
    m.add_factors(*[DiscreteFactor([str(v) for v in s], list(t.shape), np.exp(-t).ravel())
                    for s, t in tables])
    t = time.perf_counter()
    gs = GibbsSampling(m)
    setup = time.perf_counter() - t
    t = time.perf_counter()
    gs.sample(size=size + 1, seed=0)
    t_pg = time.perf_counter() - t
    pg = size * V / t_pg
    print(f"\npgmpy {pgmpy.__version__} GibbsSampling on a {n}x{n} grid, K={K} (it tabulates each "
          f"variable's conditional over all {K}^{V - 1} states of the others: {setup:.2f} s to set up; "
          f"no larger grid is practical):")
    print(f"  pgmpy                                 : {pg / 1e6:10.4f} M site updates/s ({size} sweeps "
          f"in {t_pg:.2f} s)")
    states = fe.sampling.initial_states(g, 1)
    n_sweeps = max(1, 2_000_000 // V)
    tk, _ = median_time(lambda: fe.sampling.sweep_chains(g, states, n_sweeps, n_threads=1), 3,
                        warmup=lambda: fe.sampling.sweep_chains(g, states, 1, n_threads=1))
    kr = n_sweeps * V / tk
    print(f"  kernel, same grid, 1 thread           : {kr / 1e6:10.4f} M site updates/s = "
          f"{kr / pg:,.0f}x pgmpy")
    return kr / pg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100x100, 5 sweeps, 1 repeat")
    ap.add_argument("--n", type=int, default=300, help="grid side (default 300)")
    ap.add_argument("--sweeps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    if args.quick:
        args.n, args.sweeps, args.repeats = 100, 5, 1
    print("machine:", describe(), f"; numpy {np.__version__}")
    print(f"rates from the median time (after a warm-up sweep) of {args.repeats} runs, wall clock; "
          f"load average at start: {os.getloadavg()}")
    cores = fe.checks.available_cores()
    if max(args.threads) > cores:
        print(f"warning: only {cores} thread(s) available (CPU affinity, OMP_NUM_THREADS): the "
              f"rows of more threads run {cores}")
    summary = {K: bench_grid(args.n, K, args.sweeps, args.repeats, args.threads) for K in (2, 5)}
    bench_pgmpy(3, 2, 200 if args.quick else 1000, args.threads)
    bench_pgmpy(2, 5, 200 if args.quick else 1000, args.threads)
    two = max(args.threads)
    print(f"\nsummary ({args.n}x{args.n}; targets: >= 1e8 site updates/s with {two} threads for K=2, "
          f">= 20x the numpy checkerboard):")
    for K, r in summary.items():
        best = max(r[(c, two)] for c in (1, 2))
        print(f"  K={K}: {two} threads {best / 1e6:7.1f} M site updates/s (best of 1 and 2 chains), "
              f"{best / r['numpy']:5.1f}x numpy; 1 thread {r[(1, 1)] / 1e6:7.1f} M/s, "
              f"{r[(1, 1)] / r['numpy']:5.1f}x numpy")


if __name__ == "__main__":
    main()
