"""``replicant validate``: source and destinations compared by checksums computed inside each
database, bisected down to the differing keys, transform- and tenant-aware, pinned to a log
position, with ``--repair`` through the pipeline's own log (docs/validate.md).

Modules: :mod:`.canon` (the canonical value encoding per dialect), :mod:`.sides` (queries and
connections), :mod:`.compare` (buckets and bisection), :mod:`.targets` (what to compare, from
the pipeline's transforms), :mod:`.repair`, :mod:`.run` (the command), :mod:`.report`.
"""

from replicant.validate.run import StreamResult, ValidationReport, validate_pipeline

__all__ = ["StreamResult", "ValidationReport", "validate_pipeline"]
