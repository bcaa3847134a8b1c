"""What a run reports: its result, structured errors, and the events an observer receives.

The CLI draws progress bars from the :class:`Observer` events; metrics and the service API use
the same events. A run never raises for one stream's or one destination's failure: each becomes
a :class:`RunError` in :attr:`RunResult.errors` (and an :meth:`Observer.error` event), and the
other streams and destinations go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ErrorKind", "Observer", "RunError", "RunResult", "StreamState"]

#: What failed: reading a stream, the change feed of ``log`` streams, delivering to a
#: destination, or the run itself (start-up, configuration).
ErrorKind = Literal["read", "capture", "delivery", "run"]

#: The states a stream passes through in one run.
StreamState = Literal["queued", "reading", "caught_up", "failed", "stopped"]


@dataclass(frozen=True)
class RunError:
    """One failure of a run, with where it happened.

    Attributes:
        kind: what failed (:data:`ErrorKind`).
        message: what went wrong and, where known, what to do (redacted: no passwords).
        stream: the stream it concerns, if any.
        destination: the destination it concerns, if any.
        tenant: the tenant it concerns, if any.
    """

    kind: ErrorKind
    message: str
    stream: str | None = None
    destination: str | None = None
    tenant: str | None = None

    def __str__(self) -> str:
        where = []
        if self.tenant is not None:
            where.append(f"tenant {self.tenant}")
        if self.destination is not None:
            where.append(f"destination {self.destination}")
        if self.stream is not None:
            where.append(f"stream {self.stream}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass
class RunResult:
    """What one run did. ``ok`` is False if any stream or destination failed.

    Attributes:
        pipeline: the pipeline's name.
        rows_read: per stream, rows appended to the staging log in this run.
        rows_written: per destination, per stream, rows the destination accepted in this run
            (dead-lettered rows are not in it: see ``dead_letters``).
        errors: every failure, structured (``str(error)`` is a one-line message).
        dead_letters: per destination, per stream, records rejected in this run.
        warnings: what the run did that the user may not expect (e.g. a replay that left
            records undelivered), each a one-line message naming what to do.
        seconds: wall time of the run.
        run_id: the run's id in the state store.
    """

    pipeline: str
    rows_read: dict[str, int] = field(default_factory=dict)
    rows_written: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[RunError] = field(default_factory=list)
    dead_letters: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    run_id: int | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def delivered(self, destination: str, stream: str, rows: int) -> None:
        """Records that ``rows`` rows of ``stream`` went through ``destination``'s write path in
        this run: ``rows_written`` counts those it accepted, that is ``rows`` less the ones it
        dead-lettered (counted in ``dead_letters`` by the sink while they were written)."""
        rejected = self.dead_letters.get(destination, {}).get(stream, 0)
        self.rows_written.setdefault(destination, {})[stream] = max(rows - rejected, 0)


class Observer:
    """Run events. Every method may be called from any thread, concurrently; the defaults do
    nothing, so a subclass overrides only what it needs. An observer must not raise."""

    def run_started(self, pipeline: str, run_id: int, command: str) -> None:
        """A run (``run``, ``follow``, ``replay …``) began."""

    def run_finished(self, result: RunResult, status: str) -> None:
        """The run ended with ``status`` (``succeeded``, ``failed``, ``interrupted``)."""

    def stream_state(self, stream: str, state: StreamState) -> None:
        """A stream changed state (queued → reading → caught_up / failed / stopped)."""

    def stream_started(self, stream: str, estimate: int | None) -> None:
        """Reading of ``stream`` began; ``estimate`` is the expected row count, if known."""

    def rows_read(self, stream: str, rows: int) -> None:
        """``rows`` more rows of ``stream`` are durable in the staging log."""

    def stream_finished(self, stream: str, error: str | None) -> None:
        """Reading of ``stream`` ended (caught up, or failed with ``error``)."""

    def rows_written(self, destination: str, stream: str, rows: int) -> None:
        """``rows`` more rows of ``stream`` were applied to ``destination``."""

    def error(self, error: RunError) -> None:
        """A stream, the change feed or a destination failed (the run goes on)."""
