"""Files in a folder or a bucket as a source (``source: {type: files}``): see :mod:`.source`."""

from replicant.sources.files.source import FilesSource

__all__ = ["FilesSource"]
