"""The learning objectives, in one place: architectures, their corpora and objectives.

The tutorial's recipe (LeCun et al. 2006, sections 1-6): an architecture maps weights W to
energies, inference finds E+ (the correct answer) and E- (the most offending incorrect answer,
the minimum over all answers, or the free energy), a loss of :mod:`factorebm.losses` turns them
into ``(L, dL/dE+, dL/dE-)``, and the chain rule brings the gradient back to W. The parts live
in their own modules; this one gathers the public names:

* chains -- :class:`ChainEnergy` (any emission module of :mod:`factorebm.modules`),
  :class:`LinearChainEnergy` (sparse features), :func:`chain_objective`
  (:mod:`factorebm.energies.chain`);
* factor graphs -- :class:`ParametricGraph` (``tables = Phi @ w + offset``),
  :func:`tied_phi`, :func:`graph_objective` (:mod:`factorebm.energies.graph`);
* sparse features -- :class:`FactoredFeatures` (:mod:`factorebm.sparse`);
* the interface the optimizers use -- :class:`BatchObjective` (:mod:`factorebm.objective`).

Objectives are ``mean_i L(E+_i, E-_i) + 0.5 * l2 * ||w||^2``; L1 is handled by the optimizers
(:mod:`factorebm.optimize`) because it is not differentiable.
"""
from .energies.chain import (ChainCorpus, ChainEnergy, ChainObjective, LinearChainEnergy,
                             chain_objective)
from .energies.graph import GraphObjective, ParametricGraph, graph_objective, tied_phi
from .objective import BatchObjective
from .sparse import FactoredFeatures

__all__ = ["ChainEnergy", "LinearChainEnergy", "ChainCorpus", "ChainObjective",
           "chain_objective", "ParametricGraph", "tied_phi", "GraphObjective",
           "graph_objective", "BatchObjective", "FactoredFeatures"]
