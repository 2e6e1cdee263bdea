"""Multi-module architectures: the fprop / bprop cycle, and a trainable front end on a chain.

Part 1 -- the tutorial's two-layer network (LeCun et al. 2006, section 6; LeCun et al. 1998):
an architecture that gives one energy per class, E(W, Y, X) = net(W, X)[Y], trained by hand
with the fprop / bprop cycle and the negative log-likelihood loss, on points whose class is
the XOR of the signs of their coordinates. A linear energy cannot separate them; a two-layer
network can.

Part 2 -- the same idea inside a structured model: a linear chain whose emission energies come
from a module (ChainEnergy). Each token has two binary features and its label is their XOR.
A linear emission cannot learn it; a small MLP emission (Linear -> Tanh -> Linear), trained
jointly with the chain by the NLL, can.

Run: python examples/multimodule.py
"""
import numpy as np

import factorebm as fe
from factorebm import modules as nn
from factorebm.learning import ChainEnergy


def xor_points(n, rng):
    x = rng.uniform(-1, 1, (n, 2))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)
    return x, y


def train_by_hand(net, x, y, epochs=300, lr=0.5, batch=50, seed=0):
    """SGD on the NLL, one fprop / bprop cycle per mini-batch."""
    rng = np.random.default_rng(seed)
    w = net.init_params(random_state=seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for s in range(0, len(y), batch):
            idx = order[s:s + batch]
            energies = net.fprop(w, x[idx])                   # (b, 2): E(W, Y, X) per class
            # NLL = E(Y_i) - F with F = -log sum_Y exp(-E(Y)); dL/dE = onehot(Y_i) - P(Y | X)
            p = np.exp(-(energies - energies.min(axis=1, keepdims=True)))
            p /= p.sum(axis=1, keepdims=True)
            d_energies = -p
            d_energies[np.arange(len(idx)), y[idx]] += 1.0
            grad = np.zeros(net.n_params)
            net.bprop(w, d_energies / len(idx), grad)         # adds dL/dw into grad
            w -= lr * grad
    return w


def accuracy_points(net, w, x, y):
    return float(np.mean(np.argmin(net.fprop(w, x), axis=1) == y))


def xor_chain(n_seq, rng, n_noise=2):
    """Sequences of tokens with features (a, b, noise...) in {-1, 1}, label a XOR b."""
    lengths = rng.integers(3, 12, n_seq)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    bits = rng.integers(0, 2, (N, 2 + n_noise))
    X = 2.0 * bits - 1.0
    y = (bits[:, 0] ^ bits[:, 1]).astype(np.int64)
    return X, offsets, y


def main():
    rng = np.random.default_rng(0)
    print("Part 1: one energy per class, trained with fprop / bprop (XOR of coordinate signs)")
    x_train, y_train = xor_points(1000, rng)
    x_test, y_test = xor_points(1000, rng)
    linear = nn.Linear(2, 2)
    two_layer = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    for name, net in (("linear energy", linear), ("two-layer network", two_layer)):
        w = train_by_hand(net, x_train, y_train)
        print(f"  {name:18s} test accuracy {accuracy_points(net, w, x_test, y_test):.3f}")

    print("Part 2: a chain with a trainable emission module (labels = XOR of two features)")
    X, offsets, y = xor_chain(300, rng)
    Xt, offsets_t, yt = xor_chain(300, rng)
    d, K = X.shape[1], 2
    for name, emission in (("linear emission", nn.Linear(d, K)),
                           ("MLP emission", nn.Sequential(nn.Linear(d, 8), nn.Tanh(),
                                                          nn.Linear(8, K)))):
        model = ChainEnergy(emission, n_labels=K)
        w, history = fe.optimize.fit_chain(model, X, offsets, y, loss="nll", optimizer="lbfgs",
                                           max_iter=200, l2=1e-4, verbose=False,
                                           random_state=0)
        acc = float(np.mean(model.predict(w, Xt, offsets_t) == yt))
        print(f"  {name:18s} test token accuracy {acc:.3f}  ({len(history)} L-BFGS iterations,"
              f" final objective {history[-1]['loss']:.4f})")


if __name__ == "__main__":
    main()
