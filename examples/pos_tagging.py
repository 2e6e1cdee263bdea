"""Part-of-speech tagging on UD English EWT, the library way.

Trains a linear-chain energy model (a CRF when the loss is the negative log-likelihood) on the
bundled UD English EWT train split, reports dev accuracy while training, then test accuracy,
tags a new sentence, shows the tag probabilities of one ambiguous word, and saves and reloads
the model (a pickle-free .npz file).

Run:  python examples/pos_tagging.py [--loss nll|hinge|perceptron|log|mce]
"""
import argparse
import os
import tempfile
import time

import numpy as np

import factorebm as fe


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loss", default="nll", help="one of nll, hinge, perceptron, log, mce")
    args = ap.parse_args()

    train = fe.datasets.load_ud_english_ewt("train")
    dev = fe.datasets.load_ud_english_ewt("dev")
    test = fe.datasets.load_ud_english_ewt("test")

    t0 = time.perf_counter()
    tagger = fe.SequenceTagger(loss=args.loss).fit(*train, dev=dev)
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    print(f"test accuracy: {100 * tagger.score(*test):.2f}%")

    sentence = "I can can a can of beans .".split()
    print(list(zip(sentence, tagger.predict([sentence])[0])))
    # The Gibbs distribution P(y_t | x) = sum over the other tags of exp(-E) / Z.
    marginals = tagger.predict_marginals([sentence])[0]
    best = np.argsort(-marginals[2])[:3]
    print("P(tag of the second 'can'):",
          {str(tagger.labels_[k]): round(float(marginals[2, k]), 3) for k in best})

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ewt.npz")
        tagger.save(path)
        again = fe.SequenceTagger.load(path)
        assert again.predict([sentence]) == tagger.predict([sentence])
        print(f"saved and reloaded {os.path.getsize(path) / 2**20:.1f} MiB without pickle")


if __name__ == "__main__":
    main()
