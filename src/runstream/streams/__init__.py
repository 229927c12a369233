"""Redis side of runstream: keys, connections, the shared pub/sub hub, event logs."""
