"""Part-of-speech tagging on UD English EWT, the library way.

Trains a linear-chain energy model (a CRF when the loss is the negative log-likelihood) on the
bundled UD English EWT train split, reports dev accuracy while training, then test accuracy,
tags a new sentence, shows the tag probabilities of one ambiguous word, and saves and reloads
the model (a pickle-free .npz file). With ``--front-end features+chars`` the emission energies
get a trained character CNN branch besides the sparse features (factorebm.front_end), and the
example also tags words it never saw in training.

Run:  python examples/pos_tagging.py [--loss nll|hinge|perceptron|log|mce]
          [--front-end features|features+chars] [--quiet]
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
    ap.add_argument("--front-end", default="features", choices=fe.front_end.FRONT_ENDS,
                    help="sparse features alone, or plus a character CNN (features+chars)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines while training")
    args = ap.parse_args()

    train = fe.datasets.load_ud_english_ewt("train")
    dev = fe.datasets.load_ud_english_ewt("dev")
    test = fe.datasets.load_ud_english_ewt("test")

    t0 = time.perf_counter()
    tagger = fe.SequenceTagger(loss=args.loss, front_end=args.front_end,
                               verbose=not args.quiet).fit(*train, dev=dev)
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    print(f"test accuracy: {100 * tagger.score(*test):.2f}%")
    # the words training never showed: only their spelling and context tell their tags
    known = {w for s in train[0] for w in s}
    right = [p == g for s, ps, gs in zip(test[0], tagger.predict(test[0]), test[1])
             for w, p, g in zip(s, ps, gs) if w not in known]
    print(f"on the {len(right)} test tokens unseen in training: {100 * np.mean(right):.2f}%")

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
