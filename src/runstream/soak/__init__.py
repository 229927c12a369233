"""``runstream soak``: load with fault injection against a running system, and a verdict.

A tool, not part of the server: nothing in api/, worker/ or below imports it, and the
CLI imports it only when the command runs. Its chart needs the ``soak`` extra.
"""
