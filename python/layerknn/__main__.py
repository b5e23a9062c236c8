"""``python -m layerknn``: the same command line as the ``layerknn`` entry point."""

import sys

from .cli import main

sys.exit(main())
