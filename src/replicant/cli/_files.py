"""``replicant status --files``: the record of every file a files source saw."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from replicant.cli._app import out

__all__ = ["files_seen", "print_files"]

_COLUMNS = ("stream", "path", "status", "size", "rows", "bad_records", "first_error_line", "first_error", "etag",
            "modified_at", "loaded_at", "loads", "note")


def files_seen(cfg: Any) -> list[dict[str, Any]]:
    """Every files-seen record of the pipeline (every tenant), JSON-able; [] when it never ran."""
    from replicant import runtime

    if not runtime.state_exists(cfg):
        return []
    state = runtime.open_state(cfg)
    try:
        tenants = state.tenants(cfg.pipeline) or [None]
        rows = [r for t in tenants for r in state.files_seen(cfg.pipeline, tenant=t)]
    finally:
        state.close()
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items() if k != "pipeline"} for r in rows]


def print_files(records: list[dict[str, Any]]) -> None:
    t = Table(title="files seen")
    for c in ("stream", "path", "status", "rows", "bad", "first error", "loaded at", "note"):
        t.add_column(c)
    for r in records:
        err = f"line {r['first_error_line']}: {r['first_error']}" if r.get("first_error") else ""
        t.add_row(r["stream"], r["path"], r["status"], f"{r['rows']:,}", f"{r['bad_records']:,}", err[:60],
                  (r.get("loaded_at") or "")[:19], r.get("note") or "")
    out.print(t)
