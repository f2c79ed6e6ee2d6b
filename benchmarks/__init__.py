"""Benchmarks of etcdwatch against bare python-etcd and the seed's approach.

Run them all with ``python benchmarks/run.py`` (or ``tox -e bench``); see
``docs/performance.rst`` for the last results.  These are measurements, not
tests: nothing here asserts a timing.
"""
