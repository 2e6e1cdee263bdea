"""Placeholder until issue 2 ([engine]) lands: min-sum / sum-product inference."""


def _todo(*args, **kwargs):
    raise NotImplementedError("inference is being built under issue [engine]")


min_sum = sum_product = free_energy = most_offending = _todo
