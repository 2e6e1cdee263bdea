"""factorebm: energy-based structured prediction on factor graphs.

After LeCun, Chopra, Hadsell, Ranzato and Huang, "A Tutorial on Energy-Based
Learning" (2006). A model is an energy E(W, Y, X), a sum of factors over
discrete variables; inference is ``argmin_Y E`` (min-sum belief propagation)
or the Gibbs distribution ``exp(-beta E) / Z`` (sum-product); learning shapes
the energy with the tutorial's losses.
"""
from .graph import FactorGraph
from .inference import free_energy, min_sum, most_offending, sum_product
from . import chain, datasets, learning, losses, modules, optimize, sampling
from .sampling import sample
from .tagger import SequenceTagger
from .models import GridCRF

__version__ = "0.1.0"

__all__ = [
    "FactorGraph", "min_sum", "sum_product", "free_energy", "most_offending", "sample",
    "sampling", "chain", "losses", "learning", "modules", "optimize", "datasets", "SequenceTagger",
    "GridCRF",
    "__version__",
]
