"""Tenants: one pipeline, one source per tenant, every row tagged ``_tenant``.

* :mod:`replicant.tenants.config`: the ``tenants:`` key (ids checked, each tenant's source
  settings merged over ``source:``), :func:`~replicant.tenants.config.for_tenant`.
* :mod:`replicant.tenants.runner`: runs every tenant's feed at once in one process, sharing the
  state store and the staging log; one tenant's failure is reported and retried, never stops
  the others.
* :mod:`replicant.tenants.drop`: ``replicant tenant drop``: a tenant's rows, state and log go.
"""

from replicant.tenants.config import TENANT_COLUMN, TenantConfig, for_tenant, tenant_ids

__all__ = ["TENANT_COLUMN", "TenantConfig", "for_tenant", "tenant_ids"]
