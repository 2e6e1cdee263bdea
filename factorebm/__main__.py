"""``python -m factorebm``: the ``factorebm`` command line (see :mod:`factorebm.cli`)."""
from .cli import run

run()
