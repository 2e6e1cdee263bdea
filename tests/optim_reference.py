"""Slow numpy twins of the optimizer kernels (factorebm._optim), for the tests."""
import numpy as np

EPS_ADAGRAD = 1e-8    # factorebm.optimize's AdaGrad epsilon


def prox_catch_up(W, lr, k, l1, l2):
    """Apply k proximal steps (soft-threshold lr*l1, then scale 1/(1+lr*l2)) in closed form.

    With c = 1/(1+lr*l2), k steps give |w| -> max(0, c^k |w| - lr*l1*(c + ... + c^k)), since
    the map is monotone and stays at 0 once it gets there. ``W`` (R, K) is modified in place;
    ``lr`` broadcasts against it, ``k`` is (R,).
    """
    k = k.reshape(-1, 1).astype(np.float64)
    lr = np.asarray(lr, dtype=np.float64)
    ll = lr * l2
    # c^k and c + c^2 + ... + c^k = (1 - c^k) / (lr * l2) with c = 1 / (1 + lr * l2), through
    # log1p/expm1 so that a tiny lr * l2 does not cancel (the sum tends to k).
    klog = -k * np.log1p(ll)
    ck = np.exp(klog)
    geo = np.where(ll > 0, -np.expm1(klog) / np.where(ll > 0, ll, 1.0), k)
    if l1 > 0:
        W[...] = np.sign(W) * np.maximum(0.0, ck * np.abs(W) - lr * l1 * geo)
    elif l2 > 0:
        W *= ck


def adagrad_rate(eta, acc):
    """Per-coordinate AdaGrad step ``eta / (eps + sqrt(acc))``; 0 where nothing was seen yet,
    so a coordinate's regularization starts with its first gradient (a warm-started weight of a
    feature that has not occurred yet is not wiped out by the huge rate of an empty
    accumulator)."""
    acc = np.asarray(acc, dtype=np.float64)    # float32 sums too: the rate is float64
    return np.where(acc > 0, eta / (EPS_ADAGRAD + np.sqrt(acc)), 0.0)
