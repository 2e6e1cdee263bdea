"""Index arithmetic on flat arrays: runs of consecutive indices, back to back.

Ragged data (sequences of tokens, a graph's variables and their states, the segments of a
feature table) is stored flat with offsets; these give the flat indices of some of its parts
in numpy passes, without a Python loop over the parts.
"""
import numpy as np

__all__ = ["ranges", "part_ranges"]

_I = np.int64


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
