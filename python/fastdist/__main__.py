"""``python -m fastdist``: the same as the ``fastdist`` command."""

from .cli import run

run()
