"""runstream's benchmark harness: ``python -m bench`` (see bench/README.md).

It drives runstream and a re-implementation of the original per-stream pub/sub pattern
(:mod:`bench.pattern`) side by side, over HTTP and from outside their processes: it never
imports runstream.
"""
