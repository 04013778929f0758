"""``python -m ccdflow``: the ccdflow command (see :mod:`ccdflow.cli`)."""

import sys

from ccdflow.cli import main

sys.exit(main())
