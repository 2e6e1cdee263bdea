"""One epoch of fit_graphs on a batch of loopy grids: the graph objective's evaluation time.

B grid CRFs of H x W pixels, K labels, d pixel features: unary energies ``E(k) = w_k . x +
b_k`` and one learned K x K pairwise table shared by every edge, as ParametricGraphs (the
model of ``fe.GridCRF``). Times one full evaluation of the objective over all B graphs
(``GraphObjective.value_and_grad``: what one L-BFGS iteration costs) for the NLL
(sum-product, Bethe free energy) and the hinge (min-sum), median over repeats, and one epoch of
AdaGrad through ``fit_graphs`` in mini-batches of 10 graphs (the median of epochs 2 and 3). With ``--options`` it also passes
``schedule``/``damping``/``max_iter`` and a thread count (the code before batched learning
took none).

    python benchmarks/bench_graph_learning.py            # 100 grids of 20 x 20, K = 3
    python benchmarks/bench_graph_learning.py --quick    # 20 grids, fewer repeats
"""
import argparse
import statistics
import time

import numpy as np
import scipy.sparse as sp

import factorebm as fe
from factorebm.learning import GraphObjective, ParametricGraph
from factorebm.optimize import fit_graphs

from _machine import describe  # noqa: E402  (benchmarks/_machine.py)


def grid_sample(H, W, K, d, rng):
    """A (ParametricGraph, target) pair: random pixel features, labels from a noisy pattern."""
    n = H * W
    g = fe.FactorGraph()
    g.add_variables(n, K)
    ids = np.arange(n).reshape(H, W)
    edges = np.concatenate([np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1),
                            np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1)])
    g.add_factors(ids.reshape(-1, 1), np.zeros((n, K)))
    g.add_factors(edges, np.zeros((K, K)))
    x = rng.standard_normal((n, d))
    labels = (np.arange(n) // W * K // H) % K        # horizontal bands
    # unary rows: pixel i, state k -> [x_i, 1] in block k; pairwise rows -> the shared table
    rows_u = np.repeat(np.arange(n * K), d + 1)
    cols_u = (np.arange(K)[None, :, None] * (d + 1) + np.arange(d + 1)).repeat(n, 0).ravel()
    vals_u = np.broadcast_to(np.hstack([x, np.ones((n, 1))])[:, None, :], (n, K, d + 1)).ravel()
    n_pair = len(edges) * K * K
    rows_p = n * K + np.arange(n_pair)
    cols_p = K * (d + 1) + np.tile(np.arange(K * K), len(edges))
    phi = sp.csr_matrix((np.concatenate([vals_u, np.ones(n_pair)]),
                         (np.concatenate([rows_u, rows_p]), np.concatenate([cols_u, cols_p]))),
                        shape=(n * K + n_pair, K * (d + 2) + K * K - K))
    return ParametricGraph(g, phi), dict(enumerate(labels.tolist()))


def median_time(f, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=20)
    ap.add_argument("--graphs", type=int, default=None)
    ap.add_argument("--labels", type=int, default=3)
    ap.add_argument("--options", action="store_true",
                    help="pass inference options and threads (needs batched learning)")
    args = ap.parse_args()
    B = args.graphs or (20 if args.quick else 100)
    repeats = 3 if args.quick else 5
    H = W = args.size
    K, d = args.labels, 4
    rng = np.random.default_rng(0)
    samples = [grid_sample(H, W, K, d, rng) for _ in range(B)]
    n_w = samples[0][0].n_weights
    w = 0.3 * rng.standard_normal(n_w)
    print(f"# {describe()}")
    print(f"# {B} grids of {H} x {W}, K = {K}, d = {d}, {n_w} weights; median of {repeats}")
    for loss in ("nll", "hinge"):
        kw = {}
        if args.options:
            kw = dict(inference_options={"schedule": "flooding", "damping": 0.0,
                                         "max_iter": 200})
        t0 = time.perf_counter()
        obj = GraphObjective(samples, loss, **kw)
        v, _ = obj.value_and_grad(w)           # first call: compiling and caching included
        first = time.perf_counter() - t0
        for nt in ((1, 2) if args.options else (None,)):
            t = median_time(lambda: obj.value_and_grad(w, nt), repeats)
            print(f"{loss:6s} threads={nt}: first call {first:7.3f} s, full batch {t:7.3f} s "
                  f"({1e3 * t / B:6.2f} ms per graph), loss sum {v:.6f}", flush=True)
            # one epoch of AdaGrad in mini-batches of 10 graphs (a new batch every step)
            _, hist = fit_graphs(samples, loss=loss, optimizer="adagrad", batch_size=10,
                                 max_iter=3, verbose=False, n_threads=nt, random_state=0, **kw)
            epochs = np.diff([0.0] + [h["time"] for h in hist])[1:]
            print(f"{loss:6s} threads={nt}: AdaGrad epoch, mini-batches of 10 graphs: "
                  f"{statistics.median(epochs):7.3f} s", flush=True)


if __name__ == "__main__":
    main()
