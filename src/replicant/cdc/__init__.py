"""Change data capture: the read strategies beyond ``full`` and ``cursor``.

``snapshot_diff``
    :mod:`.snapshot_diff`: read the table, hash each row, diff against the previous snapshot
    kept in the source's ``workdir`` (out of core, DuckDB over Parquet); emit inserts,
    updates and deletes. Needs only SELECT.
``trigger``
    :mod:`.triggers`: generated triggers record (key, operation, sequence, time) in a shadow
    table; the reader joins shadow rows with the base table; shadow rows are purged once
    durable in the log (``acknowledge``).
``log``
    :mod:`.pg_log` (PostgreSQL logical replication, pgoutput) and :mod:`.binlog`
    (MySQL/MariaDB row binlog): one change feed per source for all ``log`` streams
    (:meth:`replicant.sources.base.Source.capture`).

SQL sources dispatch to these modules (:class:`replicant.sources._sql.SQLSource`).
"""
