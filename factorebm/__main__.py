"""``python -m factorebm``: the ``factorebm`` command line (see :mod:`factorebm.cli`)."""
import sys

from .cli import main

sys.exit(main())
