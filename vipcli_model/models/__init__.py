"""Models: the hub and its caches, the table of files vip fetches per model (``catalog``), model families, loading,
and GPU memory plans.

May import cts, speed, pipelines and the shared modules.
"""
