"""A skip-chain CRF (Sutton and McCallum 2004): a linear chain plus long-range factors between
repeated words, trained with fit_graphs, against the plain chain.

The task is synthetic named-entity tagging where repeated words share their label. Each
sentence mentions two names (drawn from a vocabulary of ``--names`` words); in that sentence a
name is a person (PER) or a place (LOC) at random, so its identity says nothing about its
label. Each name appears three times. Its first mention comes with a cue word in front of it
("mr" or "dr" for a person, "in" or "at" for a place); the others follow neutral words
("said", "and", "with", "then"). Every other word is O. The order of the mentions is shuffled,
and filler words (O) separate them.

Both models have the same features per token -- the word itself, the word before it, a bias
-- and a learned 3 x 3 transition table; the skip chain adds one factor between every pair of
occurrences of the same word (sharing one learned 3 x 3 table). A chain can label a cued
mention, but an uncued one only by guessing; the skip factors carry the cue's answer to the
other mentions. Both are trained by the NLL (exact forward-backward on the chain, the Bethe
free energy on the loopy skip chain: ``fit_graphs(..., inference_options=...)``) and decoded by
min-sum (exact on the chain, TRW-S on the skip chain); the script prints the token accuracy and
the accuracy on the uncued mentions of each.

Run: python examples/skip_chain.py [--quick]
"""
import argparse
import time

import numpy as np
import scipy.sparse as sp

import factorebm as fe
from factorebm.learning import GraphObjective, ParametricGraph
from factorebm.optimize import fit_graphs

LABELS = ("O", "PER", "LOC")
CUES = {1: ("mr", "dr"), 2: ("in", "at")}
NEUTRAL = ("said", "and", "with", "then")
FILLERS = ("the", "a", "of", "was", "it", "to", "on", "by", "for", "so")


def sentence(rng, names):
    """(words, labels, uncued): two names, three mentions each, the first one cued."""
    segments = []
    for name in rng.choice(names, 2, replace=False):
        label = int(rng.integers(1, 3))
        cue = CUES[label][rng.integers(2)]
        segments.append(([cue, name], [0, label], [False, False]))
        for _ in range(2):
            segments.append(([NEUTRAL[rng.integers(len(NEUTRAL))], name], [0, label],
                             [False, True]))
    words, labels, uncued = [], [], []
    for i in rng.permutation(len(segments)):
        for _ in range(rng.integers(1, 3)):
            words.append(FILLERS[rng.integers(len(FILLERS))])
            labels.append(0)
            uncued.append(False)
        w, y, u = segments[i]
        words += w
        labels += y
        uncued += u
    return words, labels, uncued


class Features:
    """Word ids and the sparse features of a token: the word, the word before it, a bias."""

    def __init__(self, vocabulary):
        self.index = {w: i for i, w in enumerate(vocabulary)}
        self.n_words = len(vocabulary) + 1        # id n_words - 1: "no previous word"
        self.n_features = 2 * self.n_words + 1

    def __call__(self, words):
        ids = np.array([self.index[w] for w in words])
        prev = np.concatenate([[self.n_words - 1], ids[:-1]])
        return np.stack([ids, self.n_words + prev, np.full(len(ids), 2 * self.n_words)], 1)


def graph(words, labels, features, skip):
    """The (ParametricGraph, target) of one sentence. Weights: the emission weights (one row
    of K per feature), the transition table, then the skip table."""
    K = len(LABELS)
    n = len(words)
    F = features.n_features
    g = fe.FactorGraph()
    g.add_variables(n, K)
    g.add_factors(np.arange(n)[:, None], np.zeros((n, K)))
    chain = np.stack([np.arange(n - 1), np.arange(1, n)], 1)
    if len(chain):
        g.add_factors(chain, np.zeros((K, K)))
    pairs = np.zeros((0, 2), dtype=np.int64)
    if skip:
        same = np.array(words)[:, None] == np.array(words)[None, :]
        name = np.array([w not in FILLERS and w not in NEUTRAL and w not in CUES[1] + CUES[2]
                         for w in words])
        i, j = np.nonzero(np.triu(same & name[:, None] & name[None, :], 1))
        pairs = np.stack([i, j], 1)
        if len(pairs):
            g.add_factors(pairs, np.zeros((K, K)))
    f = features(words)                                  # (n, 3) active features per token
    rows = [np.repeat(np.arange(n * K), f.shape[1])]
    cols = [(f[:, None, :] * K + np.arange(K)[None, :, None]).ravel()]
    for block, count in ((0, len(chain)), (1, len(pairs))):
        base = n * K + (len(chain) * K * K if block else 0)
        rows.append(base + np.arange(count * K * K))
        cols.append(F * K + block * K * K + np.tile(np.arange(K * K), count))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    phi = sp.csr_matrix((np.ones(rows.size), (rows, cols)),
                        shape=(n * K + (len(chain) + len(pairs)) * K * K, F * K + 2 * K * K))
    return ParametricGraph(g, phi), dict(enumerate(labels))


def evaluate(samples, w, uncued, options):
    """Token accuracy and accuracy on the uncued mentions of min-sum's answers."""
    pred = GraphObjective(samples, "perceptron", inference_options=options).minimizers(w)
    gold = [np.array([t[v] for v in range(len(t))]) for _, t in samples]
    correct = np.concatenate([p == y for p, y in zip(pred, gold)])
    mask = np.concatenate(uncued)
    return correct.mean(), correct[mask].mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--names", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    n_train, n_test = (60, 60) if args.quick else (300, 300)
    rng = np.random.default_rng(0)
    names = [f"name{i}" for i in range(args.names)]
    features = Features(list(FILLERS) + list(NEUTRAL) + list(CUES[1] + CUES[2]) + names)
    train = [sentence(rng, names) for _ in range(n_train)]
    test = [sentence(rng, names) for _ in range(n_test)]
    n_tok = sum(len(s[0]) for s in train)
    print(f"{n_train} training sentences ({n_tok} tokens), {n_test} test sentences; "
          f"{features.n_features} features, labels {', '.join(LABELS)}")
    for name, skip, train_opts, decode_opts in (
            ("plain chain", False, None, {"schedule": "flooding"}),
            ("skip chain", True, {"damping": 0.5, "max_iter": 100, "tol": 1e-8},
             {"schedule": "trws"})):
        samples = [graph(w, y, features, skip) for w, y, _ in train]
        t0 = time.perf_counter()
        w, _ = fit_graphs(samples, loss="nll", l2=0.01, max_iter=50, verbose=False,
                          inference_options=train_opts, n_threads=args.threads)
        t = time.perf_counter() - t0
        test_samples = [graph(w_, y, features, skip) for w_, y, _ in test]
        acc, acc_uncued = evaluate(test_samples, w, [u for _, _, u in test], decode_opts)
        skip_table = w[-9:].reshape(3, 3) - w[-9:].reshape(3, 3).min()
        print(f"  {name:12s} token accuracy {100 * acc:6.2f} %, uncued mentions "
              f"{100 * acc_uncued:6.2f} %   (trained in {t:5.1f} s)")
        if skip:
            print("  learned skip table (rows: first occurrence's label, O PER LOC), shifted to "
                  "min 0:")
            for row in np.array2string(skip_table, precision=2, suppress_small=True).splitlines():
                print("   ", row)


if __name__ == "__main__":
    main()
