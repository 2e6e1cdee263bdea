"""Data-parallel training on Dask (factorebm.distributed) against the local multi-threaded run.

The tagger's corpus and model: UD English EWT train through the tagger's default features
(``FeatureExtractor``, min_count 2, factored ``X = S @ Phi``), a linear chain with 2 latent
substates per tag (``LinearChainEnergy``, the SequenceTagger default), the NLL. And EWT x 8,
the training sentences repeated 8 times (``S`` stacked 8 times: the same features).

For each corpus, in the same run and on the same cores:

* objective-and-gradient evaluations per second: the local objective on every core, and a
  ``DistributedObjective`` on a LocalCluster of 1 worker process (all cores) and of 2 worker
  processes (cores / 2 each); the communication share of an evaluation (1 - slowest shard's
  compute time / client wall time: serialization, transfer and dispatch) and its bytes
  (array payloads both ways);
* the time of an empty round trip to the shards (``DistributedObjective.ping``: latency
  and dispatch) and of placing the shards (their data sent once, objectives built);
* time to train: L-BFGS iterations (and objective evaluations per iteration) and one
  AdaGrad epoch (batches of 32 sentences, the tagger's schedule; the optimizer's step
  kernels on one thread), local and through the cluster (``minimize`` over the placed
  ``DistributedObjective``), with the relative
  difference of the weights, and for AdaGrad the bytes per step (dense parameters and the
  batch's caught-up rows out, the batch gradient back) and per epoch for the rows plan.

    python benchmarks/bench_distributed.py            # EWT and EWT x 8 (about 10 minutes)
    python benchmarks/bench_distributed.py --quick    # EWT only, fewer repeats and iterations
"""
import argparse
import statistics
import time

import numpy as np

import factorebm as fe
from factorebm.distributed import DistributedObjective, connect
from factorebm.features import FeatureExtractor
from factorebm.learning import ChainObjective, LinearChainEnergy
from factorebm.optimize import minimize
from factorebm.sparse import FactoredFeatures

from _machine import describe  # noqa: E402  (benchmarks/_machine.py)

MB = 1e6


def ewt_corpus(repeat):
    """EWT train with the tagger's features, repeated ``repeat`` times."""
    import scipy.sparse as sp
    sents, tags = fe.datasets.load_ud_english_ewt("train")
    fx = FeatureExtractor().fit(sents, min_count=2)
    X, offsets = fx.factored_transform(sents)
    labels = {t: i for i, t in enumerate(sorted({t for ts in tags for t in ts}))}
    y = np.array([labels[t] for ts in tags for t in ts], dtype=np.int64)
    if repeat > 1:
        S = sp.vstack([X.S] * repeat, format="csr")
        S = sp.csr_matrix((np.broadcast_to(np.float64(1.0), (S.nnz,)), S.indices, S.indptr),
                          shape=S.shape)
        X = FactoredFeatures(S, X.Phi)
        n = offsets[-1]
        offsets = np.concatenate([offsets[:-1] + k * n for k in range(repeat)] + [[n * repeat]])
        y = np.tile(y, repeat)
    model = LinearChainEnergy(fx.n_features_, len(labels), n_substates=2)
    return X, offsets.astype(np.int64), y, model


def median_time(fn, repeats, after_warm_up=None, best=False):
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up (the minimum with
    ``best``: the least disturbed run, for a per-token cost on a shared machine)."""
    fn()                                  # warm-up: buffers, transposes, first contact
    if after_warm_up is not None:
        after_warm_up()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) if best else statistics.median(times)


def round_stats(dist, kind):
    st = dist.stats.get(kind, {})
    n = max(st.get("rounds", 0), 1)
    wall = st.get("wall_s", 0.0)
    share = 1.0 - st.get("compute_s", 0.0) / wall if wall else float("nan")
    return share, (st.get("bytes_sent", 0) + st.get("bytes_received", 0)) / n, st


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300))


def bench_corpus(name, repeat, args, rows):
    X, offsets, y, model = ewt_corpus(repeat)
    N = int(offsets[-1])
    print(f"\n== {name}: {offsets.size - 1} sentences, {N} tokens, {model.n_weights} weights "
          f"({model.n_weights * 8 / MB:.1f} MB per w)", flush=True)
    local = ChainObjective(model, X, offsets, y, "nll")
    w = model.init_weights(0)
    t_local = median_time(lambda: local.value_and_grad(w), args.repeats)
    t_one = median_time(lambda: local.value_and_grad(w, 1), args.repeats, best=True)
    print(f"{'setup':34s} {'evals/s':>8s} {'s/eval':>7s} {'us/token':>9s} {'comm':>6s} "
          f"{'MB/eval':>8s} {'place s':>8s} {'ping ms':>7s}")
    print(f"{'local, 1 thread (best run)':34s} {1 / t_one:8.2f} {t_one:7.3f} "
          f"{1e6 * t_one / N:9.3f} {'-':>6s} {'-':>8s} {'-':>8s}")
    print(f"{'local, all cores':34s} {1 / t_local:8.2f} {t_local:7.3f} {1e6 * t_local / N:9.3f} "
          f"{'-':>6s} {'-':>8s} {'-':>8s}", flush=True)
    lbfgs_kw = dict(optimizer="lbfgs", max_iter=args.lbfgs_iter, tol=0.0, verbose=False,
                    random_state=0)
    # AdaGrad's per-step kernels (a few thousand rows) on one thread, here and on the
    # client: with every core, the OpenMP teams of these small steps made an EWT epoch 20x
    # slower (23 s against 1.3 s) on this shared machine under load
    ada_kw = dict(optimizer="adagrad", max_iter=1, batch_size=32, learning_rate=0.2, l2=1e-5,
                  verbose=False, random_state=0, n_threads=1)
    t0 = time.perf_counter()
    w_lbfgs, _ = minimize(local, **lbfgs_kw)
    t_lbfgs = time.perf_counter() - t0
    t0 = time.perf_counter()
    w_ada, _ = minimize(local, **ada_kw)
    t_ada = time.perf_counter() - t0
    train = [("local (lbfgs all cores, adagrad 1)", t_lbfgs, t_ada, 0.0, 0.0, "-", "-", "-",
              "-", "-")]
    for n_workers in (1, 2):
        label = f"dask {n_workers} worker{'s' if n_workers > 1 else ''}"
        with connect(f"local:{n_workers}") as client:
            threads = sorted(client.nthreads().values())
            label += f" x {threads[0]} thread{'s' if threads[0] > 1 else ''}"
            t0 = time.perf_counter()
            with DistributedObjective(client, local) as dist:
                t_place = time.perf_counter() - t0
                ping = median_time(dist.ping, 20)
                t_dist = median_time(lambda: dist.value_and_grad(w), args.repeats,
                                     dist.stats.clear)
                share, nbytes, st = round_stats(dist, "value_and_grad")
                compute = st["compute_s"] / st["rounds"]
                print(f"{label:34s} {1 / t_dist:8.2f} {t_dist:7.3f} {1e6 * t_dist / N:9.3f} "
                      f"{100 * share:5.1f}% {nbytes / MB:8.1f} {t_place:8.2f} "
                      f"{1e3 * ping:7.2f}", flush=True)
                rows.append({"corpus": name, "tokens": N, "weights": model.n_weights,
                             "workers": n_workers, "threads": threads[0], "s_eval": t_dist,
                             "s_eval_local": t_local, "shard_compute_s": compute,
                             "s_eval_one_thread": t_one, "ping_s": ping,
                             "comm_share": share, "bytes_eval": nbytes})
                dist.stats.clear()
                t0 = time.perf_counter()
                w1, _ = minimize(dist, **lbfgs_kw)
                t1 = time.perf_counter() - t0
                evals = dist.stats["value_and_grad"]["rounds"]
                t0 = time.perf_counter()
                w2, _ = minimize(dist, **ada_kw)
                t2 = time.perf_counter() - t0
                s_share, s_bytes, s_st = round_stats(dist, "step")
                p_share, p_bytes, p_st = round_stats(dist, "rows")
            train.append((label, t1, t2, rel(w_lbfgs, w1), rel(w_ada, w2),
                          f"{evals / args.lbfgs_iter:.2f}", f"{100 * s_share:.0f}%",
                          f"{s_bytes / 1e3:.0f}",
                          f"{1e3 * s_st['wall_s'] / max(s_st['rounds'], 1):.1f}",
                          f"{p_bytes / MB:.1f}"))
            rows[-1].update({"step_bytes": s_bytes, "step_share": s_share,
                             "step_ms": 1e3 * s_st["wall_s"] / max(s_st["rounds"], 1),
                             "step_compute_ms": 1e3 * s_st["compute_s"] / max(s_st["rounds"], 1),
                             "steps": s_st["rounds"], "plan_bytes": p_bytes})
    print(f"\ntraining ({args.lbfgs_iter} L-BFGS iterations; 1 AdaGrad epoch, batches of 32; "
          "shards already placed):")
    print(f"{'setup':34s} {'lbfgs s':>8s} {'x local':>8s} {'adagrad s':>9s} {'x local':>8s} "
          f"{'rel dw lbfgs':>12s} {'rel dw ada':>10s} {'evals/it':>8s} {'step comm':>9s} "
          f"{'kB/step':>8s} {'ms/step':>8s} {'MB/plan':>8s}")
    for label, a, b, da, db, ev, sc, sb, sm, pb in train:
        print(f"{label:34s} {a:8.2f} {a / t_lbfgs:8.2f} {b:9.2f} {b / t_ada:8.2f} "
              f"{da:12.1e} {db:10.1e} {ev:>8s} {sc:>9s} {sb:>8s} {sm:>8s} {pb:>8s}",
              flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="EWT only, fewer repeats")
    args = p.parse_args()
    args.repeats = 3 if args.quick else 5
    args.lbfgs_iter = 5 if args.quick else 10
    print(describe())
    rows = []
    bench_corpus("EWT", 1, args, rows)
    if not args.quick:
        args.repeats = 3
        bench_corpus("EWT x 8", 8, args, rows)
    print("\nper-token compute and bytes (the figures docs/scaling.md starts from):")
    for r in rows:
        if r["workers"] == 1:
            print(f"  {r['corpus']:8s} local, 1 thread, best run: "
                  f"{1e6 * r['s_eval_one_thread'] / r['tokens']:.3f} core-us per token per "
                  "evaluation")
        per_token = r["shard_compute_s"] * r["workers"] * r["threads"] / r["tokens"]
        print(f"  {r['corpus']:8s} {r['workers']} worker(s) x {r['threads']} thread(s): "
              f"{1e6 * per_token:.3f} core-us per token per evaluation (shard time x threads), "
              f"{r['bytes_eval'] / MB:.1f} MB per L-BFGS evaluation "
              f"({r['bytes_eval'] / (2 * r['workers'] * 8 * r['weights']):.2f} x 2 x workers x "
              f"8 B x weights), AdaGrad step {r['step_ms']:.1f} ms wall / "
              f"{r['step_compute_ms']:.1f} ms slowest shard, {r['step_bytes'] / 1e3:.0f} kB, "
              f"empty round trip {1e3 * r['ping_s']:.2f} ms")


if __name__ == "__main__":
    main()
