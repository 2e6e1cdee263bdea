"""factorebm: energy-based structured prediction on factor graphs.

After LeCun, Chopra, Hadsell, Ranzato and Huang, "A Tutorial on Energy-Based
Learning" (2006). A model is an energy E(W, Y, X), a sum of factors over
discrete variables; inference is ``argmin_Y E`` (min-sum belief propagation)
or the Gibbs distribution ``exp(-beta E) / Z`` (sum-product); learning shapes
the energy with the tutorial's losses.
"""
import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it ("" for a submodule of that name). Each is
# imported on first use (PEP 562 __getattr__), so that ``import factorebm`` is nearly free and
# ``factorebm tag`` loads only what tagging needs (no scipy, no networkx, no learner).
_LAZY = {
    "FactorGraph": "graph",
    "min_sum": "inference", "sum_product": "inference", "free_energy": "inference",
    "most_offending": "inference",
    "SequenceTagger": "tagger",
    "sample": "sampling",
    "GridCRF": "models",
    "chain": "", "datasets": "", "learning": "", "losses": "", "metrics": "", "modules": "",
    "models": "", "optimize": "", "sampling": "",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name, None if name.startswith("_") else "")
    target = f"{__name__}.{module or name}"
    try:
        # a public name, or any submodule (fe.features, fe.modelio, ...)
        value = None if module is None else importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name != target:
            raise
        value = None
    if value is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module:
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
