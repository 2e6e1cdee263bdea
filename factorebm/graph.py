"""Placeholder until issue 2 ([engine]) lands: FactorGraph builder."""


class FactorGraph:
    def __init__(self):
        raise NotImplementedError("FactorGraph is being built under issue [engine]")
