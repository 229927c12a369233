"""The only module that knows Redis key and channel names.

Every key runstream writes has a TTL (bounded everything); the TTL is set by whoever writes it.
Per-run keys share the hash tag ``{<run id>}`` so a future Redis Cluster keeps a run's
keys in one slot (the append script touches several of them at once).
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "runstream"


def run_events(run_id: str) -> str:
    """Redis STREAM holding the run's log; entry id ``<seq>-0``, fields ``t`` and ``d``."""
    return f"{PREFIX}:run:{{{run_id}}}:events"


def run_notify(run_id: str) -> str:
    """Pub/sub channel announcing each appended event (payload: see ``eventlog``)."""
    return f"{PREFIX}:run:{{{run_id}}}:notify"


def run_control(run_id: str) -> str:
    """Pub/sub channel for control messages to the worker that owns the run."""
    return f"{PREFIX}:run:{{{run_id}}}:control"


def run_stop(run_id: str) -> str:
    """Durable stop flag: present means a stop was requested."""
    return f"{PREFIX}:run:{{{run_id}}}:stop"


def run_lock(run_id: str) -> str:
    """Per-run lock; value is the owning worker instance, PX renewed while it lives."""
    return f"{PREFIX}:run:{{{run_id}}}:lock"


def principal_runs(principal: str) -> str:
    """Sorted set of a principal's active runs (member: run id, score: lease expiry ms)."""
    return f"{PREFIX}:principal:{{{principal}}}:runs"


def principal_streams(principal: str) -> str:
    """Sorted set of a principal's open streams (member: stream id, score: lease expiry ms)."""
    return f"{PREFIX}:principal:{{{principal}}}:streams"


def hub_channel(role: str, instance: str) -> str:
    """A process's private channel, always subscribed so the pub/sub connection is never idle."""
    return f"{PREFIX}:hub:{role}:{instance}"


def client_name(role: str, instance: str, purpose: str) -> str:
    """The ``CLIENT SETNAME`` of every connection: ``runstream:<role>:<instance>:<purpose>``."""
    return f"{PREFIX}:{role}:{instance}:{purpose}"


def parse_client_name(name: str) -> tuple[str, str, str] | None:
    """``(role, instance, purpose)`` of a name made by :func:`client_name`, else None."""
    prefix, sep, rest = name.partition(":")
    if prefix != PREFIX or not sep:
        return None
    parts = rest.split(":")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


RUN_LOCKS = f"{PREFIX}:run:{{*}}:lock"
"""The pattern of every run lock (a lock is held while its run executes)."""
PRINCIPAL_RUNS = f"{PREFIX}:principal:{{*}}:runs"
"""The pattern of every principal's active-run leases (queued plus running)."""


def queue_prefix(queue_name: str, *, cluster: bool = False) -> str:
    """Name of the task queue inside Redis (the queue library derives its keys from it).

    On a cluster the name is a hash tag: the queue's scripts touch several of its keys at
    once, so all of them must live in one slot (on one master)."""
    if cluster:
        return f"{PREFIX}:queue:{{{queue_name}}}"
    return f"{PREFIX}:queue:{queue_name}"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys streaq's ``publish_task`` function touches, in its order, for the one
    priority runstream uses (``normal``)."""

    stream: str
    delayed: str
    task_prefix: str
    dependents: str
    dependencies: str
    results: str

    def for_task(self, task_id: str) -> list[str]:
        """FCALL's keys for a task: the stream, the delayed set, the task's data key and
        the three prefixes streaq's script appends task ids to."""
        return [
            self.stream,
            self.delayed,
            self.task_prefix + task_id,
            self.dependents,
            self.dependencies,
            self.results,
        ]


def queue_keys(queue_name: str, *, cluster: bool = False) -> QueueKeys:
    """Where streaq keeps a queue's tasks (streaq 7.2's layout: ``streaq:<queue>:...``).

    The API enqueues with streaq's own Lua function over redis-py, without loading streaq,
    so this layout is the wire format the two share; tests/queue checks it against
    streaq's."""
    base = f"streaq:{queue_prefix(queue_name, cluster=cluster)}"
    return QueueKeys(
        stream=f"{base}:queues:normal",
        delayed=f"{base}:queues:delayed:normal",
        task_prefix=f"{base}:task:data:",
        dependents=f"{base}:task:dependents:",
        dependencies=f"{base}:task:dependencies:",
        results=f"{base}:task:results:",
    )
