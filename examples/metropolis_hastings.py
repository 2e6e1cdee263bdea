"""Metropolis-Hastings for a continuous parameter: the standard deviation of a normal.

A population of 30,000 is drawn from N(10, 3) and 1,000 of them are observed. With the mean
fixed at the observations' mean, the posterior of sigma (flat prior on sigma > 0) is sampled
by random-walk Metropolis-Hastings (``fe.sampling.metropolis_hastings``): a normal proposal
of standard deviation 0.5, 50,000 iterations from sigma = 0.1, the first 25% dropped as
burn-in. The log-likelihood is one vectorized numpy expression over the observations.

Run:  python examples/metropolis_hastings.py
"""
import numpy as np

import factorebm as fe

rng = np.random.default_rng(0)
TRUE_MU, TRUE_SIGMA = 10.0, 3.0
population = rng.normal(TRUE_MU, TRUE_SIGMA, 30_000)
observed = rng.choice(population, 1_000, replace=False)
mu = observed.mean()


def log_posterior(x):
    """log p(observed | mu, sigma) + log prior(sigma), up to a constant; -inf for sigma <= 0."""
    sigma = x[0]
    if sigma <= 0:
        return -np.inf
    return float(np.sum(-np.log(sigma) - (observed - mu) ** 2 / (2.0 * sigma ** 2)))


n_iter = 50_000
xs, acceptance = fe.sampling.metropolis_hastings(log_posterior, [0.1], n_iter,
                                                 proposal_scale=0.5, random_state=1)
burn_in = n_iter // 4
sigma_hat = xs[burn_in:, 0].mean()
print(f"iterations: {n_iter}, accepted: {round(acceptance * n_iter)} "
      f"(acceptance rate {acceptance:.3f})")
print(f"burn-in: the first 25% of the iterations ({burn_in}) dropped, "
      f"{n_iter - burn_in} kept")
print(f"sigma: estimate {sigma_hat:.3f} (posterior mean; sd {xs[burn_in:, 0].std():.3f}), "
      f"truth {TRUE_SIGMA}, observations' sd {observed.std():.3f}")
