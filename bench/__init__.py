"""secnet benchmarks: a script (``python -m bench.run``), not a test suite.

Every timed figure is the median of repeats with their min and max; see
``bench/run.py`` for the sections and ``bench/README.md`` for how to run.
"""
