"""The factor graph: named discrete variables and energy tables over them.

A :class:`FactorGraph` describes an energy function over discrete variables
(LeCun et al. 2006, section 3)::

    E(y) = sum_f  T_f[y_scope(f)]

Each factor ``f`` holds an energy table ``T_f`` indexed by the states of the
variables in its scope (row-major, in scope order). Lower energy is better;
``+inf`` marks a forbidden combination. Variables flagged ``latent`` are the
tutorial's hidden variables Z: never observed and never reported as an answer;
min-sum minimizes them out and sum-product sums them out.

The graph validates everything on entry, so the compiled kernels never see bad
input. Inference (:mod:`factorebm.inference`) works on the flat arrays of
:class:`factorebm.compiled.CompiledGraph`, built by :meth:`FactorGraph.compile`
and cached until the graph changes.
"""
from bisect import bisect_right
from collections import namedtuple
from numbers import Complex, Real

import numpy as np

from .checks import is_int

__all__ = ["FactorGraph"]

# Factors are stored in blocks, one per add_factor / add_factors call: ``scope`` is an
# (n, arity) int64 array of variable indices, ``table`` the energies, (n, *cards) with one
# table per factor or (*cards) shared by all n (stored once: a Potts grid's one K x K table).
# Both arrays are read-only, so copies of the graph share them.
_Block = namedtuple("_Block", "scope table shared")


def _is_real(value):
    return isinstance(value, (Real, np.bool_))


def _table_values(where, energies):
    """energies as a fresh C-contiguous float64 array; ValueError (naming ``where``) if not real numbers.

    NaN and -inf are left for the caller to reject (it knows which factor holds them).
    """
    try:
        raw = np.asarray(energies)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: energies are not an array of numbers") from None
    kind, what = raw.dtype.kind, None
    if kind == "O":              # a list mixing numbers and other objects (None, strings, ...)
        odd = [x for x in raw.flat if not _is_real(x)]
        kind = "f" if not odd else "c" if isinstance(odd[0], Complex) else "O"
        what = f"an entry {odd[0]!r}" if odd else None
    if kind not in "biuf":
        what = what or f"dtype {raw.dtype}"
        if kind == "c":
            raise ValueError(f"{where}: energies are complex ({what}); they must be real")
        raise ValueError(f"{where}: energies must be numeric, got {what}")
    return np.array(raw, dtype=np.float64, order="C", copy=True)


def _check_symmetric(g, edge, u, v, table, edge_scope):
    """An undirected edge (u, v) without a stated axis order must carry a symmetric table.

    Tables of neither (K_u, K_v) nor (K_v, K_u) shape, or not numeric, are left to
    :meth:`FactorGraph.add_factor` to reject.
    """
    t = np.asarray(table)
    ku, kv = g.cardinality(u), g.cardinality(v)
    if t.dtype.kind in "biuf" and t.shape in ((ku, kv), (kv, ku)) and not (
            ku == kv and np.array_equal(t, t.T, equal_nan=True)):
        raise ValueError(
            f"{edge}: the energy table is not symmetric, and an undirected graph does not say which "
            f"endpoint its rows belong to; give the axis order as the edge attribute {edge_scope!r}, the "
            f"rows' variable first ({edge_scope}=({u!r}, {v!r}) or ({v!r}, {u!r})), or use a "
            f"networkx.DiGraph (u -> v means axes (u, v))")


def _node_variable(g, n, d, latent, node_energy=None):
    """Add node ``n`` (attributes ``d``) of a networkx graph to ``g`` as a variable.

    Its states come from ``labels``, else ``n_states``, else (with ``node_energy``)
    the length of its unary energies; attribute ``latent`` (a bool) flags it latent.
    """
    if d.get("labels") is not None:
        states = list(d["labels"])
    elif d.get("n_states") is not None:
        states = d["n_states"]
    elif node_energy is not None and d.get(node_energy) is not None:
        states = int(np.shape(d[node_energy])[0]) if np.ndim(d[node_energy]) == 1 else -1
        if states < 1:
            raise ValueError(f"node {n!r}: {node_energy!r} must be a non-empty 1-D array")
    else:
        names = "'n_states' or 'labels'" if node_energy is None else f"{node_energy!r}, 'n_states' or 'labels'"
        raise ValueError(f"node {n!r} has no {names} attribute")
    is_latent = d.get(latent)
    g.add_variable(n, states, latent=False if is_latent is None else is_latent)


class FactorGraph:
    """An energy function over named discrete variables, as a sum of factor tables.

    Examples
    --------
    >>> import numpy as np, factorebm as fe
    >>> g = fe.FactorGraph()
    >>> g.add_variable("a", 3)
    >>> g.add_variable("b", ["NOUN", "VERB"])
    >>> g.add_variable("z", 2, latent=True)
    >>> g.add_factor(["a"], np.array([0.0, 1.0, 2.0]))
    0
    >>> g.add_factor(["a", "b", "z"], np.zeros((3, 2, 2)))
    1
    >>> g.energy({"a": 2, "b": "VERB", "z": 0})
    2.0
    """

    def __init__(self):
        self._names = []          # variable names in insertion order
        self._index = {}          # name -> variable index
        self._n_states = []       # cardinality of each variable
        self._labels = []         # tuple of label names, or None for 0..K-1
        self._label_index = []    # dict label -> state, or None
        self._latent = []         # bool per variable
        self._blocks = []         # _Block per add_factor / add_factors call, in insertion order
        self._block_start = [0]   # block b holds factors [_block_start[b], _block_start[b+1])
        self._override = {}       # factor index -> table that replaced its block's (set_factor_energies)
        self._int_names = 0       # variables 0..n-1 are named by the ints 0..n-1 (a fast path)
        self._n_states_array = None
        self._structure_version = 0
        self._tables_version = 0
        self._compiled = None

    # ------------------------------------------------------------------ building
    def add_variable(self, name, states, latent=False):
        """Add a discrete variable.

        Parameters
        ----------
        name : hashable
            Unique variable name (usually a str).
        states : int or sequence
            The cardinality (labels are then ``0 .. states-1``), or a sequence of
            distinct label names.
        latent : bool, default False
            A latent variable (the tutorial's Z) is never observed and never part of
            an answer: min-sum minimizes it out, sum-product sums it out. Must be a
            bool (Python or numpy).
        """
        try:
            hash(name)
        except TypeError:
            raise ValueError(f"variable name {name!r} is not hashable") from None
        if name in self._index:
            raise ValueError(f"duplicate variable name {name!r}")
        if not isinstance(latent, (bool, np.bool_)):
            raise ValueError(f"variable {name!r}: latent must be a bool, got {latent!r}")
        if is_int(states):
            n_states = int(states)
            if n_states < 1:
                raise ValueError(f"variable {name!r}: the number of states must be >= 1, got {n_states}")
            labels = None
            label_index = None
        elif isinstance(states, (str, bytes)) or not hasattr(states, "__iter__"):
            raise ValueError(f"variable {name!r}: states must be an int or a sequence of label names, "
                             f"got {states!r}")
        else:
            labels = tuple(states)
            if len(labels) == 0:
                raise ValueError(f"variable {name!r}: needs at least one label")
            label_index = {}
            for k, lab in enumerate(labels):
                try:
                    if lab in label_index:
                        raise ValueError(f"variable {name!r}: duplicate label {lab!r}")
                except TypeError:
                    raise ValueError(f"variable {name!r}: label {lab!r} is not hashable") from None
                label_index[lab] = k
            n_states = len(labels)
        v = len(self._names)
        self._index[name] = v
        self._names.append(name)
        self._n_states.append(n_states)
        self._labels.append(labels)
        self._label_index.append(label_index)
        self._latent.append(bool(latent))
        if self._int_names == v and is_int(name) and name == v:
            self._int_names += 1
        self._structure_changed()

    def add_variables(self, names, n_states, latent=False):
        """Add many variables at once (no Python call per variable).

        Parameters
        ----------
        names : int or iterable of hashable
            The new variables' names, distinct and not yet in the graph; an int
            ``n`` names them ``0 .. n-1``.
        n_states : int or array_like of int, shape (n,)
            The cardinality of every variable, or of each (labels are ``0 .. K-1``;
            :meth:`add_variable` takes label names).
        latent : bool or array_like of bool, shape (n,)
            Latent flag of every variable, or of each.

        Examples
        --------
        >>> import factorebm as fe
        >>> g = fe.FactorGraph()
        >>> g.add_variables(4, 3)                     # variables 0, 1, 2, 3 with 3 states each
        >>> g.add_variables(["z0", "z1"], [2, 5], latent=True)
        >>> g.variables
        [0, 1, 2, 3, 'z0', 'z1']
        """
        if is_int(names):
            if names < 0:
                raise ValueError(f"add_variables: the number of variables must be >= 0, got {names}")
            names = list(range(int(names)))
        elif isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
            raise ValueError(f"add_variables: names must be an iterable of variable names or an int n "
                             f"(names 0..n-1), got {names!r}")
        else:
            names = names.tolist() if isinstance(names, np.ndarray) else list(names)
        n = len(names)
        states = self._per_variable(names, n_states, "n_states", "iu", lambda x: x >= 1,
                                    "the number of states must be >= 1")
        lat = self._per_variable(names, latent, "latent", "b", None, None)
        try:
            distinct = set(names)
        except TypeError:
            for x in names:
                try:
                    hash(x)
                except TypeError:
                    raise ValueError(f"variable name {x!r} is not hashable") from None
            raise
        if len(distinct) != n or not self._index.keys().isdisjoint(distinct):
            seen = set(self._index)
            for x in names:
                if x in seen:
                    raise ValueError(f"duplicate variable name {x!r}")
                seen.add(x)
        v0 = len(self._names)
        self._index.update(zip(names, range(v0, v0 + n)))
        self._names.extend(names)
        self._n_states.extend(states)
        self._labels.extend([None] * n)
        self._label_index.extend([None] * n)
        self._latent.extend(lat)
        if self._int_names == v0:
            arr = np.asarray(names) if n else np.zeros(0, dtype=np.int64)
            if arr.dtype.kind in "iu" and arr.ndim == 1:
                ok = arr == np.arange(v0, v0 + n)
                self._int_names += n if ok.all() else int(np.argmin(ok))
        self._structure_changed()

    @staticmethod
    def _per_variable(names, value, what, kinds, valid, rule):
        """One value for every variable, or one each: a list of n Python scalars (validated)."""
        n = len(names)
        scalar = isinstance(value, (bool, np.bool_)) if kinds == "b" else is_int(value)
        if scalar:
            if valid is not None and not valid(value):
                raise ValueError(f"add_variables: {rule}, got {what}={value!r}")
            return [value.item() if isinstance(value, np.generic) else value] * n
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):
            arr = np.zeros(0, dtype=object)
        if arr.shape != (n,) or arr.dtype.kind not in kinds:
            kind = "a bool" if kinds == "b" else "an int"
            raise ValueError(f"add_variables: {what} must be {kind} or an array of {n} "
                             f"{'bools' if kinds == 'b' else 'ints'} (one per variable), got {value!r}")
        if valid is not None:
            bad = np.flatnonzero(~valid(arr))
            if bad.size:
                raise ValueError(f"variable {names[bad[0]]!r}: {rule}, got {arr[bad[0]]}")
        return arr.tolist()

    def add_factor(self, scope, energies):
        """Add a factor over ``scope`` with an energy table; returns its index.

        Parameters
        ----------
        scope : sequence of variable names (or one name)
            Distinct variables, in the order of the table's axes.
        energies : array_like of float, shape = cardinalities of ``scope``
            ``energies[k_1, ..., k_a]`` is the energy when the scope variables take
            states ``k_1 .. k_a``. ``+inf`` forbids a combination; NaN, ``-inf``,
            complex and non-numeric entries are rejected.

        Returns
        -------
        int
            The factor's index (factors are numbered in insertion order).
        """
        f = self.n_factors
        if isinstance(scope, (str, bytes)) or not hasattr(scope, "__iter__"):
            scope = [scope]
        scope = list(scope)
        if len(scope) == 0:
            raise ValueError(f"factor {f}: the scope is empty")
        idx = []
        for name in scope:
            try:
                idx.append(self._index[name])
            except (KeyError, TypeError):
                raise KeyError(f"factor {f} over {tuple(scope)!r}: unknown variable {name!r}") from None
        if len(set(idx)) != len(idx):
            raise ValueError(f"factor {f} over {tuple(scope)!r}: a variable appears twice")
        table = self._check_table(f, tuple(idx), energies)
        self._append_block(np.asarray([idx], dtype=np.int64), table, True)
        return f

    def add_factors(self, scopes, energies):
        """Add many factors of one shape at once (no Python call per factor).

        Parameters
        ----------
        scopes : array_like, shape (F, arity)
            Row i is the scope of the i-th new factor (variable names, distinct
            within a row). Every row's variables must have the same cardinalities
            (K_1, ..., K_arity). An integer numpy array is the fast path where the
            graph's first variables are named ``0 .. n-1`` (``add_variables(n, K)``).
        energies : array_like of float, shape (F, K_1, ..., K_arity) or (K_1, ..., K_arity)
            One table per factor, or one table shared by all F factors (stored
            once, and read once per sweep by belief propagation). ``+inf`` forbids
            a combination; NaN and ``-inf`` are rejected.

        Returns
        -------
        range
            The new factors' indices.

        Examples
        --------
        A 4-neighbour Potts grid of n x n variables with K states:

        >>> import numpy as np, factorebm as fe
        >>> n, K = 3, 2
        >>> g = fe.FactorGraph()
        >>> g.add_variables(n * n, K)
        >>> ids = np.arange(n * n).reshape(n, n)
        >>> edges = np.concatenate([np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1),
        ...                         np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1)])
        >>> g.add_factors(edges, 1.0 - np.eye(K))         # one table for all 12 factors
        range(0, 12)
        >>> g.add_factors(ids.reshape(-1, 1), np.zeros((n * n, K)))   # unary: one table each
        range(12, 21)
        """
        f0 = self.n_factors
        idx = self._scope_indices(scopes, f0)
        F, a = idx.shape
        for i in range(a):
            for j in range(i + 1, a):
                dup = np.flatnonzero(idx[:, i] == idx[:, j])
                if dup.size:
                    raise ValueError(f"factor {f0 + dup[0]} over {self._scope_names(idx[dup[0]])!r}: "
                                     f"a variable appears twice")
        if F == 0:
            return range(f0, f0)
        cards = self._n_states_arr()[idx]
        odd = np.flatnonzero((cards != cards[0]).any(axis=1))
        if odd.size:
            i = odd[0]
            raise ValueError(f"factor {f0 + i} over {self._scope_names(idx[i])!r}: cardinalities "
                             f"{tuple(cards[i].tolist())} differ from those of factor {f0} "
                             f"{tuple(cards[0].tolist())}; one add_factors call takes factors of one "
                             f"table shape")
        shape = tuple(cards[0].tolist())
        table = _table_values(f"factors {f0}..{f0 + F - 1}", energies)
        if table.shape == shape:
            shared = True
        elif table.shape == (F,) + shape:
            shared = False
        else:
            raise ValueError(f"add_factors: energies have shape {table.shape}, expected {shape} (one "
                             f"table shared by the {F} factors) or {(F,) + shape} (one table per factor; "
                             f"the cardinalities of the scopes' variables)")
        if table.size and not table.min() > -np.inf:
            bad = np.isnan(table) | (table == -np.inf)
            i = 0 if shared else int(np.flatnonzero(bad.reshape(F, -1).any(axis=1))[0])
            what = "NaN" if np.isnan(table if shared else table[i]).any() else \
                "-inf (only +inf, meaning forbidden, is allowed)"
            who = f"the table shared by factors {f0}..{f0 + F - 1}" if shared else \
                f"factor {f0 + i} over {self._scope_names(idx[i])!r}"
            raise ValueError(f"{who}: energies contain {what}")
        table.setflags(write=False)
        self._append_block(idx, table, shared)
        return range(f0, f0 + F)

    def _scope_indices(self, scopes, f0):
        """(F, arity) array of names -> (F, arity) int64 variable indices (validated)."""
        arr = scopes if isinstance(scopes, np.ndarray) else None
        if arr is None:
            try:
                arr = np.array(scopes, dtype=object)
            except (TypeError, ValueError):
                arr = None
            if arr is None or arr.ndim != 2:
                # names that numpy splits (tuples) or ragged rows: read row by row
                if isinstance(scopes, (str, bytes)) or not hasattr(scopes, "__iter__"):
                    raise ValueError(f"add_factors: scopes must be an (F, arity) array of variable "
                                     f"names, got {scopes!r}")
                rows = list(scopes)
                if any(isinstance(r, (str, bytes)) or not hasattr(r, "__iter__") for r in rows):
                    raise ValueError("add_factors: scopes must be 2-D (F, arity), one row of names "
                                     "per factor (unary factors: [[name], ...])")
                rows = [list(r) for r in rows]
                if len({len(r) for r in rows}) > 1:
                    raise ValueError(f"add_factors: scopes must be an (F, arity) array; rows have "
                                     f"lengths {sorted({len(r) for r in rows})}")
                arr = np.empty((len(rows), len(rows[0]) if rows else 0), dtype=object)
                for i, r in enumerate(rows):
                    for j, x in enumerate(r):
                        arr[i, j] = x
        if arr.ndim != 2:
            raise ValueError(f"add_factors: scopes must be 2-D (F, arity), got shape {arr.shape} "
                             f"(unary factors: shape (F, 1))")
        F, a = arr.shape
        if a == 0 and F:
            raise ValueError(f"factor {f0}: the scope is empty")
        n_int = self._int_names
        if arr.dtype.kind in "iu" and n_int and F:
            idx = np.array(arr, dtype=np.int64)
            if idx.min() >= 0 and idx.max() < n_int:
                idx.setflags(write=False)
                return idx
        flat = arr.ravel().tolist()
        index = self._index
        try:
            idx = np.fromiter(map(index.__getitem__, flat), dtype=np.int64, count=len(flat))
        except (KeyError, TypeError):
            for pos, name in enumerate(flat):
                try:
                    index[name]
                except (KeyError, TypeError):
                    row = tuple(flat[pos - pos % a:pos - pos % a + a])
                    raise KeyError(f"factor {f0 + pos // a} over {row!r}: unknown variable "
                                   f"{name!r}") from None
            raise
        idx = idx.reshape(F, a)
        idx.setflags(write=False)
        return idx

    def _append_block(self, scope, table, shared):
        self._blocks.append(_Block(scope, table, shared))
        self._block_start.append(self._block_start[-1] + len(scope))
        self._structure_changed()

    def _n_states_arr(self):
        """int64 (V,): the cardinalities as an array (cached until a variable is added)."""
        arr = self._n_states_array
        if arr is None or len(arr) != len(self._n_states):
            arr = np.asarray(self._n_states, dtype=np.int64)
            self._n_states_array = arr
        return arr

    def _scope_names(self, idx):
        return tuple(self._names[v] for v in np.asarray(idx).tolist())

    def set_factor_energies(self, factor, energies):
        """Replace the energy table of factor ``factor`` in place (same shape).

        Cheap for learners: the compiled structure is kept and only the cached
        tables are refreshed on the next inference call. A factor that shared its
        table with others (:meth:`add_factors`) gets its own; the others keep theirs.
        """
        f = self._factor_index(factor)
        b, i = self._locate(f)
        block = self._blocks[b]
        table = self._check_table(f, tuple(block.scope[i].tolist()), energies)
        if len(block.scope) == 1:
            self._blocks[b] = _Block(block.scope, table, True)
        else:
            self._override[f] = table
        self._tables_version += 1

    def set_all_factor_energies(self, tables):
        """Replace every factor's table at once (same shapes), as :meth:`set_factor_energies`
        does one by one, with one check and no Python step per factor.

        Parameters
        ----------
        tables : (total,) float array
            The factors' tables back to back in factor order, each flattened in C order
            (what :meth:`factorebm.learning.ParametricGraph.tables` gives).
        """
        flat = _table_values("set_all_factor_energies", tables).ravel()
        # a block holds n factors of one shape: one shared table, or an (n, *shape) array
        sizes = [(len(b.scope), int(np.prod(b.table.shape[0 if b.shared else 1:], dtype=np.int64)))
                 for b in self._blocks]
        total = sum(n * k for n, k in sizes)
        if flat.shape[0] != total:
            raise ValueError(f"set_all_factor_energies: the factors' tables hold {total} "
                             f"entries, got {flat.shape[0]}")
        if total and not flat.min() > -np.inf:
            # the first factor holding NaN or -inf, named by the one-factor check
            ends = np.cumsum(np.repeat([k for _, k in sizes], [n for n, _ in sizes]))
            f = int(np.searchsorted(ends, np.flatnonzero(~(flat > -np.inf))[0], side="right"))
            scope = self._factor_scope_idx(f)
            shape = tuple(self._n_states[v] for v in scope)
            self._check_table(f, scope, flat[ends[f] - int(np.prod(shape)):ends[f]].reshape(shape))
        blocks, pos = [], 0
        for block, (n, k) in zip(self._blocks, sizes):
            shape = block.table.shape[0 if block.shared else 1:]
            table = flat[pos:pos + n * k].reshape(shape if n == 1 else (n,) + shape)
            table.setflags(write=False)
            blocks.append(_Block(block.scope, table, n == 1))
            pos += n * k
        self._blocks = blocks
        self._override = {}
        self._tables_version += 1

    def _check_table(self, f, scope_idx, energies):
        shape = tuple(self._n_states[v] for v in scope_idx)
        names = tuple(self._names[v] for v in scope_idx)
        table = _table_values(f"factor {f} over {names!r}", energies)
        if table.shape != shape:
            raise ValueError(f"factor {f} over {names!r}: energies have shape {table.shape}, "
                             f"expected {shape} (the cardinalities of the scope)")
        if not table.min() > -np.inf:    # one reduction: the minimum is NaN or -inf only if one is there
            if np.isnan(table).any():
                raise ValueError(f"factor {f} over {names!r}: energies contain NaN")
            raise ValueError(f"factor {f} over {names!r}: energies contain -inf "
                             f"(only +inf, meaning forbidden, is allowed)")
        table.setflags(write=False)
        return table

    def _factor_index(self, factor):
        n = self.n_factors
        if not is_int(factor) or not 0 <= int(factor) < n:
            raise ValueError(f"factor {factor!r} does not exist (the graph has {n} factors)")
        return int(factor)

    def _locate(self, f):
        """(block, row) of factor index f."""
        b = bisect_right(self._block_start, f) - 1
        return b, f - self._block_start[b]

    def _factor_scope_idx(self, factor):
        """The scope of factor ``factor`` as a tuple of variable indices."""
        b, i = self._locate(self._factor_index(factor))
        return tuple(self._blocks[b].scope[i].tolist())

    def _factor_list(self):
        """[(scope as a tuple of variable indices, table)] for every factor, in insertion order."""
        out = []
        for block in self._blocks:
            scopes = list(map(tuple, block.scope.tolist()))
            out.extend(zip(scopes, [block.table] * len(scopes) if block.shared else block.table))
        for f, t in self._override.items():
            out[f] = (out[f][0], t)
        return out

    def _structure_changed(self):
        self._structure_version += 1
        self._compiled = None

    # ------------------------------------------------------------------ reading
    @property
    def variables(self):
        """list: variable names in insertion order (latent ones included)."""
        return list(self._names)

    @property
    def visible_variables(self):
        """list: names of the non-latent variables, in insertion order."""
        return [n for n, lat in zip(self._names, self._latent) if not lat]

    @property
    def latent_variables(self):
        """list: names of the latent variables, in insertion order."""
        return [n for n, lat in zip(self._names, self._latent) if lat]

    @property
    def factors(self):
        """list of (scope, energies): scope a tuple of names, energies a read-only float64 array."""
        names = self._names
        return [(tuple(names[v] for v in s), t) for s, t in self._factor_list()]

    @property
    def n_variables(self):
        return len(self._names)

    @property
    def n_factors(self):
        return self._block_start[-1]

    def __len__(self):
        return len(self._names)

    def __contains__(self, name):
        try:
            return name in self._index
        except TypeError:
            return False

    def cardinality(self, name):
        """int: number of states of variable ``name``."""
        return self._n_states[self._var(name)]

    def labels(self, name):
        """tuple: label names of variable ``name`` (``0 .. K-1`` when it has none)."""
        v = self._var(name)
        return self._labels[v] if self._labels[v] is not None else tuple(range(self._n_states[v]))

    def is_latent(self, name):
        return self._latent[self._var(name)]

    def factor_scope(self, factor):
        """tuple of names: the scope of factor ``factor``."""
        b, i = self._locate(self._factor_index(factor))
        return self._scope_names(self._blocks[b].scope[i])

    def factor_energies(self, factor):
        """ndarray: the (read-only) energy table of factor ``factor``."""
        f = self._factor_index(factor)
        if f in self._override:
            return self._override[f]
        b, i = self._locate(f)
        block = self._blocks[b]
        return block.table if block.shared else block.table[i]

    def copy(self):
        """An independent copy (tables are immutable, so they are shared)."""
        g = FactorGraph()
        g._names = list(self._names)
        g._index = dict(self._index)
        g._n_states = list(self._n_states)
        g._labels = list(self._labels)
        g._label_index = list(self._label_index)
        g._latent = list(self._latent)
        g._blocks = list(self._blocks)
        g._block_start = list(self._block_start)
        g._override = dict(self._override)
        g._int_names = self._int_names
        return g

    def __repr__(self):
        n_lat = sum(self._latent)
        arity = max((b.scope.shape[1] for b in self._blocks), default=0)
        return (f"FactorGraph({len(self._names)} variables ({n_lat} latent), "
                f"{self.n_factors} factors, max arity {arity})")

    # ------------------------------------------------------------------ assignments
    def _var(self, name):
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise KeyError(f"unknown variable {name!r}") from None

    def _state(self, v, value, what="assignment"):
        """State index of ``value`` (a label name or an index) for variable index v."""
        # integers are always state indices; anything else is looked up as a label name
        label_index = self._label_index[v]
        if label_index is not None and not is_int(value):
            try:
                return label_index[value]
            except (KeyError, TypeError):
                raise ValueError(f"{what}: {value!r} is not a label of variable {self._names[v]!r} "
                                 f"(labels {self._labels[v]!r})") from None
        if not is_int(value):
            raise ValueError(f"{what}: value {value!r} of variable {self._names[v]!r} is not a state index")
        k = int(value)
        if not 0 <= k < self._n_states[v]:
            raise ValueError(f"{what}: value {k} of variable {self._names[v]!r} is out of range "
                             f"0..{self._n_states[v] - 1}")
        return k

    def _resolve(self, assignment, what="assignment"):
        """dict name -> value  ->  dict variable index -> state index (validated)."""
        if assignment is None:
            return {}
        if not hasattr(assignment, "items"):
            raise ValueError(f"{what} must be a dict from variable name to label, got {type(assignment).__name__}")
        out = {}
        for name, value in assignment.items():
            v = self._var(name)
            out[v] = self._state(v, value, what)
        return out

    def _resolve_visible(self, assignment, what, why):
        """:meth:`_resolve` for evidence or a target, which may not name a latent variable.

        ``why`` ends the error message: what happens to latent variables instead.
        """
        resolved = self._resolve(assignment, what)
        for v in resolved:
            if self._latent[v]:
                raise ValueError(f"{what}: variable {self._names[v]!r} is latent: latent variables are "
                                 f"never observed; {why}")
        return resolved

    def _states_array(self, assignment, what="assignment"):
        """A full assignment as an int64 array of state indices, shape (n_variables,)."""
        resolved = self._resolve(assignment, what)
        if len(resolved) != len(self._names):
            missing = [n for v, n in enumerate(self._names) if v not in resolved]
            raise ValueError(f"{what} lacks variable {missing[0]!r} ({len(missing)} missing)")
        states = np.empty(len(self._names), dtype=np.int64)
        for v, k in resolved.items():
            states[v] = k
        return states

    def state_of(self, name, value):
        """The state index of ``value`` for variable ``name``: an integer is a state index
        (checked against the range), anything else one of its label names (True or 1.0 is
        neither). ValueError otherwise. The inverse of :meth:`label_of`."""
        return self._state(self._var(name), value)

    def label_of(self, name, state):
        """The label name of ``state`` of variable ``name`` (the index when it has none)."""
        v = self._var(name)
        return self._labels[v][state] if self._labels[v] is not None else int(state)

    def energy(self, assignment):
        """Energy of a full assignment (every variable, latent ones included).

        Parameters
        ----------
        assignment : dict
            Variable name -> label name or state index, for every variable
            (an integer is always read as a state index).

        Returns
        -------
        float
            ``sum_f T_f[assignment]``; ``+inf`` if a forbidden combination is used.
        """
        states = self._states_array(assignment)
        parts = []
        for block in self._blocks:
            at = tuple(states[block.scope].T)
            parts.append(block.table[at] if block.shared else block.table[(np.arange(len(block.scope)),) + at])
        values = np.concatenate(parts) if parts else np.zeros(0)
        for f, t in self._override.items():
            values[f] = t[tuple(states[list(self._factor_scope_idx(f))])]
        # summed in factor order, one by one, like the tables' own definition of E
        return float(sum(values.tolist()))

    # ------------------------------------------------------------------ compilation
    def compile(self):
        """The :class:`~factorebm.compiled.CompiledGraph` of this graph (cached until it changes)."""
        from .compiled import CompiledGraph
        cg = self._compiled
        if cg is None or cg.structure_version != self._structure_version:
            cg = CompiledGraph(self)
            self._compiled = cg
        elif cg.tables_version != self._tables_version:
            cg.refresh_tables(self)
        return cg

    # ------------------------------------------------------------------ networkx
    @classmethod
    def from_networkx(cls, G, node_energy="energy", edge_energy="energy", latent="latent",
                      edge_scope="scope"):
        """Build a pairwise MRF from a networkx graph (or read back :meth:`to_networkx`).

        Parameters
        ----------
        G : networkx.Graph or networkx.DiGraph
            Every node is a variable. Its attribute ``node_energy`` holds its unary
            energies, shape (K,) (a unary factor is added); a node without one needs
            an ``n_states`` (int) or ``labels`` (sequence) attribute. A ``latent``
            node attribute (a bool) marks a latent variable.
            Every edge holds a pairwise table under ``edge_energy``; which endpoint
            its rows belong to is, in this order:

            * the edge attribute ``edge_scope``, a pair of the edge's endpoints:
              ``scope=(u, v)`` means entry ``[i, j]`` is the energy of u = i, v = j;
            * in a ``networkx.DiGraph``, the edge's direction: ``u -> v`` means
              axes ``(u, v)``;
            * in an undirected graph without ``edge_scope``, nothing: the order in
              which ``G.edges`` yields an edge follows node insertion, not how the
              edge was written, so only a symmetric table (square and equal to its
              transpose) is accepted, and any other raises a ``ValueError`` naming
              the edge.

            A bipartite graph made by :meth:`to_networkx` (every node has ``kind``
            "variable" or "factor", at least one node is a factor, and factor nodes
            carry ``scope`` and ``energy``) is read back as the same factor graph.
        node_energy, edge_energy, latent, edge_scope : str
            The attribute names described above.

        Returns
        -------
        FactorGraph

        Examples
        --------
        >>> import networkx as nx, numpy as np, factorebm as fe
        >>> G = nx.Graph()
        >>> G.add_node("b", energy=np.zeros(2)); G.add_node("a", energy=np.zeros(2))
        >>> G.add_edge("a", "b", energy=np.array([[0.0, 1.0], [5.0, 0.0]]), scope=("a", "b"))
        >>> fe.FactorGraph.from_networkx(G).energy({"a": 1, "b": 0})
        5.0
        """
        nodes = list(G.nodes(data=True))
        if any(d.get("kind") == "factor" for _, d in nodes):
            return cls._from_bipartite(nodes)
        g = cls()
        for n, d in nodes:
            _node_variable(g, n, d, latent, node_energy)
        for n, d in nodes:
            if d.get(node_energy) is not None:
                g.add_factor([n], d[node_energy])
        directed = G.is_directed()
        for u, v, d in G.edges(data=True):
            edge = f"edge ({u!r}, {v!r})"
            if u == v:
                raise ValueError(f"{edge} is a self-loop")
            table = d.get(edge_energy)
            if table is None:
                raise ValueError(f"{edge} has no {edge_energy!r} attribute")
            scope = d.get(edge_scope)
            if scope is not None:
                if not isinstance(scope, (tuple, list)) or tuple(scope) not in ((u, v), (v, u)):
                    raise ValueError(f"{edge}: {edge_scope!r} must be the pair of its endpoints, "
                                     f"({u!r}, {v!r}) or ({v!r}, {u!r}), got {scope!r}")
            else:
                if not directed:
                    _check_symmetric(g, edge, u, v, table, edge_scope)
                scope = (u, v)
            g.add_factor(list(scope), table)
        return g

    @classmethod
    def _from_bipartite(cls, nodes):
        """Read back the layout of :meth:`to_networkx` (nodes as (name, attributes) pairs)."""
        g = cls()
        factor_nodes = []
        for pos, (n, d) in enumerate(nodes):
            kind = d.get("kind")
            if kind == "variable":
                _node_variable(g, n, d, "latent")
            elif kind == "factor":
                if d.get("scope") is None or d.get("energy") is None:
                    raise ValueError(f"factor node {n!r} of a bipartite factor graph needs 'scope' and "
                                     f"'energy' attributes")
                index = d.get("index")
                factor_nodes.append((index if is_int(index) else len(nodes) + pos, n, d))
            else:
                raise ValueError(f"node {n!r} has kind {kind!r}: in a bipartite factor graph (some node has "
                                 f"kind 'factor', as in to_networkx) every node has kind 'variable' or "
                                 f"'factor'")
        for _, n, d in sorted(factor_nodes, key=lambda x: x[0]):
            scope = d["scope"]
            g.add_factor([scope] if isinstance(scope, (str, bytes)) else list(scope), d["energy"])
        return g

    def to_networkx(self):
        """The bipartite variable/factor graph as a ``networkx.Graph``.

        Variable nodes are keyed by name (attributes ``kind="variable"``,
        ``bipartite=0``, ``n_states``, ``labels``, ``latent``); factor node i is
        keyed ``("factor", i)`` (attributes ``kind="factor"``, ``bipartite=1``,
        ``index``, ``scope``, ``energy``). Edges join a factor to its variables.
        """
        import networkx as nx
        G = nx.Graph()
        for v, name in enumerate(self._names):
            G.add_node(name, kind="variable", bipartite=0, n_states=self._n_states[v],
                       labels=self._labels[v], latent=self._latent[v])
        for f, (scope, table) in enumerate(self._factor_list()):
            key = ("factor", f)
            if key in self._index:
                raise ValueError(f"variable name {key!r} collides with the key of factor {f}")
            names = tuple(self._names[v] for v in scope)
            G.add_node(key, kind="factor", bipartite=1, index=f, scope=names, energy=table)
            for name in names:
                G.add_edge(key, name)
        return G
