"""Factor-graph basics: MAP answer, marginals, free energy, most offending answer.

A tiny weather model after LeCun et al. (2006): two visible variables (today's
sky and whether the grass is wet) and one latent variable (whether it rained in
the night), which is never observed and never part of an answer. Lower energy
means a more compatible configuration.

Run:  python examples/factor_graph_basics.py
"""
import numpy as np

import factorebm as fe

g = fe.FactorGraph()
g.add_variable("sky", ["clear", "cloudy"])
g.add_variable("grass", ["dry", "wet"])
g.add_variable("rain", ["no", "yes"], latent=True)

g.add_factor(["sky"], np.array([0.2, 0.9]))                   # clear skies are a bit more common
g.add_factor(["sky", "rain"], np.array([[0.0, 2.5],           # rain is unlikely under a clear sky
                                        [0.8, 0.3]]))
g.add_factor(["rain", "grass"], np.array([[0.0, 1.5],         # wet grass without rain needs a sprinkler
                                          [np.inf, 0.0]]))    # rain always wets the grass: dry is forbidden


def named(assignment):
    return {v: g.label_of(v, k) for v, k in assignment.items()}


r = fe.min_sum(g)
print("MAP answer:", named(r.assignment), "latent:", named(r.latent), f"energy {r.energy:.3f}")
print("  -> the lowest-energy configuration (min over the latent rain); exact because the graph is a tree:",
      r.exact)

m = fe.sum_product(g, beta=1.0)
for v in g.variables:
    print(f"marginal P({v}):", {lab: round(float(p), 4) for lab, p in zip(g.labels(v), m.marginals[v])})
print("  -> probabilities under the Gibbs distribution P(y) = exp(-E(y)) / Z at beta = 1 "
      "(the latent rain summed out of the others)")

print(f"free energy F = {m.free_energy:.4f}")
print("  -> -log Z: a soft minimum of the energy over all configurations, always <= the MAP energy",
      f"({r.energy:.3f})")

y = {"sky": "clear", "grass": "dry"}
print(f"F(Y) for Y = {y}: {fe.free_energy(g, beta=1.0, evidence=y):.4f}")
print("  -> the tutorial's free energy of one answer: the latent rain summed out, Y clamped as evidence")

target = r.assignment
bad, bad_energy = fe.most_offending(g, target)
print("most offending incorrect answer:", named(bad), f"energy {bad_energy:.3f}")
print("  -> the lowest-energy answer that differs from the correct one; margin losses push its energy up")
