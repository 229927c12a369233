"""Why the servers ended streams, from their logs (the client only sees a closed stream).

runstream logs ``stream ended early ... error='<why>'``; the pattern's uvicorn logs a
traceback whose last line names the exception. Both are counted by message, with run
ids and numbers left out so equal causes group together.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_RUNSTREAM = re.compile(r"stream ended early.*?error='([^']*)'")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.MULTILINE)
_NOISE = re.compile(r"\(Background on this error at: [^)]*\)|[0-9a-f]{8}-[0-9a-f-]{27}")


def server_reasons(log: Path, limit: int = 6) -> dict[str, int]:
    """The most frequent causes of streams ended by the server, by count."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    counts: Counter[str] = Counter()
    for match in _RUNSTREAM.finditer(text):
        counts[_NOISE.sub("", match.group(1)).strip()[:140]] += 1
    for name, message in _EXCEPTION.findall(text):
        counts[f"{name}: {_NOISE.sub('', message).strip()}"[:140]] += 1
    return dict(counts.most_common(limit))
