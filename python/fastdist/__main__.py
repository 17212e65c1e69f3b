"""``python -m fastdist``: the same as the ``fastdist`` command."""

import sys

from .cli import main

sys.exit(main())
