"""Talking to a runstream API over HTTP: the calls, the stream's events, the errors."""
