"""A derived pipeline's source: another pipeline's staging log (``source: {type: pipeline}``).

::

    source:
      type: pipeline
      pipeline: ../bank/pipeline.yml      # a pipeline file, relative to this file's folder,
                                          # or the name of a pipeline whose file is in this folder
      streams: [transactions, accounts]   # names as in the upstream log (default: all)

Pub/sub: the upstream pipeline knows nothing of its readers. The source opens the upstream's
log read-only where the upstream's file puts it (its ``log:`` setting, or the default
``.replicant/<pipeline>/log`` beside that file; a local folder or NATS), and emits its records
as they are: change batches with their ``_op`` (snapshot reads, inserts, updates, deletes) and
schema versions, ``truncate`` markers and snapshot markers. Every stream is a ``log`` stream
read through :meth:`PipelineSource.capture`, so ``run --follow`` tails the upstream.

The resume rule, where resume bugs live:

    A derived stream's position is ``{"offset": N, "ts": …}``: the upstream log offset *after*
    the last upstream record it emitted, i.e. the next upstream offset to read, and that
    record's append time (to recognise an upstream log recreated and grown past ``N`` again). Each upstream
    record (a batch or a marker) becomes one change set appended with the position after it,
    so the derived log's append is the checkpoint (:mod:`replicant.ingest`): after a crash
    the engine hands back the position of the last record durable in the derived log, and
    reading resumes exactly after it. Nothing is skipped and nothing emitted twice.

If the upstream log no longer holds that next offset (retention dropped it, or the upstream's
log was deleted and started again behind it), reading fails with a
:class:`~replicant.errors.FatalError` naming both pipelines and the fix (``replicant resync``):
it never skips silently. :func:`resync_stream` starts a stream over from the upstream log's
start.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from replicant.config import PipelineConfig, SourceConfig
from replicant.errors import ConfigError, FatalError
from replicant.log.base import MARKER_SNAPSHOT_START, MARKER_TRUNCATE, Log
from replicant.model import ChangeSet, ConnectorContext, Position, Stream, data_schema, log_stream_name
from replicant.sources.base import Capabilities, Source

__all__ = ["PipelineSettings", "PipelineSource", "find_upstream", "resync_stream", "with_log_modes"]

#: How long a follow waits on one upstream stream before looking at the next (seconds).
_WAIT = 0.2


class PipelineSettings(BaseModel):
    """The keys of a ``type: pipeline`` source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str = Field(
        description="The upstream pipeline: its file (relative to this file's folder), or its name when its "
        "file (`NAME.yml` or any `*.yml` with `pipeline: NAME`) is in this file's folder."
    )
    stateful: list[Any] = Field(default_factory=list, description="Set by replicant from the pipeline's `transforms:` "
                                "(its stateful entries: aggregate); not written by hand.")


def find_upstream(reference: str, base_dir: Path) -> Path:
    """The upstream pipeline file ``reference`` names (see :class:`PipelineSettings`).

    Raises:
        ConfigError: no such file or pipeline, at ``source.pipeline``.
    """
    path = Path(reference).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.is_file():
        return path.resolve()
    if "/" not in reference and not reference.endswith((".yml", ".yaml")):
        for candidate in (base_dir / f"{reference}.yml", base_dir / f"{reference}.yaml"):
            if candidate.is_file():
                return candidate.resolve()
        import yaml

        for candidate in sorted(base_dir.glob("*.y*ml")):
            try:
                data = yaml.safe_load(candidate.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and data.get("pipeline") == reference:
                return candidate.resolve()
    raise ConfigError("invalid pipeline file", [("source.pipeline", f"no pipeline file {str(path)!r} and no pipeline named "
                                                                    f"{reference!r} in {str(base_dir)!r}")])


class PipelineSource(Source):
    """Reads the streams of another pipeline's staging log (see the module docstring)."""

    capabilities = Capabilities(modes=frozenset({"log"}))
    settings = PipelineSettings

    @classmethod
    def resolve_config(cls, config: SourceConfig, *, base_dir: Path) -> SourceConfig:
        """``pipeline:`` becomes the upstream file's absolute path; it must exist and load."""
        reference = str(config.options.get("pipeline", ""))
        path = find_upstream(reference, base_dir)
        _load_upstream(path)
        return config.model_copy(update={"pipeline": str(path)})

    def __init__(self, config: SourceConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self._upstream: PipelineConfig | None = None
        self._log: Log | None = None
        self._stage: Any = None

    @property
    def stage(self) -> Any:
        """The stateful transforms (:class:`~replicant.sources._stateful.StatefulStage`), or None."""
        if self._stage is None and self.options.stateful:
            from replicant.sources._stateful import StatefulStage, build_stateful

            names = [n.removeprefix(f"{self.context.tenant}/") for n in self.upstream_log().streams()]
            workdir = self.context.workdir or Path(".replicant") / self.context.pipeline / "source"
            self._stage = StatefulStage(build_stateful(self.options.stateful, names),
                                        workdir.parent / "stateful" / f"{self.context.tenant or 'state'}.duckdb")
        return self._stage
    # ------------------------------------------------------------------ the upstream

    @property
    def upstream(self) -> PipelineConfig:
        """The upstream pipeline's validated file (its secrets are not needed)."""
        if self._upstream is None:
            self._upstream = _load_upstream(Path(self.options.pipeline))
            if self._upstream.pipeline == self.context.pipeline:
                raise ConfigError("invalid pipeline file", [("source.pipeline", f"names pipeline {self.context.pipeline!r} itself")])
        return self._upstream

    def planning_config(self, config: PipelineConfig) -> PipelineConfig:
        """``config`` with each stateful transform's input listed under ``source.streams``
        replaced by that transform's output stream(s) (a derived pipeline's ``streams:`` names
        upstream streams; the input is not in the derived log, its outputs are)."""
        stage = self.stage
        listed = config.source.streams
        if stage is None or not isinstance(listed, list):
            return config
        outputs: dict[str, list[str]] = {}
        for name, t in stage.transforms.items():
            outputs.setdefault(t.input, []).append(name)
        streams = []
        for sc in listed:
            if sc.table in outputs:
                streams += [sc.model_copy(update={"table": out}) for out in outputs[sc.table]]
            else:
                streams.append(sc)
        return config.model_copy(update={"source": config.source.model_copy(update={"streams": streams})})

    def upstream_log(self) -> Log:
        """The upstream's staging log, opened read-only (once; :meth:`close` closes it)."""
        if self._log is None:
            from replicant.runtime import open_pipeline_log

            self._log = open_pipeline_log(self.upstream, read_only=True)
        return self._log

    def upstream_name(self, stream: Stream | str) -> str:
        """The stream's name in the upstream log: ``tenant/name`` when this source reads a tenant."""
        name = stream if isinstance(stream, str) else stream.name
        t = self.stage.transform_of(name) if self.stage is not None else None
        return log_stream_name(t.input if t is not None else name, self.context.tenant)

    # ------------------------------------------------------------------ the contract

    def discover(self) -> list[Stream]:
        """The upstream log's streams (of this source's tenant, if any), each with its latest
        schema version and the key recorded in it. A stream the upstream never wrote is not
        listed: run the upstream first."""
        from replicant.plan import log_key

        lg = self.upstream_log()
        prefix = f"{self.context.tenant}/" if self.context.tenant is not None else ""
        out = []
        for name in lg.streams():
            if prefix and not name.startswith(prefix):
                continue
            if not prefix and "/" in name:
                continue  # a tenant's stream: read by running this pipeline for that tenant
            schemas = lg.schemas(name)
            if not schemas:
                continue
            schema = data_schema(schemas[-1])
            own = name.removeprefix(prefix)
            out.append(Stream(name=own, table=tuple(own.split(".")), schema=schema, primary_key=tuple(log_key(schema)),
                              options={"upstream": name}))
        if not out:
            raise FatalError(f"pipeline {self.context.pipeline!r}: the log of upstream pipeline {self.upstream.pipeline!r} "
                             f"({_where(self.upstream)}) holds no streams yet; run `replicant run` on the upstream first")
        return self.stage.streams(out) if self.stage is not None else out

    def check(self) -> list[str]:
        streams = self.discover()
        return [f"upstream pipeline {self.upstream.pipeline!r}: {len(streams)} stream(s) in its log"]

    def capture(
        self,
        streams: list[Stream],
        positions: dict[str, Position | None],
        *,
        resume: Position | None,
        follow: bool,
        stop: threading.Event,
    ) -> Iterator[ChangeSet]:
        """Emits each upstream record after each stream's position as one change set (see the
        module docstring); ``resume`` is not needed (every stream carries its own offset). The
        output stream of a stateful transform reads its input's records (a ``join`` both its
        sides': its position holds the ``with`` side's under ``"with"``) and emits their output.

        Raises:
            FatalError: the upstream log no longer holds a stream's next offset.
        """
        lg = self.upstream_log()
        stage = self.stage
        cursors: list[_Cursor] = []
        for s in streams:
            t = stage.transform_of(s.name) if stage is not None else None
            sides = t.sides if t is not None else {"main": s.name}
            for side, name in sides.items():
                pos = positions.get(s.name) or {}
                pos = (pos.get(side) or {}) if side != "main" else pos
                up = log_stream_name(name, self.context.tenant)
                cursors.append(_Cursor(s, side, up, self._next_offset(lg, s, pos, up=up), pos.get("ts"), t))
        if stage is not None:
            stage.bind(lg, self.context.tenant)
            for c in cursors:
                if c.transform is not None:
                    stage.catch_up(c.transform, c.side, lg, c.upstream, c.next)
        try:
            yield from self._records(lg, cursors, follow, stop)
        finally:
            if stage is not None:
                stage.rollback()  # what was not acknowledged is not durable downstream

    def _records(self, lg: Log, cursors: list[_Cursor], follow: bool, stop: threading.Event) -> Iterator[ChangeSet]:
        stage = self.stage
        while True:
            for c in cursors:
                end = lg.end_offset(c.upstream)
                if end < c.next:
                    raise self._gone(c.stream, c.next, lg, up=c.upstream)
                if end == c.next:
                    continue
                for rec in lg.read(c.upstream, c.next, end=end):
                    c.next, c.ts = rec.next_offset, rec.ts.isoformat()
                    name = c.stream.name
                    pos = _position(cursors, c.stream)
                    if c.transform is not None:  # a stateful transform's output; committed by acknowledge_capture
                        out, truncated = stage.apply(c.transform, c.side, rec)
                        yield ChangeSet({name: out}, pos, stream_positions={name: pos},
                                        truncated=frozenset({name}) if truncated else frozenset())
                    elif rec.marker is None:
                        assert rec.batch is not None
                        yield ChangeSet({name: rec.batch}, pos, stream_positions={name: pos})
                    elif rec.marker.get("kind") == MARKER_TRUNCATE:
                        yield ChangeSet({}, pos, stream_positions={name: pos}, truncated=frozenset({name}))
                    else:
                        yield ChangeSet({}, pos, stream_positions={name: pos}, markers={name: dict(rec.marker)})
                    if stop.is_set():
                        return
            if not follow or stop.is_set():
                return
            if stage is not None:
                stage.publish()  # caught up: the state's figures for `status`
            for c in cursors:  # idle: wait a little on each upstream stream for an append
                if stop.is_set() or lg.wait(c.upstream, c.next, _WAIT / len(cursors)):
                    break

    def acknowledge_capture(self, position: Position) -> None:
        """The output of the last record is durable in the derived log: commits the stateful
        transforms' state with it (see :mod:`replicant.sources._stateful`)."""
        if self._stage is not None:
            self._stage.commit()

    def cdc_status(self, streams: list[Stream]) -> dict[str, Any]:
        """For ``replicant status``: the upstream pipeline and its log's end offset per stream
        (compare with each stream's position ``offset`` to see how far behind this one is), and
        the stateful transforms' state (file, bytes, rows per table)."""
        lg = self.upstream_log()
        out = {"upstream": f"pipeline {self.upstream.pipeline!r} ({_where(self.upstream)})",
               "upstream end offsets": {s.name: lg.end_offset(self.upstream_name(s)) for s in streams}}
        if self.stage is not None:
            out["state"] = self.stage.status()
        return out

    def _next_offset(self, lg: Log, stream: Stream, position: Position | None, *, up: str | None = None) -> int:
        """The next upstream offset to read for ``stream`` (from upstream stream ``up``, default
        its own); checks the upstream log still holds it."""
        nxt = int((position or {}).get("offset", 0))
        up = up or self.upstream_name(stream)
        start = lg.start_offset(up)
        if nxt < start or nxt > lg.end_offset(up):
            raise self._gone(stream, nxt, lg, up=up)
        if nxt > start and (position or {}).get("ts") is not None:
            # the record before ``nxt`` must be the one last read: a log recreated and grown past
            # ``nxt`` again holds other records there (appended at another time)
            last = next(iter(lg.read(up, nxt - 1, end=nxt)), None)
            if last is None or last.ts.isoformat() != position["ts"]:  # type: ignore[index]
                raise self._gone(stream, nxt, lg, replaced=True, up=up)
        return nxt

    def _gone(self, stream: Stream, nxt: int, lg: Log, *, replaced: bool = False, up: str | None = None) -> FatalError:
        up = up or self.upstream_name(stream)
        start, end = lg.start_offset(up), lg.end_offset(up)
        why = (f"holds offsets {start}..{end - 1} only" if end > start else "is empty") + (
            " (it was reset or recreated behind this pipeline)" if nxt > end else " (older records were dropped)")
        if replaced:
            why = f"was reset or recreated: offset {nxt - 1} holds another record than the one this pipeline read"
        return FatalError(
            f"derived pipeline {self.context.pipeline!r}, stream {stream.name!r}: the log of upstream pipeline "
            f"{self.upstream.pipeline!r} ({_where(self.upstream)}) no longer holds offset {nxt}, the next one to read: "
            f"it {why}. Nothing was skipped. To start this stream over from the upstream log's start, run "
            f"`replicant resync PIPELINE.yml --stream {stream.name}` on the derived pipeline"
        )

    def close(self) -> None:
        if self._stage is not None:
            self._stage.close()
            self._stage = None
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclasses.dataclass
class _Cursor:
    """Where one upstream stream is read for one derived stream (a join reads two)."""

    stream: Stream
    side: str  # "main", or "with" (a join's looked-up stream)
    upstream: str
    next: int
    ts: str | None
    transform: Any


def _position(cursors: list[_Cursor], stream: Stream) -> Position:
    """``stream``'s position: its main upstream's next offset and last read record's time, and
    each other side's under its name."""
    pos: dict[str, Any] = {}
    for c in cursors:
        if c.stream is stream:
            here = {"offset": c.next, "ts": c.ts}
            if c.side == "main":
                pos.update(here)
            else:
                pos[c.side] = here
    return pos


def resync_stream(config: PipelineConfig, stream: str, *, tenant: str | None = None) -> int:
    """Starts ``stream`` of the derived pipeline ``config`` over from its upstream log's start:
    appends a ``truncate`` marker to the derived log with position ``{"offset": start}``, so
    every destination that can truncate empties its table and the next run re-reads the whole upstream stream
    (with today's logic). Needs the derived log for writing: fails while a run holds it.

    Returns:
        The upstream offset the stream restarts from.

    Raises:
        ConfigError: ``config`` is not a derived pipeline, or ``stream`` is not in the upstream log.
        FatalError: the upstream log dropped the stream's oldest records and does not start with
            a snapshot, so a re-read would miss rows.
    """
    from replicant import runtime

    if config.source.type != "pipeline":
        raise ConfigError("resync needs a derived pipeline", [("source.type", f"is {config.source.type!r}; resync re-reads "
                                                                             "an upstream log (type: pipeline)")])
    source = runtime.build_source(config, runtime.source_context(config, tenant))
    try:
        names = [s.name for s in source.discover()]
        if stream not in names:
            from replicant.config import suggest

            raise ConfigError("no such stream", [("--stream", f"the upstream log has no stream {stream!r}{suggest(stream, names)}")])
        up = source.upstream_log()
        name = source.upstream_name(stream)
        start = up.start_offset(name)
        if start > 0:
            first = next(iter(up.read(name, start, end=start + 1)), None)
            if first is None or (first.marker or {}).get("kind") != MARKER_SNAPSHOT_START:
                raise FatalError(f"upstream pipeline {source.upstream.pipeline!r} no longer holds stream {stream!r} from its "
                                 f"beginning (its log starts at offset {start}, not at a snapshot): a re-read would miss rows")
    finally:
        source.close()
    lg = runtime.open_pipeline_log(config)
    try:
        lg.append(log_stream_name(stream, tenant), None, position={"offset": start}, marker={"kind": MARKER_TRUNCATE})
    finally:
        lg.close()
    return start


def with_log_modes(data: Any) -> Any:
    """The raw ``source:`` mapping of a derived pipeline with ``mode: log`` on every stream and
    as ``default_mode``: it reads its upstream's log, whatever mode the upstream read the source
    in (called by :class:`~replicant.config.SourceConfig` before validation; other types as given)."""
    if not isinstance(data, dict) or data.get("type") != "pipeline":
        return data
    streams = data.get("streams", "all")
    if isinstance(streams, list):
        streams = [{"table": s, "mode": "log"} if isinstance(s, str) else {"mode": "log", **s} if isinstance(s, dict) else s
                   for s in streams]
    return {**data, "streams": streams, "default_mode": data.get("default_mode", "log")}


def _load_upstream(path: Path) -> PipelineConfig:
    from replicant.config import load

    try:
        return load(path, secrets_needed=False)
    except ConfigError as e:
        raise ConfigError("invalid pipeline file", [("source.pipeline", f"the upstream pipeline file {str(path)!r} is invalid: "
                                                                        f"{e}")]) from None


def _where(cfg: PipelineConfig) -> str:
    from replicant.runtime import log_location

    return f"log at {log_location(cfg)}"
