"""The per-stream pub/sub pattern of the original system, re-implemented for comparison.

What it reproduces (the agent-run pipeline of the original system, as its post-mortem
of the "Too many connections" leak describes it, *after* its five fixes, so it leaks
nothing beyond what the pattern itself holds):

* **API, per stream** (``backend/agent/api.py``'s stream endpoint): check the run in the
  database, ``LRANGE`` the run's response list from 0 and send it, then open **two
  PubSub objects** from the shared (unbounded) redis-py pool, one subscribed to the
  responses channel, one to the control channel; a listener task turns each ``new``
  notification into an ``LRANGE last+1 -1`` catch-up (so every notification costs every
  reader one command), and a control ``END_STREAM``/``STOP``/``ERROR`` ends the stream.
  On the way out the listener tasks are cancelled **and awaited** (fix 5) and both PubSubs
  are unsubscribed and closed with ``aclose()`` in ``finally`` (fixes 3 and 4).
* **Worker, per running run** (``backend/run_agent_background.py``): a run lock
  (``SET NX``), an ``active_run`` key, **one PubSub** subscribed to the instance and global
  control channels (closed on a failed subscribe, fix 1, and with ``aclose()``, fix 2);
  each event is ``RPUSH`` to the run's list then ``PUBLISH`` ``new`` (two round trips);
  at the end the final status is pushed, the run record is updated with the status and
  all responses, ``END_STREAM`` is published on the control channel, the list gets its
  TTL and the keys are deleted.
* Run records in a SQL table (the original kept ``agent_runs`` in its database), the
  run created as ``running`` before it is queued, as the original did.
* The queue: a Redis list popped with ``BRPOP`` by one worker process running up to
  ``PATTERN_WORKER_CONCURRENCY`` runs at once (the original used dramatiq on Redis).
* Runs behave like runstream's ``scripted`` agent (``count`` ticks every ``interval_ms``,
  ``payload_bytes``, ``hang``), and the HTTP shape matches runstream's where the load
  generator needs it: ``POST /runs``, ``GET /runs/{id}``, ``GET /runs?status=``,
  ``POST /runs/{id}/stop``, ``GET /runs/{id}/stream`` with ``id:``/``event:``/``data:``
  frames whose JSON carries ``seq`` and ``ts``, ending after the terminal status event.

Connections are named (``pattern:<role>:<instance>:<purpose>``) so ``CLIENT LIST`` can
attribute them; the original did not name them, which changes nothing else.
"""
