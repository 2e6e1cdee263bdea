"""Placeholder until issue 5 ([pos]) lands: CoNLL-U reader and bundled UD English EWT."""
