"""``${secret:NAME}`` in the service: every pipeline it runs keeps its state in the service's
store, so the encrypted secret store there (then ``REPLICANT_SECRETS_DIR``) resolves them, in
the ``serve`` process (which loads the files) and in every worker."""

from __future__ import annotations

import os

from replicant.access import secret_store
from replicant.secrets import set_secret_store

__all__ = ["install"]


def install(state_url: str) -> None:
    """Makes the service's encrypted store the resolver of ``${secret:…}`` (one per process)."""
    chain = secret_store._installed.get(state_url)
    if chain is None:
        providers: list[secret_store.SecretProvider] = [secret_store.EncryptedStore(state_url)]
        if os.environ.get("REPLICANT_SECRETS_DIR"):
            providers.append(secret_store.DirectoryProvider(os.environ["REPLICANT_SECRETS_DIR"]))
        chain = secret_store._installed[state_url] = secret_store.Chain(providers)
    set_secret_store(chain)
