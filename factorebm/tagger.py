"""Placeholder until issue 5 ([pos]) lands: SequenceTagger."""


class SequenceTagger:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SequenceTagger is being built under issue [pos]")
