"""Image denoising with a grid CRF: pixel-by-pixel classification against fe.GridCRF.

The images are synthetic: on an H x W canvas (background label 0), a few random axis-aligned
rectangles and discs are painted, each with a random label in 1 .. K-1 (later shapes cover
earlier ones). What a model sees is noise on top of them:

* binary (K = 2): one feature per pixel, +1 on a shape and -1 on the background, plus
  Gaussian noise of standard deviation ``--noise`` (default 1.2);
* multi-label (K = 4): K features per pixel, the one-hot code of the label plus Gaussian noise
  of standard deviation ``--noise`` on every channel.

Two models are trained on the same images with the same loss (the NLL) and optimizer:

* the per-pixel classifier: ``fe.GridCRF(K, pairwise="none")`` -- no pairwise factors, i.e.
  multinomial logistic regression on each pixel's features alone;
* the grid CRF: ``fe.GridCRF(K)`` -- the same unary energies plus a learned symmetric K x K
  table on every 4-neighbour edge (Bethe free energy while training, TRW-S to predict).

Both are scored on fresh test images; the script prints each one's pixel error.

Run: python examples/denoising.py [--quick]
"""
import argparse
import time

import numpy as np

import factorebm as fe


def shapes(rng, H, W, K, n_shapes=4):
    """(H, W) int labels: a few random rectangles and discs on label 0."""
    y = np.zeros((H, W), dtype=np.int64)
    rr, cc = np.mgrid[:H, :W]
    for _ in range(n_shapes):
        label = int(rng.integers(1, K))
        if rng.random() < 0.5:
            h, w = rng.integers(H // 5, H // 2 + 1), rng.integers(W // 5, W // 2 + 1)
            r, c = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
            y[r:r + h, c:c + w] = label
        else:
            rad = rng.uniform(min(H, W) / 8, min(H, W) / 4)
            r, c = rng.uniform(0, H), rng.uniform(0, W)
            y[(rr - r) ** 2 + (cc - c) ** 2 <= rad ** 2] = label
    return y


def dataset(rng, n, H, W, K, noise):
    """n noisy images and their clean labels."""
    X, Y = [], []
    for _ in range(n):
        y = shapes(rng, H, W, K)
        if K == 2:
            x = (2.0 * y - 1.0)[:, :, None]
        else:
            x = np.eye(K)[y]
        X.append(x + rng.normal(0.0, noise, x.shape))
        Y.append(y)
    return X, Y


def run(K, args, rng):
    H = W = args.size
    X, Y = dataset(rng, args.train, H, W, K, args.noise)
    Xt, Yt = dataset(rng, args.test, H, W, K, args.noise)
    print(f"{'binary' if K == 2 else 'multi-label'} (K = {K}): {args.train} training and "
          f"{args.test} test images of {H} x {W}, noise sigma {args.noise}")
    for name, pairwise in (("per-pixel classifier", "none"), ("grid CRF", "symmetric")):
        t0 = time.perf_counter()
        crf = fe.GridCRF(K, pairwise=pairwise, max_iter=args.iterations, verbose=False,
                         n_threads=args.threads).fit(X, Y)
        t = time.perf_counter() - t0
        err = 1.0 - crf.score(Xt, Yt)
        print(f"  {name:22s} pixel error {100 * err:5.2f} %   (trained in {t:5.1f} s)")
    return crf


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, smaller images")
    ap.add_argument("--noise", type=float, default=1.2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    args.size = 16 if args.quick else 32
    args.train = 10 if args.quick else 40
    args.test = 6 if args.quick else 20
    args.iterations = 15 if args.quick else 60
    rng = np.random.default_rng(0)
    run(2, args, rng)
    crf = run(4, args, rng)
    print("learned pairwise energies (multi-label, rows/columns = labels):")
    print(np.array2string(crf.pairwise_, precision=2, suppress_small=True))


if __name__ == "__main__":
    main()
