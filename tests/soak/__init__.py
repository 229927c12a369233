"""Tests of ``runstream soak``: its pure parts, its command line and a short real soak."""
