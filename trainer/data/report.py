"""The preparation report: ``DATA_REPORT.json`` beside the shard manifest, and its printed summary.

Documents and bytes in and out, dropped per reason (cleaning reasons and ``duplicate``), the
duplicate clusters (counts and the largest ones by document id, source and offset, never text),
the cleaning and dedup settings, and the time per stage on node 0. The manifest lists the report
with its SHA-256 like every shard, so it is committed with them.
"""

from __future__ import annotations

import json
from typing import Any

REPORT_NAME = "DATA_REPORT.json"


def sum_stats(markers: dict[tuple[int, int], dict[str, Any]]) -> dict[str, Any]:
    """Documents/bytes read and dropped per reason over every committed marker."""
    total_in = [0, 0]
    dropped: dict[str, list[int]] = {}
    for m in markers.values():
        stats = m.get("stats") or {}
        for i in (0, 1):
            total_in[i] += stats.get("in", [0, 0])[i]
        for reason, (docs, nbytes) in (stats.get("dropped") or {}).items():
            acc = dropped.setdefault(reason, [0, 0])
            acc[0] += docs
            acc[1] += nbytes
    out_docs = total_in[0] - sum(d for d, _ in dropped.values())
    out_bytes = total_in[1] - sum(b for _, b in dropped.values())
    return {
        "documents_in": total_in[0],
        "bytes_in": total_in[1],
        "documents_out": out_docs,
        "bytes_out": out_bytes,
        "dropped": {r: {"documents": d, "bytes": b} for r, (d, b) in dropped.items()},
    }


def build_report(
    markers: dict[tuple[int, int], dict[str, Any]],
    settings: dict[str, Any],
    dedup: dict[str, Any] | None,
    seconds: dict[str, float],
    tokens: dict[str, int],
) -> dict[str, Any]:
    """The report's content (a plain dict, written as JSON)."""
    return {
        **sum_stats(markers),
        "tokens": tokens,
        "settings": settings,
        "dedup": dedup or {"mode": "off"},
        "seconds": seconds,
    }


def encode(report: dict[str, Any]) -> bytes:
    return json.dumps(report, indent=1, sort_keys=True).encode()


def report_lines(report: dict[str, Any]) -> list[str]:
    """What ``prepare-data`` prints at the end (and on reuse): the counts that matter, one a line."""
    d_in, d_out = report["documents_in"], report["documents_out"]
    lines = [
        f"documents: {d_in:,} in, {d_out:,} out ({_pct(d_in - d_out, d_in)} dropped); "
        f"bytes: {report['bytes_in'] / 1e6:,.1f} MB in, {report['bytes_out'] / 1e6:,.1f} MB out"
    ]
    drops = [
        f"{reason} {v['documents']:,} ({v['bytes'] / 1e6:,.2f} MB)"
        for reason, v in sorted(report["dropped"].items())
        if v["documents"]
    ]
    lines.append("dropped: " + (", ".join(drops) if drops else "nothing"))
    dd = report["dedup"]
    if dd.get("mode", "off") != "off":
        top = dd["largest_clusters"][0]["size"] if dd["largest_clusters"] else 0
        lines.append(
            f"dedup ({dd['mode']}): {dd['clusters']:,} duplicate cluster(s) over "
            f"{dd['docs_in_clusters']:,} documents, largest {top}"
        )
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items())
    lines.append(f"time: {stages}")
    return lines


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f} %" if whole else "0 %"
