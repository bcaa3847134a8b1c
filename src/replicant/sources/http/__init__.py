"""Paged HTTP JSON APIs as a source (``source: {type: http}``): :class:`HttpSource`."""

from replicant.sources.http.source import HttpSource

__all__ = ["HttpSource"]
