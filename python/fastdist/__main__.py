"""``python -m fastdist``: the same as the ``fastdist`` command."""

from .cli.main import run

run()
