"""Access and secrets: the encrypted secret store and its providers, API tokens with roles
and tenant scope, and the append-only audit log (:mod:`.secret_store`, :mod:`.tokens`,
:mod:`.audit`). The REST service plugs :func:`authenticate` and :func:`allowed` into its
auth hook and calls :func:`record` for every mutating request."""

from replicant.access.audit import record
from replicant.access.secret_store import Chain, DirectoryProvider, EncryptedStore, EnvProvider, SecretProvider
from replicant.access.tokens import ROLE_PERMISSIONS, Principal, allowed, authenticate, create_token

__all__ = [
    "Chain",
    "DirectoryProvider",
    "EncryptedStore",
    "EnvProvider",
    "Principal",
    "ROLE_PERMISSIONS",
    "SecretProvider",
    "allowed",
    "authenticate",
    "create_token",
    "record",
]
