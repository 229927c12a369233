"""Results: the summary JSON, the Markdown table (pattern vs runstream) and the chart."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

IMPLS = ("pattern", "runstream")
Row = tuple[str, str, str, str, str]


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(pattern: float | None, runstream: float | None) -> str:
    if pattern is None or runstream is None or pattern == 0:
        return "-"
    return f"{runstream / pattern:.2f}"


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _path(*keys: str) -> Callable[[dict[str, Any]], Any]:
    """A getter of the nested value at ``keys``."""

    def get(item: dict[str, Any]) -> Any:
        return _get(item, *keys)

    return get


def _roles(conns: dict[str, int] | None) -> str:
    if not conns:
        return "-"
    parts = [f"{k} {v:,}" for k, v in conns.items() if k not in ("total", "settled_s") and v]
    text = f"**{conns.get('total', 0):,}**: " + ", ".join(parts) if parts else "0"
    if "settled_s" in conns:
        text += f" (after {conns['settled_s']} s)"
    return text


def _pair(items: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> Iterable[Any]:
    """Group results by ``key`` into {impl: result} in the order met."""
    groups: dict[Any, dict[str, dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(key(item), {})[item.get("implementation", "?")] = item
    return groups.items()


def _numeric_rows(
    label: str,
    col: str,
    pair: dict[str, dict[str, Any]],
    get: Callable[[dict[str, Any]], Any],
    digits: int = 0,
) -> Row:
    p, r = (get(pair[i]) if i in pair else None for i in IMPLS)
    return (label, col, _num(p, digits), _num(r, digits), _ratio(p, r))


def _failures(item: dict[str, Any]) -> str:
    load = item.get("load") or {}
    if not load:
        return "no result: " + str(item.get("error", "?"))[:120]
    n = load.get("without_terminal", 0)
    reasons = load.get("reasons") or {}
    create = item.get("create_errors") or {}
    text = f"{n:,}"
    if reasons:
        text += " (" + "; ".join(f"{c:,} {r}" for r, c in reasons.items()) + ")"
    if create:
        text += " +runs refused: " + "; ".join(f"{c} {r}" for r, c in create.items())
    server = item.get("server_reasons") or {}
    if n and server:
        text += "; server logged: " + "; ".join(f"{c:,} {r}" for r, c in server.items())
    return text.replace("|", "/")


def _ceiling_row(item: dict[str, Any]) -> Row:
    label = "the workload's ceiling, events / s (its runs alone: first start to last end)"
    where = f"S={item.get('streams', 0):,}"
    if "ceiling_events_per_s" not in item:
        return (label, where, "", "no result: " + str(item.get("error", "?"))[:120], "")
    run_s = item["run_s"]
    text = (
        f"{_num(item['ceiling_events_per_s'])} (window {item['window_s']:.2f} s: runs took "
        f"{run_s['min']:.2f}-{run_s['max']:.2f} s, started within {item['start_spread_s']:.2f} s)"
    )
    return (label, where, "", text, "")


def table_rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the comparison table."""
    rows: list[Row] = []
    streams = [s for s in results.get("streams", []) if "streams" in s]
    grouped = list(_pair(streams, lambda s: s["streams"]))
    for size, pair in grouped:
        p, r = pair.get("pattern"), pair.get("runstream")
        rows.append(
            (
                "peak Redis connections, by role",
                f"S={size:,}",
                _roles(_get(p, "connections_peak")),
                _roles(_get(r, "connections_peak")),
                _ratio(_get(p, "connections_peak", "total"), _get(r, "connections_peak", "total")),
            )
        )
    for size, pair in grouped:
        p, r = pair.get("pattern"), pair.get("runstream")
        rows.append(
            (
                "at-rest Redis connections, by role",
                f"S={size:,}",
                _roles(_get(p, "connections_at_rest")),
                _roles(_get(r, "connections_at_rest")),
                _ratio(
                    _get(p, "connections_at_rest", "total"), _get(r, "connections_at_rest", "total")
                ),
            )
        )
    for size, pair in grouped:
        rows.append(
            _numeric_rows(
                "events delivered / s",
                f"S={size:,}",
                pair,
                _path("load", "events_per_s"),
            )
        )
    for item in results.get("ceiling", []):
        rows.append(_ceiling_row(item))
    for q in ("p50", "p99"):
        for size, pair in grouped:
            rows.append(
                _numeric_rows(
                    f"latency {q} (ms, event ts to receipt)",
                    f"S={size:,}",
                    pair,
                    _path("load", "latency_ms", q),
                )
            )
    for size, pair in grouped:
        p, r = pair.get("pattern"), pair.get("runstream")
        rows.append(
            (
                "streams without their terminal event",
                f"S={size:,}",
                _failures(p) if p else "-",
                _failures(r) if r else "-",
                "",
            )
        )
    for size, pair in grouped:
        for proc in ("api", "worker", "redis-server", "load generator"):
            rows.append(
                _numeric_rows(
                    f"CPU s: {proc}",
                    f"S={size:,}",
                    pair,
                    _path("cpu", proc, "cpu_s"),
                    1,
                )
            )
    for size, pair in grouped:
        p, r = pair.get("pattern"), pair.get("runstream")

        def lag(s: dict[str, Any] | None) -> str:
            lag_ms = _get(s, "load", "loop_lag_ms") or {}
            return "/".join(_num(lag_ms.get(k), 1) for k in ("p50", "p99", "max"))

        rows.append(("load generator loop lag p50/p99/max (ms)", f"S={size:,}", lag(p), lag(r), ""))
    idle = [i for i in results.get("idle", []) if "streams" in i]
    idle_groups = list(_pair(idle, lambda i: i["streams"]))
    for size, pair in idle_groups:
        rows.append(
            _numeric_rows(
                "API RSS at start (MiB)",
                f"idle N={size:,}",
                pair,
                _path("api_rss_start_mib"),
                1,
            )
        )
    for size, pair in idle_groups:
        rows.append(
            _numeric_rows(
                "API RSS per idle stream (KiB)",
                f"N={size:,}",
                pair,
                _path("rss_per_stream_kib"),
                1,
            )
        )
    for size, pair in idle_groups:
        p, r = pair.get("pattern"), pair.get("runstream")
        p_open, r_open = _num(_get(p, "opened")), _num(_get(r, "opened"))
        rows.append(("idle streams open when RSS was read", f"N={size:,}", p_open, r_open, ""))
        rows.append(
            (
                "idle streams without their terminal event",
                f"N={size:,}",
                _failures(p) if p else "-",
                _failures(r) if r else "-",
                "",
            )
        )
    for size, pair in idle_groups:
        p, r = pair.get("pattern"), pair.get("runstream")
        rows.append(
            (
                "Redis connections holding idle streams",
                f"N={size:,}",
                _roles(_get(p, "connections_held")),
                _roles(_get(r, "connections_held")),
                _ratio(_get(p, "connections_held", "total"), _get(r, "connections_held", "total")),
            )
        )
    thr = [t for t in results.get("throughput", []) if "runs" in t]
    for (db, runs), pair in _pair(thr, lambda t: (t["database"], t["runs"])):
        rows.append(
            _numeric_rows(
                f"{runs} runs on one worker done after (s)",
                db,
                pair,
                _path("done_after_s"),
                2,
            )
        )
    trips = [t for t in results.get("roundtrips", []) if "runs" in t]
    for runs, pair in _pair(trips, lambda t: t["runs"]):
        rows.append(
            _numeric_rows(
                "Redis round trips per event, 200 events/s per run",
                f"{runs} runs at once",
                pair,
                _path("round_trips_per_event"),
                3,
            )
        )
    for note in results.get("skipped", []):
        rows.append(("skipped", "", note, "", ""))
    phys = results.get("physical") or {}
    if phys:
        rows.append(
            (
                "redis-benchmark PUBLISH / s (50 clients)",
                "machine",
                _num(phys.get("publish_per_s")),
                "",
                "",
            )
        )
        rows.append(
            (
                "redis-benchmark XADD / s (50 clients)",
                "machine",
                _num(phys.get("xadd_per_s")),
                "",
                "",
            )
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The comparison as one Markdown table (ratio = runstream / pattern)."""
    lines = [
        "| measure | size | per-stream pattern | runstream | runstream / pattern |",
        "|---|---|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    notes = list(results.get("notes") or [])
    errors = [
        f"{kind} {item.get('implementation')} {item.get('streams') or item.get('runs')}: "
        f"{item['error']}"
        for kind in ("streams", "ceiling", "idle", "throughput", "roundtrips")
        for item in results.get(kind, [])
        if item.get("error")
    ]
    if notes or errors:
        lines.append("")
        lines += [f"- note: {note}" for note in notes]
        lines += [f"- phase failed: {error[:300]}" for error in errors]
    lines += cluster_lines(results.get("cluster") or [])
    return "\n".join(lines) + "\n"


def cluster_lines(items: list[dict[str, Any]]) -> list[str]:
    """runstream on one node against three masters: events/s and connections per node."""
    if not items:
        return []
    lines = [
        "",
        "| runstream, same load | streams | delivered events/s | p99 ms | not ended | "
        "peak connections on the busiest node | at rest, per node |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for item in items:
        if item.get("error"):
            lines.append(f"| cluster phase failed: {str(item['error'])[:200]} | | | | | | |")
            continue
        for row in item.get("topologies", []):
            load = row.get("load") or {}
            peaks = row.get("connections_peak_by_node") or {}
            busiest = max(peaks.values(), key=lambda p: p.get("total", 0), default=None)
            rest = row.get("connections_at_rest_by_node") or {}
            at_rest = ", ".join(str(r.get("total", 0)) for r in rest.values())
            cells = [
                row.get("topology", "?"),
                f"{item.get('streams', 0):,}",
                _num(load.get("events_per_s")),
                _num(_get(load, "latency_ms", "p99")),
                _num(load.get("without_terminal")),
                _roles(busiest),
                at_rest or "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        ratio = item.get("events_per_s_ratio")
        lines.append(f"| 3 masters / 1 node | | {_num(ratio, 2)} | | | | |")
    return lines


def chart(results: dict[str, Any], path: Path) -> Path | None:
    """Latency p50/p99 and delivered events/s against streams, both implementations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = [s for s in results.get("streams", []) if s.get("load")]
    if not streams:
        return None
    fig, (ax_lat, ax_rate) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"pattern": ("tab:red", "per-stream pattern"), "runstream": ("tab:blue", "runstream")}
    for impl, (color, label) in styles.items():
        mine = sorted(
            (s for s in streams if s["implementation"] == impl), key=lambda s: s["streams"]
        )
        if not mine:
            continue
        xs = [s["streams"] for s in mine]
        p50 = [_get(s, "load", "latency_ms", "p50") for s in mine]
        p99 = [_get(s, "load", "latency_ms", "p99") for s in mine]
        rate = [_get(s, "load", "events_per_s") for s in mine]
        ax_lat.plot(xs, p50, "o-", color=color, label=f"{label} p50")
        ax_lat.plot(xs, p99, "s--", color=color, label=f"{label} p99")
        ax_rate.plot(xs, rate, "o-", color=color, label=label)
    for ax in (ax_lat, ax_rate):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent SSE streams (S, on S/20 runs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency, event ts to receipt (ms)")
    ax_rate.set_ylabel("events delivered per second")
    ax_rate.set_ylim(bottom=0)
    fig.suptitle("runstream vs the per-stream pub/sub pattern (same run, same load generator)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
