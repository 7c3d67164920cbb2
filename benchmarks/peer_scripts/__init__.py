"""Workloads for the peers, run by ``benchmarks/peers.py`` with the Python of a separate venv.

These scripts import the peer libraries, which are not dependencies of nursery-worker: each is run
as ``<peers venv>/bin/python benchmarks/peer_scripts/<name>_bench.py --dsn ... --workload ...`` and prints
one JSON line: ``{"rate": jobs_per_s, "verified": bool, "detail": ...}``.
"""
