"""The NLL of parametric factor graphs with its contrastive term from persistent Gibbs chains.

The gradient of the negative log-likelihood ``L = E(Y) - F`` of a sample (LeCun et al. 2006,
section 6.2; with latent variables Z, ``E(Y)`` is the clamped free energy ``F(Y)``) is::

    dL/dw = Phi^T ( <1[x]>_{P(z | Y)} - <1[x]>_{P(x)} )

the expected factor-table indicators of the clamped distribution minus those of the model.
The model's expectation (the contrastive term) does not depend on the sample, only on the
graph: persistent contrastive divergence (Younes 1989; Tieleman 2008) estimates it from
Markov chains that are never restarted. Every distinct training graph keeps ``n_chains``
chains (its fantasy particles), advanced ``n_sweeps`` Gibbs sweeps under the current weights
at every step in which one of its samples is in the batch; their empirical factor beliefs
stand for the model's. With latent variables the clamped term is estimated the same way, by
chains per sample whose visible variables stay at the target.

The estimate is unbiased only as the chains mix, and it changes from call to call: it suits
the stochastic optimizers (SGD, AdaGrad, Adam), not L-BFGS. The reported loss is the energy
gap ``E(Y) - <E>_chains`` (the NLL itself needs the entropy, which samples do not give).
"""
import numpy as np

from .. import sampling
from ..checks import check_count
from ..objective import BatchObjective, loss_setup
from .graph import SampleGroups, check_samples

__all__ = ["PCDGraphObjective", "PCD_OPTIONS"]

PCD_OPTIONS = ("n_chains", "n_sweeps", "method")


class _Chains:
    """Persistent chains of one graph: its fantasy particles, or one sample's clamped ones."""

    def __init__(self, states, seed, clamped=None):
        self.states = states
        self.seed = seed
        self.clamped = clamped
        self.sweeps = 0

    def advance(self, g, n_sweeps, beta, method, n_threads):
        sampling.sweep_chains(g, self.states, n_sweeps, beta=beta, method=method,
                              clamped=self.clamped, seed=self.seed, sweep=self.sweeps,
                              n_threads=n_threads)
        self.sweeps += n_sweeps


class PCDGraphObjective(BatchObjective):
    """NLL of (ParametricGraph, target) samples, contrastive term by persistent chains.

    Parameters
    ----------
    samples : sequence of (ParametricGraph, dict)
        As for :class:`factorebm.energies.graph.GraphObjective`; samples may share one
        ParametricGraph (the usual case for many observations of one model).
    beta : float
        Inverse temperature of the Gibbs distribution.
    n_chains : int
        Persistent chains per distinct graph (and per sample for the clamped term, with
        latent variables).
    n_sweeps : int
        Sweeps per chain at every step (the k of PCD-k).
    method : {"gibbs", "mh"}
        The sampler (:func:`factorebm.sampling.sweep_chains`).
    random_state : int or None
        Seed of the chains' starting states and random streams (the results do not depend on
        the thread count).
    """

    def __init__(self, samples, beta=1.0, n_chains=10, n_sweeps=1, method="gibbs",
                 random_state=0):
        self.spec, self.params = loss_setup("nll", beta, {})
        self.beta = float(beta)
        self.samples, self.n_params = check_samples(samples)
        self.n_units = len(self.samples)
        self.n_chains = check_count(n_chains, "n_chains")
        self.n_sweeps = check_count(n_sweeps, "n_sweeps")
        if method not in sampling.METHODS:
            raise ValueError(f"unknown sampling method {method!r}; use one of "
                             f"{', '.join(sampling.METHODS)}")
        self.method = method
        self.seed = check_count(0 if random_state is None else random_state, "random_state", 0)
        self.groups = SampleGroups(self.samples)
        self._fantasies = [None] * len(self.groups.graphs)   # per graph: its chains
        self._clamped = {}            # per sample with latent variables: its clamped chains

    # ---------------------------------------------------------------- chains
    def _fantasy(self, j):
        chains = self._fantasies[j]
        if chains is None:
            seed = self._seed(2 * j)
            chains = self._fantasies[j] = _Chains(
                sampling.initial_states(self.groups.graphs[j].graph, self.n_chains,
                                        random_state=seed), seed)
        return chains

    def _seed(self, k):
        return (self.seed * 1_000_003 + k) % (2**62)

    def _clamped_chains(self, i):
        """Sample i's chains with its visible variables held at the target (latent graphs)."""
        chains = self._clamped.get(i)
        if chains is None:
            pg, target = self.samples[i]
            g = pg.graph
            visible = {v: target[v] for v in g.variables if not g.is_latent(v)}
            seed = self._seed(2 * (len(self.groups.graphs) + i) + 1)
            fixed = [k for k, v in enumerate(g.variables) if not g.is_latent(v)]
            chains = self._clamped[i] = _Chains(
                sampling.initial_states(g, self.n_chains, evidence=visible,
                                        random_state=seed), seed, fixed)
        return chains

    def _beliefs(self, pg, states):
        """The chains' empirical factor beliefs (summed over chains / n_chains), flat in the
        ParametricGraph's table order."""
        cg = pg.graph.compile()
        var_b = np.zeros(cg.n_states_total)
        fac_b = np.zeros(int(cg.fac_table_offset[-1]))
        sampling.accumulate_beliefs(pg.graph, states, var_b, fac_b)
        return pg.beliefs_vector(cg.factor_belief_list(var_b, fac_b))

    # ---------------------------------------------------------------- objective
    def unit_value_and_grad(self, w, units, n_threads=None):
        w = self.check_params(w)
        grad = np.zeros(self.n_params)
        total = 0.0
        for pg, mine in self.groups.split(units):
            j = self.groups.graph_of[mine[0]]
            m = len(mine)
            tables = pg.set_weights(w)          # the chains sample the graph's own tables
            g = pg.graph
            # the model's term, shared by every sample of this graph
            fantasy = self._fantasy(j)
            fantasy.advance(g, self.n_sweeps, self.beta, self.method, n_threads)
            b_model = self._beliefs(pg, fantasy.states)
            e_model = float(sampling.state_energies(g, fantasy.states).mean())
            # the clamped terms: the targets' table entries, or their clamped chains
            b_plus = np.zeros_like(b_model)
            e_plus = 0.0
            entries = []
            for i in mine:
                t = self.groups.target_entries(i)
                if t is None:
                    chains = self._clamped_chains(i)
                    chains.advance(g, self.n_sweeps, self.beta, self.method, n_threads)
                    b_plus += self._beliefs(pg, chains.states)
                    e_plus += float(sampling.state_energies(g, chains.states).mean())
                else:
                    entries.append(t)
            if entries:
                flat = np.concatenate(entries)
                b_plus += np.bincount(flat, minlength=b_plus.size)
                e_plus += float(tables[flat].sum())
            total += e_plus - m * e_model
            grad += pg.phi_T @ (b_plus - m * b_model)
        return total, grad
