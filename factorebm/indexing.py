"""Index arithmetic on flat arrays: runs of consecutive indices, back to back.

Ragged data (sequences of tokens, a graph's variables and their states, the segments of a
feature table) is stored flat with offsets; these give the flat indices of some of its parts
in numpy passes, without a Python loop over the parts.
"""
import numpy as np

__all__ = ["offsets_of", "padded", "ranges", "part_ranges"]

_I = np.int64


def offsets_of(sizes):
    """(n + 1,) int64: 0 and the running sums of ``sizes`` (where each part starts, and the end)."""
    out = np.zeros(len(sizes) + 1, dtype=_I)
    np.cumsum(np.asarray(sizes, dtype=_I), out=out[1:])
    return out


def padded(a, dtype):
    """``a`` contiguous of ``dtype``; an empty one becomes one zero slot (of its ndim): a
    kernel takes the address of element 0 of every array it is handed."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.size else np.zeros((1,) * max(a.ndim, 1), dtype=dtype)


def ranges(first, count):
    """Concatenated aranges: ``first[i] .. first[i] + count[i] - 1`` for each i (int64)."""
    first, count = np.asarray(first, dtype=_I), np.asarray(count, dtype=_I)
    total = int(count.sum())
    return np.repeat(first - (np.cumsum(count) - count), count) + np.arange(total, dtype=_I)


def part_ranges(offsets, parts):
    """int64: the indices ``offsets[p] .. offsets[p + 1] - 1`` of every part p in ``parts``,
    back to back (e.g. the tokens of some sequences: ``part_ranges(offsets, seqs)``)."""
    parts = np.asarray(parts, dtype=_I)
    return ranges(offsets[parts], offsets[parts + 1] - offsets[parts])
