"""Helpers to stand up a real registry and build images from file trees.

Used by fastdist's own tests, its benchmarks and the demo (examples/demo.py); also handy for anyone
testing code that uses fastdist. Nothing here is used by a pull or a run.
"""
