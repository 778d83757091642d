"""Benchmarks: each reports a ratio or a distribution measured against a baseline in the same run.

Run them all small with ``python3 -m bench --quick`` (what CI does), or one at full size, e.g.
``python3 -m bench.virtual_time``. Results and commands are recorded in ``bench/README.md``.
"""
