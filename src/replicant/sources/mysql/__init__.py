"""MySQL/MariaDB: the source (:mod:`.source`), its ``mode: log`` capture from the row binlog
(:mod:`.binlog`) and its trigger DDL (:mod:`.triggers`)."""

from replicant.sources.mysql.source import MySQLSettings, MySQLSource

__all__ = ["MySQLSettings", "MySQLSource"]
