"""Benchmark: loopy belief propagation on a 2-D grid Potts model, and exact BP on a tree.

Times 100 flooding iterations (damping 0.5) of the Cython kernel
(``factorebm._bp``, via ``CompiledGraph.run_bp``) for min-sum and sum-product
on n x n grids with K = 5 states, random unary energies and Potts pairwise
energies, against a vectorized numpy implementation of exactly the same updates
timed in the same run (and checked to give the same messages). Then times exact
inference (``fe.min_sum`` / ``fe.sum_product``) on a random tree of 10^5 variables.

The compiled graph stores identical factor tables once, so on a Potts grid the
kernel reads a single K x K table. The numpy baseline that the ratios use is
the general one (one table per factor, as for any pairwise graph); a second
numpy run that also exploits the single shared table (``einsum`` with one K x K
matrix) is printed for comparison, so the gain from sharing is visible.

A "(edge, state, state) update" is one multiply-add (sum-product) or add-min
(min-sum) of a factor-to-variable message: per iteration there are
2 * n_pairwise_factors * K * K of them.

Run:  python benchmarks/bench_bp.py            (100x100 and 300x300, 3 repeats)
      python benchmarks/bench_bp.py --quick    (100x100, 20 iterations, 1 repeat)
"""
import argparse
import os
import statistics
import time

# single-threaded BLAS, so that the numpy baseline is one core like the 1-thread
# kernel (and its idle BLAS threads do not spin against the kernel's threads). Not
# OMP_NUM_THREADS = 1: factorebm caps every n_threads at it (checks.available_cores), so the
# "2 threads" rows would run one thread.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))
                                             if hasattr(os, "sched_getaffinity") else os.cpu_count()))

import numpy as np  # noqa: E402

import factorebm as fe  # noqa: E402


from _machine import describe  # noqa: E402  (benchmarks/_machine.py)

def machine():
    return f"{describe()}; numpy {np.__version__}"

def potts_grid(n, K, seed=0, coupling=1.0):
    """An n x n grid: random unary energies in [0, 1), Potts pairwise energies coupling * [k != l].

    Built with the bulk calls; factors are numbered as a row-by-row build would (unaries
    first, then each variable's down and right neighbours).
    """
    rng = np.random.default_rng(seed)
    unary = rng.random((n * n, K))
    ids = np.arange(n * n).reshape(n, n)
    down = np.full((n, n), -1)
    down[:-1] = ids[1:]
    right = np.full((n, n), -1)
    right[:, :-1] = ids[:, 1:]
    nb = np.stack([down, right], axis=2).reshape(-1, 2)          # per variable: down, right
    src = np.repeat(ids.ravel(), 2)
    keep = nb.ravel() >= 0
    g = fe.FactorGraph()
    g.add_variables(n * n, K)
    g.add_factors(ids.reshape(-1, 1), unary)
    g.add_factors(np.stack([src[keep], nb.ravel()[keep]], axis=1), coupling * (1.0 - np.eye(K)))
    return g


class NumpyBP:
    """Vectorized numpy flooding BP on a pairwise graph: the same updates as the kernel.

    Messages are (2F, K) energy arrays normalized to minimum 0; edge 2f joins
    factor f to its first variable, 2f + 1 to its second.
    """

    def __init__(self, cg, beta, shared=False):
        import scipy.sparse as sp
        self.cg, self.beta, self.shared = cg, beta, shared
        F, K = cg.n_facs, int(cg.var_n_states[0])
        self.F, self.K = F, K
        if shared:
            # every factor has the same table: one K x K matrix for all of them
            assert cg.unique_tables.size == K * K
            self.T = cg.unique_tables.reshape(K, K)
            tmin = cg.table_min[:1]
            self.tmin = tmin[0]
            self.expT = np.exp(-beta * (self.T - tmin[0]))
        else:
            self.T = cg.tables.reshape(F, K, K)
            tmin = cg.table_min
            self.tmin = tmin[:, None]
            self.expT = np.exp(-beta * (self.T - tmin[:, None, None]))
        self.U = cg.unary.reshape(-1, K)
        E = 2 * F
        self.edge_var = cg.edge_var
        self.A = sp.csr_matrix((np.ones(E), (cg.edge_var, np.arange(E))), shape=(cg.n_vars, E))

    def run(self, n_iter, damping, min_sum):
        F, K, beta = self.F, self.K, self.beta
        f2v = np.zeros((2 * F, K))
        for _ in range(n_iter):
            total = self.U + self.A @ f2v
            v2f = total[self.edge_var] - f2v
            v2f -= v2f.min(1, keepdims=True)
            a, b = v2f[0::2], v2f[1::2]
            new = np.empty_like(f2v)
            if min_sum:
                new[1::2] = (a[:, :, None] + self.T).min(1)
                new[0::2] = (self.T + b[:, None, :]).min(2)
            elif self.shared:
                qa, qb = np.exp(-beta * a), np.exp(-beta * b)
                new[1::2] = self.tmin - np.log(qa @ self.expT) / beta
                new[0::2] = self.tmin - np.log(qb @ self.expT.T) / beta
            else:
                qa, qb = np.exp(-beta * a), np.exp(-beta * b)
                new[1::2] = self.tmin - np.log(np.einsum("fi,fij->fj", qa, self.expT)) / beta
                new[0::2] = self.tmin - np.log(np.einsum("fij,fj->fi", self.expT, qb)) / beta
            new -= new.min(1, keepdims=True)
            new = (1 - damping) * new + damping * f2v
            new -= new.min(1, keepdims=True)
            f2v = new
        return f2v


def median_time(fn, repeats, cpu=None, warmup=None):
    """Median wall-clock seconds of ``repeats`` calls (and of process CPU seconds into ``cpu``)."""
    if warmup is not None:
        warmup()        # untimed: threads started, caches and allocator warm, on both sides
    times, cpus = [], []
    out = None
    for _ in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    if cpu is not None:
        cpu.append(statistics.median(cpus))
    return statistics.median(times), out


def bench_grid(n, K, n_iter, repeats, threads, verbose=True):
    t = time.perf_counter()
    g = potts_grid(n, K)
    cg = g.compile()
    plan = cg.plan([])
    build = time.perf_counter() - t
    F = cg.n_facs
    updates = 2 * F * K * K
    print(f"\n{n}x{n} grid, K={K}: {cg.n_vars} variables, {F} pairwise factors, "
          f"{cg.unique_tables.size // (K * K)} distinct table(s) stored "
          f"(built and compiled in {build:.2f} s); {n_iter} flooding iterations, damping 0.5")
    nbp = NumpyBP(cg, beta=1.0)
    nbp_shared = NumpyBP(cg, beta=1.0, shared=True)
    kernel_1 = {}
    for min_sum in (True, False):
        name = "min-sum" if min_sum else "sum-product"
        cn = []
        tn, f2v_np = median_time(lambda: nbp.run(n_iter, 0.5, min_sum), repeats, cn,
                                 lambda: nbp.run(3, 0.5, min_sum))
        print(f"  {name:11s} numpy (1 thread)  : {tn:7.3f} s  {tn / n_iter * 1e3:7.2f} ms/iter  "
              f"{tn / n_iter / updates * 1e9:6.2f} ns/update   (CPU {cn[0]:.3f} s; per-factor tables, "
              f"the baseline of the ratios)")
        cs = []
        ts, f2v_sh = median_time(lambda: nbp_shared.run(n_iter, 0.5, min_sum), repeats, cs,
                                 lambda: nbp_shared.run(3, 0.5, min_sum))
        print(f"  {name:11s} numpy shared table: {ts:7.3f} s  {ts / n_iter * 1e3:7.2f} ms/iter  "
              f"{ts / n_iter / updates * 1e9:6.2f} ns/update   (CPU {cs[0]:.3f} s; one K x K table, "
              f"max |message diff| {np.abs(f2v_sh - f2v_np).max():.1e})")
        for nt in threads:
            ck = []
            tk, res = median_time(lambda: cg.run_bp(cg.unary, plan, 1.0, min_sum, max_iter=n_iter,
                                                     damping=0.5, tol=0.0, n_threads=nt), repeats, ck,
                                  lambda: cg.run_bp(cg.unary, plan, 1.0, min_sum, max_iter=3,
                                                    damping=0.5, tol=0.0, n_threads=nt))
            if nt == 1:
                kernel_1[min_sum] = tk
            diff = np.abs(res[1].reshape(2 * F, K) - f2v_np).max()
            print(f"  {name:11s} kernel {nt} thread{'s' if nt > 1 else ' '}: {tk:7.3f} s  "
                  f"{tk / n_iter * 1e3:7.2f} ms/iter  {tk / n_iter / updates * 1e9:6.2f} ns/update   "
                  f"ratio numpy/kernel {tn / tk:5.1f}x (CPU {ck[0]:.3f} s, CPU ratio {cn[0] / ck[0]:5.1f}x; "
                  f"vs shared-table numpy {ts / tk:5.1f}x)   max |message diff| {diff:.1e}")
    # end to end: the first call also builds the per-structure result layout
    # (cached on the compiled graph), later calls only run the kernel and the
    # vectorized / Cython result assembly
    for name, fn in (("sum_product", lambda: fe.sum_product(g, beta=1.0, max_iter=n_iter, damping=0.5, tol=0.0)),
                     ("min_sum", lambda: fe.min_sum(g, max_iter=n_iter, damping=0.5, tol=0.0))):
        t = time.perf_counter()
        fn()
        first = time.perf_counter() - t
        te, _ = median_time(fn, repeats)
        tk = kernel_1[name == "min_sum"]
        what = "beliefs, Bethe free energy" if name == "sum_product" else "consistent decoding, energy"
        print(f"  fe.{name:11s} end to end (compiled graph cached; {what}): first call {first:.3f} s, "
              f"median {te:.3f} s = kernel (1 thread) + {te - tk:.3f} s")


def random_tree(n, K, seed=1):
    rng = np.random.default_rng(seed)
    unary = rng.normal(size=(n, K))
    parents = (rng.random(n - 1) * np.arange(1, n)).astype(np.int64)
    tables = rng.normal(size=(n - 1, K, K))
    g = fe.FactorGraph()
    g.add_variables(n, K)
    g.add_factors(np.arange(n)[:, None], unary)
    g.add_factors(np.stack([parents, np.arange(1, n)], axis=1), tables)
    return g


def bench_tree(n, K, repeats):
    t = time.perf_counter()
    g = random_tree(n, K)
    build = time.perf_counter() - t
    t = time.perf_counter()
    g.compile().plan([])
    comp = time.perf_counter() - t
    print(f"\nrandom tree of {n} variables, K={K} (built in {build:.2f} s, compiled and scheduled in {comp:.2f} s)")
    tm, r = median_time(lambda: fe.min_sum(g), repeats)
    print(f"  fe.min_sum     (exact, two-pass sweep + decoding): {tm:.3f} s  exact={r.exact}  energy={r.energy:.6f}")
    ts, m = median_time(lambda: fe.sum_product(g, beta=1.0), repeats)
    print(f"  fe.sum_product (exact, marginals + free energy):   {ts:.3f} s  exact={m.exact}  F={m.free_energy:.6f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100x100 only, 20 iterations, 1 repeat, tree of 10^4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print("machine:", machine())
    print("times are medians (after a 3-iteration warm-up run) of", 1 if args.quick else args.repeats, "runs (wall clock; CPU = process CPU time,"
          " summed over threads); load average at start:", os.getloadavg() if hasattr(os, "getloadavg") else "n/a")
    if args.quick:
        bench_grid(100, 5, 20, 1, args.threads)
        bench_tree(10_000, 5, 1)
        return
    for n in (100, 300):
        bench_grid(n, 5, 100, args.repeats, args.threads)
    bench_tree(100_000, 5, args.repeats)


if __name__ == "__main__":
    main()
