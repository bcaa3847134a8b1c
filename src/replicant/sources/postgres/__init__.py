"""PostgreSQL: the source (:mod:`.source`), its ``mode: log`` capture over a replication slot
(:mod:`.capture`, decoding :mod:`.pgoutput`) and its trigger DDL (:mod:`.triggers`)."""

from replicant.sources.postgres.source import PostgresSettings, PostgresSource

__all__ = ["PostgresSettings", "PostgresSource"]
