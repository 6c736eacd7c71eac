"""``python -m choreo.cli``: the ``choreo`` command."""

import sys

from choreo.cli import main

sys.exit(main())
