"""Training from partially tagged sentences: UD English EWT with half of its tags hidden.

A tag hidden from training is None; the tagger's NLL then sums over it (E+ is the free energy
clamped to the known tags only). Four taggers are trained with the same settings (the
tagger's defaults) and scored on the full EWT test split:

* ``all tags``: every training tag (the reference);
* ``partial``: every training sentence, each token's tag hidden independently with
  probability ``--hide`` (0.5), the same random tokens for every seed's other rows;
* ``complete only``: the same hidden tokens, but every sentence with any hidden token is
  dropped: training on the sentences that happen to stay fully tagged (the issue's
  comparison; at 50% per token few but the shortest sentences survive);
* ``half the sentences``: the same number of tagged tokens spent on whole sentences: a random
  ``1 - hide`` of the sentences keep all their tags, the others are dropped (what an annotator
  would produce with the same budget, tagging sentences rather than tokens).

Run:  python benchmarks/partial_labels.py [--seeds 3] [--hide 0.5]
"""
import argparse
import statistics
import sys
import time

import numpy as np

import factorebm as fe

from _machine import describe  # noqa: E402  (benchmarks/_machine.py)


def fit_and_score(sents, tags, test, dev):
    t0 = time.perf_counter()
    tagger = fe.SequenceTagger(verbose=False).fit(sents, tags)
    seconds = time.perf_counter() - t0
    return tagger.score(*test), tagger.score(*dev), seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="random hidings to average over")
    ap.add_argument("--hide", type=float, default=0.5, help="fraction of tags hidden")
    args = ap.parse_args()
    train_s, train_t = fe.datasets.load_ud_english_ewt("train")
    dev = fe.datasets.load_ud_english_ewt("dev")
    test = fe.datasets.load_ud_english_ewt("test")
    n_tokens = sum(map(len, train_t))
    print(describe())
    print(f"EWT train: {len(train_s)} sentences, {n_tokens} tokens; hiding {args.hide:.0%} of "
          f"the tags, {args.seeds} seed(s); SequenceTagger defaults", flush=True)

    rows = {}

    def record(name, sents, tags, seed):
        known = sum(t is not None for ts in tags for t in ts)
        acc, dev_acc, seconds = fit_and_score(sents, tags, test, dev)
        rows.setdefault(name, []).append((acc, dev_acc, seconds, len(sents), known))
        print(f"  seed {seed} {name:<20} {len(sents):>6} sentences {known:>7} tagged tokens  "
              f"test {100 * acc:.2f}%  dev {100 * dev_acc:.2f}%  ({seconds:.1f} s)", flush=True)

    record("all tags", train_s, train_t, "-")
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        hidden = [rng.random(len(ts)) < args.hide for ts in train_t]
        partial = [[None if h else t for t, h in zip(ts, hs)] for ts, hs in zip(train_t, hidden)]
        record("partial", train_s, partial, seed)
        keep = [i for i, hs in enumerate(hidden) if len(hs) and not hs.any()]
        record("complete only", [train_s[i] for i in keep], [train_t[i] for i in keep], seed)
        half = np.flatnonzero(rng.random(len(train_s)) >= args.hide)
        record("half the sentences", [train_s[i] for i in half], [train_t[i] for i in half],
               seed)

    print("\nsetting               sentences  tagged tokens  test accuracy      dev accuracy"
          "       train s")
    for name, results in rows.items():
        acc, dev_acc, seconds, n_sents, known = zip(*results)
        spread = (f" +- {100 * statistics.stdev(acc):.2f}" if len(acc) > 1 else "        ")
        dev_spread = (f" +- {100 * statistics.stdev(dev_acc):.2f}" if len(acc) > 1
                      else "        ")
        print(f"{name:<20} {statistics.mean(n_sents):>10.0f} {statistics.mean(known):>14.0f}"
              f"  {100 * statistics.mean(acc):.2f}%{spread}  {100 * statistics.mean(dev_acc):.2f}%"
              f"{dev_spread}  {statistics.median(seconds):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
