"""``add_tenant``: the tenant key, added by the engine to every row of a tenant's feed.

Not written in a transform list: :func:`replicant.transforms.placement.before_log` puts it last
in the chain of a pipeline with ``tenants:``, after the tenant's and the pipeline's transforms
(so they see the tenant's columns as its source has them, and a ``select`` need not name it).
"""

from __future__ import annotations

import pyarrow as pa

from replicant.tenants.config import TENANT_COLUMN
from replicant.transforms.base import Transform, key_of, with_key

__all__ = ["AddTenant"]


class AddTenant(Transform):
    """Puts ``_tenant`` (the tenant id, not null) first among the data columns and first in
    the key: (``_tenant``, key…), so tenants' rows with the same key never meet in a shared
    table. A stream without a key keeps none (it can only be appended)."""

    name = "add_tenant"

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        if TENANT_COLUMN in schema.names:
            raise ValueError(f"the stream has a column {TENANT_COLUMN!r}, which a pipeline with `tenants:` adds to every "
                             "row; rename it with a rename transform in the tenant's `transforms:`")
        out = pa.schema([pa.field(TENANT_COLUMN, pa.string(), nullable=False), *schema], metadata=schema.metadata)
        key = key_of(schema)
        return with_key(out, [TENANT_COLUMN, *key]) if key else out

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        column = pa.repeat(pa.scalar(self.tenant, pa.string()), batch.num_rows)
        return pa.RecordBatch.from_arrays([column, *batch.columns], schema=self.output_schema(batch.schema))
