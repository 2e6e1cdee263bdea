"""A character-level convolutional front end: a vector per word from its characters.

The tutorial's recipe for sequence labelling is a trainable front end feeding a structured
architecture (LeCun et al. 2006, section 6). :class:`CharCNN` is such a front end for words:
character embeddings, a 1-D convolution of a few widths over them, a maximum over the
positions of the word, a nonlinearity and optionally a highway layer (dos Santos and
Zadrozny 2014; Kim, Jernite, Sontag and Rush 2016; Ma and Hovy 2016)::

    z_b[p]  = sum_{j < k_b} E[c_{p + j - lo_b}] @ K_{b,j}     width k_b, lo_b = (k_b - 1) // 2
    m       = [max_p z_1[p], max_p z_2[p], ...] + bias          (n_dim,)
    h       = act(m)                                            relu or tanh
    v       = t * relu(h W_H + b_H) + (1 - t) * h,  t = sigmoid(h W_T + b_T)   (highway)

A word's vector depends on its characters only, so it is computed once per distinct word
TYPE of a batch (a tagging batch holds about half as many types as tokens), then copied to
its tokens. With ``window`` w > 0 a token's output is the vectors of the words at offsets
-w..+w around it, side by side (sentence boundaries are pseudo-types of their own), so a
following layer sees the token in context.

The convolution runs in :mod:`factorebm._charcnn`: because the embedding is linear, every
tap of every filter is first projected per *character* (``P = E @ K``, one small matrix
product: an alphabet has a few hundred characters, a batch tens of thousands of character
positions), and a position then costs additions only.

The input is a :class:`WordChars`: the character ids of some word types and, per token, the
type at each window position.
"""
import numpy as np

from .checks import check_count, threads_for
from .modules import Linear, Module, check_output_grad, dense_dy, sigmoid
from .params import dense_gradient

__all__ = ["CharCNN", "WordChars", "OpenMPLinear", "StepScale", "ACTIVATIONS", "matmul"]

ACTIVATIONS = ("relu", "tanh")


def _int_array(a, name, ndim):
    a = np.asarray(a)
    if a.ndim != ndim or not (a.dtype.kind in "iu" or a.size == 0):
        raise ValueError(f"WordChars: {name} must be a {ndim}-D integer array, got "
                         f"{a.dtype} {a.shape}")
    return a


class WordChars:
    """Tokens as word types, and the word types as character ids: a :class:`CharCNN`'s input.

    Parameters
    ----------
    chars : (C,) int
        Character ids (>= 0) of every word type, end to end.
    char_offsets : (n_types + 1,) int
        Type ``t`` is ``chars[char_offsets[t]:char_offsets[t + 1]]``; from 0 to C,
        non-decreasing.
    token_types : (N,) or (N, W) int
        The type of each token (one column) or of the words at W window positions around
        each token, in ``0..n_types-1``.

    Attributes
    ----------
    shape : (N, W)
    n_types : int
    max_char : int, the largest character id (-1 without characters)

    Mini-batches share the type table: :meth:`take_tokens` copies the token rows only.
    """

    def __init__(self, chars, char_offsets, token_types):
        chars = _int_array(chars, "chars", 1)
        offsets = _int_array(char_offsets, "char_offsets", 1)
        types = np.asarray(token_types)
        if types.ndim == 1:
            types = types[:, None]
        types = _int_array(types, "token_types", 2)
        if offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != chars.shape[0]:
            raise ValueError(f"WordChars: char_offsets must run from 0 to len(chars) = "
                             f"{chars.shape[0]}")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("WordChars: char_offsets must be non-decreasing")
        if chars.size and chars.min() < 0:
            raise ValueError("WordChars: character ids must be >= 0")
        n_types = offsets.shape[0] - 1
        if types.size and (types.min() < 0 or types.max() >= n_types):
            raise ValueError(f"WordChars: token_types must be type ids in 0..{n_types - 1}")
        if types.shape[1] < 1:
            raise ValueError("WordChars: token_types needs at least one column")
        if chars.size and chars.max() > np.iinfo(np.int32).max:
            raise ValueError("WordChars: character ids must fit in int32")
        self.chars = np.ascontiguousarray(chars, dtype=np.int32)
        self.char_offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.token_types = np.ascontiguousarray(types, dtype=np.int32)
        self.max_char = int(chars.max()) if chars.size else -1

    @classmethod
    def _from_validated(cls, chars, char_offsets, token_types, max_char):
        self = cls.__new__(cls)
        self.chars = chars
        self.char_offsets = char_offsets
        self.token_types = token_types
        self.max_char = max_char
        return self

    @property
    def shape(self):
        return self.token_types.shape

    @property
    def n_types(self):
        return self.char_offsets.shape[0] - 1

    def take_tokens(self, token_ids):
        """The tokens ``token_ids`` ((n,) int, in ``0..N-1``) with the same type table."""
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or not (ids.dtype.kind in "iu" or ids.size == 0):
            raise ValueError("take_tokens: token_ids must be a 1-D integer array")
        N = self.token_types.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= N):
            raise ValueError(f"take_tokens: token ids must lie in 0..{N - 1}")
        return WordChars._from_validated(self.chars, self.char_offsets,
                                         np.take(self.token_types, ids, axis=0),
                                         self.max_char)

    def __repr__(self):
        N, W = self.shape
        return f"WordChars({N} tokens x {W} positions, {self.n_types} types)"


def matmul(A, B, out=None, accumulate=False, n_threads=1, transpose_a=False):
    """``A @ B`` (``A.T @ B`` with ``transpose_a``), or that added into ``out`` with
    ``accumulate``, for float64 matrices, on ``n_threads`` OpenMP threads
    (:func:`factorebm._charcnn.matmul`).

    For the small products of this module: BLAS would run each on its own threads, which
    then spin between calls and contend with the OpenMP threads of the other kernels."""
    from . import _charcnn
    A = np.ascontiguousarray(A, dtype=np.float64)
    B = np.ascontiguousarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0 if transpose_a else 1] != B.shape[0]:
        raise ValueError(f"matmul: shapes {A.shape}{'.T' if transpose_a else ''} and "
                         f"{B.shape} do not chain")
    shape = (A.shape[1 if transpose_a else 0], B.shape[1])
    if out is None:
        out = np.empty(shape)
    elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"matmul: out must be a writable C-contiguous float64 {shape} array")
    _charcnn.matmul(A, B, out, bool(transpose_a), bool(accumulate), int(n_threads))
    return out


class OpenMPLinear(Linear):
    """:class:`factorebm.modules.Linear` computed by :func:`matmul` on the evaluation's
    threads instead of BLAS's: the layers of a character front end are a few hundred rows by
    tens of columns per mini-batch, where BLAS's own threads only get in the way.

    Parameters
    ----------
    n_in, n_out, bias : as for Linear
    zero_init : bool
        Start from W = 0 (an output layer added to other energies then changes nothing
        until it has learnt something); else Linear's Glorot initialization.
    """

    def __init__(self, n_in, n_out, bias=True, zero_init=False):
        super().__init__(n_in, n_out, bias)
        self.zero_init = bool(zero_init)

    def __repr__(self):
        return "OpenMP" + super().__repr__()

    def _init(self, rng):
        return np.zeros(self.n_params) if self.zero_init else super()._init(rng)

    def forward(self, w, x, ctx):
        if not (isinstance(x, np.ndarray) and x.dtype == np.float64 and x.ndim == 2
                and x.shape[1] == self.n_in):
            x = self.check_input(x)
        x = np.ascontiguousarray(x)
        nw = self.n_in * self.n_out
        nt = threads_for(ctx.n_threads, x.shape[0] * 16)
        y = matmul(x, w[:nw].reshape(self.n_in, self.n_out), n_threads=nt)
        if self.bias:
            y += w[nw:]
        ctx.save(self, (x, nt))
        return y

    def backward(self, w, dy, grad, ctx):
        x, nt = ctx.restore(self)
        dy = dense_dy(dy)
        check_output_grad(self, dy, (x.shape[0], self.n_out))
        g = dense_gradient(grad)
        nw = self.n_in * self.n_out
        matmul(x, dy, g[:nw].reshape(self.n_in, self.n_out), accumulate=True, n_threads=nt,
               transpose_a=True)
        if self.bias:
            g[nw:] += dy.sum(axis=0)
        return matmul(dy, w[:nw].reshape(self.n_in, self.n_out).T, n_threads=nt)


class StepScale(Module):
    """A module whose parameters are kept divided by ``scale``: ``module`` sees ``scale * w``.

    The outputs are the module's; what changes is the step an optimizer takes on them. The
    stochastic optimizers whose steps do not depend on the gradient's size (AdaGrad, Adam)
    move ``w`` by about ``learning_rate`` per coordinate, so the module's own parameters
    move ``scale`` times less: a learning rate of its own, with no change to the learner.
    (An L2 penalty ``l2 * |w|^2`` is ``l2 / scale^2`` on the module's parameters.)

    Parameters
    ----------
    module : Module, without row blocks
    scale : float > 0
    """

    def __init__(self, module, scale):
        if not isinstance(module, Module):
            raise ValueError(f"StepScale: {module!r} is not a factorebm module")
        if module.row_blocks():
            raise ValueError("StepScale: the module must have dense parameters only")
        scale = float(scale)
        if not (scale > 0 and np.isfinite(scale)):
            raise ValueError(f"StepScale: scale must be a finite number > 0, got {scale}")
        self.module = module
        self.scale = scale
        self.n_params = module.n_params
        self.n_in = module.n_in
        self.n_out = module.n_out

    def __repr__(self):
        return f"StepScale({self.module!r}, {self.scale:g})"

    def _init(self, rng):
        return self.module.init_params(rng) / self.scale

    def check_input(self, x):
        return self.module.check_input(x)

    def touched_rows(self, x):
        return []

    def forward(self, w, x, ctx):
        return self.module.forward(w * self.scale, x, ctx)

    def backward(self, w, dy, grad, ctx):
        g = np.zeros(self.n_params)
        dx = self.module.backward(w * self.scale, dy, g, ctx)
        g *= self.scale
        dense_gradient(grad)[...] += g
        return dx


class CharCNN(Module):
    """Character CNN: a vector per word type from its characters, copied to its tokens.

    Parameters
    ----------
    n_chars : int
        Size of the character alphabet (ids ``0..n_chars-1`` of :class:`WordChars`).
    char_dim : int
        Dimension e of the character embeddings.
    widths : sequence of int
        Convolution widths (characters per window), one filter bank each.
    n_filters : int or sequence of int
        Filters per width (the same for all, or one per width); the word vector has
        ``n_dim = sum(n_filters)`` entries.
    activation : {"relu", "tanh"}
        Applied after the maximum over positions (the same as before it: both increase).
    highway : bool
        Add a highway layer (Srivastava et al. 2015) on the word vector.
    window : int
        Output the vectors of the words at offsets ``-window..+window``: the input must then
        have ``2 * window + 1`` positions per token.

    Input: :class:`WordChars` (N tokens, ``2 * window + 1`` positions). Output: (N, n_out)
    float64, ``n_out = (2 * window + 1) * n_dim``. Parameters, in this order in ``w``: the
    embeddings E (n_chars, e), the kernels K (e, T) -- width block b, tap j, filter f at column
    ``tap_start[b] + j * n_filters[b] + f`` --, the bias (n_dim,), then with ``highway``
    W_H (n_dim, n_dim), b_H, W_T (n_dim, n_dim), b_T. All are dense (the alphabet is small).
    The input is not differentiable (bprop returns None).
    """

    def __init__(self, n_chars, char_dim=16, widths=(2, 3, 4), n_filters=32,
                 activation="relu", highway=False, window=0):
        self.n_chars = check_count(n_chars, "n_chars")
        self.char_dim = check_count(char_dim, "char_dim")
        if isinstance(widths, (int, np.integer)):
            widths = (widths,)
        if isinstance(widths, str) or not hasattr(widths, "__iter__"):
            raise ValueError(f"CharCNN: widths must be an integer or a sequence of integers, "
                             f"got {widths!r}")
        widths = tuple(check_count(k, "widths") for k in widths)
        if not widths:
            raise ValueError("CharCNN: widths must hold at least one width")
        if isinstance(n_filters, (int, np.integer)):
            n_filters = (n_filters,) * len(widths)
        if isinstance(n_filters, str) or not hasattr(n_filters, "__iter__"):
            raise ValueError(f"CharCNN: n_filters must be an integer or a sequence of "
                             f"integers, got {n_filters!r}")
        n_filters = tuple(check_count(f, "n_filters") for f in n_filters)
        if len(n_filters) != len(widths):
            raise ValueError(f"CharCNN: {len(n_filters)} filter counts for {len(widths)} "
                             "widths")
        if activation not in ACTIVATIONS:
            raise ValueError(f"CharCNN: unknown activation {activation!r}; use one of "
                             f"{', '.join(ACTIVATIONS)}")
        self.widths = widths
        self.n_filters = n_filters
        self.activation = activation
        self.highway = bool(highway)
        self.window = check_count(window, "window", 0)
        self.n_positions = 2 * self.window + 1
        self.n_dim = sum(n_filters)
        self.n_in = None
        self.n_out = self.n_positions * self.n_dim
        self._width = np.array(widths, dtype=np.int64)
        self._nf = np.array(n_filters, dtype=np.int64)
        self._tap_start = np.concatenate([[0], np.cumsum(self._width * self._nf)[:-1]]) \
            .astype(np.int64)
        self._out_start = np.concatenate([[0], np.cumsum(self._nf)[:-1]]).astype(np.int64)
        self.n_taps = int((self._width * self._nf).sum())
        d, e = self.n_dim, self.char_dim
        sizes = [("E", self.n_chars * e), ("K", e * self.n_taps), ("b", d)]
        if self.highway:
            sizes += [("W_H", d * d), ("b_H", d), ("W_T", d * d), ("b_T", d)]
        self._part_slices = {}
        pos = 0
        for name, size in sizes:
            self._part_slices[name] = slice(pos, pos + size)
            pos += size
        self.n_params = pos

    def __repr__(self):
        filters = self.n_filters if len(set(self.n_filters)) > 1 else self.n_filters[0]
        args = [str(self.n_chars), f"char_dim={self.char_dim}", f"widths={self.widths}",
                f"n_filters={filters}"]
        if self.activation != "relu":
            args.append(f"activation={self.activation!r}")
        if self.highway:
            args.append("highway=True")
        if self.window:
            args.append(f"window={self.window}")
        return f"CharCNN({', '.join(args)})"

    def get_config(self):
        """The constructor's arguments as JSON-serializable values."""
        return {"n_chars": self.n_chars, "char_dim": self.char_dim,
                "widths": list(self.widths), "n_filters": list(self.n_filters),
                "activation": self.activation, "highway": self.highway,
                "window": self.window}

    def parts(self, w):
        """Views of the parameters in ``w`` (n_params,): a dict name -> array (E, K, b and,
        with ``highway``, W_H, b_H, W_T, b_T)."""
        d, e = self.n_dim, self.char_dim
        shapes = {"E": (self.n_chars, e), "K": (e, self.n_taps), "W_H": (d, d), "W_T": (d, d)}
        return {name: (w[s].reshape(shapes[name]) if name in shapes else w[s])
                for name, s in self._part_slices.items()}

    def _init(self, rng):
        w = np.zeros(self.n_params)
        p = self.parts(w)
        e = self.char_dim
        # unit-variance embeddings, Glorot-uniform kernels per width block
        p["E"][...] = rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), p["E"].shape)
        for k, F, c0 in zip(self.widths, self.n_filters, self._tap_start.tolist()):
            s = np.sqrt(6.0 / (k * e + F))
            p["K"][:, c0:c0 + k * F] = rng.uniform(-s, s, (e, k * F))
        if self.highway:
            s = np.sqrt(3.0 / self.n_dim)
            p["W_H"][...] = rng.uniform(-s, s, p["W_H"].shape)
            p["W_T"][...] = rng.uniform(-s, s, p["W_T"].shape)
            p["b_T"][...] = -2.0       # start close to the identity (carry the input)
        return w

    # ---------------------------------------------------------------- passes
    def check_input(self, x):
        if not isinstance(x, WordChars):
            raise ValueError(f"{self!r}: input must be a factorebm.charcnn.WordChars, got "
                             f"{type(x).__name__}")
        if x.shape[1] != self.n_positions:
            raise ValueError(f"{self!r}: input has {x.shape[1]} window positions per token, "
                             f"the module takes {self.n_positions} (window={self.window})")
        if x.max_char >= self.n_chars:
            raise ValueError(f"{self!r}: character id {x.max_char} is not in "
                             f"0..{self.n_chars - 1}")
        return x

    def type_vectors(self, w, x, types, n_threads=None):
        """The vectors (U, n_dim) of the word types ``types`` ((U,) int64) of ``x``."""
        return self._types_forward(self.parts(w), x, types, threads_for(n_threads, len(types)
                                                                       * 16), keep=False)[0]

    def _types_forward(self, p, x, types, nt, keep):
        from . import _charcnn
        U = types.shape[0]
        P = matmul(p["E"], p["K"], n_threads=nt)
        M = np.empty((U, self.n_dim))
        arg = np.empty((U, self.n_dim), dtype=np.int64)
        work = np.empty((max(nt, 1), int(self._nf.max())))
        _charcnn.conv_max(P, x.chars, x.char_offsets, types, self._width, self._nf,
                          self._tap_start, self._out_start, work, M, arg, nt)
        Z = np.add(M, p["b"], out=M)
        H = np.maximum(Z, 0.0) if self.activation == "relu" else np.tanh(Z)
        saved = None
        if self.highway:
            A = matmul(H, p["W_H"], n_threads=nt)
            A += p["b_H"]
            G = np.maximum(A, 0.0)
            T = matmul(H, p["W_T"], n_threads=nt)
            T += p["b_T"]
            T = sigmoid(T)
            V = T * (G - H)
            V += H
            if keep:
                saved = (A, G, T)
        else:
            V = H
        return V, (arg, Z, H, saved, nt) if keep else None

    def forward(self, w, x, ctx):
        x = self.check_input(x)
        p = self.parts(w)
        types, inv = np.unique(x.token_types, return_inverse=True)
        types = types.astype(np.int64)
        inv = inv.reshape(-1).astype(np.int64, copy=False)
        nt = threads_for(ctx.n_threads, types.shape[0] * 16)
        V, state = self._types_forward(p, x, types, nt, ctx.keep)
        N = x.shape[0]
        out = np.take(V, inv, axis=0).reshape(N, self.n_out)
        ctx.save(self, (x, types, inv, state))
        return out

    def backward(self, w, dy, grad, ctx):
        from . import _charcnn
        x, types, inv, (arg, Z, H, saved, nt) = ctx.restore(self)
        dy = dense_dy(dy)
        N, d = x.shape[0], self.n_dim
        check_output_grad(self, dy, (N, self.n_out))
        p = self.parts(w)
        g = self.parts(dense_gradient(grad))
        dV = np.zeros((types.shape[0], d))
        _charcnn.scatter_add_rows(np.ascontiguousarray(dy, dtype=np.float64).reshape(-1, d),
                                  inv, dV)
        if self.highway:
            A, G, T = saved
            dT = dV * (G - H)
            dA = dV * T
            dA *= A > 0
            dAt = dT * T * (1.0 - T)
            matmul(H, dA, g["W_H"], accumulate=True, n_threads=nt, transpose_a=True)
            g["b_H"] += dA.sum(axis=0)
            matmul(H, dAt, g["W_T"], accumulate=True, n_threads=nt, transpose_a=True)
            g["b_T"] += dAt.sum(axis=0)
            dH = dV * (1.0 - T)
            matmul(dA, p["W_H"].T, dH, accumulate=True, n_threads=nt)
            matmul(dAt, p["W_T"].T, dH, accumulate=True, n_threads=nt)
        else:
            dH = dV
        if self.activation == "relu":
            dZ = dH * (Z > 0)
        else:
            dZ = dH * (1.0 - H * H)
        g["b"] += dZ.sum(axis=0)
        dP = np.zeros((self.n_chars, self.n_taps))
        _charcnn.conv_max_backward(np.ascontiguousarray(dZ), arg, x.chars, x.char_offsets,
                                   types, self._width, self._nf, self._tap_start,
                                   self._out_start, dP)
        matmul(p["E"], dP, g["K"], accumulate=True, n_threads=nt, transpose_a=True)
        matmul(dP, p["K"].T, g["E"], accumulate=True, n_threads=nt)
        return None
