"""Fixtures every change-data-capture test module shares (helpers: cdc/_pipelines.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cdc._pipelines import dest_database, slot_pipeline


@pytest.fixture
def dest_url(pg_server: Any, unique_name: str) -> Iterator[str]:
    """A fresh destination database on the test PostgreSQL server, dropped afterwards."""
    with dest_database(pg_server, f"dst_{unique_name}"[:60]) as url:
        yield url


@pytest.fixture
def pipeline_name(pg_url: str, unique_name: str) -> Iterator[str]:
    """A pipeline name of the test's own, its replication slot dropped afterwards."""
    with slot_pipeline(pg_url, f"p_{unique_name}") as name:
        yield name
