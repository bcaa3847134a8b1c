"""The validation report: JSON for machines, a readable HTML page for the cut-over review.

Per tenant, stream and destination: rows and checksums on both sides, the log offset and
source position compared, the destination's lag at the time, the differences found (each
key) and repaired, the columns not verified, and the verdict.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from replicant.sources.positions import unit
from replicant.validate.run import StreamResult, ValidationReport

__all__ = ["as_dict", "write_report"]

_SHOWN_KEYS = 1000  # differing keys listed per stream in a report


def _result(r: StreamResult) -> dict[str, Any]:
    c = r.comparison
    return {
        "tenant": r.tenant, "stream": r.stream, "destination": r.destination, "verdict": r.verdict, "error": r.error,
        "mode": r.mode or None,
        "source": {"rows": c.source_rows, "checksum": c.source_checksum} if c else None,
        "destination_side": {"rows": c.destination_rows, "checksum": c.destination_checksum} if c else None,
        "position": {"log_offset": r.log_offset, "source_position": r.source_position, "applied_offset": r.applied_offset,
                     "lag": r.lag, "source_position_at_start": r.source_target, "source_position_reached": r.source_reached,
                     "source_lag": r.source_lag, "source_lag_unit": unit(r.source_target) or None},
        "note": r.note,
        "differences_found": r.found,
        "repaired": r.repaired,
        "differences": [{"kind": d.kind, "key": d.key} for d in (c.differences if c else [])[:_SHOWN_KEYS]],
        "found_before_repair": [{"kind": d.kind, "key": d.key} for d in r.found_before_repair[:_SHOWN_KEYS]],
        "unverified_columns": r.unverified,
        "seconds": round(c.seconds, 3) if c else None,
    }


def as_dict(report: ValidationReport) -> dict[str, Any]:
    verdict = {0: "equal", 1: "differences", 2: "could not validate"}[report.exit_code]
    return {
        "pipeline": report.pipeline, "started_at": report.started_at.isoformat(),
        "finished_at": report.finished_at.isoformat() if report.finished_at else None,
        "verdict": verdict, "exit_code": report.exit_code, "streams": [_result(r) for r in report.results],
    }


def _pinned(pos: dict[str, Any]) -> str:
    """The source position waited for, whether the log reached it and the lag, as HTML."""
    if pos.get("source_position_at_start") is None:
        return ""
    e = html.escape
    got = "reached" if pos.get("source_position_reached") else "not reached"
    return (f"<br>source at start <code>{e(json.dumps(pos['source_position_at_start']))}</code>: {got}, "
            f"lag {e(str(pos.get('source_lag')))} {e(str(pos.get('source_lag_unit') or ''))}")


def _html(data: dict[str, Any]) -> str:
    e = html.escape
    rows = []
    for s in data["streams"]:
        src, dst, pos = s["source"] or {}, s["destination_side"] or {}, s["position"]
        keys = "".join(f"<li>{e(d['kind'])}: {e(json.dumps(d['key'], ensure_ascii=False))}</li>" for d in s["differences"])
        fixed = "".join(f"<li>{e(d['kind'])}: {e(json.dumps(d['key'], ensure_ascii=False))}</li>" for d in s["found_before_repair"])
        unverified = ", ".join(f"{e(k)} ({e(v)})" for k, v in s["unverified_columns"].items()) or "none"
        rows.append(
            f"<tr class='{e(s['verdict'])}'><td>{e(str(s['tenant'] or ''))}</td><td>{e(s['stream'])}</td><td>{e(s['destination'])}</td>"
            f"<td><b>{e(s['verdict'])}</b>{'<br>' + e(s['error']) if s['error'] else ''}</td>"
            f"<td>{e(str(src.get('rows', '')))}<br><code>{e(str(src.get('checksum', '')))}</code></td>"
            f"<td>{e(str(dst.get('rows', '')))}<br><code>{e(str(dst.get('checksum', '')))}</code></td>"
            f"<td>log offset {e(str(pos['log_offset']))}, applied {e(str(pos['applied_offset']))}, lag {e(str(pos['lag']))}"
            f"<br><code>{e(json.dumps(pos['source_position']))}</code>{_pinned(pos)}"
            f"{'<br><i>' + e(s['note']) + '</i>' if s.get('note') else ''}</td>"
            f"<td>{s['differences_found']} found, {s['repaired']} repaired<ul>{fixed}</ul>now:<ul>{keys}</ul></td>"
            f"<td>{unverified}</td></tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>replicant validate: "
        f"{e(data['pipeline'])}</title><style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}"
        "td,th{border:1px solid #999;padding:4px;vertical-align:top}.equal{background:#e6ffe6}"
        ".differences{background:#ffe6e6}.error{background:#fff3cd}</style></head><body>"
        f"<h1>Validation of {e(data['pipeline'])}: {e(data['verdict'])}</h1>"
        f"<p>from {e(data['started_at'])} to {e(str(data['finished_at']))}</p>"
        "<table><tr><th>tenant</th><th>stream</th><th>destination</th><th>verdict</th><th>source rows, checksum</th>"
        "<th>destination rows, checksum</th><th>positions compared</th><th>differences</th><th>unverified columns</th></tr>"
        + "".join(rows) + "</table></body></html>\n"
    )


def write_report(report: ValidationReport, path: Path) -> None:
    """Writes ``report`` as HTML when ``path`` ends in ``.html``/``.htm``, else as JSON."""
    write_report_data(as_dict(report), path)


def write_report_data(data: dict[str, Any], path: Path) -> None:
    """Writes a report already in its JSON form (:func:`as_dict`; a service run's result)."""
    if path.suffix.lower() in (".html", ".htm"):
        path.write_text(_html(data), encoding="utf-8")
    else:
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
