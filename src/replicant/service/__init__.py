"""``replicant serve``: scheduler, worker processes, REST API and Prometheus metrics.

::

    DIR/*.yml ──catalog──▶ scheduler (serve process) ──enqueue──▶ run queue (state store)
                                ▲                                       │ claim (lease, epoch)
       API /api/v1 ── trigger ──┘ ── pause, resync, replay, status ──  ▼
       /metrics ◀── state store ◀── checkpoints, offsets ◀── worker processes (Engine)

Nothing is imported or started at import time.
"""
